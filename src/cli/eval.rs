//! `mm eval MODEL --task ppl|mc --data PATH`: perplexity / bits per byte of pretrain or SFT
//! text, or multiple-choice accuracy on C-Eval / CMMLU-style questions, printed as a table or
//! JSON and optionally written to a JSON file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use mm::converters::atomic::write_file_atomically;
use mm::converters::output_guard::{check_not_an_input, FileKind};
use mm::eval::multiple_choice::{evaluate, summarize};
use mm::eval::perplexity::{score_texts, token_bytes, Windowing};
use mm::eval::prompt::{Method, PromptStyle, CEVAL_DESCRIPTION};
use mm::eval::questions;
use mm::chat::ChatEncoder;
use mm_dataset::{EvalTexts, TextFormat};

use super::ModelArgs;

#[derive(Clone, Copy, ValueEnum)]
enum Task {
    /// Perplexity and bits per byte of `{"text"}` or `{"conversations"}` jsonl lines.
    Ppl,
    /// Multiple-choice accuracy (C-Eval CSV layout, CMMLU CSV, or JSONL).
    Mc,
}

#[derive(Clone, Copy, ValueEnum)]
enum MethodArg {
    /// Score the option letters after a prompt listing the options (lm-eval's C-Eval task;
    /// MiniMind's method).
    Letter,
    /// Score each option's text as the continuation of `question\n答案：`.
    Loglikelihood,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to measure.
    #[arg(long, value_enum)]
    task: Task,
    /// ppl: a jsonl file. mc: a question file (.csv / .jsonl) or a directory (C-Eval's
    /// release layout with val/ test/ dev/, or a flat directory of subject files).
    #[arg(long)]
    data: PathBuf,
    /// ppl: tokens per window.
    #[arg(long, default_value_t = 512)]
    max_seq_len: usize,
    /// ppl: tokens between window starts (default: --max-seq-len, disjoint windows).
    #[arg(long)]
    stride: Option<usize>,
    /// mc: few-shot examples, the first K of each subject's dev split.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// mc: how options are scored.
    #[arg(long, value_enum, default_value = "letter")]
    method: MethodArg,
    /// mc: the split directory of C-Eval's layout to evaluate (default val, else test).
    #[arg(long)]
    split: Option<String>,
    /// mc: only the first N questions of each subject.
    #[arg(long)]
    limit: Option<usize>,
    /// mc: text before the few-shot examples; `{subject}` is the subject's name (from
    /// subject_mapping.json when present). Default: lm-eval's C-Eval description.
    #[arg(long, default_value = CEVAL_DESCRIPTION)]
    description: String,
    /// mc: between a prompt and its answer (lm-eval's `target_delimiter`).
    #[arg(long, default_value = " ")]
    target_delimiter: String,
    /// ppl: input rows per forward pass; mc: questions per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON result to this file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Include every question's scores (mc) or every text's ids and scored positions (ppl).
    #[arg(long)]
    details: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if let Some(out) = &a.output {
        check_not_an_input(out, &[a.model.path(), &a.data])?;
    }
    let loaded = a.model.load()?;
    let started = Instant::now();
    let (result, table) = match a.task {
        Task::Ppl => perplexity(&a, &loaded, started)?,
        Task::Mc => multiple_choice(&a, &loaded, started)?,
    };
    if let Some(out) = &a.output {
        let text = serde_json::to_string_pretty(&result)?;
        write_file_atomically(out, FileKind::Json, |w| Ok(w.write_all(text.as_bytes())?))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

fn bar(len: usize, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len as u64);
    b.set_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}})"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}

