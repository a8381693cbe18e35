//! Python methods on template values that minijinja lacks, plus `strftime`.
//!
//! [`call_method`] is the environment's unknown-method callback. It handles the methods whose
//! Python behaviour minijinja-contrib's `pycompat` misses or gets subtly wrong (whitespace
//! `strip`/`split`, `rsplit`, `removeprefix`, `partition`, `list.index`, ...) and hands every
//! other method to `pycompat`.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// Python's `str.isspace` set: Unicode White_Space plus the four separators \x1c–\x1f.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The unknown-method callback: Python-exact methods first, then minijinja-contrib's pycompat.
pub fn call_method(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    let handled = match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args)?,
        ValueKind::Seq => seq_method(value, method, args)?,
        _ => None,
    };
    match handled {
        Some(v) => Ok(v),
        None => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

fn type_error(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Binds positional and keyword arguments to Python parameter names. Missing ones are `None`.
fn bind(method: &str, args: &[Value], names: &[&str]) -> Result<Vec<Option<Value>>, Error> {
    let mut out = vec![None; names.len()];
    let (positional, kwargs) = match args.last() {
        Some(last) if last.is_kwargs() => (&args[..args.len() - 1], Some(last)),
        _ => (args, None),
    };
    if positional.len() > names.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("{method}() takes at most {} arguments ({} given)", names.len(), positional.len()),
        ));
    }
    for (slot, v) in out.iter_mut().zip(positional) {
        *slot = Some(v.clone());
    }
    if let Some(kwargs) = kwargs {
        for (k, v) in kwargs.as_object().and_then(|o| o.try_iter_pairs()).into_iter().flatten() {
            let k = k.as_str().unwrap_or_default();
            let i = names.iter().position(|n| *n == k).ok_or_else(|| {
                Error::new(ErrorKind::TooManyArguments, format!("{method}() got an unexpected keyword argument '{k}'"))
            })?;
            out[i] = Some(v);
        }
    }
    // Python treats an explicit None like an absent optional argument for these methods.
    Ok(out.into_iter().map(|v| v.filter(|v| !v.is_none() && !v.is_undefined())).collect())
}

fn arg_str(method: &str, v: &Option<Value>) -> Result<Option<String>, Error> {
    match v {
        None => Ok(None),
        Some(v) => match v.as_str() {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(type_error(format!("{method}() argument must be str, not {}", v.kind()))),
        },
    }
}

fn arg_int(method: &str, v: &Option<Value>) -> Result<Option<i64>, Error> {
    match v {
        None => Ok(None),
        Some(v) if v.is_integer() => Ok(v.as_i64()),
        Some(v) if v.kind() == ValueKind::Bool => Ok(Some(v.is_true() as i64)),
        Some(v) => Err(type_error(format!("{method}() argument must be int, not {}", v.kind()))),
    }
}

