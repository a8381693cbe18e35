//! The weight checks: safetensors headers, the index, the tensor set against the config.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;

use anyhow::{bail, Result};
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use mm_converters::MiniMindConfig;

use super::*;

impl Checker<'_> {
    pub(super) fn check_weights(&mut self) -> Option<BTreeMap<String, TensorEntry>> {
        let mut files: Vec<String> = std::fs::read_dir(self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".safetensors"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let has_index = self.dir.join(INDEX).exists();
        if files.is_empty() && !has_index {
            let pickles = ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pth"]
                .iter()
                .any(|f| self.dir.join(f).exists());
            let msg = if pickles {
                "no safetensors weights, only pickled torch files: export safetensors (`mm export hf`)"
            } else {
                "no model.safetensors and no model.safetensors.index.json"
            };
            self.error("weights.missing", SINGLE, msg);
            return None;
        }
        let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
        let mut headers: BTreeMap<String, Vec<(String, TensorEntry)>> = BTreeMap::new();
        for file in &files {
            if let Some(entries) = self.read_header(file) {
                headers.insert(file.clone(), entries);
            }
        }
        if has_index {
            self.check_index(&files, &headers, &mut tensors)?;
            if files.iter().any(|f| f == SINGLE) {
                self.warn("weights.both", SINGLE, format!("both {SINGLE} and {INDEX} exist; loaders disagree on which to read"));
            }
        } else {
            if !files.iter().any(|f| f == SINGLE) {
                self.error(
                    "weights.missing",
                    INDEX,
                    format!("{} shard file(s) ({}) but no {INDEX} and no {SINGLE}", files.len(), files.join(", ")),
                );
                return None;
            }
            for f in files.iter().filter(|f| *f != SINGLE) {
                self.warn("weights.stray_file", f.clone(), format!("not {SINGLE} and there is no index: ignored by transformers, vLLM may read it"));
            }
            match headers.remove(SINGLE) {
                Some(entries) => tensors.extend(entries),
                None => self.all_lost = true,
            }
            self.report.weight_files = vec![SINGLE.to_string()];
        }
        self.report.tensor_count = tensors.len();
        // dtypes
        let mut dtypes = BTreeSet::new();
        for (name, t) in &tensors {
            if !["F16", "BF16", "F32"].contains(&t.dtype.as_str()) {
                self.error(
                    "tensor.dtype",
                    format!("{}: {name}", t.file),
                    format!("dtype {}: vLLM and transformers load MiniMind weights as F16, BF16 or F32", t.dtype),
                );
            }
            dtypes.insert(t.dtype.clone());
        }
        let floats: Vec<&String> = dtypes.iter().filter(|d| ["F16", "BF16", "F32"].contains(&d.as_str())).collect();
        if floats.len() > 1 {
            self.warn(
                "tensor.mixed_dtype",
                self.report.weight_files.join(", "),
                format!("mixed float dtypes {floats:?}: the loader casts everything to one dtype"),
            );
        }
        self.report.dtypes = dtypes.into_iter().collect();
        Some(tensors)
    }

    /// Parses and validates one safetensors header (bounds, sizes, contiguity) and its
    /// `__metadata__`; returns its tensors in file order.
    pub(super) fn read_header(&mut self, file: &str) -> Option<Vec<(String, TensorEntry)>> {
        let path = self.dir.join(file);
        // Only a regular file is opened: opening a FIFO would wait for a writer forever.
        let regular = std::fs::metadata(&path).and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        });
        let map = match regular.and_then(|()| File::open(&path)).and_then(|f| {
            // SAFETY: read-only map, dropped before returning; the file is not modified here.
            unsafe { memmap2::Mmap::map(&f) }
        }) {
            Ok(m) => m,
            Err(e) => {
                self.error("safetensors.invalid", file, format!("cannot read: {e}"));
                return None;
            }
        };
        let (header_len, metadata) = match SafeTensors::read_metadata(&map) {
            Ok(m) => m,
            Err(e) => {
                self.error("safetensors.invalid", file, format!("invalid safetensors file: {e}"));
                return None;
            }
        };
        match metadata.metadata().as_ref().and_then(|m| m.get("format")) {
            Some(f) if f == "pt" => {}
            Some(f) if ["tf", "flax", "mlx"].contains(&f.as_str()) => self.warn(
                "safetensors.metadata",
                format!("{file}: __metadata__.format"),
                format!("`{f}`: loads, but PyTorch checkpoints carry \"pt\""),
            ),
            Some(f) => self.error(
                "safetensors.metadata",
                format!("{file}: __metadata__.format"),
                format!("`{f}` is not pt/tf/flax/mlx: transformers 4.x refuses the file"),
            ),
            None => self.error(
                "safetensors.metadata",
                format!("{file}: __metadata__"),
                "no {\"format\": \"pt\"} metadata: transformers 4.x refuses the file (save_pretrained always writes it)",
            ),
        }
        let mut entries: Vec<(usize, String, TensorEntry)> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = TensorEntry {
                    file: file.to_string(),
                    dtype: info.dtype.to_string(),
                    shape: info.shape.clone(),
                    start: 8 + header_len + info.data_offsets.0,
                    bytes: info.data_offsets.1 - info.data_offsets.0,
                };
                (info.data_offsets.0, name, entry)
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        Some(entries.into_iter().map(|(_, n, e)| (n, e)).collect())
    }

    pub(super) fn check_index(
        &mut self,
        files: &[String],
        headers: &BTreeMap<String, Vec<(String, TensorEntry)>>,
        tensors: &mut BTreeMap<String, TensorEntry>,
    ) -> Option<()> {
        let index = self.read_json(INDEX, "index.invalid_json")?;
        let Some(weight_map) = index.get("weight_map").and_then(Value::as_object) else {
            self.error("index.invalid_json", format!("{INDEX}: weight_map"), "missing or not an object of tensor → shard file");
            return None;
        };
        let mut shards: BTreeSet<String> = BTreeSet::new();
        let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, file) in weight_map {
            let Some(file) = file.as_str() else {
                self.error("index.invalid_json", format!("{INDEX}: weight_map.{name}"), format!("maps to {file}, not a file name"));
                continue;
            };
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                self.error("index.invalid_json", format!("{INDEX}: weight_map.{name}"), format!("`{file}` is not a plain file name"));
                continue;
            }
            shards.insert(file.to_string());
            by_shard.entry(file.to_string()).or_default().push(name.clone());
        }
        // Which indexed, readable shards hold each tensor. Loaders open the shards the index
        // names and read every tensor in them (transformers 5 and vLLM take all; transformers
        // 4.x takes those the index lists, from whichever of these files holds them).
        let mut holders: HashMap<&str, Vec<(&str, &TensorEntry)>> = HashMap::new();
        for (shard, entries) in headers.iter().filter(|(s, _)| shards.contains(*s)) {
            for (name, e) in entries {
                holders.entry(name.as_str()).or_default().push((shard.as_str(), e));
            }
        }
        for (shard, names) in &by_shard {
            if !files.contains(shard) {
                self.error(
                    "index.missing_shard",
                    format!("{INDEX}: {shard}"),
                    format!("names shard {shard} ({} tensors, e.g. `{}`) which is not in the directory", names.len(), names[0]),
                );
                self.lost.extend(names.iter().cloned());
                continue;
            }
            let Some(entries) = headers.get(shard) else {
                self.lost.extend(names.iter().cloned()); // unreadable: reported already
                continue;
            };
            let present: HashMap<&str, &TensorEntry> = entries.iter().map(|(n, e)| (n.as_str(), e)).collect();
            for name in names {
                if let Some(e) = present.get(name.as_str()) {
                    tensors.insert(name.clone(), (*e).clone());
                    continue;
                }
                match holders.get(name.as_str()).and_then(|h| h.first()) {
                    Some((elsewhere, e)) => {
                        self.warn(
                            "index.wrong_shard",
                            format!("{INDEX}: {name}"),
                            format!(
                                "indexed in {shard} but stored in {elsewhere}: transformers (4.x and 5.x) and vLLM read \
                                 the tensors of every shard the index names, so it still loads; tools that look a \
                                 tensor up through the index will not find it"
                            ),
                        );
                        tensors.insert(name.clone(), (*e).clone());
                    }
                    None => self.error(
                        "index.tensor_not_in_shard",
                        format!("{INDEX}: {name}"),
                        format!("indexed in {shard} but that file has no such tensor"),
                    ),
                }
            }
        }
        for (shard, entries) in headers {
            if !shards.contains(shard) {
                if shard != SINGLE {
                    self.warn("weights.stray_file", shard.clone(), format!("not referenced by {INDEX}: loaders skip it"));
                }
                continue;
            }
            for (name, entry) in entries {
                match weight_map.get(name).and_then(Value::as_str) {
                    Some(f) if f == shard => {}
                    Some(f) => {
                        // Indexed elsewhere; reported above unless that shard holds a copy too.
                        let Some(indexed) = headers.get(f).and_then(|h| h.iter().find(|(n, _)| n == name)) else { continue };
                        if self.same_values(entry, &indexed.1) == Some(true) {
                            self.warn(
                                "index.duplicate",
                                format!("{shard}: {name}"),
                                format!("a second copy (the index says {f}), with the same values: loaders read both"),
                            );
                        } else {
                            self.error(
                                "index.duplicate",
                                format!("{shard}: {name}"),
                                format!(
                                    "a second copy with other values than the one in {f}, where the index points: \
                                     transformers and vLLM read every tensor of the indexed shards, so the model gets \
                                     whichever copy is read last, not necessarily the indexed one"
                                ),
                            );
                        }
                    }
                    None => {
                        self.error_if(
                            !self.vllm(),
                            "index.unindexed_tensor",
                            format!("{shard}: {name}"),
                            format!(
                                "is not in {INDEX}: transformers 4.x loads only the tensors the index lists (it \
                                 reports this one missing and initialises it randomly); transformers 5 and vLLM \
                                 read every tensor of the indexed shards and load it"
                            ),
                        );
                        tensors.insert(name.clone(), entry.clone());
                    }
                }
            }
        }
        let total: usize = tensors.values().map(|t| t.bytes).sum();
        match index.pointer("/metadata/total_size").and_then(Value::as_u64) {
            None => self.warn("index.total_size", format!("{INDEX}: metadata.total_size"), "missing"),
            Some(n) if n as usize != total && self.lost.is_empty() => self.warn(
                "index.total_size",
                format!("{INDEX}: metadata.total_size"),
                format!("says {n} bytes, the indexed tensors hold {total}"),
            ),
            Some(_) => {}
        }
        self.report.weight_files = shards.into_iter().collect();
        Some(())
    }

    // ---------------------------------------------------------------- tensors vs config

    pub(super) fn check_tensors(&mut self, cfg: &Map<String, Value>, tensors: &BTreeMap<String, TensorEntry>, vocab: Option<&Vocab>) {
        let Some(family) = self.family else { return };
        let tie_default = family == Family::MiniMind;
        let tie = cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(tie_default);
        let expected = match expected_tensors(family, cfg) {
            Ok(e) => e,
            Err(e) => {
                self.warn("tensor.layout_unchecked", CONFIG, format!("tensor names not checked: {e:#}"));
                return;
            }
        };
        let weights = if self.dir.join(INDEX).exists() { INDEX } else { SINGLE };
        let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for (name, shape) in &expected {
            match tensors.get(name) {
                None if self.all_lost || self.lost.contains(name) => {} // its file is reported
                None => self.error(
                    "tensor.missing",
                    format!("{weights}: {name}"),
                    format!("missing (the config needs shape {shape:?}); vLLM stops with \"weights not initialized from checkpoint\""),
                ),
                Some(t) if &t.shape != shape => self.error(
                    "tensor.shape",
                    format!("{}: {name}", t.file),
                    format!("has shape {:?}, the config needs {shape:?}", t.shape),
                ),
                Some(_) => {}
            }
        }
        let lm_head = "lm_head.weight";
        let embed = "model.embed_tokens.weight";
        match (tie, tensors.get(lm_head)) {
            (true, Some(t)) => match tensors.get(embed).map(|e| self.same_values(t, e)) {
                // Equal values (torch `.bin`-style checkpoints store both): every loader gets one model.
                Some(Some(true)) => self.warn(
                    "lm_head.tied_present",
                    format!("{}: {lm_head}", t.file),
                    "present although tie_word_embeddings is true, with the embedding's values: vLLM skips it \
                     and transformers ties it to the embedding",
                ),
                Some(Some(false)) => self.error(
                    "lm_head.tied_differs",
                    format!("{}: {lm_head}", t.file),
                    format!(
                        "differs from {embed} while tie_word_embeddings is true: transformers 5 keeps it as a \
                         separate output layer (\"both are present in the checkpoints with different values, so we \
                         will NOT tie them\"), transformers 4.x and vLLM replace it by the embedding, so the same \
                         directory gives different models; set tie_word_embeddings: false to keep this head, or \
                         drop lm_head.weight to tie"
                    ),
                ),
                // The embedding is missing or unreadable: reported on its own.
                _ => {}
            },
            (false, None) if self.all_lost || self.lost.contains(lm_head) => {}
            (false, None) => self.error(
                "lm_head.missing",
                format!("{weights}: {lm_head}"),
                format!(
                    "missing while tie_word_embeddings is {}: vLLM refuses to load and transformers \
                     initialises the output layer randomly (write lm_head.weight or set tie_word_embeddings: true)",
                    if cfg.contains_key("tie_word_embeddings") { "false" } else { "absent (this class defaults to false)" }
                ),
            ),
            (false, Some(t)) => {
                if let Some(shape) = expected_shape_of(&expected, embed) {
                    if t.shape != shape {
                        self.error("tensor.shape", format!("{}: {lm_head}", t.file), format!("has shape {:?}, needs {shape:?}", t.shape));
                    }
                }
            }
            (true, None) => {}
        }
        for (name, t) in tensors {
            if expected_names.contains(name.as_str()) || name == lm_head {
                continue;
            }
            if name.ends_with("rotary_emb.inv_freq") {
                self.warn("tensor.extra", format!("{}: {name}", t.file), "RoPE buffer saved with the weights: loaders skip it");
            } else if self.vllm() {
                self.error(
                    "tensor.extra",
                    format!("{}: {name}", t.file),
                    "not a tensor of this architecture and config: vLLM's weight loader fails on unknown names",
                );
            } else {
                self.warn(
                    "tensor.extra",
                    format!("{}: {name}", t.file),
                    "not a tensor of this architecture and config: transformers skips it (listed as UNEXPECTED in \
                     its load report); vLLM's weight loader would fail on it",
                );
            }
        }
        if let Some(dtype) = cfg.get("dtype").or_else(|| cfg.get("torch_dtype")).and_then(Value::as_str) {
            let want = match dtype {
                "float16" => "F16",
                "bfloat16" => "BF16",
                "float32" => "F32",
                _ => "",
            };
            if !want.is_empty() && self.report.dtypes.len() == 1 && self.report.dtypes[0] != want {
                self.warn(
                    "config.dtype_mismatch",
                    format!("{CONFIG}: dtype"),
                    format!("`{dtype}` but the tensors are {}: vLLM's `--dtype auto` casts to `{dtype}`", self.report.dtypes[0]),
                );
            }
        }
        // The embedding must cover every token id the tokenizer can produce.
        if let (Some(rows), Some(max)) = (expected_shape_of(&expected, embed).map(|s| s[0]), vocab.and_then(|v| v.max_id)) {
            if max as usize >= rows {
                self.error(
                    "vocab.too_small",
                    format!("{CONFIG}: vocab_size"),
                    format!("{rows} embedding rows but the tokenizer has ids up to {max}"),
                );
            }
        }
    }

    /// Whether two float tensors hold the same values (as transformers' tie check,
    /// `torch.equal` after both are loaded in one dtype); None when either is unreadable.
    pub(super) fn same_values(&self, a: &TensorEntry, b: &TensorEntry) -> Option<bool> {
        if a.shape != b.shape {
            return Some(false);
        }
        if a.dtype == b.dtype && a.file == b.file && a.start == b.start {
            return Some(true);
        }
        Some(self.tensor_f32(a)? == self.tensor_f32(b)?)
    }

    /// A F16/BF16/F32 tensor's values as f32, read from its file.
    pub(super) fn tensor_f32(&self, t: &TensorEntry) -> Option<Vec<f32>> {
        use candle_core::{DType, Device, Tensor};
        let dtype = match t.dtype.as_str() {
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F32" => DType::F32,
            _ => return None,
        };
        let path = self.dir.join(&t.file);
        let file = path.is_file().then(|| File::open(&path).ok()).flatten()?;
        // SAFETY: read-only map, dropped before returning; the file is not modified here.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let data = map.get(t.start..t.start.checked_add(t.bytes)?)?;
        let n = t.bytes / dtype.size_in_bytes();
        let values = Tensor::from_raw_buffer(data, dtype, &[n], &Device::Cpu).ok()?;
        values.to_dtype(DType::F32).ok()?.to_vec1::<f32>().ok()
    }

    // ---------------------------------------------------------------- tokenizer
}

