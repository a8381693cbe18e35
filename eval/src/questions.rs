//! Multiple-choice question files: C-Eval's published CSV layout (`id,question,A,B,C,D,answer`,
//! one file per subject, `dev` files with the few-shot examples), CMMLU's (the same columns,
//! capitalised, with an unnamed index column), and JSONL with the same fields or a `choices`
//! list.
//!
//! A directory in C-Eval's release layout (`val/`, `test/`, `dev/`, `subject_mapping.json`)
//! evaluates one split and takes few-shot examples from `dev/`; a flat directory or a single
//! file evaluates its files, with `SUBJECT_dev.*` beside them as few-shot examples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use mm_converters::limits::read_to_string;

/// Larger question files than this are refused before reading (C-Eval's largest is ~100 KB).
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Options per question (letters A…Z).
const MAX_CHOICES: usize = 26;

#[derive(Debug, Clone)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub choices: Vec<String>,
    /// Index into `choices`.
    pub answer: usize,
    /// `FILE:LINE`, for messages.
    pub origin: String,
}

#[derive(Debug, Clone)]
pub struct Subject {
    /// File stem without its split suffix (`computer_network`).
    pub name: String,
    /// The name the prompt's description uses: the Chinese name from C-Eval's
    /// `subject_mapping.json` when there is one, else `name`.
    pub display_name: String,
    pub questions: Vec<Question>,
    /// Few-shot examples, in file order.
    pub dev: Vec<Question>,
}

/// The letter naming option `i` (A, B, …).
pub fn letter(i: usize) -> String {
    char::from(b'A' + i as u8).to_string()
}

/// Reads every subject under `path` (a file or a directory); `split` picks the split
/// directory of C-Eval's layout (default `val`, else `test`).
pub fn load(path: &Path, split: Option<&str>) -> Result<Vec<Subject>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (files, dev_dir, mapping_dir) = if meta.is_dir() {
        let split_dir = match split {
            Some(s) => {
                let d = path.join(s);
                if !d.is_dir() {
                    bail!("{}: no `{s}` split directory", path.display());
                }
                Some(d)
            }
            None => ["val", "test"].iter().map(|s| path.join(s)).find(|d| d.is_dir()),
        };
        match split_dir {
            Some(d) => (question_files(&d)?, Some(path.join("dev")), path.to_path_buf()),
            None => (question_files(path)?.into_iter().filter(|f| split_of(f) != Some("dev")).collect(), None, path.to_path_buf()),
        }
    } else {
        if split.is_some() {
            bail!("--split picks a directory of C-Eval's layout; {} is a file", path.display());
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let grand = parent.parent().map(Path::to_path_buf).unwrap_or_default();
        (vec![path.to_path_buf()], None, if grand.join("subject_mapping.json").is_file() { grand } else { parent })
    };
    if files.is_empty() {
        bail!("{}: no .csv or .jsonl question files", path.display());
    }
    let names = subject_mapping(&mapping_dir)?;
    let mut subjects: BTreeMap<String, Subject> = BTreeMap::new();
    for file in &files {
        for (name, questions) in read_file(file)? {
            let s = subjects.entry(name.clone()).or_insert_with(|| Subject {
                display_name: names.get(&name).cloned().unwrap_or_else(|| name.clone()),
                name: name.clone(),
                questions: Vec::new(),
                dev: Vec::new(),
            });
            s.questions.extend(questions);
        }
    }
    for s in subjects.values_mut() {
        if let Some(dev) = dev_file(&files, dev_dir.as_deref(), &s.name) {
            for (name, qs) in read_file(&dev)? {
                if name == s.name {
                    s.dev.extend(qs);
                }
            }
        }
    }
    Ok(subjects.into_values().collect())
}

/// The `.csv` / `.jsonl` files of a directory, sorted by name.
fn question_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = entry?.path();
        if p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("csv" | "jsonl")) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// `computer_network_val.csv` → (`computer_network`, `val`).
fn subject_and_split(file: &Path) -> (String, Option<&'static str>) {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for split in ["dev", "val", "test"] {
        if let Some(name) = stem.strip_suffix(&format!("_{split}")) {
            return (name.to_string(), Some(split));
        }
    }
    (stem, None)
}

fn split_of(file: &Path) -> Option<&'static str> {
    subject_and_split(file).1
}

