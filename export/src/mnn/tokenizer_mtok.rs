//! `tokenizer.mtok`: MNN's binary "PIPELINE" tokenizer (type 4), written from the HF tokenizer
//! files the way MNN 3.6.1's `llmexport.py` writes it (shared/docs/mnn.md §3a).
//!
//! Layout: three text lines (`430 4`, `<n_special> <n_stop> <n_prefix>`, the ids), then a
//! little-endian binary body: normalizer, pre-tokenizer, model (BPE / WordPiece / Unigram),
//! decoder, added tokens, chat template, eos string, flags, bos string. Strings are
//! `u16 length + UTF-8 bytes` except the chat template (`u32 length`).
//!
//! The id lists follow what llmexport computes through transformers:
//! * special ids: `list(set(all_special_ids))` (CPython's set iteration order, reproduced by
//!   [`python_int_set_order`]), then every `added_tokens` entry with `special: true` not yet
//!   listed, in file order;
//! * stop ids: the eos id, `<|eot_id|>` when it encodes to one token, the second id of
//!   `<end_of_turn>` when it encodes to `[2, x]`, the generation config's eos ids, `<turn|>`
//!   when it is one token; deduplicated through a set;
//! * prefix ids: the ids `encode("A")` puts before the last one, when that last one decodes
//!   to `A` (a BOS added by the post-processor).
//!
//! Normalizers that need a Unicode table (NFKC/NFC/NFKD/Precompiled, accent stripping) are
//! refused: llmexport writes tables generated from Python's `unicodedata`, which this writer
//! does not reproduce, and MiniMind tokenizers have no normalizer.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::str::FromStr;

use mm_converters::TokenizerFiles;

/// The magic number on the first line of every MNN tokenizer file.
pub const MAGIC: u32 = 430;
/// Tokenizer type 4: the binary pipeline format.
pub const PIPELINE: u32 = 4;

/// What the writer needs beyond the tokenizer files.
#[derive(Debug, Clone, Default)]
pub struct MtokOptions {
    /// `eos_token_id` of the model's generation_config.json (an int or a list), which
    /// llmexport adds to the stop ids. MiniMind's is `2`, already the tokenizer's eos.
    pub generation_eos_ids: Vec<u32>,
}

/// The three id lists of the text header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtokHeader {
    pub special: Vec<u32>,
    pub stop: Vec<u32>,
    pub prefix: Vec<u32>,
}

/// The bytes of `tokenizer.mtok` for `files`.
pub fn write_mtok(files: &TokenizerFiles, options: &MtokOptions) -> Result<Vec<u8>> {
    let json_text =
        files.tokenizer_json.as_deref().context("the tokenizer has no tokenizer.json; MNN's .mtok is built from it")?;
    let tj: Value = serde_json::from_str(json_text).context("parsing tokenizer.json")?;
    let config = files.tokenizer_config.as_ref();
    let tokenizer = tokenizers::Tokenizer::from_str(json_text).map_err(|e| anyhow!("loading tokenizer.json: {e}"))?;
    let header = header_ids(&tj, config, &tokenizer, options)?;

    let mut out = Vec::with_capacity(json_text.len() / 2);
    out.extend_from_slice(format!("{MAGIC} {PIPELINE}\n").as_bytes());
    out.extend_from_slice(
        format!("{} {} {}\n", header.special.len(), header.stop.len(), header.prefix.len()).as_bytes(),
    );
    let line: Vec<String> =
        header.special.iter().chain(&header.stop).chain(&header.prefix).map(|id| id.to_string()).collect();
    out.extend_from_slice(line.join(" ").as_bytes());
    out.push(b'\n');

    let mut w = Body { out };
    w.normalizer(tj.get("normalizer").filter(|v| !v.is_null()))?;
    let pre = tj.get("pre_tokenizer").filter(|v| !v.is_null());
    w.pre_tokenizer(pre)?;
    w.model(&tj, pre)?;
    w.decoder(tj.get("decoder").filter(|v| !v.is_null()))?;
    w.added_tokens(&tj)?;
    w.tail(config)?;
    Ok(w.out)
}

