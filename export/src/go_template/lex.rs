//! The lexer of Go's `text/template`: text, `{{ … }}` actions with the `{{- `/` -}}` trim
//! markers, `{{/* comments */}}`, and the items inside actions.

use super::Error;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Text(String),
    LeftDelim,
    RightDelim,
    Space,
    /// `.Name` (the name, without the dot).
    Field(String),
    /// `$name` or `$` (with the dollar).
    Variable(String),
    Dot,
    Ident(String),
    Keyword(Keyword),
    Bool(bool),
    Nil,
    /// A quoted string, still quoted: `"…"` or `` `…` ``.
    Str(String),
    /// A number or character constant as written.
    Number(String),
    Char(String),
    Pipe,
    LeftParen,
    RightParen,
    Declare,
    Assign,
    /// Any other printable ASCII character in an action (`,` in range declarations).
    Other(char),
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Range,
    Template,
    With,
}

impl Keyword {
    fn from_word(w: &str) -> Option<Self> {
        Some(match w {
            "block" => Self::Block,
            "break" => Self::Break,
            "continue" => Self::Continue,
            "define" => Self::Define,
            "else" => Self::Else,
            "end" => Self::End,
            "if" => Self::If,
            "range" => Self::Range,
            "template" => Self::Template,
            "with" => Self::With,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Break => "break",
            Self::Continue => "continue",
            Self::Define => "define",
            Self::Else => "else",
            Self::End => "end",
            Self::If => "if",
            Self::Range => "range",
            Self::Template => "template",
            Self::With => "with",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

const LEFT: &str = "{{";
const RIGHT: &str = "}}";

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// `- ` right after `{{`.
fn has_left_trim(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0] == b'-' && is_space(b[1] as char)
}

/// ` -` right before `}}`.
fn has_right_trim(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && is_space(b[0] as char) && b[1] == b'-'
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    out: Vec<Token>,
    paren_depth: usize,
}

pub fn lex(src: &str) -> Result<Vec<Token>, Error> {
    let mut l = Lexer { src, pos: 0, line: 1, out: Vec::new(), paren_depth: 0 };
    l.run()?;
    Ok(l.out)
}

impl<'a> Lexer<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::parse(self.line, msg)
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn emit(&mut self, tok: Tok, line: usize) {
        self.out.push(Token { tok, line });
    }

    fn advance_lines(&mut self, text: &str) {
        self.line += text.matches('\n').count();
    }

    fn run(&mut self) -> Result<(), Error> {
        loop {
            // Text up to the next action.
            let rest = self.rest();
            let Some(at) = rest.find(LEFT) else {
                if !rest.is_empty() {
                    let line = self.line;
                    self.emit(Tok::Text(rest.to_string()), line);
                    self.advance_lines(rest);
                }
                self.pos = self.src.len();
                let line = self.line;
                self.emit(Tok::Eof, line);
                return Ok(());
            };
            let mut text = &rest[..at];
            let after = &rest[at + LEFT.len()..];
            let trim = has_left_trim(after);
            if trim {
                text = text.trim_end_matches(is_space);
            }
            if !text.is_empty() {
                let line = self.line;
                self.emit(Tok::Text(text.to_string()), line);
            }
            self.advance_lines(&rest[..at]);
            self.pos += at + LEFT.len();
            if trim {
                self.pos += 1; // the '-'; the space after it is lexed inside the action
            }
            // A comment fills the whole action.
            let after_marker = if trim { &self.rest()[1..] } else { self.rest() };
            if after_marker.starts_with("/*") {
                if trim {
                    self.pos += 1;
                }
                self.comment()?;
                continue;
            }
            let line = self.line;
            self.emit(Tok::LeftDelim, line);
            self.paren_depth = 0;
            self.inside_action()?;
        }
    }

    fn comment(&mut self) -> Result<(), Error> {
        let rest = self.rest();
        let Some(end) = rest.find("*/") else { return Err(self.err("unclosed comment")) };
        self.advance_lines(&rest[..end]);
        self.pos += end + 2;
        let (delim, trim) = self.at_right_delim();
        if !delim {
            return Err(self.err("comment ends before closing delimiter"));
        }
        self.pos += if trim { 2 } else { 0 } + RIGHT.len();
        if trim {
            self.skip_leading_space();
        }
        Ok(())
    }

    fn at_right_delim(&self) -> (bool, bool) {
        let rest = self.rest();
        if has_right_trim(rest) && rest[2..].starts_with(RIGHT) {
            return (true, true);
        }
        (rest.starts_with(RIGHT), false)
    }

    fn skip_leading_space(&mut self) {
        let rest = self.rest();
        let trimmed = rest.trim_start_matches(is_space);
        let skipped = rest.len() - trimmed.len();
        self.advance_lines(&rest[..skipped]);
        self.pos += skipped;
    }

    fn inside_action(&mut self) -> Result<(), Error> {
        loop {
            let (delim, trim) = self.at_right_delim();
            if delim {
                if self.paren_depth > 0 {
                    return Err(self.err("unclosed left paren"));
                }
                if trim {
                    self.pos += 2;
                }
                self.pos += RIGHT.len();
                let line = self.line;
                self.emit(Tok::RightDelim, line);
                if trim {
                    self.skip_leading_space();
                }
                return Ok(());
            }
            let line = self.line;
            let Some(c) = self.peek() else { return Err(self.err("unclosed action")) };
            match c {
                c if is_space(c) => {
                    // Spaces, stopping before a trim-marked closing delimiter.
                    while let Some(c) = self.peek() {
                        if !is_space(c) || self.at_right_delim().1 {
                            break;
                        }
                        if c == '\n' {
                            self.line += 1;
                        }
                        self.bump();
                    }
                    self.emit(Tok::Space, line);
                }
                '=' => {
                    self.bump();
                    self.emit(Tok::Assign, line);
                }
                ':' => {
                    self.bump();
                    if self.peek() != Some('=') {
                        return Err(self.err("expected :="));
                    }
                    self.bump();
                    self.emit(Tok::Declare, line);
                }
                '|' => {
                    self.bump();
                    self.emit(Tok::Pipe, line);
                }
                '"' => {
                    let start = self.pos;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('\\') => match self.bump() {
                                None | Some('\n') => return Err(self.err("unterminated quoted string")),
                                _ => {}
                            },
                            None | Some('\n') => return Err(self.err("unterminated quoted string")),
                            Some('"') => break,
                            _ => {}
                        }
                    }
                    let s = self.src[start..self.pos].to_string();
                    self.emit(Tok::Str(s), line);
                }
                '`' => {
                    let start = self.pos;
                    self.bump();
                    loop {
                        match self.bump() {
                            None => return Err(self.err("unterminated raw quoted string")),
                            Some('\n') => self.line += 1,
                            Some('`') => break,
                            _ => {}
                        }
                    }
                    let s = self.src[start..self.pos].to_string();
                    self.emit(Tok::Str(s), line);
                }
                '$' => {
                    let start = self.pos;
                    self.bump();
                    self.word_tail()?;
                    let s = self.src[start..self.pos].to_string();
                    self.emit(Tok::Variable(s), line);
                }
                '\'' => {
                    let start = self.pos;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('\\') => match self.bump() {
                                None | Some('\n') => return Err(self.err("unterminated character constant")),
                                _ => {}
                            },
                            None | Some('\n') => return Err(self.err("unterminated character constant")),
                            Some('\'') => break,
                            _ => {}
                        }
                    }
                    let s = self.src[start..self.pos].to_string();
                    self.emit(Tok::Char(s), line);
                }
                '.' => {
                    // `.5` is a number; `.Name` a field; `.` alone the dot.
                    if self.rest()[1..].starts_with(|c: char| c.is_ascii_digit()) {
                        self.number(line)?;
                        continue;
                    }
                    self.bump();
                    let start = self.pos;
                    self.word_tail()?;
                    if self.pos == start {
                        self.emit(Tok::Dot, line);
                    } else {
                        let s = self.src[start..self.pos].to_string();
                        self.emit(Tok::Field(s), line);
                    }
                }
                '+' | '-' | '0'..='9' => self.number(line)?,
                c if is_alnum(c) => {
                    let start = self.pos;
                    self.word_tail()?;
                    let word = &self.src[start..self.pos];
                    let tok = if let Some(k) = Keyword::from_word(word) {
                        Tok::Keyword(k)
                    } else {
                        match word {
                            "true" => Tok::Bool(true),
                            "false" => Tok::Bool(false),
                            "nil" => Tok::Nil,
                            w => Tok::Ident(w.to_string()),
                        }
                    };
                    self.emit(tok, line);
                }
                '(' => {
                    self.bump();
                    self.paren_depth += 1;
                    self.emit(Tok::LeftParen, line);
                }
                ')' => {
                    self.bump();
                    if self.paren_depth == 0 {
                        return Err(self.err("unexpected right paren"));
                    }
                    self.paren_depth -= 1;
                    self.emit(Tok::RightParen, line);
                }
                c if c.is_ascii() && !c.is_ascii_control() => {
                    self.bump();
                    self.emit(Tok::Other(c), line);
                }
                c => return Err(self.err(format!("unrecognized character in action: {c:?}"))),
            }
        }
    }

    /// Alphanumerics of an identifier, field or variable, which must end at a terminator.
    fn word_tail(&mut self) -> Result<(), Error> {
        while let Some(c) = self.peek() {
            if !is_alnum(c) {
                break;
            }
            self.bump();
        }
        if !self.at_terminator() {
            let c = self.peek().unwrap_or(' ');
            return Err(self.err(format!("bad character {c:?}")));
        }
        Ok(())
    }

    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(') => true,
            _ => self.rest().starts_with(RIGHT),
        }
    }

    fn number(&mut self, line: usize) -> Result<(), Error> {
        let start = self.pos;
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        let mut digits = "0123456789_";
        let mut exp = "eE";
        if self.rest().starts_with('0') {
            self.bump();
            match self.peek() {
                Some('x' | 'X') => {
                    self.bump();
                    digits = "0123456789abcdefABCDEF_";
                    exp = "pP";
                }
                Some('o' | 'O') => {
                    self.bump();
                    digits = "01234567_";
                    exp = "";
                }
                Some('b' | 'B') => {
                    self.bump();
                    digits = "01_";
                    exp = "";
                }
                _ => {}
            }
        }
        let run = |l: &mut Self, set: &str| {
            while l.peek().is_some_and(|c| set.contains(c)) {
                l.bump();
            }
        };
        run(self, digits);
        if self.peek() == Some('.') {
            self.bump();
            run(self, digits);
        }
        if !exp.is_empty() && self.peek().is_some_and(|c| exp.contains(c)) {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            run(self, "0123456789_");
        }
        if self.peek() == Some('i') {
            self.bump();
        }
        if self.peek().is_some_and(is_alnum) {
            self.bump();
            return Err(self.err(format!("bad number syntax: {:?}", &self.src[start..self.pos])));
        }
        let s = self.src[start..self.pos].to_string();
        self.emit(Tok::Number(s), line);
        Ok(())
    }
}