/// Where a subject's few-shot examples are: `dev/SUBJECT_dev.*` or `dev/SUBJECT.*` in
/// C-Eval's / CMMLU's layout, else `SUBJECT_dev.*` beside the question file.
fn dev_file(files: &[PathBuf], dev_dir: Option<&Path>, subject: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for ext in ["csv", "jsonl"] {
        if let Some(d) = dev_dir {
            candidates.push(d.join(format!("{subject}_dev.{ext}")));
            candidates.push(d.join(format!("{subject}.{ext}")));
        }
        for f in files {
            if let Some(parent) = f.parent() {
                candidates.push(parent.join(format!("{subject}_dev.{ext}")));
                if let Some(grand) = parent.parent() {
                    candidates.push(grand.join("dev").join(format!("{subject}_dev.{ext}")));
                }
            }
        }
    }
    candidates.into_iter().find(|c| c.is_file() && !files.contains(c))
}

/// C-Eval's `subject_mapping.json`: `{"computer_network": ["Computer Network", "计算机网络", "STEM"]}`.
fn subject_mapping(dir: &Path) -> Result<BTreeMap<String, String>> {
    let path = dir.join("subject_mapping.json");
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text = read_to_string(&path, MAX_FILE_BYTES, "subject mapping")?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let obj = v.as_object().with_context(|| format!("{}: expected an object of subject: [names]", path.display()))?;
    let mut out = BTreeMap::new();
    for (k, names) in obj {
        let name = names.as_array().and_then(|a| a.get(1).or(a.first())).and_then(Value::as_str);
        let name = name.with_context(|| format!("{}: {k}: expected [english, chinese, category]", path.display()))?;
        out.insert(k.clone(), name.to_string());
    }
    Ok(out)
}

/// One file's questions, grouped by subject (a CSV is one subject; JSONL rows may name theirs).
fn read_file(path: &Path) -> Result<Vec<(String, Vec<Question>)>> {
    let text = read_to_string(path, MAX_FILE_BYTES, "question file")?;
    let subject = subject_and_split(path).0;
    let questions = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => vec![(subject, read_csv(path, &text)?)],
        _ => read_jsonl(path, &text, &subject)?,
    };
    if questions.iter().all(|(_, q)| q.is_empty()) {
        bail!("{}: no questions", path.display());
    }
    Ok(questions)
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Question>> {
    let file = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(text.as_bytes());
    let header = reader.headers().with_context(|| format!("{file}: line 1: not a CSV header"))?.clone();
    let find = |name: &str| header.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let column = |name: &str| {
        find(name).with_context(|| {
            let have: Vec<&str> = header.iter().collect();
            format!("{file}: line 1: missing column `{name}` (the header has {})", have.join(","))
        })
    };
    let question = column("question")?;
    let answer = column("answer")?;
    let options: Vec<usize> = ["A", "B", "C", "D"].iter().map(|c| column(c)).collect::<Result<_>>()?;
    // C-Eval names its id column `id`; CMMLU leaves its index column unnamed.
    let id = find("id").or_else(|| header.iter().position(|h| h.trim().is_empty()));
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow::anyhow!("{file}: line {line}: {}", csv_error(&e))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let origin = format!("{file}:{line}");
        let get = |i: usize| record.get(i).unwrap_or("").to_string();
        let answer = parse_answer(&get(answer), 4).with_context(|| format!("{file}: line {line}"))?;
        out.push(Question {
            id: id.map(get).unwrap_or_else(|| out.len().to_string()),
            question: get(question),
            choices: options.iter().map(|&i| get(i)).collect(),
            answer,
            origin,
        });
    }
    Ok(out)
}

fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".into(),
        _ => e.to_string(),
    }
}

/// `"B"` (or `b`, spaces around) → 1; anything else is an error naming the allowed letters.
fn parse_answer(s: &str, n: usize) -> Result<usize> {
    let t = s.trim();
    let mut chars = t.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        let i = (c.to_ascii_uppercase() as u32).wrapping_sub('A' as u32) as usize;
        if c.is_ascii_alphabetic() && i < n {
            return Ok(i);
        }
    }
    let allowed: Vec<String> = (0..n).map(letter).collect();
    let hint = if t.is_empty() { " (C-Eval's test split has no answers; evaluate `val`)" } else { "" };
    bail!("answer {s:?} is not one of {}{hint}", allowed.join(", "))
}