/// The special / stop / prefix ids llmexport puts in the text header.
pub fn header_ids(
    tj: &Value,
    config: Option<&Value>,
    tokenizer: &tokenizers::Tokenizer,
    options: &MtokOptions,
) -> Result<MtokHeader> {
    let token_id = |token: &str| -> Option<u32> { tokenizer.token_to_id(token) };
    // transformers' convert_tokens_to_ids: an unknown token maps to the unk id (or None).
    let config_token = |key: &str| -> Option<String> { config?.get(key).and_then(token_content).map(str::to_string) };
    let unk_id = config_token("unk_token").and_then(|t| token_id(&t));
    let to_id = |token: &str| token_id(token).or(unk_id);

    // all_special_ids: bos, eos, unk, sep, pad, cls, mask, then the additional ones.
    let mut all_special: Vec<u32> = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
        if let Some(id) = config_token(key).and_then(|t| to_id(&t)) {
            all_special.push(id);
        }
    }
    for key in ["additional_special_tokens", "extra_special_tokens"] {
        if let Some(list) = config.and_then(|c| c.get(key)).and_then(Value::as_array) {
            for t in list.iter().filter_map(token_content) {
                if let Some(id) = to_id(t) {
                    all_special.push(id);
                }
            }
        }
    }
    let mut special = python_int_set_order(&all_special);
    if let Some(added) = tj.get("added_tokens").and_then(Value::as_array) {
        for at in added {
            if at.get("special").and_then(Value::as_bool).unwrap_or(false) {
                let id = added_id(at)?;
                if !special.contains(&id) {
                    special.push(id);
                }
            }
        }
    }

    let encode = |text: &str, add_special: bool| -> Result<Vec<u32>> {
        Ok(tokenizer.encode(text, add_special).map_err(|e| anyhow!("encoding {text:?}: {e}"))?.get_ids().to_vec())
    };
    let mut stop: Vec<u32> = Vec::new();
    if let Some(id) = config_token("eos_token").and_then(|t| to_id(&t)) {
        stop.push(id);
    }
    let eot = encode("<|eot_id|>", true)?;
    if eot.len() == 1 {
        stop.push(eot[0]);
    }
    let eot = encode("<end_of_turn>", true)?;
    if eot.len() == 2 && eot[0] == 2 {
        stop.push(eot[1]);
    }
    stop.extend_from_slice(&options.generation_eos_ids);
    let turn = encode("<turn|>", false)?;
    if turn.len() == 1 && !stop.contains(&turn[0]) {
        stop.push(turn[0]);
    }
    let stop = python_int_set_order(&stop);

    let mut prefix = Vec::new();
    let ids = encode("A", true)?;
    if ids.len() > 1 {
        let last = tokenizer.decode(&ids[ids.len() - 1..], false).map_err(|e| anyhow!("decoding: {e}"))?;
        if last == "A" {
            prefix = ids[..ids.len() - 1].to_vec();
        }
    }
    Ok(MtokHeader { special, stop, prefix })
}

/// The order in which CPython 3 iterates `set(values)` for non-negative ints (whose hash is
/// the value itself): open addressing with 9 linear probes, then perturbed jumps, the table
/// growing to 4× the used count when 3/5 full. Small ids come out ascending; large ones
/// (e.g. 151643 beside 0) do not, and llmexport writes them in this order.
pub fn python_int_set_order(values: &[u32]) -> Vec<u32> {
    const LINEAR_PROBES: usize = 9;
    const PERTURB_SHIFT: u32 = 5;
    const MIN_SIZE: usize = 8;

    fn insert_clean(table: &mut [Option<u32>], key: u32) {
        let mask = table.len() - 1;
        let mut perturb = key as usize;
        let mut i = key as usize & mask;
        loop {
            if table[i].is_none() {
                table[i] = Some(key);
                return;
            }
            if i + LINEAR_PROBES <= mask {
                for j in 1..=LINEAR_PROBES {
                    if table[i + j].is_none() {
                        table[i + j] = Some(key);
                        return;
                    }
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i * 5 + 1 + perturb) & mask;
        }
    }

    let mut table: Vec<Option<u32>> = vec![None; MIN_SIZE];
    let mut used = 0usize;
    for &key in values {
        // Lookup-or-insert with the same probe sequence (no deletions, so no dummies).
        let mask = table.len() - 1;
        let mut perturb = key as usize;
        let mut i = key as usize & mask;
        let slot = 'probe: loop {
            let probes = if i + LINEAR_PROBES <= mask { LINEAR_PROBES } else { 0 };
            for j in 0..=probes {
                match table[i + j] {
                    None => break 'probe Some(i + j),
                    Some(k) if k == key => break 'probe None,
                    Some(_) => {}
                }
            }
            perturb >>= PERTURB_SHIFT;
            i = (i * 5 + 1 + perturb) & mask;
        };
        let Some(slot) = slot else { continue };
        table[slot] = Some(key);
        used += 1;
        // fill == used without deletions.
        if used * 5 >= mask * 3 {
            let min_used = if used > 50_000 { used * 2 } else { used * 4 };
            let mut size = MIN_SIZE;
            while size <= min_used {
                size <<= 1;
            }
            let old = std::mem::replace(&mut table, vec![None; size]);
            for k in old.into_iter().flatten() {
                insert_clean(&mut table, k);
            }
        }
    }
    table.into_iter().flatten().collect()
}

