//! `MiniMindConfig`: the model shape, read from and written to upstream MiniMind and HF Llama
//! `config.json` files.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::limits;

/// The rope scaling upstream sets when `inference_rope_scaling` is on (model_minimind.py @5959396).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(rename = "type")]
    pub kind: String,
}

impl RopeScaling {
    /// Upstream hard-codes these numbers whenever `inference_rope_scaling` is true.
    pub fn upstream_yarn() -> Self {
        Self {
            beta_fast: 4.0,
            beta_slow: 1.0,
            factor: 4.0,
            original_max_position_embeddings: 2048,
            kind: "yarn".into(),
        }
    }
}

/// Every field of upstream `MiniMindConfig` at 5959396, with `intermediate_size` resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct MiniMindConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub inference_rope_scaling: bool,
    pub rope_scaling: Option<RopeScaling>,
    pub dropout: f64,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub hidden_act: String,
    pub flash_attn: bool,
    pub tie_word_embeddings: bool,
    pub use_moe: bool,
    pub num_experts_per_tok: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub scoring_func: String,
    pub aux_loss_alpha: f64,
    pub seq_aux: bool,
    pub norm_topk_prob: bool,
}

/// Upstream's default FFN width: 8h/3 rounded up to a multiple of 64.
pub fn default_intermediate_size(hidden_size: usize) -> usize {
    let raw = hidden_size.saturating_mul(8) / 3;
    64 * raw.div_ceil(64)
}

/// The per-pair rotary inverse frequencies `1/θ^(2i/dim)` in f32 as upstream
/// `precompute_freqs_cis` computes them, rescaled (YaRN-style) when `rope_scaling` is set and
/// `end` (upstream: max_position_embeddings) exceeds the original context. The model's RoPE
/// tables and the MNN graph's rotary constants both come from here.
pub fn rope_inverse_frequencies(dim: usize, end: usize, base: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    let half = dim / 2;
    let base = base as f32;
    let mut freqs: Vec<f32> = (0..half).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
    if let Some(s) = scaling {
        let orig_max = s.original_max_position_embeddings as f32;
        if end as f64 / s.original_max_position_embeddings as f64 > 1.0 {
            // The first pair whose wavelength exceeds the original context; pairs below it
            // are blended by beta, the rest are divided by the factor.
            let two_pi = (2.0 * std::f64::consts::PI) as f32;
            let corr_dim = (0..half).find(|&i| two_pi / freqs[i] > orig_max).unwrap_or(half);
            let (factor, fast, slow) = (s.factor as f32, s.beta_fast as f32, s.beta_slow as f32);
            let denom = (half.saturating_sub(1)).max(1) as f32;
            for (i, f) in freqs.iter_mut().enumerate() {
                let power = i as f32 / denom;
                let beta = slow + (fast - slow) * power;
                let scale = if i < corr_dim { (beta * factor - beta + 1.0) / (beta * factor) } else { 1.0 / factor };
                *f *= scale;
            }
        }
    }
    freqs
}

impl Default for MiniMindConfig {
    /// Upstream `MiniMindConfig()` with no arguments (MiniMind2-small).
    fn default() -> Self {
        Self {
            hidden_size: 512,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            vocab_size: 6400,
            intermediate_size: default_intermediate_size(512),
            rms_norm_eps: 1e-5,
            rope_theta: 1e6,
            max_position_embeddings: 32768,
            inference_rope_scaling: false,
            rope_scaling: None,
            dropout: 0.0,
            bos_token_id: 1,
            eos_token_id: 2,
            hidden_act: "silu".into(),
            flash_attn: true,
            tie_word_embeddings: true,
            use_moe: false,
            num_experts_per_tok: 2,
            n_routed_experts: 4,
            n_shared_experts: 1,
            scoring_func: "softmax".into(),
            aux_loss_alpha: 0.1,
            seq_aux: true,
            norm_topk_prob: true,
        }
    }
}

/// Which `config.json` dialect a file speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFlavor {
    MiniMind,
    Llama,
    /// `Qwen2MoeForCausalLM`, the exact vLLM-native home of MiniMind MoE (see `qwen2_moe`).
    Qwen2Moe,
}

