//! The config.json checks: architecture and model_type, remote code, field JSON types, values.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::*;

impl Checker<'_> {
    pub(super) fn check_config(&mut self) -> Option<Map<String, Value>> {
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
    pub(super) fn check_remote_code(&mut self, obj: &Map<String, Value>, file: &str) {
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

    pub(super) fn check_field_types(&mut self, cfg: &Map<String, Value>, family: Option<Family>) {
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

    pub(super) fn check_config_values(&mut self, cfg: &Map<String, Value>, family: Option<Family>) {
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
}
