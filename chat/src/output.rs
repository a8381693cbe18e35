//! Splitting a model's raw output into content, reasoning and tool calls: the inverse of the
//! chat template, for the server and `mm chat`.
//!
//! The format is the one MiniMind (and Qwen/Hermes-style templates) train on:
//! `<think>\n{reasoning}\n</think>\n\n{content}` and, after the content,
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, once per call.

use serde_json::{json, Value as Json};

use super::pyjson;

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// One function call the model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Usually a JSON object; kept as written when the model gave a string.
    pub arguments: Json,
}

impl ToolCall {
    /// The arguments as the JSON string OpenAI's `function.arguments` carries, written like
    /// Python's `json.dumps(args, ensure_ascii=False)`. A string argument is returned as is.
    pub fn arguments_json(&self) -> String {
        match &self.arguments {
            Json::String(s) => s.clone(),
            other => pyjson::dumps_json(other),
        }
    }

    /// The OpenAI chat-completions form: `{id, type: "function", function: {name, arguments}}`.
    pub fn to_openai(&self, id: &str) -> Json {
        json!({"id": id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json()}})
    }
}

/// A `<tool_call>` block that could not be turned into a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallError {
    /// The text between the tags (to the end of the output when the block was not closed).
    pub raw: String,
    pub message: String,
}

/// A model turn split into its parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedOutput {
    /// The answer text, with the think block and tool-call blocks removed.
    pub content: String,
    /// The think block's text; `None` when there is none or it is empty.
    pub reasoning: Option<String>,
    /// Whether the output ended inside the think block (no `</think>` yet).
    pub reasoning_unfinished: bool,
    pub tool_calls: Vec<ToolCall>,
    /// Tool-call blocks that were malformed (bad JSON, no name, not closed).
    pub errors: Vec<ToolCallError>,
}

/// Splits raw model output. `started_in_think` says the prompt already ended with `<think>`
/// (e.g. minimind3 with `open_thinking`), so the output starts inside the reasoning. An output
/// with `</think>` but no `<think>` before it is read the same way.
pub fn parse_output(text: &str, started_in_think: bool) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let (reasoning, rest) = split_reasoning(text, started_in_think);
    if let Some((reasoning, finished)) = reasoning {
        let reasoning = reasoning.trim_matches('\n');
        out.reasoning = (!reasoning.is_empty()).then(|| reasoning.to_string());
        out.reasoning_unfinished = !finished;
    }
    let (content, calls) = split_tool_calls(&rest);
    out.content = content;
    for call in calls {
        match call {
            Ok(c) => out.tool_calls.push(c),
            Err(e) => out.errors.push(e),
        }
    }
    out
}

/// Returns ((reasoning, closed), remaining text).
fn split_reasoning(text: &str, started_in_think: bool) -> (Option<(&str, bool)>, String) {
    let open = text.find(THINK_OPEN);
    let close = text.find(THINK_CLOSE);
    let starts_inside =
        started_in_think || matches!((open, close), (None, Some(_))) || matches!((open, close), (Some(o), Some(c)) if c < o);
    if starts_inside {
        return match close {
            Some(c) => (Some((&text[..c], true)), lstrip_newlines(&text[c + THINK_CLOSE.len()..]).to_string()),
            None => (Some((text, false)), String::new()),
        };
    }
    let Some(o) = open else { return (None, text.to_string()) };
    let before = &text[..o];
    let inner = &text[o + THINK_OPEN.len()..];
    match inner.find(THINK_CLOSE) {
        Some(c) => (Some((&inner[..c], true)), format!("{before}{}", lstrip_newlines(&inner[c + THINK_CLOSE.len()..]))),
        None => (Some((inner, false)), before.to_string()),
    }
}

fn lstrip_newlines(s: &str) -> &str {
    s.trim_start_matches('\n')
}

