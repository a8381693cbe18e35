//! A bounds-checked reader of FlatBuffer tables by slot number, for files of any origin: every
//! offset is checked against the buffer before it is followed, so a malformed file gives an
//! error, never a panic or an out-of-bounds read. It knows no schema; the caller names slots.
//!
//! Layout (little-endian): the buffer starts with a `u32` offset to the root table; a table
//! starts with an `i32` back-offset to its vtable (`vtable = table − value`); a vtable is
//! `u16 vtable_bytes, u16 table_bytes`, then one `u16` per slot (0 = absent, else the field's
//! offset inside the table). Strings and vectors are reached through a `u32` offset relative
//! to where it is stored and start with a `u32` element count.

use anyhow::{bail, ensure, Context, Result};

/// One table inside `buf`.
#[derive(Debug, Clone, Copy)]
pub struct FbTable<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
    table_len: usize,
}

fn bytes<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    let end = at.checked_add(N).context("offset overflow")?;
    ensure!(end <= buf.len(), "offset {at}+{N} is past the end ({} bytes)", buf.len());
    Ok(buf[at..end].try_into().expect("slice of N bytes"))
}

fn u32_at(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(bytes(buf, at)?))
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(bytes(buf, at)?))
}

/// The target of the `u32` offset stored at `at`.
fn follow(buf: &[u8], at: usize) -> Result<usize> {
    let target = at.checked_add(u32_at(buf, at)? as usize).context("offset overflow")?;
    ensure!(target < buf.len(), "offset at {at} points past the end ({target} ≥ {})", buf.len());
    Ok(target)
}

impl<'a> FbTable<'a> {
    /// The root table of a finished buffer.
    pub fn root(buf: &'a [u8]) -> Result<Self> {
        ensure!(buf.len() >= 8, "{} bytes is too short for a FlatBuffer", buf.len());
        Self::at(buf, follow(buf, 0)?)
    }

    fn at(buf: &'a [u8], pos: usize) -> Result<Self> {
        let back = i32::from_le_bytes(bytes(buf, pos)?) as i64;
        let vtable = pos as i64 - back;
        ensure!(vtable >= 0 && (vtable as usize) < buf.len(), "table at {pos}: vtable offset {vtable} out of range");
        let vtable = vtable as usize;
        let vtable_len = u16_at(buf, vtable)? as usize;
        let table_len = u16_at(buf, vtable + 2)? as usize;
        ensure!(
            vtable_len >= 4 && vtable_len.is_multiple_of(2) && vtable + vtable_len <= buf.len(),
            "table at {pos}: bad vtable of {vtable_len} bytes at {vtable}"
        );
        ensure!(table_len >= 4 && pos + table_len <= buf.len(), "table at {pos}: {table_len} bytes past the end");
        Ok(Self { buf, pos, vtable, vtable_len, table_len })
    }

    /// Absolute position of slot `slot`'s inline value of `width` bytes, if present.
    fn field(&self, slot: u16, width: usize) -> Result<Option<usize>> {
        let entry = 4 + 2 * slot as usize;
        if entry + 2 > self.vtable_len {
            return Ok(None);
        }
        let offset = u16_at(self.buf, self.vtable + entry)? as usize;
        if offset == 0 {
            return Ok(None);
        }
        ensure!(
            offset + width <= self.table_len,
            "table at {}: slot {slot} ({width} bytes at +{offset}) outside its {} bytes",
            self.pos,
            self.table_len
        );
        Ok(Some(self.pos + offset))
    }

    pub fn has(&self, slot: u16) -> Result<bool> {
        Ok(self.field(slot, 1)?.is_some())
    }

    pub fn u8(&self, slot: u16, default: u8) -> Result<u8> {
        Ok(match self.field(slot, 1)? {
            Some(at) => bytes::<1>(self.buf, at)?[0],
            None => default,
        })
    }

    pub fn bool(&self, slot: u16, default: bool) -> Result<bool> {
        Ok(self.u8(slot, default as u8)? != 0)
    }

    pub fn i32(&self, slot: u16, default: i32) -> Result<i32> {
        Ok(match self.field(slot, 4)? {
            Some(at) => i32::from_le_bytes(bytes(self.buf, at)?),
            None => default,
        })
    }

    pub fn u32(&self, slot: u16, default: u32) -> Result<u32> {
        Ok(match self.field(slot, 4)? {
            Some(at) => u32_at(self.buf, at)?,
            None => default,
        })
    }

    pub fn f32(&self, slot: u16, default: f32) -> Result<f32> {
        Ok(match self.field(slot, 4)? {
            Some(at) => f32::from_le_bytes(bytes(self.buf, at)?),
            None => default,
        })
    }

    /// Where the object referenced by slot `slot` starts.
    fn target(&self, slot: u16) -> Result<Option<usize>> {
        match self.field(slot, 4)? {
            Some(at) => Ok(Some(follow(self.buf, at)?)),
            None => Ok(None),
        }
    }

