//! The parse tree of Go's `text/template` and its parser, with Go's parse-time checks
//! (functions must exist, variables must be declared, `else`/`end` must match, …).

use std::fmt;

use super::lex::{lex, Keyword, Tok, Token};
use super::{Error, MAX_NESTING};

/// A list of nodes (Go's `ListNode`).
pub type List = Vec<Node>;

#[derive(Debug, Clone)]
pub enum Node {
    Text(String),
    /// `{{ pipeline }}`: prints the value unless the pipeline declares or assigns.
    Action(Pipe),
    If(Branch),
    Range(Branch),
    With(Branch),
    Break,
    Continue,
}

#[derive(Debug, Clone)]
pub struct Branch {
    pub line: usize,
    pub pipe: Pipe,
    pub list: List,
    /// `{{ else }}` part; `{{ else if … }}` is an else list holding a single `If`.
    pub else_list: Option<List>,
}

#[derive(Debug, Clone, Default)]
pub struct Pipe {
    pub line: usize,
    /// Declared (`:=`) or assigned (`=`) variables.
    pub decl: Vec<String>,
    pub is_assign: bool,
    pub cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub struct Command {
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub enum Arg {
    /// `.A.B`.
    Field(Vec<String>),
    /// `$x.A.B` (`$x` first).
    Variable(Vec<String>),
    Dot,
    /// A function name.
    Ident(String),
    /// `(pipeline).A.B`.
    Chain(Box<Arg>, Vec<String>),
    /// `(pipeline)`.
    Pipe(Pipe),
    Str(String),
    Number(Number),
    Bool(bool),
    Nil,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i64),
    Float(f64),
}

/// The names of the functions a template may call (Go checks them at parse time).
pub const BUILTINS: [&str; 19] = [
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf", "println", "urlquery", "eq",
    "ge", "gt", "le", "lt", "ne",
];

pub struct Parser<'f> {
    toks: Vec<Token>,
    pos: usize,
    vars: Vec<String>,
    range_depth: usize,
    /// Blocks and parenthesized pipelines open around the current token (see [`MAX_NESTING`]).
    depth: usize,
    funcs: &'f dyn Fn(&str) -> bool,
}

pub fn parse(src: &str, has_func: &dyn Fn(&str) -> bool) -> Result<List, Error> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, vars: vec!["$".into()], range_depth: 0, depth: 0, funcs: has_func };
    let mut root = Vec::new();
    loop {
        if matches!(p.peek().tok, Tok::Eof) {
            return Ok(root);
        }
        match p.text_or_action()? {
            Item::Node(n) => root.push(n),
            Item::End(line) => return Err(Error::parse(line, "unexpected {{end}}")),
            Item::Else(line, _) => return Err(Error::parse(line, "unexpected {{else}}")),
        }
    }
}

enum Item {
    Node(Node),
    End(usize),
    /// `{{ else }}`, or `{{ else if`/`{{ else with` with the keyword still to read.
    Else(usize, Option<Keyword>),
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn backup(&mut self) {
        self.pos -= 1;
    }

    fn peek_non_space(&mut self) -> Token {
        while matches!(self.peek().tok, Tok::Space) {
            self.pos += 1;
        }
        self.peek().clone()
    }

    fn next_non_space(&mut self) -> Token {
        self.peek_non_space();
        self.next()
    }

    fn unexpected(&self, t: &Token, context: &str) -> Error {
        let what = match &t.tok {
            Tok::Eof => "EOF".to_string(),
            Tok::RightDelim => "\"}}\"".to_string(),
            Tok::RightParen => "\")\"".to_string(),
            other => describe(other),
        };
        Error::parse(t.line, format!("unexpected {what} in {context}"))
    }

