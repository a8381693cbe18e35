//! Hostile inputs (issue 13, findings 3 and 4): memory bombs in configs, GGUF headers, flags
//! and data files, and inputs that used to panic or abort (division by zero, index past the
//! end, closed pipes, chat and Go templates that hang, explode or overflow the stack). Each
//! must end in a clean error: exit status 1, a message naming the file or flag and the
//! problem, no panic, no signal.
//!
//! Memory: every hostile command runs under an address-space limit (`ulimit -v`, i.e.
//! RLIMIT_AS) of [`ADDRESS_SPACE`] plus the model's size. Address space bounds RSS from above,
//! so staying inside it shows the command stayed under 1 GiB beyond the model. Normal runs of
//! the same tiny model need far less: measured with `ulimit -v` (debug build, 2 cores), the
//! smallest limits that pass are 40 MiB for `mm inspect`, 64 MiB for `mm generate`, 72 MiB for
//! `mm generate` of its GGUF and 93 MiB for a few `mm train pretrain` steps. rayon's per-core
//! stacks and mimalloc's reservations grow with the core count, which the 10x margin leaves
//! room for; [`normal_runs_fit_the_limit`] runs those normal commands under the same limit, so
//! a limit too tight for a machine shows there first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

/// The address space a hostile command may use beyond the model's own size: 1 GiB.
const ADDRESS_SPACE: u64 = 1 << 30;
/// No hostile command may run longer than this (the hangs were unbounded).
const TIMEOUT: Duration = Duration::from_secs(120);

const TINY: &[&str] = &["--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--max-position-embeddings", "512"];

/// Runs `mm args` in `cwd` under the address-space limit (plus `model_bytes`), with a timeout.
fn mm_limited(args: &[&str], cwd: &Path, model_bytes: u64) -> Output {
    let kib = (ADDRESS_SPACE + model_bytes) / 1024;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_mm")).args(args);
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Read the pipes on threads so a chatty command never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).ok();
        b
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).ok();
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("mm {args:?} ran longer than {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_thread.join().unwrap(), stderr: err_thread.join().unwrap() }
}

/// Asserts a clean error: status 1 (not a signal, not a panic's 101), a message holding every
/// one of `needles`, and no trace of a panic or an allocation failure.
fn clean_error(out: &Output, args: &[&str], needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "mm {args:?}: status {:?}\n{err}", out.status);
    for bad in ["panicked", "overflowed its stack", "memory allocation", "fatal runtime error"] {
        assert!(!err.contains(bad), "mm {args:?}: {bad}\n{err}");
    }
    for needle in needles {
        assert!(err.contains(needle), "mm {args:?}: the message lacks {needle:?}\n{err}");
    }
    err
}

