//! Python's `%` operator for chat templates.
//!
//! jinja2 evaluates `a % b` with Python's `operator.mod`, so `'%s-%d' % ('a', 3)` is printf-style
//! string formatting. minijinja only knows numeric modulo. Before a template is compiled,
//! [`rewrite`] turns every `%` operator in its expressions into a call of the [`FILTER`] filter:
//! `A % B` becomes `(A)|__mm_py_mod((B))`, with the operands found by jinja2's precedence rules;
//! the filter ([`py_mod`]) then does what Python does: string formatting when the left operand is
//! a string, floored modulo for numbers.

use std::borrow::Cow;
use std::fmt::Write;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::pyjson;

/// The filter `%` operators are rewritten to.
pub const FILTER: &str = "__mm_py_mod";

// ---------------------------------------------------------------------------------------------
// The source rewrite
// ---------------------------------------------------------------------------------------------

/// Rewrites every `%` operator inside `{{ … }}` and `{% … %}` into a [`FILTER`] call. Template
/// text, comments, `{% raw %}` blocks and string literals are left alone, and so is any
/// expression whose operands cannot be made out (minijinja then reports its own error). A source
/// without a `%` operator comes back borrowed and unchanged.
pub fn rewrite(source: &str) -> Cow<'_, str> {
    if !may_have_operator(source) {
        return Cow::Borrowed(source);
    }
    match rewrite_source(source) {
        Some(out) if out != source => Cow::Owned(out),
        _ => Cow::Borrowed(source),
    }
}

/// A `%` that is not part of a `{%` or `%}` delimiter.
fn may_have_operator(source: &str) -> bool {
    let bytes = source.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && (i == 0 || bytes[i - 1] != b'{') && bytes.get(i + 1).is_none_or(|&n| n != b'}'))
}

fn rewrite_source(src: &str) -> Option<String> {
    let mut out = String::with_capacity(src.len() + 64);
    let mut copied = 0;
    let mut pos = 0;
    while let Some(found) = find_tag_start(src, pos) {
        let (start, kind) = found;
        match kind {
            b'#' => {
                // A comment runs to the first `#}`.
                let end = src[start + 2..].find("#}")?;
                pos = start + 2 + end + 2;
            }
            _ => {
                let block = kind == b'%';
                let mut inner_start = start + 2;
                if matches!(src.as_bytes().get(inner_start), Some(b'-' | b'+')) {
                    inner_start += 1;
                }
                let region = lex_region(src, inner_start, block)?;
                if block && region.tokens.len() == 1 && region.tokens[0].text(src) == "raw" {
                    pos = find_endraw(src, region.after)?;
                    continue;
                }
                if region.tokens.iter().any(|t| t.kind == TokKind::Op && t.text(src) == "%") {
                    if let Some(text) = rewrite_region(src, &region.tokens) {
                        let first = region.tokens[0].start;
                        out.push_str(&src[copied..first]);
                        out.push_str(&text);
                        copied = region.tokens[region.tokens.len() - 1].end;
                    }
                }
                pos = region.after;
            }
        }
    }
    out.push_str(&src[copied..]);
    Some(out)
}

/// The next `{{`, `{%` or `{#` at or after `from`: its offset and the second character.
fn find_tag_start(src: &str, from: usize) -> Option<(usize, u8)> {
    let bytes = src.as_bytes();
    let mut i = from;
    while let Some(off) = src.get(i..)?.find('{') {
        let at = i + off;
        match bytes.get(at + 1) {
            Some(&c @ (b'{' | b'%' | b'#')) => return Some((at, c)),
            Some(_) => i = at + 1,
            None => return None,
        }
    }
    None
}

/// The offset just past the `{% endraw %}` that closes a raw block starting at `from`.
fn find_endraw(src: &str, from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = src[i..].find("{%") {
        let tag = i + off + 2;
        let mut rest = &src[tag..];
        rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if let Some(after) = rest.strip_prefix("endraw") {
            let after = after.trim_start_matches(|c: char| c.is_ascii_whitespace());
            let after = after.strip_prefix(['-', '+']).unwrap_or(after);
            if let Some(tail) = after.strip_prefix("%}") {
                return Some(src.len() - tail.len());
            }
        }
        i = tag;
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokKind {
    Name,
    Str,
    Num,
    /// An operator or punctuation: `+ - * / // % ** ~ | . , : = == != < <= > >=` …
    Op,
    Open,
    Close,
    /// Anything else; an expression holding one is left alone.
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: TokKind,
    start: usize,
    end: usize,
}

impl Tok {
    fn text<'a>(&self, src: &'a str) -> &'a str {
        &src[self.start..self.end]
    }
}

struct Region {
    tokens: Vec<Tok>,
    /// Just past the closing delimiter.
    after: usize,
}

/// Lexes the inside of a `{{ … }}` (`block == false`) or `{% … %}` tag from `start` up to its
/// closing delimiter, which only counts outside brackets (as in jinja2 and minijinja). `None`
/// when the tag never closes or its brackets go below zero.
fn lex_region(src: &str, start: usize, block: bool) -> Option<Region> {
    let end_marker = if block { "%}" } else { "}}" };
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut i = start;
    loop {
        let c = src[i..].chars().next()?;
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let rest = &src[i..];
        if depth == 0 {
            if rest.starts_with(end_marker) {
                return Some(Region { tokens, after: i + 2 });
            }
            if (c == '-' || c == '+') && rest[1..].starts_with(end_marker) {
                return Some(Region { tokens, after: i + 3 });
            }
        }
        let (kind, len) = match c {
            '\'' | '"' => {
                let q = c as u8;
                let mut j = i + 1;
                loop {
                    match bytes.get(j)? {
                        b'\\' => j += 2,
                        &b if b == q => break,
                        _ => j += 1,
                    }
                }
                (TokKind::Str, j + 1 - i)
            }
            '0'..='9' => (TokKind::Num, number_len(rest)),
            c if c == '_' || c.is_alphabetic() => {
                let len = rest.find(|c: char| !(c == '_' || c.is_alphanumeric())).unwrap_or(rest.len());
                (TokKind::Name, len)
            }
            '(' | '[' | '{' => {
                depth += 1;
                (TokKind::Open, 1)
            }
            ')' | ']' | '}' => {
                depth = depth.checked_sub(1)?;
                (TokKind::Close, 1)
            }
            _ if ["**", "//", "==", "!=", "<=", ">="].iter().any(|op| rest.starts_with(op)) => (TokKind::Op, 2),
            '+' | '-' | '*' | '/' | '%' | '~' | '|' | '.' | ',' | ':' | '=' | '<' | '>' | ';' => (TokKind::Op, 1),
            c => (TokKind::Other, c.len_utf8()),
        };
        tokens.push(Tok { kind, start: i, end: i + len });
        i += len;
    }
}

/// The length of the number literal at the start of `s` (`12`, `1_000`, `1.5e-3`, `0x1f`).
fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let word = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
    let mut i = word(0);
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = word(i + 1);
    }
    let hex = s.starts_with("0x") || s.starts_with("0X");
    if !hex && matches!(b[i - 1], b'e' | b'E') && matches!(b.get(i), Some(b'+' | b'-')) {
        i = word(i + 1);
    }
    i
}

/// Names that are operators, so never an operand (nor a test's argument).
fn is_keyword(name: &str) -> bool {
    matches!(name, "and" | "or" | "not" | "in" | "is" | "if" | "else")
}

/// Rewrites the tokens of one tag; `None` when they do not parse.
fn rewrite_region(src: &str, tokens: &[Tok]) -> Option<String> {
    let mut close = vec![usize::MAX; tokens.len()];
    let mut stack = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match t.kind {
            TokKind::Open => stack.push(i),
            TokKind::Close => {
                let open = stack.pop()?;
                let pair = (tokens[open].text(src), t.text(src));
                if !matches!(pair, ("(", ")") | ("[", "]") | ("{", "}")) {
                    return None;
                }
                close[open] = i;
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        return None;
    }
    Rewriter { src, tokens, close }.expr_list(0, tokens.len())
}

struct Rewriter<'a> {
    src: &'a str,
    tokens: &'a [Tok],
    /// For an opening bracket, the index of its closing one.
    close: Vec<usize>,
}

