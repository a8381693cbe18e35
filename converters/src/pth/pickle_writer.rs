//! Emits the protocol-2 `data.pkl` that `torch.save` writes for a flat `{name: tensor}` dict.
//!
//! The byte stream follows CPython's pickler opcode for opcode, memo entries included, so a
//! file written here has the same `data.pkl` as torch's own for the same dict.

use std::collections::HashMap;

/// One tensor of the dict: it gets its own contiguous storage, keyed by its position.
pub(crate) struct TensorRecord<'a> {
    pub name: &'a str,
    /// The storage class, e.g. `HalfStorage` (pickled as the global `torch.HalfStorage`).
    pub storage_type: &'static str,
    pub shape: &'a [usize],
}

/// CPython pickles dict items in batches of this many (`Pickler._BATCHSIZE`).
const BATCH: usize = 1000;

/// Pickles `{name: _rebuild_tensor_v2(persistent_load(('storage', torch.<T>, '<i>', 'cpu',
/// numel)), 0, shape, stride, False, OrderedDict())}` for every record, storage `i` being the
/// record's index.
pub(crate) fn state_dict_pickle(records: &[TensorRecord]) -> Vec<u8> {
    let mut p = Pickler::default();
    p.out.extend([0x80, 2]); // PROTO 2
    p.out.push(b'}'); // EMPTY_DICT
    p.memoize();
    let mut index = 0;
    for batch in records.chunks(BATCH) {
        if batch.len() > 1 {
            p.out.push(b'('); // MARK
        }
        for record in batch {
            p.string(record.name);
            p.tensor(record, index);
            index += 1;
        }
        p.out.push(if batch.len() > 1 { b'u' } else { b's' }); // SETITEMS / SETITEM
    }
    p.out.push(b'.'); // STOP
    p.out
}

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    memo_len: u32,
    /// Objects Python would pickle once and then fetch from the memo: the globals and the
    /// interned strings `'storage'` and `'cpu'`.
    shared: HashMap<String, u32>,
}

impl Pickler {
    /// BINPUT / LONG_BINPUT of the value just written.
    fn memoize(&mut self) -> u32 {
        let index = self.memo_len;
        match u8::try_from(index) {
            Ok(i) => self.out.extend([b'q', i]),
            Err(_) => {
                self.out.push(b'r');
                self.out.extend(index.to_le_bytes());
            }
        }
        self.memo_len += 1;
        index
    }

    /// BINGET / LONG_BINGET.
    fn get(&mut self, index: u32) {
        match u8::try_from(index) {
            Ok(i) => self.out.extend([b'h', i]),
            Err(_) => {
                self.out.push(b'j');
                self.out.extend(index.to_le_bytes());
            }
        }
    }