fn hostile(args: &[&str], cwd: &Path, needles: &[&str]) -> String {
    clean_error(&mm_limited(args, cwd, 0), args, needles)
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = mm_limited(args, cwd, 0);
    assert!(out.status.success(), "mm {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tiny HF model `name` in `dir`.
fn tiny_model(dir: &Path, name: &str) -> PathBuf {
    let mut init = vec!["init", "-o", name];
    init.extend_from_slice(TINY);
    ok(&init, dir);
    dir.join(name)
}

/// A copy of a model directory with one config.json field replaced.
fn with_config_field(model: &Path, name: &str, field: &str, value: serde_json::Value) -> PathBuf {
    let out = model.with_file_name(name);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let path = out.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config[field] = value;
    if field == "n_routed_experts" {
        config["use_moe"] = true.into();
    }
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    out
}

/// Sets a u32 metadata value of a GGUF file in place.
fn set_gguf_u32(path: &Path, key: &str, value: u32) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{key} not in the GGUF")) + needle.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 4, "{key} is not a u32");
    bytes[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn symlink(target: &str, link: &Path) {
    std::fs::remove_file(link).ok();
    std::os::unix::fs::symlink(target, link).unwrap();
}

#[test]
fn normal_runs_fit_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    ok(&["inspect", "tiny"], dir);
    ok(&["generate", "tiny", "-p", "hello", "--max-new-tokens", "4", "--greedy"], dir);
    ok(&["convert", "tiny", "--to", "gguf", "-o", "tiny.gguf"], dir);
    ok(&["generate", "tiny.gguf", "-p", "hello", "--max-new-tokens", "4", "--greedy"], dir);
    std::fs::write(dir.join("data.jsonl"), "{\"text\": \"hello world\"}\n{\"text\": \"a b c\"}\n").unwrap();
    ok(&["train", "pretrain", "--from", "tiny", "--data", "data.jsonl", "--max-seq-len", "32", "--batch-size", "2", "--out", "run", "--quiet"], dir);
}

#[test]
fn config_json_memory_bombs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = tiny_model(dir, "tiny");
    let bombs = [
        ("layers", "num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("positions", "max_position_embeddings", serde_json::json!(1u64 << 62)),
        ("experts", "n_routed_experts", serde_json::json!(1_000_000_000u64)),
        ("hidden", "hidden_size", serde_json::json!(1u64 << 32)),
        ("vocab", "vocab_size", serde_json::json!(1u64 << 40)),
    ];
    for (name, field, value) in bombs {
        let model = with_config_field(&tiny, name, field, value);
        let model = model.file_name().unwrap().to_str().unwrap();
        hostile(&["inspect", model], dir, &["config.json", field, "limit"]);
        hostile(&["generate", model, "-p", "hi", "--max-new-tokens", "2"], dir, &["config.json", field]);
        hostile(&["convert", model, "--to", "pth", "-o", "out.pth"], dir, &["config.json", field]);
        assert!(!dir.join("out.pth").exists());
    }
    // The .pth sidecar and --config.
    ok(&["convert", "tiny", "--to", "pth", "-o", "tiny.pth"], dir);
    let sidecar = dir.join("tiny.config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&sidecar).unwrap()).unwrap();
    config["num_hidden_layers"] = 1_000_000_000u64.into();
    std::fs::write(dir.join("bomb.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    hostile(&["inspect", "tiny.pth", "--config", "bomb.json"], dir, &["bomb.json", "num_hidden_layers"]);
    std::fs::copy(dir.join("bomb.json"), &sidecar).unwrap();
    hostile(&["inspect", "tiny.pth"], dir, &["tiny.config.json", "num_hidden_layers"]);
    // A config that is a device.
    hostile(&["inspect", "tiny.pth", "--config", "/dev/zero"], dir, &["/dev/zero", "not a regular file"]);
}

#[test]
fn a_declared_context_far_beyond_use_costs_nothing() {
    // Rotary tables used to be built for every declared position: 2^24 positions of this
    // shape took 1 GiB before the first token.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut init = vec!["init", "-o", "long"];
    init.extend_from_slice(&TINY[..8]);
    init.extend_from_slice(&["--max-position-embeddings", "16777216"]);
    ok(&init, dir);
    ok(&["generate", "long", "-p", "hello", "--max-new-tokens", "4", "--greedy"], dir);
}

#[test]
fn gguf_header_bombs_and_zero_heads_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    ok(&["convert", "tiny", "--to", "gguf", "-o", "tiny.gguf"], dir);
    let cases = [
        ("llama.block_count", 1_000_000_000, "num_hidden_layers"),
        ("llama.context_length", u32::MAX, "max_position_embeddings"),
        ("llama.attention.head_count", 0, "num_attention_heads must be positive"),
        ("llama.attention.head_count_kv", 0, "num_key_value_heads must be positive"),
        ("llama.feed_forward_length", 0, "intermediate_size must be positive"),
    ];
    for (key, value, want) in cases {
        let path = dir.join("bomb.gguf");
        std::fs::copy(dir.join("tiny.gguf"), &path).unwrap();
        set_gguf_u32(&path, key, value);
        hostile(&["inspect", "bomb.gguf"], dir, &["bomb.gguf", want]);
        hostile(&["generate", "bomb.gguf", "-p", "hi", "--max-new-tokens", "2"], dir, &["bomb.gguf", want]);
        hostile(&["convert", "bomb.gguf", "--to", "hf", "-o", "out"], dir, &["bomb.gguf", want]);
    }
}

#[test]
fn init_shape_flags_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cases: &[(&[&str], &str)] = &[
        (&["--layers", "1000000000"], "num_hidden_layers 1000000000 exceeds"),
        (&["--hidden-size", "4294967296"], "hidden_size 4294967296 exceeds"),
        (&["--intermediate-size", "1000000000000"], "intermediate_size"),
        (&["--max-position-embeddings", "4611686018427387904"], "max_position_embeddings"),
        (&["--experts", "1000000000"], "n_routed_experts"),
        (&["--heads", "4096", "--hidden-size", "8192"], "num_attention_heads"),
        // Each field within its limit, together 8 billion parameters.
        (&["--hidden-size", "16384", "--layers", "512"], "parameters"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["init", "-o", "x"];
        args.extend_from_slice(flags);
        hostile(&args, dir, &[want]);
        assert!(!dir.join("x").exists());
    }
}

#[test]
fn training_flags_and_data_bombs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    std::fs::write(dir.join("data.jsonl"), "{\"text\": \"hello world\"}\n").unwrap();
    let train = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["train", "pretrain", "--from", "tiny", "--out", "run", "--quiet"];
        args.extend_from_slice(extra);
        hostile(&args, dir, needles)
    };
    train(&["--data", "data.jsonl", "--max-seq-len", "1000000000"], &["--max-seq-len", "1000000000"]);
    train(&["--data", "data.jsonl", "--batch-size", "1000000000"], &["--batch-size", "micro-batch"]);
    train(&["--data", "data.jsonl", "--batch-size", "18446744073709551615"], &["--batch-size"]);
    // Longer than the model's 512 positions.
    train(&["--data", "data.jsonl", "--max-seq-len", "4096"], &["--max-seq-len 4096", "512 positions"]);
    train(&["--data", "/dev/zero"], &["/dev/zero", "not a regular file"]);
    // One 50 MB line: an error naming the file and line, never read whole.
    let mut f = std::fs::File::create(dir.join("long.jsonl")).unwrap();
    writeln!(f, "{{\"text\": \"ok\"}}").unwrap();
    write!(f, "{{\"text\": \"").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..50 {
        f.write_all(&chunk).unwrap();
    }
    writeln!(f, "\"}}").unwrap();
    drop(f);
    train(&["--data", "long.jsonl"], &["long.jsonl:2", "longer than 1048576 bytes"]);
    // The tokenizer trainer reads the same files.
    hostile(&["train-tokenizer", "long.jsonl", "-o", "tk", "--vocab-size", "300"], dir, &["long.jsonl:2", "longer than 1048576 bytes"]);
    hostile(&["train-tokenizer", "/dev/zero", "-o", "tk", "--vocab-size", "300"], dir, &["/dev/zero", "not a regular file"]);
    assert!(!dir.join("tk").exists());
}

#[test]
fn side_files_that_are_devices_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = tiny_model(dir, "tiny");
    std::fs::write(dir.join("msgs.json"), r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    hostile(&["template", "render", "/dev/zero"], dir, &["/dev/zero", "not a regular file"]);
    hostile(&["export", "ollama", "tiny", "-o", "ollama", "--license", "/dev/zero"], dir, &["--license", "/dev/zero", "not a regular file"]);
    let model = with_config_field(&tiny, "validate_me", "bos_token_id", 1.into());
    symlink("/dev/zero", &model.join("config.json"));
    let out = mm_limited(&["validate", "hf", "validate_me"], dir, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && text.contains("config.json") && text.contains("not a regular file"), "{text}");
    for file in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"] {
        let model = with_config_field(&tiny, "devices", "bos_token_id", 1.into());
        symlink("/dev/zero", &model.join(file));
        hostile(&["inspect", "devices"], dir, &[file, "not a regular file"]);
        hostile(&["generate", "devices", "-p", "hi", "--max-new-tokens", "2"], dir, &[file, "not a regular file"]);
        if file != "config.json" {
            hostile(&["tokenize", "--model", "devices", "hi"], dir, &[file, "not a regular file"]);
        }
        std::fs::remove_dir_all(&model).unwrap();
    }
}

#[test]
fn odd_tensors_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    ok(&["convert", "tiny", "--to", "pth", "-o", "tiny.pth"], dir);
    let tensors = mm::converters::pth::read_pth(&dir.join("tiny.pth")).unwrap();

    // A 0-d tensor where the config is inferred from shapes (no sidecar beside it).
    std::fs::create_dir(dir.join("scalar")).unwrap();
    let scalar: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "model.layers.0.mlp.gate_proj.weight" { Tensor::new(1f32, &Device::Cpu).unwrap() } else { t.clone() };
            (n.clone(), t)
        })
        .collect();
    mm::converters::pth::write_pth(&dir.join("scalar/model.pth"), &scalar).unwrap();
    hostile(&["inspect", "scalar/model.pth"], dir, &["model.pth", "gate_proj", "expected a matrix"]);
    hostile(&["convert", "scalar/model.pth", "--to", "hf", "-o", "out"], dir, &["model.pth", "gate_proj"]);

    // A LoRA whose adapter targets a vector (an RMSNorm weight).
    let module = "model.layers.0.input_layernorm";
    let lora = vec![
        (format!("{module}.lora.A.weight"), Tensor::zeros((2, 64), DType::F32, &Device::Cpu).unwrap()),
        (format!("{module}.lora.B.weight"), Tensor::zeros((64, 2), DType::F32, &Device::Cpu).unwrap()),
    ];
    mm::converters::pth::write_pth(&dir.join("lora.pth"), &lora).unwrap();
    hostile(&["lora", "merge", "tiny", "lora.pth", "-o", "merged"], dir, &["input_layernorm", "only matrices"]);
    hostile(&["generate", "tiny", "--lora", "lora.pth", "-p", "hi", "--max-new-tokens", "2"], dir, &["input_layernorm"]);
}

