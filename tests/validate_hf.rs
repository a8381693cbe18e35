//! `mm validate hf`: clean exports pass with no finding; a seeded-defect suite of broken HF
//! directories, each a different defect, each caught with its code, location and message;
//! the CLI's exit code and `--json`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use mm::converters::naming::expected_tensors;
use mm::converters::pth::checkpoint::PthHints;
use mm::converters::{read_checkpoint, Checkpoint, MiniMindConfig, Provenance, TokenizerFiles};
use mm::export::hf::{export_hf, HfArch, HfExportOptions};
use mm::export::validate_hf::{describe, validate_hf_dir, HfReport, HfValidateOptions, Target};

/// What `mm validate` renders with: mm's template engine on the directory's files.
fn probe(dir: &Path) -> anyhow::Result<String> {
    let files = mm::converters::hf::read_tokenizer_files(dir)?;
    let (tokenizer, template) = mm::loaded::tokenizer_and_template(&files)?;
    let template = template.ok_or_else(|| anyhow::anyhow!("no chat template"))?;
    let text = template.render(&mm::chat::RenderRequest::new(json!([{"role": "user", "content": "hi"}])).with_generation_prompt(true))?;
    tokenizer.encode(&text, false)?;
    Ok(text)
}

fn validate(dir: &Path, target: Target) -> HfReport {
    validate_hf_dir(dir, &HfValidateOptions { target, template_probe: Some(&probe) })
}

fn export(ckpt: &Checkpoint, dir: &Path, arch: HfArch, max_shard_bytes: usize) {
    let opts = HfExportOptions { arch, dtype: None, max_shard_bytes, template_probe: None };
    let summary = export_hf(ckpt, dir, &opts).unwrap();
    assert!(summary.report.ok(), "{}", describe(&summary.report));
}

/// A model of any shape with zero weights (validation never looks at values).
fn zeros_model(cfg: &MiniMindConfig) -> Checkpoint {
    let tensors = expected_tensors(cfg)
        .into_iter()
        .map(|(n, s)| (n, Tensor::zeros(s, DType::F16, &Device::Cpu).unwrap()))
        .collect();
    Checkpoint::new(cfg.clone(), tensors, TokenizerFiles::builtin_minimind2(), Provenance::new("zeros", Path::new("-"))).unwrap()
}

// ---- raw safetensors editing (by hand, so any dtype or header can be written) ----

struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_st(path: &Path) -> (Option<Value>, Vec<RawTensor>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    let mut meta = None;
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            meta = Some(v.clone());
            continue;
        }
        let off: Vec<usize> = v["data_offsets"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        out.push(RawTensor {
            name: name.clone(),
            dtype: v["dtype"].as_str().unwrap().to_string(),
            shape: v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect(),
            data: data[off[0]..off[1]].to_vec(),
        });
    }
    (meta, out)
}

fn write_st(path: &Path, meta: Option<Value>, tensors: &[RawTensor]) {
    let mut header = serde_json::Map::new();
    if let Some(m) = meta {
        header.insert("__metadata__".into(), m);
    }
    let mut offset = 0;
    for t in tensors {
        header.insert(t.name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}));
        offset += t.data.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    for t in tensors {
        bytes.extend(&t.data);
    }
    std::fs::write(path, bytes).unwrap();
}

fn edit_st(path: &Path, f: impl FnOnce(&mut Option<Value>, &mut Vec<RawTensor>)) {
    let (mut meta, mut tensors) = read_st(path);
    f(&mut meta, &mut tensors);
    write_st(path, meta, &tensors);
}

