//! `mm validate ollama`: what ollama would reject or silently get wrong in a Modelfile
//! (docs/templates_serving.md §4.4): the Modelfile syntax and instructions, FROM
//! (exists, is a GGUF that loads), PARAMETER names and types, the stops, the TEMPLATE (parses
//! as Go text/template with ollama's functions, messages mode, tool and thinking tags as
//! ollama infers them, no Go structs printed, no fields ollama lacks), and the TEMPLATE's
//! renderings of mm's chat cases against the jinja template stored in the GGUF.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value as Json};

use super::data::{self, ChatCase, Request};
use super::modelfile::{self, check_param, Command, ParamCheck};
use super::{parse_template, Family, STOPS};
use crate::go_template::{Arg, ErrorKind, List, Node, Template, Visit};
use mm_converters::gguf::file::GgufFile;

/// One finding.
#[derive(Debug, Clone)]
pub struct Issue {
    /// A stable identifier (`missing_from`, `template_parse`, …).
    pub code: &'static str,
    pub message: String,
    /// Modelfile line, when the finding has one.
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseMode {
    /// Compared whole.
    Normal,
    /// `add_generation_prompt=false` on a conversation ending with a user or tool turn: ollama
    /// always opens an assistant turn, so only the text up to it is compared.
    Prefix,
    /// Ending with an assistant turn and no generation prompt: ollama continues that turn,
    /// compared with transformers' `continue_final_message`.
    Prefill,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseStatus {
    /// Byte-identical.
    Equal,
    /// Identical once the listed unavoidable differences are allowed for.
    EqualWithNotes,
    /// ollama cannot express this conversation (reason in `detail`).
    NotExpressible,
    /// Different: a defect of the TEMPLATE.
    Differs,
}

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub mode: CaseMode,
    pub status: CaseStatus,
    /// The allowances that made it equal (for `EqualWithNotes`).
    pub notes: Vec<String>,
    pub detail: Option<String>,
}

/// One jinja rendering (the CLI supplies the jinja engine).
pub struct JinjaRequest<'a> {
    pub messages: &'a Json,
    pub tools: Option<&'a Json>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// The thinking switch (`enable_thinking`/`open_thinking`), `None` = not passed.
    pub thinking: Option<bool>,
}

pub trait JinjaRenderer {
    fn render(&self, req: &JinjaRequest) -> Result<String>;
}

/// Builds a renderer for a jinja chat template source.
pub type JinjaFactory<'a> = &'a dyn Fn(&str) -> Result<Box<dyn JinjaRenderer>>;