    fn text_or_action(&mut self) -> Result<Item, Error> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Text(s) => Ok(Item::Node(Node::Text(s))),
            Tok::LeftDelim => self.action(),
            _ => Err(self.unexpected(&t, "input")),
        }
    }

    fn action(&mut self) -> Result<Item, Error> {
        let t = self.next_non_space();
        let line = t.line;
        match t.tok {
            Tok::Keyword(Keyword::If) => Ok(Item::Node(Node::If(self.control(true, "if", line)?))),
            Tok::Keyword(Keyword::Range) => Ok(Item::Node(Node::Range(self.control(false, "range", line)?))),
            Tok::Keyword(Keyword::With) => Ok(Item::Node(Node::With(self.control(true, "with", line)?))),
            Tok::Keyword(Keyword::End) => {
                self.expect_right_delim("end")?;
                Ok(Item::End(line))
            }
            Tok::Keyword(Keyword::Else) => {
                let peek = self.peek_non_space();
                if let Tok::Keyword(k @ (Keyword::If | Keyword::With)) = peek.tok {
                    return Ok(Item::Else(line, Some(k)));
                }
                self.expect_right_delim("else")?;
                Ok(Item::Else(line, None))
            }
            Tok::Keyword(k @ (Keyword::Break | Keyword::Continue)) => {
                let name = k.name();
                let t = self.next_non_space();
                if !matches!(t.tok, Tok::RightDelim) {
                    return Err(self.unexpected(&t, &format!("{{{{{name}}}}}")));
                }
                if self.range_depth == 0 {
                    return Err(Error::parse(line, format!("{{{{{name}}}}} outside {{{{range}}}}")));
                }
                Ok(Item::Node(if k == Keyword::Break { Node::Break } else { Node::Continue }))
            }
            Tok::Keyword(k @ (Keyword::Template | Keyword::Define | Keyword::Block)) => Err(Error::unsupported(
                line,
                format!("{{{{{}}}}} (named templates) is not supported by mm's Go-template checker", k.name()),
            )),
            _ => {
                self.backup();
                let pipe = self.pipeline("command", true)?;
                Ok(Item::Node(Node::Action(pipe)))
            }
        }
    }

    fn expect_right_delim(&mut self, context: &str) -> Result<(), Error> {
        let t = self.next_non_space();
        if !matches!(t.tok, Tok::RightDelim) {
            return Err(self.unexpected(&t, context));
        }
        Ok(())
    }

    /// Runs `f` one nesting level deeper, refusing to go past [`MAX_NESTING`] so that a hostile
    /// template cannot overflow the stack.
    fn nested<T>(&mut self, line: usize, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        if self.depth >= MAX_NESTING {
            return Err(Error::limit(line, format!("blocks or parentheses nested more than {MAX_NESTING} deep, mm's limit")));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// `if`/`range`/`with` after the keyword, through the matching `{{end}}`.
    fn control(&mut self, allow_else_chain: bool, context: &str, line: usize) -> Result<Branch, Error> {
        self.nested(line, |p| p.control_inner(allow_else_chain, context, line))
    }

    fn control_inner(&mut self, allow_else_chain: bool, context: &str, line: usize) -> Result<Branch, Error> {
        let saved_vars = self.vars.len();
        let result = (|| {
            let pipe = self.pipeline(context, true)?;
            if context == "range" {
                self.range_depth += 1;
            }
            let (list, next) = self.item_list()?;
            if context == "range" {
                self.range_depth -= 1;
            }
            let else_list = match next {
                Item::End(_) => None,
                Item::Else(else_line, chained) => match chained {
                    Some(k) => {
                        let expected = if context == "with" { Keyword::With } else { Keyword::If };
                        if !allow_else_chain || k != expected {
                            return Err(Error::parse(
                                else_line,
                                format!("unexpected {{{{else {}}}}} in {{{{{context}}}}}", k.name()),
                            ));
                        }
                        self.next_non_space(); // the `if`/`with`
                        let inner_line = self.peek().line;
                        // `{{else if x}}…{{end}}` needs one `{{end}}` only: the inner one.
                        let inner = self.control(true, context, inner_line)?;
                        let node = if k == Keyword::If { Node::If(inner) } else { Node::With(inner) };
                        Some(vec![node])
                    }
                    None => {
                        let (else_list, next) = self.item_list()?;
                        match next {
                            Item::End(_) => Some(else_list),
                            Item::Else(l, _) => return Err(Error::parse(l, "expected end; found {{else}}")),
                            Item::Node(_) => unreachable!("item_list stops at end or else"),
                        }
                    }
                },
                Item::Node(_) => unreachable!("item_list stops at end or else"),
            };
            Ok(Branch { line, pipe, list, else_list })
        })();
        self.vars.truncate(saved_vars);
        result
    }

    /// Nodes up to an `{{end}}` or `{{else}}`, which is returned too.
    fn item_list(&mut self) -> Result<(List, Item), Error> {
        let mut list = Vec::new();
        loop {
            let t = self.peek_non_space();
            if matches!(t.tok, Tok::Eof) {
                return Err(Error::parse(t.line, "unexpected EOF"));
            }
            match self.text_or_action()? {
                Item::Node(n) => list.push(n),
                other => return Ok((list, other)),
            }
        }
    }

    /// A pipeline ending at `}}` (`at_delim`) or `)`.
    fn pipeline(&mut self, context: &str, at_delim: bool) -> Result<Pipe, Error> {
        let mut pipe = Pipe { line: self.peek().line, ..Pipe::default() };
        // Declarations: `$x :=`, `$x =`, `$i, $v :=` (range only).
        'decls: loop {
            let v = self.peek_non_space();
            let Tok::Variable(name) = v.tok.clone() else { break };
            let var_pos = self.pos;
            self.next();
            let next = self.peek_non_space();
            match next.tok {
                Tok::Assign | Tok::Declare => {
                    pipe.is_assign = matches!(next.tok, Tok::Assign);
                    self.next_non_space();
                    pipe.decl.push(name.clone());
                    if !pipe.is_assign {
                        self.vars.push(name);
                    } else {
                        self.use_var(&name, v.line)?;
                    }
                    break;
                }
                Tok::Other(',') => {
                    self.next_non_space();
                    pipe.decl.push(name.clone());
                    self.vars.push(name);
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space().tok {
                            Tok::Variable(_) | Tok::RightDelim | Tok::RightParen => continue 'decls,
                            _ => return Err(Error::parse(next.line, "range can only initialize variables")),
                        }
                    }
                    return Err(Error::parse(next.line, format!("too many declarations in {context}")));
                }
                _ => {
                    // Not a declaration: the variable starts the first command.
                    self.pos = var_pos;
                    break;
                }
            }
        }
        loop {
            let t = self.next_non_space();
            match &t.tok {
                Tok::RightDelim if at_delim => break,
                Tok::RightParen if !at_delim => break,
                Tok::Bool(_)
                | Tok::Char(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Nil
                | Tok::Str(_)
                | Tok::Variable(_)
                | Tok::LeftParen => {
                    self.backup();
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
                _ => return Err(self.unexpected(&t, context)),
            }
        }
        if pipe.cmds.is_empty() {
            return Err(Error::parse(pipe.line, format!("missing value for {context}")));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if matches!(c.args[0], Arg::Bool(_) | Arg::Dot | Arg::Nil | Arg::Number(_) | Arg::Str(_)) {
                return Err(Error::parse(pipe.line, format!("non executable command in pipeline stage {}", i + 1)));
            }
        }
        Ok(pipe)
    }

    fn use_var(&self, name: &str, line: usize) -> Result<(), Error> {
        if self.vars.iter().any(|v| v == name) {
            Ok(())
        } else {
            Err(Error::parse(line, format!("undefined variable {name:?}")))
        }
    }

    fn command(&mut self) -> Result<Command, Error> {
        let mut args = Vec::new();
        loop {
            self.peek_non_space();
            if let Some(op) = self.operand()? {
                args.push(op);
            }
            let t = self.next();
            match t.tok {
                Tok::Space => continue,
                Tok::RightDelim | Tok::RightParen => self.backup(),
                Tok::Pipe => {}
                _ => return Err(self.unexpected(&t, "operand")),
            }
            break;
        }
        if args.is_empty() {
            return Err(Error::parse(self.peek().line, "empty command"));
        }
        Ok(Command { args })
    }

    fn operand(&mut self) -> Result<Option<Arg>, Error> {
        let Some(term) = self.term()? else { return Ok(None) };
        let mut fields = Vec::new();
        while let Tok::Field(f) = &self.peek().tok {
            fields.push(f.clone());
            self.next();
        }
        if fields.is_empty() {
            return Ok(Some(term));
        }
        Ok(Some(match term {
            Arg::Field(mut f) => {
                f.extend(fields);
                Arg::Field(f)
            }
            Arg::Variable(mut v) => {
                v.extend(fields);
                Arg::Variable(v)
            }
            Arg::Bool(_) | Arg::Str(_) | Arg::Number(_) | Arg::Nil | Arg::Dot => {
                return Err(Error::parse(self.peek().line, format!("unexpected . after term {:?}", term.to_string())))
            }
            other => Arg::Chain(Box::new(other), fields),
        }))
    }

    fn term(&mut self) -> Result<Option<Arg>, Error> {
        let t = self.next_non_space();
        Ok(Some(match t.tok {
            Tok::Ident(name) => {
                if !(self.funcs)(&name) {
                    return Err(Error::parse(t.line, format!("function {name:?} not defined")));
                }
                Arg::Ident(name)
            }
            Tok::Dot => Arg::Dot,
            Tok::Nil => Arg::Nil,
            Tok::Variable(name) => {
                self.use_var(&name, t.line)?;
                Arg::Variable(vec![name])
            }
            Tok::Field(f) => Arg::Field(vec![f]),
            Tok::Bool(b) => Arg::Bool(b),
            Tok::Number(s) => Arg::Number(parse_number(&s).ok_or_else(|| {
                Error::parse(t.line, format!("illegal number syntax: {s:?}"))
            })?),
            Tok::Char(s) => {
                let c = unquote_char(&s).ok_or_else(|| Error::parse(t.line, format!("malformed character constant: {s}")))?;
                Arg::Number(Number::Int(c as i64))
            }
            Tok::LeftParen => Arg::Pipe(self.nested(t.line, |p| p.pipeline("parenthesized pipeline", false))?),
            Tok::Str(s) => Arg::Str(unquote(&s).ok_or_else(|| Error::parse(t.line, format!("invalid syntax: {s}")))?),
            _ => {
                self.backup();
                return Ok(None);
            }
        }))
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Text(s) => format!("{s:?}"),
        Tok::LeftDelim => "\"{{\"".into(),
        Tok::RightDelim => "\"}}\"".into(),
        Tok::Space => "space".into(),
        Tok::Field(f) => format!("<.{f}>"),
        Tok::Variable(v) => format!("<{v}>"),
        Tok::Dot => "<.>".into(),
        Tok::Ident(i) => format!("<{i}>"),
        Tok::Keyword(k) => format!("<{}>", k.name()),
        Tok::Bool(b) => format!("<{b}>"),
        Tok::Nil => "<nil>".into(),
        Tok::Str(s) | Tok::Number(s) | Tok::Char(s) => format!("<{s}>"),
        Tok::Pipe => "<|>".into(),
        Tok::LeftParen => "<(>".into(),
        Tok::RightParen => "<)>".into(),
        Tok::Declare => "<:=>".into(),
        Tok::Assign => "<=>".into(),
        Tok::Other(c) => format!("<{c}>"),
        Tok::Eof => "EOF".into(),
    }
}

/// A Go number constant: an int when it is written as one and fits, else a float.
fn parse_number(s: &str) -> Option<Number> {
    let clean: String = s.chars().filter(|&c| c != '_').collect();
    if clean.ends_with('i') {
        return None; // complex constants: not supported
    }
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b.to_string()),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean).to_string()),
    };
    let sign = if neg { -1 } else { 1 };
    let lower = body.to_ascii_lowercase();
    let int = if let Some(h) = lower.strip_prefix("0x") {
        if h.contains(['.', 'p']) {
            None
        } else {
            i64::from_str_radix(h, 16).ok()
        }
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if lower.contains(['.', 'e']) {
        None
    } else if lower.len() > 1 && lower.starts_with('0') {
        i64::from_str_radix(&lower[1..], 8).ok()
    } else {
        lower.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Some(Number::Int(sign * i));
    }
    if lower.starts_with("0x") {
        return None; // hex floats: not supported
    }
    if !lower.contains(['.', 'e', 'p']) {
        return None; // integer-shaped but not an int: Go says "integer overflow"
    }
    lower.parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| Number::Float(sign as f64 * f))
}