impl Rewriter<'_> {
    fn text(&self, i: usize) -> &str {
        self.tokens[i].text(self.src)
    }

    fn is(&self, i: usize, hi: usize, kind: TokKind, text: &str) -> bool {
        i < hi && self.tokens[i].kind == kind && self.text(i) == text
    }

    /// The source between token `a` and token `b` (whitespace).
    fn gap(&self, a: usize, b: usize) -> &str {
        &self.src[self.tokens[a].end..self.tokens[b].start]
    }

    /// Tokens `lo..hi` (anything between brackets, or a whole tag) with every `%` operator
    /// rewritten. Whatever is below `%`'s precedence (`~ + - == in not and or if else , : =`,
    /// statement keywords) is copied; each operand run at `%`'s level goes through [`Self::term`].
    fn expr_list(&self, lo: usize, hi: usize) -> Option<String> {
        let mut out = String::new();
        let mut expect_operand = true;
        let mut i = lo;
        while i < hi {
            if i > lo {
                out.push_str(self.gap(i - 1, i));
            }
            let tok = self.tokens[i];
            let starts_operand = match tok.kind {
                TokKind::Name => !is_keyword(self.text(i)),
                TokKind::Str | TokKind::Num | TokKind::Open => true,
                TokKind::Op => expect_operand && matches!(self.text(i), "-" | "+"),
                TokKind::Close | TokKind::Other => false,
            };
            if starts_operand {
                let (end, text) = self.term(i, hi)?;
                out.push_str(&text);
                i = end;
                expect_operand = false;
            } else {
                if !matches!(tok.kind, TokKind::Op | TokKind::Name) || self.text(i) == "%" {
                    return None;
                }
                out.push_str(self.text(i));
                i += 1;
                expect_operand = true;
            }
        }
        Some(out)
    }

    /// A run of operands joined by `* / // %` starting at `lo` (jinja2's `parse_math2`): its end
    /// and its rewritten text, `%` folded left into filter calls.
    fn term(&self, lo: usize, hi: usize) -> Option<(usize, String)> {
        let mut end = self.power(lo, hi)?;
        let mut acc = self.operand(lo, end)?;
        while end < hi && self.tokens[end].kind == TokKind::Op && matches!(self.text(end), "*" | "/" | "//" | "%") {
            let op = end;
            let start = op + 1;
            if start >= hi {
                return None;
            }
            end = self.power(start, hi)?;
            let rhs = self.operand(start, end)?;
            if self.text(op) == "%" {
                acc = format!("({acc})|{FILTER}(({rhs}))");
            } else {
                acc = format!("{acc}{}{}{}{rhs}", self.gap(op - 1, op), self.text(op), self.gap(op, start));
            }
        }
        Some((end, acc))
    }

    /// `unary ('**' unary)*`: the end of the operand starting at `lo`.
    fn power(&self, lo: usize, hi: usize) -> Option<usize> {
        let mut end = self.unary(lo, hi)?;
        while self.is(end, hi, TokKind::Op, "**") {
            end = self.unary(end + 1, hi)?;
        }
        Some(end)
    }

    /// Signs, a primary, then any attribute/subscript/call postfixes, filters and tests.
    fn unary(&self, lo: usize, hi: usize) -> Option<usize> {
        let mut i = lo;
        while i < hi && self.tokens[i].kind == TokKind::Op && matches!(self.text(i), "-" | "+") {
            i += 1;
        }
        i = self.primary(i, hi)?;
        while i < hi {
            let tok = self.tokens[i];
            match (tok.kind, self.text(i)) {
                (TokKind::Op, ".") => {
                    if i + 1 < hi && matches!(self.tokens[i + 1].kind, TokKind::Name | TokKind::Num) {
                        i += 2;
                    } else {
                        return None;
                    }
                }
                (TokKind::Open, "(" | "[") => i = self.close[i] + 1,
                (TokKind::Op, "|") => {
                    i = self.dotted_name(i + 1, hi)?;
                    if self.is(i, hi, TokKind::Open, "(") {
                        i = self.close[i] + 1;
                    }
                }
                (TokKind::Name, "is") => {
                    i += 1;
                    if self.is(i, hi, TokKind::Name, "not") {
                        i += 1;
                    }
                    i = self.dotted_name(i, hi)?;
                    if self.is(i, hi, TokKind::Open, "(") {
                        i = self.close[i] + 1;
                    } else if i < hi {
                        // jinja2: a test takes one argument without parentheses, a primary
                        // (plus postfixes, which the loop picks up).
                        let takes_arg = match self.tokens[i].kind {
                            TokKind::Name => !is_keyword(self.text(i)),
                            TokKind::Str | TokKind::Num | TokKind::Open => true,
                            _ => false,
                        };
                        if takes_arg {
                            i = self.primary(i, hi)?;
                        }
                    }
                }
                _ => break,
            }
        }
        Some(i)
    }

    fn primary(&self, i: usize, hi: usize) -> Option<usize> {
        if i >= hi {
            return None;
        }
        match self.tokens[i].kind {
            TokKind::Name if !is_keyword(self.text(i)) => Some(i + 1),
            TokKind::Num => Some(i + 1),
            // Adjacent string literals are one string, as in Python.
            TokKind::Str => {
                let mut j = i + 1;
                while j < hi && self.tokens[j].kind == TokKind::Str {
                    j += 1;
                }
                Some(j)
            }
            TokKind::Open => Some(self.close[i] + 1),
            _ => None,
        }
    }

    /// `name ('.' name)*`: its end.
    fn dotted_name(&self, mut i: usize, hi: usize) -> Option<usize> {
        if !(i < hi && self.tokens[i].kind == TokKind::Name) {
            return None;
        }
        i += 1;
        while self.is(i, hi, TokKind::Op, ".") && i + 1 < hi && self.tokens[i + 1].kind == TokKind::Name {
            i += 2;
        }
        Some(i)
    }

    /// The tokens of one operand (`lo..hi`), with the insides of its brackets rewritten.
    fn operand(&self, lo: usize, hi: usize) -> Option<String> {
        let mut out = String::new();
        let mut i = lo;
        while i < hi {
            if i > lo {
                out.push_str(self.gap(i - 1, i));
            }
            out.push_str(self.text(i));
            if self.tokens[i].kind == TokKind::Open {
                let close = self.close[i];
                if close > i + 1 {
                    out.push_str(self.gap(i, i + 1));
                    out.push_str(&self.expr_list(i + 1, close)?);
                    out.push_str(self.gap(close - 1, close));
                }
                out.push_str(self.text(close));
                i = close + 1;
            } else {
                i += 1;
            }
        }
        Some(out)
    }
}

// ---------------------------------------------------------------------------------------------
// The filter
// ---------------------------------------------------------------------------------------------

/// Python's `lhs % rhs`: printf-style formatting when `lhs` is a string, floored modulo when it
/// is a number.
pub fn py_mod(lhs: &Value, rhs: &Value) -> Result<Value, Error> {
    match lhs.kind() {
        ValueKind::String => py_format(lhs.as_str().unwrap_or_default(), rhs).map(Value::from),
        ValueKind::Number | ValueKind::Bool => number_mod(lhs, rhs),
        _ => Err(unsupported(lhs, rhs)),
    }
}

fn op_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn unsupported(lhs: &Value, rhs: &Value) -> Error {
    op_error(format!("unsupported operand type(s) for %: '{}' and '{}'", type_name(lhs), type_name(rhs)))
}

