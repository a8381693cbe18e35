//! The GGUF container (v3, little-endian): metadata key/values, tensor infos, then tensor
//! data aligned to 32 bytes. The checks mirror the ones llama.cpp's `gguf_init_from_reader`
//! applies, so a file this writer accepts is a file llama.cpp accepts (docs/gguf.md §1).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;

use crate::quant::GgmlType;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
pub const ALIGNMENT_KEY: &str = crate::gguf::keys::general::ALIGNMENT;
/// `GGML_MAX_NAME` is 64 including the NUL.
pub const MAX_TENSOR_NAME_BYTES: usize = 63;
const MAX_DIMS: usize = 4;

/// `enum gguf_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64].into_iter().find(|t| t.id() == id)
    }

    /// Bytes of one value; strings and arrays are at least their length prefix.
    fn min_size(self) -> usize {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
            ValueType::Array => 12,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }
}

/// One metadata value. Arrays carry their element type so that empty arrays keep it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn value_type(&self) -> ValueType {
        match self {
            MetaValue::U8(_) => ValueType::U8,
            MetaValue::I8(_) => ValueType::I8,
            MetaValue::U16(_) => ValueType::U16,
            MetaValue::I16(_) => ValueType::I16,
            MetaValue::U32(_) => ValueType::U32,
            MetaValue::I32(_) => ValueType::I32,
            MetaValue::F32(_) => ValueType::F32,
            MetaValue::Bool(_) => ValueType::Bool,
            MetaValue::String(_) => ValueType::String,
            MetaValue::Array(..) => ValueType::Array,
            MetaValue::U64(_) => ValueType::U64,
            MetaValue::I64(_) => ValueType::I64,
            MetaValue::F64(_) => ValueType::F64,
        }
    }

    /// Any integer that fits in u64 (readers of foreign files should not insist on u32).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, items) => Some(items),
            _ => None,
        }
    }

    pub fn string_array(items: impl IntoIterator<Item = String>) -> MetaValue {
        MetaValue::Array(ValueType::String, items.into_iter().map(MetaValue::String).collect())
    }

    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> MetaValue {
        MetaValue::Array(ValueType::I32, items.into_iter().map(MetaValue::I32).collect())
    }
}

/// Key/values in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`, keeping its position if it exists, appending otherwise.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// Removes `key` and appends it again: llama-quantize re-sets the file type this way.
    pub fn set_last(&mut self, key: &str, value: MetaValue) {
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_string(), value));
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The alignment the data section uses: `general.alignment` if set, else 32.
    pub fn alignment(&self) -> Result<u64> {
        match self.get(ALIGNMENT_KEY) {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(MetaValue::U32(a)) if a.is_power_of_two() => Ok(*a as u64),
            Some(other) => bail!("{ALIGNMENT_KEY} must be a UINT32 power of two, found {other:?}"),
        }
    }
}

/// Name, dims (innermost first, as GGUF stores them), type and offset within the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Bytes of the tensor's data, without padding.
    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.ty.block_size() as u64 * self.ty.type_size() as u64
    }

    /// The shape in PyTorch order (outermost first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

