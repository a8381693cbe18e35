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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::{Map, Value};

use mm_converters::{limits, MiniMindConfig};

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

    fn check_config(&mut self) -> Option<Map<String, Value>> {
        if !self.dir.join(CONFIG).exists() {
            self.error("config.missing", CONFIG, "missing: vLLM and transformers read the architecture and shape from it");
            return None;
        }
        let cfg = self.read_json(CONFIG, "config.invalid_json")?.as_object().cloned()?;
        let arch = match cfg.get("architectures") {
            Some(Value::Array(list)) if !list.is_empty() && list.iter().all(Value::is_string) => {
                if list.len() > 1 {
                    self.warn("config.architectures", format!("{CONFIG}: architectures"), "lists several classes; vLLM uses the first");
                }
                list[0].as_str().map(str::to_string)
            }
            _ => {
                self.error(
                    "config.architectures",
                    format!("{CONFIG}: architectures"),
                    "missing or not a non-empty list of class names (vLLM picks the model class from it)",
                );
                None
            }
        };
        let model_type = cfg.get("model_type").and_then(Value::as_str).map(str::to_string);
        self.report.architecture = arch.clone();
        self.report.model_type = model_type.clone();
        self.check_remote_code(&cfg, CONFIG);
        let has_auto_model = cfg
            .get("auto_map")
            .and_then(Value::as_object)
            .is_some_and(|m| m.keys().any(|k| k.starts_with("AutoModel")));

        let mut family = arch.as_deref().and_then(family_of);
        if let Some(arch) = &arch {
            let native = VLLM_NATIVE.iter().find(|(a, _)| a == arch);
            match (family, native) {
                (Some(Family::MiniMind), _) => {
                    if self.vllm() {
                        self.error(
                            "arch.unknown",
                            format!("{CONFIG}: architectures"),
                            "MiniMindForCausalLM is not a vLLM architecture, and MiniMind's own modelling code \
                             does not meet `--model-impl transformers` (own KV cache and attention); export \
                             with `mm export hf --arch llama` (dense) or `--arch qwen2-moe` (MoE)",
                        );
                    } else if !has_auto_model {
                        self.error(
                            "arch.unknown",
                            format!("{CONFIG}: architectures"),
                            "MiniMindForCausalLM is not a transformers class and config.json has no auto_map \
                             naming remote code for it",
                        );
                    }
                }
                (_, Some((_, expected_type))) => {
                    match model_type.as_deref() {
                        None => self.error(
                            "config.model_type",
                            format!("{CONFIG}: model_type"),
                            format!("missing (`{arch}` needs model_type `{expected_type}`)"),
                        ),
                        Some(t) if t != *expected_type => self.error(
                            "config.model_type",
                            format!("{CONFIG}: model_type"),
                            format!("`{t}` does not match architecture `{arch}` (needs `{expected_type}`)"),
                        ),
                        Some(t) if NOT_IN_TRANSFORMERS_5.contains(&t) => self.error_if(
                            !has_auto_model,
                            "config.model_type",
                            format!("{CONFIG}: model_type"),
                            format!("`{t}` is not a transformers 5 model type (vLLM ≥ 0.24 needs transformers 5); it needs remote code"),
                        ),
                        Some(_) => {}
                    }
                    if family.is_none() {
                        self.warn(
                            "tensor.layout_unchecked",
                            format!("{CONFIG}: architectures"),
                            format!("`{arch}` is a native vLLM architecture whose tensor layout mm does not model; tensor names were not checked"),
                        );
                    }
                }
                (_, None) => {
                    let remote = !self.vllm() && has_auto_model;
                    // AutoModelForCausalLM (4.x and 5.x) picks the class from model_type and does
                    // not read `architectures`; vLLM picks it from `architectures`.
                    let by_type = if self.vllm() { None } else { transformers_class(model_type.as_deref()) };
                    if let (false, Some(class)) = (remote, by_type) {
                        self.warn(
                            "arch.unknown",
                            format!("{CONFIG}: architectures"),
                            format!(
                                "`{arch}` is not a transformers class: AutoModelForCausalLM ignores it and loads \
                                 {class} from model_type `{}`, but vLLM and tools that read `architectures` refuse it",
                                model_type.as_deref().unwrap_or_default()
                            ),
                        );
                        family = family_of(class);
                    } else if !remote {
                        let known: Vec<&str> = VLLM_NATIVE.iter().map(|(a, _)| *a).take(6).collect();
                        self.error(
                            "arch.unknown",
                            format!("{CONFIG}: architectures"),
                            if self.vllm() {
                                format!("`{arch}` is not a native vLLM architecture mm knows (MiniMind exports use {}, …)", known.join(", "))
                            } else {
                                format!(
                                    "`{arch}` is not a transformers class, model_type {} is not one mm knows transformers \
                                     to load, and there is no auto_map (MiniMind exports use {}, …)",
                                    model_type.as_deref().map_or("(missing)".to_string(), |t| format!("`{t}`")),
                                    known.join(", ")
                                )
                            },
                        );
                    }
                }
            }
        }
        self.family = family;
        self.check_field_types(&cfg, family);
        self.check_config_values(&cfg, family);
        Some(cfg)
    }

    /// `auto_map` entries name `module.Class` (or `repo--module.Class`); the module's file
    /// must be in the directory and loading needs trust_remote_code.
    fn check_remote_code(&mut self, obj: &Map<String, Value>, file: &str) {
        let Some(auto_map) = obj.get("auto_map").and_then(Value::as_object) else { return };
        let mut refs: Vec<(String, String)> = Vec::new();
        for (key, value) in auto_map {
            let values: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            for v in values {
                refs.push((key.clone(), v.to_string()));
            }
        }
        let mut missing = BTreeSet::new();
        for (_, reference) in &refs {
            if reference.contains("--") {
                continue; // code from another hub repository; nothing to check locally
            }
            if let Some((module, _class)) = reference.rsplit_once('.') {
                let path = format!("{}.py", module.replace('.', "/"));
                if !self.dir.join(&path).exists() {
                    missing.insert(path);
                }
            }
        }
        let names: Vec<String> = refs.iter().map(|(k, v)| format!("{k} → {v}")).collect();
        if !missing.is_empty() {
            self.error(
                "remote_code.missing_file",
                format!("{file}: auto_map"),
                format!(
                    "names remote code ({}) but {} is not in the directory: loading with trust_remote_code fails",
                    names.join(", "),
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        self.warn(
            "remote_code.auto_map",
            format!("{file}: auto_map"),
            format!(
                "remote code ({}): runs Python from the directory and needs --trust-remote-code / \
                 trust_remote_code=True (for a native architecture the code replaces the built-in class)",
                names.join(", ")
            ),
        );
    }

    fn check_field_types(&mut self, cfg: &Map<String, Value>, family: Option<Family>) {
        if family == Some(Family::MiniMind) || family.is_none() {
            return; // remote-code or unmodelled configs: transformers' types do not apply
        }
        for (name, kind) in FIELD_TYPES {
            let Some(v) = cfg.get(*name) else { continue };
            if v.is_null() {
                continue;
            }
            let ok = match kind {
                Kind::Int => v.is_u64() || v.is_i64(),
                Kind::Float => v.is_f64(),
                Kind::Number => v.is_number(),
                Kind::Bool => v.is_boolean(),
                Kind::Str => v.is_string(),
            };
            if !ok {
                let want = match kind {
                    Kind::Int => "an integer",
                    Kind::Float => "a float (with a decimal point or exponent)",
                    Kind::Number => "a number",
                    Kind::Bool => "true or false",
                    Kind::Str => "a string",
                };
                self.error(
                    "config.field_type",
                    format!("{CONFIG}: {name}"),
                    format!("is {v}, must be {want}: transformers 5's strict config class refuses it"),
                );
            }
        }
        match cfg.get("eos_token_id") {
            None | Some(Value::Null) => {}
            Some(v) if v.is_u64() => {}
            Some(Value::Array(a)) if a.iter().all(Value::is_u64) => {}
            Some(v) => self.error(
                "config.field_type",
                format!("{CONFIG}: eos_token_id"),
                format!("is {v}, must be an integer or a list of integers"),
            ),
        }
    }

    fn check_config_values(&mut self, cfg: &Map<String, Value>, family: Option<Family>) {
        let Some(family) = family else { return };
        let int = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
        // Values the loaders accept and then compute with (an integer where transformers 5 wants
        // a float is reported as a type error already).
        if let Some(v) = cfg.get("max_position_embeddings").filter(|v| v.as_i64().is_some_and(|n| n <= 0)) {
            self.error(
                "config.value",
                format!("{CONFIG}: max_position_embeddings"),
                format!(
                    "is {v}: no position fits; transformers accepts it and vLLM takes its context length from it \
                     (MiniMind: 32768)"
                ),
            );
        }
        if let Some(v) = cfg.get("rms_norm_eps").filter(|v| v.is_f64() || (family == Family::MiniMind && v.is_number())) {
            let eps = v.as_f64().unwrap_or(f64::NAN);
            if !(eps.is_finite() && eps > 0.0) {
                self.error(
                    "config.value",
                    format!("{CONFIG}: rms_norm_eps"),
                    format!(
                        "is {v}: RMSNorm divides by sqrt(mean(x²) + eps), which is NaN or infinite for a row with \
                         mean(x²) <= -eps; transformers loads it without a word and such rows turn into NaN \
                         (MiniMind: 1e-5)"
                    ),
                );
            }
        }
        if family != Family::MiniMind {
            for field in ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"] {
                if cfg.get(field).is_none_or(Value::is_null) {
                    self.error("config.missing_field", format!("{CONFIG}: {field}"), "missing: the class default is not this model's shape");
                }
            }
            let needs_intermediate = !matches!(family, Family::Qwen2Moe | Family::Qwen3Moe);
            if needs_intermediate && cfg.get("intermediate_size").is_none_or(Value::is_null) {
                self.error("config.missing_field", format!("{CONFIG}: intermediate_size"), "missing: the class default is not this model's shape");
            }
            for field in ["max_position_embeddings", "rms_norm_eps"] {
                if cfg.get(field).is_none_or(Value::is_null) {
                    self.warn("config.missing_field", format!("{CONFIG}: {field}"), "missing: the class default applies (MiniMind: 32768 / 1e-5)");
                }
            }
            let rope = cfg.get("rope_theta").filter(|v| !v.is_null()).is_some()
                || cfg.get("rope_parameters").and_then(|p| p.get("rope_theta")).is_some();
            if !rope {
                self.warn("config.missing_field", format!("{CONFIG}: rope_theta"), "missing: the class default applies (MiniMind uses 1e6)");
            }
            if let Some(act) = cfg.get("hidden_act").and_then(Value::as_str) {
                if act != "silu" {
                    self.warn("config.hidden_act", format!("{CONFIG}: hidden_act"), format!("`{act}`: MiniMind models use silu"));
                }
            }
            match cfg.get("rope_scaling") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("?");
                    let note = if kind == "yarn" && v.get("attention_factor").is_none() {
                        "; YaRN without an explicit attention_factor gets HF's default temperature, which MiniMind's YaRN does not apply"
                    } else {
                        ""
                    };
                    self.warn(
                        "config.rope_scaling",
                        format!("{CONFIG}: rope_scaling"),
                        format!("`{kind}` scaling is set; exact MiniMind exports have none{note}"),
                    );
                }
            }
            if cfg.contains_key("quantization_config") {
                self.warn("config.quantized", format!("{CONFIG}: quantization_config"), "quantized checkpoints are not checked tensor by tensor");
            }
        }
        match (cfg.get("dtype"), cfg.get("torch_dtype")) {
            (None | Some(Value::Null), None | Some(Value::Null)) => self.warn(
                "config.dtype",
                format!("{CONFIG}: dtype"),
                "no dtype/torch_dtype: vLLM's `--dtype auto` then assumes float32 and serves in float16",
            ),
            (a, b) => {
                for (field, v) in [("dtype", a), ("torch_dtype", b)] {
                    if let Some(Value::String(s)) = v {
                        if !["float16", "bfloat16", "float32"].contains(&s.as_str()) {
                            self.error("config.dtype", format!("{CONFIG}: {field}"), format!("`{s}` is not float16, bfloat16 or float32"));
                        }
                    }
                }
            }
        }
        for field in ["bos_token_id", "eos_token_id"] {
            if cfg.get(field).is_none_or(Value::is_null) {
                self.warn("config.missing_field", format!("{CONFIG}: {field}"), "missing (MiniMind: bos 1, eos 2)");
            }
        }
        // Attention geometry and head_dim support.
        let (Some(hidden), Some(heads)) = (int("hidden_size"), int("num_attention_heads")) else { return };
        if heads == 0 {
            self.error("config.shape", format!("{CONFIG}: num_attention_heads"), "is 0");
            return;
        }
        let kv = int("num_key_value_heads").unwrap_or(heads);
        if kv == 0 || !heads.is_multiple_of(kv) {
            self.error(
                "config.shape",
                format!("{CONFIG}: num_key_value_heads"),
                format!("{kv} does not divide num_attention_heads {heads} (grouped-query attention needs it)"),
            );
        }
        let explicit = int("head_dim");
        let head_dim = match explicit {
            Some(hd) => {
                if hd * heads != hidden && !matches!(family, Family::Qwen3 | Family::Qwen3Moe) {
                    self.warn(
                        "config.shape",
                        format!("{CONFIG}: head_dim"),
                        format!("{hd} × {heads} heads != hidden_size {hidden}; vLLM's class for this architecture may ignore head_dim"),
                    );
                }
                hd
            }
            None => {
                if !hidden.is_multiple_of(heads) {
                    self.error(
                        "config.shape",
                        format!("{CONFIG}: num_attention_heads"),
                        format!("{heads} does not divide hidden_size {hidden}"),
                    );
                }
                hidden / heads
            }
        };
        self.report.head_dim = Some(head_dim);
        if self.vllm() {
            if head_dim == 0 || !head_dim.is_multiple_of(8) || head_dim > 256 {
                self.error(
                    "head_dim.unsupported",
                    format!("{CONFIG}: head_dim"),
                    format!(
                        "head_dim {head_dim} is not supported by vLLM's attention backends (FlashAttention needs a \
                         multiple of 8 up to 256; supported: {FLASH_HEAD_SIZES:?})"
                    ),
                );
            } else if !FLASH_HEAD_SIZES.contains(&head_dim) {
                self.warn(
                    "head_dim.backend",
                    format!("{CONFIG}: head_dim"),
                    format!(
                        "head_dim {head_dim} is not in the FlashAttention list of older vLLM builds {FLASH_HEAD_SIZES:?}: \
                         vLLM may pick a slower backend or refuse; check with the installed version"
                    ),
                );
            }
        }
        if matches!(family, Family::Qwen2Moe | Family::Qwen3Moe) {
            for field in ["num_experts", "num_experts_per_tok", "moe_intermediate_size"] {
                if cfg.get(field).is_none_or(Value::is_null) {
                    self.error("config.missing_field", format!("{CONFIG}: {field}"), "missing: the class default is not this model's shape");
                }
            }
            if family == Family::Qwen2Moe && cfg.get("shared_expert_intermediate_size").is_none_or(Value::is_null) {
                self.error(
                    "config.missing_field",
                    format!("{CONFIG}: shared_expert_intermediate_size"),
                    "missing: the class default (5632) is not this model's shape",
                );
            }
            if let (Some(k), Some(e)) = (int("num_experts_per_tok"), int("num_experts")) {
                if k == 0 || k > e {
                    self.error("config.shape", format!("{CONFIG}: num_experts_per_tok"), format!("{k} is not in 1..={e} (num_experts)"));
                }
            }
        }
    }

    // ---------------------------------------------------------------- weights

    fn check_weights(&mut self) -> Option<BTreeMap<String, TensorEntry>> {
        let mut files: Vec<String> = std::fs::read_dir(self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".safetensors"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let has_index = self.dir.join(INDEX).exists();
        if files.is_empty() && !has_index {
            let pickles = ["pytorch_model.bin", "pytorch_model.bin.index.json", "model.pth"]
                .iter()
                .any(|f| self.dir.join(f).exists());
            let msg = if pickles {
                "no safetensors weights, only pickled torch files: export safetensors (`mm export hf`)"
            } else {
                "no model.safetensors and no model.safetensors.index.json"
            };
            self.error("weights.missing", SINGLE, msg);
            return None;
        }
        let mut tensors: BTreeMap<String, TensorEntry> = BTreeMap::new();
        let mut headers: BTreeMap<String, Vec<(String, TensorEntry)>> = BTreeMap::new();
        for file in &files {
            if let Some(entries) = self.read_header(file) {
                headers.insert(file.clone(), entries);
            }
        }
        if has_index {
            self.check_index(&files, &headers, &mut tensors)?;
            if files.iter().any(|f| f == SINGLE) {
                self.warn("weights.both", SINGLE, format!("both {SINGLE} and {INDEX} exist; loaders disagree on which to read"));
            }
        } else {
            if !files.iter().any(|f| f == SINGLE) {
                self.error(
                    "weights.missing",
                    INDEX,
                    format!("{} shard file(s) ({}) but no {INDEX} and no {SINGLE}", files.len(), files.join(", ")),
                );
                return None;
            }
            for f in files.iter().filter(|f| *f != SINGLE) {
                self.warn("weights.stray_file", f.clone(), format!("not {SINGLE} and there is no index: ignored by transformers, vLLM may read it"));
            }
            match headers.remove(SINGLE) {
                Some(entries) => tensors.extend(entries),
                None => self.all_lost = true,
            }
            self.report.weight_files = vec![SINGLE.to_string()];
        }
        self.report.tensor_count = tensors.len();
        // dtypes
        let mut dtypes = BTreeSet::new();
        for (name, t) in &tensors {
            if !["F16", "BF16", "F32"].contains(&t.dtype.as_str()) {
                self.error(
                    "tensor.dtype",
                    format!("{}: {name}", t.file),
                    format!("dtype {}: vLLM and transformers load MiniMind weights as F16, BF16 or F32", t.dtype),
                );
            }
            dtypes.insert(t.dtype.clone());
        }
        let floats: Vec<&String> = dtypes.iter().filter(|d| ["F16", "BF16", "F32"].contains(&d.as_str())).collect();
        if floats.len() > 1 {
            self.warn(
                "tensor.mixed_dtype",
                self.report.weight_files.join(", "),
                format!("mixed float dtypes {floats:?}: the loader casts everything to one dtype"),
            );
        }
        self.report.dtypes = dtypes.into_iter().collect();
        Some(tensors)
    }

    /// Parses and validates one safetensors header (bounds, sizes, contiguity) and its
    /// `__metadata__`; returns its tensors in file order.
    fn read_header(&mut self, file: &str) -> Option<Vec<(String, TensorEntry)>> {
        let path = self.dir.join(file);
        // Only a regular file is opened: opening a FIFO would wait for a writer forever.
        let regular = std::fs::metadata(&path).and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        });
        let map = match regular.and_then(|()| File::open(&path)).and_then(|f| {
            // SAFETY: read-only map, dropped before returning; the file is not modified here.
            unsafe { memmap2::Mmap::map(&f) }
        }) {
            Ok(m) => m,
            Err(e) => {
                self.error("safetensors.invalid", file, format!("cannot read: {e}"));
                return None;
            }
        };
        let (header_len, metadata) = match SafeTensors::read_metadata(&map) {
            Ok(m) => m,
            Err(e) => {
                self.error("safetensors.invalid", file, format!("invalid safetensors file: {e}"));
                return None;
            }
        };
        match metadata.metadata().as_ref().and_then(|m| m.get("format")) {
            Some(f) if f == "pt" => {}
            Some(f) if ["tf", "flax", "mlx"].contains(&f.as_str()) => self.warn(
                "safetensors.metadata",
                format!("{file}: __metadata__.format"),
                format!("`{f}`: loads, but PyTorch checkpoints carry \"pt\""),
            ),
            Some(f) => self.error(
                "safetensors.metadata",
                format!("{file}: __metadata__.format"),
                format!("`{f}` is not pt/tf/flax/mlx: transformers 4.x refuses the file"),
            ),
            None => self.error(
                "safetensors.metadata",
                format!("{file}: __metadata__"),
                "no {\"format\": \"pt\"} metadata: transformers 4.x refuses the file (save_pretrained always writes it)",
            ),
        }
        let mut entries: Vec<(usize, String, TensorEntry)> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = TensorEntry {
                    file: file.to_string(),
                    dtype: info.dtype.to_string(),
                    shape: info.shape.clone(),
                    start: 8 + header_len + info.data_offsets.0,
                    bytes: info.data_offsets.1 - info.data_offsets.0,
                };
                (info.data_offsets.0, name, entry)
            })
            .collect();
        entries.sort_by_key(|e| e.0);
        Some(entries.into_iter().map(|(_, n, e)| (n, e)).collect())
    }

    fn check_index(
        &mut self,
        files: &[String],
        headers: &BTreeMap<String, Vec<(String, TensorEntry)>>,
        tensors: &mut BTreeMap<String, TensorEntry>,
    ) -> Option<()> {
        let index = self.read_json(INDEX, "index.invalid_json")?;
        let Some(weight_map) = index.get("weight_map").and_then(Value::as_object) else {
            self.error("index.invalid_json", format!("{INDEX}: weight_map"), "missing or not an object of tensor → shard file");
            return None;
        };
        let mut shards: BTreeSet<String> = BTreeSet::new();
        let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, file) in weight_map {
            let Some(file) = file.as_str() else {
                self.error("index.invalid_json", format!("{INDEX}: weight_map.{name}"), format!("maps to {file}, not a file name"));
                continue;
            };
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                self.error("index.invalid_json", format!("{INDEX}: weight_map.{name}"), format!("`{file}` is not a plain file name"));
                continue;
            }
            shards.insert(file.to_string());
            by_shard.entry(file.to_string()).or_default().push(name.clone());
        }
        // Which indexed, readable shards hold each tensor. Loaders open the shards the index
        // names and read every tensor in them (transformers 5 and vLLM take all; transformers
        // 4.x takes those the index lists, from whichever of these files holds them).
        let mut holders: HashMap<&str, Vec<(&str, &TensorEntry)>> = HashMap::new();
        for (shard, entries) in headers.iter().filter(|(s, _)| shards.contains(*s)) {
            for (name, e) in entries {
                holders.entry(name.as_str()).or_default().push((shard.as_str(), e));
            }
        }
        for (shard, names) in &by_shard {
            if !files.contains(shard) {
                self.error(
                    "index.missing_shard",
                    format!("{INDEX}: {shard}"),
                    format!("names shard {shard} ({} tensors, e.g. `{}`) which is not in the directory", names.len(), names[0]),
                );
                self.lost.extend(names.iter().cloned());
                continue;
            }
            let Some(entries) = headers.get(shard) else {
                self.lost.extend(names.iter().cloned()); // unreadable: reported already
                continue;
            };
            let present: HashMap<&str, &TensorEntry> = entries.iter().map(|(n, e)| (n.as_str(), e)).collect();
            for name in names {
                if let Some(e) = present.get(name.as_str()) {
                    tensors.insert(name.clone(), (*e).clone());
                    continue;
                }
                match holders.get(name.as_str()).and_then(|h| h.first()) {
                    Some((elsewhere, e)) => {
                        self.warn(
                            "index.wrong_shard",
                            format!("{INDEX}: {name}"),
                            format!(
                                "indexed in {shard} but stored in {elsewhere}: transformers (4.x and 5.x) and vLLM read \
                                 the tensors of every shard the index names, so it still loads; tools that look a \
                                 tensor up through the index will not find it"
                            ),
                        );
                        tensors.insert(name.clone(), (*e).clone());
                    }
                    None => self.error(
                        "index.tensor_not_in_shard",
                        format!("{INDEX}: {name}"),
                        format!("indexed in {shard} but that file has no such tensor"),
                    ),
                }
            }
        }
        for (shard, entries) in headers {
            if !shards.contains(shard) {
                if shard != SINGLE {
                    self.warn("weights.stray_file", shard.clone(), format!("not referenced by {INDEX}: loaders skip it"));
                }
                continue;
            }
            for (name, entry) in entries {
                match weight_map.get(name).and_then(Value::as_str) {
                    Some(f) if f == shard => {}
                    Some(f) => {
                        // Indexed elsewhere; reported above unless that shard holds a copy too.
                        let Some(indexed) = headers.get(f).and_then(|h| h.iter().find(|(n, _)| n == name)) else { continue };
                        if self.same_values(entry, &indexed.1) == Some(true) {
                            self.warn(
                                "index.duplicate",
                                format!("{shard}: {name}"),
                                format!("a second copy (the index says {f}), with the same values: loaders read both"),
                            );
                        } else {
                            self.error(
                                "index.duplicate",
                                format!("{shard}: {name}"),
                                format!(
                                    "a second copy with other values than the one in {f}, where the index points: \
                                     transformers and vLLM read every tensor of the indexed shards, so the model gets \
                                     whichever copy is read last, not necessarily the indexed one"
                                ),
                            );
                        }
                    }
                    None => {
                        self.error_if(
                            !self.vllm(),
                            "index.unindexed_tensor",
                            format!("{shard}: {name}"),
                            format!(
                                "is not in {INDEX}: transformers 4.x loads only the tensors the index lists (it \
                                 reports this one missing and initialises it randomly); transformers 5 and vLLM \
                                 read every tensor of the indexed shards and load it"
                            ),
                        );
                        tensors.insert(name.clone(), entry.clone());
                    }
                }
            }
        }
        let total: usize = tensors.values().map(|t| t.bytes).sum();
        match index.pointer("/metadata/total_size").and_then(Value::as_u64) {
            None => self.warn("index.total_size", format!("{INDEX}: metadata.total_size"), "missing"),
            Some(n) if n as usize != total && self.lost.is_empty() => self.warn(
                "index.total_size",
                format!("{INDEX}: metadata.total_size"),
                format!("says {n} bytes, the indexed tensors hold {total}"),
            ),
            Some(_) => {}
        }
        self.report.weight_files = shards.into_iter().collect();
        Some(())
    }

    // ---------------------------------------------------------------- tensors vs config

    fn check_tensors(&mut self, cfg: &Map<String, Value>, tensors: &BTreeMap<String, TensorEntry>, vocab: Option<&Vocab>) {
        let Some(family) = self.family else { return };
        let tie_default = family == Family::MiniMind;
        let tie = cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(tie_default);
        let expected = match expected_tensors(family, cfg) {
            Ok(e) => e,
            Err(e) => {
                self.warn("tensor.layout_unchecked", CONFIG, format!("tensor names not checked: {e:#}"));
                return;
            }
        };
        let weights = if self.dir.join(INDEX).exists() { INDEX } else { SINGLE };
        let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for (name, shape) in &expected {
            match tensors.get(name) {
                None if self.all_lost || self.lost.contains(name) => {} // its file is reported
                None => self.error(
                    "tensor.missing",
                    format!("{weights}: {name}"),
                    format!("missing (the config needs shape {shape:?}); vLLM stops with \"weights not initialized from checkpoint\""),
                ),
                Some(t) if &t.shape != shape => self.error(
                    "tensor.shape",
                    format!("{}: {name}", t.file),
                    format!("has shape {:?}, the config needs {shape:?}", t.shape),
                ),
                Some(_) => {}
            }
        }
        let lm_head = "lm_head.weight";
        let embed = "model.embed_tokens.weight";
        match (tie, tensors.get(lm_head)) {
            (true, Some(t)) => match tensors.get(embed).map(|e| self.same_values(t, e)) {
                // Equal values (torch `.bin`-style checkpoints store both): every loader gets one model.
                Some(Some(true)) => self.warn(
                    "lm_head.tied_present",
                    format!("{}: {lm_head}", t.file),
                    "present although tie_word_embeddings is true, with the embedding's values: vLLM skips it \
                     and transformers ties it to the embedding",
                ),
                Some(Some(false)) => self.error(
                    "lm_head.tied_differs",
                    format!("{}: {lm_head}", t.file),
                    format!(
                        "differs from {embed} while tie_word_embeddings is true: transformers 5 keeps it as a \
                         separate output layer (\"both are present in the checkpoints with different values, so we \
                         will NOT tie them\"), transformers 4.x and vLLM replace it by the embedding, so the same \
                         directory gives different models; set tie_word_embeddings: false to keep this head, or \
                         drop lm_head.weight to tie"
                    ),
                ),
                // The embedding is missing or unreadable: reported on its own.
                _ => {}
            },
            (false, None) if self.all_lost || self.lost.contains(lm_head) => {}
            (false, None) => self.error(
                "lm_head.missing",
                format!("{weights}: {lm_head}"),
                format!(
                    "missing while tie_word_embeddings is {}: vLLM refuses to load and transformers \
                     initialises the output layer randomly (write lm_head.weight or set tie_word_embeddings: true)",
                    if cfg.contains_key("tie_word_embeddings") { "false" } else { "absent (this class defaults to false)" }
                ),
            ),
            (false, Some(t)) => {
                if let Some(shape) = expected_shape_of(&expected, embed) {
                    if t.shape != shape {
                        self.error("tensor.shape", format!("{}: {lm_head}", t.file), format!("has shape {:?}, needs {shape:?}", t.shape));
                    }
                }
            }
            (true, None) => {}
        }
        for (name, t) in tensors {
            if expected_names.contains(name.as_str()) || name == lm_head {
                continue;
            }
            if name.ends_with("rotary_emb.inv_freq") {
                self.warn("tensor.extra", format!("{}: {name}", t.file), "RoPE buffer saved with the weights: loaders skip it");
            } else if self.vllm() {
                self.error(
                    "tensor.extra",
                    format!("{}: {name}", t.file),
                    "not a tensor of this architecture and config: vLLM's weight loader fails on unknown names",
                );
            } else {
                self.warn(
                    "tensor.extra",
                    format!("{}: {name}", t.file),
                    "not a tensor of this architecture and config: transformers skips it (listed as UNEXPECTED in \
                     its load report); vLLM's weight loader would fail on it",
                );
            }
        }
        if let Some(dtype) = cfg.get("dtype").or_else(|| cfg.get("torch_dtype")).and_then(Value::as_str) {
            let want = match dtype {
                "float16" => "F16",
                "bfloat16" => "BF16",
                "float32" => "F32",
                _ => "",
            };
            if !want.is_empty() && self.report.dtypes.len() == 1 && self.report.dtypes[0] != want {
                self.warn(
                    "config.dtype_mismatch",
                    format!("{CONFIG}: dtype"),
                    format!("`{dtype}` but the tensors are {}: vLLM's `--dtype auto` casts to `{dtype}`", self.report.dtypes[0]),
                );
            }
        }
        // The embedding must cover every token id the tokenizer can produce.
        if let (Some(rows), Some(max)) = (expected_shape_of(&expected, embed).map(|s| s[0]), vocab.and_then(|v| v.max_id)) {
            if max as usize >= rows {
                self.error(
                    "vocab.too_small",
                    format!("{CONFIG}: vocab_size"),
                    format!("{rows} embedding rows but the tokenizer has ids up to {max}"),
                );
            }
        }
    }

    /// Whether two float tensors hold the same values (as transformers' tie check,
    /// `torch.equal` after both are loaded in one dtype); None when either is unreadable.
    fn same_values(&self, a: &TensorEntry, b: &TensorEntry) -> Option<bool> {
        if a.shape != b.shape {
            return Some(false);
        }
        if a.dtype == b.dtype && a.file == b.file && a.start == b.start {
            return Some(true);
        }
        Some(self.tensor_f32(a)? == self.tensor_f32(b)?)
    }

    /// A F16/BF16/F32 tensor's values as f32, read from its file.
    fn tensor_f32(&self, t: &TensorEntry) -> Option<Vec<f32>> {
        use candle_core::{DType, Device, Tensor};
        let dtype = match t.dtype.as_str() {
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F32" => DType::F32,
            _ => return None,
        };
        let path = self.dir.join(&t.file);
        let file = path.is_file().then(|| File::open(&path).ok()).flatten()?;
        // SAFETY: read-only map, dropped before returning; the file is not modified here.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let data = map.get(t.start..t.start.checked_add(t.bytes)?)?;
        let n = t.bytes / dtype.size_in_bytes();
        let values = Tensor::from_raw_buffer(data, dtype, &[n], &Device::Cpu).ok()?;
        values.to_dtype(DType::F32).ok()?.to_vec1::<f32>().ok()
    }

    // ---------------------------------------------------------------- tokenizer

    fn check_tokenizer(&mut self, config: Option<&Map<String, Value>>) -> Option<Vocab> {
        let vocab = if self.dir.join(TOKENIZER).exists() {
            self.read_json(TOKENIZER, "tokenizer.invalid_json").map(|t| vocab_of(&t))
        } else {
            let slow = ["tokenizer.model", "vocab.json"].iter().any(|f| self.dir.join(f).exists());
            self.error(
                "tokenizer.missing",
                TOKENIZER,
                if slow {
                    "missing (only slow-tokenizer files): vLLM and mm need the fast tokenizer.json"
                } else {
                    "missing: vLLM needs a tokenizer in the model directory (or --tokenizer)"
                },
            );
            None
        };
        let tok_cfg = if self.dir.join(TOKENIZER_CONFIG).exists() {
            self.read_json(TOKENIZER_CONFIG, "tokenizer_config.invalid_json")
        } else {
            self.error(
                "tokenizer_config.missing",
                TOKENIZER_CONFIG,
                "missing: without it the special tokens (eos `<|im_end|>`) and the chat template are unknown",
            );
            None
        };
        let tok_cfg = tok_cfg.and_then(|v| v.as_object().cloned());
        let strict4 = !self.vllm(); // transformers 4.x must load it too
        if let Some(tc) = &tok_cfg {
            self.check_remote_code(tc, TOKENIZER_CONFIG);
            match tc.get("tokenizer_class").and_then(Value::as_str) {
                Some("TokenizersBackend") => self.error_if(
                    strict4,
                    "tokenizer.class",
                    format!("{TOKENIZER_CONFIG}: tokenizer_class"),
                    "`TokenizersBackend` exists only in transformers 5 (4.x, and vLLM before 0.24, cannot load it); \
                     `PreTrainedTokenizerFast` loads in both",
                ),
                Some(
                    "PreTrainedTokenizerFast" | "LlamaTokenizerFast" | "LlamaTokenizer" | "Qwen2TokenizerFast"
                    | "Qwen2Tokenizer" | "GPT2TokenizerFast" | "GPT2Tokenizer",
                ) => {}
                Some(other) => self.warn(
                    "tokenizer.class",
                    format!("{TOKENIZER_CONFIG}: tokenizer_class"),
                    format!("`{other}` is not a class mm expects for a MiniMind tokenizer (PreTrainedTokenizerFast)"),
                ),
                None => self.warn(
                    "tokenizer.class",
                    format!("{TOKENIZER_CONFIG}: tokenizer_class"),
                    "missing: AutoTokenizer falls back to the model type's tokenizer class",
                ),
            }
            if matches!(tc.get("extra_special_tokens"), Some(Value::Array(_))) {
                self.error_if(
                    strict4,
                    "tokenizer.extra_special_tokens",
                    format!("{TOKENIZER_CONFIG}: extra_special_tokens"),
                    "a list (transformers 5's form): transformers 4.x fails with \"'list' object has no attribute \
                     'keys'\"; use additional_special_tokens",
                );
            }
        }
        // Special tokens.
        let mut eos_id = None;
        if let (Some(tc), Some(vocab)) = (&tok_cfg, &vocab) {
            for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                let Some(content) = token_content(tc.get(key)) else {
                    if key == "eos_token" {
                        self.error("special.no_eos", format!("{TOKENIZER_CONFIG}: eos_token"), "missing: generation never stops at the end of a turn");
                    }
                    continue;
                };
                match vocab.id(&content) {
                    None => self.error(
                        "special.not_in_vocab",
                        format!("{TOKENIZER_CONFIG}: {key}"),
                        format!("`{content}` is not in tokenizer.json's vocabulary or added tokens"),
                    ),
                    Some(id) => {
                        if key == "eos_token" {
                            eos_id = Some(id);
                        }
                        if let Some(cfg) = config {
                            let field = if key == "bos_token" { "bos_token_id" } else { "eos_token_id" };
                            if matches!(key, "bos_token" | "eos_token") {
                                if let Some(cid) = cfg.get(field) {
                                    if !id_in(cid, id) && !cid.is_null() {
                                        self.warn(
                                            "special.id_mismatch",
                                            format!("{CONFIG}: {field}"),
                                            format!("{cid} but the tokenizer's {key} `{content}` is {id}"),
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Ids named in config.json must exist.
        if let (Some(cfg), Some(vocab)) = (config, &vocab) {
            for field in ["bos_token_id", "eos_token_id", "pad_token_id"] {
                for id in ids_of(cfg.get(field)) {
                    if !vocab.contains_id(id) {
                        self.error("special.not_in_vocab", format!("{CONFIG}: {field}"), format!("id {id} is not a token of tokenizer.json"));
                    }
                }
            }
        }
        let template = self.check_chat_template(tok_cfg.as_ref());
        let stop_ids = self.check_generation_config(vocab.as_ref(), eos_id);
        // The template's end-of-turn token must stop generation.
        if let (Some(t), Some(vocab)) = (&template, &vocab) {
            if t.contains("<|im_end|>") {
                match vocab.id("<|im_end|>") {
                    Some(end) => {
                        if !vocab.added.contains_key("<|im_end|>") {
                            self.warn("special.not_atomic", TOKENIZER, "`<|im_end|>` is not an added token: it may be split into pieces");
                        }
                        let stops = eos_id.into_iter().chain(stop_ids.iter().copied()).any(|id| id == end);
                        if eos_id.is_some() && !stops {
                            self.error(
                                "special.turn_end_not_eos",
                                format!("{TOKENIZER_CONFIG}: eos_token"),
                                format!(
                                    "the chat template ends turns with `<|im_end|>` ({end}) but neither the tokenizer's eos nor \
                                     generation_config's eos_token_id is that id: replies would not stop"
                                ),
                            );
                        }
                    }
                    None => self.error("special.not_in_vocab", TOKENIZER, "the chat template uses `<|im_end|>`, which is not in the vocabulary"),
                }
            }
        }
        if let (Some(probe), true) = (self.opts.template_probe, template.is_some() && vocab.is_some()) {
            match probe(self.dir) {
                Ok(text) => self.report.rendered_sample = Some(text),
                Err(e) => self.error("chat_template.render", TOKENIZER_CONFIG, format!("the chat template does not render a one-message chat: {e:#}")),
            }
        }
        vocab
    }

    /// The chat template text (inline, named list, `chat_template.jinja` or `.json`).
    fn check_chat_template(&mut self, tok_cfg: Option<&Map<String, Value>>) -> Option<String> {
        let inline = tok_cfg.and_then(|c| c.get("chat_template")).and_then(|t| match t {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
            _ => None,
        });
        let jinja = limits::read_to_string(&self.dir.join("chat_template.jinja"), limits::MAX_TEMPLATE_BYTES, "chat template").ok();
        let json_file = self
            .read_json("chat_template.json", "chat_template.invalid_json")
            .and_then(|v| v.get("chat_template")?.as_str().map(str::to_string));
        if let (Some(a), Some(b)) = (&inline, &jinja) {
            if a != b {
                self.warn(
                    "chat_template.conflict",
                    "chat_template.jinja",
                    "differs from tokenizer_config.json's chat_template: transformers ≥ 4.49 uses the .jinja file, older versions the inline one",
                );
            }
        }
        let template = jinja.or(inline).or(json_file);
        if template.is_none() {
            self.error_if(
                self.vllm(),
                "chat_template.missing",
                TOKENIZER_CONFIG,
                "no chat template (not in tokenizer_config.json, no chat_template.jinja): vLLM's /v1/chat/completions \
                 refuses requests unless --chat-template is given",
            );
        }
        template
    }

    /// Checks generation_config.json and returns its eos ids.
    fn check_generation_config(&mut self, vocab: Option<&Vocab>, eos_id: Option<u64>) -> Vec<u64> {
        if !self.dir.join(GENERATION_CONFIG).exists() {
            self.warn(
                "generation_config.missing",
                GENERATION_CONFIG,
                "missing: vLLM stops only at the tokenizer's eos and uses no default sampling parameters",
            );
            return Vec::new();
        }
        let Some(gen) = self.read_json(GENERATION_CONFIG, "generation_config.invalid_json") else { return Vec::new() };
        let ids = ids_of(gen.get("eos_token_id"));
        match gen.get("eos_token_id") {
            None | Some(Value::Null) => self.warn(
                "generation_config.eos",
                format!("{GENERATION_CONFIG}: eos_token_id"),
                "missing: transformers' generate falls back to config.json's eos_token_id",
            ),
            Some(v) if ids.is_empty() => self.error(
                "generation_config.eos",
                format!("{GENERATION_CONFIG}: eos_token_id"),
                format!("{v} is not an id or a list of ids"),
            ),
            Some(_) => {
                if let Some(vocab) = vocab {
                    for id in &ids {
                        if !vocab.contains_id(*id) {
                            self.error(
                                "generation_config.eos",
                                format!("{GENERATION_CONFIG}: eos_token_id"),
                                format!("id {id} is not a token of tokenizer.json"),
                            );
                        }
                    }
                }
                if let Some(eos) = eos_id {
                    if !ids.contains(&eos) {
                        self.error(
                            "generation_config.eos",
                            format!("{GENERATION_CONFIG}: eos_token_id"),
                            format!("{ids:?} does not include the tokenizer's eos id {eos}: transformers' generate would not stop at it"),
                        );
                    }
                }
            }
        }
        if let Some(vocab) = vocab {
            for field in ["bos_token_id", "pad_token_id"] {
                for id in ids_of(gen.get(field)) {
                    if !vocab.contains_id(id) {
                        self.error(
                            "generation_config.ids",
                            format!("{GENERATION_CONFIG}: {field}"),
                            format!("id {id} is not a token of tokenizer.json"),
                        );
                    }
                }
            }
        }
        ids
    }

    // ---------------------------------------------------------------- vLLM parsers

    fn check_parsers(&mut self, vocab: Option<&Vocab>) {
        let Some(vocab) = vocab else { return };
        let template = self.template_text();
        let atomic = |t: &str| vocab.added.contains_key(t) || vocab.ids.contains_key(t);
        let mut p = Parsers::default();
        if atomic("<think>") && atomic("</think>") {
            // deepseek_r1 reads output without `</think>` as all reasoning: right when the prompt
            // opens a think block, wrong when the template closes it (thinking off by default).
            let tail = self.report.rendered_sample.as_deref().map(|t| t.rsplit("<|im_start|>").next().unwrap_or(t));
            let opens = tail.is_some_and(|t| t.contains("<think>") && !t.contains("</think>"));
            p.reasoning = if opens { vec!["deepseek_r1".into(), "qwen3".into()] } else { vec!["qwen3".into(), "deepseek_r1".into()] };
            p.notes.push(format!(
                "reasoning: {} first: the default generation prompt {} a think block (deepseek_r1 treats output \
                 without `</think>` as all reasoning)",
                p.reasoning[0],
                if opens { "opens" } else { "does not open" }
            ));
        } else {
            p.notes.push(
                "reasoning: none; `<think>`/`</think>` are not single tokens, and the deepseek_r1/qwen3 reasoning \
                 parsers refuse to start without them"
                    .into(),
            );
        }
        let tools_in_template = template.as_deref().is_some_and(|t| t.contains("<tool_call>"));
        if tools_in_template {
            p.tool_call = vec!["hermes".into()];
            if !(atomic("<tool_call>") && atomic("</tool_call>")) {
                p.notes.push(
                    "tool calls: hermes works on text in current vLLM; older hermes parsers need `<tool_call>` as one \
                     token, which this tokenizer splits"
                        .into(),
                );
            }
        } else {
            p.notes.push("tool calls: the chat template does not render `<tool_call>`, so no tool parser applies".into());
        }
        if self.report.ok() {
            let mut cmd = format!("vllm serve {}", self.dir.display());
            if self.report.warnings.iter().any(|w| w.code == "remote_code.auto_map") {
                cmd.push_str(" --trust-remote-code");
            }
            if !p.tool_call.is_empty() {
                cmd.push_str(" --enable-auto-tool-choice --tool-call-parser hermes");
            }
            if let Some(r) = p.reasoning.first() {
                cmd.push_str(&format!(" --reasoning-parser {r}"));
            }
            self.report.serve_command = Some(cmd);
        }
        self.report.parsers = Some(p);
    }

    fn template_text(&self) -> Option<String> {
        if let Ok(t) = limits::read_to_string(&self.dir.join("chat_template.jinja"), limits::MAX_TEMPLATE_BYTES, "chat template") {
            return Some(t);
        }
        let text = limits::read_to_string(&self.dir.join(TOKENIZER_CONFIG), limits::MAX_CONFIG_BYTES, TOKENIZER_CONFIG).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        match v.get("chat_template")? {
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

fn vocab_of(tokenizer: &Value) -> Vocab {
    let mut v = Vocab::default();
    match tokenizer.pointer("/model/vocab") {
        Some(Value::Object(map)) => {
            for (piece, id) in map {
                if let Some(id) = id.as_u64() {
                    v.ids.insert(piece.clone(), id);
                }
            }
        }
        Some(Value::Array(list)) => {
            // Unigram: [[piece, score], ...], ids by position.
            for (i, e) in list.iter().enumerate() {
                if let Some(piece) = e.get(0).and_then(Value::as_str) {
                    v.ids.insert(piece.to_string(), i as u64);
                }
            }
        }
        _ => {}
    }
    for t in tokenizer.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(content), Some(id)) = (t.get("content").and_then(Value::as_str), t.get("id").and_then(Value::as_u64)) {
            v.added.insert(content.to_string(), id);
        }
    }
    v.all_ids = v.ids.values().chain(v.added.values()).copied().collect();
    v.max_id = v.all_ids.last().copied();
    v
}

/// A special token of tokenizer_config.json: a string or an AddedToken object.
fn token_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u64> {
    match v {
        Some(Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    }
}

fn id_in(v: &Value, id: u64) -> bool {
    ids_of(Some(v)).contains(&id)
}

fn expected_shape_of(expected: &[(String, Vec<usize>)], name: &str) -> Option<Vec<usize>> {
    expected.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
}

/// Every tensor the architecture's HF class has for this config (without the tied
/// `lm_head`), with its shape.
fn expected_tensors(family: Family, cfg: &Map<String, Value>) -> Result<Vec<(String, Vec<usize>)>> {
    if family == Family::MiniMind {
        let mm = MiniMindConfig::from_json(&Value::Object(cfg.clone()))?;
        let mut out = mm_converters::naming::expected_tensors(&mm);
        out.retain(|(n, _)| n != "lm_head.weight");
        return Ok(out);
    }
    let int = |k: &str| -> Result<usize> {
        match cfg.get(k).and_then(Value::as_u64) {
            Some(v) => Ok(v as usize),
            None => bail!("`{k}` is missing or not an integer"),
        }
    };
    let opt = |k: &str| cfg.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let flag = |k: &str, default: bool| cfg.get(k).and_then(Value::as_bool).unwrap_or(default);
    let h = int("hidden_size")?;
    let layers = int("num_hidden_layers")?;
    let heads = int("num_attention_heads")?;
    let kv_heads = opt("num_key_value_heads").unwrap_or(heads);
    let vocab = int("vocab_size")?;
    if heads == 0 {
        bail!("num_attention_heads is 0");
    }
    let hd = opt("head_dim").unwrap_or(h / heads);
    let (q, kv) = (heads * hd, kv_heads * hd);
    let (qkv_bias, o_bias) = match family {
        Family::Qwen2 => (true, false),
        Family::Qwen2Moe => (flag("qkv_bias", true), false),
        _ => {
            let b = flag("attention_bias", false);
            (b, b)
        }
    };
    let mlp_bias = family == Family::Llama && flag("mlp_bias", false);
    let qk_norm = matches!(family, Family::Qwen3 | Family::Qwen3Moe);
    let moe = matches!(family, Family::Qwen2Moe | Family::Qwen3Moe);
    let (experts, moe_width, shared_width, step, mlp_only) = if moe {
        let only: Vec<usize> = cfg
            .get("mlp_only_layers")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).map(|v| v as usize).collect())
            .unwrap_or_default();
        let shared = if family == Family::Qwen2Moe { int("shared_expert_intermediate_size")? } else { 0 };
        (int("num_experts")?, int("moe_intermediate_size")?, shared, opt("decoder_sparse_step").unwrap_or(1), only)
    } else {
        (0, 0, 0, 1, Vec::new())
    };
    let dense_width = if moe { opt("intermediate_size").unwrap_or(0) } else { int("intermediate_size")? };

    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    let mlp = |out: &mut Vec<(String, Vec<usize>)>, p: &str, width: usize, bias: bool| {
        out.push((format!("{p}.gate_proj.weight"), vec![width, h]));
        out.push((format!("{p}.up_proj.weight"), vec![width, h]));
        out.push((format!("{p}.down_proj.weight"), vec![h, width]));
        if bias {
            out.push((format!("{p}.gate_proj.bias"), vec![width]));
            out.push((format!("{p}.up_proj.bias"), vec![width]));
            out.push((format!("{p}.down_proj.bias"), vec![h]));
        }
    };
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        out.push((format!("{a}.q_proj.weight"), vec![q, h]));
        out.push((format!("{a}.k_proj.weight"), vec![kv, h]));
        out.push((format!("{a}.v_proj.weight"), vec![kv, h]));
        out.push((format!("{a}.o_proj.weight"), vec![h, q]));
        if qkv_bias {
            out.push((format!("{a}.q_proj.bias"), vec![q]));
            out.push((format!("{a}.k_proj.bias"), vec![kv]));
            out.push((format!("{a}.v_proj.bias"), vec![kv]));
        }
        if o_bias {
            out.push((format!("{a}.o_proj.bias"), vec![h]));
        }
        if qk_norm {
            out.push((format!("{a}.q_norm.weight"), vec![hd]));
            out.push((format!("{a}.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        let sparse = moe && experts > 0 && !mlp_only.contains(&l) && step > 0 && (l + 1) % step == 0;
        if sparse {
            out.push((format!("{p}.mlp.gate.weight"), vec![experts, h]));
            for e in 0..experts {
                mlp(&mut out, &format!("{p}.mlp.experts.{e}"), moe_width, false);
            }
            if family == Family::Qwen2Moe {
                mlp(&mut out, &format!("{p}.mlp.shared_expert"), shared_width, false);
                out.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, h]));
            }
        } else {
            if dense_width == 0 {
                bail!("layer {l} is dense but intermediate_size is missing");
            }
            mlp(&mut out, &format!("{p}.mlp"), dense_width, mlp_bias);
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    Ok(out)
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
