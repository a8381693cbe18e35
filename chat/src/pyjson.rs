//! Python's text forms of values, so rendered templates match transformers byte for byte:
//! `json.dumps` (the `tojson` filter), `repr(float)`, and `repr` of lists and dicts (what jinja2
//! prints for `{{ value }}`).
//!
//! Everything here works on [`minijinja::Value`], so it sees exactly what a template sees.
//! Plain JSON goes through [`to_jinja`] first.

use std::fmt::Write;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `repr(x)` for a Python float: shortest round-trip digits, fixed notation when the decimal
/// exponent is in [-4, 16), otherwise `d.ddde±XX`.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf".into() } else { "inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives the shortest digits that round-trip, e.g. "-1.2345e-5" or "1e16".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    }
    out
}

/// How `json.dumps` lays out its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonStyle {
    /// Escape every non-ASCII character as `\uXXXX` (Python's default; transformers passes false).
    pub ensure_ascii: bool,
    /// `None` for one line; otherwise the string repeated once per nesting level.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for JsonStyle {
    /// `json.dumps(x, ensure_ascii=False)`: `", "` and `": "`, one line.
    fn default() -> Self {
        Self { ensure_ascii: false, indent: None, item_separator: ", ".into(), key_separator: ": ".into(), sort_keys: false }
    }
}

impl JsonStyle {
    /// Python's defaults for a given indent: with an indent the item separator loses its space.
    pub fn with_indent(indent: Option<String>) -> Self {
        let item_separator = if indent.is_some() { "," } else { ", " };
        Self { indent, item_separator: item_separator.into(), ..Self::default() }
    }
}

/// `json.dumps(value, ...)` of a template value.
pub fn dumps(value: &Value, style: &JsonStyle) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, style, 0)?;
    Ok(out)
}

/// `json.dumps(value, ensure_ascii=False)` of plain JSON, the way transformers' `tojson` writes
/// it. Never fails: every JSON value is serialisable.
pub fn dumps_json(value: &serde_json::Value) -> String {
    dumps(&to_jinja(value), &JsonStyle::default()).unwrap_or_default()
}

fn not_serializable(kind: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("Object of type {kind} is not JSON serializable"))
}

fn write_json(out: &mut String, value: &Value, style: &JsonStyle, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value, true),
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), style, depth, |out, i| write_json(out, &items[i], style, depth + 1))?;
        }
        ValueKind::Map => {
            let mut pairs = map_pairs(value)?;
            if style.sort_keys {
                let mut keyed = pairs.into_iter().map(|(k, v)| Ok((json_key(&k)?, v))).collect::<Result<Vec<_>, Error>>()?;
                keyed.sort_by(|a, b| a.0.cmp(&b.0));
                pairs = keyed.into_iter().map(|(k, v)| (Value::from(k), v)).collect();
            }
            write_container(out, '{', '}', pairs.len(), style, depth, |out, i| {
                let (key, item) = &pairs[i];
                write_json_str(out, &json_key(key)?, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_json(out, item, style, depth + 1)
            })?;
        }
        ValueKind::Undefined => return Err(not_serializable("Undefined")),
        other => return Err(not_serializable(&other.to_string())),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..=depth {
                out.push_str(indent);
            }
        }
        item(out, i)?;
    }
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
    out.push(close);
    Ok(())
}

/// Key and value pairs of a map in its own order.
fn map_pairs(value: &Value) -> Result<Vec<(Value, Value)>, Error> {
    match value.as_object().and_then(|o| o.try_iter_pairs()) {
        Some(iter) => Ok(iter.collect()),
        None => Err(not_serializable("map")),
    }
}

/// Python converts str, int, float, bool and None keys; anything else is a TypeError.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_string(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key, true);
            s
        }
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).into(),
        ValueKind::None => "null".into(),
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {other}"),
            ))
        }
    })
}

/// Integers as decimal, floats as Python `repr` (`json` spells the non-finite ones differently).
fn write_number(out: &mut String, value: &Value, json: bool) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let x = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if json && !x.is_finite() {
        out.push_str(if x.is_nan() {
            "NaN"
        } else if x > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
    } else {
        out.push_str(&float_repr(x));
    }
}

/// A JSON string literal as Python writes it.
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// What jinja2 prints for `{{ value }}` when the value is a list, dict, tuple or float: Python's
/// `str()`, which is `repr()` for containers.
pub fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => py_repr(value),
    }
}

