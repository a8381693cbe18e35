//! ollama: a directory with the GGUF and a Modelfile whose messages-mode Go TEMPLATE renders
//! what the model's jinja chat template renders (`templates/ollama/*.gotmpl`, one per chat
//! template family), with ChatML stops and typed parameters; and `validate`, the checks of a
//! Modelfile that ollama itself would only reveal at `ollama create` or at chat time.

pub mod data;
pub mod modelfile;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mm_converters::atomic::{write_dir_atomically, write_file_atomically};
use mm_converters::output_guard::FileKind;
use mm_converters::gguf::checkpoint::{GgufOptions, GgufSummary};
use mm_converters::Checkpoint;

use crate::go_template::{self, Arity, Func, Template, Value};
use modelfile::{check_param, Modelfile, ParamCheck};

pub use data::ChatCase;
pub use validate::{validate, CaseResult, Issue, JinjaRenderer, JinjaRequest, Report};

/// The chat template families mm has ollama TEMPLATEs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// MiniMind2 (minimind seed 5959396): default system prompt, `enable_thinking`.
    MiniMind2,
    /// MiniMind-3 (minimind d65ef2c): no default system prompt, think block on every
    /// assistant turn, `open_thinking` (off by default).
    MiniMind3,
}

/// Substrings that identify each family's jinja template.
const MARKERS: [(Family, &[&str]); 2] = [
    (
        Family::MiniMind3,
        &["<|im_start|>", "<|im_end|>", "<tool_call>", "<tool_response>", "open_thinking", "reasoning_content", "<think>"],
    ),
    (
        Family::MiniMind2,
        &[
            "<|im_start|>",
            "<|im_end|>",
            "<tool_call>",
            "<tool_response>",
            "enable_thinking is false",
            "You are a helpful assistant",
        ],
    ),
];

impl Family {
    pub const ALL: [Family; 2] = [Family::MiniMind2, Family::MiniMind3];

