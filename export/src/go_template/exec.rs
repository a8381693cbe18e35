//! Executing a parsed template: Go's `text/template` exec rules (variable scopes, pipelines
//! with the previous result as the last argument, field chains, `missingkey=zero`, short-
//! circuit `and`/`or`, range over slices, maps in key order and ints) and the builtins.

use std::cmp::Ordering;

use super::parse::{Arg, List, Node, Number, Pipe};
use super::value::{self, Value};
use super::{Arity, Error, Rendered, Template, MAX_EXEC_STEPS, MAX_OUTPUT_BYTES};

enum Flow {
    Normal,
    Break,
    Continue,
}

struct State<'t> {
    tmpl: &'t Template,
    vars: Vec<(String, Value)>,
    out: Rendered,
    line: usize,
    /// Nodes walked, range iterations and commands run so far (see [`MAX_EXEC_STEPS`]).
    steps: u64,
}

pub fn execute(tmpl: &Template, data: &Value) -> Result<Rendered, Error> {
    let mut s = State { tmpl, vars: vec![("$".into(), data.clone())], out: Rendered::default(), line: 1, steps: 0 };
    s.walk_list(data, &tmpl.root)?;
    Ok(s.out)
}

type R<T> = Result<T, Error>;

impl State<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::exec(self.line, msg)
    }

    /// One more step of work; past [`MAX_EXEC_STEPS`] the template is stopped.
    fn tick(&mut self) -> R<()> {
        self.steps += 1;
        if self.steps > MAX_EXEC_STEPS {
            return Err(self.err(format!("stopped after {MAX_EXEC_STEPS} steps, mm's limit (a loop too long for a chat template)")));
        }
        Ok(())
    }

    /// Appends to the output, which may not pass [`MAX_OUTPUT_BYTES`].
    fn emit(&mut self, text: &str) -> R<()> {
        if self.out.text.len() + text.len() > MAX_OUTPUT_BYTES {
            return Err(self.err(format!("the output is over {MAX_OUTPUT_BYTES} bytes, mm's limit")));
        }
        self.out.text.push_str(text);
        Ok(())
    }

    fn walk_list(&mut self, dot: &Value, list: &List) -> R<Flow> {
        for node in list {
            match self.walk(dot, node)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    fn walk(&mut self, dot: &Value, node: &Node) -> R<Flow> {
        self.tick()?;
        match node {
            Node::Text(t) => self.emit(t)?,
            Node::Action(pipe) => {
                let v = self.eval_pipeline(dot, pipe)?;
                if pipe.decl.is_empty() {
                    if v.prints_go_syntax() {
                        self.out.go_syntax_prints.push((pipe.line, pipe.to_string()));
                    }
                    self.emit(&value::print(&v))?;
                }
            }
            Node::If(b) | Node::With(b) => {
                let mark = self.vars.len();
                self.line = b.line;
                let v = self.eval_pipeline(dot, &b.pipe)?;
                let flow = if v.truth() {
                    let inner = if matches!(node, Node::With(_)) { &v } else { dot };
                    self.walk_list(inner, &b.list)?
                } else if let Some(e) = &b.else_list {
                    self.walk_list(dot, e)?
                } else {
                    Flow::Normal
                };
                self.vars.truncate(mark);
                return Ok(flow);
            }
            Node::Range(b) => {
                let mark = self.vars.len();
                self.line = b.line;
                let v = self.eval_pipeline(dot, &b.pipe)?;
                // Lazily: `range 10000000000` must cost steps, not a list of ten billion items.
                let items: Box<dyn Iterator<Item = (Value, Value)> + '_> = match &v {
                    Value::List(l) => Box::new(l.items.iter().enumerate().map(|(i, x)| (Value::Int(i as i64), x.clone()))),
                    Value::Map(m) => Box::new(m.entries.iter().map(|(k, x)| (Value::str(k.as_str()), x.clone()))),
                    Value::Int(n) => {
                        if b.pipe.decl.len() > 1 {
                            return Err(self.err(format!("can't use {n} to iterate over more than one variable")));
                        }
                        Box::new((0..*n).map(|i| (Value::Int(i), Value::Int(i))))
                    }
                    Value::Invalid | Value::NilPtr(_) => Box::new(std::iter::empty()),
                    other => return Err(self.err(format!("range can't iterate over {}", value::print(other)))),
                };
                let n_decl = b.pipe.decl.len();
                let mut flow = Flow::Normal;
                let mut empty = true;
                for (index, elem) in items {
                    empty = false;
                    self.tick()?;
                    let (index, elem) = (&index, &elem);
                    if n_decl > 0 {
                        let top = self.vars.len();
                        if n_decl == 1 {
                            self.vars[top - 1].1 = elem.clone();
                        } else {
                            self.vars[top - 1].1 = elem.clone();
                            self.vars[top - 2].1 = index.clone();
                        }
                    }
                    let inner_mark = self.vars.len();
                    let f = self.walk_list(elem, &b.list)?;
                    self.vars.truncate(inner_mark);
                    if let Flow::Break = f {
                        break;
                    }
                }
                if empty {
                    if let Some(e) = &b.else_list {
                        flow = self.walk_list(dot, e)?;
                    }
                }
                self.vars.truncate(mark);
                return Ok(flow);
            }
            Node::Break => return Ok(Flow::Break),
            Node::Continue => return Ok(Flow::Continue),
        }
        Ok(Flow::Normal)
    }

    fn eval_pipeline(&mut self, dot: &Value, pipe: &Pipe) -> R<Value> {
        self.line = pipe.line;
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.eval_command(dot, &cmd.args, value)?);
        }
        let value = value.unwrap_or(Value::Invalid);
        for name in &pipe.decl {
            if pipe.is_assign {
                self.set_var(name, value.clone())?;
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn set_var(&mut self, name: &str, value: Value) -> R<()> {
        match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
            Some(slot) => {
                slot.1 = value;
                Ok(())
            }
            None => Err(self.err(format!("undefined variable: {name}"))),
        }
    }

    fn var(&self, name: &str) -> R<Value> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| self.err(format!("undefined variable: {name}")))
    }

    fn not_a_function(&self, args: &[Arg], final_: &Option<Value>) -> R<()> {
        if args.len() > 1 || final_.is_some() {
            return Err(self.err(format!("can't give argument to non-function {}", args[0])));
        }
        Ok(())
    }

    fn eval_command(&mut self, dot: &Value, args: &[Arg], final_: Option<Value>) -> R<Value> {
        match &args[0] {
            Arg::Field(idents) => self.eval_field_chain(dot.clone(), idents, args, final_),
            Arg::Chain(node, fields) => {
                if matches!(node.as_ref(), Arg::Nil) {
                    return Err(self.err(format!("indirection through explicit nil in {}", args[0])));
                }
                let receiver = self.eval_arg(dot, node)?;
                self.eval_field_chain(receiver, fields, args, final_)
            }
            Arg::Ident(name) => self.eval_function(dot, name, args, final_),
            Arg::Pipe(p) => {
                self.not_a_function(args, &final_)?;
                self.eval_pipeline(dot, p)
            }
            Arg::Variable(idents) => {
                let v = self.var(&idents[0])?;
                if idents.len() == 1 {
                    self.not_a_function(args, &final_)?;
                    return Ok(v);
                }
                self.eval_field_chain(v, &idents[1..], args, final_)
            }
            Arg::Nil => Err(self.err("nil is not a command")),
            literal => {
                self.not_a_function(args, &final_)?;
                Ok(self.literal(dot, literal))
            }
        }
    }

    fn literal(&self, dot: &Value, arg: &Arg) -> Value {
        match arg {
            Arg::Dot => dot.clone(),
            Arg::Bool(b) => Value::Bool(*b),
            Arg::Number(Number::Int(i)) => Value::Int(*i),
            Arg::Number(Number::Float(f)) => Value::Float(*f),
            Arg::Str(s) => Value::str(s.as_str()),
            _ => Value::Invalid,
        }
    }

    fn eval_field_chain(
        &mut self,
        mut receiver: Value,
        idents: &[String],
        args: &[Arg],
        final_: Option<Value>,
    ) -> R<Value> {
        let n = idents.len();
        for ident in &idents[..n - 1] {
            receiver = self.eval_field(ident, receiver, false)?;
        }
        let has_args = args.len() > 1 || final_.is_some();
        self.eval_field(&idents[n - 1], receiver, has_args)
    }

    fn eval_field(&mut self, name: &str, receiver: Value, has_args: bool) -> R<Value> {
        // The one method templates call on ollama's types: String().
        if name == "String" {
            if let Some(stringer) = receiver.go_type().and_then(|t| t.stringer) {
                if has_args {
                    return Err(self.err("wrong number of args for String: want 0 got 1"));
                }
                return Ok(Value::str(stringer(&receiver)));
            }
        }
        match &receiver {
            Value::Struct(_) => {
                let Some(v) = receiver.field(name) else {
                    return Err(self.err(format!("can't evaluate field {name} in type {}", receiver.type_name())));
                };
                if has_args {
                    return Err(self.err(format!("{name} has arguments but cannot be invoked as function")));
                }
                Ok(v.clone())
            }
            Value::Map(m) => {
                if has_args {
                    return Err(self.err(format!("{name} is not a method but has arguments")));
                }
                match m.entries.get(name) {
                    Some(v) => Ok(v.clone()),
                    None => {
                        self.out.missing_keys.push((m.ty, name.to_string()));
                        Ok((m.ty.elem_zero)())
                    }
                }
            }
            Value::NilPtr(t) => Err(self.err(format!("nil pointer evaluating *{}.{name}", t.name))),
            Value::Invalid => Err(self.err(format!("nil pointer evaluating interface {{}}.{name}"))),
            other => Err(self.err(format!("can't evaluate field {name} in type {}", other.type_name()))),
        }
    }

    fn eval_arg(&mut self, dot: &Value, arg: &Arg) -> R<Value> {
        match arg {
            Arg::Field(idents) => self.eval_field_chain(dot.clone(), idents, std::slice::from_ref(arg), None),
            Arg::Variable(idents) => {
                let v = self.var(&idents[0])?;
                if idents.len() == 1 {
                    return Ok(v);
                }
                self.eval_field_chain(v, &idents[1..], std::slice::from_ref(arg), None)
            }
            Arg::Chain(..) => self.eval_command(dot, std::slice::from_ref(arg), None),
            Arg::Pipe(p) => self.eval_pipeline(dot, p),
            Arg::Ident(name) => self.eval_function(dot, name, std::slice::from_ref(arg), None),
            Arg::Nil => Ok(Value::Invalid),
            literal => Ok(self.literal(dot, literal)),
        }
    }

    fn eval_function(&mut self, dot: &Value, name: &str, args: &[Arg], final_: Option<Value>) -> R<Value> {
        let n_args = args.len() - 1 + usize::from(final_.is_some());
        let arity = match name {
            "and" | "or" | "index" | "slice" | "printf" => Arity::AtLeast(1),
            "eq" => Arity::AtLeast(1),
            "not" | "len" => Arity::Exactly(1),
            "ne" | "lt" | "le" | "gt" | "ge" => Arity::Exactly(2),
            "print" | "println" | "html" | "js" | "urlquery" | "call" => Arity::AtLeast(0),
            other => match self.tmpl.func(other) {
                Some(f) => f.arity,
                None => return Err(self.err(format!("{other:?} is not a defined function"))),
            },
        };
        match arity {
            Arity::Exactly(k) if n_args != k => {
                return Err(self.err(format!("wrong number of args for {name}: want {k} got {n_args}")))
            }
            Arity::AtLeast(k) if n_args < k => {
                return Err(self.err(format!("wrong number of args for {name}: want at least {k} got {n_args}")))
            }
            _ => {}
        }
        if name == "and" || name == "or" {
            let want = name == "or";
            let mut v = Value::Invalid;
            for a in &args[1..] {
                v = self.eval_arg(dot, a)?;
                if v.truth() == want {
                    return Ok(v);
                }
            }
            if let Some(f) = final_ {
                v = f;
            }
            return Ok(v);
        }
        let mut values = Vec::with_capacity(n_args);
        for a in &args[1..] {
            values.push(self.eval_arg(dot, a)?);
        }
        values.extend(final_);
        let result = match self.tmpl.func(name) {
            Some(f) if !super::parse::BUILTINS.contains(&name) => (f.call)(&values),
            _ => builtin(name, &values),
        };
        self.tick()?;
        let value = result.map_err(|e| self.err(format!("error calling {name}: {e}")))?;
        // A string a function builds (`printf "%s%s" $x $x` in a loop) may not outgrow the output.
        if let Value::Str(s) = &value {
            if s.len() > MAX_OUTPUT_BYTES {
                return Err(self.err(format!("{name} made a string over {MAX_OUTPUT_BYTES} bytes, mm's limit")));
            }
        }
        Ok(value)
    }
}