#[derive(Debug, Default)]
pub struct Report {
    pub modelfile: PathBuf,
    pub from: Option<PathBuf>,
    pub family: Option<Family>,
    pub tool_tag: Option<String>,
    pub thinking_tags: Option<(String, String)>,
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
    pub notes: Vec<Issue>,
    pub cases: Vec<CaseResult>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, code: &'static str, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(Issue { code, message: message.into(), line });
    }

    fn warn(&mut self, code: &'static str, line: Option<usize>, message: impl Into<String>) {
        self.warnings.push(Issue { code, message: message.into(), line });
    }

    fn note(&mut self, code: &'static str, message: impl Into<String>) {
        self.notes.push(Issue { code, message: message.into(), line: None });
    }

    pub fn has_error(&self, code: &str) -> bool {
        self.errors.iter().any(|i| i.code == code)
    }

    pub fn has_warning(&self, code: &str) -> bool {
        self.warnings.iter().any(|i| i.code == code)
    }

    pub fn count(&self, status: CaseStatus) -> usize {
        self.cases.iter().filter(|c| c.status == status).count()
    }

    pub fn to_json(&self) -> Json {
        let issues = |v: &[Issue]| -> Json {
            v.iter().map(|i| json!({"code": i.code, "message": i.message, "line": i.line})).collect()
        };
        let cases: Vec<Json> = self
            .cases
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "mode": match c.mode { CaseMode::Normal => "normal", CaseMode::Prefix => "prefix", CaseMode::Prefill => "prefill" },
                    "status": status_name(c.status),
                    "notes": c.notes,
                    "detail": c.detail,
                })
            })
            .collect();
        json!({
            "modelfile": self.modelfile.display().to_string(),
            "ok": self.ok(),
            "from": self.from.as_ref().map(|p| p.display().to_string()),
            "family": self.family.map(Family::name),
            "tool_tag": self.tool_tag,
            "thinking_tags": self.thinking_tags.as_ref().map(|(a, b)| json!([a, b])),
            "errors": issues(&self.errors),
            "warnings": issues(&self.warnings),
            "notes": issues(&self.notes),
            "cases": cases,
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("{}\n", self.modelfile.display());
        if let Some(f) = &self.from {
            out.push_str(&format!(
                "  FROM {}{}\n",
                f.display(),
                self.family.map(|f| format!(" (chat template: {})", f.name())).unwrap_or_default()
            ));
        }
        if let Some(t) = &self.tool_tag {
            out.push_str(&format!("  tools: yes, tool-call tag {t:?}\n"));
        }
        if let Some((a, b)) = &self.thinking_tags {
            out.push_str(&format!("  thinking: yes, tags {a:?} … {b:?}\n"));
        }
        if !self.cases.is_empty() {
            out.push_str(&format!(
                "  chat cases vs the jinja template: {} equal, {} equal with notes, {} not expressible in ollama, {} different\n",
                self.count(CaseStatus::Equal),
                self.count(CaseStatus::EqualWithNotes),
                self.count(CaseStatus::NotExpressible),
                self.count(CaseStatus::Differs)
            ));
            for c in &self.cases {
                let what = match c.status {
                    CaseStatus::Equal => "equal".to_string(),
                    CaseStatus::EqualWithNotes => format!("equal allowing for: {}", c.notes.join("; ")),
                    CaseStatus::NotExpressible => format!("not expressible: {}", c.detail.as_deref().unwrap_or("")),
                    CaseStatus::Differs => format!("DIFFERENT: {}", c.detail.as_deref().unwrap_or("")),
                };
                let mode = match c.mode {
                    CaseMode::Normal => "",
                    CaseMode::Prefix => " [up to the generation prompt]",
                    CaseMode::Prefill => " [as a continued assistant turn]",
                };
                out.push_str(&format!("    {}{mode}: {what}\n", c.name));
            }
        }
        let section = |out: &mut String, title: &str, v: &[Issue]| {
            out.push_str(&format!("{title} ({})\n", v.len()));
            for i in v {
                match i.line {
                    Some(l) => out.push_str(&format!("  line {l}: {} [{}]\n", i.message, i.code)),
                    None => out.push_str(&format!("  {} [{}]\n", i.message, i.code)),
                }
            }
        };
        section(&mut out, "errors", &self.errors);
        section(&mut out, "warnings", &self.warnings);
        section(&mut out, "notes", &self.notes);
        out
    }
}

fn status_name(s: CaseStatus) -> &'static str {
    match s {
        CaseStatus::Equal => "equal",
        CaseStatus::EqualWithNotes => "equal_with_notes",
        CaseStatus::NotExpressible => "not_expressible",
        CaseStatus::Differs => "differs",
    }
}