/// Removes every `<tool_call>…</tool_call>` block from `text` and parses each one.
fn split_tool_calls(text: &str) -> (String, Vec<Result<ToolCall, ToolCallError>>) {
    if !text.contains(TOOL_CALL_OPEN) {
        return (text.to_string(), Vec::new());
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_CALL_OPEN) {
        segments.push(&rest[..start]);
        let body = &rest[start + TOOL_CALL_OPEN.len()..];
        match body.find(TOOL_CALL_CLOSE) {
            Some(end) => {
                calls.push(parse_tool_call(&body[..end]));
                rest = &body[end + TOOL_CALL_CLOSE.len()..];
            }
            None => {
                calls.push(Err(ToolCallError { raw: body.to_string(), message: "unterminated <tool_call> block".into() }));
                rest = "";
            }
        }
    }
    segments.push(rest);
    // The template separates content and calls with newlines; drop whitespace next to calls.
    let last = segments.len() - 1;
    let pieces: Vec<&str> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = if i > 0 { s.trim_start() } else { s };
            if i < last {
                s.trim_end()
            } else {
                s
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    (pieces.join("\n"), calls)
}

fn parse_tool_call(raw: &str) -> Result<ToolCall, ToolCallError> {
    let error = |message: String| ToolCallError { raw: raw.to_string(), message };
    let value: Json = serde_json::from_str(raw.trim()).map_err(|e| error(format!("invalid JSON in <tool_call>: {e}")))?;
    let Json::Object(obj) = value else {
        return Err(error("a tool call must be a JSON object".into()));
    };
    let name = match obj.get("name") {
        Some(Json::String(name)) if !name.is_empty() => name.clone(),
        _ => return Err(error("a tool call needs a string \"name\"".into())),
    };
    let arguments = obj.get("arguments").or_else(|| obj.get("parameters")).cloned().unwrap_or_else(|| json!({}));
    Ok(ToolCall { name, arguments })
}

/// A piece of streamed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Think,
    Content,
    /// After the first `<tool_call>`: held back until [`OutputStream::finish`].
    ToolCalls,
}

/// Splits output while it streams in, for servers that send `reasoning_content` and `content`
/// deltas as tokens arrive. Partial tags are held back, so no delta ever shows a piece of
/// `<think>` or `<tool_call>`; from the first `<tool_call>` on nothing is streamed and the
/// calls come from [`finish`](Self::finish), which parses the whole text with [`parse_output`].
/// For output in the template's format the deltas add up to `parse_output`'s content and
/// reasoning. (A lone `</think>` without `started_in_think` is only recognised by `finish`.)
#[derive(Debug, Clone)]
pub struct OutputStream {
    started_in_think: bool,
    section: Section,
    think_seen: bool,
    /// Text received but not yet emitted (partial tags, held-back newlines/whitespace).
    pending: String,
    text: String,
    /// Strip leading newlines of the next reasoning / content text.
    reasoning_fresh: bool,
    content_fresh: bool,
}

impl OutputStream {
    pub fn new(started_in_think: bool) -> Self {
        Self {
            started_in_think,
            section: if started_in_think { Section::Think } else { Section::Content },
            think_seen: started_in_think,
            pending: String::new(),
            text: String::new(),
            reasoning_fresh: true,
            content_fresh: false,
        }
    }

