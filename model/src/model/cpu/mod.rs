//! mm's own CPU forward pass for inference (generation, chat, serving, benchmarks).
//!
//! candle runs each op as its own tensor with its own allocation and its own rayon fan-out;
//! for a 26M-parameter model a decode step is ~1 ms and that overhead was most of it. This
//! engine takes the model's weights over once, in their stored format (f32/f16/bf16 values,
//! or ggml blocks multiplied with activations quantized as llama.cpp does), and runs a step
//! as a fixed sequence of `mm_kernels` calls on one spinning thread pool, with every buffer
//! kept from step to step and each sequence's KV cache growing in place.
//!
//! It computes what `MiniMind::forward_rows` computes (activations in f32): the fixture
//! parity tests run through it. A forward is a list of rows, each one token of some
//! sequence at that sequence's next position, so a prefill (many rows of one sequence) and a
//! batched decode step (one row for each of many sequences) are the same code. Each row's
//! result is independent of the others in the call (the kernels guarantee it per product).

mod build;
mod cache;
mod matrix;
mod products;

use std::sync::Mutex;

use anyhow::{bail, ensure, Result};
use mm_kernels::attention::{attend, scores_len, HeadGroup, KEY_BLOCK};
use mm_kernels::float::FMatrix;
use mm_kernels::ops;
use mm_kernels::pool::{self, Pool};
use mm_kernels::SharedOut;

pub use cache::SeqCache;
use matrix::Proj;
use products::{product_share, run_group, LoraScratch, Product, QuantRows, RawRows};

/// The model, as the engine holds it.
pub struct CpuEngine {
    hidden: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    eps: f32,
    max_positions: usize,
    /// RoPE's per-pair inverse frequencies.
    freqs: Vec<f32>,
    /// Token embedding [vocab, hidden] for the lookup.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Proj,
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuEngine({} layers, hidden {})", self.layers.len(), self.hidden)
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

struct Mlp3 {
    gate: Proj,
    up: Proj,
    down: Proj,
}

enum Ffn {
    Dense(Mlp3),
    Moe(Moe),
}

struct Moe {
    /// [experts, hidden], f32.
    router: FMatrix,
    experts: Vec<Mlp3>,
    shared: Vec<Mlp3>,
    top_k: usize,
    norm_topk_prob: bool,
}

/// Which rows' logits a forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last row of each sequence.
    LastOfEach,
    /// Every row.
    All,
}

/// Buffers reused from call to call (grown, never shrunk).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    hn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    y: Vec<f32>,
    /// cos then sin of each row's position, head_dim/2 each.
    rope: Vec<f32>,
    /// Per row: which sequence, which position.
    row_seq: Vec<usize>,
    row_pos: Vec<usize>,
    /// Rows whose logits are wanted.
    out_rows: Vec<usize>,
    /// Attention scores, one part per thread.
    scores: Vec<f32>,
    quant: QuantRows,
    lora: LoraScratch,
    moe: MoeScratch,
    logits: Vec<f32>,
}

#[derive(Default)]
struct MoeScratch {
    router_logits: Vec<f32>,
    /// Per row: (expert, weight) for its top-k picks.
    picks: Vec<(usize, f32)>,
    rows: Vec<usize>,
    xe: Vec<f32>,
    ye: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    order: Vec<usize>,
}

