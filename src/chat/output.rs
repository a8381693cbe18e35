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
    let starts_inside = started_in_think || matches!((open, close), (None, Some(_))) || matches!((open, close), (Some(o), Some(c)) if c < o);
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

    #[test]
    fn reasoning_then_tool_call() {
        let text = "<think>\nneed weather\n</think>\n\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>";
        let p = parse_output(text, false);
        assert_eq!(p.reasoning.as_deref(), Some("need weather"));
        assert_eq!((p.content.as_str(), p.tool_calls.len()), ("", 1));
    }
}