impl MiniMindConfig {
    /// The named shapes of the MiniMind2 family.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self::default();
        let cfg = match name {
            "small" => base,
            "base" => Self::with_hidden(768, 16),
            "moe" => Self { use_moe: true, ..Self::with_hidden(640, 8) },
            // Not an upstream shape: a few-million-parameter model for quick CPU runs and tests.
            "tiny" => Self { num_attention_heads: 4, ..Self::with_hidden(256, 4) },
            other => bail!("unknown preset `{other}` (known: small, base, moe, tiny)"),
        };
        Ok(cfg)
    }

    /// Upstream defaults with another width and depth, FFN width derived like upstream.
    pub fn with_hidden(hidden_size: usize, num_hidden_layers: usize) -> Self {
        Self {
            hidden_size,
            num_hidden_layers,
            intermediate_size: default_intermediate_size(hidden_size),
            ..Self::default()
        }
    }

    /// `hidden_size / num_attention_heads` (0 for a config with no heads, which
    /// [`validate`](Self::validate) refuses).
    pub fn head_dim(&self) -> usize {
        self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0)
    }

    /// Sets `inference_rope_scaling` the way upstream's constructor does.
    pub fn set_inference_rope_scaling(&mut self, on: bool) {
        self.inference_rope_scaling = on;
        self.rope_scaling = on.then(RopeScaling::upstream_yarn);
    }

    /// Rejects shapes the model cannot be built with.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be positive");
            }
        }
        let bounded = [
            ("hidden_size", self.hidden_size, limits::MAX_HIDDEN_SIZE),
            ("num_hidden_layers", self.num_hidden_layers, limits::MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, limits::MAX_ATTENTION_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, limits::MAX_ATTENTION_HEADS),
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB_SIZE),
            ("intermediate_size", self.intermediate_size, limits::MAX_INTERMEDIATE_SIZE),
            ("max_position_embeddings", self.max_position_embeddings, limits::MAX_POSITION_EMBEDDINGS),
            ("n_routed_experts", self.n_routed_experts, limits::MAX_EXPERTS),
            ("n_shared_experts", self.n_shared_experts, limits::MAX_EXPERTS),
            ("num_experts_per_tok", self.num_experts_per_tok, limits::MAX_EXPERTS),
        ];
        for (name, value, max) in bounded {
            limits::check_at_most(name, value, max)?;
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "num_attention_heads ({}) does not divide hidden_size ({})",
                self.num_attention_heads,
                self.hidden_size
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                "num_key_value_heads ({}) does not divide num_attention_heads ({})",
                self.num_key_value_heads,
                self.num_attention_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!("head_dim {} is odd; rotary embeddings need an even head_dim", self.head_dim());
        }
        if self.hidden_act != "silu" {
            bail!("hidden_act `{}` is not supported (MiniMind uses silu)", self.hidden_act);
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            bail!("rms_norm_eps and rope_theta must be positive");
        }
        if self.use_moe {
            if self.scoring_func != "softmax" {
                bail!("scoring_func `{}` is not supported (upstream supports softmax only)", self.scoring_func);
            }
            if self.n_routed_experts == 0 || self.num_experts_per_tok == 0 {
                bail!("a MoE config needs n_routed_experts and num_experts_per_tok > 0");
            }
            if self.num_experts_per_tok > self.n_routed_experts {
                bail!(
                    "num_experts_per_tok ({}) exceeds n_routed_experts ({})",
                    self.num_experts_per_tok,
                    self.n_routed_experts
                );
            }
        }
        let params = self.parameter_count_wide();
        if params > limits::MAX_PARAMETERS {
            bail!(
                "this shape has {params} parameters, more than mm's limit of {} (MiniMind models have a few hundred million at most)",
                limits::MAX_PARAMETERS
            );
        }
        Ok(())
    }

    /// Reads a `config.json` of either dialect and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = limits::read_to_string(path, limits::MAX_CONFIG_BYTES, "config")?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        Self::from_json(&value).with_context(|| format!("{}: unusable config", path.display()))
    }

    /// Parses the JSON of an upstream MiniMind, HF Llama or HF Qwen2-MoE config.
    pub fn from_json(value: &Value) -> Result<Self> {
        let cfg = match Self::flavor_of_json(value)? {
            ConfigFlavor::MiniMind => deserialize_json::<MiniMindJson>(value)?.config(),
            ConfigFlavor::Llama => deserialize_json::<LlamaJson>(value)?.config()?,
            ConfigFlavor::Qwen2Moe => deserialize_json::<Qwen2MoeJson>(value)?.config()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Which dialect a parsed `config.json` speaks. Only `model_type`, `use_moe` and
    /// `architectures` are looked at, leniently (a non-string `model_type` counts as absent):
    /// the dialect's typed struct comes after.
    pub fn flavor_of_json(value: &Value) -> Result<ConfigFlavor> {
        let obj = value.as_object().context("config is not a JSON object")?;
        match obj.get("model_type").and_then(Value::as_str) {
            Some("minimind") => Ok(ConfigFlavor::MiniMind),
            Some("llama") => Ok(ConfigFlavor::Llama),
            Some("qwen2_moe") => Ok(ConfigFlavor::Qwen2Moe),
            Some(other) => bail!("model_type `{other}` is not a MiniMind, Llama or Qwen2-MoE model"),
            None if obj.contains_key("use_moe") => Ok(ConfigFlavor::MiniMind),
            None => {
                let arch = obj.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str);
                match arch {
                    Some("MiniMindForCausalLM") => Ok(ConfigFlavor::MiniMind),
                    Some("LlamaForCausalLM") => Ok(ConfigFlavor::Llama),
                    Some("Qwen2MoeForCausalLM") => Ok(ConfigFlavor::Qwen2Moe),
                    _ => bail!("config has no model_type"),
                }
            }
        }
    }

    /// The `config.json` of the exact `Qwen2MoeForCausalLM` form of a MiniMind MoE model
    /// (docs/templates_serving.md §5.2), loadable by transformers 4.x and 5.x and by vLLM.
    pub fn to_qwen2_moe_json(&self, dtype: &str) -> Result<Value> {
        if !self.use_moe {
            bail!("a dense model has no Qwen2-MoE layout (use the Llama layout)");
        }
        if self.n_shared_experts != 1 {
            bail!(
                "Qwen2-MoE has exactly one shared expert; this model has {} (n_shared_experts)",
                self.n_shared_experts
            );
        }
        if self.inference_rope_scaling {
            bail!("the YaRN variant of upstream MiniMind has no Qwen2-MoE equivalent");
        }
        Ok(json!({
            "architectures": ["Qwen2MoeForCausalLM"],
            "attention_dropout": self.dropout,
            "bos_token_id": self.bos_token_id,
            "decoder_sparse_step": 1,
            "dtype": dtype,
            "eos_token_id": self.eos_token_id,
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "mlp_only_layers": [],
            "model_type": "qwen2_moe",
            "moe_intermediate_size": self.intermediate_size,
            "norm_topk_prob": self.norm_topk_prob,
            "num_attention_heads": self.num_attention_heads,
            "num_experts": self.n_routed_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "output_router_logits": false,
            "qkv_bias": true,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": self.aux_loss_alpha,
            "shared_expert_intermediate_size": self.intermediate_size,
            "sliding_window": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": dtype,
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": self.vocab_size
        }))
    }

    /// The `config.json` that upstream `convert_torch2transformers_minimind` writes.
    pub fn to_minimind_json(&self, dtype: &str) -> Value {
        let mut v = json!({
            "architectures": ["MiniMindForCausalLM"],
            "auto_map": {
                "AutoConfig": "model_minimind.MiniMindConfig",
                "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"
            },
            "aux_loss_alpha": self.aux_loss_alpha,
            "bos_token_id": self.bos_token_id,
            "dropout": self.dropout,
            "dtype": dtype,
            "eos_token_id": self.eos_token_id,
            "flash_attn": self.flash_attn,
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "inference_rope_scaling": self.inference_rope_scaling,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "minimind",
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "norm_topk_prob": self.norm_topk_prob,
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": self.rope_scaling,
            "rope_theta": self.rope_theta,
            "scoring_func": self.scoring_func,
            "seq_aux": self.seq_aux,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_moe": self.use_moe,
            "vocab_size": self.vocab_size
        });
        if self.rope_scaling.is_none() {
            v.as_object_mut().map(|o| o.remove("rope_scaling"));
        }
        v
    }

    /// The `config.json` that upstream `convert_torch2transformers_llama` writes.
    pub fn to_llama_json(&self, dtype: &str) -> Result<Value> {
        if self.use_moe {
            bail!("a MoE model has no Llama layout (use the MiniMind layout)");
        }
        if self.inference_rope_scaling {
            bail!("the YaRN variant of upstream MiniMind has no Llama equivalent");
        }
        Ok(json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id,
            "dtype": dtype,
            "eos_token_id": self.eos_token_id,
            "head_dim": self.head_dim(),
            "hidden_act": self.hidden_act,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": true,
            "vocab_size": self.vocab_size
        }))
    }

    /// Parameters counted once (tied embeddings share one matrix).
    pub fn parameter_count(&self) -> usize {
        usize::try_from(self.parameter_count_wide()).unwrap_or(usize::MAX)
    }

    /// [`parameter_count`](Self::parameter_count) in u128, which no field of a
    /// not-yet-validated config can overflow.
    fn parameter_count_wide(&self) -> u128 {
        let w = |v: usize| v as u128;
        let h = w(self.hidden_size);
        let kv = w(self.num_key_value_heads) * (h / w(self.num_attention_heads.max(1)));
        let attn = 2 * h * h + 2 * h * kv;
        let ffn = 3 * h * w(self.intermediate_size);
        let mlp = if self.use_moe {
            ffn * (w(self.n_routed_experts) + w(self.n_shared_experts)) + w(self.n_routed_experts) * h
        } else {
            ffn
        };
        let head = if self.tie_word_embeddings { 0 } else { w(self.vocab_size) * h };
        w(self.vocab_size) * h + w(self.num_hidden_layers) * (attn + mlp + 2 * h) + h + head
    }
}