/// A command whose reader has gone: status 0 and no panic, as `cat` or `grep` would end.
fn quiet_on_closed_pipe(args: &[&str], cwd: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mm"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: the read end is closed before mm writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "mm {args:?}:\n{err}");
    assert_eq!(out.status.code(), Some(0), "mm {args:?}: {:?}\n{err}", out.status);
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    std::fs::write(dir.join("msgs.json"), r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let text = "hello world ".repeat(8_000); // 96 KB: under the 128 KiB a single argument may have
    quiet_on_closed_pipe(&["tokenize", "--pieces", &text], dir);
    quiet_on_closed_pipe(&["tokenize", &text], dir);
    quiet_on_closed_pipe(&["inspect", "tiny"], dir);
    quiet_on_closed_pipe(&["inspect", "tiny", "--json"], dir);
    quiet_on_closed_pipe(&["template", "render", "msgs.json"], dir);
    quiet_on_closed_pipe(&["generate", "tiny", "-p", "hi", "--max-new-tokens", "8", "--show-ids"], dir);
}

/// A copy of the tiny model whose chat template is `source`.
fn with_template(dir: &Path, name: &str, source: &str) {
    let model = with_config_field(&dir.join("tiny"), name, "bos_token_id", 1.into());
    std::fs::write(model.join("chat_template.jinja"), source).unwrap();
}

#[test]
fn hostile_chat_templates_stop_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    std::fs::write(dir.join("msgs.json"), r#"[{"role": "user", "content": "hi"}]"#).unwrap();
    let cases = [
        // 10^10 iterations: a hang.
        ("loops", "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}".to_string(), "ran out of"),
        // A string doubled 40 times: 5 GB and an abort.
        (
            "doubling",
            "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}".into(),
            "ran out of",
        ),
        ("output", "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}".into(), "output is over"),
        ("padding", "{{ '1'.zfill(1000000000) }}".into(), "width 1000000000"),
        ("percent", "{{ '%1000000000d' % 1 }}".into(), "width or precision"),
        // 100k chained filters and 20k nested blocks: a stack overflow in the parser.
        ("filters", format!("{{{{ 'a'{} }}}}", "|upper".repeat(100_000)), "operators"),
        ("attributes", format!("{{{{ messages{} }}}}", ".a".repeat(100_000)), "operators"),
        ("nested", format!("{}{}", "{% if true %}".repeat(20_000), "{% endif %}".repeat(20_000)), "nested more than 64"),
    ];
    for (name, source, want) in &cases {
        with_template(dir, name, source);
        hostile(&["template", "render", "--model", name, "msgs.json"], dir, &[name, want]);
        hostile(&["generate", name, "-p", "hi", "--max-new-tokens", "2"], dir, &[name, want]);
    }
    // The same inside a GGUF (tokenizer.chat_template).
    ok(&["convert", "loops", "--to", "gguf", "-o", "loops.gguf"], dir);
    hostile(&["generate", "loops.gguf", "-p", "hi", "--max-new-tokens", "2"], dir, &["loops.gguf", "ran out of"]);
    hostile(&["template", "render", "--model", "loops.gguf", "msgs.json"], dir, &["loops.gguf", "ran out of"]);
}

#[test]
fn hostile_ollama_templates_are_reported_not_run_forever() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    ok(&["convert", "tiny", "--to", "gguf", "-o", "tiny.gguf"], dir);
    let modelfile = |name: &str, template: &str| {
        std::fs::create_dir(dir.join(name)).unwrap();
        std::fs::copy(dir.join("tiny.gguf"), dir.join(name).join("model.gguf")).unwrap();
        let text = format!("FROM ./model.gguf\nTEMPLATE \"\"\"{template}\"\"\"\nPARAMETER stop \"<|im_end|>\"\n");
        std::fs::write(dir.join(name).join("Modelfile"), text).unwrap();
    };
    modelfile("nested", &format!("{}x{}", "{{ if true }}".repeat(100_000), "{{ end }}".repeat(100_000)));
    modelfile("range", "{{ range .Messages }}{{ .Content }}{{ end }}{{ range 10000000000 }}{{ end }}");
    let out = mm_limited(&["validate", "ollama", "nested"], dir, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && !text.contains("panicked"), "{text}");
    assert!(text.contains("nested more than 200 deep"), "{text}");
    let out = mm_limited(&["validate", "ollama", "range"], dir, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && !text.contains("panicked"), "{text}");
    assert!(text.contains("steps, mm's limit"), "{text}");
    // A Modelfile that is a device.
    std::fs::create_dir(dir.join("device")).unwrap();
    symlink("/dev/zero", &dir.join("device/Modelfile"));
    let out = mm_limited(&["validate", "ollama", "device"], dir, 0);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && text.contains("not a regular file"), "{text}");
}

