//! PyTorch `.pth` (torch.save zip): data-only reader and writer.
//!
//! A `torch.save` file is a zip archive (Stored, entries 64-byte aligned) under one folder,
//! `<prefix>/`, where the prefix is the file stem at save time:
//! - `<prefix>/data.pkl`: a pickle of the state dict, in which each tensor is
//!   `_rebuild_tensor_v2(storage, offset, size, stride, …)` and each storage is a persistent
//!   id `('storage', torch.HalfStorage, key, 'cpu', numel)`;
//! - `<prefix>/data/<key>`: the raw little-endian bytes of each storage;
//! - `<prefix>/byteorder`, `<prefix>/version` and a few small markers.
//!
//! The reader never runs pickle code: [`pickle_reader`] knows only the globals that describe
//! tensors and refuses any other by name.

pub mod checkpoint;
mod pickle_reader;
mod pickle_writer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::checkpoint::tensor_bytes;
use crate::atomic::write_file_atomically;
use crate::output_guard::FileKind;
use pickle_reader::TensorView;
use pickle_writer::TensorRecord;

/// torch storage classes and the candle dtype of their elements. Writing picks the first
/// entry for a dtype. `BoolStorage` is read as `U8` (torch stores one byte per bool).
const STORAGE_TYPES: &[(&str, DType)] = &[
    ("FloatStorage", DType::F32),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("DoubleStorage", DType::F64),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ShortStorage", DType::I16),
    ("ByteStorage", DType::U8),
    ("BoolStorage", DType::U8),
];

fn storage_dtype(storage_type: &str) -> Option<DType> {
    STORAGE_TYPES
        .iter()
        .find(|(name, _)| *name == storage_type)
        .map(|&(_, dtype)| dtype)
}

fn storage_type(dtype: DType) -> Option<&'static str> {
    STORAGE_TYPES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map(|&(name, _)| name)
}