// ---------------------------------------------------------------------------------------------
// The `config.json` dialects, one typed struct each. Unknown keys are ignored, `null` reads as
// absent (HF writes `"pad_token_id": null` and the like), and a value of the wrong type is an
// error naming its path: `rope_parameters.rope_theta: expected a number, found a string`.

/// Deserializes `T` from parsed JSON, naming the path of the value that does not fit. The
/// dialects below use it, and so does ollama's request reader in mm-export.
pub fn deserialize_json<'a, T: Deserialize<'a>>(value: &'a Value) -> Result<T> {
    Ok(serde_path_to_error::deserialize(value)?)
}

/// The JSON types of config fields. An integer field takes only a non-negative integer (`2.0`
/// is refused); a number field takes an integer too (`"rope_theta": 10000`).
trait Scalar: Sized {
    const EXPECTED: &'static str;
    fn from_json(v: &Value) -> Option<Self>;
}

impl Scalar for usize {
    const EXPECTED: &'static str = "a non-negative integer";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_u64().and_then(|n| usize::try_from(n).ok())
    }
}

impl Scalar for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64()
    }
}

impl Scalar for bool {
    const EXPECTED: &'static str = "true or false";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
}

impl Scalar for String {
    const EXPECTED: &'static str = "a string";
    fn from_json(v: &Value) -> Option<Self> {
        v.as_str().map(str::to_owned)
    }
}