fn builtin(name: &str, a: &[Value]) -> Result<Value, String> {
    match name {
        "not" => Ok(Value::Bool(!a[0].truth())),
        "len" => match &a[0] {
            Value::Str(s) => Ok(Value::Int(s.len() as i64)),
            Value::List(l) => Ok(Value::Int(l.items.len() as i64)),
            Value::Map(m) => Ok(Value::Int(m.entries.len() as i64)),
            Value::NilPtr(_) => Err("len of nil pointer".into()),
            Value::Invalid => Err("len of untyped nil".into()),
            other => Err(format!("len of type {}", other.type_name())),
        },
        "index" => {
            let mut item = a[0].clone();
            for idx in &a[1..] {
                item = match &item {
                    Value::List(l) => l.items.get(index_arg(idx, l.items.len())?).cloned().ok_or("index out of range")?,
                    Value::Str(s) => Value::Byte(s.as_bytes()[index_arg(idx, s.len())?]),
                    Value::Map(m) => {
                        let Value::Str(k) = idx else {
                            return Err(format!("value has type {}; should be string", idx.type_name()));
                        };
                        m.entries.get(&**k).cloned().unwrap_or_else(m.ty.elem_zero)
                    }
                    Value::Invalid => return Err("index of untyped nil".into()),
                    Value::NilPtr(_) => return Err("index of nil pointer".into()),
                    other => return Err(format!("can't index item of type {}", other.type_name())),
                };
            }
            Ok(item)
        }
        "slice" => {
            let item = &a[0];
            let len = match item {
                Value::Str(s) => s.len(),
                Value::List(l) => l.items.len(),
                Value::Invalid => return Err("slice of untyped nil".into()),
                other => return Err(format!("can't slice item of type {}", other.type_name())),
            };
            if a.len() > 4 {
                return Err(format!("too many slice indexes: {}", a.len() - 1));
            }
            if a.len() == 4 && matches!(item, Value::Str(_)) {
                return Err("cannot 3-index slice a string".into());
            }
            let mut idx = [0usize, len, len];
            for (i, v) in a[1..].iter().enumerate() {
                idx[i] = index_arg(v, len + 1)?;
            }
            if idx[0] > idx[1] {
                return Err(format!("invalid slice index: {} > {}", idx[0], idx[1]));
            }
            match item {
                Value::Str(s) => s
                    .get(idx[0]..idx[1])
                    .map(Value::str)
                    .ok_or_else(|| "slicing a string inside a UTF-8 character is not supported".to_string()),
                Value::List(l) => Ok(Value::list(l.ty, l.items[idx[0]..idx[1]].to_vec())),
                _ => unreachable!(),
            }
        }
        "eq" => {
            if a.len() < 2 {
                return Err("missing argument for comparison".into());
            }
            for b in &a[1..] {
                if equal(&a[0], b)? {
                    return Ok(Value::Bool(true));
                }
            }
            Ok(Value::Bool(false))
        }
        "ne" => Ok(Value::Bool(!equal(&a[0], &a[1])?)),
        "lt" => Ok(Value::Bool(compare(&a[0], &a[1])? == Ordering::Less)),
        "le" => Ok(Value::Bool(compare(&a[0], &a[1])? != Ordering::Greater)),
        "gt" => Ok(Value::Bool(compare(&a[0], &a[1])? == Ordering::Greater)),
        "ge" => Ok(Value::Bool(compare(&a[0], &a[1])? != Ordering::Less)),
        "print" => Ok(Value::str(sprint(a))),
        "println" => {
            let parts: Vec<String> = a.iter().map(fmt_arg).collect();
            Ok(Value::str(parts.join(" ") + "\n"))
        }
        "printf" => {
            let Value::Str(f) = &a[0] else { return Err(format!("wrong type for value; expected string; got {}", a[0].type_name())) };
            Ok(Value::str(sprintf(f, &a[1..])))
        }
        "html" => {
            let s = sprint(a);
            let mut out = String::new();
            for c in s.chars() {
                match c {
                    '"' => out.push_str("&#34;"),
                    '\'' => out.push_str("&#39;"),
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '\0' => out.push('\u{FFFD}'),
                    c => out.push(c),
                }
            }
            Ok(Value::str(out))
        }
        other => Err(format!("{other} is not supported by mm's Go-template renderer")),
    }
}