/// The Python type name of a template value, for error messages.
fn type_name(v: &Value) -> &'static str {
    match v.kind() {
        ValueKind::Undefined => "Undefined",
        ValueKind::None => "NoneType",
        ValueKind::Bool => "bool",
        ValueKind::Number if v.is_integer() => "int",
        ValueKind::Number => "float",
        ValueKind::String => "str",
        ValueKind::Bytes => "bytes",
        ValueKind::Seq if v.is_tuple() => "tuple",
        ValueKind::Seq => "list",
        ValueKind::Map => "dict",
        ValueKind::Iterable => "generator",
        _ => "object",
    }
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

/// A bool, int or float as a Python number.
fn as_num(v: &Value) -> Option<Num> {
    match v.kind() {
        ValueKind::Bool => Some(Num::Int(v.is_true() as i128)),
        ValueKind::Number if v.is_integer() => match i128::try_from(v.clone()) {
            Ok(i) => Some(Num::Int(i)),
            Err(_) => f64::try_from(v.clone()).ok().map(Num::Float),
        },
        ValueKind::Number => f64::try_from(v.clone()).ok().map(Num::Float),
        _ => None,
    }
}

fn number_mod(lhs: &Value, rhs: &Value) -> Result<Value, Error> {
    let (Some(a), Some(b)) = (as_num(lhs), as_num(rhs)) else {
        return Err(unsupported(lhs, rhs));
    };
    match (a, b) {
        (Num::Int(_), Num::Int(0)) => Err(op_error("integer modulo by zero")),
        (Num::Int(a), Num::Int(b)) => {
            let mut r = a.checked_rem(b).unwrap_or(0);
            if r != 0 && (r < 0) != (b < 0) {
                r += b;
            }
            Ok(match i64::try_from(r) {
                Ok(small) => Value::from(small),
                Err(_) => Value::from(r),
            })
        }
        (a, b) => {
            let (a, b) = (num_f64(a), num_f64(b));
            if b == 0.0 {
                return Err(op_error("float modulo"));
            }
            Ok(Value::from(float_mod(a, b)))
        }
    }
}

fn num_f64(n: Num) -> f64 {
    match n {
        Num::Int(i) => i as f64,
        Num::Float(x) => x,
    }
}

/// Python's `float % float` (the result takes the divisor's sign).
fn float_mod(a: f64, b: f64) -> f64 {
    let m = a % b;
    if m != 0.0 {
        if (b < 0.0) != (m < 0.0) {
            m + b
        } else {
            m
        }
    } else {
        0.0f64.copysign(b)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Spec {
    ljust: bool,
    sign: bool,
    blank: bool,
    alt: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
    conv: char,
}

/// Where `%` conversions take their values from, following CPython's `PyUnicode_Format`.
struct Args<'a> {
    /// The tuple's items, or the single value.
    items: Vec<Value>,
    /// A tuple: `items` are positional; otherwise `items` holds one value taken at most once.
    tuple: bool,
    next: usize,
    /// The mapping for `%(key)s` (Python accepts any mapping that is not a tuple or string).
    mapping: Option<&'a Value>,
    /// After a `%(key)`, the value looked up (taken at most once).
    keyed: Option<(Value, bool)>,
}

impl Args<'_> {
    fn next(&mut self) -> Result<Value, Error> {
        if let Some((value, used)) = &mut self.keyed {
            if *used {
                return Err(op_error("not enough arguments for format string"));
            }
            *used = true;
            return Ok(value.clone());
        }
        match self.items.get(self.next) {
            Some(v) if self.tuple || self.next == 0 => {
                self.next += 1;
                Ok(v.clone())
            }
            _ => Err(op_error("not enough arguments for format string")),
        }
    }
}

/// Python's `fmt % args` for a format string.
pub fn py_format(fmt: &str, args: &Value) -> Result<String, Error> {
    let tuple = args.is_tuple();
    let items = if tuple { args.try_iter()?.collect() } else { vec![args.clone()] };
    let mapping = match args.kind() {
        ValueKind::Map | ValueKind::Seq if !tuple => Some(args),
        _ => None,
    };
    let mut args = Args { items, tuple, next: 0, mapping, keyed: None };
    let chars: Vec<char> = fmt.chars().collect();
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '%' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        i += 1;
        if chars.get(i) == Some(&'%') {
            out.push('%');
            i += 1;
            continue;
        }
        let spec = parse_spec(&chars, &mut i, &mut args)?;
        let value = args.next()?;
        format_one(&mut out, &spec, &value, i - 1)?;
    }
    let unused = if args.tuple { args.next < args.items.len() } else { args.next == 0 && args.keyed.is_none() };
    if unused && args.mapping.is_none() {
        return Err(op_error("not all arguments converted during string formatting"));
    }
    Ok(out)
}

/// Parses `(key)`, flags, width, precision, length modifier and the conversion character after a
/// `%`; leaves `i` just past the conversion.
fn parse_spec(chars: &[char], i: &mut usize, args: &mut Args) -> Result<Spec, Error> {
    let incomplete = || op_error("incomplete format");
    let mut spec = Spec::default();
    if chars.get(*i) == Some(&'(') {
        let Some(mapping) = args.mapping else {
            return Err(op_error("format requires a mapping"));
        };
        let key_start = *i + 1;
        let mut depth = 1;
        let mut j = key_start;
        while depth > 0 {
            match chars.get(j) {
                Some('(') => depth += 1,
                Some(')') => depth -= 1,
                Some(_) => {}
                None => return Err(op_error("incomplete format key")),
            }
            j += 1;
        }
        let key: String = chars[key_start..j - 1].iter().collect();
        let value = match mapping.kind() {
            ValueKind::Map => match mapping.get_item(&Value::from(key.as_str())) {
                Ok(v) if !v.is_undefined() => v,
                _ => return Err(op_error(format!("KeyError: {}", pyjson::py_repr(&Value::from(key))))),
            },
            _ => return Err(op_error(format!("{} indices must be integers or slices, not str", type_name(mapping)))),
        };
        args.keyed = Some((value, false));
        *i = j;
    }
    let mut c = *chars.get(*i).ok_or_else(incomplete)?;
    loop {
        match c {
            '-' => spec.ljust = true,
            '+' => spec.sign = true,
            ' ' => spec.blank = true,
            '#' => spec.alt = true,
            '0' => spec.zero = true,
            _ => break,
        }
        *i += 1;
        c = *chars.get(*i).ok_or_else(incomplete)?;
    }
    if c == '*' {
        let w = star_arg(args)?;
        if w < 0 {
            spec.ljust = true;
        }
        spec.width = Some(w.unsigned_abs() as usize);
        *i += 1;
        c = *chars.get(*i).ok_or_else(incomplete)?;
    } else if c.is_ascii_digit() {
        let (n, next) = parse_digits(chars, *i, "width too big")?;
        spec.width = Some(n);
        *i = next;
        c = *chars.get(*i).ok_or_else(incomplete)?;
    }
    if c == '.' {
        *i += 1;
        c = *chars.get(*i).ok_or_else(incomplete)?;
        if c == '*' {
            spec.prec = Some(star_arg(args)?.max(0) as usize);
            *i += 1;
            c = *chars.get(*i).ok_or_else(incomplete)?;
        } else if c.is_ascii_digit() {
            let (n, next) = parse_digits(chars, *i, "precision too big")?;
            spec.prec = Some(n);
            *i = next;
            c = *chars.get(*i).ok_or_else(incomplete)?;
        } else {
            spec.prec = Some(0);
        }
    }
    if matches!(c, 'h' | 'l' | 'L') {
        *i += 1;
        c = *chars.get(*i).ok_or_else(incomplete)?;
    }
    spec.conv = c;
    *i += 1;
    if spec.width.max(spec.prec).is_some_and(|n| n > super::template::MAX_PADDING) {
        return Err(op_error(format!("width or precision over {}, mm's limit for templates", super::template::MAX_PADDING)));
    }
    Ok(spec)
}

fn parse_digits(chars: &[char], mut i: usize, too_big: &str) -> Result<(usize, usize), Error> {
    let mut n: usize = 0;
    while let Some(d) = chars.get(i).and_then(|c| c.to_digit(10)) {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(d as usize))
            .filter(|n| *n <= i32::MAX as usize)
            .ok_or_else(|| op_error(too_big))?;
        i += 1;
    }
    Ok((n, i))
}