    pub fn name(self) -> &'static str {
        match self {
            Family::MiniMind2 => "minimind2",
            Family::MiniMind3 => "minimind3",
        }
    }

    /// The Go TEMPLATE (no trailing newline: Go templates keep it).
    pub fn go_template(self) -> &'static str {
        match self {
            Family::MiniMind2 => include_str!("../../templates/ollama/minimind2.gotmpl"),
            Family::MiniMind3 => include_str!("../../templates/ollama/minimind3.gotmpl"),
        }
    }

    /// Picks the family of a jinja chat template by its distinctive parts.
    pub fn detect(chat_template: &str) -> Result<Family> {
        for (family, markers) in MARKERS {
            if markers.iter().all(|m| chat_template.contains(m)) {
                return Ok(family);
            }
        }
        let head: String = chat_template.chars().take(120).collect();
        bail!(
            "unknown chat template: mm has ollama TEMPLATEs for the minimind2 and minimind3 chat templates only \
             (recognised by {}); this model's template starts with {head:?}",
            MARKERS
                .iter()
                .map(|(f, m)| format!("{}: {}", f.name(), m.join(" + ")))
                .collect::<Vec<_>>()
                .join("; ")
        )
    }

    /// What the TEMPLATE cannot do like the jinja template, whatever the conversation.
    pub fn limitations(self) -> &'static [&'static str] {
        const COMMON: [&str; 5] = [
            "ollama merges consecutive messages of one role (except tool) into one, joined by a blank line",
            "ollama always ends the prompt on an open assistant turn: there is no add_generation_prompt=false, and a \
             trailing assistant message is continued (like transformers' continue_final_message)",
            "tool schemas keep only the keys ollama's api.Tool holds (type, description, enum, items, anyOf, \
             properties, required); property names come out sorted; nested values are compact Go JSON",
            "tool-call arguments are Go maps: sorted keys, Go number and string formatting; string arguments are \
             re-serialised",
            "Go's json HTML-escapes <, > and & (\\u003c, \\u003e, \\u0026) in tool JSON",
        ];
        match self {
            Family::MiniMind2 => &[
                COMMON[0],
                COMMON[1],
                COMMON[2],
                COMMON[3],
                COMMON[4],
                "an assistant message's thinking (ollama's separated reasoning) is rendered as <think>…</think> before \
                 its content, where the jinja template ignores reasoning_content: kept so that ollama detects the \
                 thinking capability (think=false then adds the empty think block, as enable_thinking=false does)",
            ],
            Family::MiniMind3 => &[
                COMMON[0],
                COMMON[1],
                COMMON[2],
                COMMON[3],
                COMMON[4],
                "Go templates have no string functions: a <think>…</think> inside an assistant's content is not split \
                 out, and thinking/content are not stripped of surrounding newlines (ollama's thinking parser \
                 normally hands over both already separated and trimmed)",
            ],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ollama's template functions

fn func_json(args: &[Value]) -> Result<Value, String> {
    Ok(Value::str(go_template::value::marshal_json(&args[0])))
}

fn today_offset(days: i64) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let day = secs as i64 / 86_400 + days;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn check_strings(args: &[Value]) -> Result<(), String> {
    match args.iter().find(|a| !matches!(a, Value::Str(_))) {
        Some(a) => Err(format!("wrong type for value; expected string; got {}", a.type_name())),
        None => Ok(()),
    }
}

fn func_current_date(args: &[Value]) -> Result<Value, String> {
    check_strings(args)?;
    Ok(Value::str(today_offset(0)))
}

fn func_yesterday_date(args: &[Value]) -> Result<Value, String> {
    check_strings(args)?;
    Ok(Value::str(today_offset(-1)))
}

fn ts_type(t: &str) -> &'static str {
    match t {
        "string" => "string",
        "number" | "integer" => "number",
        "boolean" => "boolean",
        "array" => "any[]",
        "object" => "Record<string, any>",
        "null" => "null",
        _ => "any",
    }
}

fn property_ts(v: &Value) -> String {
    if let Some(Value::List(any_of)) = v.field("AnyOf") {
        if !any_of.items.is_empty() {
            return any_of.items.iter().map(property_ts).collect::<Vec<_>>().join(" | ");
        }
    }
    match v.field("Type") {
        Some(Value::List(types)) if !types.items.is_empty() => types
            .items
            .iter()
            .map(|t| if let Value::Str(s) = t { ts_type(s) } else { "any" })
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".into(),
    }
}

fn func_to_typescript_type(args: &[Value]) -> Result<Value, String> {
    let v = &args[0];
    let is_property = matches!(v, Value::Struct(s) if std::ptr::eq(s.ty, &data::PROPERTY));
    Ok(Value::str(if is_property { property_ts(v) } else { "any".into() }))
}

/// The functions ollama registers on every template.
pub static FUNCS: [Func; 4] = [
    Func { name: "json", arity: Arity::Exactly(1), call: func_json },
    Func { name: "currentDate", arity: Arity::AtLeast(0), call: func_current_date },
    Func { name: "yesterdayDate", arity: Arity::AtLeast(0), call: func_yesterday_date },
    Func { name: "toTypeScriptType", arity: Arity::Exactly(1), call: func_to_typescript_type },
];

/// Parses a TEMPLATE as ollama does (Go `text/template` with ollama's functions).
pub fn parse_template(source: &str) -> Result<Template, go_template::Error> {
    Template::parse(source, &FUNCS)
}

/// Renders an ollama `/api/chat` request body (`messages`, `tools`, `think`) with a TEMPLATE,
/// as ollama's messages mode does.
pub fn render_request(template: &Template, body: &serde_json::Value) -> Result<go_template::Rendered> {
    let req = data::Request::decode(body)?;
    Ok(template.execute(&data::template_data(&req))?)
}

/// The conversations `mm validate ollama` renders with both templates (the inputs of
/// `shared/reference/chat_template_cases.jsonl`).
pub fn builtin_cases() -> Vec<ChatCase> {
    include_str!("../../templates/ollama/chat_cases.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| ChatCase::from_json(&serde_json::from_str(l).expect("built-in case is JSON")).expect("built-in case"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Export

/// Sampling defaults: upstream `eval_llm.py` (temperature/top_p 0.85), transformers' top_k 50
/// and repetition penalty 1.0, and a 2048-token context.
pub const DEFAULT_PARAMS: [(&str, &str); 5] =
    [("temperature", "0.85"), ("top_p", "0.85"), ("top_k", "50"), ("repeat_penalty", "1"), ("num_ctx", "2048")];

/// ChatML ends of turn: `<|im_end|>` (eos), `<|im_start|>` (a new turn), `<|endoftext|>`.
pub const STOPS: [&str; 3] = ["<|im_end|>", "<|im_start|>", "<|endoftext|>"];

pub struct OllamaOptions {
    pub gguf: GgufOptions,
    /// `SYSTEM` (none by default: it would be injected into tool prompts too).
    pub system: Option<String>,
    /// `PARAMETER`s that override the defaults (`stop` adds one).
    pub params: Vec<(String, String)>,
    /// `LICENSE` text.
    pub license: Option<String>,
}

pub struct OllamaExport {
    pub family: Family,
    pub gguf: PathBuf,
    pub modelfile: PathBuf,
    pub summary: GgufSummary,
    pub warnings: Vec<String>,
}

/// Parses `k=v` and checks it as ollama will.
pub fn parse_param(arg: &str) -> Result<(String, String)> {
    let (k, v) = arg.split_once('=').with_context(|| format!("--param {arg:?}: expected NAME=VALUE"))?;
    let (k, v) = (k.trim().to_string(), v.to_string());
    match check_param(&k, &v).with_context(|| format!("--param {arg:?}"))? {
        ParamCheck::Deprecated => bail!("--param {arg:?}: ollama ignores the deprecated parameter {k}"),
        ParamCheck::Ok(_) => Ok((k, v)),
    }
}

/// The Modelfile for a GGUF beside it and a chat template family.
pub fn modelfile_for(gguf_file_name: &str, family: Family, opts: &OllamaOptions) -> Result<String> {
    let mut params: Vec<(String, String)> = STOPS.iter().map(|s| ("stop".to_string(), s.to_string())).collect();
    for (k, v) in DEFAULT_PARAMS {
        params.push((k.to_string(), v.to_string()));
    }
    for (k, v) in &opts.params {
        check_param(k, v)?;
        if k == "stop" {
            if !params.iter().any(|(pk, pv)| pk == "stop" && pv == v) {
                params.push((k.clone(), v.clone()));
            }
        } else if let Some(slot) = params.iter_mut().find(|(pk, _)| pk == k) {
            slot.1 = v.clone();
        } else {
            params.push((k.clone(), v.clone()));
        }
    }
    let mf = Modelfile {
        comments: vec![
            format!("Modelfile for ollama, written by mm {}: ollama create NAME -f Modelfile", env!("CARGO_PKG_VERSION")),
            format!(
                "TEMPLATE: the {} chat template as an ollama Go template; `mm validate ollama` compares the two",
                family.name()
            ),
        ],
        from: format!("./{gguf_file_name}"),
        template: Some(family.go_template().to_string()),
        system: opts.system.clone(),
        parameters: params,
        license: opts.license.clone(),
    };
    mf.render()
}

/// Writes `dir/model-<quant>.gguf` and `dir/Modelfile`.
pub fn export(
    ckpt: &Checkpoint,
    dir: &Path,
    opts: &OllamaOptions,
    progress: &dyn Fn(usize, usize, &str),
) -> Result<OllamaExport> {
    let chat_template = ckpt
        .tokenizer
        .chat_template
        .as_deref()
        .context("the checkpoint has no chat template, so there is nothing to translate into an ollama TEMPLATE")?;
    let family = Family::detect(chat_template)?;
    let gguf_name = format!("model-{}.gguf", opts.gguf.scheme.name());
    // Everything that can fail cheaply fails before the GGUF is written.
    let text = modelfile_for(&gguf_name, family, opts)?;
    // The directory appears whole (GGUF and Modelfile) or not at all, and replaces only an
    // earlier export (see mm_converters::output_guard; a file or device there is refused
    // before the GGUF is quantized).
    let mut summary = None;
    write_dir_atomically(dir, |tmp| {
        summary = Some(crate::llamacpp::export_gguf(ckpt, &tmp.join(&gguf_name), &opts.gguf, progress)?);
        write_file_atomically(&tmp.join("Modelfile"), FileKind::Modelfile, |w| Ok(std::io::Write::write_all(w, text.as_bytes())?))
    })?;
    let summary = summary.context("internal: the export wrote no GGUF")?;
    let (gguf, modelfile) = (dir.join(&gguf_name), dir.join("Modelfile"));
    let warnings = summary.warnings.clone();
    Ok(OllamaExport { family, gguf, modelfile, summary, warnings })
}
