//! Modelfiles: writing one, and reading one the way ollama's parser (parser/parser.go) does:
//! one `INSTRUCTION value` per line, `#` comments, values unquoted, `"…"` or `"""…"""` (no
//! escapes), runes that Go's `strconv.IsPrint` rejects dropped (spaces, tabs and newlines
//! kept), PARAMETER values typed as `api.Options` fields.

use anyhow::{bail, Result};

/// Instructions ollama accepts (case-insensitive).
pub const INSTRUCTIONS: [&str; 11] =
    ["from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", "requires"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Float,
    Int,
    Bool,
    /// `stop`: each line adds one string.
    StringList,
}

/// `api.Options` JSON names and their types (ollama 2026-08).
pub fn param_type(name: &str) -> Option<ParamType> {
    Some(match name {
        "temperature" | "top_p" | "min_p" | "typical_p" | "repeat_penalty" | "presence_penalty" | "frequency_penalty" => {
            ParamType::Float
        }
        "num_ctx" | "num_keep" | "seed" | "num_predict" | "top_k" | "repeat_last_n" | "num_batch" | "num_gpu"
        | "num_thread" | "draft_num_predict" | "main_gpu" => ParamType::Int,
        "use_mmap" => ParamType::Bool,
        "stop" => ParamType::StringList,
        _ => return None,
    })
}

/// Parameters ollama ignores with a warning.
pub const DEPRECATED_PARAMS: [&str; 9] = [
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
];

#[derive(Debug)]
pub enum ParamCheck {
    Ok(ParamType),
    Deprecated,
}

/// Checks one PARAMETER as ollama's `FormatParams` does (Go's `ParseFloat(s, 32)`,
/// `ParseInt(s, 10, 64)`, `ParseBool`), with its error wording.
pub fn check_param(name: &str, value: &str) -> Result<ParamCheck> {
    if DEPRECATED_PARAMS.contains(&name) {
        return Ok(ParamCheck::Deprecated);
    }
    let Some(ty) = param_type(name) else {
        bail!("unknown parameter '{name}'");
    };
    match ty {
        ParamType::Float => {
            let ok = go_parse_float32(value);
            if !ok {
                bail!("invalid float value [{value}] for '{name}'");
            }
        }
        ParamType::Int => {
            let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || value.parse::<i64>().is_err() {
                bail!("invalid int value [{value}] for '{name}'");
            }
        }
        ParamType::Bool => {
            if !matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True" | "0" | "f" | "F" | "FALSE" | "false" | "False") {
                bail!("invalid bool value [{value}] for '{name}'");
            }
        }
        ParamType::StringList => {}
    }
    Ok(ParamCheck::Ok(ty))
}

fn go_parse_float32(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let body = lower.strip_prefix(['+', '-']).unwrap_or(&lower);
    if matches!(body, "inf" | "infinity" | "nan") {
        return true;
    }
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-')) {
        return false;
    }
    match s.parse::<f64>() {
        Ok(v) => v.abs() <= f32::MAX as f64,
        Err(_) => false,
    }
}

/// One instruction as ollama's parser produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Lower-case instruction (`from`, `template`, …), or the parameter name for PARAMETER.
    pub name: String,
    /// Whether this came from a PARAMETER line.
    pub is_parameter: bool,
    /// The value, unquoted; MESSAGE values are `role: text`.
    pub args: String,
    /// The value as written (quotes included).
    pub raw: String,
    /// Line where the instruction starts.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Nil,
    Name,
    Value,
    Parameter,
    Message,
    Comment,
}