/// A token given as a string or as `{"content": …}` (tokenizer_config.json forms).
fn token_content(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

fn added_id(at: &Value) -> Result<u32> {
    let id = at.get("id").and_then(Value::as_u64).context("an added token has no id")?;
    u32::try_from(id).context("added token id out of range")
}

fn str_field<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}

/// Python's `int(d.get(key, default))` for a JSON bool (null counts as false).
fn flag(v: &Value, key: &str, default: bool) -> u8 {
    match v.get(key) {
        None => default as u8,
        Some(Value::Bool(b)) => *b as u8,
        Some(Value::Number(n)) => (n.as_i64().unwrap_or(0) != 0) as u8,
        Some(_) => 0,
    }
}

/// The binary body writer.
struct Body {
    out: Vec<u8>,
}

impl Body {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) -> Result<()> {
        let len =
            u16::try_from(s.len()).with_context(|| format!("string of {} bytes does not fit a u16 length", s.len()))?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn normalizer(&mut self, norm: Option<&Value>) -> Result<()> {
        let Some(norm) = norm else {
            self.u8(0);
            return Ok(());
        };
        match str_field(norm, "type", "") {
            t @ ("NFKC" | "Precompiled" | "NFKD" | "NFC") => {
                bail!("tokenizer normalizer {t} needs a Unicode table in .mtok; not supported")
            }
            "Prepend" => {
                self.u8(2);
                self.str(str_field(norm, "prepend", ""))?;
            }
            "Replace" => {
                self.u8(3);
                let pattern = match norm.get("pattern") {
                    Some(Value::Object(p)) => p.get("String").and_then(Value::as_str).unwrap_or(""),
                    Some(Value::String(s)) => s,
                    _ => "",
                };
                self.str(pattern)?;
                self.str(str_field(norm, "content", ""))?;
            }
            "Sequence" => {
                self.u8(4);
                let list = norm.get("normalizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                self.u32(list.len() as u32);
                for n in list {
                    self.normalizer(Some(n))?;
                }
            }
            "BertNormalizer" => {
                let lowercase = flag(norm, "lowercase", true) != 0;
                let strip_accents = match norm.get("strip_accents") {
                    None | Some(Value::Null) => lowercase,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => false,
                };
                if strip_accents {
                    bail!("BertNormalizer with accent stripping needs a Unicode table in .mtok; not supported");
                }
                self.u8(5);
                self.u8(flag(norm, "clean_text", true));
                self.u8(flag(norm, "handle_chinese_chars", true));
                self.u8(0);
                self.u8(lowercase as u8);
            }
            "Lowercase" => {
                self.u8(5);
                self.out.extend_from_slice(&[0, 0, 0, 1]);
            }
            "StripAccents" => bail!("StripAccents needs a Unicode table in .mtok; not supported"),
            "Strip" => {
                self.u8(8);
                self.u8(flag(norm, "strip_left", true));
                self.u8(flag(norm, "strip_right", true));
            }
            _ => self.u8(0),
        }
        Ok(())
    }

    fn pre_tokenizer(&mut self, pt: Option<&Value>) -> Result<()> {
        let Some(pt) = pt else {
            self.u8(0);
            return Ok(());
        };
        match str_field(pt, "type", "") {
            "ByteLevel" => {
                self.u8(1);
                self.u8(flag(pt, "use_regex", true));
            }
            "Digits" => {
                self.u8(2);
                self.u8(flag(pt, "individual_digits", false));
            }
            "Metaspace" => {
                self.u8(3);
                let mut rep = str_field(pt, "replacement", "\u{2581}");
                if let Some(s) = pt.get("str_rep").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    rep = s;
                }
                self.str(rep)?;
                self.u8(flag(pt, "add_prefix_space", true));
            }
            "Split" => {
                self.u8(4);
                let pattern = match pt.get("pattern") {
                    Some(Value::Object(p)) => {
                        p.get("Regex").or_else(|| p.get("String")).and_then(Value::as_str).unwrap_or("")
                    }
                    Some(Value::String(s)) => s,
                    _ => "",
                };
                self.str(pattern)?;
                let behavior = match str_field(pt, "behavior", "Isolated") {
                    "Isolated" => 0,
                    "MergedWithPrevious" => 2,
                    _ => 1,
                };
                self.u8(flag(pt, "invert", false));
                self.u8(behavior);
            }
            "BertPreTokenizer" => self.u8(5),
            "Sequence" => {
                self.u8(6);
                let list = pt.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                self.u32(list.len() as u32);
                for p in list {
                    self.pre_tokenizer(Some(p))?;
                }
            }
            "WhitespaceSplit" => {
                self.u8(4);
                self.str("\\s+")?;
                self.u8(0);
                self.u8(1);
            }
            _ => self.u8(0),
        }
        Ok(())
    }

