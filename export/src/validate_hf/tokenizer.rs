//! The tokenizer checks: tokenizer files, chat template, special ids, generation config, parsers.

use serde_json::{Map, Value};

use mm_converters::limits;

use super::*;

impl Checker<'_> {
    pub(super) fn check_tokenizer(&mut self, config: Option<&Map<String, Value>>) -> Option<Vocab> {
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
    pub(super) fn check_chat_template(&mut self, tok_cfg: Option<&Map<String, Value>>) -> Option<String> {
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
    pub(super) fn check_generation_config(&mut self, vocab: Option<&Vocab>, eos_id: Option<u64>) -> Vec<u64> {
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

    pub(super) fn check_parsers(&mut self, vocab: Option<&Vocab>) {
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

    pub(super) fn template_text(&self) -> Option<String> {
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