fn str_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::from(items.into_iter().map(Value::from).collect::<Vec<_>>())
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    let v = match method {
        "strip" | "lstrip" | "rstrip" => {
            let a = bind(method, args, &["chars"])?;
            let chars = arg_str(method, &a[0])?;
            let strip = |c: char| match &chars {
                Some(set) => set.contains(c),
                None => is_py_space(c),
            };
            Value::from(match method {
                "strip" => s.trim_matches(strip),
                "lstrip" => s.trim_start_matches(strip),
                _ => s.trim_end_matches(strip),
            })
        }
        "split" | "rsplit" => {
            let a = bind(method, args, &["sep", "maxsplit"])?;
            let sep = arg_str(method, &a[0])?;
            let max = arg_int(method, &a[1])?.filter(|n| *n >= 0).map(|n| n as usize);
            let parts = match sep {
                Some(sep) if sep.is_empty() => return Err(type_error("empty separator")),
                Some(sep) => split_sep(s, &sep, max, method == "rsplit"),
                None => split_whitespace(s, max, method == "rsplit"),
            };
            str_list(parts)
        }
        "isspace" => {
            bind(method, args, &[])?;
            Value::from(!s.is_empty() && s.chars().all(is_py_space))
        }
        "removeprefix" | "removesuffix" => {
            let a = bind(method, args, &["prefix"])?;
            let affix = arg_str(method, &a[0])?.unwrap_or_default();
            Value::from(if method == "removeprefix" {
                s.strip_prefix(affix.as_str()).unwrap_or(s)
            } else {
                s.strip_suffix(affix.as_str()).unwrap_or(s)
            })
        }
        "partition" | "rpartition" => {
            let a = bind(method, args, &["sep"])?;
            let sep = arg_str(method, &a[0])?.unwrap_or_default();
            if sep.is_empty() {
                return Err(type_error("empty separator"));
            }
            let found = if method == "partition" { s.find(&sep) } else { s.rfind(&sep) };
            let parts: [&str; 3] = match found {
                Some(i) => [&s[..i], &sep, &s[i + sep.len()..]],
                None if method == "partition" => [s, "", ""],
                None => ["", "", s],
            };
            Value::from(minijinja::value::Tuple::from(parts.map(Value::from)))
        }
        "zfill" => {
            let a = bind(method, args, &["width"])?;
            let width = padding_width(arg_int(method, &a[0])?.unwrap_or(0))?;
            let len = s.chars().count();
            if len >= width {
                Value::from(s)
            } else {
                let (sign, rest) = match s.chars().next() {
                    Some(c @ ('+' | '-')) => (c.to_string(), &s[1..]),
                    _ => (String::new(), s),
                };
                Value::from(format!("{sign}{}{rest}", "0".repeat(width - len)))
            }
        }
        "center" | "ljust" | "rjust" => {
            let a = bind(method, args, &["width", "fillchar"])?;
            let width = padding_width(arg_int(method, &a[0])?.unwrap_or(0))?;
            let fill = arg_str(method, &a[1])?.unwrap_or_else(|| " ".into());
            let mut fill_chars = fill.chars();
            let (Some(fill), None) = (fill_chars.next(), fill_chars.next()) else {
                return Err(type_error("The fill character must be exactly one character long"));
            };
            Value::from(pad(s, width, fill, method))
        }
        "title" => {
            bind(method, args, &[])?;
            // Python starts a word after any uncased character (so "it's" -> "It'S"), unlike
            // jinja2's `|title` filter.
            let mut out = String::with_capacity(s.len());
            let mut prev_cased = false;
            for c in s.chars() {
                if prev_cased {
                    out.extend(c.to_lowercase());
                } else {
                    out.extend(c.to_uppercase());
                }
                prev_cased = c.is_lowercase() || c.is_uppercase();
            }
            Value::from(out)
        }
        "casefold" => {
            bind(method, args, &[])?;
            // Lowercase plus the common full case foldings.
            Value::from(s.to_lowercase().replace('ß', "ss").replace('ſ', "s").replace('ς', "σ"))
        }
        "swapcase" => {
            bind(method, args, &[])?;
            Value::from(
                s.chars()
                    .flat_map(|c| -> Box<dyn Iterator<Item = char>> {
                        if c.is_uppercase() {
                            Box::new(c.to_lowercase())
                        } else if c.is_lowercase() {
                            Box::new(c.to_uppercase())
                        } else {
                            Box::new(std::iter::once(c))
                        }
                    })
                    .collect::<String>(),
            )
        }
        "index" | "rindex" => {
            let a = bind(method, args, &["sub"])?;
            let sub = arg_str(method, &a[0])?.unwrap_or_default();
            let found = if method == "index" { s.find(&sub) } else { s.rfind(&sub) };
            match found {
                Some(i) => Value::from(s[..i].chars().count() as i64),
                None => return Err(type_error("substring not found")),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(v))
}

/// A `zfill` / `center` / `ljust` / `rjust` width, at most [`MAX_PADDING`](super::template::MAX_PADDING):
/// the padding is built before the template's fuel can pay for it.
fn padding_width(width: i64) -> Result<usize, Error> {
    let width = width.max(0) as u64;
    if width > super::template::MAX_PADDING as u64 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("width {width} is over {}, mm's limit for templates", super::template::MAX_PADDING),
        ));
    }
    Ok(width as usize)
}