fn grow(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl CpuEngine {
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn new_cache(&self) -> SeqCache {
        SeqCache::new(self.layers.len(), self.n_kv_heads, self.head_dim)
    }

    /// Runs `tokens` through the model: `segments[i]` rows (consecutive, in order) belong to
    /// sequence `caches[i]`, placed after its cached positions, which they extend. Returns the
    /// logits [rows wanted, vocab], f32. On error no cache has changed.
    pub fn forward(&self, tokens: &[u32], segments: &[usize], caches: &mut [&mut SeqCache], which: Logits) -> Result<Vec<f32>> {
        ensure!(segments.len() == caches.len(), "{} segments for {} caches", segments.len(), caches.len());
        ensure!(segments.iter().sum::<usize>() == tokens.len(), "segments cover {} rows, not {}", segments.iter().sum::<usize>(), tokens.len());
        ensure!(!tokens.is_empty(), "a forward pass needs at least one token");
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            bail!("token id {t} is outside the vocabulary ({})", self.vocab);
        }
        for (c, &n) in caches.iter().zip(segments) {
            ensure!(c.layers() == self.layers.len() && c.shape() == (self.n_kv_heads, self.head_dim), "a KV cache of another model shape");
            let end = c.len() + n;
            if end > self.max_positions {
                bail!("position {end} is beyond max_position_embeddings ({})", self.max_positions);
            }
        }
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        s.row_seq.clear();
        s.row_pos.clear();
        s.out_rows.clear();
        let mut row = 0;
        for (i, (&n, c)) in segments.iter().zip(caches.iter()).enumerate() {
            for j in 0..n {
                s.row_seq.push(i);
                s.row_pos.push(c.len() + j);
            }
            match which {
                Logits::All => s.out_rows.extend(row..row + n),
                Logits::LastOfEach if n > 0 => s.out_rows.push(row + n - 1),
                Logits::LastOfEach => {}
            }
            row += n;
        }
        for (c, &n) in caches.iter_mut().zip(segments) {
            c.open(n);
        }
        self.run(s, tokens, caches);
        for (c, &n) in caches.iter_mut().zip(segments) {
            c.commit(n);
        }
        Ok(s.logits[..s.out_rows.len() * self.vocab].to_vec())
    }

    /// The forward proper, on validated input with the caches opened.
    fn run(&self, s: &mut Scratch, tokens: &[u32], caches: &mut [&mut SeqCache]) {
        let pool = pool::global();
        let (h, hd, half) = (self.hidden, self.head_dim, self.head_dim / 2);
        let (qd, kvd) = (self.n_heads * hd, self.kv_dim());
        let m = tokens.len();
        // Embedding lookup and each row's RoPE angles (the same for every layer).
        let x = grow(&mut s.x, m * h);
        for (r, &t) in tokens.iter().enumerate() {
            x[r * h..(r + 1) * h].copy_from_slice(&self.embed[t as usize * h..(t as usize + 1) * h]);
        }
        let rope = grow(&mut s.rope, m * hd);
        for r in 0..m {
            let (cos, sin) = rope[r * hd..(r + 1) * hd].split_at_mut(half);
            for (i, &f) in self.freqs.iter().enumerate() {
                // As `RopeTables`: the angle rounded to f32 (torch.outer), cos/sin of it exact.
                let angle = (s.row_pos[r] as f32 * f) as f64;
                cos[i] = angle.cos() as f32;
                sin[i] = angle.sin() as f32;
            }
        }
        let n_layers = self.layers.len();
        // Rows still computed; in the last layer only those whose logits are wanted go past
        // the keys and values (llama.cpp does the same).
        let mut a = m;
        for (l, layer) in self.layers.iter().enumerate() {
            let hn = grow(&mut s.hn, m * h);
            for r in 0..a {
                ops::rms_norm(&s.x[r * h..(r + 1) * h], &layer.attn_norm, self.eps, &mut hn[r * h..(r + 1) * h]);
            }
            let compact = l + 1 == n_layers && s.out_rows.len() < a;
            let (q, k, v) = (grow(&mut s.q, m * qd), grow(&mut s.k, m * kvd), grow(&mut s.v, m * kvd));
            if compact {
                s.quant.prepare(pool, &[&layer.k.w, &layer.v.w], hn, a);
                run_group(pool, &mut [Product { proj: &layer.k, out: k }, Product { proj: &layer.v, out: v }], hn, &s.quant, a, &mut s.lora);
            } else {
                s.quant.prepare(pool, &[&layer.q.w, &layer.k.w, &layer.v.w], hn, a);
                run_group(
                    pool,
                    &mut [Product { proj: &layer.q, out: q }, Product { proj: &layer.k, out: k }, Product { proj: &layer.v, out: v }],
                    hn,
                    &s.quant,
                    a,
                    &mut s.lora,
                );
            }
            // Rotate the keys and file them (and the values) in their sequences' caches.
            for r in 0..a {
                let (cos, sin) = s.rope[r * hd..(r + 1) * hd].split_at(half);
                for kh in 0..self.n_kv_heads {
                    let key = &mut k[r * kvd + kh * hd..r * kvd + (kh + 1) * hd];
                    ops::rope_rotate_half(key, cos, sin);
                }
                caches[s.row_seq[r]].write(l, s.row_pos[r], &k[r * kvd..(r + 1) * kvd], &v[r * kvd..(r + 1) * kvd]);
            }
            if compact {
                // Keep only the wanted rows, in order, at the front.
                for (i, &r) in s.out_rows.iter().enumerate() {
                    s.x.copy_within(r * h..(r + 1) * h, i * h);
                    s.hn.copy_within(r * h..(r + 1) * h, i * h);
                    s.rope.copy_within(r * hd..(r + 1) * hd, i * hd);
                    s.row_seq[i] = s.row_seq[r];
                    s.row_pos[i] = s.row_pos[r];
                }
                a = s.out_rows.len();
                let hn = &s.hn[..a * h];
                s.quant.prepare(pool, &[&layer.q.w], hn, a);
                run_group(pool, &mut [Product { proj: &layer.q, out: &mut s.q[..a * qd] }], hn, &s.quant, a, &mut s.lora);
            }
            let q = &mut s.q[..a * qd];
            for r in 0..a {
                let (cos, sin) = s.rope[r * hd..(r + 1) * hd].split_at(half);
                for head in 0..self.n_heads {
                    ops::rope_rotate_half(&mut q[r * qd + head * hd..r * qd + (head + 1) * hd], cos, sin);
                }
            }
            self.attention(pool, s, caches, l, a);
            let att = &s.att[..a * qd];
            s.quant.prepare(pool, &[&layer.o.w], att, a);
            let o = grow(&mut s.o, a * h);
            run_group(pool, &mut [Product { proj: &layer.o, out: o }], att, &s.quant, a, &mut s.lora);
            for (xv, ov) in s.x[..a * h].iter_mut().zip(o.iter()) {
                *xv += ov;
            }
            let hn = grow(&mut s.hn, a * h);
            for r in 0..a {
                ops::rms_norm(&s.x[r * h..(r + 1) * h], &layer.ffn_norm, self.eps, &mut hn[r * h..(r + 1) * h]);
            }
            match &layer.ffn {
                Ffn::Dense(mlp) => {
                    let y = grow(&mut s.y, a * h);
                    mlp_forward(pool, mlp, &s.hn[..a * h], a, &mut s.gate, &mut s.up, y, &mut s.quant, &mut s.lora);
                }
                Ffn::Moe(moe) => self.moe_forward(pool, moe, s, a),
            }
            for (xv, yv) in s.x[..a * h].iter_mut().zip(&s.y[..a * h]) {
                *xv += yv;
            }
        }
        // Rows left are the wanted ones, in order (compacted in the last layer, or all rows).
        let rows = s.out_rows.len();
        if a != rows {
            for (i, &r) in s.out_rows.iter().enumerate() {
                s.x.copy_within(r * h..(r + 1) * h, i * h);
            }
        }
        let hn = grow(&mut s.hn, rows * h);
        for r in 0..rows {
            ops::rms_norm(&s.x[r * h..(r + 1) * h], &self.norm, self.eps, &mut hn[r * h..(r + 1) * h]);
        }
        let hn = &s.hn[..rows * h];
        s.quant.prepare(pool, &[&self.lm_head.w], hn, rows);
        let logits = grow(&mut s.logits, rows * self.vocab);
        run_group(pool, &mut [Product { proj: &self.lm_head, out: logits }], hn, &s.quant, rows, &mut s.lora);
    }

    /// att[r] = softmax(q[r]·Kᵀ/√d) V over positions 0..=pos of row r's sequence, per head;
    /// the query heads sharing a key/value head go together (one pass over its cache).
    fn attention(&self, pool: &Pool, s: &mut Scratch, caches: &[&mut SeqCache], l: usize, a: usize) {
        let hd = self.head_dim;
        let (qd, kvd) = (self.n_heads * hd, self.kv_dim());
        let group = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let longest = s.row_pos[..a].iter().max().map_or(0, |p| p + 1);
        let per_thread = scores_len(group, longest);
        let score_bufs = RawRows::new(grow(&mut s.scores, pool.threads() * per_thread));
        let att = RawRows::new(grow(&mut s.att, a * qd));
        let (q, row_seq, row_pos) = (&s.q[..a * qd], &s.row_seq[..a], &s.row_pos[..a]);
        let items = a * self.n_kv_heads;
        let job = |i: usize, n: usize| {
            // SAFETY: each thread owns its part of the score buffer.
            let scores = unsafe { score_bufs.slice(i * per_thread, per_thread) };
            // Interleaved items: a prefill's later rows attend to more positions.
            let mut item = i;
            while item < items {
                let (r, kh) = (item / self.n_kv_heads, item % self.n_kv_heads);
                let cache = &caches[row_seq[r]];
                let (kc, vc) = cache.layer(l);
                let heads = r * qd + kh * group * hd..r * qd + (kh + 1) * group * hd;
                let g = HeadGroup {
                    queries: &q[heads.clone()],
                    keys: &kc[kh * hd * KEY_BLOCK..],
                    key_block_stride: cache.key_block_stride(),
                    values: &vc[kh * hd..],
                    value_stride: kvd,
                    len: row_pos[r] + 1,
                    dim: hd,
                    scale,
                };
                // SAFETY: item (r, kh) owns these heads of att's row r.
                attend(&g, scores, unsafe { att.slice(heads.start, heads.len()) });
                item += n;
            }
        };
        if items == 1 {
            job(0, 1);
        } else {
            pool.run(&job);
        }
    }

    /// Routed experts (top-k of a softmax router) plus shared experts, into `s.y`.
    fn moe_forward(&self, pool: &Pool, moe: &Moe, s: &mut Scratch, a: usize) {
        let h = self.hidden;
        let n_exp = moe.experts.len();
        let ms = &mut s.moe;
        let hn = &s.hn[..a * h];
        let logits = grow(&mut ms.router_logits, a * n_exp);
        products::float_product(pool, &moe.router, hn, a, logits);
        ms.picks.clear();
        for r in 0..a {
            let row = &mut logits[r * n_exp..(r + 1) * n_exp];
            ops::softmax(row);
            // Highest score first, ties to the lower index (as the candle path's sort).
            ms.order.clear();
            ms.order.extend(0..n_exp);
            ms.order.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
            let k = moe.top_k.min(n_exp);
            let mut denom = 1.0f32;
            if moe.top_k > 1 && moe.norm_topk_prob {
                denom = ms.order[..k].iter().map(|&e| row[e]).sum::<f32>() + 1e-20;
            }
            for &e in &ms.order[..k] {
                ms.picks.push((e, row[e] / denom));
            }
        }
        let k = moe.top_k.min(n_exp);
        let y = grow(&mut s.y, a * h);
        y.fill(0.0);
        for (e, expert) in moe.experts.iter().enumerate() {
            ms.rows.clear();
            ms.rows.extend((0..a).filter(|&r| ms.picks[r * k..(r + 1) * k].iter().any(|p| p.0 == e)));
            let me = ms.rows.len();
            if me == 0 {
                continue;
            }
            let xe = grow(&mut ms.xe, me * h);
            for (i, &r) in ms.rows.iter().enumerate() {
                xe[i * h..(i + 1) * h].copy_from_slice(&hn[r * h..(r + 1) * h]);
            }
            let ye = grow(&mut ms.ye, me * h);
            mlp_forward(pool, expert, &ms.xe[..me * h], me, &mut ms.gate, &mut ms.up, ye, &mut s.quant, &mut s.lora);
            for (i, &r) in ms.rows.iter().enumerate() {
                let w = ms.picks[r * k..(r + 1) * k].iter().find(|p| p.0 == e).map_or(0.0, |p| p.1);
                for (yv, ev) in y[r * h..(r + 1) * h].iter_mut().zip(&ye[i * h..(i + 1) * h]) {
                    *yv += ev * w;
                }
            }
        }
        for shared in &moe.shared {
            let ye = grow(&mut ms.ye, a * h);
            mlp_forward(pool, shared, hn, a, &mut ms.gate, &mut ms.up, ye, &mut s.quant, &mut s.lora);
            for (yv, ev) in y.iter_mut().zip(ye.iter()) {
                *yv += ev;
            }
        }
    }
}

