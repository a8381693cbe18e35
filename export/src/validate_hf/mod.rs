//! `mm validate hf`: a static check that an HF model directory loads natively in vLLM (or in
//! transformers 4.x/5.x), reporting each problem with the offending file, tensor or field.
//!
//! What is checked (docs/templates_serving.md §5.1, §7): the architecture and `model_type`, the
//! config fields and their JSON types (transformers 5 configs are strict dataclasses), the
//! tensor set against the config (missing, extra, mis-shaped; the tied/untied `lm_head`
//! rule), dtypes, safetensors headers and `{"format":"pt"}` metadata, index coverage, the
//! tokenizer files, chat template and special ids, `generation_config.json`, head_dim
//! support in vLLM's attention backends, `auto_map` remote code, and which vLLM tool-call
//! and reasoning parsers the tokenizer allows. Nothing is loaded into a model: vLLM cannot
//! run here, so this is what can be known from the files.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;

use mm_converters::limits;

mod config;
mod tokenizer;
mod weights;

/// Which loader the directory must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `vllm serve DIR` with a native model class (vLLM ≥ 0.24 runs on transformers 5).
    Vllm,
    /// `AutoConfig` / `AutoTokenizer` / `AutoModelForCausalLM` in transformers 4.x and 5.x.
    Transformers,
}

impl Target {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "vllm" => Self::Vllm,
            "transformers" | "hf" => Self::Transformers,
            other => bail!("unknown target `{other}` (use vllm or transformers)"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Transformers => "transformers",
        }
    }
}

/// One problem: a stable `code`, where it is (`file`, `file: tensor`, `file: field`), and why.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub location: String,
    pub message: String,
}

/// vLLM's opt-in output parsers this tokenizer and template can drive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Parsers {
    /// `--tool-call-parser` values (with `--enable-auto-tool-choice`).
    pub tool_call: Vec<String>,
    /// `--reasoning-parser` values.
    pub reasoning: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HfReport {
    pub dir: PathBuf,
    pub target: Target,
    pub architecture: Option<String>,
    pub model_type: Option<String>,
    pub weight_files: Vec<String>,
    pub tensor_count: usize,
    pub dtypes: Vec<String>,
    pub head_dim: Option<usize>,
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// vLLM only.
    pub parsers: Option<Parsers>,
    /// A `vllm serve` line with the flags the directory needs (vLLM only, when it passes).
    pub serve_command: Option<String>,
    /// What the template probe rendered for a one-message chat, if a probe was given.
    pub rendered_sample: Option<String>,
}

impl HfReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Whether an error or warning with this code was reported.
    pub fn has(&self, code: &str) -> bool {
        self.errors.iter().chain(&self.warnings).any(|f| f.code == code)
    }

    pub fn error(&self, code: &str) -> Option<&Finding> {
        self.errors.iter().find(|f| f.code == code)
    }

    pub fn warning(&self, code: &str) -> Option<&Finding> {
        self.warnings.iter().find(|f| f.code == code)
    }
}

/// Renders a one-message chat with the directory's tokenizer and template (the caller owns
/// the template engine); an error becomes a `chat_template.render` finding.
pub type TemplateProbe<'a> = &'a dyn Fn(&Path) -> Result<String>;

#[derive(Clone, Copy)]
pub struct HfValidateOptions<'a> {
    pub target: Target,
    pub template_probe: Option<TemplateProbe<'a>>,
}

impl HfValidateOptions<'_> {
    pub fn new(target: Target) -> Self {
        Self { target, template_probe: None }
    }
}

/// Architectures vLLM loads with a native class (a subset of its text-generation registry,
/// the ones a MiniMind-family model can be or be mistaken for), with their `model_type`.
const VLLM_NATIVE: &[(&str, &str)] = &[
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("Qwen3ForCausalLM", "qwen3"),
    ("Qwen2MoeForCausalLM", "qwen2_moe"),
    ("Qwen3MoeForCausalLM", "qwen3_moe"),
    ("MixtralForCausalLM", "mixtral"),
    ("DeepseekForCausalLM", "deepseek"),
    ("DeepseekV2ForCausalLM", "deepseek_v2"),
    ("DeepseekV3ForCausalLM", "deepseek_v3"),
    ("GemmaForCausalLM", "gemma"),
    ("Gemma2ForCausalLM", "gemma2"),
    ("Gemma3ForCausalLM", "gemma3_text"),
    ("PhiForCausalLM", "phi"),
    ("Phi3ForCausalLM", "phi3"),
    ("GPT2LMHeadModel", "gpt2"),
    ("GPTNeoXForCausalLM", "gpt_neox"),
    ("OlmoForCausalLM", "olmo"),
    ("Olmo2ForCausalLM", "olmo2"),
    ("GraniteForCausalLM", "granite"),
    ("StableLmForCausalLM", "stablelm"),
    ("Starcoder2ForCausalLM", "starcoder2"),
    ("InternLM2ForCausalLM", "internlm2"),
];