/// `expected a number, found a string`; serde_path_to_error puts the field's path in front.
fn scalar<T: Scalar, E: de::Error>(v: &Value) -> Result<T, E> {
    T::from_json(v).ok_or_else(|| {
        let found = match v {
            Value::Null => "null".to_string(),
            Value::Bool(_) => "a boolean".into(),
            Value::Number(n) => n.to_string(),
            Value::String(_) => "a string".into(),
            Value::Array(_) => "an array".into(),
            Value::Object(_) => "an object".into(),
        };
        E::custom(format_args!("expected {}, found {found}", T::EXPECTED))
    })
}

/// An optional field: absent and `null` both mean the dialect's default.
struct Opt<T>(Option<T>);

impl<T> Opt<T> {
    fn or(self, default: T) -> T {
        self.0.unwrap_or(default)
    }
}

impl<'de, T: Scalar> Deserialize<'de> for Opt<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde hands a missing field to `deserialize_option` as none, like a `null`.
        Option::<Value>::deserialize(d)?.map(|v| scalar(&v)).transpose().map(Opt)
    }
}

/// A required field: absent is serde's `missing field`, `null` is a value of the wrong type.
struct Req<T>(T);

impl<'de, T: Scalar> Deserialize<'de> for Req<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(&Value::deserialize(d)?).map(Req)
    }
}

/// A nested object (`rope_parameters`), as `Option<Obj<T>>`. Only a JSON object will do: the
/// derived `Deserialize` alone would also read an array positionally.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData)).map(Obj)
    }
}

/// Upstream MiniMind's `config.json` (`MiniMindConfig.to_dict()`), every field defaulting like
/// upstream's constructor. Its `rope_scaling` is not read: upstream derives it from
/// `inference_rope_scaling` alone.
#[derive(Deserialize)]
struct MiniMindJson {
    hidden_size: Opt<usize>,
    num_hidden_layers: Opt<usize>,
    num_attention_heads: Opt<usize>,
    num_key_value_heads: Opt<usize>,
    vocab_size: Opt<usize>,
    intermediate_size: Opt<usize>,
    rms_norm_eps: Opt<f64>,
    rope_theta: Opt<f64>,
    max_position_embeddings: Opt<usize>,
    inference_rope_scaling: Opt<bool>,
    dropout: Opt<f64>,
    bos_token_id: Opt<usize>,
    eos_token_id: Opt<usize>,
    hidden_act: Opt<String>,
    flash_attn: Opt<bool>,
    tie_word_embeddings: Opt<bool>,
    use_moe: Opt<bool>,
    num_experts_per_tok: Opt<usize>,
    n_routed_experts: Opt<usize>,
    n_shared_experts: Opt<usize>,
    scoring_func: Opt<String>,
    aux_loss_alpha: Opt<f64>,
    seq_aux: Opt<bool>,
    norm_topk_prob: Opt<bool>,
}

impl MiniMindJson {
    fn config(self) -> MiniMindConfig {
        let d = MiniMindConfig::default();
        let hidden_size = self.hidden_size.or(d.hidden_size);
        let mut cfg = MiniMindConfig {
            hidden_size,
            num_hidden_layers: self.num_hidden_layers.or(d.num_hidden_layers),
            num_attention_heads: self.num_attention_heads.or(d.num_attention_heads),
            num_key_value_heads: self.num_key_value_heads.or(d.num_key_value_heads),
            vocab_size: self.vocab_size.or(d.vocab_size),
            intermediate_size: self.intermediate_size.or(default_intermediate_size(hidden_size)),
            rms_norm_eps: self.rms_norm_eps.or(d.rms_norm_eps),
            rope_theta: self.rope_theta.or(d.rope_theta),
            max_position_embeddings: self.max_position_embeddings.or(d.max_position_embeddings),
            dropout: self.dropout.or(d.dropout),
            bos_token_id: self.bos_token_id.or(d.bos_token_id as usize) as u32,
            eos_token_id: self.eos_token_id.or(d.eos_token_id as usize) as u32,
            hidden_act: self.hidden_act.or(d.hidden_act),
            flash_attn: self.flash_attn.or(d.flash_attn),
            tie_word_embeddings: self.tie_word_embeddings.or(d.tie_word_embeddings),
            use_moe: self.use_moe.or(d.use_moe),
            num_experts_per_tok: self.num_experts_per_tok.or(d.num_experts_per_tok),
            n_routed_experts: self.n_routed_experts.or(d.n_routed_experts),
            n_shared_experts: self.n_shared_experts.or(d.n_shared_experts),
            scoring_func: self.scoring_func.or(d.scoring_func),
            aux_loss_alpha: self.aux_loss_alpha.or(d.aux_loss_alpha),
            seq_aux: self.seq_aux.or(d.seq_aux),
            norm_topk_prob: self.norm_topk_prob.or(d.norm_topk_prob),
            ..MiniMindConfig::default()
        };
        cfg.set_inference_rope_scaling(self.inference_rope_scaling.or(false));
        cfg
    }
}