/// `str.center` / `ljust` / `rjust`.
fn pad(s: &str, width: usize, fill: char, how: &str) -> String {
    let pad = width.saturating_sub(s.chars().count());
    let (left, right) = match how {
        "ljust" => (0, pad),
        "rjust" => (pad, 0),
        // CPython centres with the extra character on the left when the width is odd.
        _ => {
            let left = pad / 2 + (pad & width & 1);
            (left, pad - left)
        }
    };
    let f = |n: usize| std::iter::repeat_n(fill, n).collect::<String>();
    format!("{}{s}{}", f(left), f(right))
}

/// `str.split(sep, maxsplit)` / `str.rsplit(sep, maxsplit)` with an explicit separator.
fn split_sep<'a>(s: &'a str, sep: &str, max: Option<usize>, from_right: bool) -> Vec<&'a str> {
    match (max, from_right) {
        (None, _) => s.split(sep).collect(),
        (Some(n), false) => s.splitn(n + 1, sep).collect(),
        (Some(n), true) => {
            let mut parts: Vec<&str> = s.rsplitn(n + 1, sep).collect();
            parts.reverse();
            parts
        }
    }
}

/// `str.split()` / `str.rsplit()` without a separator: runs of whitespace, no empty strings;
/// once `max` splits are made the rest is kept whole (only its near edge is stripped).
fn split_whitespace(s: &str, max: Option<usize>, from_right: bool) -> Vec<&str> {
    let max = max.unwrap_or(usize::MAX);
    let mut parts = Vec::new();
    if !from_right {
        let mut rest = s.trim_start_matches(is_py_space);
        while !rest.is_empty() {
            if parts.len() == max {
                parts.push(rest);
                break;
            }
            let end = rest.find(is_py_space).unwrap_or(rest.len());
            parts.push(&rest[..end]);
            rest = rest[end..].trim_start_matches(is_py_space);
        }
    } else {
        let mut rest = s.trim_end_matches(is_py_space);
        while !rest.is_empty() {
            if parts.len() == max {
                parts.push(rest);
                break;
            }
            let start = rest.rfind(is_py_space).map(|i| i + rest[i..].chars().next().map_or(1, char::len_utf8)).unwrap_or(0);
            parts.push(&rest[start..]);
            rest = rest[..start].trim_end_matches(is_py_space);
        }
        parts.reverse();
    }
    parts
}

fn seq_method(value: &Value, method: &str, args: &[Value]) -> Result<Option<Value>, Error> {
    match method {
        "index" => {
            let a = bind(method, args, &["value"])?;
            let needle = a[0].clone().unwrap_or(Value::from(()));
            let pos = value.try_iter()?.position(|item| item == needle);
            match pos {
                Some(i) => Ok(Some(Value::from(i as i64))),
                None => Err(type_error(format!("{} is not in list", super::pyjson::py_repr(&needle)))),
            }
        }
        _ => Ok(None),
    }
}

// jinja2 builtin filters and tests that minijinja lacks or spells differently.

