//! Every reader × writer pair, dtype casts, and bad input, over the canonical checkpoint.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mm_converters::checkpoint::tensors_equal;
use mm_converters::naming::expected_tensors;
use mm_converters::pth::checkpoint::PthHints;
use mm_converters::{pth, read_checkpoint, write_checkpoint, Checkpoint, Format, MiniMindConfig, Provenance, TokenizerFiles};

fn tiny_config(moe: bool) -> MiniMindConfig {
    MiniMindConfig {
        vocab_size: 6400,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        use_moe: moe,
        ..MiniMindConfig::with_hidden(64, 2)
    }
}

/// Deterministic pseudo-random weights, so the test needs no model crate.
fn synthetic(cfg: &MiniMindConfig) -> Checkpoint {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let tensors = expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap())
        })
        .collect();
    Checkpoint::new(cfg.clone(), tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("synthetic", Path::new("-"))).unwrap()
}

/// `.pth` carries no tokenizer (upstream keeps it in `model/`), so tokenizers are compared
/// only when `with_tokenizer` says the path kept one.
fn assert_same(a: &Checkpoint, b: &Checkpoint, what: &str) {
    assert_same_tensors(a, b, what);
    assert!(a.tokenizer.tokenizer_json == b.tokenizer.tokenizer_json, "{what}: tokenizer.json differs");
    assert!(a.tokenizer.chat_template == b.tokenizer.chat_template, "{what}: chat template differs");
}

fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint, what: &str) {
    assert_eq!(a.config, b.config, "{what}: config");
    assert_eq!(a.tensors().len(), b.tensors().len(), "{what}: tensor count");
    for ((na, ta), (nb, tb)) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(na, nb, "{what}: order");
        assert!(tensors_equal(ta, tb).unwrap(), "{what}: `{na}` differs ({:?} vs {:?})", ta.dtype(), tb.dtype());
    }
}

fn out_path(dir: &Path, format: Format) -> PathBuf {
    match format {
        Format::Pth => dir.join("model.pth"),
        _ => dir.join(format.name()),
    }
}

fn writers_for(cfg: &MiniMindConfig) -> Vec<Format> {
    let mut v = vec![Format::Pth, Format::HfMiniMind];
    if cfg.use_moe {
        v.push(Format::HfQwen2Moe);
    } else {
        v.push(Format::HfLlama);
    }
    v
}

fn check(a: &Checkpoint, b: &Checkpoint, what: &str, through: Format) {
    if through == Format::Pth {
        assert_same_tensors(a, b, what)
    } else {
        assert_same(a, b, what)
    }
}

/// Writes `ckpt` with every writer, reads each back, and checks writer × reader pairs
/// chained through a second format as well.
fn round_trip_all(ckpt: &Checkpoint) {
    let tmp = tempfile::tempdir().unwrap();
    for first in writers_for(&ckpt.config) {
        let p1 = out_path(&tmp.path().join(format!("a-{}", first.name())), first);
        std::fs::create_dir_all(p1.parent().unwrap()).unwrap();
        write_checkpoint(ckpt, &p1, first).unwrap();
        let back = read_checkpoint(&p1, &PthHints::default()).unwrap();
        check(ckpt, &back, &format!("{:?}", first), first);
        for second in writers_for(&ckpt.config) {
            let p2 = out_path(&tmp.path().join(format!("b-{}-{}", first.name(), second.name())), second);
            std::fs::create_dir_all(p2.parent().unwrap()).unwrap();
            write_checkpoint(&back, &p2, second).unwrap();
            let again = read_checkpoint(&p2, &PthHints::default()).unwrap();
            let kept = if first == Format::Pth { Format::Pth } else { second };
            check(ckpt, &again, &format!("{:?} -> {:?}", first, second), kept);
        }
    }
}

#[test]
fn synthetic_round_trips_in_every_dtype() {
    for moe in [false, true] {
        let base = synthetic(&tiny_config(moe));
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            round_trip_all(&base.to_dtype(dtype).unwrap());
        }
    }
}