/// Reads every tensor of a torch.save zip file holding a flat `name -> tensor` dict (what
/// upstream MiniMind writes), in the pickled key order. Nested checkpoints such as
/// `{"model": {...}, "epoch": 3}` are refused with an error naming the non-tensor entry.
/// Storages may be F32, F16, BF16, F64, I64, I32, I16, U8 (bool is read as U8).
pub fn read_pth(path: &std::path::Path) -> anyhow::Result<Vec<(String, candle_core::Tensor)>> {
    // One flat message, so that `{}` shows the file and the cause together.
    read_archive(path).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// Writes a flat state dict (insertion order kept) that `torch.load(path, weights_only=True)` accepts.
/// Each tensor gets its own contiguous storage; the archive folder is the file stem, as with
/// `torch.save`. The file appears only once it is complete.
pub fn write_pth(
    path: &std::path::Path,
    tensors: &[(String, candle_core::Tensor)],
) -> anyhow::Result<()> {
    write_archive(path, tensors).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

fn read_archive(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let meta = std::fs::metadata(path).context("cannot open")?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let file = File::open(path).context("cannot open")?;
    let file_len = file.metadata().context("cannot stat")?.len();
    let mut zip = ZipArchive::new(BufReader::new(file)).map_err(|e| {
        anyhow!("not a readable torch.save zip archive ({e}); truncated, or an old non-zip .pth")
    })?;
    let prefix = archive_prefix_of(&zip)?;

    if let Some(i) = zip.index_for_name(&format!("{prefix}/byteorder")) {
        let order = read_entry(&mut zip, i, file_len)?;
        if order != b"little" {
            bail!(
                "byteorder is {:?}; only little-endian files are supported",
                String::from_utf8_lossy(&order)
            );
        }
    }
    let pkl = format!("{prefix}/data.pkl");
    let pkl_index = zip
        .index_for_name(&pkl)
        .ok_or_else(|| anyhow!("`{pkl}` is missing"))?;
    let pickle = read_entry(&mut zip, pkl_index, file_len)?;
    let views = pickle_reader::read_state_dict(&pickle).with_context(|| format!("`{pkl}`"))?;

    // Read each storage once, build every tensor that views it, then drop its bytes.
    let mut by_key: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (i, (_, view)) in views.iter().enumerate() {
        let key = view.storage.key.as_str();
        let s = *slot.entry(key).or_insert_with(|| {
            by_key.push((key, Vec::new()));
            by_key.len() - 1
        });
        by_key[s].1.push(i);
    }
    let mut tensors: Vec<Option<Tensor>> = vec![None; views.len()];
    for (key, users) in by_key {
        let name = format!("{prefix}/data/{key}");
        let index = zip
            .index_for_name(&name)
            .ok_or_else(|| anyhow!("storage `{name}` is missing"))?;
        let bytes = read_entry(&mut zip, index, file_len)?;
        for i in users {
            let (tensor_name, view) = &views[i];
            let tensor = materialize(view, &bytes, &name)
                .with_context(|| format!("tensor `{tensor_name}`"))?;
            tensors[i] = Some(tensor);
        }
    }
    views
        .into_iter()
        .zip(tensors)
        .map(|((name, _), t)| {
            t.map(|t| (name, t))
                .ok_or_else(|| anyhow!("internal: tensor not built"))
        })
        .collect()
}

/// The folder holding `data.pkl`: torch names it after the file stem, so any single
/// top-level folder is accepted.
fn archive_prefix_of<R: Read + Seek>(zip: &ZipArchive<R>) -> Result<String> {
    let mut found: Vec<String> = zip
        .file_names()
        .filter_map(|name| name.ok())
        .filter_map(|name| name.strip_suffix("/data.pkl").map(str::to_string))
        .filter(|prefix| !prefix.is_empty() && !prefix.contains('/'))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no `<prefix>/data.pkl` in the archive; not a torch.save file"),
        _ => bail!(
            "several pickles in one archive ({}); expected one",
            found.join("/data.pkl, ")
        ),
    }
}

/// Reads a whole entry; the zip reader checks its CRC at the end.
fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    index: usize,
    file_len: u64,
) -> Result<Vec<u8>> {
    let mut entry = zip
        .by_index(index)
        .map_err(|e| anyhow!("cannot open zip entry #{index}: {e}"))?;
    let name = entry
        .name()
        .map(|n| n.into_owned())
        .unwrap_or_else(|_| format!("#{index}"));
    // A stored entry cannot be larger than the file; a bigger size field is corruption, and
    // trusting it would mean a huge allocation.
    if entry.size() > file_len {
        bail!(
            "`{name}` claims {} bytes in a {file_len}-byte file",
            entry.size()
        );
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read `{name}`: {e}"))?;
    Ok(bytes)
}

/// Builds the tensor a strided view describes, after checking that it lies inside the storage.
fn materialize(view: &TensorView, bytes: &[u8], storage_name: &str) -> Result<Tensor> {
    let dtype = view.storage.dtype;
    let esize = dtype.size_in_bytes();
    let storage_numel = view.storage.numel;
    let needed = storage_numel
        .checked_mul(esize)
        .ok_or_else(|| anyhow!("storage size overflows"))?;
    if bytes.len() < needed {
        bail!(
            "storage `{storage_name}` holds {} bytes, but the pickle declares {storage_numel} elements of {esize} bytes",
            bytes.len()
        );
    }
    let shape = view.shape.as_slice();
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| anyhow!("shape {shape:?} overflows"))?;
    if numel == 0 {
        return Ok(Tensor::zeros(shape, dtype, &Device::Cpu)?);
    }
    if numel > storage_numel {
        bail!("shape {shape:?} has {numel} elements but storage `{storage_name}` has {storage_numel} (overlapping views are not supported)");
    }
    // Size-1 dims never move the index, whatever stride torch recorded for them.
    let stride: Vec<usize> = shape
        .iter()
        .zip(&view.stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let last = shape
        .iter()
        .zip(&stride)
        .try_fold(view.offset, |at, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| at.checked_add(x)))
        .filter(|&last| last < storage_numel)
        .ok_or_else(|| {
            anyhow!(
                "view (offset {}, shape {shape:?}, stride {:?}) reaches past the {storage_numel} elements of storage `{storage_name}`",
                view.offset,
                view.stride
            )
        })?;
    let data: Cow<[u8]> = if is_row_major(shape, &stride) {
        Cow::Borrowed(&bytes[view.offset * esize..(last + 1) * esize])
    } else {
        Cow::Owned(gather(shape, &stride, view.offset, esize, bytes))
    };
    Ok(Tensor::from_raw_buffer(&data, dtype, shape, &Device::Cpu)?)
}