/// Python's `repr()` of a template value.
pub fn py_repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Number => write_number(out, value, false),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        ValueKind::Seq if value.as_object().is_some() => {
            let items: Vec<Value> = value.try_iter().map(|i| i.collect()).unwrap_or_default();
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            if tuple && items.len() == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map if !value.is_kwargs() => match map_pairs(value) {
            Ok(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, k);
                    out.push_str(": ");
                    write_repr(out, v);
                }
                out.push('}');
            }
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        },
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; non-printable
/// characters as `\xNN`, `\uNNNN` or `\UNNNNNNNN`.
fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let n = c as u32;
                let _ = match n {
                    0..=0xff => write!(out, "\\x{n:02x}"),
                    0x100..=0xffff => write!(out, "\\u{n:04x}"),
                    _ => write!(out, "\\U{n:08x}"),
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character: false for controls (Cc), format characters
/// (Cf), separators other than the space (Zs, Zl, Zp) and private use (Co). Unassigned code
/// points (Cn) are not tracked and count as printable.
fn is_printable(c: char) -> bool {
    let n = c as u32;
    !matches!(n,
        0..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x1680 | 0x180e
        | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064 | 0x2066..=0x206f | 0x3000
        | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a
        | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..=0x10ffff)
}

/// A JSON object as a template map that keeps its key order (minijinja's own maps are sorted
/// unless its `preserve_order` feature is on, and Python dicts keep insertion order).
#[derive(Debug)]
struct OrderedMap {
    keys: Vec<Value>,
    values: Vec<Value>,
}

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.keys.iter().position(|k| k.as_str() == Some(key)).map(|i| self.values[i].clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let this = self.clone();
        Enumerator::KeyValueIter(Box::new((0..this.keys.len()).map(move |i| (this.keys[i].clone(), this.values[i].clone()))))
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.keys.len())
    }
}

/// Plain JSON as a template value: objects keep their key order, integers stay integers and
/// floats stay floats (`1.0` prints as `1.0`).
pub fn to_jinja(value: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::from(items.iter().map(to_jinja).collect::<Vec<_>>()),
        J::Object(map) => Value::from_object(OrderedMap {
            keys: map.keys().map(|k| Value::from(k.as_str())).collect(),
            values: map.values().map(to_jinja).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (1e-7, "1e-07"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.1, "0.1"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2.5, "2.5"),
            (-0.0, "-0.0"),
            (123456789.0, "123456789.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (-3.25e-10, "-3.25e-10"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:e}");
        }
    }

    #[test]
    fn dumps_like_python_json() {
        let v = json!({"z": 1, "a": [1.0, 1e-7, 0.1, -2, true, null], "中文": "北京 \"q\" \\ \n\t\u{1}", "nested": {"b": {}, "a": []}});
        assert_eq!(
            dumps_json(&v),
            r#"{"z": 1, "a": [1.0, 1e-07, 0.1, -2, true, null], "中文": "北京 \"q\" \\ \n\t\u0001", "nested": {"b": {}, "a": []}}"#
        );
        // No HTML escaping, unlike minijinja's builtin.
        assert_eq!(dumps_json(&json!("<a> & 'b'")), r#""<a> & 'b'""#);
        assert_eq!(dumps_json(&json!(u64::MAX)), "18446744073709551615");
    }

    #[test]
    fn dumps_styles() {
        let v = to_jinja(&json!({"b": [1, 2], "a": {}, "é": "😀"}));
        let indented = dumps(&v, &JsonStyle::with_indent(Some("  ".into()))).unwrap();
        assert_eq!(indented, "{\n  \"b\": [\n    1,\n    2\n  ],\n  \"a\": {},\n  \"é\": \"😀\"\n}");
        let ascii = JsonStyle { ensure_ascii: true, sort_keys: true, ..JsonStyle::default() };
        assert_eq!(dumps(&v, &ascii).unwrap(), r#"{"a": {}, "b": [1, 2], "\u00e9": "\ud83d\ude00"}"#);
        let compact = JsonStyle { item_separator: ",".into(), key_separator: ":".into(), ..JsonStyle::default() };
        assert_eq!(dumps(&v, &compact).unwrap(), r#"{"b":[1,2],"a":{},"é":"😀"}"#);
        assert!(dumps(&Value::UNDEFINED, &JsonStyle::default()).is_err());
    }

    #[test]
    fn repr_like_python() {
        let v = to_jinja(&json!({"a": [1, "x", null, true, 1e-5], "b": "it's"}));
        assert_eq!(py_repr(&v), r#"{'a': [1, 'x', None, True, 1e-05], 'b': "it's"}"#);
        let s = to_jinja(&json!(["a'b\"c", "\\\n\t", "\u{7}\u{200d}é😀\u{85}"]));
        assert_eq!(py_repr(&s), r#"['a\'b"c', '\\\n\t', '\x07\u200dé😀\x85']"#);
        assert_eq!(py_str(&Value::from("plain")), "plain");
    }
}