    /// Writes a value once, then refers to it through the memo, as Python does for an object
    /// it has already seen.
    fn shared(&mut self, id: &str, write: impl FnOnce(&mut Self)) {
        if let Some(&index) = self.shared.get(id) {
            self.get(index);
        } else {
            write(self);
            let index = self.memoize();
            self.shared.insert(id.to_string(), index);
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
                             // Names and keys are far below 4 GiB; the length field is u32 by format.
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
        self.memoize();
    }

    fn global(&mut self, module: &str, name: &str) {
        self.shared(&format!("{module}\n{name}"), |p| {
            p.out.push(b'c'); // GLOBAL
            p.out.extend(format!("{module}\n{name}\n").as_bytes());
        });
    }

    fn interned(&mut self, s: &str) {
        self.shared(&format!("str:{s}"), |p| {
            p.out.push(b'X');
            p.out.extend((s.len() as u32).to_le_bytes());
            p.out.extend(s.as_bytes());
        });
    }

    /// The smallest of BININT1 / BININT2 / BININT / LONG1, as CPython chooses.
    fn int(&mut self, v: usize) {
        let v = v as u64;
        if let Ok(b) = u8::try_from(v) {
            self.out.extend([b'K', b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(b'M');
            self.out.extend(w.to_le_bytes());
        } else if let Ok(i) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend(i.to_le_bytes());
        } else {
            // Two's complement, little-endian, with a zero top bit (the value is positive).
            let n = (64 - v.leading_zeros() as usize) / 8 + 1;
            let bytes = (v as u128).to_le_bytes();
            self.out.extend([0x8a, n as u8]);
            self.out.extend(&bytes[..n]);
        }
    }

    /// A tuple of ints: EMPTY_TUPLE (never memoized), TUPLE1-3, or MARK … TUPLE.
    fn int_tuple(&mut self, items: &[usize]) {
        if items.is_empty() {
            self.out.push(b')');
            return;
        }
        if items.len() > 3 {
            self.out.push(b'(');
        }
        for &v in items {
            self.int(v);
        }
        self.out.push(match items.len() {
            1 => 0x85,
            2 => 0x86,
            3 => 0x87,
            _ => b't',
        });
        self.memoize();
    }

    fn tensor(&mut self, record: &TensorRecord, index: usize) {
        let numel: usize = record.shape.iter().product();
        let mut stride = vec![1usize; record.shape.len()];
        for d in (0..record.shape.len().saturating_sub(1)).rev() {
            // torch counts empty dims as 1 here, so `(4, 0)` gets strides `(1, 1)`.
            stride[d] = stride[d + 1] * record.shape[d + 1].max(1);
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'('); // MARK: the six arguments
        self.out.push(b'('); // MARK: the persistent id
        self.interned("storage");
        self.global("torch", record.storage_type);
        self.string(&index.to_string());
        self.interned("cpu");
        self.int(numel);
        self.out.push(b't');
        self.memoize();
        self.out.push(b'Q'); // BINPERSID
        self.int(0); // storage offset
        self.int_tuple(record.shape);
        self.int_tuple(&stride);
        self.out.push(0x89); // NEWFALSE: requires_grad
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R'); // OrderedDict(): no backward hooks
        self.memoize();
        self.out.push(b't');
        self.memoize();
        self.out.push(b'R');
        self.memoize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pth::pickle_reader::read_state_dict;

    #[test]
    fn reader_understands_the_writer() {
        let records = [
            TensorRecord {
                name: "b",
                storage_type: "HalfStorage",
                shape: &[4, 3],
            },
            TensorRecord {
                name: "a",
                storage_type: "FloatStorage",
                shape: &[],
            },
            TensorRecord {
                name: "c",
                storage_type: "BFloat16Storage",
                shape: &[2, 1, 3, 70_000],
            },
        ];
        let dict = read_state_dict(&state_dict_pickle(&records)).unwrap();
        let names: Vec<&str> = dict.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        let c = &dict[2].1;
        assert_eq!(c.shape, [2, 1, 3, 70_000]);
        assert_eq!(c.stride, [210_000, 210_000, 70_000, 1]);
        assert_eq!(c.storage.numel, 420_000);
        assert_eq!(c.storage.key, "2");
        assert!(dict[1].1.shape.is_empty());
        assert_eq!(dict[1].1.storage.numel, 1);
    }

    #[test]
    fn one_item_dicts_and_long_memo_indices() {
        let one = [TensorRecord {
            name: "x",
            storage_type: "HalfStorage",
            shape: &[3],
        }];
        let p = state_dict_pickle(&one);
        assert_eq!(p[p.len() - 2..], *b"s.");
        assert_eq!(read_state_dict(&p).unwrap().len(), 1);

        // 1001 tensors: two SETITEM batches and memo indices past 255.
        let names: Vec<String> = (0..1001).map(|i| format!("t{i}")).collect();
        let many: Vec<TensorRecord> = names
            .iter()
            .map(|n| TensorRecord {
                name: n,
                storage_type: "FloatStorage",
                shape: &[2],
            })
            .collect();
        let dict = read_state_dict(&state_dict_pickle(&many)).unwrap();
        assert_eq!(dict.len(), 1001);
        assert_eq!(dict[1000].0, "t1000");
        assert_eq!(dict[1000].1.storage.key, "1000");
    }

    #[test]
    fn large_ints_use_long1() {
        let mut p = Pickler::default();
        p.int(1 << 31);
        assert_eq!(p.out, [0x8a, 5, 0, 0, 0, 0x80, 0]);
        let mut p = Pickler::default();
        p.int(70_000);
        assert_eq!(p.out, [b'J', 0x70, 0x11, 0x01, 0]);
    }
}