    fn model(&mut self, tj: &Value, pre: Option<&Value>) -> Result<()> {
        let empty = Value::Object(Default::default());
        let model = tj.get("model").unwrap_or(&empty);
        let mut kind = str_field(model, "type", "").to_string();
        if kind.is_empty() {
            kind = if model.get("continuing_subword_prefix").is_some() && model.get("merges").is_none() {
                "WordPiece".into()
            } else if model.get("vocab").is_some_and(Value::is_array) {
                "Unigram".into()
            } else {
                "BPE".into()
            };
        }
        match kind.as_str() {
            "BPE" => self.bpe(tj, model, pre),
            "WordPiece" => {
                let vocab = sorted_vocab(model)?;
                self.u8(1);
                self.u32(vocab.len() as u32);
                self.str(str_field(model, "unk_token", "[UNK]"))?;
                self.str(str_field(model, "continuing_subword_prefix", "##"))?;
                self.u32(model.get("max_input_chars_per_word").and_then(Value::as_u64).unwrap_or(100) as u32);
                for (token, id) in vocab {
                    self.str(token)?;
                    self.u32(id);
                }
                Ok(())
            }
            "Unigram" => {
                let list = model.get("vocab").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                let mut entries: Vec<(&str, u32, f64)> = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    if let Some(pair) = item.as_array().filter(|p| p.len() >= 2) {
                        let token = pair[0].as_str().context("unigram token is not a string")?;
                        entries.push((token, i as u32, pair[1].as_f64().context("unigram score is not a number")?));
                    }
                }
                entries.sort_by(|a, b| a.0.cmp(b.0)); // stable, like Python's sort
                self.u8(2);
                self.u32(entries.len() as u32);
                self.u32(model.get("unk_id").and_then(Value::as_u64).unwrap_or(0) as u32);
                self.u8(flag(model, "byte_fallback", false));
                for (token, id, score) in entries {
                    self.str(token)?;
                    self.u32(id);
                    self.out.extend_from_slice(&score.to_le_bytes());
                }
                Ok(())
            }
            other => bail!("tokenizer model type {other} has no .mtok layout"),
        }
    }

    fn bpe(&mut self, tj: &Value, model: &Value, pre: Option<&Value>) -> Result<()> {
        let vocab_map = model.get("vocab").and_then(Value::as_object).context("BPE model has no vocab object")?;
        let vocab = sorted_vocab(model)?;
        let merges = model.get("merges").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        // byte_level flag: 1 only when a Sequence pre-tokenizer lacks ByteLevel but the
        // decoder (or a decoder in its Sequence) is ByteLevel.
        let is_type = |v: &Value, t: &str| v.get("type").and_then(Value::as_str) == Some(t);
        let mut byte_level = 0u8;
        if let Some(pt) = pre.filter(|pt| is_type(pt, "Sequence")) {
            let list = pt.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            if !list.iter().any(|p| is_type(p, "ByteLevel")) {
                if let Some(dec) = tj.get("decoder").filter(|d| !d.is_null()) {
                    if is_type(dec, "ByteLevel") {
                        byte_level = 1;
                    } else if is_type(dec, "Sequence") {
                        let decs = dec.get("decoders").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                        if decs.iter().any(|d| is_type(d, "ByteLevel")) {
                            byte_level = 1;
                        }
                    }
                }
            }
        }
        self.u8(0);
        self.u32(vocab.len() as u32);
        self.u8(flag(model, "byte_fallback", false));
        self.u8(byte_level);
        self.u32(merges.len() as u32);
        for (token, id) in &vocab {
            self.str(token)?;
            self.u32(*id);
        }
        let lookup = |t: &str| -> Result<u32> {
            let id = vocab_map
                .get(t)
                .and_then(Value::as_u64)
                .with_context(|| format!("merge token {t:?} is not in the vocab"))?;
            Ok(id as u32)
        };
        let mut pairs: Vec<(u32, u32, u32)> = Vec::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            match m {
                Value::String(s) => {
                    if let Some((a, b)) = s.split_once(' ') {
                        pairs.push((lookup(a)?, lookup(b)?, rank as u32));
                    }
                }
                Value::Array(p) if p.len() >= 2 => {
                    let a = p[0].as_str().context("merge part is not a string")?;
                    let b = p[1].as_str().context("merge part is not a string")?;
                    pairs.push((lookup(a)?, lookup(b)?, rank as u32));
                }
                _ => {}
            }
        }
        pairs.sort_by_key(|&(a, b, _)| ((a as u64) << 32) | b as u64); // stable
        for (a, b, rank) in pairs {
            self.u32(a);
            self.u32(b);
            self.u32(rank);
        }
        Ok(())
    }

    fn decoder(&mut self, dec: Option<&Value>) -> Result<()> {
        let Some(dec) = dec else {
            self.u8(0);
            return Ok(());
        };
        match str_field(dec, "type", "") {
            "ByteLevel" => self.u8(0),
            "ByteFallback" => self.u8(1),
            "Metaspace" => {
                self.u8(2);
                self.str(str_field(dec, "replacement", "\u{2581}"))?;
                self.u8(flag(dec, "add_prefix_space", true));
            }
            "WordPiece" => {
                self.u8(3);
                self.str(str_field(dec, "prefix", "##"))?;
                self.u8(flag(dec, "cleanup", true));
            }
            "Fuse" => self.u8(4),
            "Replace" => {
                self.u8(5);
                let pattern = match dec.get("pattern") {
                    Some(Value::Object(p)) => p.get("String").and_then(Value::as_str).unwrap_or(""),
                    Some(Value::String(s)) => s,
                    _ => "",
                };
                self.str(pattern)?;
                self.str(str_field(dec, "content", ""))?;
            }
            "Strip" => {
                self.u8(6);
                self.str(str_field(dec, "content", ""))?;
                self.u32(dec.get("start").and_then(Value::as_u64).unwrap_or(0) as u32);
                self.u32(dec.get("stop").and_then(Value::as_u64).unwrap_or(0) as u32);
            }
            "Sequence" => {
                self.u8(7);
                let list = dec.get("decoders").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                self.u32(list.len() as u32);
                for d in list {
                    self.decoder(Some(d))?;
                }
            }
            _ => self.u8(0),
        }
        Ok(())
    }

    fn added_tokens(&mut self, tj: &Value) -> Result<()> {
        let list = tj.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        self.u32(list.len() as u32);
        for at in list {
            self.u32(added_id(at)?);
            self.u8(flag(at, "special", false));
            self.u8(flag(at, "lstrip", false));
            self.u8(flag(at, "rstrip", false));
            self.str(str_field(at, "content", ""))?;
        }
        Ok(())
    }

    /// Chat template, eos, flags, bos — all read from tokenizer_config.json, as llmexport
    /// does (a template kept only in chat_template.jinja is not written here; the runtime
    /// takes its template from llm_config.json's `jinja` anyway).
    fn tail(&mut self, config: Option<&Value>) -> Result<()> {
        let (mut template, mut eos, mut bos, mut flags) = ("", "", "", 0u8);
        if let Some(c) = config {
            template = c.get("chat_template").and_then(Value::as_str).unwrap_or("");
            eos = c.get("eos_token").and_then(token_content).unwrap_or("");
            bos = c.get("bos_token").and_then(token_content).unwrap_or("");
            if c.get("clean_up_tokenization_spaces") == Some(&Value::Bool(true)) {
                flags |= 1;
            }
        }
        self.u32(u32::try_from(template.len()).context("chat template too long")?);
        self.out.extend_from_slice(template.as_bytes());
        self.str(eos)?;
        self.u8(flags);
        self.str(bos)?;
        Ok(())
    }
}

