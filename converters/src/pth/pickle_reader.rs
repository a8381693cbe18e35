//! A data-only pickle interpreter for torch's `data.pkl`.
//!
//! Python's unpickler can call any importable function; this one only knows the handful of
//! globals that describe tensors (see [`Global::resolve`]) and never executes anything. The
//! result is a list of tensor views (storage key, dtype, offset, shape, stride); the bytes
//! themselves live in the zip's `data/<key>` records and are read by the caller.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use candle_core::DType;

use super::storage_dtype;

/// Containers nested deeper than this are refused: real state dicts need about 4 levels, and
/// the limit keeps recursive drops of hostile input off the end of the stack.
const MAX_DEPTH: usize = 64;

/// One `('storage', torch.XStorage, key, location, numel)` persistent record.
#[derive(Debug, PartialEq)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements the pickle says the storage holds.
    pub numel: usize,
}

/// What `torch._utils._rebuild_tensor_v2` is asked to build: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorView {
    pub storage: Rc<StorageRef>,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// The only globals a state dict needs. Anything else is refused by name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.Tensor` / `torch.nn.parameter.Parameter`: the type argument of
    /// `_rebuild_from_type_v2`, never called.
    TensorClass,
    StorageType(DType),
    /// `torch.float16` and friends: inert values.
    DTypeObject,
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Global> {
        let global = match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorClass,
            ("torch", name) if name.ends_with("Storage") => match storage_dtype(name) {
                Some(dtype) => Global::StorageType(dtype),
                None => bail!("unsupported storage type `torch.{name}`"),
            },
            (
                "torch",
                "float16" | "half" | "bfloat16" | "float32" | "float" | "float64" | "double"
                | "int64" | "long" | "int32" | "int" | "int16" | "short" | "uint8" | "bool",
            ) => Global::DTypeObject,
            _ => bail!("refusing pickle global `{module}.{name}` (only tensor data is read)"),
        };
        Ok(global)
    }
}

#[derive(Debug, Clone)]
struct Seq {
    items: Vec<Value>,
    depth: usize,
}

#[derive(Debug, Clone)]
struct Map {
    items: Vec<(Value, Value)>,
    depth: usize,
}

/// A pickled value. Containers are shared through `Rc` so that memo lookups are cheap and
/// cannot blow up memory by copying. Bools, floats and bytes never matter for tensor data, so
/// only their kind is kept.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Map>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorView>),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(m) => m.depth,
            _ => 0,
        }
    }

    /// A short description for error messages (never the whole value).
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a string",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn tuple(items: Vec<Value>) -> Result<Value> {
        let depth = child_depth(items.iter())?;
        Ok(Value::Tuple(Rc::new(Seq { items, depth })))
    }

    fn empty_list() -> Value {
        Value::List(Rc::new(Seq {
            items: Vec::new(),
            depth: 1,
        }))
    }

    fn empty_dict() -> Value {
        Value::Dict(Rc::new(Map {
            items: Vec::new(),
            depth: 1,
        }))
    }
}

/// Depth of a container holding `items`, or an error when it would nest too deep.
fn child_depth<'a>(items: impl Iterator<Item = &'a Value>) -> Result<usize> {
    let depth = 1 + items.map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        bail!("containers nested more than {MAX_DEPTH} deep");
    }
    Ok(depth)
}

/// Reads `data.pkl` and returns its flat `name -> tensor view` dict, in pickled key order.
pub(crate) fn read_state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorView)>> {
    let top = Machine::new(pickle).run()?;
    let Value::Dict(map) = top else {
        bail!(
            "the pickled object is {}, not a dict of tensors",
            top.kind()
        );
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(map.items.len());
    for (key, value) in &map.items {
        let Value::Str(name) = key else {
            bail!("a state dict key is {}, not a string", key.kind());
        };
        if !seen.insert(name.clone()) {
            bail!("duplicate key `{name}`");
        }
        let Value::Tensor(view) = value else {
            bail!(
                "entry `{name}` is {}, not a tensor (only flat state dicts are supported)",
                value.kind()
            );
        };
        out.push((name.to_string(), TensorView::clone(view)));
    }
    Ok(out)
}

/// Byte cursor over the pickle; every read is bounds-checked.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| {
            anyhow!(
                "pickle is truncated: needs {n} more bytes at byte {}",
                self.pos
            )
        })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length prefix, checked against what is left so that a garbled one fails cleanly.
    fn len(&mut self, len: u64) -> Result<usize> {
        usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or_else(|| {
                anyhow!(
                    "pickle is truncated: a length of {len} at byte {}",
                    self.pos
                )
            })
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
            anyhow!(
                "pickle is truncated: unterminated GLOBAL at byte {}",
                self.pos
            )
        })?;
        let line = std::str::from_utf8(&rest[..n])
            .map_err(|_| anyhow!("GLOBAL name at byte {} is not UTF-8", self.pos))?;
        self.pos += n + 1;
        Ok(line)
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let at = self.pos;
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| anyhow!("string at byte {at} is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }
}