fn perplexity(a: &EvalArgs, loaded: &mm::loaded::LoadedModel, started: Instant) -> Result<(Value, String)> {
    let windowing = Windowing::new(a.max_seq_len, a.stride.unwrap_or(a.max_seq_len))?;
    let encoder = ChatEncoder::lenient(loaded.tokenizer.clone(), loaded.template.clone());
    let texts = EvalTexts::open(&a.data, encoder)?;
    let bytes = token_bytes(&loaded.tokenizer);
    let progress = bar(texts.len(), a.quiet, "texts");
    // Texts are tokenized and scored a chunk at a time, so a large file is never held whole.
    const CHUNK: usize = 256;
    let mut scores = Vec::with_capacity(texts.len());
    let mut details = Vec::new();
    let mut start = 0;
    while start < texts.len() {
        let end = (start + CHUNK).min(texts.len());
        let chunk = (start..end).map(|i| texts.text(i)).collect::<Result<Vec<_>, _>>()?;
        let batch_rows = a.batch_size.max(1) * windowing.max_len;
        let base = start as u64;
        let s = score_texts(&loaded.model, &chunk, windowing, batch_rows, &bytes, |n| progress.set_position(base + n as u64))
            .with_context(|| format!("scoring {}", a.data.display()))?;
        if a.details {
            for (t, s) in chunk.iter().zip(&s) {
                let positions: Vec<usize> = (0..t.ids.len()).filter(|&p| t.scored[p]).collect();
                details.push(json!({"line": t.line, "tokens": s.tokens, "scored": s.scored, "nll": s.nll,
                    "bytes": s.bytes, "windows": s.windows, "ids": t.ids, "scored_positions": positions}));
            }
        }
        scores.extend(s);
        start = end;
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let nll: f64 = scores.iter().map(|s| s.nll).sum();
    let scored: usize = scores.iter().map(|s| s.scored).sum();
    let byte_count: usize = scores.iter().map(|s| s.bytes).sum();
    let windows: usize = scores.iter().map(|s| s.windows).sum();
    anyhow::ensure!(scored > 0, "{}: no token to score (every text is shorter than 2 tokens or has no scored tokens)", a.data.display());
    let ppl = (nll / scored as f64).exp();
    let bpb = if byte_count > 0 { nll / std::f64::consts::LN_2 / byte_count as f64 } else { f64::NAN };
    let format = match texts.format() {
        TextFormat::Pretrain => "pretrain",
        TextFormat::Sft => "sft",
    };
    let mut result = json!({
        "task": "ppl", "model": a.model.path().display().to_string(), "data": a.data.display().to_string(),
        "format": format, "max_seq_len": windowing.max_len, "stride": windowing.stride,
        "texts": scores.len(), "windows": windows, "tokens_scored": scored, "bytes_scored": byte_count,
        "nll": nll, "nll_per_token": nll / scored as f64, "perplexity": ppl, "bits_per_byte": bpb,
        "seconds": seconds, "tokens_per_second": scored as f64 / seconds,
    });
    if a.details {
        result["per_text"] = Value::Array(details);
    }
    let table = format!(
        "{} ({format}): {} texts, {scored} tokens scored in {windows} windows of {} (stride {})\n\
         perplexity      {ppl:.4}\nbits per byte   {bpb:.4}\nnll per token   {:.6}\n\
         {:.1} s, {:.0} tokens/s\n",
        a.data.display(),
        scores.len(),
        windowing.max_len,
        windowing.stride,
        nll / scored as f64,
        seconds,
        scored as f64 / seconds
    );
    Ok((result, table))
}

fn multiple_choice(a: &EvalArgs, loaded: &mm::loaded::LoadedModel, started: Instant) -> Result<(Value, String)> {
    let subjects = questions::load(&a.data, a.split.as_deref())?;
    let style = PromptStyle {
        method: match a.method {
            MethodArg::Letter => Method::Letter,
            MethodArg::Loglikelihood => Method::Loglikelihood,
        },
        shots: a.shots,
        description: a.description.clone(),
        target_delimiter: a.target_delimiter.clone(),
        fewshot_delimiter: "\n\n".into(),
    };
    if style.method == Method::Letter {
        if let Some(q) = subjects.iter().flat_map(|s| &s.questions).find(|q| q.choices.len() > 26) {
            anyhow::bail!("{}: more options than letters", q.origin);
        }
    }
    let total: usize = subjects.iter().map(|s| a.limit.unwrap_or(usize::MAX).min(s.questions.len())).sum();
    let progress = bar(total, a.quiet, "questions");
    let results = evaluate(&loaded.model, &loaded.tokenizer, &subjects, &style, a.limit, a.batch_size, |n| progress.inc(n as u64))?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (per, all) = summarize(&subjects, &results);
    let method = match style.method {
        Method::Letter => "letter",
        Method::Loglikelihood => "loglikelihood",
    };
    let mut result = json!({
        "task": "mc", "model": a.model.path().display().to_string(), "data": a.data.display().to_string(),
        "method": method, "shots": a.shots, "questions": all.questions, "correct": all.correct,
        "acc": all.acc, "acc_norm": all.acc_norm, "subjects": per,
        "seconds": seconds, "questions_per_second": all.questions as f64 / seconds,
    });
    if a.details {
        result["per_question"] = serde_json::to_value(&results)?;
    }
    let width = per.iter().map(|s| s.subject.chars().count()).max().unwrap_or(7).max(7);
    let mut table = format!("{:<width$}  {:>9}  {:>7}  {:>7}  {:>8}\n", "subject", "questions", "correct", "acc", "acc_norm");
    for s in per.iter().chain(std::iter::once(&all)) {
        table.push_str(&format!(
            "{:<width$}  {:>9}  {:>7}  {:>6.2}%  {:>7.2}%\n",
            s.subject,
            s.questions,
            s.correct,
            100.0 * s.acc,
            100.0 * s.acc_norm
        ));
    }
    table.push_str(&format!(
        "{method}, {} shots: {:.1} s, {:.2} questions/s\n",
        a.shots,
        seconds,
        all.questions as f64 / seconds
    ));
    Ok((result, table))
}