fn edit_json(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v = common::read_json(path);
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

struct Bases {
    _tmp: tempfile::TempDir,
    dense: PathBuf,
    sharded: PathBuf,
    moe: PathBuf,
    hd30: PathBuf,
    hd80: PathBuf,
}

fn bases(shared: &Path) -> Bases {
    let tmp = tempfile::tempdir().unwrap();
    let dense_src = read_checkpoint(&common::weights_dir(shared, "dense").join("hf-minimind"), &PthHints::default()).unwrap();
    let moe_src = read_checkpoint(&common::weights_dir(shared, "moe").join("hf-minimind"), &PthHints::default()).unwrap();
    let b = Bases {
        dense: tmp.path().join("dense"),
        sharded: tmp.path().join("sharded"),
        moe: tmp.path().join("moe"),
        hd30: tmp.path().join("hd30"),
        hd80: tmp.path().join("hd80"),
        _tmp: tmp,
    };
    export(&dense_src, &b.dense, HfArch::Llama, 5_000_000_000);
    export(&dense_src, &b.sharded, HfArch::Llama, 2_000_000);
    export(&moe_src, &b.moe, HfArch::Qwen2Moe, 5_000_000_000);
    let shape = |hidden, heads| MiniMindConfig { num_attention_heads: heads, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(hidden, 1) };
    let hd30 = zeros_model(&shape(120, 4));
    let opts = HfExportOptions { arch: HfArch::Llama, dtype: None, max_shard_bytes: 5_000_000_000, template_probe: None };
    export_hf(&hd30, &b.hd30, &opts).unwrap(); // fails validation by design
    export(&zeros_model(&shape(320, 4)), &b.hd80, HfArch::Llama, 5_000_000_000);
    b
}

#[derive(Clone, Copy)]
enum Base {
    Dense,
    Sharded,
    Moe,
    Hd30,
}

struct Case {
    name: &'static str,
    base: Base,
    target: Target,
    mutate: fn(&Path),
    /// error code, a piece of its location, a piece of its message
    expect: (&'static str, &'static str, &'static str),
}

/// The shard the index puts `name` in, and another shard.
fn shard_of_and_other(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let index = common::read_json(&dir.join("model.safetensors.index.json"));
    let home = index["weight_map"][name].as_str().unwrap().to_string();
    let other = index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).find(|f| *f != home).unwrap().to_string();
    (dir.join(home), dir.join(other))
}

fn shard2(dir: &Path) -> PathBuf {
    let mut shards: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    assert!(shards.len() >= 2, "{shards:?}");
    shards[1].clone()
}

fn cases() -> Vec<Case> {
    use Base::*;
    let v = Target::Vllm;
    vec![
        Case { name: "missing config.json", base: Dense, target: v, mutate: |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            expect: ("config.missing", "config.json", "missing") },
        Case { name: "config.json is not JSON", base: Dense, target: v, mutate: |d| std::fs::write(d.join("config.json"), "{\"architectures\": [").unwrap(),
            expect: ("config.invalid_json", "config.json", "invalid JSON") },
        Case { name: "unknown architecture", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["architectures"] = json!(["TinyStoriesForCausalLM"])),
            expect: ("arch.unknown", "config.json: architectures", "TinyStoriesForCausalLM") },
        Case { name: "MiniMind architecture for vLLM", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["architectures"] = json!(["MiniMindForCausalLM"])),
            expect: ("arch.unknown", "config.json: architectures", "--arch llama") },
        Case { name: "model_type does not match the architecture", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["model_type"] = json!("qwen2")),
            expect: ("config.model_type", "config.json: model_type", "does not match") },
        Case { name: "int where transformers 5 wants a float", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["rms_norm_eps"] = json!(0)),
            expect: ("config.field_type", "config.json: rms_norm_eps", "strict") },
        Case { name: "missing vocab_size", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| { c.as_object_mut().unwrap().remove("vocab_size"); }),
            expect: ("config.missing_field", "config.json: vocab_size", "missing") },
        Case { name: "vocab_size below the tokenizer's ids", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["vocab_size"] = json!(6000)),
            expect: ("vocab.too_small", "config.json: vocab_size", "ids up to 6399") },
        Case { name: "missing tensor", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, t| t.retain(|t| t.name != "model.layers.1.mlp.up_proj.weight")),
            expect: ("tensor.missing", "model.layers.1.mlp.up_proj.weight", "[704, 256]") },
        Case { name: "extra tensor", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, t| t.push(RawTensor { name: "model.layers.0.mlp.extra.weight".into(), dtype: "F16".into(), shape: vec![4], data: vec![0; 8] })),
            expect: ("tensor.extra", "model.layers.0.mlp.extra.weight", "unknown names") },
        Case { name: "mis-shaped tensor", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, ts| {
                let t = ts.iter_mut().find(|t| t.name == "model.layers.0.self_attn.k_proj.weight").unwrap();
                t.shape = vec![256, 128];
            }),
            expect: ("tensor.shape", "model.layers.0.self_attn.k_proj.weight", "[128, 256]") },
        Case { name: "wrong dtype", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, ts| {
                ts.iter_mut().find(|t| t.name == "model.norm.weight").unwrap().dtype = "I16".into();
            }),
            expect: ("tensor.dtype", "model.norm.weight", "I16") },
        Case { name: "no format metadata", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |m, _| *m = None),
            expect: ("safetensors.metadata", "model.safetensors: __metadata__", "transformers 4.x") },
        Case { name: "truncated safetensors", base: Dense, target: v, mutate: |d| {
                let p = d.join("model.safetensors");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
            },
            expect: ("safetensors.invalid", "model.safetensors", "invalid safetensors") },
        Case { name: "index points at a missing shard", base: Sharded, target: v, mutate: |d| std::fs::remove_file(shard2(d)).unwrap(),
            expect: ("index.missing_shard", "model-00002-of-", "not in the directory") },
        Case { name: "tensor missing from the index, for transformers", base: Sharded, target: Target::Transformers, mutate: |d| edit_json(&d.join("model.safetensors.index.json"), |i| {
                i["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
            }),
            expect: ("index.unindexed_tensor", "model.norm.weight", "transformers 4.x loads only the tensors the index lists") },
        Case { name: "second copy of a tensor, with other values, in another shard", base: Sharded, target: v, mutate: |d| {
                let name = "model.norm.weight";
                let (home, other) = shard_of_and_other(d, name);
                let (_, ts) = read_st(&home);
                let mut copy = ts.into_iter().find(|t| t.name == name).unwrap();
                copy.data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                edit_st(&other, |_, ts| ts.push(copy));
            },
            expect: ("index.duplicate", "model.norm.weight", "whichever copy is read last") },
        Case { name: "tied lm_head with other values than the embedding", base: Dense, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, ts| {
                let e = ts.iter().find(|t| t.name == "model.embed_tokens.weight").unwrap();
                let mut data = e.data.clone();
                data[0] ^= 0x40;
                let head = RawTensor { name: "lm_head.weight".into(), dtype: e.dtype.clone(), shape: e.shape.clone(), data };
                ts.push(head);
            }),
            expect: ("lm_head.tied_differs", "lm_head.weight", "the same directory gives different models") },
        Case { name: "max_position_embeddings 0", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["max_position_embeddings"] = json!(0)),
            expect: ("config.value", "config.json: max_position_embeddings", "no position fits") },
        Case { name: "negative rms_norm_eps", base: Dense, target: Target::Transformers, mutate: |d| edit_json(&d.join("config.json"), |c| c["rms_norm_eps"] = json!(-1e-5)),
            expect: ("config.value", "config.json: rms_norm_eps", "NaN") },
        Case { name: "zero rms_norm_eps on a MiniMind config", base: Dense, target: Target::Transformers, mutate: |d| edit_json(&d.join("config.json"), |c| {
                c["architectures"] = json!(["MiniMindForCausalLM"]);
                c["model_type"] = json!("minimind");
                c["rms_norm_eps"] = json!(0);
                c["auto_map"] = json!({"AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"});
                std::fs::write(d.join("model_minimind.py"), "").unwrap();
            }),
            expect: ("config.value", "config.json: rms_norm_eps", "is 0") },
        Case { name: "unknown architecture and model_type, for transformers", base: Dense, target: Target::Transformers, mutate: |d| edit_json(&d.join("config.json"), |c| {
                c["architectures"] = json!(["TinyStoriesForCausalLM"]);
                c["model_type"] = json!("tinystories");
            }),
            expect: ("arch.unknown", "config.json: architectures", "model_type `tinystories` is not one") },
        Case { name: "index names a tensor its shard lacks", base: Sharded, target: v, mutate: |d| edit_json(&d.join("model.safetensors.index.json"), |i| {
                let first = i["weight_map"]["model.embed_tokens.weight"].clone();
                i["weight_map"]["model.layers.0.mlp.ghost.weight"] = first;
            }),
            expect: ("index.tensor_not_in_shard", "model.layers.0.mlp.ghost.weight", "no such tensor") },
        Case { name: "no tokenizer.json", base: Dense, target: v, mutate: |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
            expect: ("tokenizer.missing", "tokenizer.json", "missing") },
        Case { name: "no chat template", base: Dense, target: v, mutate: |d| edit_json(&d.join("tokenizer_config.json"), |t| { t.as_object_mut().unwrap().remove("chat_template"); }),
            expect: ("chat_template.missing", "tokenizer_config.json", "--chat-template") },
        Case { name: "chat template that does not render", base: Dense, target: v, mutate: |d| edit_json(&d.join("tokenizer_config.json"), |t| t["chat_template"] = json!("{% for m in messages %}{{ m.content }")),
            expect: ("chat_template.render", "tokenizer_config.json", "does not render") },
        Case { name: "eos token not in the vocabulary", base: Dense, target: v, mutate: |d| edit_json(&d.join("tokenizer_config.json"), |t| t["eos_token"] = json!("<|eot|>")),
            expect: ("special.not_in_vocab", "tokenizer_config.json: eos_token", "<|eot|>") },
        Case { name: "generation_config eos id not in the vocabulary", base: Dense, target: v, mutate: |d| edit_json(&d.join("generation_config.json"), |g| g["eos_token_id"] = json!(7000)),
            expect: ("generation_config.eos", "generation_config.json: eos_token_id", "7000") },
        Case { name: "turn end is not a stop token", base: Dense, target: v, mutate: |d| {
                edit_json(&d.join("tokenizer_config.json"), |t| t["eos_token"] = json!("<|endoftext|>"));
                edit_json(&d.join("generation_config.json"), |g| g["eos_token_id"] = json!(0));
            },
            expect: ("special.turn_end_not_eos", "tokenizer_config.json: eos_token", "would not stop") },
        Case { name: "head_dim vLLM cannot run", base: Hd30, target: v, mutate: |_| {},
            expect: ("head_dim.unsupported", "config.json: head_dim", "head_dim 30") },
        Case { name: "auto_map names absent remote code", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| {
                c["auto_map"] = json!({"AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM"});
            }),
            expect: ("remote_code.missing_file", "config.json: auto_map", "modeling_minimind.py") },
        Case { name: "untied lm_head missing", base: Dense, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| c["tie_word_embeddings"] = json!(false)),
            expect: ("lm_head.missing", "lm_head.weight", "tie_word_embeddings is false") },
        Case { name: "transformers-5-only tokenizer class", base: Dense, target: Target::Transformers, mutate: |d| edit_json(&d.join("tokenizer_config.json"), |t| t["tokenizer_class"] = json!("TokenizersBackend")),
            expect: ("tokenizer.class", "tokenizer_config.json: tokenizer_class", "4.x") },
        Case { name: "list-valued extra_special_tokens", base: Dense, target: Target::Transformers, mutate: |d| edit_json(&d.join("tokenizer_config.json"), |t| t["extra_special_tokens"] = json!([])),
            expect: ("tokenizer.extra_special_tokens", "tokenizer_config.json: extra_special_tokens", "'keys'") },
        Case { name: "MoE without its shared-expert gate", base: Moe, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, t| t.retain(|t| t.name != "model.layers.1.mlp.shared_expert_gate.weight")),
            expect: ("tensor.missing", "model.layers.1.mlp.shared_expert_gate.weight", "[1, 256]") },
        Case { name: "MoE config without shared_expert_intermediate_size", base: Moe, target: v, mutate: |d| edit_json(&d.join("config.json"), |c| { c.as_object_mut().unwrap().remove("shared_expert_intermediate_size"); }),
            expect: ("config.missing_field", "config.json: shared_expert_intermediate_size", "5632") },
        Case { name: "MoE without q/k/v biases", base: Moe, target: v, mutate: |d| edit_st(&d.join("model.safetensors"), |_, t| t.retain(|t| !t.name.ends_with("v_proj.bias"))),
            expect: ("tensor.missing", "model.layers.0.self_attn.v_proj.bias", "[128]") },
    ]
}