/// The unpickler state: value stack, mark stack, memo.
struct Machine<'a> {
    input: Input<'a>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Machine {
            input: Input { data, pos: 0 },
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.input.pos;
            let op = self
                .input
                .u8()
                .map_err(|_| anyhow!("pickle ends at byte {at} without STOP"))?;
            if let Some(value) = self
                .step(op)
                .map_err(|e| anyhow!("pickle byte {at} (opcode 0x{op:02x}): {e}"))?
            {
                return Ok(value);
            }
        }
    }

    /// Executes one opcode; returns the final value on STOP.
    fn step(&mut self, op: u8) -> Result<Option<Value>> {
        match op {
            0x80 => {
                let proto = self.input.u8()?;
                if proto > 5 {
                    bail!("unsupported pickle protocol {proto}");
                }
            }
            // FRAME: a size hint for buffered readers; the data follows inline.
            0x95 => {
                self.input.u64()?;
            }
            b'.' => {
                let value = self.pop()?;
                if !self.stack.is_empty() || !self.marks.is_empty() {
                    bail!("STOP with {} values left on the stack", self.stack.len());
                }
                return Ok(Some(value));
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?.clone();
                self.stack.push(top);
            }
            b'N' => self.stack.push(Value::None),
            0x88 | 0x89 => self.stack.push(Value::Bool),
            b'J' => {
                let v = i32::from_le_bytes(self.input.array()?);
                self.stack.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.input.u8()?;
                self.stack.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = self.input.u16()?;
                self.stack.push(Value::Int(v.into()));
            }
            0x8a => {
                let v = self.long1()?;
                self.stack.push(Value::Int(v));
            }
            b'G' => {
                self.input.take(8)?;
                self.stack.push(Value::Float);
            }
            // BINSTRING / SHORT_BINSTRING: Python 2 str, text if it decodes.
            b'T' | b'U' => {
                let n = if op == b'T' {
                    let n = i32::from_le_bytes(self.input.array()?);
                    u64::try_from(n).map_err(|_| anyhow!("negative BINSTRING length {n}"))?
                } else {
                    self.input.u8()?.into()
                };
                let n = self.input.len(n)?;
                let bytes = self.input.take(n)?;
                let value = match std::str::from_utf8(bytes) {
                    Ok(s) => Value::Str(Rc::from(s)),
                    Err(_) => Value::Bytes,
                };
                self.stack.push(value);
            }
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => self.input.u32()?.into(),
                    0x8c => self.input.u8()?.into(),
                    _ => self.input.u64()?,
                };
                let n = self.input.len(n)?;
                let value = self.input.utf8(n)?;
                self.stack.push(value);
            }
            b'B' | b'C' | 0x8e => {
                let n = match op {
                    b'B' => self.input.u32()?.into(),
                    b'C' => self.input.u8()?.into(),
                    _ => self.input.u64()?,
                };
                let n = self.input.len(n)?;
                self.input.take(n)?;
                self.stack.push(Value::Bytes);
            }
            b')' => self.stack.push(Value::tuple(Vec::new())?),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::tuple(items)?);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let items = self.pop_n(n)?;
                self.stack.push(Value::tuple(items)?);
            }
            b']' => self.stack.push(Value::empty_list()),
            b'l' => {
                let items = self.pop_mark()?;
                let depth = child_depth(items.iter())?;
                self.stack.push(Value::List(Rc::new(Seq { items, depth })));
            }
            b'a' => {
                let item = self.pop()?;
                self.extend_list(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b'}' => self.stack.push(Value::empty_dict()),
            b'd' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::empty_dict());
                self.extend_dict(items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.extend_dict(items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(items)?;
            }
            b'q' => {
                let index = self.input.u8()?.into();
                self.put(index)?;
            }
            b'r' => {
                let index = self.input.u32()?;
                self.put(index)?;
            }
            0x94 => {
                let index = u32::try_from(self.memo.len()).map_err(|_| anyhow!("memo is full"))?;
                self.put(index)?;
            }
            b'h' | b'j' => {
                let index = if op == b'h' {
                    self.input.u8()?.into()
                } else {
                    self.input.u32()?
                };
                let value = self
                    .memo
                    .get(&index)
                    .ok_or_else(|| anyhow!("bad memo index {index}"))?;
                self.stack.push(value.clone());
            }
            b'c' => {
                let module = self.input.line()?;
                let name = self.input.line()?;
                self.stack
                    .push(Value::Global(Global::resolve(module, name)?));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    bail!(
                        "STACK_GLOBAL needs two strings, got {} and {}",
                        module.kind(),
                        name.kind()
                    );
                };
                self.stack
                    .push(Value::Global(Global::resolve(module, name)?));
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Value::Global(global) = callable else {
                    bail!("REDUCE of {}, which is not callable", callable.kind());
                };
                let Value::Tuple(args) = args else {
                    bail!("REDUCE arguments are {}, not a tuple", args.kind());
                };
                self.stack.push(call(global, &args.items)?);
            }
            // BUILD sets attributes (an OrderedDict's `_metadata`): irrelevant to tensor data.
            b'b' => {
                self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                self.stack
                    .push(Value::Storage(Rc::new(persistent_storage(&pid)?)));
            }
            _ => bail!("unsupported pickle opcode"),
        }
        Ok(None)
    }

    fn long1(&mut self) -> Result<i64> {
        let n = usize::from(self.input.u8()?);
        if n > 8 {
            bail!("LONG1 of {n} bytes does not fit in 64 bits");
        }
        let bytes = self.input.take(n)?;
        let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            [0xff; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }

    fn current_mark(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.current_mark() {
            bail!("stack underflow");
        }
        self.stack.pop().ok_or_else(|| anyhow!("stack underflow"))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        if self.stack.len() < self.current_mark() + n {
            bail!("stack underflow");
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn top(&mut self) -> Result<&mut Value> {
        if self.stack.len() <= self.current_mark() {
            bail!("stack underflow");
        }
        self.stack
            .last_mut()
            .ok_or_else(|| anyhow!("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| anyhow!("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark))
    }

    fn put(&mut self, index: u32) -> Result<()> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<()> {
        let Value::List(list) = self.top()? else {
            bail!("APPEND to something that is not a list");
        };
        let depth = child_depth(items.iter())?;
        let list = Rc::make_mut(list);
        list.depth = list.depth.max(depth);
        list.items.extend(items);
        Ok(())
    }

    fn extend_dict(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of values");
        }
        let Value::Dict(dict) = self.top()? else {
            bail!("SETITEM on something that is not a dict");
        };
        let depth = child_depth(items.iter())?;
        let dict = Rc::make_mut(dict);
        dict.depth = dict.depth.max(depth);
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            dict.items.push((k, v));
        }
        Ok(())
    }
}

