//! A GGUF's vocabulary against its embedding: an empty token list, a `vocab_size` of 0 or
//! one that disagrees with the embedding rows, and a token count that is not the row count
//! are errors naming the file (they used to load and run).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mm_converters::gguf::checkpoint::{write, GgufOptions, SourcePrecision};
use mm_converters::gguf::file::{write_to_vec, GgufFile, MetaValue, Metadata};
use mm_converters::gguf::mixture::QuantScheme;
use mm_converters::gguf::vocab::GgufVocab;
use mm_converters::naming::expected_tensors;
use mm_converters::pth::checkpoint::PthHints;
use mm_converters::{read_checkpoint, Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};

fn tiny_gguf(dir: &Path) -> PathBuf {
    let cfg = MiniMindConfig { vocab_size: 6400, num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(64, 1) };
    let tensors = expected_tensors(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 100.0).collect();
            (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        })
        .collect();
    let ckpt = Checkpoint::new(cfg, tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("synthetic", Path::new("-"))).unwrap();
    let path = dir.join("tiny.gguf");
    let options = GgufOptions { scheme: QuantScheme::F32, source_precision: SourcePrecision::Exact, name: "tiny".into() };
    write(&ckpt, &path, &options, &|_, _, _| {}).unwrap();
    path
}

/// Rewrites a GGUF with edited metadata and tensors (name, ne, bytes).
fn rewrite(src: &Path, dst: &Path, edit: impl FnOnce(&mut Metadata, &mut Vec<(String, Vec<u64>, Vec<u8>)>)) {
    let file = GgufFile::open(src).unwrap();
    let mut md = file.metadata.clone();
    let ty = file.tensors[0].ty;
    let mut tensors: Vec<(String, Vec<u64>, Vec<u8>)> =
        file.tensors.iter().map(|t| (t.name.clone(), t.ne.clone(), file.data(t).to_vec())).collect();
    edit(&mut md, &mut tensors);
    let tensors: Vec<_> = tensors.into_iter().map(|(n, ne, b)| (n, ne, ty, b)).collect();
    std::fs::write(dst, write_to_vec(&md, &tensors).unwrap()).unwrap();
}

fn tokens(md: &mut Metadata, keep: usize) {
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
        let Some(MetaValue::Array(ty, items)) = md.get(key).cloned() else { panic!("no {key}") };
        md.set(key, MetaValue::Array(ty, items[..keep].to_vec()));
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"] {
        md.remove(key);
    }
}

/// Keeps only the first `rows` rows of the (tied) embedding.
fn embedding_rows(ts: &mut [(String, Vec<u64>, Vec<u8>)], rows: u64) {
    let e = ts.iter_mut().find(|t| t.0 == "token_embd.weight").unwrap();
    let row_bytes = e.2.len() as u64 / e.1[1];
    e.1[1] = rows;
    e.2.truncate((rows * row_bytes) as usize);
}

#[test]
fn vocabulary_that_does_not_fit_the_embedding_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tiny_gguf(tmp.path());
    let ckpt = read_checkpoint(&good, &PthHints::default()).unwrap();
    assert_eq!(ckpt.config.vocab_size, 6400);

    type Edit = fn(&mut Metadata, &mut Vec<(String, Vec<u64>, Vec<u8>)>);
    let cases: [(&str, Edit, &str); 6] = [
        ("no tokens", |md, _| tokens(md, 0), "tokenizer.ggml.tokens is empty"),
        ("no tokens and no embedding rows", |md, ts| {
            tokens(md, 0);
            embedding_rows(ts, 0);
        }, "tokenizer.ggml.tokens is empty"),
        ("vocab_size 0", |md, _| md.set("llama.vocab_size", MetaValue::U32(0)), "llama.vocab_size is 0"),
        ("vocab_size beyond the embedding", |md, _| md.set("llama.vocab_size", MetaValue::U32(6401)), "llama.vocab_size is 6401"),
        ("fewer tokens than embedding rows", |md, _| tokens(md, 6000), "6000 tokens but token_embd.weight has 6400 rows"),
        ("more tokens than embedding rows", |_, ts| embedding_rows(ts, 6000), "6400 tokens but token_embd.weight has 6000 rows"),
    ];
    for (i, (name, edit, needle)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("case{i}.gguf"));
        rewrite(&good, &path, edit);
        let err = match read_checkpoint(&path, &PthHints::default()) {
            Ok(c) => panic!("{name}: read as a model with vocab_size {}", c.config.vocab_size),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(&path.display().to_string()) && err.contains(needle), "{name}: {err}");
    }

    // The tokenizer alone (`mm tokenize --tokenizer x.gguf`) refuses an empty vocabulary too.
    let path = tmp.path().join("empty.gguf");
    rewrite(&good, &path, |md, _| tokens(md, 0));
    let file = GgufFile::open(&path).unwrap();
    let err = GgufVocab::from_metadata(&file.metadata, "empty.gguf").unwrap_err();
    assert!(format!("{err:#}").contains("empty.gguf: tokenizer.ggml.tokens is empty"), "{err:#}");
}