/// `sorted(vocab.items())` by token: Python compares str by code point, which is UTF-8
/// byte order.
fn sorted_vocab(model: &Value) -> Result<Vec<(&str, u32)>> {
    let map = model.get("vocab").and_then(Value::as_object).context("tokenizer model has no vocab object")?;
    let mut vocab = Vec::with_capacity(map.len());
    for (token, id) in map {
        let id = id.as_u64().with_context(|| format!("vocab id of {token:?} is not an integer"))?;
        vocab.push((token.as_str(), u32::try_from(id).context("vocab id out of range")?));
    }
    vocab.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_order_small_ints_ascending() {
        assert_eq!(python_int_set_order(&[1, 2, 0, 0, 2]), vec![0, 1, 2]);
        let v: Vec<u32> = (0..21).rev().collect();
        assert_eq!(python_int_set_order(&v), (0..21).collect::<Vec<_>>());
    }

    #[test]
    fn set_order_large_ints_follow_cpython() {
        // CPython 3: list(set([151643, 151645, 0])) == [0, 151643, 151645]
        // (8 slots: 151643 & 7 = 3, 151645 & 7 = 5).
        assert_eq!(python_int_set_order(&[151643, 151645, 0]), vec![0, 151643, 151645]);
        // list(set([9, 1])) == [9, 1]: 9 takes slot 1, so 1 jumps to slot (1*5+1) & 7 = 6.
        assert_eq!(python_int_set_order(&[9, 1]), vec![9, 1]);
        // list(set([1, 9])) == [1, 9].
        assert_eq!(python_int_set_order(&[1, 9]), vec![1, 9]);
        // 5 entries trigger a resize to 32 slots: list(set([8, 16, 1, 2, 3])) == [1, 2, 3, 8, 16].
        assert_eq!(python_int_set_order(&[8, 16, 1, 2, 3]), vec![1, 2, 3, 8, 16]);
        // Printed by CPython 3.11 for random lists.
        let cases: [(&[u32], &[u32]); 3] = [
            (&[39544, 6, 46, 27, 55, 23779], &[23779, 6, 46, 55, 39544, 27]),
            (
                &[7, 28, 50, 5, 37, 149661, 23, 47, 7, 178362, 122054, 46],
                &[37, 5, 7, 122054, 46, 47, 50, 23, 178362, 28, 149661],
            ),
            (
                &[
                    23, 150581, 90040, 36, 134200, 198479, 128178, 5, 89161, 152016, 24535, 60, 191669, 74605, 5914,
                    45, 63, 36, 102485, 43611, 144032, 112858, 94049, 29, 22,
                ],
                &[
                    5, 22, 23, 5914, 29, 144032, 36, 45, 128178, 150581, 191669, 90040, 134200, 60, 63, 89161, 198479,
                    152016, 102485, 24535, 112858, 43611, 94049, 74605,
                ],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(python_int_set_order(input), want, "{input:?}");
        }
    }

    #[test]
    fn minimal_bpe_layout() {
        let tj = serde_json::json!({
            "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"<s>": 0, "b": 2, "a": 1, "ab": 3}, "merges": [["a", "b"]]}
        });
        let config = serde_json::json!({"eos_token": "<s>", "bos_token": null, "chat_template": "T"});
        let files = TokenizerFiles {
            tokenizer_json: Some(tj.to_string()),
            tokenizer_config: Some(config),
            chat_template: None,
        };
        let bytes = write_mtok(&files, &MtokOptions::default()).unwrap();
        let mut want = b"430 4\n1 1 0\n0 0\n".to_vec();
        want.extend_from_slice(&[0, 1, 1, 0]); // normalizer none, ByteLevel(use_regex), BPE
        want.extend_from_slice(&4u32.to_le_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&1u32.to_le_bytes());
        for (t, id) in [("<s>", 0u32), ("a", 1), ("ab", 3), ("b", 2)] {
            want.extend_from_slice(&(t.len() as u16).to_le_bytes());
            want.extend_from_slice(t.as_bytes());
            want.extend_from_slice(&id.to_le_bytes());
        }
        for v in [1u32, 2, 0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.push(0); // ByteLevel decoder
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 3, 0]);
        want.extend_from_slice(b"<s>");
        want.extend_from_slice(&1u32.to_le_bytes());
        want.push(b'T');
        want.extend_from_slice(&[3, 0]);
        want.extend_from_slice(b"<s>");
        want.push(0);
        want.extend_from_slice(&[0, 0]);
        assert_eq!(bytes, want);
    }
}
