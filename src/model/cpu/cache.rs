//! One sequence's keys and values for the CPU engine: per layer, position-major rows of
//! `kv_heads · head_dim` floats in one growing buffer, so a step appends in place (amortised
//! growth, no per-step concatenation) and `reserve` can size it for a whole generation.

#[derive(Debug, Clone)]
pub struct SeqCache {
    /// (keys, values) per layer, `len` rows of `kv_dim` filled.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    kv_dim: usize,
    len: usize,
}

impl SeqCache {
    pub fn new(layers: usize, kv_dim: usize) -> Self {
        Self { layers: vec![(Vec::new(), Vec::new()); layers], kv_dim, len: 0 }
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

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Room for `more` positions past the current ones without reallocating.
    pub fn reserve(&mut self, more: usize) {
        let want = (self.len + more) * self.kv_dim;
        for (k, v) in &mut self.layers {
            k.reserve(want.saturating_sub(k.len()));
            v.reserve(want.saturating_sub(v.len()));
        }
    }

    /// Makes positions `len..len + n` writable in every layer (their rows are then filled by
    /// the forward pass before anything reads them); `commit` then counts them.
    pub(super) fn open(&mut self, n: usize) {
        let want = (self.len + n) * self.kv_dim;
        for (k, v) in &mut self.layers {
            k.resize(want, 0.0);
            v.resize(want, 0.0);
        }
    }

    pub(super) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    pub(super) fn layer(&self, l: usize) -> (&[f32], &[f32]) {
        let (k, v) = &self.layers[l];
        (k, v)
    }

    pub(super) fn layer_mut(&mut self, l: usize) -> (&mut [f32], &mut [f32]) {
        let (k, v) = &mut self.layers[l];
        (k, v)
    }
}