#[test]
fn lossless_casts_round_trip() {
    let f16 = synthetic(&tiny_config(false)).to_dtype(DType::F16).unwrap();
    let via_f32 = f16.to_dtype(DType::F32).unwrap().to_dtype(DType::F16).unwrap();
    let bf16 = f16.to_dtype(DType::BF16).unwrap();
    let via_f32_bf = bf16.to_dtype(DType::F32).unwrap().to_dtype(DType::BF16).unwrap();
    for ((n, a), (_, b)) in f16.tensors().iter().zip(via_f32.tensors()) {
        assert!(tensors_equal(a, b).unwrap(), "f16 -> f32 -> f16 changed `{n}`");
    }
    for ((n, a), (_, b)) in bf16.tensors().iter().zip(via_f32_bf.tensors()) {
        assert!(tensors_equal(a, b).unwrap(), "bf16 -> f32 -> bf16 changed `{n}`");
    }
}

#[test]
fn narrowing_rounds_to_nearest_even() {
    // 1 + 2^-11 lies exactly between two f16 values; ties go to the even mantissa (1.0).
    // 1 + 3·2^-11 lies between 1+2^-10 and 1+2^-9; the even one is 1 + 2^-9.
    let t = Tensor::new(&[1.0f32 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)], &Device::Cpu).unwrap();
    let h: Vec<half::f16> = t.to_dtype(DType::F16).unwrap().to_vec1().unwrap();
    assert_eq!(h[0].to_f32(), 1.0);
    assert_eq!(h[1].to_f32(), 1.0 + 2f32.powi(-9));
}

#[test]
fn sharded_hf_directory_round_trips() {
    let ckpt = synthetic(&tiny_config(false));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sharded");
    mm_converters::hf::write(&ckpt, &dir, mm_converters::hf::HfLayout::MiniMind, 300_000).unwrap();
    assert!(dir.join("model.safetensors.index.json").exists());
    let shards = std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("model-0")).count();
    assert!(shards >= 2, "expected several shards, got {shards}");
    assert_same(&ckpt, &read_checkpoint(&dir, &PthHints::default()).unwrap(), "sharded");
}

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    if dir.join("fixtures/minimind2/README.md").exists() {
        Some(dir)
    } else {
        assert!(std::env::var_os("MM_REQUIRE_SHARED").is_none(), "MM_REQUIRE_SHARED is set but {} is missing", dir.display());
        skip::skipped("fixture comparisons", "shared fixtures not found (set MM_SHARED)");
        None
    }
}

fn extract(shared: &Path, cfg: &str, into: &Path) -> PathBuf {
    let out = into.join(cfg);
    std::fs::create_dir_all(&out).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xJf")
        .arg(shared.join(format!("fixtures/minimind2/{cfg}/weights.tar.xz")))
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn fixture_config(shared: &Path, cfg: &str) -> MiniMindConfig {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join(format!("fixtures/minimind2/{cfg}/expected.json"))).unwrap(),
    )
    .unwrap();
    MiniMindConfig::from_json(&v["config_full"]).unwrap()
}