/// Go's `strconv.Unquote` for `"…"` and `` `…` `` literals.
pub fn unquote(s: &str) -> Option<String> {
    if let Some(raw) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        return Some(raw.replace('\r', ""));
    }
    let body = s.strip_prefix('"')?.strip_suffix('"')?;
    unescape(body, '"')
}

fn unquote_char(s: &str) -> Option<char> {
    let body = s.strip_prefix('\'')?.strip_suffix('\'')?;
    let out = unescape(body, '\'')?;
    let mut chars = out.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

fn unescape(body: &str, quote: char) -> Option<String> {
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == quote || c == '\n' {
                return None;
            }
            out.push(c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Option<u32> {
            let s: String = (0..n).map(|_| chars.next()).collect::<Option<String>>()?;
            u32::from_str_radix(&s, 16).ok()
        };
        match e {
            'a' => out.push('\x07'),
            'b' => out.push('\x08'),
            'f' => out.push('\x0c'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'v' => out.push('\x0b'),
            '\\' => out.push('\\'),
            c if c == quote => out.push(c),
            'x' => {
                // A byte; mm's strings are UTF-8, so only ASCII bytes are representable.
                let b = hex(&mut chars, 2)?;
                out.push(char::from_u32(b).filter(|c| c.is_ascii())?);
            }
            'u' => out.push(char::from_u32(hex(&mut chars, 4)?)?),
            'U' => out.push(char::from_u32(hex(&mut chars, 8)?)?),
            '0'..='7' => {
                let mut v = e.to_digit(8)?;
                for _ in 0..2 {
                    v = v * 8 + chars.next()?.to_digit(8)?;
                }
                out.push(char::from_u32(v).filter(|c| c.is_ascii())?);
            }
            _ => return None,
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Printing nodes back (for messages), close to Go's `Node.String()`.

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Field(idents) => {
                for i in idents {
                    write!(f, ".{i}")?;
                }
                Ok(())
            }
            Arg::Variable(idents) => write!(f, "{}", idents.join(".")),
            Arg::Dot => f.write_str("."),
            Arg::Ident(name) => f.write_str(name),
            Arg::Chain(node, fields) => {
                match node.as_ref() {
                    Arg::Pipe(p) => write!(f, "({p})")?,
                    other => write!(f, "{other}")?,
                }
                for i in fields {
                    write!(f, ".{i}")?;
                }
                Ok(())
            }
            Arg::Pipe(p) => write!(f, "({p})"),
            Arg::Str(s) => write!(f, "{s:?}"),
            Arg::Number(Number::Int(i)) => write!(f, "{i}"),
            Arg::Number(Number::Float(x)) => write!(f, "{x}"),
            Arg::Bool(b) => write!(f, "{b}"),
            Arg::Nil => f.write_str("nil"),
        }
    }
}

impl fmt::Display for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.decl.is_empty() {
            write!(f, "{} {} ", self.decl.join(", "), if self.is_assign { "=" } else { ":=" })?;
        }
        for (i, c) in self.cmds.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            for (j, a) in c.args.iter().enumerate() {
                if j > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{a}")?;
            }
        }
        Ok(())
    }
}