/// Checks a Modelfile (or a directory holding one). `jinja` renders the GGUF's own chat
/// template for the case comparison; without it the comparison is skipped with a warning.
pub fn validate(path: &Path, jinja: Option<JinjaFactory>) -> Result<Report> {
    let modelfile = if path.is_dir() { path.join("Modelfile") } else { path.to_path_buf() };
    let mut r = Report { modelfile: modelfile.clone(), ..Report::default() };
    let text = match mm_converters::limits::read_to_string(&modelfile, mm_converters::limits::MAX_CONFIG_BYTES, "Modelfile") {
        Ok(t) => t,
        Err(e) => {
            r.error("modelfile_unreadable", None, format!("{e:#}"));
            return Ok(r);
        }
    };
    let commands = match modelfile::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.message.contains("no FROM") {
                "missing_from"
            } else if e.message.contains("command must be one of") {
                "unknown_instruction"
            } else if e.message.contains("message role") {
                "message_role"
            } else {
                "modelfile_syntax"
            };
            let line = (e.line > 0).then_some(e.line);
            r.error(code, line, format!("ollama cannot parse the Modelfile: {}", e.message));
            return Ok(r);
        }
    };
    let base = modelfile.parent().map(Path::to_path_buf).unwrap_or_default();
    check_printable(&mut r, &commands);
    let chat_template = check_from(&mut r, &commands, &base);
    check_parameters(&mut r, &commands);
    check_other_instructions(&mut r, &commands, &base);

    let family = chat_template.as_deref().and_then(|t| Family::detect(t).ok());
    r.family = family;
    let templates: Vec<&Command> = commands.iter().filter(|c| !c.is_parameter && c.name == "template").collect();
    if templates.len() > 1 {
        r.warn("template_repeated", Some(templates[1].line), "TEMPLATE appears more than once; ollama keeps the last");
    }
    let Some(tcmd) = templates.last() else {
        r.warn(
            "no_template",
            None,
            "no TEMPLATE: ollama falls back to the GGUF's chat template or to its default {{ .Prompt }}",
        );
        return Ok(r);
    };
    let Some(tmpl) = check_template(&mut r, tcmd, chat_template.as_deref()) else { return Ok(r) };

    // Render the chat cases with both templates.
    match (&chat_template, jinja) {
        (Some(source), Some(factory)) => match factory(source) {
            Ok(renderer) => {
                for case in super::builtin_cases() {
                    let result = compare_case(&tmpl, &case, renderer.as_ref());
                    if result.status == CaseStatus::Differs {
                        r.error(
                            "case_differs",
                            Some(tcmd.line),
                            format!(
                                "case {}: the TEMPLATE renders differently from the jinja template: {}",
                                result.name,
                                result.detail.as_deref().unwrap_or("")
                            ),
                        );
                    }
                    r.cases.push(result);
                }
                if let Some(f) = family {
                    for l in f.limitations() {
                        r.note("known_difference", format!("{} TEMPLATE: {l}", f.name()));
                    }
                }
            }
            Err(e) => r.warn("jinja_unusable", None, format!("cannot compile the GGUF's chat template: {e:#}")),
        },
        (None, _) => r.warn(
            "no_jinja_template",
            None,
            "FROM gives no jinja chat template (tokenizer.chat_template), so the TEMPLATE was not compared with one",
        ),
        (Some(_), None) => r.warn("no_jinja_engine", None, "no jinja engine given; chat cases not compared"),
    }
    Ok(r)
}

fn check_printable(r: &mut Report, commands: &[Command]) {
    for c in commands {
        if let Some(ch) = c.raw.chars().find(|&ch| !modelfile::go_is_print(ch) && !matches!(ch, '\n' | '\r' | '\t')) {
            r.warn(
                "non_printable",
                Some(c.line),
                format!(
                    "{} holds U+{:04X}, which ollama's Modelfile parser silently drops",
                    c.name.to_uppercase(),
                    ch as u32
                ),
            );
        }
    }
}