/// jinja2's `escape`/`e`/`forceescape` (markupsafe): `&<>"'` as `&amp; &lt; &gt; &#34; &#39;`.
pub fn escape_filter(value: &Value) -> Value {
    if value.is_safe() {
        return value.clone();
    }
    let s = super::pyjson::py_str(value);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// jinja2's `center(width=80)`.
pub fn center_filter(value: &Value, width: Option<i64>) -> Result<String, Error> {
    Ok(pad(&super::pyjson::py_str(value), padding_width(width.unwrap_or(80))?, ' ', "center"))
}

/// jinja2's `wordcount`: the number of `\w+` runs.
pub fn wordcount_filter(value: &Value) -> usize {
    let s = super::pyjson::py_str(value);
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    s.split(|c: char| !is_word(c)).filter(|w| !w.is_empty()).count()
}

/// jinja2's `truncate(length=255, killwords=False, end='...', leeway=5)`.
pub fn truncate_filter(
    value: &Value,
    args: minijinja::value::Rest<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, Error> {
    let mut all = args.0;
    all.push(Value::from(kwargs));
    let a = bind("truncate", &all, &["length", "killwords", "end", "leeway"])?;
    let length = arg_int("truncate", &a[0])?.unwrap_or(255).max(0) as usize;
    let killwords = a[1].as_ref().is_some_and(Value::is_true);
    let end = arg_str("truncate", &a[2])?.unwrap_or_else(|| "...".into());
    let leeway = arg_int("truncate", &a[3])?.unwrap_or(5).max(0) as usize;
    let s = super::pyjson::py_str(value);
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= length + leeway {
        return Ok(Value::from(s));
    }
    let keep: String = chars[..length.saturating_sub(end.chars().count())].iter().collect();
    let kept = if killwords { keep.as_str() } else { keep.rsplit_once(' ').map_or(keep.as_str(), |(head, _)| head) };
    Ok(Value::from(format!("{kept}{end}")))
}

/// jinja2's `callable` test: functions and macros.
pub fn is_callable(value: &Value) -> bool {
    value.as_object().is_some_and(|o| matches!(o.repr(), minijinja::value::ObjectRepr::Plain))
}

const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

/// Calendar date of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// C `strftime` of a UTC time given as seconds since the Unix epoch. Supports the common
/// directives plus glibc's `%-d`-style "no padding" flag; unknown directives are kept as is.
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[month as usize - 1] + i64::from(day) + i64::from(month > 2 && is_leap(year));
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |n: i64, width: usize| if no_pad { n.to_string() } else { format!("{n:0width$}") };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(i64::from(month), 2)),
            Some('d') => out.push_str(&num(i64::from(day), 2)),
            Some('e') => out.push_str(&if no_pad { day.to_string() } else { format!("{day:2}") }),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num(hour12, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('j') => out.push_str(&num(yday, 3)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('w') => out.push_str(&weekday.to_string()),
            Some('u') => out.push_str(&(if weekday == 0 { 7 } else { weekday }).to_string()),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('D') => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            Some('R') => out.push_str(&format!("{hour:02}:{minute:02}")),
            Some('c') => out.push_str(&format!(
                "{} {} {day:2} {hour:02}:{minute:02}:{second:02} {year}",
                &DAYS[weekday][..3],
                &MONTHS[month as usize - 1][..3]
            )),
            Some('x') => out.push_str(&format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100))),
            Some('X') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('s') => out.push_str(&unix_secs.to_string()),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The current time as seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_split_like_python() {
        assert_eq!(split_whitespace("  a  b \n c ", None, false), ["a", "b", "c"]);
        assert_eq!(split_whitespace("  a  b  c  ", Some(1), false), ["a", "b  c  "]);
        assert_eq!(split_whitespace("  a  b  c  ", Some(1), true), ["  a  b", "c"]);
        assert_eq!(split_whitespace("   ", None, false), Vec::<&str>::new());
        assert_eq!(split_sep("a.b.c", ".", Some(1), true), ["a.b", "c"]);
        assert_eq!(split_sep("", "x", None, false), [""]);
    }

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC was a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime("%A, %B %-d, %j %I%p %%", t), "Thursday, February 29, 060 01PM %");
        assert_eq!(strftime("%F %T", 0), "1970-01-01 00:00:00");
        assert_eq!(strftime("%a %Y-%m-%d", -86_400), "Wed 1969-12-31");
        assert_eq!(strftime("%j", 1_735_603_200), "366"); // 2024-12-31
    }
}