fn expected_shape_of(expected: &[(String, Vec<usize>)], name: &str) -> Option<Vec<usize>> {
    expected.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
}

/// Every tensor the architecture's HF class has for this config (without the tied
/// `lm_head`), with its shape.
fn expected_tensors(family: Family, cfg: &Map<String, Value>) -> Result<Vec<(String, Vec<usize>)>> {
    if family == Family::MiniMind {
        let mm = MiniMindConfig::from_json(&Value::Object(cfg.clone()))?;
        let mut out = mm_converters::naming::expected_tensors(&mm);
        out.retain(|(n, _)| n != "lm_head.weight");
        return Ok(out);
    }
    let int = |k: &str| -> Result<usize> {
        match cfg.get(k).and_then(Value::as_u64) {
            Some(v) => Ok(v as usize),
            None => bail!("`{k}` is missing or not an integer"),
        }
    };
    let opt = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
    let h = int("hidden_size")?;
    let layers = int("num_hidden_layers")?;
    let heads = int("num_attention_heads")?;
    let kv_heads = opt("num_key_value_heads").unwrap_or(heads);
    let vocab = int("vocab_size")?;
    if heads == 0 {
        bail!("num_attention_heads is 0");
    }
    let hd = opt("head_dim").unwrap_or(h / heads);
    let (q, kv) = (heads * hd, kv_heads * hd);
    let (qkv_bias, o_bias) = match family {
        Family::Qwen2 => (true, false),
        Family::Qwen2Moe => (flag("qkv_bias", true), false),
        _ => {
            let b = flag("attention_bias", false);
            (b, b)
        }
    };
    let mlp_bias = family == Family::Llama && flag("mlp_bias", false);
    let qk_norm = matches!(family, Family::Qwen3 | Family::Qwen3Moe);
    let moe = matches!(family, Family::Qwen2Moe | Family::Qwen3Moe);
    let (experts, moe_width, shared_width, step, mlp_only) = if moe {
        let only: Vec<usize> = cfg
            .get("mlp_only_layers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect())
            .unwrap_or_default();
        let shared = if family == Family::Qwen2Moe { int("shared_expert_intermediate_size")? } else { 0 };
        (int("num_experts")?, int("moe_intermediate_size")?, shared, opt("decoder_sparse_step").unwrap_or(1), only)
    } else {
        (0, 0, 0, 1, Vec::new())
    };
    let dense_width = if moe { opt("intermediate_size").unwrap_or(0) } else { int("intermediate_size")? };

    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    let mlp = |out: &mut Vec<(String, Vec<usize>)>, p: &str, width: usize, bias: bool| {
        out.push((format!("{p}.gate_proj.weight"), vec![width, h]));
        out.push((format!("{p}.up_proj.weight"), vec![width, h]));
        out.push((format!("{p}.down_proj.weight"), vec![h, width]));
        if bias {
            out.push((format!("{p}.gate_proj.bias"), vec![width]));
            out.push((format!("{p}.up_proj.bias"), vec![width]));
            out.push((format!("{p}.down_proj.bias"), vec![h]));
        }
    };
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        out.push((format!("{a}.q_proj.weight"), vec![q, h]));
        out.push((format!("{a}.k_proj.weight"), vec![kv, h]));
        out.push((format!("{a}.v_proj.weight"), vec![kv, h]));
        out.push((format!("{a}.o_proj.weight"), vec![h, q]));
        if qkv_bias {
            out.push((format!("{a}.q_proj.bias"), vec![q]));
            out.push((format!("{a}.k_proj.bias"), vec![kv]));
            out.push((format!("{a}.v_proj.bias"), vec![kv]));
        }
        if o_bias {
            out.push((format!("{a}.o_proj.bias"), vec![h]));
        }
        if qk_norm {
            out.push((format!("{a}.q_norm.weight"), vec![hd]));
            out.push((format!("{a}.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        let sparse = moe && experts > 0 && !mlp_only.contains(&l) && step > 0 && (l + 1) % step == 0;
        if sparse {
            out.push((format!("{p}.mlp.gate.weight"), vec![experts, h]));
            for e in 0..experts {
                mlp(&mut out, &format!("{p}.mlp.experts.{e}"), moe_width, false);
            }
            if family == Family::Qwen2Moe {
                mlp(&mut out, &format!("{p}.mlp.shared_expert"), shared_width, false);
                out.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, h]));
            }
        } else {
            if dense_width == 0 {
                bail!("layer {l} is dense but intermediate_size is missing");
            }
            mlp(&mut out, &format!("{p}.mlp"), dense_width, mlp_bias);
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    Ok(out)
}