/// Go's `strconv.IsPrint` (letters, marks, numbers, punctuation, symbols and ASCII space),
/// for the runes a Modelfile is likely to hold: controls, format characters, separators
/// other than the ASCII space and private-use characters are not printable.
pub fn go_is_print(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() {
        return false;
    }
    let format = matches!(u, 0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F);
    let space = matches!(u, 0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029 | 0x202F | 0x205F | 0x3000);
    let private = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    let noncharacter = matches!(u, 0xFFFE | 0xFFFF) || (u & 0xFFFE) == 0xFFFE;
    !(format || space || private || noncharacter)
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// ollama's `unquote`.
fn unquote(s: &str) -> Option<&str> {
    if s.starts_with("\"\"\"") {
        if s.len() >= 6 && s.ends_with("\"\"\"") {
            return Some(&s[3..s.len() - 3]);
        }
        return None;
    }
    if s.starts_with('"') {
        if s.len() >= 2 && s.ends_with('"') {
            return Some(&s[1..s.len() - 1]);
        }
        return None;
    }
    Some(s)
}

/// Parses a Modelfile as ollama does. Also returns the raw value text of each command
/// (with the runes ollama drops), for the non-printable check.
pub fn parse(text: &str) -> Result<Vec<Command>, ParseError> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut commands = Vec::new();
    let mut state = State::Nil;
    let mut buf = String::new();
    let mut raw = String::new();
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut name = String::new();
    let mut is_parameter = false;
    let mut role = String::new();
    let invalid_command = "command must be one of \"from\", \"license\", \"template\", \"system\", \"adapter\", \"draft\", \"renderer\", \"parser\", \"parameter\", \"message\", or \"requires\"";

    for c in text.chars() {
        if is_newline(c) {
            line += 1;
        }
        // parseRuneForState
        let (next, keep) = match state {
            State::Nil => {
                if c == '#' {
                    (State::Comment, false)
                } else if is_space(c) || is_newline(c) {
                    (State::Nil, false)
                } else {
                    start_line = line;
                    (State::Name, true)
                }
            }
            State::Name => {
                if c.is_ascii_alphabetic() {
                    (State::Name, true)
                } else if is_space(c) {
                    (State::Value, false)
                } else {
                    return Err(ParseError { line, message: invalid_command.into() });
                }
            }
            State::Value => {
                if is_newline(c) || is_space(c) {
                    (State::Nil, true)
                } else {
                    (State::Value, true)
                }
            }
            State::Parameter => {
                if c.is_ascii_alphanumeric() || c == '_' {
                    (State::Parameter, true)
                } else if is_space(c) {
                    (State::Value, false)
                } else {
                    return Err(ParseError { line, message: "unexpected EOF".into() });
                }
            }
            State::Message => {
                if c.is_ascii_alphabetic() {
                    (State::Message, true)
                } else if is_space(c) {
                    (State::Value, false)
                } else {
                    return Err(ParseError { line, message: "unexpected EOF".into() });
                }
            }
            State::Comment => {
                if is_newline(c) {
                    (State::Nil, false)
                } else {
                    (State::Comment, false)
                }
            }
        };
        let mut next = next;
        if next != state {
            match state {
                State::Name => {
                    let lower = buf.to_lowercase();
                    if !INSTRUCTIONS.contains(&lower.as_str()) {
                        return Err(ParseError { line, message: format!("{invalid_command} (got {buf:?})") });
                    }
                    is_parameter = false;
                    match lower.as_str() {
                        "parameter" => {
                            next = State::Parameter;
                            is_parameter = true;
                        }
                        "message" => {
                            next = State::Message;
                            name = lower;
                        }
                        _ => name = lower,
                    }
                }
                State::Parameter => name = buf.clone(),
                State::Message => {
                    if !matches!(buf.as_str(), "system" | "user" | "assistant") {
                        return Err(ParseError {
                            line,
                            message: "message role must be one of \"system\", \"user\", or \"assistant\"".into(),
                        });
                    }
                    role = buf.clone();
                }
                State::Value => {
                    let trimmed = buf.trim();
                    match unquote(trimmed) {
                        Some(s) if !is_space(c) => {
                            let mut args = s.to_string();
                            if !role.is_empty() {
                                args = format!("{role}: {args}");
                                role.clear();
                            }
                            commands.push(Command {
                                name: name.clone(),
                                is_parameter,
                                args,
                                raw: raw.trim().to_string(),
                                line: start_line,
                            });
                        }
                        _ => {
                            buf.push(c);
                            raw.push(c);
                            continue;
                        }
                    }
                }
                State::Nil | State::Comment => {}
            }
            buf.clear();
            raw.clear();
            state = next;
        }
        if keep || matches!(state, State::Value) {
            raw.push(c);
        }
        if keep && go_is_print(c) {
            buf.push(c);
        }
    }
    match state {
        State::Nil | State::Comment => {}
        State::Value => {
            let Some(s) = unquote(buf.trim()) else {
                return Err(ParseError { line: start_line, message: "unexpected EOF: unterminated quoted value".into() });
            };
            let mut args = s.to_string();
            if !role.is_empty() {
                args = format!("{role}: {args}");
            }
            commands.push(Command { name, is_parameter, args, raw: raw.trim().to_string(), line: start_line });
        }
        _ => return Err(ParseError { line, message: "unexpected EOF: instruction without a value".into() }),
    }
    if !commands.iter().any(|c| c.name == "from" && !c.is_parameter) {
        return Err(ParseError { line: 0, message: "no FROM line".into() });
    }
    Ok(commands)
}

