//! `tokenizer.mtok`: MNN's binary "PIPELINE" tokenizer (type 4), written from the HF tokenizer
//! files the way MNN 3.6.1's `llmexport.py` writes it (docs/mnn.md §3a).
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

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

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
    let tokenizer = crate::tokenizer_json::parse(json_text).map_err(|e| anyhow!("loading tokenizer.json: {e}"))?;
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

/// What a `.mtok` file holds, read back whole by [`read_mtok`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtokContents {
    pub header: MtokHeader,
    /// `BPE`, `WordPiece` or `Unigram`.
    pub model: &'static str,
    pub vocab: usize,
    pub merges: usize,
    pub added_tokens: usize,
    /// Bytes of the chat template in the optional tail (None: no tail).
    pub chat_template_bytes: Option<usize>,
    /// Set when part of the body could not be checked (a normalizer with a Unicode table,
    /// whose layout mm does not read): what was skipped.
    pub unchecked: Option<String>,
}

/// Nesting of Sequence normalizers / pre-tokenizers / decoders a reader follows.
const MAX_NESTING: usize = 32;

/// Parses a whole `.mtok` file (the layout [`write_mtok`] writes) and checks it against its
/// own declared counts: the id line holds as many ids as line 2 declares, every vocab entry,
/// merge and added token is there, the ids are inside the vocabulary, and nothing is left
/// over. Any cut or garbage is an error naming the part and byte offset where it shows.
pub fn read_mtok(bytes: &[u8]) -> Result<MtokContents> {
    let mut lines = bytes.splitn(4, |&b| b == b'\n');
    let mut line = |n: usize| -> Result<&str> {
        let l = lines.next().with_context(|| format!("line {n} is missing"))?;
        std::str::from_utf8(l).with_context(|| format!("line {n} is not text"))
    };
    let magic = line(1)?;
    ensure!(magic == format!("{MAGIC} {PIPELINE}"), "line 1 is {magic:?}, not `{MAGIC} {PIPELINE}` (the binary PIPELINE tokenizer)");
    let counts = line(2)?;
    let parsed: Option<Vec<usize>> = counts.split_whitespace().map(|c| c.parse().ok()).collect();
    let Some([n_special, n_stop, n_prefix]) = parsed.as_deref().and_then(|v| <[usize; 3]>::try_from(v).ok()) else {
        bail!("line 2 {counts:?} is not three id counts");
    };
    let ids_line = line(3)?;
    let ids: Option<Vec<u32>> = ids_line.split_whitespace().map(|c| c.parse().ok()).collect();
    let ids = ids.with_context(|| format!("line 3 {:?} is not a list of token ids", truncate_for_message(ids_line)))?;
    let declared = n_special.saturating_add(n_stop).saturating_add(n_prefix);
    ensure!(
        ids.len() == declared,
        "line 2 declares {n_special} special + {n_stop} stop + {n_prefix} prefix ids, line 3 holds {}",
        ids.len()
    );
    let body_start = bytes.len() - lines.next().map_or(0, <[u8]>::len);
    ensure!(body_start < bytes.len(), "the file ends after the text header: no tokenizer body");
    let mut r = MtokReader { bytes, pos: body_start };

    let mut unchecked = None;
    if !r.normalizer(0)? {
        unchecked = Some("the normalizer carries a Unicode table mm does not read; the rest of the file was not checked".to_string());
    }
    let (model, vocab, merges, added_tokens, chat_template_bytes, max_id) = if unchecked.is_none() {
        r.pre_tokenizer(0)?;
        let (model, vocab, merges, mut max_id) = r.model()?;
        r.decoder(0)?;
        let n = r.u32("the added-token count")? as usize;
        for i in 0..n {
            let what = || format!("added token {} of {n}", i + 1);
            let id = r.u32_of(&what)?;
            max_id = max_id.max(Some(id));
            r.take(3, &what)?;
            r.str_of(&what)?;
        }
        let template = if r.pos == bytes.len() {
            // The tail is optional to MNN's reader; llmexport 3.6 and mm always write it.
            unchecked = Some(
                "the file ends right after the added tokens, without the chat template / eos / bos tail that \
                 llmexport 3.6 and mm write (older writers omit it; a file cut at this point looks the same)"
                    .to_string(),
            );
            None
        } else {
            let len = r.u32("the chat template length")? as usize;
            let t = r.take(len, &|| "the chat template".to_string())?;
            ensure!(std::str::from_utf8(t).is_ok(), "the chat template is not UTF-8");
            r.str_of(&|| "the eos token".to_string())?;
            r.take(1, &|| "the flags".to_string())?;
            r.str_of(&|| "the bos token".to_string())?;
            Some(len)
        };
        ensure!(r.pos == bytes.len(), "{} bytes after the end of the tokenizer (offset {})", bytes.len() - r.pos, r.pos);
        (model, vocab, merges, n, template, max_id)
    } else {
        ("?", 0, 0, 0, None, None)
    };
    if let Some(max) = max_id {
        if let Some(bad) = ids.iter().find(|&&id| id > max) {
            bail!("line 3 names id {bad}, beyond the largest token id {max}");
        }
    }
    let (special, rest) = ids.split_at(n_special);
    let (stop, prefix) = rest.split_at(n_stop);
    Ok(MtokContents {
        header: MtokHeader { special: special.to_vec(), stop: stop.to_vec(), prefix: prefix.to_vec() },
        model,
        vocab,
        merges,
        added_tokens,
        chat_template_bytes,
        unchecked,
    })
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(60).collect()
}