/// Checks FROM; returns the GGUF's jinja chat template when there is one.
fn check_from(r: &mut Report, commands: &[Command], base: &Path) -> Option<String> {
    let froms: Vec<&Command> = commands.iter().filter(|c| !c.is_parameter && c.name == "from").collect();
    if froms.len() > 1 {
        r.warn("from_repeated", Some(froms[1].line), "FROM appears more than once");
    }
    let from = froms.last()?;
    let value = from.args.trim();
    if value.is_empty() {
        r.error("from_empty", Some(from.line), "FROM has no value");
        return None;
    }
    let path_like = value.starts_with(['.', '/', '~'])
        || value.contains(std::path::MAIN_SEPARATOR)
        || value.ends_with(".gguf")
        || value.ends_with(".safetensors");
    if !path_like {
        r.warn(
            "from_registry",
            Some(from.line),
            format!("FROM {value:?} names a model from a registry; mm checks local files only"),
        );
        return None;
    }
    let value = value.strip_prefix("./").unwrap_or(value);
    let expanded = match value.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        None => PathBuf::from(value),
    };
    let path = if expanded.is_absolute() { expanded } else { base.join(expanded) };
    r.from = Some(path.clone());
    if !path.exists() {
        r.error("from_missing", Some(from.line), format!("FROM {value}: {} does not exist", path.display()));
        return None;
    }
    if path.is_dir() {
        r.warn(
            "from_directory",
            Some(from.line),
            format!(
                "FROM {value} is a directory: ollama converts it itself (LlamaForCausalLM/Qwen2 safetensors only); mm checks GGUF files"
            ),
        );
        return None;
    }
    let mut magic = [0u8; 4];
    // Only a regular file is opened: opening a FIFO would wait for a writer forever.
    let is_gguf = path.is_file()
        && std::fs::File::open(&path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && &magic == b"GGUF";
    if !is_gguf {
        r.error("from_not_gguf", Some(from.line), format!("FROM {value}: {} is not a GGUF file", path.display()));
        return None;
    }
    match GgufFile::open(&path) {
        Ok(file) => {
            let template =
                file.metadata.get(mm_converters::gguf::keys::tokenizer::CHAT_TEMPLATE).and_then(|v| v.as_str()).map(str::to_string);
            if file.metadata.get("tokenizer.ggml.model").is_none() {
                r.warn("gguf_no_tokenizer", Some(from.line), "the GGUF has no tokenizer; ollama cannot run it");
            }
            template
        }
        Err(e) => {
            r.error("from_bad_gguf", Some(from.line), format!("FROM {value}: the GGUF does not load: {e:#}"));
            None
        }
    }
}

fn check_parameters(r: &mut Report, commands: &[Command]) {
    let mut stops = Vec::new();
    for c in commands.iter().filter(|c| c.is_parameter) {
        match check_param(&c.name, &c.args) {
            Ok(ParamCheck::Deprecated) => {
                r.warn("param_deprecated", Some(c.line), format!("parameter {} is deprecated; ollama ignores it", c.name))
            }
            Ok(ParamCheck::Ok(_)) => {
                if c.name == "stop" {
                    stops.push(c.args.clone());
                }
            }
            Err(e) => {
                let code = if e.to_string().starts_with("unknown parameter") { "param_unknown" } else { "param_type" };
                r.error(code, Some(c.line), format!("PARAMETER {} {}: {e}", c.name, c.args));
            }
        }
    }
    if !stops.iter().any(|s| s == STOPS[0]) {
        r.error(
            "stop_missing",
            None,
            format!("no PARAMETER stop {:?}: generation would run past the end of the turn", STOPS[0]),
        );
    }
    for s in &STOPS[1..] {
        if !stops.iter().any(|x| x == s) {
            r.warn("stop_missing", None, format!("no PARAMETER stop {s:?}"));
        }
    }
}

fn check_other_instructions(r: &mut Report, commands: &[Command], base: &Path) {
    for c in commands.iter().filter(|c| !c.is_parameter) {
        match c.name.as_str() {
            "requires" => {
                let v = c.args.trim().trim_start_matches('v');
                let parts: Vec<&str> = v.split(['-', '+']).next().unwrap_or("").split('.').collect();
                if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
                    r.error("requires_semver", Some(c.line), format!("REQUIRES {:?} is not a semver version", c.args));
                }
            }
            "adapter" | "draft" => {
                let p = base.join(c.args.trim());
                if !p.exists() {
                    r.error("adapter_missing", Some(c.line), format!("{} {}: file not found", c.name.to_uppercase(), c.args));
                }
            }
            "license" | "system" | "message" | "renderer" | "parser" | "template" | "from" => {}
            other => r.error("unknown_instruction", Some(c.line), format!("unknown instruction {other}")),
        }
    }
}