#[test]
fn clean_exports_pass_with_no_findings() {
    let Some(shared) = common::shared_or_skip("clean_exports_pass_with_no_findings") else { return };
    let b = bases(&shared);
    for dir in [&b.dense, &b.sharded, &b.moe] {
        for target in [Target::Vllm, Target::Transformers] {
            let r = validate(dir, target);
            assert!(r.errors.is_empty() && r.warnings.is_empty(), "{}", describe(&r));
            assert!(r.rendered_sample.as_deref().is_some_and(|s| s.ends_with("<|im_start|>assistant\n")));
        }
        let r = validate(dir, Target::Vllm);
        let parsers = r.parsers.as_ref().unwrap();
        // The MiniMind2 tokenizer splits <think>: no reasoning parser; its template renders <tool_call>.
        assert!(parsers.reasoning.is_empty() && parsers.tool_call == ["hermes"], "{parsers:?}");
        assert!(r.serve_command.as_deref().unwrap().contains("--tool-call-parser hermes"));
    }
}

#[test]
fn seeded_defects_are_each_caught_with_the_right_message() {
    let Some(shared) = common::shared_or_skip("seeded_defects_are_each_caught") else { return };
    let b = bases(&shared);
    let tmp = tempfile::tempdir().unwrap();
    let all = cases();
    assert!(all.len() >= 15);
    let mut codes = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for (i, case) in all.iter().enumerate() {
        let base = match case.base {
            Base::Dense => &b.dense,
            Base::Sharded => &b.sharded,
            Base::Moe => &b.moe,
            Base::Hd30 => &b.hd30,
        };
        let dir = tmp.path().join(format!("case{i}"));
        copy_dir(base, &dir);
        (case.mutate)(&dir);
        let r = validate(&dir, case.target);
        if std::env::var_os("MM_SHOW_REPORTS").is_some() {
            eprintln!("== {}\n{}\n", case.name, describe(&r));
        }
        let (code, loc, msg) = case.expect;
        let hit = r.errors.iter().any(|f| f.code == code && f.location.contains(loc) && f.message.contains(msg));
        if !hit {
            failures.push(format!("{}: expected error {code} at `{loc}` saying `{msg}`, got:\n{}", case.name, describe(&r)));
        } else if r.errors.len() > 2 {
            // One defect, one report: no cascade of follow-on errors.
            failures.push(format!("{}: {} errors for one defect:\n{}", case.name, r.errors.len(), describe(&r)));
        }
        codes.insert((code, loc, msg));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(codes.len(), all.len(), "each case should be a different defect");
}

#[test]
fn warnings_are_listed_separately_and_do_not_fail() {
    let Some(shared) = common::shared_or_skip("warnings_are_listed_separately") else { return };
    let b = bases(&shared);
    let tmp = tempfile::tempdir().unwrap();
    type WarningCase<'a> = (&'a str, &'a PathBuf, fn(&Path), &'a str);
    let t = Target::Transformers;
    let mut cases: Vec<(WarningCase, Target)> = vec![
        // transformers loads these (vLLM does not: errors there, see `cases()`).
        (("extra tensor, for transformers", &b.dense, |d| edit_st(&d.join("model.safetensors"), |_, t| t.push(RawTensor { name: "model.layers.0.mlp.extra.weight".into(), dtype: "F16".into(), shape: vec![4], data: vec![0; 8] })), "tensor.extra"), t),
        (("unknown architecture with a transformers model_type", &b.dense, |d| edit_json(&d.join("config.json"), |c| c["architectures"] = json!(["TinyStoriesForCausalLM"])), "arch.unknown"), t),
        // Every loader reads all tensors of the indexed shards.
        (("tensor stored in another shard than indexed", &b.sharded, |d| {
            let name = "model.norm.weight";
            let (home, other) = shard_of_and_other(d, name);
            let mut moved = None;
            edit_st(&home, |_, ts| {
                let i = ts.iter().position(|t| t.name == name).unwrap();
                moved = Some(ts.remove(i));
            });
            edit_st(&other, |_, ts| ts.push(moved.unwrap()));
        }, "index.wrong_shard"), t),
        (("tensor missing from the index, for vLLM", &b.sharded, |d| edit_json(&d.join("model.safetensors.index.json"), |i| {
            i["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
        }), "index.unindexed_tensor"), Target::Vllm),
    ];
    let vllm_cases: Vec<WarningCase> = vec![
        ("head_dim 80", &b.hd80, |_| {}, "head_dim.backend"),
        ("index total_size off", &b.sharded, |d| edit_json(&d.join("model.safetensors.index.json"), |i| i["metadata"]["total_size"] = json!(1)), "index.total_size"),
        ("tied lm_head written anyway", &b.dense, |d| edit_st(&d.join("model.safetensors"), |_, ts| {
            let e = ts.iter().find(|t| t.name == "model.embed_tokens.weight").unwrap();
            let copy = RawTensor { name: "lm_head.weight".into(), dtype: e.dtype.clone(), shape: e.shape.clone(), data: e.data.clone() };
            ts.push(copy);
        }), "lm_head.tied_present"),
        ("no generation_config.json", &b.dense, |d| std::fs::remove_file(d.join("generation_config.json")).unwrap(), "generation_config.missing"),
        ("transformers-5 tokenizer class, for vLLM", &b.dense, |d| edit_json(&d.join("tokenizer_config.json"), |t| t["tokenizer_class"] = json!("TokenizersBackend")), "tokenizer.class"),
        ("auto_map with its code present", &b.dense, |d| {
            edit_json(&d.join("config.json"), |c| c["auto_map"] = json!({"AutoConfig": "configuration_x.XConfig"}));
            std::fs::write(d.join("configuration_x.py"), "").unwrap();
        }, "remote_code.auto_map"),
    ];
    cases.extend(vllm_cases.into_iter().map(|c| (c, Target::Vllm)));
    cases.push((cases[2].0, Target::Vllm));
    for (i, ((name, base, mutate, code), target)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("w{i}"));
        copy_dir(base, &dir);
        mutate(&dir);
        let r = validate(&dir, target);
        assert!(r.ok(), "{name}: {}", describe(&r));
        assert!(r.warning(code).is_some(), "{name}: expected warning {code}:\n{}", describe(&r));
    }
}

