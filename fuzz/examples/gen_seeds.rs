//! Regenerates the committed seed corpora (fuzz/seeds/<target>/) and the fixed files the
//! harnesses put beside an input (fuzz/fixtures/), with mm's own writers on tiny models, plus
//! text seeds cut from the repo and from the shared fixtures.
//!
//!     cd fuzz && MM_SHARED=/path/to/shared cargo run --example gen_seeds
//!
//! Without MM_SHARED (default `../../shared`), the seeds that come from shared/ are left as they are.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use mm::converters::config::MiniMindConfig;
use mm::converters::gguf::checkpoint::{self as gguf_ckpt, GgufOptions, SourcePrecision};
use mm::converters::gguf::mixture::QuantScheme;
use mm::converters::lora::{Lora, LoraAdapter};
use mm::converters::{hf, naming, pth, Checkpoint, Provenance, TokenizerFiles};
use mm::export::mnn::{self, MnnExportOptions};
use serde_json::{json, Value};

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    let fixtures = root.join("fixtures");
    std::fs::create_dir_all(&fixtures)?;
    let shared = std::env::var_os("MM_SHARED").map(PathBuf::from).unwrap_or_else(|| root.join("../../shared"));
    let tmp = std::env::temp_dir().join(format!("mm-gen-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;

    let tok = tiny_tokenizer()?;
    put(&seeds.join("tokenizer_json"), "tiny.json", tok.tokenizer_json.as_ref().unwrap().as_bytes())?;
    put(&fixtures, "tokenizer_config.json", &serde_json::to_vec_pretty(tok.tokenizer_config.as_ref().unwrap())?)?;

    // Small model: every tensor fits the 1024-byte storages of the pickle harness.
    let small = MiniMindConfig {
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 32,
        intermediate_size: 16,
        max_position_embeddings: 64,
        ..MiniMindConfig::default()
    };
    let small_ckpt = checkpoint(&small, DType::F32, TokenizerFiles { tokenizer_json: None, tokenizer_config: None, chat_template: None })?;
    let lora = tiny_lora()?;

    // pth: whole files. pickle: the data.pkl inside them.
    let pth_dir = seeds.join("pth");
    std::fs::create_dir_all(&pth_dir)?;
    pth::write_pth(&pth_dir.join("small-f32.pth"), &small_ckpt.state_dict())?;
    pth::write_pth(&pth_dir.join("small-f16.pth"), &small_ckpt.to_dtype(DType::F16)?.state_dict())?;
    lora.write(&pth_dir.join("lora.pth"))?;
    for (file, stem) in [("small-f32.pth", "small-f32"), ("small-f16.pth", "small-f16"), ("lora.pth", "lora")] {
        let pkl = zip_entry(&pth_dir.join(file), &format!("{stem}/data.pkl"))?;
        put(&seeds.join("pickle"), &format!("{stem}.pkl"), &pkl)?;
    }

    // safetensors + config: the small model as an HF directory.
    for (layout, name) in [(hf::HfLayout::MiniMind, "minimind"), (hf::HfLayout::Llama, "llama")] {
        let dir = tmp.join(format!("hf-{name}"));
        hf::write(&small_ckpt, &dir, layout, hf::DEFAULT_MAX_SHARD_BYTES)?;
        put(&seeds.join("config"), &format!("{name}.json"), &std::fs::read(dir.join("config.json"))?)?;
        if name == "minimind" {
            let st = std::fs::read(dir.join("model.safetensors"))?;
            put(&seeds.join("safetensors"), "small-f32.safetensors", &st)?;
            put(&fixtures, "small.safetensors", &st)?;
            put(&fixtures, "small-config.json", &std::fs::read(dir.join("config.json"))?)?;
        }
    }
    let dir = tmp.join("hf-f16");
    hf::write(&small_ckpt.to_dtype(DType::BF16)?, &dir, hf::HfLayout::MiniMind, 600)?;
    put(&seeds.join("safetensors"), "small-bf16-shard.safetensors", &std::fs::read(dir.join("model-00001-of-00004.safetensors"))?)?;
    let moe = MiniMindConfig { use_moe: true, n_routed_experts: 2, num_experts_per_tok: 1, ..small.clone() };
    put(&seeds.join("config"), "moe-minimind.json", &serde_json::to_vec_pretty(&moe.to_minimind_json("float32"))?)?;
    put(&seeds.join("config"), "moe-qwen2.json", &serde_json::to_vec_pretty(&moe.to_qwen2_moe_json("bfloat16")?)?)?;
    let mut yarn = small.clone();
    yarn.set_inference_rope_scaling(true);
    put(&seeds.join("config"), "yarn.json", &serde_json::to_vec_pretty(&yarn.to_minimind_json("float16"))?)?;

    // GGUF, MNN: a model wide enough for 32-element quant blocks, with the tiny tokenizer.
    let tiny = MiniMindConfig {
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 300,
        intermediate_size: 64,
        max_position_embeddings: 128,
        ..MiniMindConfig::default()
    };
    let tiny_ckpt = checkpoint(&tiny, DType::F16, tok.clone())?;
    let gguf_dir = seeds.join("gguf");
    std::fs::create_dir_all(&gguf_dir)?;
    for (scheme, name) in [(QuantScheme::F16, "f16"), (QuantScheme::Q8_0, "q8_0"), (QuantScheme::Q4_0, "q4_0")] {
        let path = gguf_dir.join(format!("tiny-{name}.gguf"));
        let options = GgufOptions { scheme, source_precision: SourcePrecision::Exact, name: "tiny".into() };
        gguf_ckpt::write(&tiny_ckpt, &path, &options, &|_, _, _| {})?;
    }
    let tiny_moe = MiniMindConfig { use_moe: true, n_routed_experts: 2, num_experts_per_tok: 1, ..tiny.clone() };
    let moe_ckpt = checkpoint(&tiny_moe, DType::F16, tok.clone())?;
    let options = GgufOptions { scheme: QuantScheme::F16, source_precision: SourcePrecision::Exact, name: "tiny-moe".into() };
    gguf_ckpt::write(&moe_ckpt, &gguf_dir.join("tiny-moe-f16.gguf"), &options, &|_, _, _| {})?;
    std::fs::copy(gguf_dir.join("tiny-f16.gguf"), fixtures.join("tiny.gguf"))?;

    let mnn_dir = tmp.join("mnn");
    mnn::export_dir(&tiny_ckpt, &mnn_dir, &MnnExportOptions::default(), &|_, _, _| {})?;
    let net = std::fs::read(mnn_dir.join("llm.mnn"))?;
    put(&seeds.join("mnn_net"), "tiny.mnn", &net)?;
    put(&fixtures, "llm.mnn", &net)?;
    put(&fixtures, "mnn-config.json", &std::fs::read(mnn_dir.join("config.json"))?)?;
    put(&seeds.join("mtok"), "tiny.mtok", &std::fs::read(mnn_dir.join("tokenizer.mtok"))?)?;

    // Text seeds from the repo.
    let repo = root.join("..");
    for name in ["minimind2.gotmpl", "minimind3.gotmpl"] {
        put(&seeds.join("go_template"), name, &std::fs::read(repo.join("templates/ollama").join(name))?)?;
    }
    put(&seeds.join("chat_template"), "minimind2.jinja", tok.chat_template.as_ref().unwrap().as_bytes())?;
    for (name, sample) in [("pretrain", 6), ("sft", 4), ("dpo", 2), ("rlaif", 4)] {
        let text = std::fs::read_to_string(repo.join(format!("dataset/samples/{name}_sample.jsonl")))?;
        let lines: Vec<&str> = text.lines().take(sample).collect();
        put(&seeds.join("jsonl"), &format!("{name}.jsonl"), format!("{}\n", lines.join("\n")).as_bytes())?;
    }
    let mut gotmpl = std::fs::read_to_string(repo.join("templates/ollama/minimind2.gotmpl"))?;
    if gotmpl.ends_with('\n') {
        gotmpl.pop();
    }
    let modelfile = format!(
        "# tiny\nFROM ./model.gguf\nTEMPLATE \"\"\"{gotmpl}\"\"\"\nPARAMETER temperature 0.7\nPARAMETER stop \"<|im_end|>\"\nPARAMETER num_ctx 512\nSYSTEM \"\"\"You are helpful.\"\"\"\nLICENSE apache-2.0\n"
    );
    put(&seeds.join("modelfile"), "tiny.Modelfile", modelfile.as_bytes())?;
    put(
        &seeds.join("modelfile"),
        "params.Modelfile",
        b"FROM model.gguf\nPARAMETER top_k 40\nPARAMETER top_p 0.9\nPARAMETER repeat_penalty 1.1\nPARAMETER seed -1\nPARAMETER mirostat true\nMESSAGE user hi\nMESSAGE assistant \"hello\"\nADAPTER ./lora.gguf\nREQUIRES 0.5.0\n",
    )?;

    // Text seeds from shared/ (skipped when it is not there).
    if shared.is_dir() {
        let mm3: Value = serde_json::from_str(&std::fs::read_to_string(shared.join("reference/minimind3/tokenizer_config.json"))?)?;
        if let Some(t) = mm3.get("chat_template").and_then(Value::as_str) {
            put(&seeds.join("chat_template"), "minimind3.jinja", t.as_bytes())?;
        }
        let battery: Value = serde_json::from_str(&std::fs::read_to_string(shared.join("reference/jinja_compat_battery.json"))?)?;
        for (i, case) in battery["cases"].as_array().context("battery cases")?.iter().enumerate() {
            if let Some(t) = case.get("template").and_then(Value::as_str) {
                put(&seeds.join("chat_template"), &format!("battery-{i:02}.jinja"), t.as_bytes())?;
            }
        }
        put(&seeds.join("go_template"), "reference-minimind2.gotmpl", &std::fs::read(shared.join("reference/ollama/minimind2.gotmpl"))?)?;
        let reference = std::fs::read_to_string(shared.join("reference/ollama/minimind2.Modelfile"))?;
        put(&seeds.join("modelfile"), "reference.Modelfile", reference.replace("./MiniMind2-Q4_K_M.gguf", "./model.gguf").as_bytes())?;
    }
    std::fs::remove_dir_all(&tmp)?;
    Ok(())
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes).with_context(|| format!("writing {}/{name}", dir.display()))
}