    pub fn table(&self, slot: u16) -> Result<Option<FbTable<'a>>> {
        self.target(slot)?.map(|at| Self::at(self.buf, at)).transpose()
    }

    /// `(first element, count)` of a vector of `elem`-byte elements.
    fn vector(&self, slot: u16, elem: usize) -> Result<Option<(usize, usize)>> {
        let Some(at) = self.target(slot)? else { return Ok(None) };
        let n = u32_at(self.buf, at)? as usize;
        let end = n.checked_mul(elem).and_then(|b| b.checked_add(at + 4)).context("vector size overflow")?;
        ensure!(end <= self.buf.len(), "vector of {n}×{elem} bytes at {at} runs past the end");
        Ok(Some((at + 4, n)))
    }

    pub fn string(&self, slot: u16) -> Result<Option<&'a str>> {
        let Some((start, n)) = self.vector(slot, 1)? else { return Ok(None) };
        match std::str::from_utf8(&self.buf[start..start + n]) {
            Ok(s) => Ok(Some(s)),
            Err(_) => bail!("string at {start} is not UTF-8"),
        }
    }

    fn scalars<T, const N: usize>(&self, slot: u16, decode: fn([u8; N]) -> T) -> Result<Vec<T>> {
        let Some((start, n)) = self.vector(slot, N)? else { return Ok(Vec::new()) };
        (0..n).map(|i| Ok(decode(bytes(self.buf, start + i * N)?))).collect()
    }

    pub fn i32s(&self, slot: u16) -> Result<Vec<i32>> {
        self.scalars(slot, i32::from_le_bytes)
    }

    pub fn i64s(&self, slot: u16) -> Result<Vec<i64>> {
        self.scalars(slot, i64::from_le_bytes)
    }

    pub fn f32s(&self, slot: u16) -> Result<Vec<f32>> {
        self.scalars(slot, f32::from_le_bytes)
    }

    /// Element count of a vector (any element type), 0 when absent.
    pub fn vector_len(&self, slot: u16, elem: usize) -> Result<usize> {
        Ok(self.vector(slot, elem)?.map_or(0, |(_, n)| n))
    }

    pub fn tables(&self, slot: u16) -> Result<Vec<FbTable<'a>>> {
        let Some((start, n)) = self.vector(slot, 4)? else { return Ok(Vec::new()) };
        (0..n).map(|i| Self::at(self.buf, follow(self.buf, start + 4 * i)?)).collect()
    }

    pub fn strings(&self, slot: u16) -> Result<Vec<&'a str>> {
        let Some((start, n)) = self.vector(slot, 4)? else { return Ok(Vec::new()) };
        (0..n)
            .map(|i| {
                let at = follow(self.buf, start + 4 * i)?;
                let len = u32_at(self.buf, at)? as usize;
                let end = (at + 4).checked_add(len).context("string size overflow")?;
                ensure!(end <= self.buf.len(), "string of {len} bytes at {at} runs past the end");
                std::str::from_utf8(&self.buf[at + 4..end]).with_context(|| format!("string at {at} is not UTF-8"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::FlatBufferBuilder;

    #[test]
    fn reads_what_the_builder_wrote_and_rejects_garbage() {
        let mut b = FlatBufferBuilder::new();
        let s = b.create_string("héllo");
        let v = b.create_vector(&[1i64, -2, 3]);
        let inner = {
            let t = b.start_table();
            b.push_slot_always::<i32>(4, -7);
            b.end_table(t)
        };
        let list = b.create_vector(&[inner, inner]);
        let t = b.start_table();
        b.push_slot_always(4, s);
        b.push_slot_always(6, v);
        b.push_slot_always::<f32>(8, 0.5);
        b.push_slot_always(10, inner);
        b.push_slot_always(12, list);
        b.push_slot_always::<u8>(14, 3);
        let root = b.end_table(t);
        b.finish_minimal(root);
        let buf = b.finished_data().to_vec();

        let r = FbTable::root(&buf).unwrap();
        assert_eq!(r.string(0).unwrap(), Some("héllo"));
        assert_eq!(r.i64s(1).unwrap(), vec![1, -2, 3]);
        assert_eq!(r.f32(2, 0.0).unwrap(), 0.5);
        assert_eq!(r.table(3).unwrap().unwrap().i32(0, 0).unwrap(), -7);
        assert_eq!(r.tables(4).unwrap().len(), 2);
        assert_eq!(r.u8(5, 0).unwrap(), 3);
        // Absent slots give the default or nothing.
        assert_eq!(r.i32(9, 42).unwrap(), 42);
        assert!(r.table(9).unwrap().is_none());
        assert!(r.i32s(9).unwrap().is_empty());

        // Truncations and garbage are errors, not panics.
        for cut in 0..buf.len() {
            let _ = FbTable::root(&buf[..cut]).and_then(|r| {
                r.string(0)?;
                r.i64s(1)?;
                r.tables(4)?;
                r.table(3)
            });
        }
        let mut bad = buf.clone();
        bad[0] = 0xff;
        assert!(FbTable::root(&bad).is_err());
        assert!(FbTable::root(&[1, 2, 3]).is_err());
    }
}