fn index_arg(v: &Value, cap: usize) -> Result<usize, String> {
    let i = match v {
        Value::Int(i) => *i,
        Value::Byte(b) => *b as i64,
        Value::Invalid => return Err("cannot index slice/array with nil".into()),
        other => return Err(format!("cannot index slice/array with type {}", other.type_name())),
    };
    if i < 0 || i as usize >= cap {
        return Err(format!("index out of range: {i}"));
    }
    Ok(i as usize)
}

#[derive(PartialEq)]
enum Kind {
    Invalid,
    Bool,
    Int,
    Float,
    Str,
    Other,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Invalid => Kind::Invalid,
        Value::Bool(_) => Kind::Bool,
        Value::Int(_) | Value::Byte(_) => Kind::Int,
        Value::Float(_) => Kind::Float,
        Value::Str(_) => Kind::Str,
        _ => Kind::Other,
    }
}

fn as_i64(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Byte(b) => *b as i64,
        _ => 0,
    }
}

/// Go's `eq` for two values.
fn equal(x: &Value, y: &Value) -> Result<bool, String> {
    let (kx, ky) = (kind(x), kind(y));
    if kx != ky {
        if kx == Kind::Invalid || ky == Kind::Invalid {
            return Ok(false);
        }
        return Err("incompatible types for comparison".into());
    }
    Ok(match (x, y) {
        (Value::Invalid, Value::Invalid) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Float(a), Value::Float(b)) => a == b,
        (Value::Str(a), Value::Str(b)) => a == b,
        _ if kx == Kind::Int => as_i64(x) == as_i64(y),
        (Value::NilPtr(_), _) | (_, Value::NilPtr(_)) => {
            matches!(x, Value::NilPtr(_)) && matches!(y, Value::NilPtr(_))
        }
        (Value::List(_) | Value::Map(_), _) | (_, Value::List(_) | Value::Map(_)) => {
            return Err(format!("non-comparable type {}: {}", value::print(x), x.type_name()))
        }
        _ => return Err(format!("non-comparable type {}", x.type_name())),
    })
}