/// The TEMPLATE checks; returns the parsed template when the case comparison makes sense.
fn check_template(r: &mut Report, cmd: &Command, jinja: Option<&str>) -> Option<Template> {
    let source = &cmd.args;
    let line = Some(cmd.line);
    if source.ends_with('\n') {
        r.warn(
            "template_trailing_newline",
            line,
            "the TEMPLATE ends with a newline, which Go keeps: every prompt then ends with an extra newline",
        );
    }
    let tmpl = match parse_template(source) {
        Ok(t) => t,
        Err(e) if e.kind == ErrorKind::Unsupported => {
            r.warn("template_unchecked", line, format!("TEMPLATE not checked: {}", e.message));
            return None;
        }
        Err(e) if e.kind == ErrorKind::Limit => {
            r.error("template_limit", line, format!("the TEMPLATE is refused (line {} of the TEMPLATE): {}", e.line, e.message));
            return None;
        }
        Err(e) => {
            r.error(
                "template_parse",
                line,
                format!("the TEMPLATE does not parse as a Go text/template (line {} of the TEMPLATE): {}", e.line, e.message),
            );
            return None;
        }
    };
    let vars = identifiers(&tmpl);
    let has = |v: &str| vars.iter().any(|x| x == v);
    let messages_mode = has("messages");
    if !messages_mode {
        r.warn(
            "template_legacy",
            line,
            "the TEMPLATE does not use .Messages: ollama runs it in legacy mode (.System/.Prompt/.Response per turn), \
             which cannot show tools, tool results or a mid-conversation system message",
        );
    }
    let jinja_tools = jinja.is_some_and(|j| j.contains("tools"));
    let jinja_think = jinja.is_some_and(|j| j.contains("think"));
    if has("tools") {
        let tag = tool_tag(&tmpl);
        if tag == "{" {
            r.warn(
                "tool_tag",
                line,
                "no text starts the first {{ if .ToolCalls }} block, so ollama parses tool calls only when the output \
                 starts with '{' (put the tag, e.g. <tool_call>, first in that block)",
            );
        }
        if !has("toolcalls") || !(source.contains("eq .Role \"tool\"") || source.contains("tool_response")) {
            r.warn(
                "tool_round_trip",
                line,
                "the TEMPLATE does not render tool calls and tool results, so newer ollama prefers the GGUF's jinja template",
            );
        }
        r.tool_tag = Some(tag);
    } else if jinja_tools {
        r.warn("no_tools", line, "the TEMPLATE ignores .Tools although the model's chat template supports tools");
    }
    let (open, close) = thinking_tags(&tmpl);
    if !open.is_empty() && !close.is_empty() {
        r.thinking_tags = Some((open, close));
    } else if jinja_think {
        r.warn(
            "no_thinking",
            line,
            format!(
                "ollama infers no thinking tags (opening {open:?}, closing {close:?}): .Thinking must be printed inside \
                 range .Messages between literal tags such as <think> and </think>; `think` requests will fail"
            ),
        );
    }
    for (l, action) in struct_prints(&tmpl) {
        r.error(
            "template_go_struct",
            line,
            format!(
                "TEMPLATE line {l}: {{{{ {action} }}}} prints a Go struct ({{name description map[…]}}), not JSON; \
                 print a tool with {{{{ . }}}} or {{{{ json … }}}}"
            ),
        );
    }
    if !messages_mode {
        return None;
    }
    // One rendering with tools, a tool call and thinking exposes execution errors and
    // fields that ollama does not provide.
    let probe = json!({
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "a", "thinking": "t", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "r"},
            {"role": "user", "content": "u2"}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}],
        "think": true
    });
    match super::render_request(&tmpl, &probe) {
        Ok(out) => {
            for (l, action) in out.go_syntax_prints {
                if !r.errors.iter().any(|e| e.code == "template_go_struct" && e.message.contains(&action)) {
                    r.error(
                        "template_go_struct",
                        line,
                        format!("TEMPLATE line {l}: {{{{ {action} }}}} prints a Go struct, not text or JSON"),
                    );
                }
            }
            let mut seen = Vec::new();
            for (ty, key) in out.missing_keys {
                if data::is_root_type(ty) && !seen.contains(&key) {
                    r.error(
                        "template_unknown_field",
                        line,
                        format!("the TEMPLATE reads .{key}, which ollama does not provide (it prints \"<no value>\")"),
                    );
                    seen.push(key);
                }
            }
        }
        Err(e) => r.error("template_exec", line, format!("the TEMPLATE fails on a chat with tools: {e:#}")),
    }
    Some(tmpl)
}

