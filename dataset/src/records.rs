//! The fields each upstream format reads, checked up front so a bad line is reported with its
//! line number instead of failing (or, worse, rendering as empty text) later.

use serde_json::Value;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn object(v: &Value) -> Result<&serde_json::Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("expected a JSON object, found {}", kind(v)))
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    object(v)?.get(key).ok_or_else(|| format!("missing field \"{key}\""))
}

/// Python truthiness of a JSON value (`if x:`).
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Pretrain: `{"text": "…"}`. Upstream calls `str()` on any value; only strings are taken here.
pub(crate) fn pretrain_text(v: &Value) -> Result<&str, String> {
    let text = field(v, "text")?;
    text.as_str().ok_or_else(|| format!("field \"text\" must be a string, found {}", kind(text)))
}

/// A chat (`conversations`, `chosen`, `rejected`): a non-empty array of message objects, each
/// with a string `role` and a string `content` (null or absent only when the message has
/// `tool_calls`). Upstream's template renders a non-string content as empty text; that is
/// treated as a bad line here.
pub(crate) fn messages<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    let list = field(v, key)?;
    let list = list.as_array().ok_or_else(|| format!("field \"{key}\" must be an array, found {}", kind(list)))?;
    if list.is_empty() {
        return Err(format!("field \"{key}\" is empty"));
    }
    for (i, m) in list.iter().enumerate() {
        let m = m.as_object().ok_or_else(|| format!("{key}[{i}] must be an object, found {}", kind(m)))?;
        match m.get("role") {
            Some(Value::String(_)) => {}
            Some(other) => return Err(format!("{key}[{i}].role must be a string, found {}", kind(other))),
            None => return Err(format!("{key}[{i}] is missing field \"role\"")),
        }
        let has_tool_calls = m.get("tool_calls").is_some_and(truthy);
        match m.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Null) | None if has_tool_calls => {}
            Some(other) => return Err(format!("{key}[{i}].content must be a string, found {}", kind(other))),
            None => return Err(format!("{key}[{i}] is missing field \"content\"")),
        }
    }
    Ok(list)
}

/// SFT: `{"conversations": [...]}`; the tools are the first message's `functions` when that
/// message is a system message and `functions` is truthy (upstream's rule). They must then be
/// an array of tool definitions.
pub(crate) fn sft(v: &Value) -> Result<(&Vec<Value>, Option<&Value>), String> {
    let list = messages(v, "conversations")?;
    let first = &list[0];
    let tools = if first.get("role").and_then(Value::as_str) == Some("system") {
        first.get("functions").filter(|f| truthy(f))
    } else {
        None
    };
    if let Some(tools) = tools {
        if !tools.is_array() {
            return Err(format!("conversations[0].functions must be an array of tools, found {}", kind(tools)));
        }
    }
    Ok((list, tools))
}

/// DPO: `{"chosen": [...], "rejected": [...]}`.
pub(crate) fn dpo(v: &Value) -> Result<(&Vec<Value>, &Vec<Value>), String> {
    Ok((messages(v, "chosen")?, messages(v, "rejected")?))
}

/// RLAIF: `{"conversations": [...]}`; only each turn's `content` is read (a string). The roles
/// are reassigned by position, and the last turn is the answer, so at least two turns are
/// needed (upstream fails rendering an empty prompt).
pub(crate) fn rlaif(v: &Value) -> Result<Vec<&str>, String> {
    let list = field(v, "conversations")?;
    let list = list.as_array().ok_or_else(|| format!("field \"conversations\" must be an array, found {}", kind(list)))?;
    if list.len() < 2 {
        return Err(format!(
            "field \"conversations\" needs at least 2 turns (a prompt and an answer), found {}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, turn)| {
            let content = field(turn, "content").map_err(|e| format!("conversations[{i}]: {e}"))?;
            content.as_str().ok_or_else(|| format!("conversations[{i}].content must be a string, found {}", kind(content)))
        })
        .collect()
}

pub(crate) fn validate_pretrain(v: &Value) -> Result<(), String> {
    pretrain_text(v).map(drop)
}

pub(crate) fn validate_sft(v: &Value) -> Result<(), String> {
    sft(v).map(drop)
}

pub(crate) fn validate_dpo(v: &Value) -> Result<(), String> {
    dpo(v).map(drop)
}

pub(crate) fn validate_rlaif(v: &Value) -> Result<(), String> {
    rlaif(v).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_errors() {
        let err = |v: Value| sft(&v).unwrap_err();
        assert_eq!(err(json!({"text": "x"})), "missing field \"conversations\"");
        assert_eq!(err(json!({"conversations": "hi"})), "field \"conversations\" must be an array, found a string");
        assert_eq!(err(json!({"conversations": []})), "field \"conversations\" is empty");
        assert_eq!(err(json!({"conversations": [{"content": "x"}]})), "conversations[0] is missing field \"role\"");
        assert_eq!(
            err(json!({"conversations": [{"role": "user", "content": 3}]})),
            "conversations[0].content must be a string, found a number"
        );
        assert_eq!(err(json!({"conversations": [{"role": "user"}]})), "conversations[0] is missing field \"content\"");
        assert_eq!(
            err(json!({"conversations": [{"role": "system", "content": "", "functions": {"name": "f"}}]})),
            "conversations[0].functions must be an array of tools, found an object"
        );
        assert_eq!(err(json!([1])), "expected a JSON object, found an array");
        // a tool-call message may have null content
        let ok = json!({"conversations": [{"role": "assistant", "content": null, "tool_calls": [{"name": "f"}]}]});
        assert!(sft(&ok).is_ok());
    }

    #[test]
    fn sft_tools_rule() {
        let v = json!({"conversations": [{"role": "system", "content": "s", "functions": [{"name": "f"}]}, {"role": "user", "content": "u"}]});
        assert_eq!(sft(&v).unwrap().1, Some(&json!([{"name": "f"}])));
        // empty functions are falsy: no tools
        let v = json!({"conversations": [{"role": "system", "content": "s", "functions": []}]});
        assert_eq!(sft(&v).unwrap().1, None);
        // functions on a non-system first message are ignored
        let v = json!({"conversations": [{"role": "user", "content": "s", "functions": [{"name": "f"}]}]});
        assert_eq!(sft(&v).unwrap().1, None);
    }

    #[test]
    fn rlaif_rules() {
        assert_eq!(rlaif(&json!({"conversations": [{"role": "user", "content": "q"}, {"content": "a"}]})).unwrap(), vec!["q", "a"]);
        assert!(rlaif(&json!({"conversations": [{"role": "user", "content": "q"}]})).unwrap_err().contains("at least 2"));
        assert_eq!(
            rlaif(&json!({"conversations": [{"role": "user"}, {"content": "a"}]})).unwrap_err(),
            "conversations[0]: missing field \"content\""
        );
    }

    #[test]
    fn pretrain_rules() {
        assert_eq!(pretrain_text(&json!({"text": "a"})).unwrap(), "a");
        assert_eq!(pretrain_text(&json!({"text": 5})).unwrap_err(), "field \"text\" must be a string, found a number");
        assert_eq!(pretrain_text(&json!({"txt": 5})).unwrap_err(), "missing field \"text\"");
        assert_eq!(pretrain_text(&json!("a")).unwrap_err(), "expected a JSON object, found a string");
    }
}
