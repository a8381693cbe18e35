//! Issue 13, finding 1: no command that takes `-o`/`--out` deletes or replaces what mm did
//! not write. For every such command: a directory holding a foreign file, a foreign regular
//! file, a FIFO and a device are refused with a message naming the path and left untouched
//! (no hidden `.old` copies, no temporaries); an earlier output of the same command is
//! replaced; `--force` replaces a foreign directory or file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const MM: &str = env!("CARGO_BIN_EXE_mm");

fn run(args: &[&str]) -> Output {
    Command::new(MM).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "mm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn samples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples").join(name)
}

/// Inputs shared by the tests: a tiny dense model (HF dir and .pth), a tiny MoE model and a
/// LoRA adapter for the dense one.
struct Inputs {
    _dir: tempfile::TempDir,
    dense: PathBuf,
    dense_pth: PathBuf,
    moe: PathBuf,
    lora: PathBuf,
}

fn inputs() -> &'static Inputs {
    static INPUTS: OnceLock<Inputs> = OnceLock::new();
    INPUTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let (dense, dense_pth, moe, out) = (p("dense"), p("dense.pth"), p("moe"), p("lora-run"));
        let tiny = ["--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2"];
        ok(&[&["init", "-o", &s(&dense)][..], &tiny].concat());
        ok(&[&["init", "--format", "pth", "-o", &s(&dense_pth)][..], &tiny].concat());
        ok(&[&["init", "--preset", "moe", "--experts", "2", "-o", &s(&moe)][..], &tiny].concat());
        ok(&[
            "train", "lora", "--data", &s(&samples("sft_sample.jsonl")), "--from", &s(&dense), "--max-seq-len", "64",
            "--batch-size", "2", "--max-steps", "1", "--out", &s(&out), "--quiet",
        ]);
        let lora = out.join("lora_identity_64.pth");
        assert!(lora.exists());
        Inputs { _dir: dir, dense, dense_pth, moe, lora }
    })
}

/// A command writing to `target`, as arguments (the target is appended after `-o`).
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// The output is a directory (else a file).
    dir: bool,
}