/// HF `LlamaForCausalLM`'s `config.json` (transformers 4 and 5), in the shape MiniMind has:
/// no biases, `head_dim` = hidden_size / heads, plain RoPE. Defaults are transformers'.
#[derive(Deserialize)]
struct LlamaJson {
    hidden_size: Req<usize>,
    num_hidden_layers: Req<usize>,
    num_attention_heads: Req<usize>,
    num_key_value_heads: Opt<usize>,
    head_dim: Opt<usize>,
    vocab_size: Req<usize>,
    intermediate_size: Req<usize>,
    rms_norm_eps: Opt<f64>,
    max_position_embeddings: Opt<usize>,
    attention_dropout: Opt<f64>,
    bos_token_id: Opt<usize>,
    eos_token_id: Opt<usize>,
    hidden_act: Opt<String>,
    tie_word_embeddings: Opt<bool>,
    attention_bias: Opt<bool>,
    mlp_bias: Opt<bool>,
    rope_theta: Opt<f64>,
    rope_parameters: Option<Obj<RopeParameters>>,
    rope_scaling: Option<Value>,
}

impl LlamaJson {
    fn config(self) -> Result<MiniMindConfig> {
        let (hidden_size, num_attention_heads) = (self.hidden_size.0, self.num_attention_heads.0);
        let rope_theta = plain_rope_theta(self.rope_theta, self.rope_parameters, self.rope_scaling, "Llama")?;
        for (flag, on) in [("attention_bias", self.attention_bias), ("mlp_bias", self.mlp_bias)] {
            if on.or(false) {
                bail!("{flag}: true is not supported (MiniMind has no biases)");
            }
        }
        check_head_dim(self.head_dim, hidden_size, num_attention_heads)?;
        let d = MiniMindConfig::default();
        Ok(MiniMindConfig {
            hidden_size,
            num_hidden_layers: self.num_hidden_layers.0,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.or(num_attention_heads),
            vocab_size: self.vocab_size.0,
            intermediate_size: self.intermediate_size.0,
            rms_norm_eps: self.rms_norm_eps.or(1e-6),
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.or(2048),
            dropout: self.attention_dropout.or(0.0),
            bos_token_id: self.bos_token_id.or(d.bos_token_id as usize) as u32,
            eos_token_id: self.eos_token_id.or(d.eos_token_id as usize) as u32,
            hidden_act: self.hidden_act.or("silu".into()),
            tie_word_embeddings: self.tie_word_embeddings.or(false),
            ..d
        })
    }
}

/// HF `Qwen2MoeForCausalLM`'s `config.json` as `qwen2_moe` writes it: every layer sparse, one
/// shared expert as wide as the routed ones, no sliding window, plain RoPE.
#[derive(Deserialize)]
struct Qwen2MoeJson {
    hidden_size: Req<usize>,
    num_hidden_layers: Req<usize>,
    num_attention_heads: Req<usize>,
    num_key_value_heads: Opt<usize>,
    head_dim: Opt<usize>,
    vocab_size: Req<usize>,
    moe_intermediate_size: Req<usize>,
    shared_expert_intermediate_size: Req<usize>,
    num_experts: Req<usize>,
    num_experts_per_tok: Req<usize>,
    norm_topk_prob: Opt<bool>,
    router_aux_loss_coef: Opt<f64>,
    decoder_sparse_step: Opt<usize>,
    mlp_only_layers: Option<Value>,
    use_sliding_window: Opt<bool>,
    rms_norm_eps: Opt<f64>,
    max_position_embeddings: Opt<usize>,
    attention_dropout: Opt<f64>,
    bos_token_id: Opt<usize>,
    eos_token_id: Opt<usize>,
    hidden_act: Opt<String>,
    tie_word_embeddings: Opt<bool>,
    rope_theta: Opt<f64>,
    rope_parameters: Option<Obj<RopeParameters>>,
    rope_scaling: Option<Value>,
}