/// y [m, hidden] = down(silu(gate x) · up x); gate and up in one region, each thread applying
/// SwiGLU to the columns it computed.
#[allow(clippy::too_many_arguments)]
fn mlp_forward(
    pool: &Pool,
    mlp: &Mlp3,
    x: &[f32],
    m: usize,
    gate_buf: &mut Vec<f32>,
    up_buf: &mut Vec<f32>,
    y: &mut [f32],
    quant: &mut QuantRows,
    lora: &mut LoraScratch,
) {
    let f = mlp.gate.rows();
    let gate = grow(gate_buf, m * f);
    let up = grow(up_buf, m * f);
    quant.prepare(pool, &[&mlp.gate.w, &mlp.up.w], x, m);
    let has_lora = mlp.gate.lora.is_some() || mlp.up.lora.is_some();
    if has_lora {
        run_group(pool, &mut [Product { proj: &mlp.gate, out: gate }, Product { proj: &mlp.up, out: up }], x, quant, m, lora);
        for t in 0..m {
            ops::swiglu(&mut gate[t * f..(t + 1) * f], &up[t * f..(t + 1) * f]);
        }
    } else {
        let align = lcm(mlp.gate.w.row_align(), mlp.up.w.row_align());
        let (g_out, u_out) = (SharedOut::new(gate, f), SharedOut::new(up, f));
        let (g_raw, u_raw) = (RawRows::new(gate), RawRows::new(up));
        let quant_ref = &*quant;
        pool.run(&|i, n| {
            let rows = Pool::share(f, align, i, n);
            if rows.is_empty() {
                return;
            }
            product_share(&mlp.gate.w, x, quant_ref, m, rows.clone(), g_out);
            product_share(&mlp.up.w, x, quant_ref, m, rows.clone(), u_out);
            for t in 0..m {
                // SAFETY: this thread's columns of row t.
                let (g, u) = unsafe { (g_raw.slice(t * f + rows.start, rows.len()), u_raw.slice(t * f + rows.start, rows.len())) };
                ops::swiglu(g, u);
            }
        });
    }
    let act = &gate[..m * f];
    quant.prepare(pool, &[&mlp.down.w], act, m);
    run_group(pool, &mut [Product { proj: &mlp.down, out: y }], act, quant, m, lora);
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}