// ---------------------------------------------------------------------------------------------
// ollama's heuristics, restated on mm's parse tree

/// `Template.Vars()`: every field and variable name, lower-cased (not inside `(…).Field`
/// chains, which ollama's walk skips).
pub fn identifiers(t: &Template) -> Vec<String> {
    let mut out = Vec::new();
    t.visit(&mut |v, ancestors| {
        if ancestors.iter().any(|a| matches!(a, Visit::Arg(Arg::Chain(..)))) {
            return;
        }
        if let Visit::Arg(Arg::Field(idents) | Arg::Variable(idents)) = v {
            out.extend(idents.iter().map(|i| i.to_lowercase()));
        }
    });
    out.sort();
    out.dedup();
    out
}

/// tools/template.go `parseTag`: the first text in the first `{{ if … .ToolCalls … }}`, cut at
/// `{` and trimmed; `{` when there is none.
pub fn tool_tag(t: &Template) -> String {
    fn is_tool_calls_if(n: &Node) -> bool {
        let Node::If(b) = n else { return false };
        b.pipe
            .cmds
            .iter()
            .any(|c| c.args.iter().any(|a| matches!(a, Arg::Field(idents) if idents.iter().any(|i| i == "ToolCalls"))))
    }
    fn find_if(nodes: &List) -> Option<&crate::go_template::Branch> {
        for n in nodes {
            if is_tool_calls_if(n) {
                let Node::If(b) = n else { unreachable!() };
                return Some(b);
            }
            if let Node::If(b) | Node::Range(b) | Node::With(b) = n {
                if let Some(found) = find_if(&b.list) {
                    return Some(found);
                }
                if let Some(found) = b.else_list.as_ref().and_then(find_if) {
                    return Some(found);
                }
            }
        }
        None
    }
    fn find_text(nodes: &List) -> Option<&str> {
        for n in nodes {
            match n {
                Node::Text(s) => {
                    if s.trim().is_empty() {
                        continue;
                    }
                    return Some(s);
                }
                Node::If(b) | Node::Range(b) | Node::With(b) => {
                    return find_text(&b.list).or_else(|| b.else_list.as_ref().and_then(find_text));
                }
                Node::Action(_) => return None,
                Node::Break | Node::Continue => {}
            }
        }
        None
    }
    let Some(b) = find_if(&t.root) else { return "{".into() };
    let Some(text) = find_text(&b.list) else { return "{".into() };
    let text = text.replace("\r\n", "\n");
    let tag = text.split('{').next().unwrap_or("").trim();
    if tag.is_empty() {
        "{".into()
    } else {
        tag.to_string()
    }
}

/// thinking/template.go `InferTags`: for each `.Thinking` field inside a `range` over
/// `.Messages`, the first and last text of the nearest enclosing list (the last match wins).
pub fn thinking_tags(t: &Template) -> (String, String) {
    let mut open = String::new();
    let mut close = String::new();
    t.visit(&mut |v, ancestors| {
        let Visit::Arg(Arg::Field(idents)) = v else { return };
        if idents.first().map(String::as_str) != Some("Thinking") {
            return;
        }
        if ancestors.iter().any(|a| matches!(a, Visit::Arg(Arg::Chain(..)))) {
            return;
        }
        let range = ancestors.iter().rev().find_map(|a| match a {
            Visit::Node(Node::Range(b)) => Some(b),
            _ => None,
        });
        let Some(range) = range else { return };
        let uses_messages = range.pipe.cmds.iter().any(|c| c.args.iter().any(|a| arg_uses_field(a, "Messages")));
        if !uses_messages {
            return;
        }
        if let Some(Visit::List(list)) = ancestors.iter().rev().find(|a| matches!(a, Visit::List(_))) {
            if let Some(Node::Text(s)) = list.first() {
                open = s.trim().to_string();
            }
            if let Some(Node::Text(s)) = list.last() {
                close = s.trim().to_string();
            }
        }
    });
    (open, close)
}