impl Qwen2MoeJson {
    fn config(self) -> Result<MiniMindConfig> {
        let (hidden_size, num_attention_heads) = (self.hidden_size.0, self.num_attention_heads.0);
        let rope_theta = plain_rope_theta(self.rope_theta, self.rope_parameters, self.rope_scaling, "Qwen2-MoE")?;
        let (moe_width, shared_width) = (self.moe_intermediate_size.0, self.shared_expert_intermediate_size.0);
        if shared_width != moe_width {
            bail!(
                "shared_expert_intermediate_size {shared_width} != moe_intermediate_size {moe_width}: \
                 MiniMind's shared expert is as wide as its routed experts"
            );
        }
        let step = self.decoder_sparse_step.or(1);
        if step != 1 {
            bail!("decoder_sparse_step {step}: MiniMind MoE has experts in every layer (needs 1)");
        }
        if let Some(layers) = self.mlp_only_layers.filter(|l| l.as_array().is_none_or(|a| !a.is_empty())) {
            bail!("mlp_only_layers {layers}: MiniMind MoE has experts in every layer (needs [])");
        }
        if self.use_sliding_window.or(false) {
            bail!("use_sliding_window: true is not supported (MiniMind attends to the whole context)");
        }
        check_head_dim(self.head_dim, hidden_size, num_attention_heads)?;
        let d = MiniMindConfig::default();
        Ok(MiniMindConfig {
            hidden_size,
            num_hidden_layers: self.num_hidden_layers.0,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.or(num_attention_heads),
            vocab_size: self.vocab_size.0,
            intermediate_size: moe_width,
            rms_norm_eps: self.rms_norm_eps.or(1e-6),
            rope_theta,
            max_position_embeddings: self.max_position_embeddings.or(32768),
            dropout: self.attention_dropout.or(0.0),
            bos_token_id: self.bos_token_id.or(d.bos_token_id as usize) as u32,
            eos_token_id: self.eos_token_id.or(d.eos_token_id as usize) as u32,
            hidden_act: self.hidden_act.or("silu".into()),
            tie_word_embeddings: self.tie_word_embeddings.or(false),
            use_moe: true,
            num_experts_per_tok: self.num_experts_per_tok.0,
            n_routed_experts: self.num_experts.0,
            n_shared_experts: 1,
            norm_topk_prob: self.norm_topk_prob.or(false),
            aux_loss_alpha: self.router_aux_loss_coef.or(d.aux_loss_alpha),
            ..d
        })
    }
}

/// transformers 5's `rope_parameters` (4.x writes `rope_theta` at the top level).
#[derive(Deserialize)]
struct RopeParameters {
    rope_type: Opt<String>,
    rope_theta: Opt<f64>,
}

/// `rope_theta` of an HF config (in `rope_parameters` when there is one, else at the top
/// level), refusing any rope scaling: MiniMind's exportable form uses plain RoPE.
fn plain_rope_theta(top: Opt<f64>, params: Option<Obj<RopeParameters>>, scaling: Option<Value>, what: &str) -> Result<f64> {
    let theta = match params {
        Some(Obj(p)) => {
            if let Some(kind) = p.rope_type.0.filter(|k| k != "default") {
                bail!("{what} rope_type `{kind}` is not supported (MiniMind uses plain RoPE)");
            }
            p.rope_theta
        }
        None => top,
    };
    if scaling.is_some() {
        bail!("{what} rope_scaling is not supported (MiniMind uses plain RoPE)");
    }
    Ok(theta.or(10000.0))
}