/// A `*` width or precision: the next argument, which must be an int.
fn star_arg(args: &mut Args) -> Result<i64, Error> {
    let v = args.next()?;
    match as_num(&v) {
        Some(Num::Int(n)) => i64::try_from(n).map_err(|_| op_error("width too big")),
        _ => Err(op_error("* wants int")),
    }
}

/// Formats one value by its conversion spec; `at` is the conversion's index, for errors.
fn format_one(out: &mut String, spec: &Spec, value: &Value, at: usize) -> Result<(), Error> {
    let (body, numeric) = match spec.conv {
        's' => (pyjson::py_str(value), false),
        'r' => (repr(value), false),
        'a' => (ascii(&repr(value)), false),
        'd' | 'i' | 'u' | 'o' | 'x' | 'X' => (format_int(spec, value)?, true),
        'e' | 'E' | 'f' | 'F' | 'g' | 'G' => {
            let x = match as_num(value) {
                Some(n) => num_f64(n),
                None => return Err(op_error(format!("must be real number, not {}", type_name(value)))),
            };
            (format_float(x, spec.conv, spec.prec.unwrap_or(6), spec.alt), true)
        }
        'c' => (format_char(value)?.to_string(), false),
        c => {
            let shown = if (' '..='~').contains(&c) { c } else { '?' };
            return Err(op_error(format!("unsupported format character '{shown}' (0x{:x}) at index {at}", c as u32)));
        }
    };
    pad(out, spec, &body, numeric);
    Ok(())
}

fn repr(value: &Value) -> String {
    if value.is_undefined() {
        return "Undefined".into();
    }
    pyjson::py_repr(value)
}

/// Python's `ascii()` from a `repr()`: non-ASCII characters as `\xNN`, `\uNNNN`, `\UNNNNNNNN`.
fn ascii(repr: &str) -> String {
    let mut out = String::with_capacity(repr.len());
    for c in repr.chars() {
        let n = c as u32;
        let _ = match n {
            0..=0x7f => write!(out, "{c}"),
            0x80..=0xff => write!(out, "\\x{n:02x}"),
            0x100..=0xffff => write!(out, "\\u{n:04x}"),
            _ => write!(out, "\\U{n:08x}"),
        };
    }
    out
}

/// `%d %i %u %o %x %X`: sign, `0o`/`0x` prefix with `#`, digits zero-padded to the precision.
fn format_int(spec: &Spec, value: &Value) -> Result<String, Error> {
    let conv = spec.conv;
    let wrong = || {
        let what = if matches!(conv, 'o' | 'x' | 'X') { "an integer" } else { "a real number" };
        op_error(format!("%{conv} format: {what} is required, not {}", type_name(value)))
    };
    let (negative, digits) = match as_num(value).ok_or_else(wrong)? {
        Num::Int(n) => {
            let m = n.unsigned_abs();
            let digits = match conv {
                'o' => format!("{m:o}"),
                'x' => format!("{m:x}"),
                'X' => format!("{m:X}"),
                _ => m.to_string(),
            };
            (n < 0, digits)
        }
        Num::Float(_) if matches!(conv, 'o' | 'x' | 'X') => return Err(wrong()),
        Num::Float(x) if x.is_nan() => return Err(op_error("cannot convert float NaN to integer")),
        Num::Float(x) if x.is_infinite() => return Err(op_error("cannot convert float infinity to integer")),
        Num::Float(x) => {
            let t = x.trunc();
            (t < 0.0, format!("{:.0}", t.abs()))
        }
    };
    let mut body = String::with_capacity(digits.len() + 4);
    if negative {
        body.push('-');
    }
    if spec.alt {
        match conv {
            'o' => body.push_str("0o"),
            'x' => body.push_str("0x"),
            'X' => body.push_str("0X"),
            _ => {}
        }
    }
    if let Some(prec) = spec.prec {
        body.extend(std::iter::repeat_n('0', prec.saturating_sub(digits.len())));
    }
    body.push_str(&digits);
    Ok(body)
}

/// `%e %f %g` (and upper case) as Python's `PyOS_double_to_string`.
fn format_float(x: f64, conv: char, prec: usize, alt: bool) -> String {
    let upper = conv.is_ascii_uppercase();
    if !x.is_finite() {
        let s = if x.is_nan() {
            "nan"
        } else if x < 0.0 {
            "-inf"
        } else {
            "inf"
        };
        return if upper { s.to_uppercase() } else { s.to_string() };
    }
    let s = match conv.to_ascii_lowercase() {
        'f' => {
            let mut s = format!("{x:.prec$}");
            if alt && prec == 0 {
                s.push('.');
            }
            s
        }
        'e' => {
            let (mantissa, exp) = sci(x, prec);
            let dot = if alt && prec == 0 { "." } else { "" };
            format!("{mantissa}{dot}e{exp}")
        }
        _ => {
            let p = prec.max(1);
            let (mantissa, exp) = sci(x, p - 1);
            let e: i32 = exp.parse().unwrap_or(0);
            if e < -4 || e >= p as i32 {
                let mantissa = if alt { mantissa } else { strip_zeros(&mantissa) };
                let dot = if alt && !mantissa.contains('.') { "." } else { "" };
                format!("{mantissa}{dot}e{exp}")
            } else {
                let decimals = (p as i32 - 1 - e) as usize;
                let s = format!("{x:.decimals$}");
                if alt {
                    if s.contains('.') {
                        s
                    } else {
                        s + "."
                    }
                } else {
                    strip_zeros(&s)
                }
            }
        }
    };
    if upper {
        s.to_uppercase()
    } else {
        s
    }
}

