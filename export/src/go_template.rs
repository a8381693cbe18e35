//! A Go `text/template` parser and renderer, enough to check and run ollama TEMPLATEs without
//! Go: text and actions with trim markers and comments, pipelines with `|`, variables
//! (`:=`, `=`, `$`), fields (`.A.B`, `$x.A`, `(pipe).A`), `if`/`else if`/`else with`/`range`
//! (with `$i, $v :=`, `break`, `continue`)/`with`/`end`, the builtin functions
//! (`and or not eq ne lt le gt ge len index slice print printf println html`), and caller
//! functions (ollama's `json`, …). Values follow Go's rules for truth, comparison, `fmt`
//! printing and `encoding/json` (see [`value`]). Execution uses `missingkey=zero`, as ollama
//! does. Not supported: `define`/`template`/`block`, `call`, `js`, `urlquery`, complex numbers.
//!
//! Parse errors carry Go's wording (`function "foo" not defined`, `undefined variable "$x"`,
//! `unexpected EOF`, …), so a template that parses here parses in Go, and the converse for
//! everything but the unsupported actions, which are reported as such.

mod exec;
mod lex;
pub mod parse;
pub mod value;

use std::fmt;

pub use parse::{Arg, Branch, Command, List, Node, Pipe};
pub use value::{Field, GoType, Value};

/// Limits that keep a hostile TEMPLATE from overflowing mm's stack, hanging it or exhausting
/// its memory. Ollama's own templates nest a few levels deep and run a few thousand steps.
///
/// Deepest nesting of `if`/`range`/`with` blocks and parenthesized pipelines (parse time).
pub const MAX_NESTING: usize = 200;
/// Nodes walked, range iterations and function calls in one execution.
pub const MAX_EXEC_STEPS: u64 = 1_000_000;
/// Longest output, and longest string a function may build: 16 MiB.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The template does not parse (Go would reject it too).
    Parse,
    /// The template uses something this implementation does not do (Go may accept it).
    Unsupported,
    /// Execution failed (Go would fail the same way).
    Exec,
    /// The template goes past one of mm's limits ([`MAX_NESTING`]): refused, not checked.
    Limit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    pub line: usize,
    pub message: String,
}

impl Error {
    pub(crate) fn parse(line: usize, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Parse, line, message: message.into() }
    }

    pub(crate) fn unsupported(line: usize, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unsupported, line, message: message.into() }
    }

    pub(crate) fn limit(line: usize, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Limit, line, message: message.into() }
    }

    pub(crate) fn exec(line: usize, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Exec, line, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Parse => write!(f, "template:{}: {}", self.line, self.message),
            ErrorKind::Unsupported | ErrorKind::Limit => write!(f, "template:{}: {}", self.line, self.message),
            ErrorKind::Exec => write!(f, "template:{}: executing: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for Error {}

/// How many arguments a function takes.
#[derive(Debug, Clone, Copy)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

/// A function the template can call besides the builtins (ollama's `json`, …).
pub struct Func {
    pub name: &'static str,
    pub arity: Arity,
    pub call: fn(&[Value]) -> Result<Value, String>,
}

/// A parsed template.
pub struct Template {
    pub root: List,
    funcs: &'static [Func],
}

/// One execution's output, and what it did that a caller may want to flag.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub text: String,
    /// Actions that printed a Go struct (`{a b map[…]}`) instead of text: `(line, action)`.
    pub go_syntax_prints: Vec<(usize, String)>,
    /// Map keys that were looked up and missing: `(map type, key)`.
    pub missing_keys: Vec<(&'static GoType, String)>,
}

impl Template {
    pub fn parse(source: &str, funcs: &'static [Func]) -> Result<Self, Error> {
        let has = |name: &str| parse::BUILTINS.contains(&name) || funcs.iter().any(|f| f.name == name);
        let root = parse::parse(source, &has)?;
        Ok(Self { root, funcs })
    }

    pub fn execute(&self, data: &Value) -> Result<Rendered, Error> {
        exec::execute(self, data)
    }

    pub(crate) fn func(&self, name: &str) -> Option<&'static Func> {
        self.funcs.iter().find(|f| f.name == name)
    }

    /// Walks every node, depth first, in source order, with the chain of lists and control
    /// nodes above it (`ancestors`, outermost first).
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(Visit<'a>, &[Visit<'a>])) {
        fn list<'a>(l: &'a List, stack: &mut Vec<Visit<'a>>, f: &mut dyn FnMut(Visit<'a>, &[Visit<'a>])) {
            stack.push(Visit::List(l));
            for n in l {
                node(n, stack, f);
            }
            stack.pop();
        }
        fn pipe<'a>(p: &'a Pipe, stack: &mut Vec<Visit<'a>>, f: &mut dyn FnMut(Visit<'a>, &[Visit<'a>])) {
            f(Visit::Pipe(p), stack);
            stack.push(Visit::Pipe(p));
            for c in &p.cmds {
                for a in &c.args {
                    arg(a, stack, f);
                }
            }
            stack.pop();
        }
        fn arg<'a>(a: &'a Arg, stack: &mut Vec<Visit<'a>>, f: &mut dyn FnMut(Visit<'a>, &[Visit<'a>])) {
            f(Visit::Arg(a), stack);
            match a {
                Arg::Pipe(p) => pipe(p, stack, f),
                Arg::Chain(inner, _) => arg(inner, stack, f),
                _ => {}
            }
        }
        fn node<'a>(n: &'a Node, stack: &mut Vec<Visit<'a>>, f: &mut dyn FnMut(Visit<'a>, &[Visit<'a>])) {
            f(Visit::Node(n), stack);
            stack.push(Visit::Node(n));
            match n {
                Node::Action(p) => pipe(p, stack, f),
                Node::If(b) | Node::Range(b) | Node::With(b) => {
                    pipe(&b.pipe, stack, f);
                    list(&b.list, stack, f);
                    if let Some(e) = &b.else_list {
                        list(e, stack, f);
                    }
                }
                Node::Text(_) | Node::Break | Node::Continue => {}
            }
            stack.pop();
        }
        let mut stack = Vec::new();
        list(&self.root, &mut stack, f);
    }
}