/// `model_type`s that exist in vLLM's registry but not in transformers 5 (vLLM ≥ 0.24 needs
/// transformers 5, so such a config needs remote code).
const NOT_IN_TRANSFORMERS_5: &[&str] = &["deepseek", "internlm2"];

/// Head sizes of vLLM's FlashAttention backend in the versions read (newer builds accept any
/// multiple of 8 up to 256; other sizes may fall back to a slower backend or be refused).
const FLASH_HEAD_SIZES: &[usize] = &[32, 64, 96, 128, 160, 192, 224, 256];

/// Architectures whose tensors mm checks name by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Qwen2Moe,
    Qwen3Moe,
    MiniMind,
}

fn family_of(arch: &str) -> Option<Family> {
    Some(match arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => Family::Llama,
        "Qwen2ForCausalLM" => Family::Qwen2,
        "Qwen3ForCausalLM" => Family::Qwen3,
        "Qwen2MoeForCausalLM" => Family::Qwen2Moe,
        "Qwen3MoeForCausalLM" => Family::Qwen3Moe,
        "MiniMindForCausalLM" => Family::MiniMind,
        _ => return None,
    })
}

/// The causal-LM class transformers 5 maps a `model_type` to (the native architectures above
/// whose model type transformers has).
fn transformers_class(model_type: Option<&str>) -> Option<&'static str> {
    let t = model_type?;
    if NOT_IN_TRANSFORMERS_5.contains(&t) {
        return None;
    }
    VLLM_NATIVE.iter().find(|(_, mt)| *mt == t).map(|(arch, _)| *arch)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Number,
    Bool,
    Str,
}

/// Typed config fields of the transformers 5 config classes mm checks (strict dataclasses:
/// an int where a float is declared, a float or string where an int is, is refused).
const FIELD_TYPES: &[(&str, Kind)] = &[
    ("hidden_size", Kind::Int),
    ("intermediate_size", Kind::Int),
    ("num_hidden_layers", Kind::Int),
    ("num_attention_heads", Kind::Int),
    ("num_key_value_heads", Kind::Int),
    ("vocab_size", Kind::Int),
    ("max_position_embeddings", Kind::Int),
    ("head_dim", Kind::Int),
    ("bos_token_id", Kind::Int),
    ("pad_token_id", Kind::Int),
    ("rms_norm_eps", Kind::Float),
    ("rope_theta", Kind::Number), // transformers 5 folds it into rope_parameters, unchecked
    ("initializer_range", Kind::Float),
    ("attention_dropout", Kind::Number),
    ("tie_word_embeddings", Kind::Bool),
    ("use_cache", Kind::Bool),
    ("attention_bias", Kind::Bool),
    ("mlp_bias", Kind::Bool),
    ("hidden_act", Kind::Str),
    ("num_experts", Kind::Int),
    ("num_experts_per_tok", Kind::Int),
    ("moe_intermediate_size", Kind::Int),
    ("shared_expert_intermediate_size", Kind::Int),
    ("decoder_sparse_step", Kind::Int),
    ("max_window_layers", Kind::Int),
    ("router_aux_loss_coef", Kind::Float),
    ("norm_topk_prob", Kind::Bool),
    ("qkv_bias", Kind::Bool),
    ("use_sliding_window", Kind::Bool),
    ("output_router_logits", Kind::Bool),
];

const CONFIG: &str = "config.json";
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";

/// A tensor as a safetensors header describes it.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: String,
    dtype: String,
    shape: Vec<usize>,
    /// Where its data starts in the file (after the 8-byte length and the header).
    start: usize,
    bytes: usize,
}

/// The tokenizer as far as the checks need it.
#[derive(Default)]
struct Vocab {
    ids: HashMap<String, u64>,
    /// Added tokens (single pieces whatever the model's merges say).
    added: HashMap<String, u64>,
    all_ids: BTreeSet<u64>,
    max_id: Option<u64>,
}

impl Vocab {
    fn id(&self, token: &str) -> Option<u64> {
        self.added.get(token).or_else(|| self.ids.get(token)).copied()
    }

    fn contains_id(&self, id: u64) -> bool {
        self.all_ids.contains(&id)
    }
}