fn pad(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// `ggml_n_dims`: trailing dimensions of 1 are not written (at least one dimension stays).
pub fn trim_dims(ne: &[u64]) -> Vec<u64> {
    let mut n = ne.len();
    while n > 1 && ne[n - 1] == 1 {
        n -= 1;
    }
    ne[..n.max(1)].to_vec()
}

fn check_tensor_plan(name: &str, ne: &[u64], ty: GgmlType) -> Result<()> {
    ensure!(!name.is_empty(), "a tensor has an empty name");
    ensure!(
        name.len() <= MAX_TENSOR_NAME_BYTES,
        "tensor name '{name}' is {} bytes; GGUF allows at most {MAX_TENSOR_NAME_BYTES}",
        name.len()
    );
    ensure!(!ne.is_empty() && ne.len() <= MAX_DIMS, "tensor '{name}' has {} dims; GGUF allows 1 to 4", ne.len());
    ensure!(
        ne[0].is_multiple_of(ty.block_size() as u64),
        "tensor '{name}': row length {} is not a multiple of the {ty} block size {}",
        ne[0],
        ty.block_size()
    );
    let mut total: u64 = 1;
    for &d in ne {
        total = total.checked_mul(d).with_context(|| format!("tensor '{name}': element count overflows"))?;
    }
    ensure!(total < (1u64 << 62), "tensor '{name}': {total} elements is not plausible");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Streams a GGUF file: the header and every tensor info go out first (sizes follow from the
/// types alone), then each tensor's bytes in turn, so no more than one tensor is in memory.
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<TensorInfo>,
    next: usize,
    alignment: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header for `tensors` (name, dims innermost first, type), in that order.
    pub fn new(mut out: W, metadata: &Metadata, tensors: &[(String, Vec<u64>, GgmlType)]) -> Result<Self> {
        let alignment = metadata.alignment()?;
        let mut infos = Vec::with_capacity(tensors.len());
        let mut names = HashSet::new();
        let mut offset = 0u64;
        for (name, ne, ty) in tensors {
            let ne = trim_dims(ne);
            check_tensor_plan(name, &ne, *ty)?;
            ensure!(names.insert(name.as_str()), "tensor '{name}' is listed twice");
            let info = TensorInfo { name: name.clone(), ne, ty: *ty, offset };
            offset += pad(info.n_bytes(), alignment);
            infos.push(info);
        }
        let mut keys = HashSet::new();
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata.iter() {
            ensure!(!key.is_empty(), "metadata has an empty key");
            ensure!(keys.insert(key), "metadata key '{key}' appears twice");
            write_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            write_value(&mut header, value).with_context(|| format!("metadata key '{key}'"))?;
        }
        for info in &infos {
            write_string(&mut header, &info.name);
            header.extend_from_slice(&(info.ne.len() as u32).to_le_bytes());
            for d in &info.ne {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&info.ty.id().to_le_bytes());
            header.extend_from_slice(&info.offset.to_le_bytes());
        }
        let padded = pad(header.len() as u64, alignment) as usize;
        header.resize(padded, 0);
        out.write_all(&header)?;
        Ok(Self { out, tensors: infos, next: 0, alignment })
    }

    /// The tensor the next `write_tensor` call must supply.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Writes the data of the next planned tensor, which must be `name`, plus its padding.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let info = self.tensors.get(self.next).with_context(|| format!("tensor '{name}' was not planned"))?;
        ensure!(info.name == name, "tensor '{name}' written out of order (expected '{}')", info.name);
        ensure!(
            bytes.len() as u64 == info.n_bytes(),
            "tensor '{name}': {} bytes given, {} {:?} needs {}",
            bytes.len(),
            info.ty,
            info.ne,
            info.n_bytes()
        );
        self.out.write_all(bytes)?;
        let padding = pad(info.n_bytes(), self.alignment) - info.n_bytes();
        self.out.write_all(&vec![0u8; padding as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks every planned tensor was written and hands back the sink.
    pub fn finish(self) -> Result<W> {
        if let Some(missing) = self.tensors.get(self.next) {
            bail!("tensor '{}' was planned but never written", missing.name);
        }
        Ok(self.out)
    }
}

fn write_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn write_value(buf: &mut Vec<u8>, value: &MetaValue) -> Result<()> {
    match value {
        MetaValue::U8(v) => buf.push(*v),
        MetaValue::I8(v) => buf.push(*v as u8),
        MetaValue::U16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => buf.push(*v as u8),
        MetaValue::String(s) => write_string(buf, s),
        MetaValue::U64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => buf.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(elem, items) => {
            ensure!(*elem != ValueType::Array, "arrays of arrays are not allowed in GGUF");
            buf.extend_from_slice(&elem.id().to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                ensure!(item.value_type() == *elem, "array of {} holds a {}", elem.name(), item.value_type().name());
                write_value(buf, item)?;
            }
        }
    }
    Ok(())
}

/// Writes a whole GGUF file from in-memory tensor bytes (tests and small files).
pub fn write_to_vec(metadata: &Metadata, tensors: &[(String, Vec<u64>, GgmlType, Vec<u8>)]) -> Result<Vec<u8>> {
    let plan: Vec<_> = tensors.iter().map(|(n, ne, ty, _)| (n.clone(), ne.clone(), *ty)).collect();
    let mut writer = GgufWriter::new(Vec::new(), metadata, &plan)?;
    for (name, _, _, bytes) in tensors {
        writer.write_tensor(name, bytes)?;
    }
    writer.finish()
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A GGUF file mapped into memory; tensor data is borrowed from the mapping.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    /// Start of the data section, from the start of the file.
    pub data_offset: u64,
    pub alignment: u64,
    bytes: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        crate::limits::check_regular_file(path, "GGUF file")?;
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: read-only mapping; mm never writes to a file it is reading.
        let bytes = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let parsed = parse(&bytes).with_context(|| format!("{} is not a valid GGUF file", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            data_offset: parsed.data_offset,
            alignment: parsed.alignment,
            bytes,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's data bytes (bounds were checked when the file was opened).
    pub fn data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes[start..start + info.n_bytes() as usize]
    }

    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A required metadata value, with an error naming the file and key.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.metadata.get(key).with_context(|| format!("{}: metadata key '{key}' is missing", self.path.display()))
    }
}

pub struct Parsed {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    pub alignment: u64,
}

/// Parses and validates a whole GGUF image.
pub fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4, "magic")?;
    ensure!(magic == MAGIC, "bad magic {:02x?} (expected \"GGUF\")", magic);
    let version = r.u32("version")?;
    if version & 0xFFFF == 0 && version != 0 {
        bail!("version {version:#x} looks byte-swapped (big-endian GGUF is not supported)");
    }
    ensure!(version == 2 || version == 3, "unsupported GGUF version {version} (2 and 3 are supported)");
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Every entry takes some bytes, which bounds the counts of an honest file.
    ensure!(n_kv <= (bytes.len() / 12) as u64, "metadata count {n_kv} cannot fit in a {}-byte file", bytes.len());
    ensure!(n_tensors <= (bytes.len() / 28) as u64, "tensor count {n_tensors} cannot fit in a {}-byte file", bytes.len());

    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let key = r.string(&format!("key of metadata entry {i}"))?;
        ensure!(!key.is_empty(), "metadata entry {i} has an empty key");
        ensure!(metadata.get(&key).is_none(), "metadata key '{key}' appears twice");
        let ty = r.u32(&format!("type of '{key}'"))?;
        let ty = ValueType::from_id(ty).with_context(|| format!("metadata key '{key}' has unknown type {ty}"))?;
        let value = r.value(ty, &key, true)?;
        metadata.set(&key, value);
    }
    let alignment = metadata.alignment()?;

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::new();
    let mut expected_offset = 0u64;
    for i in 0..n_tensors {
        let name = r.string(&format!("name of tensor {i}"))?;
        let n_dims = r.u32(&format!("n_dims of '{name}'"))? as usize;
        ensure!((1..=MAX_DIMS).contains(&n_dims), "tensor '{name}' has {n_dims} dims");
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let d = r.u64(&format!("dims of '{name}'"))?;
            ensure!(d as i64 >= 0, "tensor '{name}' has a negative dimension");
            ne.push(d);
        }
        let ty_id = r.u32(&format!("type of '{name}'"))?;
        let ty = GgmlType::from_id(ty_id)
            .with_context(|| format!("tensor '{name}' has ggml type {ty_id}, which mm does not support"))?;
        check_tensor_plan(&name, &ne, ty)?;
        ensure!(names.insert(name.clone()), "tensor '{name}' appears twice");
        let offset = r.u64(&format!("offset of '{name}'"))?;
        ensure!(
            offset == expected_offset,
            "tensor '{name}' has offset {offset}, expected {expected_offset} (offsets must be the padded running sizes)"
        );
        let info = TensorInfo { name, ne, ty, offset };
        expected_offset += pad(info.n_bytes(), alignment);
        tensors.push(info);
    }
    let data_offset = pad(r.pos as u64, alignment);
    // gguf.cpp reads the data section as the sum of padded sizes, the last padding included.
    ensure!(
        data_offset + expected_offset <= bytes.len() as u64,
        "truncated: the data section needs {} bytes from offset {data_offset} but the file has {}",
        expected_offset,
        bytes.len()
    );
    for info in &tensors {
        let end = data_offset + info.offset + info.n_bytes();
        ensure!(
            end <= bytes.len() as u64,
            "tensor '{}' ends at byte {end}, past the end of the file ({} bytes): truncated?",
            info.name,
            bytes.len()
        );
    }
    Ok(Parsed { version, metadata, tensors, data_offset, alignment })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.with_context(|| {
            format!("truncated: {what} needs {n} bytes at offset {} but the file has {}", self.pos, self.bytes.len())
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        ensure!(len <= (self.bytes.len() - self.pos) as u64, "truncated: {what} claims {len} bytes");
        let raw = self.take(len as usize, what)?;
        String::from_utf8(raw.to_vec()).with_context(|| format!("{what} is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, key: &str, allow_array: bool) -> Result<MetaValue> {
        let what = format!("value of '{key}'");
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => match self.array::<1>(&what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => bail!("'{key}' is a BOOL with byte value {b}"),
            },
            ValueType::String => MetaValue::String(self.string(&what)?),
            ValueType::Array => {
                ensure!(allow_array, "'{key}' is an array of arrays, which GGUF does not allow");
                let elem = self.u32(&what)?;
                let elem = ValueType::from_id(elem).with_context(|| format!("'{key}' is an array of unknown type {elem}"))?;
                let count = self.u64(&what)?;
                let room = (self.bytes.len() - self.pos) / elem.min_size();
                ensure!(count <= room as u64, "truncated: '{key}' claims {count} elements");
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, false)?);
                }
                MetaValue::Array(elem, items)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut md = Metadata::new();
        md.set("general.architecture", MetaValue::String("llama".into()));
        md.set("llama.block_count", MetaValue::U32(2));
        md.set("llama.rope.freq_base", MetaValue::F32(1e6));
        md.set("tokenizer.ggml.tokens", MetaValue::string_array(["a".to_string(), "b c".to_string()]));
        md.set("tokenizer.ggml.token_type", MetaValue::i32_array([3, 1]));
        md.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
        let tensors = vec![
            ("norm.weight".to_string(), vec![3], GgmlType::F32, vec![1u8; 12]),
            ("w.weight".to_string(), vec![32, 2], GgmlType::Q8_0, vec![2u8; 68]),
            ("e.weight".to_string(), vec![4, 5, 1], GgmlType::F16, vec![3u8; 40]),
        ];
        write_to_vec(&md, &tensors).unwrap()
    }

    #[test]
    fn writes_the_layout_llama_cpp_checks() {
        let bytes = sample();
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.data_offset % 32, 0);
        let offsets: Vec<u64> = parsed.tensors.iter().map(|t| t.offset).collect();
        assert_eq!(offsets, vec![0, 32, 128]);
        // Trailing unit dims are dropped as ggml_n_dims does.
        assert_eq!(parsed.tensors[2].ne, vec![4, 5]);
        // The last tensor is padded too.
        assert_eq!(bytes.len() as u64, parsed.data_offset + 128 + 64);
        assert_eq!(parsed.metadata.get("llama.block_count"), Some(&MetaValue::U32(2)));
        assert_eq!(parsed.metadata.get("tokenizer.ggml.token_type").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(&bytes[parsed.data_offset as usize + 32..][..4], &[2, 2, 2, 2]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "truncated to {len} bytes was accepted");
        }
    }

    #[test]
    fn corrupt_headers_are_rejected_with_a_reason() {
        let good = sample();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(format!("{:#}", parse(&bad).err().unwrap()).contains("magic"));
        let mut bad = good.clone();
        bad[4] = 7;
        assert!(format!("{:#}", parse(&bad).err().unwrap()).contains("version"));
        let mut bad = good.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(format!("{:#}", parse(&bad).err().unwrap()).contains("tensor count"));
        // Random single-byte corruption anywhere in the header never panics.
        let header_end = parse(&good).unwrap().data_offset as usize;
        for i in 0..header_end {
            for v in [0u8, 0xff, 0x7f] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn writer_refuses_what_llama_cpp_would_reject() {
        let md = Metadata::new();
        let long = "x".repeat(64);
        assert!(GgufWriter::new(Vec::new(), &md, &[(long, vec![4], GgmlType::F32)]).is_err());
        assert!(GgufWriter::new(Vec::new(), &md, &[("a".into(), vec![33], GgmlType::Q8_0)]).is_err());
        let dup = [("a".to_string(), vec![4], GgmlType::F32), ("a".to_string(), vec![4], GgmlType::F32)];
        assert!(GgufWriter::new(Vec::new(), &md, &dup).is_err());
        let mut w = GgufWriter::new(Vec::new(), &md, &[("a".into(), vec![4], GgmlType::F32)]).unwrap();
        assert!(w.write_tensor("a", &[0u8; 15]).is_err());
        let w = GgufWriter::new(Vec::new(), &md, &[("a".into(), vec![4], GgmlType::F32)]).unwrap();
        assert!(w.finish().is_err());
    }
}