#[test]
fn cli_exit_code_and_json() {
    let Some(shared) = common::shared_or_skip("cli_exit_code_and_json") else { return };
    let b = bases(&shared);
    let mm = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap();
    let out = mm(&["validate", "hf", b.moe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Qwen2MoeForCausalLM") && text.contains("OK (0 warnings)") && text.contains("serve: vllm serve"), "{text}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    copy_dir(&b.dense, &dir);
    edit_st(&dir.join("model.safetensors"), |m, t| {
        *m = None;
        t.retain(|t| t.name != "model.norm.weight");
    });
    std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    let out = mm(&["validate", "hf", dir.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes = |k: &str| -> Vec<String> { report[k].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap().to_string()).collect() };
    assert_eq!(codes("errors"), ["safetensors.metadata", "tensor.missing"], "{report:#}");
    assert_eq!(codes("warnings"), ["generation_config.missing"], "{report:#}");
    assert_eq!(report["target"], "vllm");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 errors"));
    let out = mm(&["validate", "hf", dir.to_str().unwrap(), "--target", "sglang"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown target"));
}

#[test]
fn minimind3_tokenizer_enables_the_reasoning_parsers() {
    let Some(shared) = common::shared_or_skip("minimind3_tokenizer_enables_the_reasoning_parsers") else { return };
    let b = bases(&shared);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m3");
    copy_dir(&b.dense, &dir);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(shared.join("reference/minimind3").join(f), dir.join(f)).unwrap();
    }
    let r = validate(&dir, Target::Vllm);
    assert!(r.ok() && r.warnings.is_empty(), "{}", describe(&r));
    let p = r.parsers.as_ref().unwrap();
    // <think>/</think>/<tool_call> are single tokens; thinking is off by default, so the prompt
    // closes the think block and qwen3 (not deepseek_r1) is the parser to use.
    assert_eq!(p.reasoning, ["qwen3", "deepseek_r1"]);
    assert_eq!(p.tool_call, ["hermes"]);
    assert!(r.serve_command.as_deref().unwrap().ends_with("--tool-call-parser hermes --reasoning-parser qwen3"));
}
