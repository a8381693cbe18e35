//! Go values as a template sees them: the basic kinds, slices, maps and structs of named
//! types (whose `String()` and `MarshalJSON()` methods change how they print), with Go's
//! truth, `fmt` printing and `encoding/json` rules.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::rc::Rc;

/// A named Go type: its name (for messages), its struct fields, and the methods that matter.
pub struct GoType {
    /// As Go spells it in messages, e.g. `template.templateTool`.
    pub name: &'static str,
    /// Struct fields, in declaration order (empty for other kinds).
    pub fields: &'static [Field],
    /// A `String() string` method: used when the value is printed.
    pub stringer: Option<fn(&Value) -> String>,
    /// A `MarshalJSON` method: used by `encoding/json`.
    pub marshal_json: Option<fn(&Value) -> String>,
    /// The zero value of a map's element type (what a missing key gives with `missingkey=zero`).
    pub elem_zero: fn() -> Value,
}

pub struct Field {
    pub name: &'static str,
    /// The JSON key; `None` for fields that `encoding/json` skips.
    pub json: Option<&'static str>,
    pub omitempty: bool,
}

impl std::fmt::Debug for GoType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

fn invalid() -> Value {
    Value::Invalid
}

/// `[]interface {}` (JSON arrays).
pub static ANY_SLICE: GoType =
    GoType { name: "[]interface {}", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
/// `map[string]interface {}` (JSON objects, and the data ollama executes templates on).
pub static ANY_MAP: GoType =
    GoType { name: "map[string]interface {}", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };
pub static STRING_SLICE: GoType =
    GoType { name: "[]string", fields: &[], stringer: None, marshal_json: None, elem_zero: invalid };

#[derive(Debug, Clone)]
pub enum Value {
    /// No value: Go's invalid `reflect.Value`, e.g. a nil interface. Prints `<no value>`.
    Invalid,
    /// A nil pointer of the named type.
    NilPtr(&'static GoType),
    Bool(bool),
    Int(i64),
    /// A `uint8` (what `index` gives for a string).
    Byte(u8),
    Float(f64),
    Str(Rc<str>),
    List(Rc<List>),
    Map(Rc<Map>),
    Struct(Rc<Struct>),
}

#[derive(Debug)]
pub struct List {
    pub ty: &'static GoType,
    pub items: Vec<Value>,
    /// A nil slice (prints `[]`, marshals as `null`).
    pub is_nil: bool,
}

#[derive(Debug)]
pub struct Map {
    pub ty: &'static GoType,
    pub entries: BTreeMap<String, Value>,
    pub is_nil: bool,
}

#[derive(Debug)]
pub struct Struct {
    pub ty: &'static GoType,
    /// One value per `ty.fields` entry.
    pub fields: Vec<Value>,
    /// Held through a pointer (`*T`).
    pub pointer: bool,
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Self {
        Value::Str(s.into())
    }

    pub fn list(ty: &'static GoType, items: Vec<Value>) -> Self {
        Value::List(Rc::new(List { ty, items, is_nil: false }))
    }

    pub fn nil_list(ty: &'static GoType) -> Self {
        Value::List(Rc::new(List { ty, items: Vec::new(), is_nil: true }))
    }

    pub fn map(ty: &'static GoType, entries: BTreeMap<String, Value>) -> Self {
        Value::Map(Rc::new(Map { ty, entries, is_nil: false }))
    }

    pub fn nil_map(ty: &'static GoType) -> Self {
        Value::Map(Rc::new(Map { ty, entries: BTreeMap::new(), is_nil: true }))
    }

    pub fn strukt(ty: &'static GoType, fields: Vec<Value>, pointer: bool) -> Self {
        debug_assert_eq!(ty.fields.len(), fields.len(), "{}", ty.name);
        Value::Struct(Rc::new(Struct { ty, fields, pointer }))
    }

    /// A JSON value as Go's `encoding/json` decodes it into `interface{}`.
    pub fn from_json(v: &serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Invalid,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Value::str(s.as_str()),
            serde_json::Value::Array(a) => Value::list(&ANY_SLICE, a.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(o) => {
                Value::map(&ANY_MAP, o.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            }
        }
    }

    pub fn go_type(&self) -> Option<&'static GoType> {
        match self {
            Value::NilPtr(t) => Some(t),
            Value::List(l) => Some(l.ty),
            Value::Map(m) => Some(m.ty),
            Value::Struct(s) => Some(s.ty),
            _ => None,
        }
    }

    /// The type as Go names it in messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::Invalid => "interface {}".into(),
            Value::NilPtr(t) => format!("*{}", t.name),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Byte(_) => "uint8".into(),
            Value::Float(_) => "float64".into(),
            Value::Str(_) => "string".into(),
            Value::List(l) => l.ty.name.into(),
            Value::Map(m) => m.ty.name.into(),
            Value::Struct(s) => format!("{}{}", if s.pointer { "*" } else { "" }, s.ty.name),
        }
    }

    /// Go's template truth: false, 0, nil, and empty strings, slices and maps are false.
    pub fn truth(&self) -> bool {
        match self {
            Value::Invalid | Value::NilPtr(_) => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Byte(b) => *b != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.items.is_empty(),
            Value::Map(m) => !m.entries.is_empty(),
            Value::Struct(_) => true,
        }
    }

    /// A struct field by name.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let Value::Struct(s) = self else { return None };
        s.ty.fields.iter().position(|f| f.name == name).map(|i| &s.fields[i])
    }

    /// Whether printing this value shows a Go struct's fields (`{a b}`) rather than text.
    pub fn prints_go_syntax(&self) -> bool {
        if self.go_type().and_then(|t| t.stringer).is_some() {
            return false;
        }
        match self {
            Value::Struct(_) => true,
            Value::List(l) => l.items.iter().any(Value::prints_go_syntax),
            Value::Map(m) => m.entries.values().any(Value::prints_go_syntax),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// fmt

/// What `{{ . }}` prints: `String()` when the type has one, else `fmt.Print` (`%v`).
pub fn print(v: &Value) -> String {
    if let Value::Invalid = v {
        return "<no value>".into();
    }
    let mut out = String::new();
    fmt_v(v, 0, &mut out);
    out
}

/// `fmt`'s `%v` (`depth` > 0 inside a slice, map or struct).
pub fn fmt_v(v: &Value, depth: usize, out: &mut String) {
    if let Some(stringer) = v.go_type().and_then(|t| t.stringer) {
        if !matches!(v, Value::NilPtr(_)) {
            out.push_str(&stringer(v));
            return;
        }
    }
    match v {
        Value::Invalid | Value::NilPtr(_) => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Byte(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Float(f) => out.push_str(&format_float_g(*f)),
        Value::Str(s) => out.push_str(s),
        Value::List(l) => {
            out.push('[');
            for (i, item) in l.items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                fmt_v(item, depth + 1, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            out.push_str("map[");
            for (i, (k, item)) in m.entries.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                fmt_v(item, depth + 1, out);
            }
            out.push(']');
        }
        Value::Struct(s) => {
            if s.pointer && depth > 0 {
                // fmt prints the address of a pointer inside a composite value.
                out.push_str("0xc000010000");
                return;
            }
            if s.pointer {
                out.push('&');
            }
            out.push('{');
            for (i, f) in s.fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                fmt_v(f, depth + 1, out);
            }
            out.push('}');
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)`, which is what `%v` prints for a float64:
/// shortest round-trip digits, `%e` form when the exponent is < -4 or >= 6 (`1e+06`).
pub fn format_float_g(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let (digits, exp) = shortest_digits(f);
    // exp is the decimal exponent of the first digit (d.ddd × 10^exp).
    if !(-4..6).contains(&exp) {
        format_exp(f.is_sign_negative(), &digits, exp, 2)
    } else {
        format_fixed(f.is_sign_negative(), &digits, exp)
    }
}

/// Shortest round-trip decimal digits (no sign, no leading zeros) and the exponent of the
/// first digit.
fn shortest_digits(f: f64) -> (String, i32) {
    let s = format!("{:e}", f.abs());
    let (mantissa, exp) = s.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    (digits, exp.parse().expect("exponent is an integer"))
}

fn format_exp(neg: bool, digits: &str, exp: i32, min_exp_digits: usize) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:0width$}", exp.unsigned_abs(), width = min_exp_digits);
    out
}

fn format_fixed(neg: bool, digits: &str, exp: i32) -> String {
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// encoding/json

/// `json.Marshal(v)`: compact, map keys sorted, `<` `>` `&` U+2028 U+2029 escaped.
pub fn marshal_json(v: &Value) -> String {
    let mut out = String::new();
    json_into(v, &mut out);
    out
}

fn json_into(v: &Value, out: &mut String) {
    if let Some(m) = v.go_type().and_then(|t| t.marshal_json) {
        out.push_str(&m(v));
        return;
    }
    match v {
        Value::Invalid | Value::NilPtr(_) => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Byte(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Float(f) => out.push_str(&json_float(*f)),
        Value::Str(s) => json_string(s, out),
        Value::List(l) => {
            if l.is_nil {
                out.push_str("null");
                return;
            }
            out.push('[');
            for (i, item) in l.items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_into(item, out);
            }
            out.push(']');
        }
        Value::Map(m) => {
            if m.is_nil {
                out.push_str("null");
                return;
            }
            out.push('{');
            for (i, (k, item)) in m.entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(k, out);
                out.push(':');
                json_into(item, out);
            }
            out.push('}');
        }
        Value::Struct(s) => {
            out.push('{');
            let mut first = true;
            for (def, value) in s.ty.fields.iter().zip(&s.fields) {
                let Some(key) = def.json else { continue };
                if def.omitempty && json_empty(value) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                json_string(key, out);
                out.push(':');
                json_into(value, out);
            }
            out.push('}');
        }
    }
}

/// `omitempty`: false, 0, "", nil, and empty slices and maps (structs never are).
pub fn json_empty(v: &Value) -> bool {
    match v {
        Value::Struct(_) => false,
        other => !other.truth(),
    }
}

/// A float64 as `encoding/json` writes it.
pub fn json_float(f: f64) -> String {
    if !f.is_finite() {
        return "null".into(); // Go returns an error; the template's json then gives ""
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let (digits, exp) = shortest_digits(f);
    let abs = f.abs();
    if !(1e-6..1e21).contains(&abs) {
        format_exp(f.is_sign_negative(), &digits, exp, 1)
    } else {
        format_fixed(f.is_sign_negative(), &digits, exp)
    }
}

/// A JSON string as `encoding/json` writes it (with HTML escaping, as `json.Marshal` does).
pub fn json_string(s: &str, out: &mut String) {
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
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        // fmt.Println and json.Marshal outputs from Go 1.19.
        let cases = [
            (1e6, "1e+06", "1000000"),
            (100000.0, "100000", "100000"),
            (123456789.0, "1.23456789e+08", "123456789"),
            (1e21, "1e+21", "1e+21"),
            (0.0001, "0.0001", "0.0001"),
            (0.00001, "1e-05", "0.00001"),
            (1e-7, "1e-07", "1e-7"),
            (2.5, "2.5", "2.5"),
            (23.0, "23", "23"),
        ];
        for (f, printed, json) in cases {
            assert_eq!(format_float_g(f), printed, "{f}");
            assert_eq!(json_float(f), json, "{f}");
        }
    }

    #[test]
    fn json_strings_escape_html() {
        let mut s = String::new();
        json_string("<a&b>\u{2028}\u{1}", &mut s);
        assert_eq!(s, r#""\u003ca\u0026b\u003e\u2028\u0001""#);
    }
}
