//! What an MNN model directory holds, for `mm inspect DIR`: the graph (op counts by type,
//! inputs, outputs), the weight records its ops point at (checked against the weight file's
//! size), `llm_config.json`'s model facts and tied-embedding location, the runtime settings
//! of `config.json`, and the tokenizer file's header. Works on mm's exports and on
//! llmexport's (file names are taken from config.json as the runtime takes them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mm_converters::limits;
use serde_json::{json, Value};

use super::config;
use super::tokenizer_mtok;
use super::graph::{DataType, OpParam};
use super::net_flatbuffer::read_net;

/// The tokenizer file: its text header (`430 <type>`, counts of special/stop/prefix ids) and,
/// where mm reads the whole layout (the binary `.mtok`, the legacy HF text file), what its
/// body holds. Reading it checks the file against its own declared counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerHeader {
    pub file: String,
    pub bytes: u64,
    pub kind: String,
    pub special: usize,
    pub stop: usize,
    pub prefix: usize,
    pub vocab: Option<usize>,
    pub merges: Option<usize>,
    pub added_tokens: Option<usize>,
    /// What could not be checked, if anything.
    pub unchecked: Option<String>,
}

/// One group of Linear records quantized the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuantGroup {
    pub bits: i32,
    /// Inputs per block; `None` for symmetric records (`readType` 0).
    pub block: Option<i64>,
    pub fp16_scales: bool,
}

/// Everything `mm inspect` shows for an MNN directory.
#[derive(Debug, Clone)]
pub struct MnnDirReport {
    pub dir: PathBuf,
    pub model_file: String,
    pub model_bytes: u64,
    pub version: String,
    pub op_counts: BTreeMap<String, usize>,
    pub ops: usize,
    /// (name, dims, dtype) of each Input op.
    pub inputs: Vec<(String, Vec<i32>, String)>,
    pub outputs: Vec<String>,
    pub weight_file: String,
    pub weight_bytes: Option<u64>,
    pub linear_records: usize,
    pub linear_bytes: u64,
    pub norm_records: usize,
    pub norm_bytes: u64,
    /// Linear record counts per quantization.
    pub quant: BTreeMap<QuantGroup, usize>,
    pub llm_config: Value,
    pub runtime: Value,
    pub tokenizer: Option<TokenizerHeader>,
    /// Records outside the weight file, missing files, …
    pub problems: Vec<String>,
}