/// JSONL rows: `{"question", "A".."D", "answer": "B"}` or `{"question", "choices": [...],
/// "answer": 1 | "B"}`, optionally with `id` and `subject`.
fn read_jsonl(path: &Path, text: &str, default_subject: &str) -> Result<Vec<(String, Vec<Question>)>> {
    let file = path.display().to_string();
    let mut by_subject: BTreeMap<String, Vec<Question>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{file}: line {line_no}");
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let obj = v.as_object().with_context(|| format!("{}: expected a JSON object", at()))?;
        let text_field = |k: &str| -> Result<String> {
            match obj.get(k) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(Value::Number(x)) => Ok(x.to_string()),
                Some(_) => bail!("{}: `{k}` must be a string", at()),
                None => bail!("{}: missing field `{k}`", at()),
            }
        };
        let question = text_field("question")?;
        let choices: Vec<String> = match obj.get("choices") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|c| c.as_str().map(str::to_string).with_context(|| format!("{}: `choices` must be strings", at())))
                .collect::<Result<_>>()?,
            Some(_) => bail!("{}: `choices` must be a list of strings", at()),
            None => ["A", "B", "C", "D"].iter().map(|k| text_field(k)).collect::<Result<_>>()?,
        };
        if choices.len() < 2 || choices.len() > MAX_CHOICES {
            bail!("{}: {} choices (2 to {MAX_CHOICES} allowed)", at(), choices.len());
        }
        let answer = match obj.get("answer") {
            Some(Value::String(s)) => parse_answer(s, choices.len()).with_context(at)?,
            Some(Value::Number(x)) => match x.as_u64() {
                Some(i) if (i as usize) < choices.len() => i as usize,
                _ => bail!("{}: answer {x} is not an option index (0 to {})", at(), choices.len() - 1),
            },
            Some(_) => bail!("{}: `answer` must be a letter or an option index", at()),
            None => bail!("{}: missing field `answer`", at()),
        };
        let subject = match obj.get("subject") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => default_subject.to_string(),
        };
        let list = by_subject.entry(subject).or_default();
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            _ => list.len().to_string(),
        };
        list.push(Question { id, question, choices, answer, origin: format!("{file}:{line_no}") });
    }
    Ok(by_subject.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn ceval_layout_with_dev_and_mapping() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "val/law_val.csv", "id,question,A,B,C,D,answer\n0,\"多行\n问题, 有逗号\",a,b,c,d,C\n1,q2,a,b,c,d,A\n");
        write(d.path(), "dev/law_dev.csv", "id,question,A,B,C,D,answer,explanation\n0,示例,a,b,c,d,B,because\n");
        write(d.path(), "subject_mapping.json", r#"{"law": ["Law", "法学", "Social Science"]}"#);
        let s = load(d.path(), None).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].name.as_str(), s[0].display_name.as_str()), ("law", "法学"));
        assert_eq!(s[0].questions.len(), 2);
        assert_eq!(s[0].questions[0].question, "多行\n问题, 有逗号");
        assert_eq!(s[0].questions[0].answer, 2);
        assert_eq!(s[0].dev.len(), 1);
        assert_eq!(s[0].dev[0].answer, 1);
    }

    #[test]
    fn cmmlu_header_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let f = write(d.path(), "x/anatomy.csv", ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,D\n");
        let s = load(&f, None).unwrap();
        assert_eq!(s[0].questions[0].answer, 3);
        let j = write(d.path(), "y/mixed.jsonl", "{\"question\":\"q\",\"choices\":[\"x\",\"y\"],\"answer\":1,\"subject\":\"s1\"}\n\n{\"question\":\"q\",\"A\":\"1\",\"B\":\"2\",\"C\":\"3\",\"D\":\"4\",\"answer\":\"a\"}\n");
        let s = load(&j, None).unwrap();
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mixed", "s1"]);
        assert_eq!(s[0].questions[0].answer, 0);
    }

    #[test]
    fn bad_files_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let err = |name: &str, text: &str| format!("{:#}", load(&write(d.path(), name, text), None).unwrap_err());
        let e = err("a.csv", "id,question,A,B,C,answer\n0,q,a,b,c,A\n");
        assert!(e.contains("a.csv: line 1: missing column `D`"), "{e}");
        let e = err("b.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,q,a,b,c,d,E\n");
        assert!(e.contains("b.csv: line 3") && e.contains("answer \"E\" is not one of A, B, C, D"), "{e}");
        let e = err("c.csv", "");
        assert!(e.contains("c.csv"), "{e}");
        let e = err("d.csv", "id,question,A,B,C,D,answer\n");
        assert!(e.contains("d.csv: no questions"), "{e}");
        let e = err("e.jsonl", "{\"question\":\"q\",\"choices\":[\"x\",\"y\"],\"answer\":2}\n");
        assert!(e.contains("e.jsonl: line 1: answer 2 is not an option index"), "{e}");
        let e = err("f.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d\n");
        assert!(e.contains("f.csv: line 2: 6 fields where the header has 7"), "{e}");
        let e = err("g.csv", "id,question,A,B,C,D,answer\n0,q,a,b,c,d,\n");
        assert!(e.contains("g.csv: line 2") && e.contains("test split has no answers"), "{e}");
    }
}