fn arg_uses_field(a: &Arg, field: &str) -> bool {
    match a {
        Arg::Field(idents) => idents.first().map(String::as_str) == Some(field),
        Arg::Pipe(p) => p.cmds.iter().any(|c| c.args.iter().any(|a| arg_uses_field(a, field))),
        _ => false,
    }
}

/// Actions that print a value of a struct type of ollama's data (`{{ .Function }}`, …).
pub fn struct_prints(t: &Template) -> Vec<(usize, String)> {
    const STRUCTS: [&str; 5] = ["Function", "Parameters", "ToolCalls", "Messages", "Images"];
    let mut out = Vec::new();
    t.visit(&mut |v, _| {
        let Visit::Node(Node::Action(pipe)) = v else { return };
        if !pipe.decl.is_empty() {
            return;
        }
        let Some(last) = pipe.cmds.last() else { return };
        if last.args.len() != 1 {
            return;
        }
        let idents = match &last.args[0] {
            Arg::Field(i) | Arg::Variable(i) | Arg::Chain(_, i) => i,
            _ => return,
        };
        if idents.last().is_some_and(|i| STRUCTS.contains(&i.as_str())) {
            out.push((pipe.line, pipe.to_string()));
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// Case comparison

/// Each JSON line (a tool schema, a tool call) written canonically: keys sorted, compact,
/// numbers as Go holds them. What remains different after this is not JSON layout.
fn canonical_json_lines(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            let t = line.trim();
            if t.starts_with('{') {
                if let Ok(v) = serde_json::from_str::<Json>(t) {
                    return data::go_number(&v).to_string();
                }
            }
            line.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where two renderings part, for a message.
pub fn first_difference(expected: &str, got: &str) -> String {
    let at = expected.bytes().zip(got.bytes()).take_while(|(a, b)| a == b).count();
    let mut at = at.min(expected.len()).min(got.len());
    while !expected.is_char_boundary(at) || !got.is_char_boundary(at) {
        at -= 1;
    }
    let ctx = |s: &str| -> String {
        let mut end = (at + 60).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut start = at.saturating_sub(20);
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        format!("{:?}", &s[start..end])
    };
    format!("at byte {at}: jinja {} vs TEMPLATE {}", ctx(expected), ctx(got))
}

const ALLOW_DATA: &str = "ollama's data model (the conversation as ollama holds it: merged messages, schema keys \
                          ollama keeps, Go-typed arguments)";
const ALLOW_JSON: &str = "JSON layout in tool lines (key order, spacing, Go's escaping of < > &, number format)";
const ALLOW_THINKING: &str =
    "thinking rendered (the TEMPLATE prints ollama's .Thinking where the jinja template drops reasoning_content)";

/// Renders one conversation with the TEMPLATE (on the ollama-shaped request) and with the
/// jinja template, and says how they compare.
pub fn compare_case(tmpl: &Template, case: &ChatCase, jinja: &dyn JinjaRenderer) -> CaseResult {
    let mut result =
        CaseResult { name: case.name.clone(), mode: CaseMode::Normal, status: CaseStatus::Equal, notes: Vec::new(), detail: None };
    let last_role = case.last_role();
    let last_assistant = last_role == "assistant";
    let not_expressible = |mut r: CaseResult, why: String| {
        r.status = CaseStatus::NotExpressible;
        r.detail = Some(why);
        r
    };
    if case.add_generation_prompt && last_assistant {
        return not_expressible(
            result,
            "a generation prompt after an assistant turn: ollama continues a trailing assistant message instead".into(),
        );
    }
    if !case.add_generation_prompt && !last_assistant {
        result.mode = CaseMode::Prefix;
    }
    if !case.add_generation_prompt && last_assistant {
        result.mode = CaseMode::Prefill;
        let last = case.messages.as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
        let content = last.get("content").and_then(Json::as_str).unwrap_or("");
        if content.trim().is_empty() || last.get("tool_calls").is_some_and(|t| !t.is_null()) {
            return not_expressible(result, "continuing an assistant turn without text (or with tool calls)".into());
        }
    }
    let body = match case.ollama_request() {
        Ok(b) => b,
        Err(e) => return not_expressible(result, format!("{e:#}")),
    };
    let req = match Request::decode(&body) {
        Ok(r) => r,
        Err(e) => return not_expressible(result, format!("ollama would reject the request: {e:#}")),
    };
    let go = |req: &Request| tmpl.execute(&data::template_data(req)).map(|r| r.text);
    let go_full = match go(&req) {
        Ok(t) => t,
        Err(e) => {
            result.status = CaseStatus::Differs;
            result.detail = Some(format!("the TEMPLATE fails: {e}"));
            return result;
        }
    };
    let go_no_thinking = go(&req.without_thinking()).unwrap_or_default();
    let jinja_render = |messages: &Json, tools: Option<&Json>| {
        jinja.render(&JinjaRequest {
            messages,
            tools,
            add_generation_prompt: case.add_generation_prompt,
            continue_final_message: result.mode == CaseMode::Prefill,
            thinking: case.thinking,
        })
    };
    let original = match jinja_render(&case.messages, case.tools.as_ref()) {
        Ok(t) => t,
        Err(e) => return not_expressible(result, format!("the jinja template fails on it: {e:#}")),
    };
    let (rt_messages, rt_tools) = req.to_transformers();
    let roundtrip = jinja_render(&rt_messages, rt_tools.as_ref()).ok();
    let matches = |jinja: &str, go: &str| match result.mode {
        CaseMode::Prefix => go.starts_with(jinja),
        _ => go == jinja,
    };
    // Fewest allowances first.
    let combos: [(bool, bool, bool); 8] = [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (false, false, true),
        (false, true, true),
        (true, false, true),
        (true, true, true),
    ];
    for (use_data, use_json, use_thinking) in combos {
        let j = if use_data {
            match &roundtrip {
                Some(t) => t.clone(),
                None => continue,
            }
        } else {
            original.clone()
        };
        let g = if use_thinking { go_no_thinking.clone() } else { go_full.clone() };
        let (j, g) = if use_json { (canonical_json_lines(&j), canonical_json_lines(&g)) } else { (j, g) };
        if matches(&j, &g) {
            if use_data {
                result.notes.push(ALLOW_DATA.into());
            }
            if use_json {
                result.notes.push(ALLOW_JSON.into());
            }
            if use_thinking {
                result.notes.push(ALLOW_THINKING.into());
            }
            result.status = if result.notes.is_empty() { CaseStatus::Equal } else { CaseStatus::EqualWithNotes };
            if result.mode == CaseMode::Prefix {
                result.detail = Some("add_generation_prompt=false: ollama always opens an assistant turn".into());
            }
            return result;
        }
    }
    result.status = CaseStatus::Differs;
    let got = if result.mode == CaseMode::Prefix {
        let mut end = go_full.len().min(original.len());
        while !go_full.is_char_boundary(end) {
            end -= 1;
        }
        &go_full[..end]
    } else {
        &go_full
    };
    result.detail = Some(first_difference(&original, got));
    result
}

/// The jinja chat template stored in a GGUF.
pub fn gguf_chat_template(path: &Path) -> Result<Option<String>> {
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(file.metadata.get(mm_converters::gguf::keys::tokenizer::CHAT_TEMPLATE).and_then(|v| v.as_str()).map(str::to_string))
}