#[test]
fn mnn_config_paths_to_devices_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    tiny_model(dir, "tiny");
    ok(&["export", "mnn", "tiny", "-o", "mnn"], dir);
    for key in ["tokenizer_file", "llm_model", "llm_config"] {
        let path = dir.join("mnn/config.json");
        let original = std::fs::read(&path).unwrap();
        let mut config: serde_json::Value = serde_json::from_slice(&original).unwrap();
        config[key] = "/dev/zero".into();
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        // The problem is listed on stdout (a report line) or is the error itself.
        let out = mm_limited(&["inspect", "mnn"], dir, 0);
        clean_error(&out, &["inspect", "mnn"], &[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("/dev/zero") && text.contains("not a regular file"), "{key}: {text}");
        std::fs::write(&path, original).unwrap();
    }
}

#[test]
fn fifos_given_as_inputs_are_refused_not_waited_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tiny = tiny_model(dir, "tiny");
    let mkfifo = |name: &str| {
        let status = Command::new("mkfifo").arg(dir.join(name)).status().unwrap();
        assert!(status.success(), "mkfifo {name}");
    };
    for name in ["fifo.gguf", "fifo.pth", "fifo.jsonl"] {
        mkfifo(name);
    }
    hostile(&["inspect", "fifo.gguf"], dir, &["fifo.gguf", "not a regular file"]);
    hostile(&["generate", "fifo.gguf", "-p", "hi"], dir, &["fifo.gguf", "not a regular file"]);
    hostile(&["tokenize", "--model", "fifo.gguf", "hi"], dir, &["fifo.gguf", "not a regular file"]);
    hostile(&["inspect", "fifo.pth"], dir, &["fifo.pth", "not a regular file"]);
    hostile(&["generate", "tiny", "--lora", "fifo.pth", "-p", "hi"], dir, &["fifo.pth", "not a regular file"]);
    hostile(&["train", "pretrain", "--from", "tiny", "--data", "fifo.jsonl", "--out", "run", "--quiet"], dir, &["fifo.jsonl", "not a regular file"]);
    let model = with_config_field(&tiny, "fifo_weights", "bos_token_id", 1.into());
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    mkfifo("fifo_weights/model.safetensors");
    hostile(&["inspect", "fifo_weights"], dir, &["model.safetensors", "not a regular file"]);
}