/// `x` in scientific notation with `prec` decimals: the mantissa and the exponent as Python
/// writes it (`+05`, `-300`).
fn sci(x: f64, prec: usize) -> (String, String) {
    let s = format!("{x:.prec$e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = exp.parse().unwrap_or(0);
    (mantissa.to_string(), format!("{}{:02}", if e < 0 { '-' } else { '+' }, e.unsigned_abs()))
}

/// Drops trailing zeros after the decimal point, and the point itself if nothing is left.
fn strip_zeros(s: &str) -> String {
    if !s.contains('.') {
        return s.to_string();
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `%c`: an int code point or a one-character string.
fn format_char(value: &Value) -> Result<char, Error> {
    if let Some(s) = value.as_str() {
        let mut chars = s.chars();
        return match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(op_error("%c requires int or char")),
        };
    }
    match as_num(value) {
        Some(Num::Int(n)) if (0..=0x10ffff).contains(&n) => Ok(char::from_u32(n as u32).unwrap_or('\u{fffd}')),
        Some(Num::Int(_)) => Err(op_error("%c arg not in range(0x110000)")),
        _ => Err(op_error("%c requires int or char")),
    }
}

/// Width, sign and padding as CPython's `unicode_format_arg_output`.
fn pad(out: &mut String, spec: &Spec, body: &str, numeric: bool) {
    let chars: Vec<char> = body.chars().collect();
    let mut len = chars.len();
    if matches!(spec.conv, 's' | 'r' | 'a') {
        if let Some(prec) = spec.prec {
            len = len.min(prec);
        }
    }
    let fill = if numeric && spec.zero { '0' } else { ' ' };
    let mut at = 0;
    let mut sign = None;
    if numeric {
        match chars.first() {
            Some(&c @ ('-' | '+')) => {
                sign = Some(c);
                len -= 1;
                at = 1;
            }
            _ if spec.sign => sign = Some('+'),
            _ if spec.blank => sign = Some(' '),
            _ => {}
        }
    }
    let mut width = spec.width.unwrap_or(0).max(len);
    if let Some(s) = sign {
        if fill != ' ' {
            out.push(s);
        }
        if width > len {
            width -= 1;
        }
    }
    let prefix = spec.alt && matches!(spec.conv, 'x' | 'X' | 'o');
    if prefix {
        if fill != ' ' {
            out.extend(&chars[at..at + 2]);
            at += 2;
        }
        width = width.saturating_sub(2);
        len -= 2;
    }
    if width > len && !spec.ljust {
        out.extend(std::iter::repeat_n(fill, width - len));
        width = len;
    }
    if fill == ' ' {
        if let Some(s) = sign {
            out.push(s);
        }
        if prefix {
            out.extend(&chars[at..at + 2]);
            at += 2;
        }
    }
    out.extend(&chars[at..at + len]);
    if width > len {
        out.extend(std::iter::repeat_n(' ', width - len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatTemplate, RenderRequest};
    use serde_json::Value as Json;

    fn rw(s: &str) -> String {
        rewrite(s).into_owned()
    }

    #[test]
    fn rewrites_operators_with_jinja_precedence() {
        let cases = [
            ("{{ a % b }}", "{{ (a)|__mm_py_mod((b)) }}"),
            ("{{ '%s-%d' % ('a', 3) }}", "{{ ('%s-%d')|__mm_py_mod((('a', 3))) }}"),
            // Looser than `~`, `+`, comparisons, `not`, `if`.
            ("{{ 'a' ~ '%s' % x }}", "{{ 'a' ~ ('%s')|__mm_py_mod((x)) }}"),
            ("{{ 1 + 7 % 4 - 1 }}", "{{ 1 + (7)|__mm_py_mod((4)) - 1 }}"),
            ("{% if n % 2 == 0 %}", "{% if (n)|__mm_py_mod((2)) == 0 %}"),
            ("{{ not x % 2 }}", "{{ not (x)|__mm_py_mod((2)) }}"),
            ("{{ a if b % 2 else c % d }}", "{{ a if (b)|__mm_py_mod((2)) else (c)|__mm_py_mod((d)) }}"),
            // Same level as `*`, left-associative.
            ("{{ x % 3 * 2 }}", "{{ (x)|__mm_py_mod((3)) * 2 }}"),
            ("{{ 2 * x % 3 }}", "{{ (2 * x)|__mm_py_mod((3)) }}"),
            ("{{ '%s' % '%d' % 4 }}", "{{ (('%s')|__mm_py_mod(('%d')))|__mm_py_mod((4)) }}"),
            ("{{ a // b % c / d }}", "{{ (a // b)|__mm_py_mod((c)) / d }}"),
            // Tighter: unary minus, `**`, filters, tests, postfixes.
            ("{{ '%d' % -3 }}", "{{ ('%d')|__mm_py_mod((-3)) }}"),
            ("{{ -x % 5 }}", "{{ (-x)|__mm_py_mod((5)) }}"),
            ("{{ x ** 2 % y ** 2 }}", "{{ (x ** 2)|__mm_py_mod((y ** 2)) }}"),
            ("{{ '%s' % x|upper }}", "{{ ('%s')|__mm_py_mod((x|upper)) }}"),
            ("{{ '%s' % x|join(', ')|e }}", "{{ ('%s')|__mm_py_mod((x|join(', ')|e)) }}"),
            ("{{ '%s' % x is defined }}", "{{ ('%s')|__mm_py_mod((x is defined)) }}"),
            ("{{ x is divisibleby 3 % 2 }}", "{{ (x is divisibleby 3)|__mm_py_mod((2)) }}"),
            ("{{ x is not sameas(y) % 2 }}", "{{ (x is not sameas(y))|__mm_py_mod((2)) }}"),
            ("{{ m.content[0:2].upper() % d['k'] }}", "{{ (m.content[0:2].upper())|__mm_py_mod((d['k'])) }}"),
            ("{{ loop.index0 % 2 }}", "{{ (loop.index0)|__mm_py_mod((2)) }}"),
            ("{{ '%s' 'x' % 1 }}", "{{ ('%s' 'x')|__mm_py_mod((1)) }}"),
            // Inside brackets, calls, literals and filter arguments.
            ("{{ foo('%s' % (a, b), k=x % 2) }}", "{{ foo(('%s')|__mm_py_mod(((a, b))), k=(x)|__mm_py_mod((2))) }}"),
            (
                "{{ {'k': '%s' % 1, 'l': [x % 4]} }}",
                "{{ {'k': ('%s')|__mm_py_mod((1)), 'l': [(x)|__mm_py_mod((4))]} }}",
            ),
            ("{{ x|default('%s' % y) }}", "{{ x|default(('%s')|__mm_py_mod((y))) }}"),
            ("{{ ('%s' % a) ~ b }}", "{{ (('%s')|__mm_py_mod((a))) ~ b }}"),
            // Whitespace control and statement terminators stay.
            ("{%- if a % 2 -%}x{%- endif -%}", "{%- if (a)|__mm_py_mod((2)) -%}x{%- endif -%}"),
            ("{{- a % 2 -}}", "{{- (a)|__mm_py_mod((2)) -}}"),
            ("{% set y = a % b %}", "{% set y = (a)|__mm_py_mod((b)) %}"),
            ("{% for i in xs if i % 2 recursive %}", "{% for i in xs if (i)|__mm_py_mod((2)) recursive %}"),
            ("{% set d = {'a': b %2} %}", "{% set d = {'a': (b)|__mm_py_mod((2))} %}"),
            ("{% macro f(a, b=10 % 3) %}", "{% macro f(a, b=(10)|__mm_py_mod((3))) %}"),
            // `%` and delimiters inside strings are not operators.
            ("{{ '%s}}%%' % 'x' ~ '}}' }}", "{{ ('%s}}%%')|__mm_py_mod(('x')) ~ '}}' }}"),
            ("{{ \"a%}\\\"%\" % x }}", "{{ (\"a%}\\\"%\")|__mm_py_mod((x)) }}"),
        ];
        for (src, want) in cases {
            assert_eq!(rw(src), want, "{src}");
        }
    }

    #[test]
    fn leaves_text_comments_raw_and_plain_templates_alone() {
        let unchanged = [
            "100% sure {{ x }} 50 %",
            "{# {{ a % b }} #}{{ '%' }}{{ \"50%\" }}",
            "{% raw %}{{ a % b }}{% endraw %}",
            "{%- raw -%}{% if a % b %}{%- endraw +%}",
            "{% if a %}{{ b }}{% endif %}",
            "{{ '%d' }}",
            // Not an expression we understand: minijinja reports its own error.
            "{{ % 2 }}",
            "{{ a % }}",
            "{{ a % b ]] }}",
            "{{ 'unterminated % }}",
        ];
        for src in unchanged {
            assert!(matches!(rewrite(src), Cow::Borrowed(_)), "{src}");
        }
        assert_eq!(
            rw("{% raw %}{{ a % b }}{% endraw %}{# % #}{{ a % b }}"),
            "{% raw %}{{ a % b }}{% endraw %}{# % #}{{ (a)|__mm_py_mod((b)) }}"
        );
        // One tag that does not parse does not stop the others.
        assert_eq!(rw("{{ a % }}{{ a % b }}"), "{{ a % }}{{ (a)|__mm_py_mod((b)) }}");
    }

    fn render(template: &str, ctx: &str) -> Result<String, String> {
        let ctx: Json = serde_json::from_str(ctx).unwrap();
        let t = ChatTemplate::new(template).map_err(|e| format!("{e:#}"))?;
        let mut extra = ctx.as_object().cloned().unwrap_or_default();
        let mut req = RenderRequest::new(extra.remove("messages").unwrap_or(serde_json::json!([])));
        req.extra = extra;
        t.render(&req).map_err(|e| format!("{e:#}"))
    }

    /// (template, context, jinja2's output or its error message), rendered by jinja2 3.1 in
    /// transformers' environment (`ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks)`).
    fn check(cases: &[(&str, &str, Result<&str, &str>)]) {
        let mut failures = Vec::new();
        for (template, ctx, want) in cases {
            let got = render(template, ctx);
            let ok = match (&got, want) {
                (Ok(got), Ok(want)) => got == want,
                (Err(got), Err(want)) => got.contains(want),
                _ => false,
            };
            if !ok {
                failures.push(format!("{template}\n  got    {got:?}\n  jinja2 {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn templates_match_jinja2() {
        check(&[
            (r#"{{ '%s-%d' % ('a', 3) }}"#, r#"{}"#, Ok(r#"a-3"#)),
            (r#"{{ 'a' ~ '%s' % x }}"#, r#"{"x": "b"}"#, Ok(r#"ab"#)),
            (r#"{{ '%s' % x|upper }}"#, r#"{"x": "b"}"#, Ok(r#"B"#)),
            (r#"{{ '%d' % -3 }}"#, r#"{}"#, Ok(r#"-3"#)),
            (r#"{% for n in range(5) %}{% if n % 2 == 0 %}{{ n }}{% endif %}{% endfor %}"#, r#"{}"#, Ok(r#"024"#)),
            (r#"{{ x % 3 * 2 }}"#, r#"{"x": 7}"#, Ok(r#"2"#)),
            (r#"{{ 2 * x % 3 }}"#, r#"{"x": 7}"#, Ok(r#"2"#)),
            (r#"{{ '%s%%' % 5 }}"#, r#"{}"#, Ok(r#"5%"#)),
            (r#"{{ '%s' % '%d' % 4 }}"#, r#"{}"#, Ok(r#"4"#)),
            (r#"{{ '%s}}%%' % 'x' ~ '}}' }}"#, r#"{}"#, Ok(r#"x}}%}}"#)),
            (
                r#"{% raw %}{{ '%s' % x }}{% endraw %}|{# {{ a % b }} #}{{ '%s' % 1 }}"#,
                r#"{}"#,
                Ok(r#"{{ '%s' % x }}|1"#),
            ),
            (r#"{%- if a % 2 -%} odd {%- else -%} even {%- endif -%}!"#, r#"{"a": 3}"#, Ok(r#"odd!"#)),
            (r#"{{ {'k': '%s' % 1, 'l': ['%d' % 2, x % 4]} }}"#, r#"{"x": 7}"#, Ok(r#"{'k': '1', 'l': ['2', 3]}"#)),
            (r#"{{ foo('%s+%s' % (a, b)) }}"#, r#"{"a": 1, "b": 2}"#, Err(r#""#)),
            (
                r#"{% set y = '%05.1f|%-5s|%x|%+d' % (3.14159, 'ab', 255, 3) %}{{ y }}"#,
                r#"{}"#,
                Ok(r#"003.1|ab   |ff|+3"#),
            ),
            (r#"{{ '%(k)s=%(v)r' % d }}"#, r#"{"d": {"k": "key", "v": "val"}}"#, Ok(r#"key='val'"#)),
            (r#"{{ '%c%c' % (72, 'i') }}"#, r#"{}"#, Ok(r#"Hi"#)),
            (r#"{{ -7 % 3 }} {{ 7 % -3 }} {{ -7.5 % 2 }} {{ 7.5 % 2 }}"#, r#"{}"#, Ok(r#"2 -2 0.5 1.5"#)),
            (r#"{{ '%s' % x is defined }}"#, r#"{}"#, Ok(r#"False"#)),
            (r#"{{ x is divisibleby 3 % 2 }}"#, r#"{"x": 6}"#, Ok(r#"1"#)),
            (r#"{{ not x % 2 }}"#, r#"{"x": 4}"#, Ok(r#"True"#)),
            (r#"{{ '%s|%s' % (x, y) if x % 2 else 'even' }}"#, r#"{"x": 3, "y": null}"#, Ok(r#"3|None"#)),
            (
                r#"{{ '%s %s %s' % (t, l, d) }}"#,
                r#"{"t": true, "l": [1, "a", null, 1.0], "d": {"a": [1e+20]}}"#,
                Ok(r#"True [1, 'a', None, 1.0] {'a': [1e+20]}"#),
            ),
            (r#"{{ '%s' % [1, 2] }}"#, r#"{}"#, Ok(r#"[1, 2]"#)),
            (r#"{{ '%r' % 'it\'s' }}"#, r#"{}"#, Ok(r#""it's""#)),
            (
                r#"{{ '%.3s|%5.1e|%g|%G' % ('abcdef', 12345.678, 0.00001, 1e20) }}"#,
                r#"{}"#,
                Ok(r#"abc|1.2e+04|1e-05|1E+20"#),
            ),
            (r#"{{ '%s' % (x,) }}"#, r#"{"x": [1]}"#, Ok(r#"[1]"#)),
            (r#"{{ x ** 2 % 5 }}"#, r#"{"x": 4}"#, Ok(r#"1"#)),
            (r#"{{ -x % 5 }}"#, r#"{"x": 2}"#, Ok(r#"3"#)),
            (r#"{{ x|length % 4 }}"#, r#"{"x": "abcdef"}"#, Ok(r#"2"#)),
            (
                r#"{{ msgs[0]['content'] % 2 if false else ('%s' % msgs[0].content) }}"#,
                r#"{"msgs": [{"content": "hi"}]}"#,
                Ok(r#"hi"#),
            ),
            (r#"{{ '%s' 'x' % 1 }}"#, r#"{}"#, Ok(r#"1x"#)),
            (r#"{{ '%-4d|%04d|% d' % (-1, -1, 1) }}"#, r#"{}"#, Ok(r#"-1  |-001| 1"#)),
            (
                r#"{% for m in messages %}{{ '[%d] %s: %s\n' % (loop.index, m.role, m.content) }}{% endfor %}"#,
                r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
                Ok(r#"[1] user: hi
[2] assistant: yo
"#),
            ),
            (r#"{% macro f(a, b=10 % 3) %}{{ a % b }}{% endmacro %}{{ f(5) }}"#, r#"{}"#, Ok(r#"0"#)),
            (
                r#"{% set ns = namespace(c=0) %}{% for i in range(7) %}{% set ns.c = (ns.c + i) % 4 %}{% endfor %}{{ ns.c }}"#,
                r#"{}"#,
                Ok(r#"1"#),
            ),
            (r#"{{ (1, 2)[1] % 2 }}|{{ [5][0] % 3 }}"#, r#"{}"#, Ok(r#"0|2"#)),
            (r#"{{ 10 // 3 % 2 }}|{{ 10 / 4 % 2 }}"#, r#"{}"#, Ok(r#"1|0.5"#)),
            (r#"{{ 'x' if 5 % 2 }}"#, r#"{}"#, Ok(r#"x"#)),
            (r#"{{ a % b ~ c % d }}"#, r#"{"a": 7, "b": 4, "c": 9, "d": 5}"#, Ok(r#"34"#)),
            (r#"{{ 1 + 7 % 4 - 1 }}"#, r#"{}"#, Ok(r#"3"#)),
            (r#"{{ 7 % 4 in [3] }}"#, r#"{}"#, Ok(r#"True"#)),
            (r#"{{ '%s' % true }}|{{ '%d' % true }}|{{ true % 2 }}"#, r#"{}"#, Ok(r#"True|1|1"#)),
            (r#"{{ '%s-%s' % ('a', 'b')|join }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
        ]);
    }

    #[test]
    fn formatting_matches_python() {
        check(&[
            (r#"{{ '%5%' % () }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%5%' % (1,) }}"#, r#"{}"#, Err(r#"unsupported format character '%' (0x25) at index 2"#)),
            (r#"{{ '%(a)%' % {'a':1} }}"#, r#"{}"#, Err(r#"unsupported format character '%' (0x25) at index 4"#)),
            (r#"{{ '%q' % () }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%q' % (1,) }}"#, r#"{}"#, Err(r#"unsupported format character 'q' (0x71) at index 1"#)),
            (r#"{{ 'abc%' % () }}"#, r#"{}"#, Err(r#"incomplete format"#)),
            (r#"{{ '%-05d|' % 3 }}"#, r#"{}"#, Ok(r#"3    |"#)),
            (r#"{{ '%.2f' % 0.125 }}"#, r#"{}"#, Ok(r#"0.12"#)),
            (r#"{{ '%.0f' % 0.5 }}"#, r#"{}"#, Ok(r#"0"#)),
            (r#"{{ '%.0f' % 2.5 }}"#, r#"{}"#, Ok(r#"2"#)),
            (r#"{{ '%.0e' % 2.5 }}"#, r#"{}"#, Ok(r#"2e+00"#)),
            (r#"{{ '%.2e' % 1.125 }}"#, r#"{}"#, Ok(r#"1.12e+00"#)),
            (r#"{{ '%#.0f' % 1 }}"#, r#"{}"#, Ok(r#"1."#)),
            (r#"{{ '%#.0e' % 1 }}"#, r#"{}"#, Ok(r#"1.e+00"#)),
            (r#"{{ '%#.1g' % 1 }}"#, r#"{}"#, Ok(r#"1."#)),
            (r#"{{ '%#g' % 1 }}"#, r#"{}"#, Ok(r#"1.00000"#)),
            (r#"{{ '%g' % 1e-5 }}"#, r#"{}"#, Ok(r#"1e-05"#)),
            (r#"{{ '%g' % 123456789 }}"#, r#"{}"#, Ok(r#"1.23457e+08"#)),
            (r#"{{ '%.3g' % 0.0001234 }}"#, r#"{}"#, Ok(r#"0.000123"#)),
            (r#"{{ '%g' % 0.0 }}"#, r#"{}"#, Ok(r#"0"#)),
            (r#"{{ '%g' % -0.0 }}"#, r#"{}"#, Ok(r#"-0"#)),
            (r#"{{ '%.2f' % -0.0 }}"#, r#"{}"#, Ok(r#"-0.00"#)),
            (r#"{{ '%c' % 1.5 }}"#, r#"{}"#, Err(r#"%c requires int or char"#)),
            (r#"{{ '%c' % 'ab' }}"#, r#"{}"#, Err(r#"%c requires int or char"#)),
            (r#"{{ '%c' % -1 }}"#, r#"{}"#, Err(r#"%c arg not in range(0x110000)"#)),
            (r#"{{ '%c' % 1114112 }}"#, r#"{}"#, Err(r#"%c arg not in range(0x110000)"#)),
            (r#"{{ '%.0c|%3c' % ('a','b') }}"#, r#"{}"#, Ok(r#"a|  b"#)),
            (r#"{{ '%d' % 'x' }}"#, r#"{}"#, Err(r#"%d format: a real number is required, not str"#)),
            (r#"{{ '%x' % 1.5 }}"#, r#"{}"#, Err(r#"%x format: an integer is required, not float"#)),
            (r#"{{ '%f' % 'x' }}"#, r#"{}"#, Err(r#"must be real number, not str"#)),
            (r#"{{ '%d' % none }}"#, r#"{}"#, Err(r#"%d format: a real number is required, not NoneType"#)),
            (r#"{{ '%d' % [1] }}"#, r#"{}"#, Err(r#"%d format: a real number is required, not list"#)),
            (r#"{{ '%*d' % (1.0, 1) }}"#, r#"{}"#, Err(r#"* wants int"#)),
            (r#"{{ '%*d|' % (-4, 1) }}"#, r#"{}"#, Ok(r#"1   |"#)),
            (r#"{{ '%.*f' % (-2, 1.5) }}"#, r#"{}"#, Ok(r#"2"#)),
            (r#"{{ '%s' % [1] }}"#, r#"{}"#, Ok(r#"[1]"#)),
            (r#"{{ 'abc' % [] }}"#, r#"{}"#, Ok(r#"abc"#)),
            (r#"{{ 'abc' % [1] }}"#, r#"{}"#, Ok(r#"abc"#)),
            (r#"{{ 'abc' % 5 }}"#, r#"{}"#, Err(r#"not all arguments converted during string formatting"#)),
            (r#"{{ 'abc' % 'x' }}"#, r#"{}"#, Err(r#"not all arguments converted during string formatting"#)),
            (r#"{{ 'abc' % {'a':1} }}"#, r#"{}"#, Ok(r#"abc"#)),
            (r#"{{ '%(a)s' % [1] }}"#, r#"{}"#, Err(r#"list indices must be integers or slices, not str"#)),
            (r#"{{ '%(a)s' % (1,) }}"#, r#"{}"#, Err(r#"format requires a mapping"#)),
            (r#"{{ '%(a)s' % {'b':1} }}"#, r#"{}"#, Err(r#"'a'"#)),
            (r#"{{ '%(a)s %s' % {'a':1} }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%s %(a)s' % {'a':1} }}"#, r#"{}"#, Ok(r#"{'a': 1} 1"#)),
            (r#"{{ '%s %s' % {'a':1} }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%d' % 3.99 }}"#, r#"{}"#, Ok(r#"3"#)),
            (r#"{{ '%d' % -3.99 }}"#, r#"{}"#, Ok(r#"-3"#)),
            (r#"{{ '%d' % 1e30 }}"#, r#"{}"#, Ok(r#"1000000000000000019884624838656"#)),
            (r#"{{ '%d' % true }}"#, r#"{}"#, Ok(r#"1"#)),
            (r#"{{ '%#o|%#x|%#X|%o' % (8, 255, 255, 8) }}"#, r#"{}"#, Ok(r#"0o10|0xff|0XFF|10"#)),
            (r#"{{ '%#08x|%-#8x|%08.3x' % (255, 255, -255) }}"#, r#"{}"#, Ok(r#"0x0000ff|0xff    |-00000ff"#)),
            (r#"{{ '%+.3d|% d|% 5d|%+05d' % (5, 5, -5, 5) }}"#, r#"{}"#, Ok(r#"+005| 5|   -5|+0005"#)),
            (r#"{{ 5 % 0 }}"#, r#"{}"#, Err(r#"integer modulo by zero"#)),
            (r#"{{ 5.0 % 0 }}"#, r#"{}"#, Err(r#"float modulo"#)),
            (r#"{{ 5 % 0.0 }}"#, r#"{}"#, Err(r#"float modulo"#)),
            (r#"{{ -7 % 3 }}"#, r#"{}"#, Ok(r#"2"#)),
            (r#"{{ 7 % -3 }}"#, r#"{}"#, Ok(r#"-2"#)),
            (r#"{{ -7.5 % 2 }}"#, r#"{}"#, Ok(r#"0.5"#)),
            (r#"{{ 7.5 % -2 }}"#, r#"{}"#, Ok(r#"-0.5"#)),
            (r#"{{ -0.0 % 2 }}"#, r#"{}"#, Ok(r#"0.0"#)),
            (r#"{{ 4.0 % -2 }}"#, r#"{}"#, Ok(r#"-0.0"#)),
            (r#"{{ true % 2 }}"#, r#"{}"#, Ok(r#"1"#)),
            (
                r#"{{ 'a' % 2 if false else 7 % 'a' }}"#,
                r#"{}"#,
                Err(r#"unsupported operand type(s) for %: 'int' and 'str'"#),
            ),
            (r#"{{ none % 2 }}"#, r#"{}"#, Err(r#"unsupported operand type(s) for %: 'NoneType' and 'int'"#)),
            (r#"{{ [1] % 2 }}"#, r#"{}"#, Err(r#"unsupported operand type(s) for %: 'list' and 'int'"#)),
            (r#"{{ '%(a)' % {'a':1} }}"#, r#"{}"#, Err(r#"incomplete format"#)),
            (r#"{{ '%(a' % {'a':1} }}"#, r#"{}"#, Err(r#"incomplete format key"#)),
            (r#"{{ '%((a))s' % {'(a)': 'paren'} }}"#, r#"{}"#, Ok(r#"paren"#)),
            (r#"{{ '%' % () }}"#, r#"{}"#, Err(r#"incomplete format"#)),
            (r#"{{ '%s' % () }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%s %s' % ('a',) }}"#, r#"{}"#, Err(r#"not enough arguments for format string"#)),
            (r#"{{ '%s' % ('a','b') }}"#, r#"{}"#, Err(r#"not all arguments converted during string formatting"#)),
            (r#"{{ '%5.2s|%-5s|%05s' % ('abc','x','y') }}"#, r#"{}"#, Ok(r#"   ab|x    |    y"#)),
            (r#"{{ '%r %a' % ('é', 'é') }}"#, r#"{}"#, Ok(r#"'é' '\xe9'"#)),
            (r#"{{ '%a' % ['ü😀', 'x'] }}"#, r#"{}"#, Ok(r#"['\xfc\U0001f600', 'x']"#)),
            (r#"{{ '%i %u' % (3, 4) }}"#, r#"{}"#, Ok(r#"3 4"#)),
            (r#"{{ '%e' % 1e20 }}"#, r#"{}"#, Ok(r#"1.000000e+20"#)),
            (r#"{{ '%E' % 1e-300 }}"#, r#"{}"#, Ok(r#"1.000000E-300"#)),
            (r#"{{ '%G' % 1e-20 }}"#, r#"{}"#, Ok(r#"1E-20"#)),
            (r#"{{ '%f' % 1e20 }}"#, r#"{}"#, Ok(r#"100000000000000000000.000000"#)),
            (r#"{{ '%-+8.2f|' % 3.14159 }}"#, r#"{}"#, Ok(r#"+3.14   |"#)),
            (r#"{{ '% .3e' % 12345.678 }}"#, r#"{}"#, Ok(r#" 1.235e+04"#)),
            (r#"{{ '%010.2f' % -3.5 }}"#, r#"{}"#, Ok(r#"-000003.50"#)),
            (r#"{{ '%x' % -255 }}"#, r#"{}"#, Ok(r#"-ff"#)),
            (r#"{{ '%#o' % 0 }}"#, r#"{}"#, Ok(r#"0o0"#)),
            (r#"{{ '%.0d' % 0 }}"#, r#"{}"#, Ok(r#"0"#)),
            (r#"{{ '%ld %hd %Lf' % (1, 2, 3.0) }}"#, r#"{}"#, Ok(r#"1 2 3.000000"#)),
            (r#"{{ '%s' % none }}"#, r#"{}"#, Ok(r#"None"#)),
            (r#"{{ '%r' % none }}"#, r#"{}"#, Ok(r#"None"#)),
            (r#"{{ '%s' % ((1,),) }}"#, r#"{}"#, Ok(r#"(1,)"#)),
            (r#"{{ '%s' % (1.0,) }}"#, r#"{}"#, Ok(r#"1.0"#)),
            (r#"{{ '%d' % 10**20 }}"#, r#"{}"#, Ok(r#"100000000000000000000"#)),
            (r#"{{ '%x' % 10**30 }}"#, r#"{}"#, Ok(r#"c9f2c9cd04674edea40000000"#)),
            (r#"{{ '%c' % true }}"#, r#"{}"#, Ok(r#""#)),
            (r#"{{ '%s' % true }}"#, r#"{}"#, Ok(r#"True"#)),
            (r#"{{ '%x' % true }}"#, r#"{}"#, Ok(r#"1"#)),
            (r#"{{ '%f' % true }}"#, r#"{}"#, Ok(r#"1.000000"#)),
            (r#"{{ '%.1f' % 0.25 }}"#, r#"{}"#, Ok(r#"0.2"#)),
            (r#"{{ '%.1f' % 0.35 }}"#, r#"{}"#, Ok(r#"0.3"#)),
            (r#"{{ '%.3g' % 2.5e-5 }}"#, r#"{}"#, Ok(r#"2.5e-05"#)),
            (r#"{{ '%g' % 1e16 }}"#, r#"{}"#, Ok(r#"1e+16"#)),
            (r#"{{ '%g' % 999999.5 }}"#, r#"{}"#, Ok(r#"1e+06"#)),
            (r#"{{ '%.10g' % 0.1 }}"#, r#"{}"#, Ok(r#"0.1"#)),
            (r#"{{ '%#.3g' % 100000 }}"#, r#"{}"#, Ok(r#"1.00e+05"#)),
            (r#"{{ '%.0g' % 123 }}"#, r#"{}"#, Ok(r#"1e+02"#)),
            (r#"{{ '%.20f' % 0.1 }}"#, r#"{}"#, Ok(r#"0.10000000000000000555"#)),
            (r#"{{ '%.15e' % 0.1 }}"#, r#"{}"#, Ok(r#"1.000000000000000e-01"#)),
            (r#"{{ '%.17g' % 0.1 }}"#, r#"{}"#, Ok(r#"0.10000000000000001"#)),
            (
                r#"{{ '%f' % 123456789012345678901234567890.0 }}"#,
                r#"{}"#,
                Ok(r#"123456789012345677877719597056.000000"#),
            ),
            (r#"{{ '%s|%s' % (1e16, 1e-5) }}"#, r#"{}"#, Ok(r#"1e+16|1e-05"#)),
            (r#"{{ '%s' % 'ok' ~ '%s' % '' }}"#, r#"{}"#, Ok(r#"ok"#)),
            (r#"{{ '%*.*f|' % (8, 2, 3.14159) }}"#, r#"{}"#, Ok(r#"    3.14|"#)),
            (r#"{{ '%(x)05.1f|%(y)-4s|' % {'x': 2.25, 'y': 'ab'} }}"#, r#"{}"#, Ok(r#"002.2|ab  |"#)),
            (r#"{{ '%s' % {'a': none, 'b': (1, 'x')} }}"#, r#"{}"#, Ok(r#"{'a': None, 'b': (1, 'x')}"#)),
            (r#"{{ '%d%%' % 50 }}"#, r#"{}"#, Ok(r#"50%"#)),
            (r#"{{ '%%s' % () }}"#, r#"{}"#, Ok(r#"%s"#)),
            (r#"{{ '%s' % '' }}"#, r#"{}"#, Ok(r#""#)),
            (r#"{{ '%5s|%-5s|' % ('日本', '日本') }}"#, r#"{}"#, Ok(r#"   日本|日本   |"#)),
            (r#"{{ '%.1s' % '日本' }}"#, r#"{}"#, Ok(r#"日"#)),
        ]);
    }

    #[test]
    fn non_finite_floats() {
        let f = |fmt: &str, x: f64| py_format(fmt, &Value::from(x)).unwrap();
        assert_eq!(f("%f", f64::INFINITY), "inf");
        assert_eq!(f("%F", f64::NEG_INFINITY), "-INF");
        assert_eq!(f("%05f", f64::INFINITY), "00inf");
        assert_eq!(f("%+05f", f64::NEG_INFINITY), "-0inf");
        assert_eq!(f("%.2e", f64::NAN), "nan");
        assert_eq!(f("%G", f64::NAN), "NAN");
        assert_eq!(f("%s", f64::INFINITY), "inf");
        assert!(py_format("%d", &Value::from(f64::NAN)).unwrap_err().to_string().contains("cannot convert float NaN"));
        assert_eq!(py_mod(&Value::from(5.5), &Value::from(f64::INFINITY)).unwrap().to_string(), "5.5");
    }

    #[test]
    fn number_modulo() {
        let m = |a: Value, b: Value| py_mod(&a, &b).map(|v| pyjson::py_str(&v));
        assert_eq!(m(Value::from(-7), Value::from(3)).unwrap(), "2");
        assert_eq!(m(Value::from(7), Value::from(-3)).unwrap(), "-2");
        assert_eq!(m(Value::from(-7.5), Value::from(2)).unwrap(), "0.5");
        assert_eq!(m(Value::from(i64::MIN), Value::from(-1)).unwrap(), "0");
        assert_eq!(m(Value::from(true), Value::from(2)).unwrap(), "1");
        assert!(m(Value::from(1), Value::from(0)).unwrap_err().to_string().contains("integer modulo by zero"));
        assert!(m(Value::from(1), Value::from("a")).unwrap_err().to_string().contains("'int' and 'str'"));
        assert!(m(Value::UNDEFINED, Value::from(2)).is_err());
    }
}