/// True when the elements are laid out densely in row-major order (size-1 dims ignored).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

/// Copies a strided view into row-major order. The caller has checked every index is in
/// bounds and that `numel` fits the storage, so the output is no bigger than the input.
fn gather(shape: &[usize], stride: &[usize], offset: usize, esize: usize, bytes: &[u8]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * esize);
    let mut index = vec![0usize; shape.len()];
    let mut at = offset;
    for _ in 0..numel {
        out.extend_from_slice(&bytes[at * esize..(at + 1) * esize]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += stride[d];
            if index[d] < shape[d] {
                break;
            }
            at -= stride[d] * shape[d];
            index[d] = 0;
        }
    }
    out
}

fn write_archive(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let records = tensors
        .iter()
        .map(|(name, t)| {
            if !seen.insert(name.as_str()) {
                bail!("tensor name `{name}` appears twice");
            }
            if !t.device().is_cpu() {
                bail!("tensor `{name}` is not on the CPU");
            }
            let storage_type = storage_type(t.dtype()).ok_or_else(|| {
                anyhow!(
                    "tensor `{name}` has dtype {:?}, which torch storages cannot hold",
                    t.dtype()
                )
            })?;
            Ok(TensorRecord {
                name,
                storage_type,
                shape: t.dims(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pickle = pickle_writer::state_dict_pickle(&records);
    let prefix = archive_prefix_for(path);

    write_file_atomically(path, FileKind::TorchZip, |w| {
        let mut zip = ZipWriter::new(w);
        // torch writes uncompressed entries aligned to 64 bytes so that storages can be mapped.
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .with_alignment(64)
            .last_modified_time(zip::DateTime::default());
        let add = |zip: &mut ZipWriter<_>, name: &str, data: &[u8]| -> Result<()> {
            let large = data.len() as u64 >= u64::from(u32::MAX);
            zip.start_file(format!("{prefix}/{name}"), options.large_file(large))?;
            zip.write_all(data)?;
            Ok(())
        };
        // Same records, same order as torch 2.x, minus the random `.data/serialization_id`.
        add(&mut zip, "data.pkl", &pickle)?;
        add(&mut zip, ".format_version", b"1")?;
        add(&mut zip, ".storage_alignment", b"64")?;
        add(&mut zip, "byteorder", b"little")?;
        for (i, (name, tensor)) in tensors.iter().enumerate() {
            let bytes = tensor_bytes(tensor).with_context(|| format!("tensor `{name}`"))?;
            add(&mut zip, &format!("data/{i}"), &bytes)?;
        }
        add(&mut zip, "version", b"3\n")?;
        zip.finish()?;
        Ok(())
    })
}

/// torch uses the file stem as the archive folder; keep it to plain characters.
fn archive_prefix_for(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with('.') {
        "archive".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Deterministic pseudo-random bytes (xorshift), so bit patterns include NaNs and -0.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn random_tensor(rng: &mut Rng, dtype: DType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let bytes = rng.bytes(n * dtype.size_in_bytes());
        Tensor::from_raw_buffer(&bytes, dtype, shape, &Device::Cpu).unwrap()
    }

    fn assert_same(a: &[(String, Tensor)], b: &[(String, Tensor)]) {
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(b) {
            assert_eq!(na, nb);
            assert_eq!(ta.dtype(), tb.dtype(), "{na}");
            assert_eq!(ta.dims(), tb.dims(), "{na}");
            assert_eq!(tensor_bytes(ta).unwrap(), tensor_bytes(tb).unwrap(), "{na}");
        }
    }

    /// A zip with arbitrary entries, for hand-made (and broken) archives.
    fn raw_archive(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = ZipWriter::new(File::create(path).unwrap());
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for (name, data) in entries {
            zip.start_file(*name, options).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    /// One hand-written view: (name, storage type, key, storage numel, offset, shape, stride).
    type RawView<'a> = (
        &'a str,
        &'a str,
        &'a str,
        usize,
        usize,
        &'a [usize],
        &'a [usize],
    );

    /// A protocol-2 pickle of `{name: view}` without memo, as a second, independent encoder.
    fn view_pickle(views: &[RawView]) -> Vec<u8> {
        fn s(p: &mut Vec<u8>, s: &str) {
            p.push(b'X');
            p.extend((s.len() as u32).to_le_bytes());
            p.extend(s.as_bytes());
        }
        fn i(p: &mut Vec<u8>, v: usize) {
            p.push(b'J');
            p.extend((v as i32).to_le_bytes());
        }
        let mut p = vec![0x80, 2, b'}', b'('];
        for &(name, storage, key, numel, offset, shape, stride) in views {
            s(&mut p, name);
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            s(&mut p, "storage");
            p.extend(format!("ctorch\n{storage}\n").as_bytes());
            s(&mut p, key);
            s(&mut p, "cpu");
            i(&mut p, numel);
            p.extend(b"tQ");
            i(&mut p, offset);
            for dims in [shape, stride] {
                p.push(b'(');
                dims.iter().for_each(|&d| i(&mut p, d));
                p.push(b't');
            }
            p.extend(b"\x89ccollections\nOrderedDict\n)RtR");
        }
        p.extend(b"u.");
        p
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    fn fixtures() -> Option<PathBuf> {
        let root = std::env::var_os("MM_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
        let dir = root.join("fixtures/minimind2/dense");
        if dir.is_dir() {
            Some(dir)
        } else {
            assert!(std::env::var_os("MM_REQUIRE_SHARED").is_none(), "MM_REQUIRE_SHARED is set but {} is missing", dir.display());
            eprintln!("skipping: MM_SHARED fixtures not found");
            None
        }
    }

    fn entry(path: &Path, name: &str) -> Vec<u8> {
        let mut zip = ZipArchive::new(File::open(path).unwrap()).unwrap();
        let mut out = Vec::new();
        zip.by_name(name).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_is_bit_identical() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let shapes: &[&[usize]] = &[
            &[],
            &[1],
            &[7],
            &[3, 5],
            &[2, 3, 4],
            &[2, 1, 3, 2, 2],
            &[0],
            &[4, 0],
        ];
        let mut tensors = Vec::new();
        for dtype in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I64,
            DType::I32,
            DType::U8,
        ] {
            for (i, shape) in shapes.iter().enumerate() {
                // Names deliberately out of sorted order: insertion order must survive.
                tensors.push((
                    format!("z.{dtype:?}.{}", 9 - i),
                    random_tensor(&mut rng, dtype, shape),
                ));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.pth");
        write_pth(&path, &tensors).unwrap();
        assert_same(&tensors, &read_pth(&path).unwrap());

        // Non-contiguous inputs are written in logical order.
        let t = random_tensor(&mut rng, DType::F16, &[4, 6]).t().unwrap();
        let tensors = vec![("t".to_string(), t.clone())];
        write_pth(&path, &tensors).unwrap();
        assert_same(
            &[("t".into(), t.contiguous().unwrap())],
            &read_pth(&path).unwrap(),
        );
    }

    #[test]
    fn written_archive_has_torch_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("my model.pth");
        let mut rng = Rng(7);
        let tensors = vec![
            ("a".to_string(), random_tensor(&mut rng, DType::F16, &[3])),
            (
                "b".to_string(),
                random_tensor(&mut rng, DType::F32, &[5, 2]),
            ),
        ];
        write_pth(&path, &tensors).unwrap();
        let mut zip = ZipArchive::new(File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        let expected = [
            "data.pkl",
            ".format_version",
            ".storage_alignment",
            "byteorder",
            "data/0",
            "data/1",
            "version",
        ];
        assert_eq!(names, expected.map(|n| format!("my_model/{n}")));
        for i in 0..zip.len() {
            let entry = zip.by_index(i).unwrap();
            assert_eq!(entry.compression(), CompressionMethod::Stored);
            assert_eq!(
                entry.data_start().unwrap() % 64,
                0,
                "{}",
                entry.name().unwrap()
            );
        }
        assert_eq!(entry(&path, "my_model/version"), b"3\n");
        assert_eq!(entry(&path, "my_model/byteorder"), b"little");
        assert_eq!(
            entry(&path, "my_model/data/1"),
            tensor_bytes(&tensors[1].1).unwrap()
        );
        // Nothing but the target is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn views_share_storage_with_offsets_and_strides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.pth");
        let pickle = view_pickle(&[
            ("whole", "FloatStorage", "0", 12, 0, &[3, 4], &[4, 1]),
            ("transposed", "FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]),
            ("column", "FloatStorage", "0", 12, 1, &[3], &[4]),
            ("tail", "FloatStorage", "0", 12, 10, &[2], &[1]),
            ("scalar", "FloatStorage", "0", 12, 11, &[], &[]),
            ("odd", "FloatStorage", "0", 12, 1, &[2, 1, 2], &[6, 99, 2]),
            ("other", "HalfStorage", "1", 2, 0, &[2], &[1]),
        ]);
        let half: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        raw_archive(
            &path,
            &[
                ("x/data.pkl", &pickle),
                ("x/data/0", &f32_bytes((0..12).map(|i| i as f32))),
                ("x/data/1", &half),
            ],
        );
        let got = read_pth(&path).unwrap();
        let v = |i: usize| {
            got[i]
                .1
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "whole",
                "transposed",
                "column",
                "tail",
                "scalar",
                "odd",
                "other"
            ]
        );
        assert_eq!(v(0), (0..12).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(v(1), [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        assert_eq!(v(2), [1., 5., 9.]);
        assert_eq!(v(3), [10., 11.]);
        assert_eq!(got[4].1.dims(), &[] as &[usize]);
        assert_eq!(v(4), [11.]);
        assert_eq!(got[5].1.dims(), &[2, 1, 2]);
        assert_eq!(v(5), [1., 3., 7., 9.]);
        assert_eq!(got[6].1.dtype(), DType::F16);
        assert_eq!(v(6), [1.5, -2.0]);
    }

    #[test]
    fn malformed_files_give_errors_naming_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let storage = f32_bytes((0..12).map(|i| i as f32));
        let good = |name| view_pickle(&[(name, "FloatStorage", "0", 12, 0, &[12], &[1])]);
        let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.".to_vec();
        // (file stem, zip entries, expected error text)
        type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "evil",
                vec![("m/data.pkl", evil)],
                "refusing pickle global `os.system` (only tensor data is read)",
            ),
            (
                "list",
                vec![("m/data.pkl", b"\x80\x02]q\x00.".to_vec())],
                "not a dict",
            ),
            (
                "memo",
                vec![("m/data.pkl", b"\x80\x02h\x03.".to_vec())],
                "bad memo index 3",
            ),
            (
                "underflow",
                vec![("m/data.pkl", b"\x80\x02}R.".to_vec())],
                "stack underflow",
            ),
            (
                "garbled",
                vec![("m/data.pkl", b"\x80\x02}X\xff\xff\xff\x7f".to_vec())],
                "truncated",
            ),
            (
                "short",
                vec![
                    ("m/data.pkl", good("w")),
                    ("m/data/0", storage[..8].to_vec()),
                ],
                "holds 8 bytes",
            ),
            (
                "past",
                vec![
                    (
                        "m/data.pkl",
                        view_pickle(&[("w", "FloatStorage", "0", 12, 10, &[4], &[1])]),
                    ),
                    ("m/data/0", storage.clone()),
                ],
                "reaches past",
            ),
            (
                "complex",
                vec![(
                    "m/data.pkl",
                    view_pickle(&[("w", "ComplexFloatStorage", "0", 12, 0, &[12], &[1])]),
                )],
                "unsupported storage type `torch.ComplexFloatStorage`",
            ),
            (
                "nostorage",
                vec![("m/data.pkl", good("w"))],
                "storage `m/data/0` is missing",
            ),
            (
                "nopickle",
                vec![("m/data/0", storage.clone())],
                "no `<prefix>/data.pkl`",
            ),
            (
                "two",
                vec![("a/data.pkl", good("w")), ("b/data.pkl", good("w"))],
                "several pickles",
            ),
            (
                "bigendian",
                vec![("m/byteorder", b"big".to_vec()), ("m/data.pkl", good("w"))],
                "little-endian",
            ),
        ];
        for (stem, entries, want) in cases {
            let path = dir.path().join(format!("{stem}.pth"));
            let entries: Vec<(&str, &[u8])> =
                entries.iter().map(|(n, d)| (*n, d.as_slice())).collect();
            raw_archive(&path, &entries);
            let err = read_pth(&path).unwrap_err().to_string();
            assert!(err.starts_with(&path.display().to_string()), "{err}");
            assert!(
                err.contains(want),
                "{stem}: {err:?} should mention {want:?}"
            );
        }

        let path = dir.path().join("notzip.pth");
        std::fs::write(&path, b"\x80\x02not a zip at all").unwrap();
        let err = read_pth(&path).unwrap_err().to_string();
        assert!(
            err.contains("notzip.pth: not a readable torch.save zip archive"),
            "{err}"
        );

        let err = read_pth(&dir.path().join("absent.pth"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.pth: cannot open"), "{err}");

        // Writing refuses what torch could not load, and leaves no file behind.
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let out = dir.path().join("dup.pth");
        let dup = vec![("w".to_string(), t.clone()), ("w".to_string(), t)];
        let err = write_pth(&out, &dup).unwrap_err().to_string();
        assert!(
            err.contains("dup.pth: tensor name `w` appears twice"),
            "{err}"
        );
        let u32s = vec![(
            "u".to_string(),
            Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap(),
        )];
        let err = write_pth(&out, &u32s).unwrap_err().to_string();
        assert!(err.contains("torch storages cannot hold"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn truncated_and_flipped_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.pth");
        let mut rng = Rng(42);
        let tensors = vec![
            (
                "a".to_string(),
                random_tensor(&mut rng, DType::F16, &[3, 2]),
            ),
            ("b".to_string(), random_tensor(&mut rng, DType::F32, &[5])),
        ];
        write_pth(&path, &tensors).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir.path().join("bad.pth");
        let try_read = |bytes: &[u8], what: &str| {
            std::fs::write(&bad, bytes).unwrap();
            let result = std::panic::catch_unwind(|| read_pth(&bad));
            assert!(result.is_ok(), "read_pth panicked on {what}");
        };
        for cut in 0..good.len() {
            try_read(&good[..cut], &format!("a file cut at {cut}"));
            // A cut file never reads back as the full dict.
            if cut < good.len() {
                assert!(read_pth(&bad).is_err(), "cut at {cut} read fine");
            }
        }
        for round in 0..400 {
            let mut bytes = good.clone();
            for _ in 0..1 + round % 4 {
                let at = rng.next() as usize % bytes.len();
                bytes[at] ^= 1 << (rng.next() % 8);
            }
            try_read(&bytes, &format!("flip round {round}"));
        }

        // The zip CRC stops most flips before the pickle, so also fuzz the pickle inside a
        // well-formed archive: this reaches the interpreter and the view checks.
        let pickle = entry(&path, "fuzz/data.pkl");
        let data0 = entry(&path, "fuzz/data/0");
        let data1 = entry(&path, "fuzz/data/1");
        for round in 0..1500 {
            let mut p = pickle.clone();
            if round % 3 == 0 {
                p.truncate(rng.next() as usize % p.len());
            } else {
                for _ in 0..1 + round % 3 {
                    let at = rng.next() as usize % p.len();
                    p[at] = if round % 2 == 0 {
                        rng.next() as u8
                    } else {
                        p[at] ^ (1 << (rng.next() % 8))
                    };
                }
            }
            raw_archive(
                &bad,
                &[
                    ("f/data.pkl", &p),
                    ("f/data/0", &data0),
                    ("f/data/1", &data1),
                ],
            );
            let result = std::panic::catch_unwind(|| read_pth(&bad));
            assert!(result.is_ok(), "read_pth panicked on pickle {p:?}");
        }
    }

    #[test]
    fn reads_real_torch_lora_and_rewrites_the_same_pickle() {
        let Some(dir) = fixtures() else { return };
        let path = dir.join("lora.pth");
        let tensors = read_pth(&path).unwrap();
        let mut expected = Vec::new();
        for layer in 0..2 {
            for proj in ["q", "o"] {
                expected.push((
                    format!("model.layers.{layer}.self_attn.{proj}_proj.lora.A.weight"),
                    [8, 256],
                ));
                expected.push((
                    format!("model.layers.{layer}.self_attn.{proj}_proj.lora.B.weight"),
                    [256, 8],
                ));
            }
        }
        assert_eq!(tensors.len(), 8);
        for ((name, t), (want_name, want_shape)) in tensors.iter().zip(&expected) {
            assert_eq!(name, want_name);
            assert_eq!(t.dims(), want_shape);
            assert_eq!(t.dtype(), DType::F32);
        }
        // LoRA B starts at zero in training, A does not; a sanity check that bytes were read.
        let abs_sum = |t: &Tensor| {
            t.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(abs_sum(&tensors[0].1) > 0.0);

        // Written under the same stem, the pickle is byte-for-byte what torch wrote.
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("lora.pth");
        write_pth(&out, &tensors).unwrap();
        assert_eq!(entry(&out, "lora/data.pkl"), entry(&path, "lora/data.pkl"));
        for i in 0..8 {
            let name = format!("lora/data/{i}");
            assert_eq!(entry(&out, &name), entry(&path, &name), "{name}");
        }
        assert_same(&tensors, &read_pth(&out).unwrap());
    }

    #[test]
    fn reads_real_torch_dense_model() {
        let Some(dir) = fixtures() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(dir.join("weights.tar.xz"))
            .arg("-C")
            .arg(tmp.path())
            .arg("model.pth")
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("skipping: cannot extract model.pth with tar -xJf");
            return;
        }
        let path = tmp.path().join("model.pth");
        let tensors = read_pth(&path).unwrap();
        assert_eq!(tensors.len(), 21);
        assert!(tensors.iter().all(|(_, t)| t.dtype() == DType::F16));
        let get = |n: &str| &tensors.iter().find(|(name, _)| name == n).unwrap().1;
        let (embed, head) = (get("model.embed_tokens.weight"), get("lm_head.weight"));
        assert_eq!(embed.dims(), head.dims());

        let views = pickle_reader::read_state_dict(&entry(&path, "model/data.pkl")).unwrap();
        let mut keys: Vec<&str> = views.iter().map(|(_, v)| v.storage.key.as_str()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 21, "every tensor has its own storage");

        // Same stem, another directory: the rewritten pickle must equal torch's byte for byte.
        std::fs::create_dir_all(tmp.path().join("w")).unwrap();
        let out = tmp.path().join("w").join("model.pth");
        write_pth(&out, &tensors).unwrap();
        assert_eq!(
            entry(&out, "model/data.pkl"),
            entry(&path, "model/data.pkl")
        );
        assert_same(&tensors, &read_pth(&out).unwrap());
    }
}
