//! The MiniMind decoder (`MiniMindForCausalLM` of upstream model_minimind.py @5959396).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use mm_converters::config::MiniMindConfig;
use mm_converters::naming::{self, Kind};
use mm_converters::lora::Lora;
use mm_converters::Checkpoint;

use super::cpu::{CpuEngine, Logits, SeqCache};
use super::attention::{attention_bias, Attention, AttentionPath, LayerCache};
use super::linear::Linear;
use super::mlp::{FeedForward, Mlp, MoeFeedForward};
use super::norm::RmsNorm;
use super::rope::RopeTables;

/// Inference uses candle's fused kernels; training uses differentiable ops and upstream's
/// train-mode MoE path (fp16 expert buffer, aux loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Inference,
    Training,
}

/// Per-layer KV caches of one batch of sequences. Kept outside the model so one loaded
/// model can serve many conversations.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// The CPU engine's cache, when the engine runs the model (then `layers` stay empty).
    cpu: Option<SeqCache>,
}

impl KvCache {
    pub fn new(cfg: &MiniMindConfig) -> Self {
        Self { layers: vec![LayerCache::default(); cfg.num_hidden_layers], cpu: None }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len).max(self.cpu.as_ref().map_or(0, SeqCache::len))
    }

    /// The engine's cache, unless the candle path has already filled this one.
    fn engine_cache(&mut self, engine: &CpuEngine) -> Option<&mut SeqCache> {
        if self.layers.first().map_or(0, LayerCache::len) > 0 {
            return None;
        }
        Some(self.cpu.get_or_insert_with(|| engine.new_cache()))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// Output of a forward pass: logits [b, t, vocab] and, in training mode for MoE models,
/// the summed aux loss.
pub struct ModelOutput {
    pub logits: Tensor,
    pub aux_loss: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub struct MiniMind {
    pub config: MiniMindConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    pub lm_head: Linear,
    rope: RopeTables,
    /// Whether inference on the CPU runs through `super::cpu::CpuEngine`: for models read
    /// from a checkpoint or GGUF, whose weights stay as read. (A training model's variables
    /// change under it; it keeps candle's path.)
    engine_allowed: bool,
    /// The engine over these weights, built on first use; reset whenever a weight changes.
    cpu: std::sync::OnceLock<Option<std::sync::Arc<CpuEngine>>>,
}

/// Where the model's tensors come from: a `VarBuilder` (any checkpoint, training) or the
/// blocks of a quantized GGUF (`super::gguf`). One construction path serves both.
pub trait WeightSource {
    /// A dense tensor (norms, embedding, router) in the compute dtype.
    fn tensor(&self, shape: &[usize], name: &str) -> Result<Tensor>;
    /// The linear layer of `{name}.weight`, [out, in].
    fn linear(&self, out: usize, inp: usize, name: &str) -> Result<Linear>;
    /// The output head; `embed` is the dense token embedding built just before.
    fn head(&self, cfg: &MiniMindConfig, embed: &Tensor) -> Result<Linear>;
    fn device(&self) -> &Device;
}

impl WeightSource for VarBuilder<'_> {
    fn tensor(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.get(shape, name)
    }

    fn linear(&self, out: usize, inp: usize, name: &str) -> Result<Linear> {
        Ok(Linear::new(self.get((out, inp), &format!("{name}.weight"))?))
    }

    /// The tied head is the embedding tensor itself, so a trained model's gradient sums both uses.
    fn head(&self, cfg: &MiniMindConfig, embed: &Tensor) -> Result<Linear> {
        if cfg.tie_word_embeddings {
            Ok(Linear::new(embed.clone()))
        } else {
            Ok(Linear::new(self.get((cfg.vocab_size, cfg.hidden_size), naming::LM_HEAD)?))
        }
    }

    fn device(&self) -> &Device {
        VarBuilder::device(self)
    }
}

/// A table row's tensor in layer `l` (expert `e`), in the shape the table gives it.
fn table_tensor(src: &impl WeightSource, cfg: &MiniMindConfig, kind: Kind, l: usize, e: usize) -> Result<Tensor> {
    src.tensor(&naming::spec(kind).dims(cfg), &naming::name(kind, l, e))
}

/// A table row's [out, in] matrix as a linear layer.
fn table_linear(src: &impl WeightSource, cfg: &MiniMindConfig, kind: Kind, l: usize, e: usize) -> Result<Linear> {
    let dims = naming::spec(kind).dims(cfg);
    src.linear(dims[0], dims[1], &naming::module(kind, l, e))
}

/// A SwiGLU block from its three rows (dense FFN, routed or shared expert).
fn feed_forward(src: &impl WeightSource, cfg: &MiniMindConfig, [gate, up, down]: [Kind; 3], l: usize, e: usize) -> Result<FeedForward> {
    Ok(FeedForward {
        gate_proj: table_linear(src, cfg, gate, l, e)?,
        up_proj: table_linear(src, cfg, up, l, e)?,
        down_proj: table_linear(src, cfg, down, l, e)?,
    })
}

const DENSE_FFN: [Kind; 3] = [Kind::FfnGate, Kind::FfnUp, Kind::FfnDown];
const EXPERT_FFN: [Kind; 3] = [Kind::ExpGate, Kind::ExpUp, Kind::ExpDown];
const SHARED_FFN: [Kind; 3] = [Kind::ShexpGate, Kind::ShexpUp, Kind::ShexpDown];

impl MiniMind {
    /// Builds the model from tensors named like upstream's state dict. With a `VarMap`
    /// behind `vb` the same code builds a trainable model; the tied head is the embedding
    /// tensor itself, so its gradient sums both uses.
    pub fn new(cfg: &MiniMindConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, &vb)
    }

    pub fn build(cfg: &MiniMindConfig, src: &impl WeightSource) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let embed_tokens = table_tensor(src, cfg, Kind::TokenEmbd, 0, 0)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let self_attn = Attention {
                q_proj: table_linear(src, cfg, Kind::AttnQ, l, 0)?,
                k_proj: table_linear(src, cfg, Kind::AttnK, l, 0)?,
                v_proj: table_linear(src, cfg, Kind::AttnV, l, 0)?,
                o_proj: table_linear(src, cfg, Kind::AttnOut, l, 0)?,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim(),
            };
            let mlp = if cfg.use_moe {
                Mlp::Moe(MoeFeedForward {
                    experts: (0..cfg.n_routed_experts).map(|e| feed_forward(src, cfg, EXPERT_FFN, l, e)).collect::<Result<_>>()?,
                    shared_experts: (0..cfg.n_shared_experts).map(|e| feed_forward(src, cfg, SHARED_FFN, l, e)).collect::<Result<_>>()?,
                    gate: table_tensor(src, cfg, Kind::MoeRouter, l, 0)?,
                    top_k: cfg.num_experts_per_tok,
                    norm_topk_prob: cfg.norm_topk_prob,
                    aux_loss_alpha: cfg.aux_loss_alpha,
                    seq_aux: cfg.seq_aux,
                })
            } else {
                Mlp::Dense(feed_forward(src, cfg, DENSE_FFN, l, 0)?)
            };
            layers.push(Block {
                input_layernorm: RmsNorm::new(table_tensor(src, cfg, Kind::AttnNorm, l, 0)?, cfg.rms_norm_eps),
                self_attn,
                post_attention_layernorm: RmsNorm::new(table_tensor(src, cfg, Kind::FfnNorm, l, 0)?, cfg.rms_norm_eps),
                mlp,
            });
        }
        let norm = RmsNorm::new(table_tensor(src, cfg, Kind::OutputNorm, 0, 0)?, cfg.rms_norm_eps);
        let lm_head = src.head(cfg, &embed_tokens)?;
        let rope = RopeTables::new(cfg, src.device())?;
        Ok(Self { config: cfg.clone(), embed_tokens, layers, norm, lm_head, rope, engine_allowed: false, cpu: Default::default() })
    }

    /// Loads a checkpoint's tensors in `dtype` on `device`.
    pub fn from_checkpoint(ckpt: &Checkpoint, dtype: DType, device: &Device) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = ckpt.tensors().iter().cloned().collect();
        let mut model = Self::new(&ckpt.config, VarBuilder::from_tensors(tensors, dtype, device))?;
        model.engine_allowed = true;
        Ok(model)
    }

    /// Turns the CPU engine on or off for this model's inference (on by default for models
    /// read from files; off, candle's ops run instead, as in training).
    pub fn set_cpu_engine(&mut self, on: bool) {
        self.engine_allowed = on;
        self.cpu = Default::default();
    }

    /// Builds the CPU engine now if it will run this model (otherwise the first forward
    /// does); whether it runs it.
    pub fn prepare_cpu_engine(&self) -> bool {
        self.engine().is_some()
    }

    /// The CPU engine, when it runs this model: on the CPU, allowed, and every weight type
    /// has a kernel (a ggml type without one keeps candle's path). `MM_CPU_ENGINE=0` turns it
    /// off process-wide.
    fn engine(&self) -> Option<std::sync::Arc<CpuEngine>> {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !self.engine_allowed || !self.device().is_cpu() || *OFF.get_or_init(|| std::env::var("MM_CPU_ENGINE").as_deref() == Ok("0")) {
            return None;
        }
        self.cpu
            .get_or_init(|| match CpuEngine::from_model(self) {
                Ok(e) => Some(std::sync::Arc::new(e)),
                Err(e) => {
                    if std::env::var_os("MM_DEBUG").is_some() {
                        eprintln!("note: the CPU engine does not run this model ({e:#}); using candle's ops");
                    }
                    None
                }
            })
            .clone()
    }

    /// Attaches upstream LoRA adapters, applied on the fly (`W x + B(A x)`).
    pub fn attach_lora(&mut self, lora: &Lora) -> Result<()> {
        for ad in &lora.adapters {
            let dtype = self.embed_tokens.dtype();
            let device = self.embed_tokens.device().clone();
            let target = self.linear_mut(&ad.module).ok_or_else(|| {
                candle_core::Error::Msg(format!("LoRA targets `{}`, which is not a linear layer of this model", ad.module))
            })?;
            let (out, inp) = target.dims()?;
            if ad.a.dims() != [lora.rank, inp] || ad.b.dims() != [out, lora.rank] {
                candle_core::bail!("LoRA for `{}` does not fit a {out}x{inp} weight", ad.module);
            }
            target.lora = Some((ad.a.to_dtype(dtype)?.to_device(&device)?, ad.b.to_dtype(dtype)?.to_device(&device)?));
        }
        self.cpu = Default::default();
        Ok(())
    }

    /// Puts a LoRA branch (A [r, in], B [out, r]) on the linear layer `module`
    /// (`model.layers.N.self_attn.q_proj`, …), replacing any there.
    pub fn set_lora(&mut self, module: &str, a: Tensor, b: Tensor) -> Result<()> {
        let target = self
            .linear_mut(module)
            .ok_or_else(|| candle_core::Error::Msg(format!("`{module}` is not a linear layer of this model")))?;
        let (out, inp) = target.dims()?;
        let r = a.dim(0)?;
        if a.dims() != [r, inp] || b.dims() != [out, r] {
            candle_core::bail!("LoRA for `{module}` does not fit a {out}x{inp} weight");
        }
        target.lora = Some((a, b));
        self.cpu = Default::default();
        Ok(())
    }

    /// A copy without the copies inference derives from the weights (the batched decode's
    /// transposed weights, the CPU engine), for sampling from a model whose weights a training
    /// step changed in place since those were made.
    pub fn with_fresh_caches(&self) -> MiniMind {
        let mut m = self.clone();
        m.cpu = Default::default();
        for block in &mut m.layers {
            let attn = &mut block.self_attn;
            for l in [&mut attn.q_proj, &mut attn.k_proj, &mut attn.v_proj, &mut attn.o_proj] {
                l.clear_cache();
            }
            let ffns: Vec<&mut crate::model::mlp::FeedForward> = match &mut block.mlp {
                Mlp::Dense(f) => vec![f],
                Mlp::Moe(moe) => moe.experts.iter_mut().chain(moe.shared_experts.iter_mut()).collect(),
            };
            for f in ffns {
                for l in [&mut f.gate_proj, &mut f.up_proj, &mut f.down_proj] {
                    l.clear_cache();
                }
            }
        }
        m.lm_head.clear_cache();
        m
    }

    fn linear_mut(&mut self, module: &str) -> Option<&mut Linear> {
        let (spec, l, e) = naming::parse(&format!("{module}.weight"), &self.config)?;
        let block = self.layers.get_mut(l)?;
        let attn = &mut block.self_attn;
        let ffn = match (&mut block.mlp, spec.kind) {
            (_, Kind::AttnQ) => return Some(&mut attn.q_proj),
            (_, Kind::AttnK) => return Some(&mut attn.k_proj),
            (_, Kind::AttnV) => return Some(&mut attn.v_proj),
            (_, Kind::AttnOut) => return Some(&mut attn.o_proj),
            (Mlp::Dense(f), k) if DENSE_FFN.contains(&k) => f,
            (Mlp::Moe(m), k) => {
                let list = if EXPERT_FFN.contains(&k) {
                    &mut m.experts
                } else if SHARED_FFN.contains(&k) {
                    &mut m.shared_experts
                } else {
                    return None;
                };
                list.get_mut(e)?
            }
            _ => return None,
        };
        match spec.kind {
            Kind::FfnGate | Kind::ExpGate | Kind::ShexpGate => Some(&mut ffn.gate_proj),
            Kind::FfnUp | Kind::ExpUp | Kind::ShexpUp => Some(&mut ffn.up_proj),
            Kind::FfnDown | Kind::ExpDown | Kind::ShexpDown => Some(&mut ffn.down_proj),
            _ => None,
        }
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Final hidden states [b, t, hidden] for `input_ids` [b, t] placed after the cached
    /// positions; `padding` [b, past + t] marks real tokens with 1.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        padding: Option<&Tensor>,
        mode: Mode,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t) = input_ids.dims2()?;
        let (rows, aux) = self.forward_rows(input_ids, cache, padding, mode)?;
        Ok((rows.reshape((b, t, ()))?, aux))
    }

    /// [`forward_hidden`](Self::forward_hidden) as rows [b·t, hidden].
    fn forward_rows(
        &self,
        input_ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        padding: Option<&Tensor>,
        mode: Mode,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (cos, sin) = self.rope.slice(past, t)?;
        let path = match mode {
            Mode::Inference => AttentionPath::Inference,
            Mode::Training if super::fused_kernels(self.device()) && past == 0 && padding.is_none() => AttentionPath::FusedCausal,
            Mode::Training => AttentionPath::Composite,
        };
        let bias = if path == AttentionPath::FusedCausal { None } else { attention_bias(t, past, padding, self.device())? };
        let ids = input_ids.flatten_all()?;
        let mut x = if super::fused_for(&self.embed_tokens) && ids.dtype() == candle_core::DType::U32 {
            crate::fused::embedding(&self.embed_tokens, &ids)?
        } else {
            self.embed_tokens.embedding(&ids)?
        };
        // The decoder works on the b·t rows [b·t, hidden]: every projection is then one 2-D
        // product with no reshape around it (each reshape would cost a gradient pass).
        let mut aux: Option<Tensor> = None;
        for (i, block) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let h = block.self_attn.forward(
                &block.input_layernorm.forward(&x)?,
                (b, t),
                &cos,
                &sin,
                bias.as_ref(),
                layer_cache,
                path,
            )?;
            x = (x + h)?;
            let normed = block.post_attention_layernorm.forward(&x)?;
            let y = match &block.mlp {
                Mlp::Dense(ffn) => ffn.forward(&normed)?,
                Mlp::Moe(moe) => {
                    let out = moe.forward(&normed.reshape((b, t, ()))?, mode == Mode::Training)?;
                    if let Some(a) = out.aux_loss {
                        aux = Some(match aux {
                            None => a,
                            Some(prev) => (prev + a)?,
                        });
                    }
                    out.y.reshape((b * t, ()))?
                }
            };
            x = (x + y)?;
        }
        Ok((self.norm.forward(&x)?, aux))
    }

    /// Logits for hidden states [.., hidden].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Whether any linear layer (or the head) runs on quantized GGUF blocks.
    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized()
            || self.layers.iter().any(|b| {
                let a = &b.self_attn;
                let ffn_q = |f: &FeedForward| f.gate_proj.is_quantized() || f.up_proj.is_quantized() || f.down_proj.is_quantized();
                a.q_proj.is_quantized()
                    || a.k_proj.is_quantized()
                    || a.v_proj.is_quantized()
                    || a.o_proj.is_quantized()
                    || match &b.mlp {
                        Mlp::Dense(f) => ffn_q(f),
                        Mlp::Moe(m) => m.experts.iter().chain(&m.shared_experts).any(ffn_q),
                    }
            })
    }

    /// Logits [b, t, vocab] for every position (and the MoE aux loss in training mode).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        cache: Option<&mut KvCache>,
        padding: Option<&Tensor>,
        mode: Mode,
    ) -> Result<ModelOutput> {
        let (b, t) = input_ids.dims2()?;
        let (rows, aux_loss) = self.forward_rows(input_ids, cache, padding, mode)?;
        Ok(ModelOutput { logits: self.logits(&rows)?.reshape((b, t, ()))?, aux_loss })
    }

    /// Logits of every position of `ids`, one sequence placed after `cache`'s positions (which
    /// it extends), as [len, vocab] f32: what a completions endpoint's `echo` / `logprobs`
    /// need from one prompt pass.
    pub fn forward_all_logits(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        if ids.is_empty() {
            candle_core::bail!("forward_all_logits needs at least one token");
        }
        self.forward_sequences(&[ids], &mut [cache], Logits::All)
    }

    /// Logits of several independent sequences in one pass: `seqs[i]` goes after `caches[i]`'s
    /// positions (and extends it). `Logits::All` gives every row of every sequence, in order;
    /// `Logits::LastOfEach` one row per sequence. [rows, vocab], f32. The CPU engine runs all
    /// rows as one batch; other devices run the sequences one after another.
    pub fn forward_sequences(&self, seqs: &[&[u32]], caches: &mut [&mut KvCache], which: Logits) -> Result<Tensor> {
        if seqs.len() != caches.len() || seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            candle_core::bail!("forward_sequences: {} sequences (none empty) for {} caches", seqs.len(), caches.len());
        }
        if let Some(engine) = self.engine() {
            if caches.iter().all(|c| c.layers.first().map_or(0, LayerCache::len) == 0) {
                let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
                let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
                let mut engine_caches: Vec<&mut SeqCache> = caches.iter_mut().filter_map(|c| c.engine_cache(&engine)).collect();
                let logits = engine.forward(&tokens, &lens, &mut engine_caches, which).map_err(candle_core::Error::wrap)?;
                let rows = logits.len() / engine.vocab();
                return Tensor::from_vec(logits, (rows, engine.vocab()), self.device());
            }
        }
        let mut parts = Vec::with_capacity(seqs.len());
        for (ids, cache) in seqs.iter().zip(caches.iter_mut()) {
            let input = Tensor::new(*ids, self.device())?.unsqueeze(0)?;
            let (rows, _) = self.forward_rows(&input, Some(cache), None, Mode::Inference)?;
            let rows = match which {
                Logits::All => rows,
                Logits::LastOfEach => rows.narrow(0, ids.len() - 1, 1)?,
            };
            parts.push(self.logits(&rows)?.to_dtype(DType::F32)?);
        }
        Tensor::cat(&parts, 0)
    }

    /// One decode step for `tokens.len()` independent sequences: token i is appended to
    /// sequence i, whose past is `caches[i]` (lengths may differ, an empty cache included),
    /// and `caches[i]` grows by that one position. Returns the next-token logits [n, vocab], f32.
    ///
    /// Everything that does not mix positions (embedding, norms, projections, RoPE at each
    /// sequence's own position, MLP / MoE, head) runs once over the n rows; attention runs per
    /// sequence against its own cache (see `Attention::forward_step_batch`). Row i's logits are
    /// the same bits whatever else is in the batch (products through
    /// `Linear::forward_batch_invariant`); against [`forward_last`](Self::forward_last) on the
    /// sequence alone they differ only by summation order (~1e-6 in f32).
    pub fn forward_step_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let n = tokens.len();
        if n != caches.len() {
            candle_core::bail!("forward_step_batch: {n} tokens for {} caches", caches.len());
        }
        if n == 0 {
            candle_core::bail!("forward_step_batch needs at least one sequence");
        }
        let layers = self.layers.len();
        if let Some(c) = caches.iter().find(|c| c.layers.len() != layers) {
            candle_core::bail!("a KV cache has {} layers, the model {layers}", c.layers.len());
        }
        if let Some(engine) = self.engine() {
            if caches.iter().all(|c| c.layers.first().map_or(0, LayerCache::len) == 0) {
                let mut seqs: Vec<&mut SeqCache> = caches.iter_mut().filter_map(|c| c.engine_cache(&engine)).collect();
                let logits = engine.forward(tokens, &vec![1; n], &mut seqs, Logits::All).map_err(candle_core::Error::wrap)?;
                return Tensor::from_vec(logits, (n, engine.vocab()), self.device());
            }
        }
        // Each sequence's own RoPE row, [n, head_dim/2].
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for c in caches.iter() {
            let (c, s) = self.rope.slice(c.len(), 1)?;
            cos.push(c);
            sin.push(s);
        }
        let (cos, sin) = (Tensor::cat(&cos, 0)?, Tensor::cat(&sin, 0)?);
        let ids = Tensor::new(tokens, self.device())?;
        let mut x = if super::fused_for(&self.embed_tokens) {
            crate::fused::embedding(&self.embed_tokens, &ids)?
        } else {
            self.embed_tokens.embedding(&ids)?
        };
        for (l, block) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut LayerCache> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            let h = block.self_attn.forward_step_batch(&block.input_layernorm.forward(&x)?, &cos, &sin, &mut layer_caches)?;
            x = (x + h)?;
            let normed = block.post_attention_layernorm.forward(&x)?;
            let y = match &block.mlp {
                Mlp::Dense(ffn) => ffn.forward_with(&normed, true)?,
                Mlp::Moe(moe) => moe.forward_with(&normed.reshape((n, 1, ()))?, false, true)?.y.reshape((n, ()))?,
            };
            x = (x + y)?;
        }
        self.lm_head.forward_batch_invariant(&self.norm.forward(&x)?)?.to_dtype(DType::F32)
    }

    /// Logits of the last position only, [b, vocab]: what generation needs.
    pub fn forward_last(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if let (Some(engine), (1, t)) = (self.engine(), input_ids.dims2()?) {
            if let Some(c) = cache.engine_cache(&engine) {
                let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
                let logits = engine.forward(&ids, &[t], &mut [c], Logits::LastOfEach).map_err(candle_core::Error::wrap)?;
                return Tensor::from_vec(logits, (1, engine.vocab()), self.device());
            }
        }
        let (hidden, _) = self.forward_hidden(input_ids, Some(cache), None, Mode::Inference)?;
        let t = hidden.dim(1)?;
        self.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?)
    }
}
