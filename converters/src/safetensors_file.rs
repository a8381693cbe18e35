//! Safetensors files, single or sharded: validated reads and atomic writes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::atomic::write_file_atomically;
use crate::output_guard::FileKind;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Reads every tensor of one `.safetensors` file, in file order. The header is validated
/// (bounds, overlaps, dtype sizes) before any data is touched.
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    crate::limits::check_regular_file(path, "safetensors file")?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Safety: the map is read-only and dropped before this function returns.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| anyhow::anyhow!("{}: invalid safetensors: {e}", path.display()))?;
    let mut names: Vec<(usize, String)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (view.data().as_ptr() as usize, name))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(_, name)| {
            let view = st.tensor(&name)?;
            let dtype = candle_dtype(view.dtype())
                .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
            let tensor = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
            release_pages(&map, view.data());
            Ok((name, tensor))
        })
        .collect()
}

/// Drops the mapped pages of a tensor that has been copied out, so reading a model costs
/// its size in memory once, not twice (the map would otherwise stay resident).
fn release_pages(map: &memmap2::Mmap, data: &[u8]) {
    #[cfg(unix)]
    {
        let page = 4096;
        let start = data.as_ptr() as usize - map.as_ptr() as usize;
        let first = start.div_ceil(page) * page;
        let end = (start + data.len()) / page * page;
        if end > first {
            // SAFETY: the map is private and read-only; dropping its pages only means they
            // are read from the file again if touched.
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first) };
        }
    }
}

/// Reads the tensors of an HF model directory: `model.safetensors`, or the shards named
/// by `model.safetensors.index.json` (every indexed tensor must be found where it says).
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let index_path = dir.join(INDEX_FILE);
    if !index_path.exists() {
        let single = dir.join(SINGLE_FILE);
        if !single.exists() {
            bail!("{}: no {SINGLE_FILE} or {INDEX_FILE}", dir.display());
        }
        return read_file(&single);
    }
    let text = crate::limits::read_to_string(&index_path, crate::limits::MAX_CONFIG_BYTES, "safetensors index")?;
    let index: Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", index_path.display()))?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no `weight_map` object", index_path.display()))?;
    let mut shards: Vec<String> = Vec::new();
    for (name, file) in weight_map {
        let file = file.as_str().with_context(|| format!("{}: `{name}` maps to a non-string", index_path.display()))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            bail!("{}: shard name `{file}` is not a plain file name", index_path.display());
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for shard in &shards {
        let path = dir.join(shard);
        for (name, tensor) in read_file(&path)? {
            match weight_map.get(&name).and_then(Value::as_str) {
                Some(f) if f == shard => {}
                Some(f) => bail!("{}: tensor `{name}` is indexed in {f}", path.display()),
                None => bail!("{}: tensor `{name}` is not in {INDEX_FILE}", path.display()),
            }
            if !seen.insert(name.clone()) {
                bail!("{}: tensor `{name}` appears in two shards", path.display());
            }
            out.push((name, tensor));
        }
    }
    if let Some(missing) = weight_map.keys().find(|k| !seen.contains(*k)) {
        bail!("{}: tensor `{missing}` is indexed but not found in its shard", index_path.display());
    }
    Ok(out)
}

/// Writes tensors as HF does: one `model.safetensors`, or shards of at most
/// `max_shard_bytes` plus an index, all with `{"format": "pt"}` metadata.
pub fn write_dir(dir: &Path, tensors: &[(String, Tensor)], max_shard_bytes: usize) -> Result<()> {
    let mut shards: Vec<Vec<&(String, Tensor)>> = vec![Vec::new()];
    let mut current = 0usize;
    for entry in tensors {
        let size = entry.1.elem_count() * entry.1.dtype().size_in_bytes();
        if current > 0 && current + size > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        shards.last_mut().expect("non-empty").push(entry);
        current += size;
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    if shards.len() == 1 {
        return write_shard(&dir.join(SINGLE_FILE), &shards[0], &metadata);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_shard(&dir.join(&file), shard, &metadata)?;
        for (name, t) in shard.iter().map(|e| (&e.0, &e.1)) {
            total += t.elem_count() * t.dtype().size_in_bytes();
            weight_map.insert(name.clone(), json!(file));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_file_atomically(&dir.join(INDEX_FILE), FileKind::Json, |w| {
        Ok(w.write_all(serde_json::to_string_pretty(&index)?.as_bytes())?)
    })
}

/// Writes one `.safetensors` file (atomically) with the given tensors, in order.
pub fn write_file(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<&(String, Tensor)> = tensors.iter().collect();
    write_shard(path, &refs, &Some(HashMap::from([("format".to_string(), "pt".to_string())])))
}

fn write_shard(path: &Path, tensors: &[&(String, Tensor)], metadata: &Option<HashMap<String, String>>) -> Result<()> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(contiguous.iter().map(|(n, t)| (n.as_str(), t)), metadata.clone())
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    write_file_atomically(path, FileKind::Safetensors, |w| Ok(w.write_all(&bytes)?))
}

fn candle_dtype(dtype: Dtype) -> Result<DType> {
    Ok(match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U32 => DType::U32,
        Dtype::U8 => DType::U8,
        other => bail!("unsupported dtype {other:?}"),
    })
}