#[test]
fn fixture_readers_agree_and_round_trip() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for cfg in ["dense", "moe"] {
        let dir = extract(&shared, cfg, tmp.path());
        let hints = PthHints { config: Some(fixture_config(&shared, cfg)), ..Default::default() };
        let from_pth = read_checkpoint(&dir.join("model.pth"), &hints).unwrap();
        let from_hf = read_checkpoint(&dir.join("hf-minimind"), &hints).unwrap();
        assert!(from_pth.config.tie_word_embeddings);
        for ((n, a), (_, b)) in from_pth.tensors().iter().zip(from_hf.tensors()) {
            assert!(tensors_equal(a, b).unwrap(), "{cfg}: pth and hf-minimind differ at `{n}`");
        }
        if cfg == "dense" {
            let from_llama = read_checkpoint(&dir.join("hf-llama"), &hints).unwrap();
            for ((n, a), (_, b)) in from_pth.tensors().iter().zip(from_llama.tensors()) {
                assert!(tensors_equal(a, b).unwrap(), "pth and hf-llama differ at `{n}`");
            }
        }
        round_trip_all(&from_hf);
        for dtype in [DType::F32, DType::BF16] {
            round_trip_all(&from_hf.to_dtype(dtype).unwrap());
        }

        // mm's .pth holds what upstream's does: same keys, same order, same bits.
        let ours = tmp.path().join(format!("{cfg}-mm.pth"));
        write_checkpoint(&from_pth, &ours, Format::Pth).unwrap();
        let upstream = pth::read_pth(&dir.join("model.pth")).unwrap();
        let written = pth::read_pth(&ours).unwrap();
        assert_eq!(upstream.len(), if cfg == "dense" { 21 } else { 47 });
        assert_eq!(upstream.len(), written.len());
        for ((na, ta), (nb, tb)) in upstream.iter().zip(&written) {
            assert_eq!(na, nb);
            assert!(tensors_equal(ta, tb).unwrap(), "{cfg}: `{na}` differs from upstream's .pth");
        }
    }
}

#[test]
fn bare_upstream_pth_shape_is_inferred() {
    let Some(shared) = shared_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for cfg in ["dense", "moe"] {
        let dir = extract(&shared, cfg, tmp.path());
        let hints = PthHints { num_attention_heads: Some(4), ..Default::default() };
        let ckpt = read_checkpoint(&dir.join("model.pth"), &hints).unwrap();
        let want = fixture_config(&shared, cfg);
        assert_eq!(ckpt.config.num_key_value_heads, want.num_key_value_heads);
        assert_eq!(ckpt.config.intermediate_size, want.intermediate_size);
        assert_eq!(ckpt.config.use_moe, want.use_moe);
        assert_eq!(ckpt.config.n_routed_experts, want.n_routed_experts);
        assert!(ckpt.provenance.notes.iter().any(|n| n.contains("inferred")));
    }
}

// ---- bad input: clear errors, no panics, no output left behind ----

fn error_of(path: &Path) -> String {
    format!("{:#}", read_checkpoint(path, &PthHints::default()).unwrap_err())
}

#[test]
fn truncated_and_corrupt_pth_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.pth");
    write_checkpoint(&synthetic(&tiny_config(false)), &good, Format::Pth).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = tmp.path().join("bad.pth");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = error_of(&bad);
    assert!(err.contains("bad.pth"), "{err}");
    let mut flipped = bytes.clone();
    for i in (100..flipped.len()).step_by(997) {
        flipped[i] ^= 0x5a;
    }
    std::fs::write(&bad, &flipped).unwrap();
    assert!(error_of(&bad).contains("bad.pth"));
    std::fs::write(&bad, b"not a zip at all").unwrap();
    assert!(error_of(&bad).contains("bad.pth"));
}

#[test]
fn safetensors_with_overlapping_offsets_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("overlap");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), tiny_config(false).to_minimind_json("float32").to_string()).unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&[0u8; 12]);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    let err = error_of(&dir);
    assert!(err.contains("model.safetensors") && err.contains("invalid safetensors"), "{err}");
}