/// Go's `lt` ordering.
fn compare(x: &Value, y: &Value) -> Result<Ordering, String> {
    let (kx, ky) = (kind(x), kind(y));
    if kx != ky {
        return Err("incompatible types for comparison".into());
    }
    match (x, y) {
        (Value::Float(a), Value::Float(b)) => Ok(a.partial_cmp(b).unwrap_or(Ordering::Equal)),
        (Value::Str(a), Value::Str(b)) => Ok(a.as_bytes().cmp(b.as_bytes())),
        _ if kx == Kind::Int => Ok(as_i64(x).cmp(&as_i64(y))),
        _ => Err("invalid type for comparison".into()),
    }
}

/// An operand as `fmt` prints it (nil interfaces are `<nil>`).
fn fmt_arg(v: &Value) -> String {
    let mut s = String::new();
    value::fmt_v(v, 0, &mut s);
    s
}

/// `fmt.Sprint`: spaces between operands when neither side is a string.
fn sprint(a: &[Value]) -> String {
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        if i > 0 && !matches!(v, Value::Str(_)) && !matches!(a[i - 1], Value::Str(_)) {
            out.push(' ');
        }
        out.push_str(&fmt_arg(v));
    }
    out
}

/// `fmt.Sprintf` for the plain verbs (`%v %s %d %q %t %%`), without flags or widths.
fn sprintf(f: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = it.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        match verb {
            'q' => match v {
                Value::Str(s) => out.push_str(&go_quote(s)),
                other => out.push_str(&fmt_arg(other)),
            },
            'T' => out.push_str(&v.type_name()),
            _ => out.push_str(&fmt_arg(v)),
        }
    }
    let extra: Vec<String> = it.map(|v| format!("{}={}", v.type_name(), fmt_arg(v))).collect();
    if !extra.is_empty() {
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