fn cases() -> Vec<Case> {
    let i = inputs();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let case = |name, args: &[&str], dir| Case { name, args: args.iter().map(|a| a.to_string()).collect(), dir };
    let dense = s(&i.dense);
    let tok_data = s(&samples("pretrain_sample.jsonl"));
    vec![
        case("convert --to hf", &["convert", &dense, "--to", "hf"], true),
        case("convert --to hf-llama", &["convert", &dense, "--to", "hf-llama"], true),
        case("convert --to hf-qwen2-moe", &["convert", &s(&i.moe), "--to", "hf-qwen2-moe"], true),
        case("convert --to pth", &["convert", &dense, "--to", "pth"], false),
        case("convert --to gguf", &["convert", &s(&i.dense_pth), "--to", "gguf"], false),
        case("export hf", &["export", "hf", &dense], true),
        case("export gguf", &["export", "gguf", &dense, "--quant", "q8_0"], false),
        case("export mnn", &["export", "mnn", &dense], true),
        case("export ollama", &["export", "ollama", &dense, "--quant", "q8_0"], true),
        case("init", &["init", "--hidden-size", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2"], true),
        case("init --format pth", &["init", "--format", "pth", "--hidden-size", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2"], false),
        case("lora merge", &["lora", "merge", &dense, &s(&i.lora)], true),
        case("lora merge --to pth", &["lora", "merge", &dense, &s(&i.lora), "--to", "pth"], false),
        case("train-tokenizer", &["train-tokenizer", &tok_data, "--vocab-size", "300"], true),
    ]
}

fn with_target(case: &Case, target: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = case.args.clone();
    args.push("-o".into());
    args.push(target.to_str().unwrap().into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_case(case: &Case, target: &Path, extra: &[&str]) -> Output {
    let args = with_target(case, target, extra);
    Command::new(MM).args(&args).output().unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn assert_refused(case: &Case, out: &Output, target: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: {what} at -o was not refused", case.name);
    assert!(stderr.contains(&*target.to_string_lossy()), "{}: the error does not name {}:\n{stderr}", case.name, target.display());
    assert!(!stderr.contains("panicked"), "{}: {stderr}", case.name);
}

#[test]
fn a_directory_holding_a_foreign_file_is_never_replaced() {
    for case in cases() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("notes.txt"), "my only copy").unwrap();
        if case.dir {
            // What an earlier output of the same kind would contain, plus the user's file.
            std::fs::write(target.join("config.json"), "{}").unwrap();
        }
        let out = run_case(&case, &target, &[]);
        assert_refused(&case, &out, &target, "a directory with a foreign file");
        assert_eq!(std::fs::read_to_string(target.join("notes.txt")).unwrap(), "my only copy", "{}", case.name);
        assert_eq!(listing(root.path()), ["target"], "{}: leftovers beside the target", case.name);
        // --force is the explicit way to replace it (directory outputs only: a file output
        // never replaces a directory).
        if case.dir {
            let out = run_case(&case, &target, &["--force"]);
            assert!(out.status.success(), "{} --force: {}", case.name, String::from_utf8_lossy(&out.stderr));
            assert!(!target.join("notes.txt").exists());
        }
    }
}

#[test]
fn a_foreign_file_is_never_replaced_and_no_hidden_copy_is_left() {
    for case in cases() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target.bin");
        std::fs::write(&target, "my thesis, not a model").unwrap();
        let out = run_case(&case, &target, &[]);
        assert_refused(&case, &out, &target, "a foreign file");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "my thesis, not a model", "{}", case.name);
        assert_eq!(listing(root.path()), ["target.bin"], "{}: leftovers beside the target", case.name);
    }
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_never_replaced_by_regular_files() {
    use std::os::unix::fs::FileTypeExt;
    for case in cases() {
        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("pipe");
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let out = run_case(&case, &fifo, &["--force"]);
        assert_refused(&case, &out, &fifo, "a FIFO");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "{}: the FIFO was replaced", case.name);
        assert_eq!(listing(root.path()), ["pipe"], "{}", case.name);
        let out = run_case(&case, Path::new("/dev/null"), &["--force"]);
        assert_refused(&case, &out, Path::new("/dev/null"), "a device");
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    }
}

#[test]
fn an_earlier_output_of_the_same_command_is_replaced() {
    for case in cases() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join(if case.dir { "out" } else { "out.file" });
        let first = run_case(&case, &target, &[]);
        assert!(first.status.success(), "{}: {}", case.name, String::from_utf8_lossy(&first.stderr));
        let second = run_case(&case, &target, &[]);
        assert!(second.status.success(), "{} (again): {}", case.name, String::from_utf8_lossy(&second.stderr));
        // Only the output (and a .pth's config sidecar) is there: no temporaries, no .old.
        for name in listing(root.path()) {
            assert!(!name.starts_with('.'), "{}: {name} left beside the output", case.name);
        }
    }
}

#[test]
fn training_never_replaces_a_foreign_file_under_out() {
    let i = inputs();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // The user's own file happens to have the name a run would give its weights.
    std::fs::write(out.join("full_sft_64.pth"), "not a checkpoint").unwrap();
    std::fs::write(out.join("full_sft_64.metrics.jsonl"), "my own notes\n").unwrap();
    let r = run(&[
        "train", "sft", "--data", samples("sft_sample.jsonl").to_str().unwrap(), "--from", i.dense.to_str().unwrap(),
        "--batch-size", "2", "--max-seq-len", "64", "--max-steps", "1", "--out", out.to_str().unwrap(), "--quiet",
    ]);
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("full_sft_64"), "{stderr}");
    assert_eq!(std::fs::read_to_string(out.join("full_sft_64.pth")).unwrap(), "not a checkpoint");
    assert_eq!(std::fs::read_to_string(out.join("full_sft_64.metrics.jsonl")).unwrap(), "my own notes\n");
    // --out itself must be a directory, not a file to be replaced.
    let file = root.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let r = run(&[
        "train", "sft", "--data", samples("sft_sample.jsonl").to_str().unwrap(), "--from", i.dense.to_str().unwrap(),
        "--max-steps", "1", "--out", file.to_str().unwrap(), "--quiet",
    ]);
    assert!(!r.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn an_input_is_never_the_output_however_it_is_spelled() {
    let root = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let model = root.path().join("model");
    ok(&["init", "--hidden-size", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2", "-o", &s(&model)]);
    let pth = model.join("weights.pth");
    ok(&["convert", &s(&model), "--to", "pth", "-o", &s(&pth)]);
    let before = std::fs::read(&pth).unwrap();
    for args in [
        vec!["convert".to_string(), s(&model), "--to".into(), "hf".into(), "-o".into(), format!("{}/", s(&model)), "--force".into()],
        vec!["convert".into(), s(&pth), "--to".into(), "hf".into(), "-o".into(), s(&model), "--force".into()],
        vec!["export".into(), "mnn".into(), s(&pth), "-o".into(), format!("{}/.", s(&model)), "--force".into()],
        vec!["convert".into(), s(&pth), "--to".into(), "pth".into(), "-o".into(), format!("{}/../model/weights.pth", s(&model))],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("input"), "mm {args:?}: {err}");
        assert_eq!(std::fs::read(&pth).unwrap(), before, "mm {args:?} changed the input");
        assert!(model.join("config.json").exists());
    }
}