#[test]
fn pickle_naming_a_non_tensor_global_is_rejected() {
    // A torch-style zip whose data.pkl calls os.system: refused before anything runs.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("evil.pth");
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("evil/data.pkl", opts).unwrap();
    use std::io::Write;
    zip.write_all(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.").unwrap();
    zip.finish().unwrap();
    let err = error_of(&path);
    assert!(err.contains("evil.pth") && err.contains("os.system"), "{err}");
}

#[test]
fn config_with_heads_not_dividing_hidden_is_rejected_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_checkpoint(&synthetic(&tiny_config(false)), &src, Format::HfMiniMind).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["num_attention_heads"] = 7.into();
    std::fs::write(src.join("config.json"), cfg.to_string()).unwrap();
    let err = error_of(&src);
    assert!(err.contains("config.json") && err.contains("does not divide hidden_size"), "{err}");
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // A MoE model has no Llama layout: the writer refuses before creating anything.
    let moe = synthetic(&tiny_config(true));
    let target = tmp.path().join("llama-out");
    assert!(write_checkpoint(&moe, &target, Format::HfLlama).is_err());
    // A writer that fails midway (a u32 tensor torch cannot hold) leaves no file either.
    let bad = vec![("x".to_string(), Tensor::new(&[1u32, 2], &Device::Cpu).unwrap())];
    assert!(pth::write_pth(&tmp.path().join("x.pth"), &bad).is_err());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn mis_shaped_tensor_is_named() {
    let cfg = tiny_config(false);
    let mut tensors: Vec<(String, Tensor)> = synthetic(&cfg).tensors().to_vec();
    tensors[1].1 = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
    let err = format!("{:#}", Checkpoint::new(cfg, tensors, TokenizerFiles::default(), Provenance::new("t", Path::new("-"))).unwrap_err());
    assert!(err.contains("model.layers.0.self_attn.q_proj.weight") && err.contains("[3, 3]"), "{err}");
}

#[test]
fn qwen2_moe_layout_is_the_exact_transform_and_refuses_what_minimind_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let moe = synthetic(&tiny_config(true)).to_dtype(DType::F16).unwrap();
    let dir = tmp.path().join("qwen");
    write_checkpoint(&moe, &dir, Format::HfQwen2Moe).unwrap();
    let raw: std::collections::HashMap<String, Tensor> =
        mm_converters::safetensors_file::read_dir(&dir).unwrap().into_iter().collect();
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let down = f32s(&raw["model.layers.1.mlp.shared_expert.down_proj.weight"]);
    let orig = f32s(moe.get("model.layers.1.mlp.shared_experts.0.down_proj.weight").unwrap());
    assert!(down.iter().zip(&orig).all(|(a, b)| *a == 2.0 * b));
    assert!(f32s(&raw["model.layers.0.mlp.shared_expert_gate.weight"]).iter().all(|v| *v == 0.0));
    assert_eq!(raw["model.layers.0.self_attn.k_proj.bias"].dims(), &[32]);
    assert!(raw.contains_key("model.layers.0.mlp.experts.3.up_proj.weight"));
    assert!(!raw.keys().any(|k| k.contains("shared_experts")));
    let back = read_checkpoint(&dir, &PthHints::default()).unwrap();
    assert_eq!(back.provenance.format, "hf-qwen2-moe");
    assert_same(&moe, &back, "qwen2-moe");

    // A gated shared expert or a real attention bias has no MiniMind equivalent.
    for (name, what) in [
        ("model.layers.1.mlp.shared_expert_gate.weight", "gates its shared expert"),
        ("model.layers.0.self_attn.q_proj.bias", "no biases"),
    ] {
        let mut tensors: Vec<(String, Tensor)> = mm_converters::safetensors_file::read_dir(&dir).unwrap();
        for (n, t) in tensors.iter_mut() {
            if n == name {
                *t = (t.ones_like().unwrap() * 0.5).unwrap();
            }
        }
        let bad = tmp.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(dir.join(f), bad.join(f)).unwrap();
        }
        mm_converters::safetensors_file::write_file(&bad.join("model.safetensors"), &tensors).unwrap();
        let err = error_of(&bad);
        assert!(err.contains(name) && err.contains(what) && err.contains("not a MiniMind model"), "{err}");
    }
    // Dense models have no Qwen2-MoE form.
    assert!(write_checkpoint(&synthetic(&tiny_config(false)), &tmp.path().join("d"), Format::HfQwen2Moe).is_err());
}
