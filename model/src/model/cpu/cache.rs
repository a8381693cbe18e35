//! One sequence's keys and values for the CPU engine, per layer in one growing buffer each,
//! so a step writes in place (amortised growth, no per-step concatenation) and `reserve` can
//! size it for a whole generation. Values are position-major rows of `kv_heads · head_dim`;
//! keys are blocks of `KEY_BLOCK` positions, per head transposed (`[head_dim][KEY_BLOCK]`), the
//! layout the attention kernel reads 16 scores at a time from.

use mm_kernels::attention::{key_index, KEY_BLOCK};

#[derive(Debug, Clone)]
pub struct SeqCache {
    /// (keys, values) per layer, `len` positions filled.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
}

impl SeqCache {
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self { layers: vec![(Vec::new(), Vec::new()); layers], kv_heads, head_dim, len: 0 }
    }

    /// Floats from one key block to the next (all heads' parts of it).
    pub fn key_block_stride(&self) -> usize {
        self.kv_heads * self.head_dim * KEY_BLOCK
    }

    fn key_floats(&self, positions: usize) -> usize {
        positions.div_ceil(KEY_BLOCK) * self.key_block_stride()
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Files position `pos`'s keys and values (`kv_dim` each, heads back to back) in layer `l`.
    pub(super) fn write(&mut self, l: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (hd, stride, kvd) = (self.head_dim, self.key_block_stride(), self.kv_dim());
        let (keys, values) = &mut self.layers[l];
        for h in 0..self.kv_heads {
            let head = &mut keys[h * hd * KEY_BLOCK..];
            for (i, &x) in k[h * hd..(h + 1) * hd].iter().enumerate() {
                head[key_index(pos, i, stride)] = x;
            }
        }
        values[pos * kvd..(pos + 1) * kvd].copy_from_slice(v);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// (kv heads, head dim).
    pub fn shape(&self) -> (usize, usize) {
        (self.kv_heads, self.head_dim)
    }

    /// Room for `more` positions past the current ones without reallocating.
    pub fn reserve(&mut self, more: usize) {
        let (kw, vw) = (self.key_floats(self.len + more), (self.len + more) * self.kv_dim());
        for (k, v) in &mut self.layers {
            k.reserve(kw.saturating_sub(k.len()));
            v.reserve(vw.saturating_sub(v.len()));
        }
    }

    /// Makes positions `len..len + n` writable in every layer (their rows are then filled by
    /// the forward pass before anything reads them); `commit` then counts them.
    pub(super) fn open(&mut self, n: usize) {
        let (kw, vw) = (self.key_floats(self.len + n), (self.len + n) * self.kv_dim());
        for (k, v) in &mut self.layers {
            k.resize(kw, 0.0);
            v.resize(vw, 0.0);
        }
    }

    pub(super) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    pub(super) fn layer(&self, l: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[l];
        (k, v)
    }

}