/// Deterministic small values (xorshift), so seeds are stable across runs.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}

fn checkpoint(cfg: &MiniMindConfig, dtype: DType, tokenizer: TokenizerFiles) -> Result<Checkpoint> {
    let tensors = naming::expected_tensors(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n = shape.iter().product();
            let t = Tensor::from_vec(values(n, i as u64 + 1), shape, &Device::Cpu)?.to_dtype(dtype)?;
            Ok((name, t))
        })
        .collect::<Result<Vec<_>>>()?;
    Checkpoint::new(cfg.clone(), tensors, tokenizer, Provenance::new("seed", Path::new("seed")))
}

fn tiny_lora() -> Result<Lora> {
    let adapters = ["q_proj", "o_proj"]
        .iter()
        .enumerate()
        .map(|(i, proj)| {
            Ok(LoraAdapter {
                module: format!("model.layers.0.self_attn.{proj}"),
                a: Tensor::from_vec(values(16, 100 + i as u64), (2, 8), &Device::Cpu)?,
                b: Tensor::from_vec(values(16, 200 + i as u64), (8, 2), &Device::Cpu)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Lora { rank: 2, adapters })
}

/// The built-in MiniMind2 tokenizer cut to its first 300 ids (3 specials, 256 byte tokens,
/// the first merges), with its tokenizer_config.json and chat template.
fn tiny_tokenizer() -> Result<TokenizerFiles> {
    let full = TokenizerFiles::builtin_minimind2();
    let mut tj: Value = serde_json::from_str(full.tokenizer_json.as_deref().unwrap())?;
    let vocab = tj["model"]["vocab"].as_object().context("vocab")?.clone();
    let kept: serde_json::Map<String, Value> =
        vocab.into_iter().filter(|(_, id)| id.as_u64().is_some_and(|id| id < 300)).collect();
    let merges: Vec<Value> = tj["model"]["merges"]
        .as_array()
        .context("merges")?
        .iter()
        .filter(|m| {
            let (a, b) = match m {
                Value::Array(p) => (p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")),
                Value::String(s) => s.split_once(' ').unwrap_or(("", "")),
                _ => ("", ""),
            };
            kept.contains_key(a) && kept.contains_key(b) && kept.contains_key(&format!("{a}{b}"))
        })
        .cloned()
        .collect();
    tj["model"]["vocab"] = Value::Object(kept);
    tj["model"]["merges"] = json!(merges);
    Ok(TokenizerFiles { tokenizer_json: Some(serde_json::to_string(&tj)?), ..full })
}

fn zip_entry(path: &Path, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path)?)?;
    let mut entry = zip.by_name(name)?;
    let mut out = Vec::new();
    entry.read_to_end(&mut out)?;
    Ok(out)
}
