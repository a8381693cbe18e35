//! Pure helpers behind `mm template render` and `mm tokenize`; the argument parsing and
//! printing live in `src/cli`.

use std::fmt::Write;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value as Json};

use super::{ChatTemplate, RenderRequest, Tokenizer};

/// A conversation read from the command line or a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub messages: Json,
    pub tools: Option<Json>,
    /// `chat_template_kwargs` of an OpenAI-style request.
    pub kwargs: Map<String, Json>,
}

/// Reads a conversation from JSON: either an array of messages or an OpenAI-style request
/// object with `messages` and optional `tools` and `chat_template_kwargs`.
pub fn parse_conversation(text: &str) -> Result<Conversation> {
    let value: Json = serde_json::from_str(text).context("messages are not valid JSON")?;
    match value {
        Json::Array(_) => Ok(Conversation { messages: value, ..Default::default() }),
        Json::Object(mut obj) => {
            let messages = obj.remove("messages").context("expected a JSON array of messages or an object with \"messages\"")?;
            if !messages.is_array() {
                bail!("\"messages\" must be an array");
            }
            let tools = obj.remove("tools").filter(|t| !t.is_null());
            let kwargs = match obj.remove("chat_template_kwargs") {
                Some(Json::Object(k)) => k,
                None | Some(Json::Null) => Map::new(),
                Some(_) => bail!("\"chat_template_kwargs\" must be an object"),
            };
            Ok(Conversation { messages, tools, kwargs })
        }
        _ => bail!("expected a JSON array of messages or an object with \"messages\""),
    }
}

/// Reads tools given separately: a JSON array of tool definitions.
pub fn parse_tools(text: &str) -> Result<Json> {
    let tools: Json = serde_json::from_str(text).context("tools are not valid JSON")?;
    if !tools.is_array() {
        bail!("tools must be a JSON array");
    }
    Ok(tools)
}

/// `key=value` → (key, value): the value is JSON when it parses (`false`, `3`, `{"a":1}`),
/// otherwise the plain string.
pub fn parse_kwarg(arg: &str) -> Result<(String, Json)> {
    let (key, value) = arg.split_once('=').with_context(|| format!("expected key=value, got {arg:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("empty kwarg name in {arg:?}");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// How to render.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// Thinking on/off, passed under whichever kwarg the template reads.
    pub thinking: Option<bool>,
    /// Extra kwargs (`--kwarg key=value`); they win over `thinking` and the conversation's.
    pub kwargs: Map<String, Json>,
    pub template_name: Option<String>,
}

/// The prompt text and, when a tokenizer is given, its ids (without added special tokens, as
/// transformers tokenizes chat prompts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub ids: Option<Vec<u32>>,
}

/// The render request for a conversation and options.
pub fn build_request(template: &ChatTemplate, conv: &Conversation, opts: &RenderOptions) -> RenderRequest {
    let mut req = RenderRequest::new(conv.messages.clone());
    req.tools = conv.tools.clone();
    req.add_generation_prompt = opts.add_generation_prompt;
    req.continue_final_message = opts.continue_final_message;
    req.template_name = opts.template_name.clone();
    req.extra = conv.kwargs.clone();
    if let Some(on) = opts.thinking {
        req.extra.extend(template.thinking_kwargs(on));
    }
    req.extra.extend(opts.kwargs.clone());
    req
}

pub fn render(
    template: &ChatTemplate,
    tokenizer: Option<&Tokenizer>,
    conv: &Conversation,
    opts: &RenderOptions,
) -> Result<Rendered> {
    let text = template.render(&build_request(template, conv, opts))?;
    let ids = tokenizer.map(|t| t.encode(&text, false)).transpose()?;
    Ok(Rendered { text, ids })
}

/// One token of a tokenized text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPiece {
    pub id: u32,
    /// The vocabulary entry (byte-level BPE shows `Ġ` for a space).
    pub token: String,
    /// What the token decodes to on its own (may be part of a character).
    pub text: String,
    pub special: bool,
}

pub fn tokenize(tokenizer: &Tokenizer, text: &str, add_special_tokens: bool) -> Result<Vec<TokenPiece>> {
    tokenizer
        .encode(text, add_special_tokens)?
        .into_iter()
        .map(|id| {
            Ok(TokenPiece {
                id,
                token: tokenizer.id_to_token(id).unwrap_or_default(),
                text: tokenizer.decode(&[id], false)?,
                special: tokenizer.is_special(id),
            })
        })
        .collect()
}

/// One line per token: `index  id  token  text` with the text shown as a JSON string.
pub fn format_pieces(pieces: &[TokenPiece]) -> String {
    let mut out = String::new();
    for (i, p) in pieces.iter().enumerate() {
        let mark = if p.special { " (special)" } else { "" };
        let _ = writeln!(out, "{i:>5} {:>7}  {:<16} {}{mark}", p.id, p.token, Json::String(p.text.clone()));
    }
    out
}

/// Parses ids given as a JSON array (`[1, 2]`) or separated by spaces/commas (`1 2,3`).
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    let text = text.trim();
    if text.starts_with('[') {
        return serde_json::from_str(text).context("ids must be a JSON array of non-negative integers");
    }
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().with_context(|| format!("not a token id: {s:?}")))
        .collect()
}

/// Checks that every id is inside the vocabulary.
pub fn check_ids(tokenizer: &Tokenizer, ids: &[u32]) -> Result<()> {
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary (size {vocab})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversations_and_kwargs() {
        let c = parse_conversation(r#"[{"role": "user", "content": "hi"}]"#).unwrap();
        assert_eq!(c.messages[0]["content"], "hi");
        let c = parse_conversation(
            r#"{"messages": [], "tools": [{"type": "function"}], "chat_template_kwargs": {"enable_thinking": false}}"#,
        )
        .unwrap();
        assert_eq!(c.tools, Some(json!([{"type": "function"}])));
        assert_eq!(c.kwargs["enable_thinking"], json!(false));
        assert!(parse_conversation("{\"x\": 1}").is_err());
        assert_eq!(parse_kwarg("enable_thinking=false").unwrap(), ("enable_thinking".into(), json!(false)));
        assert_eq!(parse_kwarg("name=Mind").unwrap(), ("name".into(), json!("Mind")));
        assert!(parse_kwarg("novalue").is_err());
        assert_eq!(parse_ids("[1, 2]").unwrap(), vec![1, 2]);
        assert_eq!(parse_ids(" 1 2,3 ").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1 x").is_err());
    }

    #[test]
    fn render_with_thinking_and_kwargs() {
        let t = ChatTemplate::new("{{ messages|length }}{% if open_thinking %}T{% endif %}{{ name }}").unwrap();
        let conv = parse_conversation("[{\"role\": \"user\", \"content\": \"hi\"}]").unwrap();
        let mut opts = RenderOptions { thinking: Some(true), ..Default::default() };
        opts.kwargs.insert("name".into(), json!("x"));
        let r = render(&t, None, &conv, &opts).unwrap();
        assert_eq!(r, Rendered { text: "1Tx".into(), ids: None });
    }
}