/// A place in the tree, as [`Template::visit`] reports it.
#[derive(Clone, Copy)]
pub enum Visit<'a> {
    List(&'a List),
    Node(&'a Node),
    Pipe(&'a Pipe),
    Arg(&'a Arg),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outputs of Go 1.19's text/template (missingkey=zero) on the same data.
    #[test]
    fn renders_like_go() {
        let data = Value::from_json(&serde_json::json!({
            "A": ["x", 1.5, null, {"k": "v"}], "M": {"b": 2.0, "a": "s"}, "S": "héllo", "T": true, "N": 0.0
        }));
        let cases = [
            ("{{ range $i, $v := .A }}{{ $i }}:{{ $v }};{{ end }}", "0:x;1:1.5;2:<no value>;3:map[k:v];"),
            ("{{ range $k, $v := .M }}{{ $k }}={{ $v }},{{ end }}{{ .M }}{{ .A }}", "a=s,b=2,map[a:s b:2][x 1.5 <nil> map[k:v]]"),
            (
                "{{- if .N }}n{{ else if .T -}}  t  {{- end }} {{/* c */}} {{ len .S }}{{ slice .S 0 1 }}{{ index .A 0 }}",
                "t  6hx",
            ),
            ("{{ $x := 1 }}{{ with .M }}{{ $x = .a }}{{ end }}{{ $x }}{{ .Missing }}{{ or .Missing \"d\" }}", "s<no value>d"),
            (
                "{{ range .A }}{{ if not . }}{{ break }}{{ end }}{{ . }}{{ end }}|{{ print 1 2 \"a\" 3 }}|{{ 1e6 }} {{ 0.00001 }} {{ 'a' }}",
                "x1.5|1 2a3|1e+06 1e-05 97",
            ),
        ];
        for (src, want) in cases {
            let t = Template::parse(src, &[]).unwrap();
            assert_eq!(t.execute(&data).unwrap().text, want, "{src}");
        }
    }

    #[test]
    fn parse_errors_use_gos_words() {
        for (src, want) in [
            ("{{ foo }}", "function \"foo\" not defined"),
            ("{{ $x }}", "undefined variable \"$x\""),
            ("{{ if .A }}", "unexpected EOF"),
            ("{{ end }}", "unexpected {{end}}"),
            ("{{ break }}", "{{break}} outside {{range}}"),
            ("{{ if }}{{ end }}", "missing value for if"),
            ("{{ .A | 1 }}", "non executable command in pipeline stage 2"),
            ("{{ \"x }}", "unterminated quoted string"),
        ] {
            let err = Template::parse(src, &[]).err().unwrap_or_else(|| panic!("{src} parsed"));
            assert_eq!(err.kind, ErrorKind::Parse, "{src}");
            assert!(err.message.contains(want), "{src}: {}", err.message);
        }
        let err = Template::parse("{{ define \"x\" }}{{ end }}", &[]).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Unsupported);
    }

    #[test]
    fn hostile_templates_stop_with_clear_errors() {
        let data = Value::from_json(&serde_json::json!({"Messages": []}));
        // 100k nested blocks and parentheses: refused while parsing, before the stack overflows.
        let nested = format!("{}x{}", "{{ if true }}".repeat(100_000), "{{ end }}".repeat(100_000));
        let err = Template::parse(&nested, &[]).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Limit);
        assert!(err.message.contains("nested more than 200 deep"), "{err}");
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(Template::parse(&parens, &[]).err().unwrap().message.contains("nested more than"));
        assert!(Template::parse(&format!("{}x{}", "{{ if true }}".repeat(150), "{{ end }}".repeat(150)), &[]).is_ok());
        // A range over 10^10, empty or not, and nested loops: stopped by the step limit.
        for src in [
            "{{ range 10000000000 }}{{ end }}",
            "{{ range 10000000000 }}x{{ end }}",
            "{{ range 100000 }}{{ range 100000 }}{{ end }}{{ end }}",
        ] {
            let err = Template::parse(src, &[]).unwrap().execute(&data).err().unwrap();
            assert_eq!(err.kind, ErrorKind::Exec, "{src}");
            assert!(err.message.contains("steps, mm's limit"), "{src}: {err}");
        }
        // Output and strings that double: stopped by the size limit.
        let wide = format!("{{{{ range 1000000 }}}}{}{{{{ end }}}}", "x".repeat(100));
        let err = Template::parse(&wide, &[]).unwrap().execute(&data).err().unwrap();
        assert!(err.message.contains("output is over"), "{err}");
        let doubling = "{{ $x := \"ab\" }}{{ range 100 }}{{ $x = printf \"%s%s\" $x $x }}{{ end }}";
        let err = Template::parse(doubling, &[]).unwrap().execute(&data).err().unwrap();
        assert!(err.message.contains("string over"), "{err}");
    }
}