/// MiniMind's head_dim is hidden_size / num_attention_heads; an HF config may state it.
fn check_head_dim(head_dim: Opt<usize>, hidden_size: usize, heads: usize) -> Result<()> {
    match head_dim.0 {
        Some(hd) if heads == 0 || hd.checked_mul(heads) != Some(hidden_size) => bail!(
            "head_dim {hd} × {heads} heads != hidden_size {hidden_size} \
             (MiniMind needs head_dim = hidden_size / num_attention_heads)"
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn yarn_rescales_only_the_frequencies() {
        let plain = rope_inverse_frequencies(64, 32768, 1e6, None);
        assert_eq!(plain[0], 1.0);
        assert_eq!(plain[1], 1.0 / 1e6f32.powf(2.0 / 64.0));
        let yarn = RopeScaling::upstream_yarn();
        let scaled = rope_inverse_frequencies(64, 32768, 1e6, Some(&yarn));
        // Fast-rotating pairs keep nearly their frequency, slow ones are divided by 4.
        assert!((scaled[0] - 1.0).abs() < 1e-6);
        assert_eq!(scaled[31], plain[31] / 4.0);
        // No extrapolation needed: unchanged.
        assert_eq!(rope_inverse_frequencies(64, 2048, 1e6, Some(&yarn)), plain);
    }

    use super::*;

    #[test]
    fn presets_have_upstream_sizes() {
        let small = MiniMindConfig::preset("small").unwrap();
        assert_eq!(small.intermediate_size, 1408);
        assert_eq!(small.parameter_count(), 25_829_888);
        let base = MiniMindConfig::preset("base").unwrap();
        assert_eq!(base.intermediate_size, 2048);
        assert_eq!((base.parameter_count() as f64 / 1e6).round(), 104.0);
        let moe = MiniMindConfig::preset("moe").unwrap();
        assert!(moe.use_moe);
        assert_eq!(moe.intermediate_size, 1728);
        assert!(MiniMindConfig::preset("huge").is_err());
    }

    #[test]
    fn parameter_count_matches_the_fixture_models() {
        // shared/fixtures/minimind2/README.md: unique parameters of the dense and moe fixtures.
        let dense = MiniMindConfig { num_attention_heads: 4, ..MiniMindConfig::with_hidden(256, 2) };
        assert_eq!(dense.parameter_count(), 3_114_240);
        let moe = MiniMindConfig { use_moe: true, ..dense };
        assert_eq!(moe.parameter_count(), 7_441_664);
    }

    #[test]
    fn intermediate_size_rounds_like_upstream() {
        assert_eq!(default_intermediate_size(256), 704);
        assert_eq!(default_intermediate_size(512), 1408);
        assert_eq!(default_intermediate_size(640), 1728);
    }

    #[test]
    fn minimind_json_round_trips() {
        let mut cfg = MiniMindConfig::preset("moe").unwrap();
        cfg.set_inference_rope_scaling(true);
        let back = MiniMindConfig::from_json(&cfg.to_minimind_json("float16")).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn llama_json_round_trips_dense() {
        let cfg = MiniMindConfig::preset("small").unwrap();
        let back = MiniMindConfig::from_json(&cfg.to_llama_json("float16").unwrap()).unwrap();
        assert_eq!(back.hidden_size, cfg.hidden_size);
        assert_eq!(back.intermediate_size, cfg.intermediate_size);
        assert_eq!(back.rope_theta, cfg.rope_theta);
        assert!(back.tie_word_embeddings);
    }

    #[test]
    fn qwen2_moe_json_round_trips_moe() {
        let cfg = MiniMindConfig::preset("moe").unwrap();
        let v = cfg.to_qwen2_moe_json("float16").unwrap();
        assert_eq!(v["shared_expert_intermediate_size"], 1728);
        assert_eq!(MiniMindConfig::from_json(&v).unwrap(), cfg);
        assert!(MiniMindConfig::preset("small").unwrap().to_qwen2_moe_json("float16").is_err());
        let mut wide = v.clone();
        wide["shared_expert_intermediate_size"] = json!(3456);
        let err = MiniMindConfig::from_json(&wide).unwrap_err().to_string();
        assert!(err.contains("shared_expert_intermediate_size"), "{err}");
    }

    #[test]
    fn heads_not_dividing_hidden_is_rejected() {
        let mut v = MiniMindConfig::default().to_minimind_json("float32");
        v["num_attention_heads"] = json!(7);
        let err = MiniMindConfig::from_json(&v).unwrap_err().to_string();
        assert!(err.contains("does not divide hidden_size"), "{err}");
    }

    #[test]
    fn memory_bomb_shapes_are_refused_naming_the_field() {
        let bombs = [
            ("num_hidden_layers", json!(1_000_000_000u64)),
            ("max_position_embeddings", json!(1u64 << 62)),
            ("hidden_size", json!(1u64 << 32)),
            ("vocab_size", json!(1u64 << 40)),
            ("intermediate_size", json!(u64::MAX)),
        ];
        for (field, value) in bombs {
            let mut v = MiniMindConfig::default().to_minimind_json("float32");
            v[field] = value;
            let err = format!("{:#}", MiniMindConfig::from_json(&v).unwrap_err());
            assert!(err.contains(field) && err.contains("limit"), "{field}: {err}");
        }
        let mut v = MiniMindConfig::preset("moe").unwrap().to_minimind_json("float32");
        v["n_routed_experts"] = json!(1_000_000_000u64);
        let err = format!("{:#}", MiniMindConfig::from_json(&v).unwrap_err());
        assert!(err.contains("n_routed_experts") && err.contains("limit"), "{err}");
        // Every field within its limit, but together too many parameters.
        let wide = MiniMindConfig { num_hidden_layers: 512, ..MiniMindConfig::with_hidden(8192, 512) };
        let err = wide.validate().unwrap_err().to_string();
        assert!(err.contains("parameters"), "{err}");
        assert!(MiniMindConfig::preset("base").unwrap().validate().is_ok());
    }

    #[test]
    fn zero_heads_is_an_error_not_a_division_by_zero() {
        let cfg = MiniMindConfig { num_attention_heads: 0, ..MiniMindConfig::default() };
        assert_eq!(cfg.head_dim(), 0);
        assert!(cfg.validate().unwrap_err().to_string().contains("num_attention_heads"));
    }

    #[test]
    fn wrong_field_type_names_the_field() {
        let mut v = MiniMindConfig::default().to_minimind_json("float32");
        v["hidden_size"] = json!("big");
        let err = format!("{:#}", MiniMindConfig::from_json(&v).unwrap_err());
        assert!(err.contains("hidden_size"), "{err}");
    }

    /// `config.json` of the dense fixture's `hf-llama` and `hf-minimind` exports, as
    /// transformers 5.17 saved them (shared/fixtures/minimind2/dense/weights.tar.xz).
    const HF_LLAMA: &str = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 1, "dtype": "float16", "eos_token_id": 2, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 256, "initializer_range": 0.02, "intermediate_size": 704,
        "max_position_embeddings": 4096, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "tie_word_embeddings": true, "transformers_version": "5.17.0", "use_cache": true, "vocab_size": 6400}"#;
    const HF_MINIMIND: &str = r#"{"architectures": ["MiniMindForCausalLM"], "auto_map": {"AutoConfig":
        "model_minimind.MiniMindConfig", "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"},
        "aux_loss_alpha": 0.1, "bos_token_id": 1, "dropout": 0.0, "dtype": "float16", "eos_token_id": 2,
        "flash_attn": true, "hidden_act": "silu", "hidden_size": 256, "inference_rope_scaling": false,
        "intermediate_size": 704, "max_position_embeddings": 4096, "model_type": "minimind", "n_routed_experts": 4,
        "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 4, "num_experts_per_tok": 2,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_parameters": null,
        "rope_theta": 1000000.0, "scoring_func": "softmax", "seq_aux": true, "transformers_version": "5.17.0",
        "use_moe": false, "vocab_size": 6400}"#;

    fn fixture_shape() -> MiniMindConfig {
        MiniMindConfig { num_attention_heads: 4, max_position_embeddings: 4096, ..MiniMindConfig::with_hidden(256, 2) }
    }

    #[test]
    fn each_dialect_reads_a_real_config() {
        let dense = fixture_shape();
        for text in [HF_MINIMIND, HF_LLAMA] {
            assert_eq!(MiniMindConfig::from_json(&serde_json::from_str(text).unwrap()).unwrap(), dense);
        }
        // transformers 4 writes rope_theta at the top level (an integer is a number too).
        let mut t4: Value = serde_json::from_str(HF_LLAMA).unwrap();
        t4.as_object_mut().unwrap().remove("rope_parameters");
        t4["rope_theta"] = json!(1_000_000);
        t4["rope_scaling"] = Value::Null;
        assert_eq!(MiniMindConfig::from_json(&t4).unwrap(), dense);
        // Qwen2-MoE as mm writes it, then with transformers 5's rope_parameters.
        let moe = MiniMindConfig { use_moe: true, ..dense };
        let mut qwen = moe.to_qwen2_moe_json("float16").unwrap();
        assert_eq!(MiniMindConfig::from_json(&qwen).unwrap(), moe);
        qwen.as_object_mut().unwrap().remove("rope_theta");
        qwen["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
        assert_eq!(MiniMindConfig::from_json(&qwen).unwrap(), moe);
    }

    #[test]
    fn wrong_types_name_the_path_the_expectation_and_the_value() {
        let dense = fixture_shape();
        let (minimind, llama) = (dense.to_minimind_json("float16"), dense.to_llama_json("float16").unwrap());
        let qwen = MiniMindConfig { use_moe: true, ..dense }.to_qwen2_moe_json("float16").unwrap();
        let cases = [
            (&minimind, "rope_theta", json!("1e6"), "rope_theta: expected a number, found a string"),
            (&minimind, "num_hidden_layers", json!(2.0), "num_hidden_layers: expected a non-negative integer, found 2.0"),
            (&llama, "rope_parameters.rope_theta", json!("1e6"), "rope_parameters.rope_theta: expected a number, found a string"),
            (&llama, "tie_word_embeddings", json!(1), "tie_word_embeddings: expected true or false, found 1"),
            (&qwen, "num_experts", json!(-4), "num_experts: expected a non-negative integer, found -4"),
            (&qwen, "hidden_size", Value::Null, "hidden_size: expected a non-negative integer, found null"),
            (&qwen, "rope_parameters", json!([1e6]), "rope_parameters: invalid type: sequence, expected an object"),
        ];
        for (base, path, bad, message) in cases {
            let mut v = base.clone();
            *path.split('.').fold(&mut v, |slot, key| &mut slot[key]) = bad;
            assert_eq!(MiniMindConfig::from_json(&v).unwrap_err().to_string(), message);
        }
        let mut v = qwen.clone();
        v.as_object_mut().unwrap().remove("num_experts");
        assert_eq!(MiniMindConfig::from_json(&v).unwrap_err().to_string(), "missing field `num_experts`");
    }

    #[test]
    fn from_file_puts_the_file_in_front() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, HF_LLAMA.replace("\"rope_theta\": 1000000.0", "\"rope_theta\": \"1e6\"")).unwrap();
        let err = format!("{:#}", MiniMindConfig::from_file(&path).unwrap_err());
        let want = format!("{}: unusable config: rope_parameters.rope_theta: expected a number, found a string", path.display());
        assert_eq!(err, want);
    }
}