    /// Everything pushed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds decoded text; returns the deltas it completes.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        self.text.push_str(piece);
        self.pending.push_str(piece);
        let mut out = Vec::new();
        loop {
            match self.section {
                Section::ToolCalls => {
                    self.pending.clear();
                    break;
                }
                Section::Think => match self.pending.find(THINK_CLOSE) {
                    Some(i) => {
                        let rest = self.pending.split_off(i + THINK_CLOSE.len());
                        let reasoning = self.pending[..i].trim_end_matches('\n').to_string();
                        self.emit_reasoning(&reasoning, &mut out);
                        self.pending = rest;
                        self.section = Section::Content;
                        self.content_fresh = true;
                    }
                    None => {
                        let keep = partial_tag_len(&self.pending, &[THINK_CLOSE]);
                        let avail = self.pending.len() - keep;
                        let ready = self.pending[..avail].trim_end_matches('\n').len();
                        let reasoning = self.pending[..ready].to_string();
                        self.pending.drain(..ready);
                        self.emit_reasoning(&reasoning, &mut out);
                        break;
                    }
                },
                Section::Content => {
                    let tool = self.pending.find(TOOL_CALL_OPEN);
                    let think = if self.think_seen { None } else { self.pending.find(THINK_OPEN) };
                    match (tool, think) {
                        (Some(t), th) if th.is_none_or(|th| t < th) => {
                            // Content before the calls loses its trailing whitespace.
                            let content = self.pending[..t].trim_end().to_string();
                            self.emit_content(&content, &mut out);
                            self.pending.clear();
                            self.section = Section::ToolCalls;
                        }
                        (_, Some(th)) => {
                            let rest = self.pending.split_off(th + THINK_OPEN.len());
                            let content = self.pending[..th].to_string();
                            self.emit_content(&content, &mut out);
                            self.pending = rest;
                            self.section = Section::Think;
                            self.think_seen = true;
                            self.reasoning_fresh = true;
                        }
                        (None, None) => {
                            let tags: &[&str] = if self.think_seen { &[TOOL_CALL_OPEN] } else { &[TOOL_CALL_OPEN, THINK_OPEN] };
                            let keep = partial_tag_len(&self.pending, tags);
                            let avail = self.pending.len() - keep;
                            // Trailing whitespace waits: it is dropped if a tool call follows.
                            let ready = self.pending[..avail].trim_end().len();
                            let content = self.pending[..ready].to_string();
                            self.pending.drain(..ready);
                            self.emit_content(&content, &mut out);
                            break;
                        }
                        (Some(_), None) => unreachable!("handled by the first arm"),
                    }
                }
            }
        }
        out
    }

    /// Flushes what was held back and parses the whole output (tool calls included).
    pub fn finish(mut self) -> (Vec<Delta>, ParsedOutput) {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        match self.section {
            Section::Think => self.emit_reasoning(rest.trim_end_matches('\n'), &mut out),
            Section::Content => self.emit_content(&rest, &mut out),
            Section::ToolCalls => {}
        }
        let parsed = parse_output(&self.text, self.started_in_think);
        (out, parsed)
    }

    fn emit_reasoning(&mut self, text: &str, out: &mut Vec<Delta>) {
        let text = if self.reasoning_fresh { text.trim_start_matches('\n') } else { text };
        if !text.is_empty() {
            self.reasoning_fresh = false;
            out.push(Delta::Reasoning(text.to_string()));
        }
    }

    fn emit_content(&mut self, text: &str, out: &mut Vec<Delta>) {
        let text = if self.content_fresh { text.trim_start_matches('\n') } else { text };
        if !text.is_empty() {
            self.content_fresh = false;
            out.push(Delta::Content(text.to_string()));
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of one of `tags`.
/// The length of the longest end of `text` that is the start of one of `tags` (held back
/// while streaming: it may become the tag). Tags may be any UTF-8 (stop strings are).
pub fn partial_tag_len(text: &str, tags: &[&str]) -> usize {
    tags.iter()
        .flat_map(|tag| (1..tag.len()).rev().filter(move |&n| tag.is_char_boundary(n) && text.ends_with(&tag[..n])))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_content() {
        let p = parse_output("Hello!\n", false);
        assert_eq!(p, ParsedOutput { content: "Hello!\n".into(), ..Default::default() });
    }

    #[test]
    fn think_block_in_output() {
        let p = parse_output("<think>\nstep 1\nstep 2\n</think>\n\nThe answer is 4.", false);
        assert_eq!(p.reasoning.as_deref(), Some("step 1\nstep 2"));
        assert_eq!(p.content, "The answer is 4.");
        assert!(!p.reasoning_unfinished);
        let empty = parse_output("<think>\n\n</think>\n\nHi", false);
        assert_eq!((empty.reasoning, empty.content.as_str()), (None, "Hi"));
    }

    #[test]
    fn think_opened_in_prompt() {
        let p = parse_output("2 plus 2 is 4.\n</think>\n\n4", true);
        assert_eq!((p.reasoning.as_deref(), p.content.as_str()), (Some("2 plus 2 is 4."), "4"));
        // Same without being told: a lone closing tag.
        assert_eq!(parse_output("2 plus 2 is 4.\n</think>\n\n4", false), p);
        // Cut off while thinking.
        let p = parse_output("still thinking", true);
        assert_eq!((p.reasoning.as_deref(), p.content.as_str(), p.reasoning_unfinished), (Some("still thinking"), "", true));
    }

    #[test]
    fn several_tool_calls() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expression\": \"3*7\"}}\n</tool_call>";
        let p = parse_output(text, false);
        assert_eq!(p.content, "Let me check.");
        assert_eq!(p.tool_calls.len(), 2);
        assert_eq!(p.tool_calls[0], ToolCall { name: "get_weather".into(), arguments: json!({"city": "Paris"}) });
        assert_eq!(p.tool_calls[1].arguments_json(), r#"{"expression": "3*7"}"#);
        assert_eq!(p.tool_calls[1].to_openai("call_1")["function"]["arguments"], json!(r#"{"expression": "3*7"}"#));
        assert!(p.errors.is_empty());
    }

    #[test]
    fn malformed_tool_calls_are_reported() {
        let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {x: }\n</tool_call>\n<tool_call>\n[1]\n</tool_call>\n<tool_call>\n{\"name\": \"c\"";
        let p = parse_output(text, false);
        assert_eq!(p.content, "");
        assert_eq!(p.tool_calls, vec![ToolCall { name: "a".into(), arguments: json!({"x": 1}) }]);
        assert_eq!(p.errors.len(), 3);
        assert!(p.errors[0].message.contains("invalid JSON"), "{:?}", p.errors[0]);
        assert_eq!(p.errors[0].raw, "\n{\"name\": \"b\", \"arguments\": {x: }\n");
        assert!(p.errors[1].message.contains("object"));
        assert!(p.errors[2].message.contains("unterminated"));
    }

    /// Feeds `text` in chunks of `size` characters and checks the deltas against `parse_output`.
    fn stream_matches_parse(text: &str, started_in_think: bool, size: usize) -> ParsedOutput {
        let chars: Vec<char> = text.chars().collect();
        let mut stream = OutputStream::new(started_in_think);
        let mut deltas = Vec::new();
        for chunk in chars.chunks(size) {
            deltas.extend(stream.push(&chunk.iter().collect::<String>()));
        }
        let (tail, parsed) = stream.finish();
        deltas.extend(tail);
        let (mut reasoning, mut content) = (String::new(), String::new());
        for d in &deltas {
            match d {
                Delta::Reasoning(r) => reasoning.push_str(r),
                Delta::Content(c) => content.push_str(c),
            }
            let (Delta::Reasoning(t) | Delta::Content(t)) = d;
            assert!(!t.is_empty() && !t.contains("<think") && !t.contains("<tool_"), "{d:?} in {deltas:?}");
        }
        assert_eq!(reasoning, parsed.reasoning.clone().unwrap_or_default(), "size {size}: {text:?}");
        assert_eq!(content, parsed.content, "size {size}: {text:?}");
        parsed
    }

    #[test]
    fn streaming_split_adds_up_to_the_parse() {
        let outputs = [
            ("Hello!\n\nHow can I help?\n", false),
            ("<think>\nstep 1\n\nstep 2\n</think>\n\nThe answer is 4.", false),
            ("step 1\n</think>\n\n4", true),
            ("<think>\n\n</think>\n\n\nHi", false),
            ("still thinking\n\n", true),
            ("Let me check.\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>", false),
            ("<think>\nplan\n</think>\n\nOK \n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{bad}\n</tool_call>", false),
            ("a < b and <thin air>, x <tool", false),
            ("before <think>r</think>after", false),
        ];
        for (text, started) in outputs {
            for size in [1, 2, 3, 5, 8, 1000] {
                stream_matches_parse(text, started, size);
            }
        }
        let parsed = stream_matches_parse(outputs[6].0, false, 1);
        assert_eq!((parsed.tool_calls.len(), parsed.errors.len()), (1, 1));
    }

    #[test]
    fn reasoning_then_tool_call() {
        let text = "<think>\nneed weather\n</think>\n\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>";
        let p = parse_output(text, false);
        assert_eq!(p.reasoning.as_deref(), Some("need weather"));
        assert_eq!((p.content.as_str(), p.tool_calls.len()), ("", 1));
    }
}