/// Applies an allowed callable to its arguments, building data only.
fn call(global: Global, args: &[Value]) -> Result<Value> {
    match global {
        Global::OrderedDict => {
            if !args.is_empty() {
                bail!("collections.OrderedDict called with arguments");
            }
            Ok(Value::empty_dict())
        }
        Global::RebuildTensorV2 => rebuild_tensor(args),
        Global::RebuildParameter | Global::RebuildParameterWithState => {
            let want = if global == Global::RebuildParameter {
                3
            } else {
                4
            };
            match args {
                [tensor @ Value::Tensor(_), ..] if args.len() == want => Ok(tensor.clone()),
                _ => bail!("_rebuild_parameter expects (tensor, requires_grad, hooks[, state])"),
            }
        }
        Global::RebuildFromTypeV2 => match args {
            [Value::Global(func), Value::Global(Global::TensorClass), Value::Tuple(inner), _]
                if *func != Global::RebuildFromTypeV2 =>
            {
                call(*func, &inner.items)
            }
            _ => bail!("_rebuild_from_type_v2 expects (func, torch.Tensor, args, state)"),
        },
        Global::TensorClass | Global::StorageType(_) | Global::DTypeObject => {
            bail!("{global:?} is not callable here")
        }
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
fn rebuild_tensor(args: &[Value]) -> Result<Value> {
    let (storage, offset, size, stride) = match args {
        [Value::Storage(s), offset, Value::Tuple(size), Value::Tuple(stride), _, _]
        | [Value::Storage(s), offset, Value::Tuple(size), Value::Tuple(stride), _, _, _] => {
            (s, offset, size, stride)
        }
        _ => bail!(
            "_rebuild_tensor_v2 expects (storage, offset, size, stride, requires_grad, hooks)"
        ),
    };
    let shape = size
        .items
        .iter()
        .map(|v| index(v, "size"))
        .collect::<Result<Vec<_>>>()?;
    let stride = stride
        .items
        .iter()
        .map(|v| index(v, "stride"))
        .collect::<Result<Vec<_>>>()?;
    if shape.len() != stride.len() {
        bail!(
            "tensor has {} sizes but {} strides",
            shape.len(),
            stride.len()
        );
    }
    let view = TensorView {
        storage: storage.clone(),
        offset: index(offset, "storage offset")?,
        shape,
        stride,
    };
    Ok(Value::Tensor(Rc::new(view)))
}

/// `('storage', torch.XStorage, key, location, numel)`.
fn persistent_storage(pid: &Value) -> Result<StorageRef> {
    let Value::Tuple(pid) = pid else {
        bail!("persistent id is {}, not a tuple", pid.kind());
    };
    match pid.items.as_slice() {
        [Value::Str(tag), Value::Global(Global::StorageType(dtype)), key, _location, numel]
            if &**tag == "storage" =>
        {
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => bail!("storage key is {}", other.kind()),
            };
            Ok(StorageRef {
                key,
                dtype: *dtype,
                numel: index(numel, "storage size")?,
            })
        }
        _ => bail!("persistent id is not ('storage', torch.<Type>Storage, key, location, numel)"),
    }
}

fn index(value: &Value, what: &str) -> Result<usize> {
    match value {
        Value::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("negative {what} {i}")),
        other => bail!("{what} is {}, not an int", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pickle for `{'w': _rebuild_tensor_v2(('storage', HalfStorage, '0', 'cpu', 6), 0, (2, 3), (3, 1), False, OrderedDict())}`.
    fn one_tensor_pickle() -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0];
        p.extend(b"X\x01\x00\x00\x00w");
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.extend(b"(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend(b"K\x00K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)Rt");
        p.extend(b"Rs.");
        p
    }

    #[test]
    fn reads_a_minimal_state_dict() {
        let dict = read_state_dict(&one_tensor_pickle()).unwrap();
        assert_eq!(dict.len(), 1);
        let (name, view) = &dict[0];
        assert_eq!(name, "w");
        assert_eq!(view.storage.key, "0");
        assert_eq!(view.storage.dtype, DType::F16);
        assert_eq!(view.storage.numel, 6);
        assert_eq!(
            (view.offset, view.shape.as_slice(), view.stride.as_slice()),
            (0, &[2, 3][..], &[3, 1][..])
        );
    }

    #[test]
    fn refuses_code_globals() {
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("__builtin__", "getattr"),
        ] {
            let mut p = vec![0x80, 2];
            p.extend(format!("c{module}\n{name}\nX\x02\x00\x00\x00lsR.").as_bytes());
            let err = read_state_dict(&p).unwrap_err().to_string();
            assert!(
                err.contains(&format!("refusing pickle global `{module}.{name}`")),
                "{err}"
            );
        }
        // The protocol 4 spelling is refused the same way.
        let p = b"\x80\x04\x8c\x02os\x8c\x06system\x93.";
        let err = read_state_dict(p).unwrap_err().to_string();
        assert!(err.contains("`os.system`"), "{err}");
    }

    #[test]
    fn structural_errors_are_reported() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x80\x02s.", "stack underflow"),
            (b"\x80\x02h\x05.", "bad memo index 5"),
            (b"\x80\x02]q\x00.", "not a dict"),
            (b"\x80\x02}X\x05\x00\x00\x00ab", "truncated"),
            (b"\x80\x02}", "without STOP"),
            (b"\x80\x02\xff", "unsupported pickle opcode"),
            (
                b"\x80\x02ctorch\nComplexFloatStorage\n.",
                "unsupported storage type",
            ),
            (b"\x80\x02}X\x01\x00\x00\x00aK\x01s.", "not a tensor"),
            (b"\x80\x02t.", "no MARK"),
        ];
        for (pickle, want) in cases {
            let err = read_state_dict(pickle).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn protocol_4_opcodes() {
        // {'a': 1}-like shapes are not tensors, so check the machine's value directly.
        let p = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01k\x94C\x02hi\x94s.";
        let Value::Dict(d) = Machine::new(p).run().unwrap() else {
            panic!("not a dict")
        };
        assert!(matches!(&d.items[0], (Value::Str(k), Value::Bytes) if &**k == "k"));
    }

    #[test]
    fn long1_and_binint_sign() {
        let p = b"\x80\x02\x8a\x02\x00\xff\x8a\x00J\xfe\xff\xff\xff\x87.";
        let Value::Tuple(t) = Machine::new(p).run().unwrap() else {
            panic!("not a tuple")
        };
        let ints: Vec<i64> = t
            .items
            .iter()
            .map(|v| if let Value::Int(i) = v { *i } else { 99 })
            .collect();
        assert_eq!(ints, [-256, 0, -2]);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut p = vec![0x80, 2, b')'];
        p.extend(std::iter::repeat_n(0x85u8, 100_000));
        p.push(b'.');
        let err = read_state_dict(&p).unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
    }
}