/// Whether `dir` looks like an MNN model directory (config.json beside an llm.mnn).
pub fn is_mnn_dir(dir: &Path) -> bool {
    dir.is_dir() && dir.join(config::CONFIG_FILE).is_file() && dir.join(config::MODEL_FILE).is_file()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = limits::read_to_string(path, limits::MAX_CONFIG_BYTES, "config")?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

fn tokenizer_header(path: &Path, file: &str) -> Result<TokenizerHeader> {
    const KINDS: [&str; 5] = ["SENTENCEPIECE", "TIKTOKEN", "BERT", "HUGGINGFACE", "PIPELINE"];
    let bytes = limits::read_file(path, limits::MAX_TOKENIZER_BYTES, "tokenizer")?;
    let first = bytes.split(|&b| b == b'\n').next().map(String::from_utf8_lossy).unwrap_or_default();
    let kind = match first.split_whitespace().collect::<Vec<_>>()[..] {
        ["430", t] => t.parse::<usize>().ok().and_then(|t| KINDS.get(t)).map(|k| k.to_string()),
        _ => None,
    }
    .with_context(|| format!("{}: first line {first:?} is not `430 <type>`", path.display()))?;
    let mut header = TokenizerHeader {
        file: file.into(),
        bytes: bytes.len() as u64,
        kind,
        special: 0,
        stop: 0,
        prefix: 0,
        vocab: None,
        merges: None,
        added_tokens: None,
        unchecked: None,
    };
    if header.kind == "PIPELINE" {
        let c = tokenizer_mtok::read_mtok(&bytes).with_context(|| path.display().to_string())?;
        (header.special, header.stop, header.prefix) = (c.header.special.len(), c.header.stop.len(), c.header.prefix.len());
        if c.unchecked.is_none() {
            (header.vocab, header.merges, header.added_tokens) = (Some(c.vocab), Some(c.merges), Some(c.added_tokens));
        }
        header.unchecked = c.unchecked;
        return Ok(header);
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().skip(1);
    let mut next = |what: &str| lines.next().with_context(|| format!("{}: no {what} line", path.display()));
    let counts = next("count")?;
    let parsed: Option<Vec<usize>> = counts.split_whitespace().map(|c| c.parse().ok()).collect();
    let Some([special, stop, prefix]) = parsed.as_deref().and_then(|v| <[usize; 3]>::try_from(v).ok()) else {
        anyhow::bail!("{}: second line {counts:?} is not three id counts", path.display());
    };
    let ids = next("id")?.split_whitespace().count();
    let declared = special.saturating_add(stop).saturating_add(prefix);
    anyhow::ensure!(ids == declared, "{}: line 2 declares {declared} ids, line 3 holds {ids}", path.display());
    (header.special, header.stop, header.prefix) = (special, stop, prefix);
    if header.kind == "HUGGINGFACE" {
        // Line 4: `<vocab_len> <merge_len>`, then one line per token and per merge.
        let counts = next("vocab/merge count")?;
        let parsed: Option<Vec<usize>> = counts.split_whitespace().map(|c| c.parse().ok()).collect();
        let Some([vocab, merges]) = parsed.as_deref().and_then(|v| <[usize; 2]>::try_from(v).ok()) else {
            anyhow::bail!("{}: line 4 {counts:?} is not `<vocab_len> <merge_len>`", path.display());
        };
        let rest = lines.count();
        anyhow::ensure!(
            rest == vocab.saturating_add(merges),
            "{}: line 4 declares {vocab} tokens and {merges} merges, {rest} lines follow",
            path.display()
        );
        (header.vocab, header.merges) = (Some(vocab), Some(merges));
    } else {
        header.unchecked = Some(format!("the {} body is not checked", header.kind));
    }
    Ok(header)
}

/// Reads an MNN model directory.
pub fn inspect_dir(dir: &Path) -> Result<MnnDirReport> {
    let runtime = read_json(&dir.join(config::CONFIG_FILE))?;
    let name = |key: &str, default: &str| runtime.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
    let model_file = name("llm_model", config::MODEL_FILE);
    let weight_file = name("llm_weight", config::WEIGHT_FILE);
    // The runtime's own default tokenizer name is tokenizer.txt.
    let tokenizer_file = name("tokenizer_file", "tokenizer.txt");
    let llm_config_file = name("llm_config", config::LLM_CONFIG_FILE);

    let model_path = dir.join(&model_file);
    let bytes = limits::read_file(&model_path, limits::MAX_MODEL_FILE_BYTES, "model graph")?;
    let graph = read_net(&bytes).with_context(|| format!("{}: not a readable MNN.Net", model_path.display()))?;

    let mut problems = Vec::new();
    let weight_bytes = std::fs::metadata(dir.join(&weight_file)).ok().map(|m| m.len());
    if weight_bytes.is_none() {
        problems.push(format!("{weight_file} is missing"));
    }
    let (mut linear_records, mut linear_bytes, mut norm_records, mut norm_bytes) = (0, 0u64, 0, 0u64);
    let mut quant = BTreeMap::new();
    let check_range = |op: &str, external: &[i64], problems: &mut Vec<String>| -> u64 {
        let len: i64 = external.iter().skip(1).take(4).sum();
        let (Some(&offset), Some(file)) = (external.first(), weight_bytes) else { return len.max(0) as u64 };
        if offset < 0 || len < 0 || (offset + len) as u64 > file {
            problems.push(format!("{op}: record [{offset}, +{len}) lies outside {weight_file} ({file} bytes)"));
        }
        len.max(0) as u64
    };
    for op in &graph.ops {
        match &op.param {
            OpParam::Convolution(c) if !c.external.is_empty() => {
                linear_records += 1;
                linear_bytes += check_range(&op.name, &c.external, &mut problems);
                let (oc, ic, rt) = (c.output_count as i64, c.input_count as i64, c.quan.read_type as i64);
                let block = (rt > 0 && oc > 0 && rt % oc == 0 && ic % (rt / oc) == 0).then(|| ic / (rt / oc));
                let group = QuantGroup { bits: c.quan.a_max_or_bits, block, fp16_scales: c.quan.scale_fp16 };
                *quant.entry(group).or_insert(0) += 1;
            }
            OpParam::LayerNorm(n) if !n.external.is_empty() => {
                norm_records += 1;
                norm_bytes += check_range(&op.name, &n.external, &mut problems);
            }
            _ => {}
        }
    }

    let llm_config = read_json(&dir.join(&llm_config_file)).unwrap_or_else(|e| {
        problems.push(format!("{e:#}"));
        Value::Null
    });
    let tokenizer = match tokenizer_header(&dir.join(&tokenizer_file), &tokenizer_file) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!("{e:#}"));
            None
        }
    };
    let dtype_name = |d: DataType| d.name().to_string();
    Ok(MnnDirReport {
        dir: dir.to_path_buf(),
        model_file,
        model_bytes: bytes.len() as u64,
        version: graph.version.clone(),
        op_counts: graph.op_counts(),
        ops: graph.ops.len(),
        inputs: graph.inputs().into_iter().map(|(n, d, t)| (n.to_string(), d.to_vec(), dtype_name(t))).collect(),
        outputs: graph.outputs.clone(),
        weight_file,
        weight_bytes,
        linear_records,
        linear_bytes,
        norm_records,
        norm_bytes,
        quant,
        llm_config,
        runtime,
        tokenizer,
        problems,
    })
}

fn quant_label(g: &QuantGroup) -> String {
    let block = g.block.map_or("symmetric".to_string(), |b| format!("block {b}"));
    format!("{}-bit, {block}, {} scales", g.bits, if g.fp16_scales { "fp16" } else { "fp32" })
}