/// A value written so that ollama reads back exactly `s`: bare when that is unambiguous,
/// else `"…"`, else `"""…"""`. Fails for what no form can hold.
pub fn quote(s: &str) -> Result<String> {
    if s.contains("\"\"\"") {
        bail!("{s:?} contains \"\"\", which a Modelfile value cannot hold");
    }
    if let Some(c) = s.chars().find(|&c| !go_is_print(c) && !matches!(c, '\n' | '\t' | '\r')) {
        bail!("{s:?} contains {c:?}, which ollama's Modelfile parser drops");
    }
    let bare_ok = !s.is_empty()
        && !s.contains(['\n', '\r'])
        && s.trim() == s
        && !s.starts_with('"')
        && !s.starts_with('#');
    if bare_ok {
        return Ok(s.to_string());
    }
    if !s.contains(['\n', '\r', '"']) {
        return Ok(format!("\"{s}\""));
    }
    Ok(format!("\"\"\"{s}\"\"\""))
}

/// A value always quoted: `"…"`, or `"""…"""` when it holds a quote or a newline.
pub fn quote_always(s: &str) -> Result<String> {
    let q = quote(s)?;
    Ok(if q.starts_with('"') { q } else if s.contains('"') { format!("\"\"\"{s}\"\"\"") } else { format!("\"{s}\"") })
}

/// What goes into a Modelfile.
#[derive(Debug, Clone, Default)]
pub struct Modelfile {
    /// Comment lines at the top (without `# `).
    pub comments: Vec<String>,
    pub from: String,
    pub template: Option<String>,
    pub system: Option<String>,
    /// `(name, value)`, stops included, in order.
    pub parameters: Vec<(String, String)>,
    pub license: Option<String>,
}

impl Modelfile {
    pub fn render(&self) -> Result<String> {
        let mut out = String::new();
        for c in &self.comments {
            out.push_str(&format!("# {c}\n"));
        }
        out.push_str(&format!("FROM {}\n", quote(&self.from)?));
        if let Some(t) = &self.template {
            if t.contains("\"\"\"") {
                bail!("the TEMPLATE contains \"\"\", which a Modelfile cannot hold");
            }
            out.push_str(&format!("TEMPLATE \"\"\"{t}\"\"\"\n"));
        }
        if let Some(s) = &self.system {
            out.push_str(&format!("SYSTEM {}\n", quote_always(s)?));
        }
        for (name, value) in &self.parameters {
            check_param(name, value)?;
            let v = if name == "stop" { quote_always(value)? } else { value.clone() };
            out.push_str(&format!("PARAMETER {name} {v}\n"));
        }
        if let Some(l) = &self.license {
            out.push_str(&format!("LICENSE {}\n", quote_always(l)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_forms_like_ollama() {
        let text = "# c\nFROM ./m.gguf\nTEMPLATE \"\"\"a\n  {{ .Prompt }}\n\"\"\"\nPARAMETER stop \"<|im_end|>\"\nSYSTEM You are \"x\"\nMESSAGE user hi there\n";
        let cmds = parse(text).unwrap();
        let got: Vec<(&str, &str, usize)> = cmds.iter().map(|c| (c.name.as_str(), c.args.as_str(), c.line)).collect();
        assert_eq!(
            got,
            vec![
                ("from", "./m.gguf", 2),
                ("template", "a\n  {{ .Prompt }}\n", 3),
                ("stop", "<|im_end|>", 6),
                ("system", "You are \"x\"", 7),
                ("message", "user: hi there", 8),
            ]
        );
    }

    #[test]
    fn rejects_what_ollama_rejects() {
        assert!(parse("TEMPLATE x\n").unwrap_err().message.contains("no FROM"));
        assert!(parse("FROM x\nFOO bar\n").unwrap_err().message.contains("command must be one of"));
        assert!(parse("FROM x\nMESSAGE tool hi\n").unwrap_err().message.contains("message role"));
        assert!(parse("FROM x\nSYSTEM \"\"\"open\n").unwrap_err().message.contains("unexpected EOF"));
        assert!(check_param("temperature", "hot").is_err());
        assert!(check_param("top_k", "40.5").is_err());
        assert!(check_param("num_gpu_layers", "1").unwrap_err().to_string().contains("unknown parameter"));
        assert!(matches!(check_param("mirostat", "1").unwrap(), ParamCheck::Deprecated));
        assert!(matches!(check_param("use_mmap", "true").unwrap(), ParamCheck::Ok(ParamType::Bool)));
    }

    #[test]
    fn drops_non_printable_runes_like_ollama() {
        let cmds = parse("FROM x\nSYSTEM \"a\u{200D}b\"\n").unwrap();
        assert_eq!(cmds[1].args, "ab");
        assert!(cmds[1].raw.contains('\u{200D}'));
    }
}