/// The binary body, read with bounds checks; every error names the part being read.
struct MtokReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> MtokReader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "the file ends inside {} (offset {}: {n} bytes needed, {} left): it is cut short",
                what(),
                self.pos,
                self.bytes.len() - self.pos
            );
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, &|| what.to_string())?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.u32_of(&|| what.to_string())
    }

    fn u32_of(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn str_of(&mut self, what: &dyn Fn() -> String) -> Result<&'a str> {
        let b = self.take(2, what)?;
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        let at = self.pos;
        let b = self.take(len, what)?;
        std::str::from_utf8(b).map_err(|_| anyhow!("{} at offset {at} is not UTF-8", what()))
    }

    fn str(&mut self, what: &str) -> Result<&'a str> {
        self.str_of(&|| what.to_string())
    }

    /// A count of items that each take at least `min_bytes`: more than the rest of the
    /// file can hold is garbage (or a cut), said before looping.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u32(what)? as usize;
        let left = self.bytes.len() - self.pos;
        ensure!(
            n.saturating_mul(min_bytes) <= left,
            "{what} at offset {at} is {n}, but only {left} bytes follow: the file is cut short or not a .mtok"
        );
        Ok(n)
    }

    fn nest(depth: usize, what: &str) -> Result<()> {
        ensure!(depth < MAX_NESTING, "{what}s nested more than {MAX_NESTING} deep");
        Ok(())
    }

    /// Returns false for a normalizer with a Unicode table (layout not read).
    fn normalizer(&mut self, depth: usize) -> Result<bool> {
        Self::nest(depth, "normalizer")?;
        let at = self.pos;
        match self.u8("the normalizer type")? {
            0 => {}
            2 => {
                self.str("a Prepend normalizer")?;
            }
            3 => {
                self.str("a Replace normalizer")?;
                self.str("a Replace normalizer")?;
            }
            4 => {
                for _ in 0..self.count("the Sequence normalizer count", 1)? {
                    if !self.normalizer(depth + 1)? {
                        return Ok(false);
                    }
                }
            }
            5 => {
                self.take(4, &|| "a Bert normalizer".to_string())?;
            }
            6 | 7 => return Ok(false),
            8 => {
                self.take(2, &|| "a Strip normalizer".to_string())?;
            }
            t => bail!("unknown normalizer type {t} at offset {at}: not a .mtok written by llmexport or mm"),
        }
        Ok(true)
    }

    fn pre_tokenizer(&mut self, depth: usize) -> Result<()> {
        Self::nest(depth, "pre-tokenizer")?;
        let at = self.pos;
        match self.u8("the pre-tokenizer type")? {
            0 | 5 => {}
            1 | 2 => {
                self.u8("a pre-tokenizer flag")?;
            }
            3 => {
                self.str("a Metaspace pre-tokenizer")?;
                self.u8("a Metaspace pre-tokenizer")?;
            }
            4 => {
                self.str("a Split pre-tokenizer pattern")?;
                self.take(2, &|| "a Split pre-tokenizer".to_string())?;
            }
            6 => {
                for _ in 0..self.count("the Sequence pre-tokenizer count", 1)? {
                    self.pre_tokenizer(depth + 1)?;
                }
            }
            t => bail!("unknown pre-tokenizer type {t} at offset {at}: not a .mtok written by llmexport or mm"),
        }
        Ok(())
    }

    /// (model, vocab entries, merges, largest id).
    fn model(&mut self) -> Result<(&'static str, usize, usize, Option<u32>)> {
        let at = self.pos;
        let kind = self.u8("the model type")?;
        let mut max_id = None;
        let (model, vocab, merges) = match kind {
            0 => {
                let vocab = self.count("the BPE vocab size", 6)?;
                self.take(2, &|| "the BPE flags".to_string())?;
                let merges = self.count("the BPE merge count", 0)?;
                for i in 0..vocab {
                    let what = || format!("vocab entry {} of {vocab}", i + 1);
                    self.str_of(&what)?;
                    max_id = max_id.max(Some(self.u32_of(&what)?));
                }
                for i in 0..merges {
                    let what = || format!("merge {} of {merges}", i + 1);
                    let (a, b) = (self.u32_of(&what)?, self.u32_of(&what)?);
                    self.u32_of(&what)?;
                    if let Some(max) = max_id.filter(|&m| a.max(b) > m) {
                        bail!("merge {} of {merges} names id {}, beyond the vocab's largest id {max}", i + 1, a.max(b));
                    }
                }
                ("BPE", vocab, merges)
            }
            1 => {
                let vocab = self.count("the WordPiece vocab size", 6)?;
                self.str("the WordPiece unknown token")?;
                self.str("the WordPiece prefix")?;
                self.u32("the WordPiece word length")?;
                for i in 0..vocab {
                    let what = || format!("vocab entry {} of {vocab}", i + 1);
                    self.str_of(&what)?;
                    max_id = max_id.max(Some(self.u32_of(&what)?));
                }
                ("WordPiece", vocab, 0)
            }
            2 => {
                let vocab = self.count("the Unigram vocab size", 14)?;
                self.u32("the Unigram unknown id")?;
                self.u8("the Unigram byte-fallback flag")?;
                for i in 0..vocab {
                    let what = || format!("vocab entry {} of {vocab}", i + 1);
                    self.str_of(&what)?;
                    max_id = max_id.max(Some(self.u32_of(&what)?));
                    self.take(8, &what)?;
                }
                ("Unigram", vocab, 0)
            }
            t => bail!("unknown model type {t} at offset {at}: not a .mtok written by llmexport or mm"),
        };
        Ok((model, vocab, merges, max_id))
    }

    fn decoder(&mut self, depth: usize) -> Result<()> {
        Self::nest(depth, "decoder")?;
        let at = self.pos;
        match self.u8("the decoder type")? {
            0 | 1 | 4 => {}
            2 | 3 => {
                self.str("a decoder")?;
                self.u8("a decoder flag")?;
            }
            5 => {
                self.str("a Replace decoder")?;
                self.str("a Replace decoder")?;
            }
            6 => {
                self.str("a Strip decoder")?;
                self.take(8, &|| "a Strip decoder".to_string())?;
            }
            7 => {
                for _ in 0..self.count("the Sequence decoder count", 1)? {
                    self.decoder(depth + 1)?;
                }
            }
            t => bail!("unknown decoder type {t} at offset {at}: not a .mtok written by llmexport or mm"),
        }
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
    fn read_mtok_reads_back_what_write_mtok_writes_and_refuses_every_cut() {
        let files = TokenizerFiles::builtin_minimind2();
        let bytes = write_mtok(&files, &MtokOptions::default()).unwrap();
        let c = read_mtok(&bytes).unwrap();
        let tj: Value = serde_json::from_str(files.tokenizer_json.as_deref().unwrap()).unwrap();
        let added = tj["added_tokens"].as_array().unwrap().len();
        assert_eq!((c.model, c.vocab, c.merges, c.added_tokens), ("BPE", 6400, 6141, added));
        let header = header_ids(&tj, files.tokenizer_config.as_ref(), &files.tokenizer_json.as_deref().unwrap().parse::<tokenizers::Tokenizer>().unwrap(), &MtokOptions::default()).unwrap();
        assert_eq!(c.header, header);
        assert!(c.chat_template_bytes.is_some_and(|n| n > 100) && c.unchecked.is_none(), "{c:?}");
        // Cut anywhere: an error, except exactly before the optional tail, which is noted.
        let mut cuts: Vec<usize> = (0..64).chain((64..bytes.len()).step_by(499)).chain(bytes.len() - 64..bytes.len()).collect();
        let tail_at = bytes.len() - c.chat_template_bytes.unwrap() - 4 - 2 - "<|im_end|>".len() - 1 - 2 - "<|im_start|>".len();
        assert!(read_mtok(&bytes[..tail_at]).unwrap().unchecked.is_some());
        cuts.push(tail_at);
        for cut in cuts {
            match read_mtok(&bytes[..cut]) {
                Err(e) => assert!(!format!("{e:#}").is_empty()),
                Ok(c) => assert!(cut == tail_at && c.unchecked.as_deref().is_some_and(|u| u.contains("tail")), "cut at {cut} read as {c:?}"),
            }
        }
        let half = read_mtok(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(format!("{half:#}").contains("cut short"), "{half:#}");
        // Declared counts that the file does not hold.
        let text = String::from_utf8_lossy(&bytes[..40]).into_owned();
        let lied = [b"430 4\n22 1 0\n".as_slice(), &bytes[text.find("0 1 2").unwrap()..]].concat();
        assert!(format!("{:#}", read_mtok(&lied).unwrap_err()).contains("declares"));
        let mut grown = bytes.clone();
        grown.push(0);
        assert!(format!("{:#}", read_mtok(&grown).unwrap_err()).contains("1 bytes after the end"));
        // Garbage after a valid header.
        let garbage: Vec<u8> = [b"430 4\n0 0 0\n\n".as_slice(), &[9u8; 100]].concat();
        assert!(format!("{:#}", read_mtok(&garbage).unwrap_err()).contains("normalizer type 9"));
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