impl MnnDirReport {
    pub fn to_json(&self) -> Value {
        let runtime_keys = ["backend_type", "thread_num", "precision", "memory", "sampler_type"];
        json!({
            "format": "mnn",
            "dir": self.dir,
            "graph": {
                "file": self.model_file,
                "bytes": self.model_bytes,
                "mnn_version": self.version,
                "ops": self.ops,
                "op_counts": self.op_counts,
                "inputs": self.inputs.iter().map(|(n, d, t)| json!({"name": n, "dims": d, "dtype": t})).collect::<Vec<_>>(),
                "outputs": self.outputs,
            },
            "weights": {
                "file": self.weight_file,
                "bytes": self.weight_bytes,
                "linear_records": self.linear_records,
                "linear_bytes": self.linear_bytes,
                "norm_records": self.norm_records,
                "norm_bytes": self.norm_bytes,
                "quantization": self.quant.iter().map(|(g, n)| json!({
                    "bits": g.bits, "block": g.block, "fp16_scales": g.fp16_scales, "records": n,
                })).collect::<Vec<_>>(),
            },
            "model": {
                "model_type": self.llm_config.get("model_type"),
                "hidden_size": self.llm_config.get("hidden_size"),
                "layer_nums": self.llm_config.get("layer_nums"),
                "tie_embeddings": self.llm_config.get("tie_embeddings"),
                "chat_template": self.llm_config.pointer("/jinja/chat_template").is_some(),
            },
            "runtime": runtime_keys.iter().filter_map(|k| Some((k.to_string(), self.runtime.get(*k)?.clone()))).collect::<serde_json::Map<_, _>>(),
            "tokenizer": self.tokenizer.as_ref().map(|t| json!({
                "file": t.file, "bytes": t.bytes, "type": t.kind, "special_ids": t.special, "stop_ids": t.stop, "prefix_ids": t.prefix,
                "vocab": t.vocab, "merges": t.merges, "added_tokens": t.added_tokens, "unchecked": t.unchecked,
            })),
            "problems": self.problems,
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "format      MNN model directory ({})", self.dir.display());
        let _ = writeln!(
            out,
            "graph       {} ({} bytes, MNN {}): {} ops",
            self.model_file,
            self.model_bytes,
            if self.version.is_empty() { "?" } else { &self.version },
            self.ops
        );
        for (ty, n) in &self.op_counts {
            let _ = writeln!(out, "  {ty:<16} {n:>5}");
        }
        for (name, dims, dtype) in &self.inputs {
            let _ = writeln!(out, "input       {name:<16} {dims:?} {dtype}");
        }
        let _ = writeln!(out, "outputs     {}", self.outputs.join(", "));
        let _ = writeln!(
            out,
            "weights     {} ({}): {} Linear records ({:.2} MiB), {} norm records ({:.1} KiB)",
            self.weight_file,
            self.weight_bytes.map_or("missing".to_string(), |b| format!("{b} bytes")),
            self.linear_records,
            self.linear_bytes as f64 / (1 << 20) as f64,
            self.norm_records,
            self.norm_bytes as f64 / 1024.0
        );
        for (g, n) in &self.quant {
            let _ = writeln!(out, "  {:<36} {n:>5} records", quant_label(g));
        }
        let c = &self.llm_config;
        let _ = writeln!(
            out,
            "model       {} hidden, {} layers ({})",
            c.get("hidden_size").unwrap_or(&Value::Null),
            c.get("layer_nums").unwrap_or(&Value::Null),
            c.get("model_type").and_then(Value::as_str).unwrap_or("?")
        );
        let tie = match c.get("tie_embeddings") {
            Some(t) => format!("tied: rows read from lm_head's record ({t})"),
            None => "untied (embeddings file)".to_string(),
        };
        let _ = writeln!(out, "embeddings  {tie}");
        let r = &self.runtime;
        let show = |k: &str| r.get(k).map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "runtime     backend {}, threads {}, precision {}, memory {}, sampler {}",
            show("backend_type"),
            show("thread_num"),
            show("precision"),
            show("memory"),
            show("sampler_type")
        );
        match &self.tokenizer {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "tokenizer   {} ({} bytes, {}): {} special, {} stop, {} prefix ids; chat template {}",
                    t.file,
                    t.bytes,
                    t.kind,
                    t.special,
                    t.stop,
                    t.prefix,
                    if c.pointer("/jinja/chat_template").is_some() { "present" } else { "absent" }
                );
                if let (Some(v), Some(m)) = (t.vocab, t.merges) {
                    let added = t.added_tokens.map_or(String::new(), |a| format!(", {a} added tokens"));
                    let _ = writeln!(out, "            {v} tokens, {m} merges{added}: the whole file was read and checked");
                }
                if let Some(note) = &t.unchecked {
                    let _ = writeln!(out, "            note: {note}");
                }
            }
            None => {
                let _ = writeln!(out, "tokenizer   unreadable");
            }
        }
        for p in &self.problems {
            let _ = writeln!(out, "problem     {p}");
        }
        out
    }
}