struct Checker<'a> {
    dir: &'a Path,
    opts: HfValidateOptions<'a>,
    report: HfReport,
    /// Tensors that live in a missing or unreadable file (already reported there).
    lost: BTreeSet<String>,
    /// The single weight file could not be read: every tensor is unknown.
    all_lost: bool,
    /// The architecture whose tensors are checked (from `architectures`, or for transformers
    /// from `model_type`, which is what AutoModelForCausalLM goes by).
    family: Option<Family>,
}

/// Checks an HF model directory; never fails, every problem is a finding.
pub fn validate_hf_dir(dir: &Path, opts: &HfValidateOptions) -> HfReport {
    let report = HfReport {
        dir: dir.to_path_buf(),
        target: opts.target,
        architecture: None,
        model_type: None,
        weight_files: Vec::new(),
        tensor_count: 0,
        dtypes: Vec::new(),
        head_dim: None,
        errors: Vec::new(),
        warnings: Vec::new(),
        parsers: None,
        serve_command: None,
        rendered_sample: None,
    };
    let mut c = Checker { dir, opts: *opts, report, lost: BTreeSet::new(), all_lost: false, family: None };
    c.run();
    c.report
}

impl Checker<'_> {
    fn vllm(&self) -> bool {
        self.opts.target == Target::Vllm
    }

    fn error(&mut self, code: &'static str, location: impl Into<String>, message: impl Into<String>) {
        self.report.errors.push(Finding { code, location: location.into(), message: message.into() });
    }

    fn warn(&mut self, code: &'static str, location: impl Into<String>, message: impl Into<String>) {
        self.report.warnings.push(Finding { code, location: location.into(), message: message.into() });
    }

    /// An error for one target, a warning for the other.
    fn error_if(&mut self, error: bool, code: &'static str, location: impl Into<String>, message: impl Into<String>) {
        if error {
            self.error(code, location, message)
        } else {
            self.warn(code, location, message)
        }
    }

    /// Reads a JSON file: None when absent, an `invalid_json` error when unparsable.
    fn read_json(&mut self, name: &str, code: &'static str) -> Option<Value> {
        let path = self.dir.join(name);
        if !path.exists() {
            return None;
        }
        let text = match limits::read_to_string(&path, limits::MAX_CONFIG_BYTES, name) {
            Ok(t) => t,
            Err(e) => {
                self.error(code, name, format!("cannot read: {e:#}"));
                return None;
            }
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.is_object() => Some(v),
            Ok(_) => {
                self.error(code, name, "is not a JSON object");
                None
            }
            Err(e) => {
                self.error(code, name, format!("invalid JSON: {e}"));
                None
            }
        }
    }

    fn run(&mut self) {
        if !self.dir.is_dir() {
            self.error("dir.missing", self.dir.display().to_string(), "not a directory");
            return;
        }
        let config = self.check_config();
        let tensors = self.check_weights();
        let vocab = self.check_tokenizer(config.as_ref());
        if let (Some(cfg), Some(tensors)) = (config.as_ref(), tensors.as_ref()) {
            self.check_tensors(cfg, tensors, vocab.as_ref());
        }
        if self.vllm() {
            self.check_parsers(vocab.as_ref());
        }
    }

    // ---------------------------------------------------------------- config.json
}

/// The human-readable report.
pub fn describe(r: &HfReport) -> String {
    let mut s = String::new();
    let arch = r.architecture.as_deref().unwrap_or("?");
    let mt = r.model_type.as_deref().unwrap_or("?");
    s.push_str(&format!(
        "{}: {arch} ({mt}), {} tensors in {}, {} (target {})\n",
        r.dir.display(),
        r.tensor_count,
        if r.weight_files.is_empty() { "-".to_string() } else { r.weight_files.join(", ") },
        if r.dtypes.is_empty() { "-".to_string() } else { r.dtypes.join("/") },
        r.target.name()
    ));
    for (label, list) in [("error", &r.errors), ("warning", &r.warnings)] {
        if !list.is_empty() {
            s.push_str(&format!("{}s ({}):\n", label, list.len()));
        }
        for f in list {
            s.push_str(&format!("  {label}[{}] {}: {}\n", f.code, f.location, f.message));
        }
    }
    if let Some(p) = &r.parsers {
        let list = |v: &Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        s.push_str(&format!("vLLM parsers: tool calls: {}; reasoning: {}\n", list(&p.tool_call), list(&p.reasoning)));
        for n in &p.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
    }
    if let Some(cmd) = &r.serve_command {
        s.push_str(&format!("serve: {cmd}\n"));
    }
    s.push_str(&if r.ok() {
        format!("OK ({} warning{})", r.warnings.len(), if r.warnings.len() == 1 { "" } else { "s" })
    } else {
        format!("FAILED: {} error{}, {} warning{}", r.errors.len(), plural(r.errors.len()), r.warnings.len(), plural(r.warnings.len()))
    });
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
