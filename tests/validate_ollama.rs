//! `mm export ollama` and `mm validate ollama`: a valid export passes clean (no errors, no
//! warnings, every chat case equal or equal with a documented allowance), and each seeded
//! defect of a Modelfile is caught with its own message.

#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value as Json;

use mm::chat::ChatTemplate;
use mm::export::ollama::validate::CaseStatus;
use mm::export::ollama::{self, JinjaRenderer, Report};

fn mm(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).current_dir(cwd).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tiny random model exported once: `(work dir, export dir)`.
fn exported() -> &'static (tempfile::TempDir, PathBuf) {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let work = tempfile::tempdir().unwrap();
        ok(&mm(&["init", "--preset", "tiny", "--layers", "1", "-o", "model"], work.path()));
        let stdout = ok(&mm(
            &["export", "ollama", "model", "-o", "out", "--quant", "q8_0", "--param", "num_ctx=1024", "--param", "stop=</s>"],
            work.path(),
        ));
        assert!(stdout.contains("minimind2 chat template"), "{stdout}");
        assert!(stdout.contains("0 different; 0 errors, 0 warnings"), "{stdout}");
        let out = work.path().join("out");
        (work, out)
    })
}

fn jinja(source: &str) -> anyhow::Result<Box<dyn JinjaRenderer>> {
    Ok(Box::new(ChatTemplate::new(source)?))
}

fn validate(path: &Path) -> Report {
    ollama::validate(path, Some(&jinja)).unwrap()
}

fn valid_modelfile() -> String {
    std::fs::read_to_string(exported().1.join("Modelfile")).unwrap()
}

/// Writes a Modelfile beside the exported GGUF and validates it.
fn check(name: &str, text: &str) -> Report {
    let path = exported().1.join(format!("{name}.Modelfile"));
    std::fs::write(&path, text).unwrap();
    validate(&path)
}

fn assert_error(r: &Report, code: &str, needle: &str) {
    let hit = r.errors.iter().find(|e| e.code == code);
    let Some(hit) = hit else { panic!("expected error {code}, got:\n{}", r.to_text()) };
    assert!(hit.message.contains(needle), "{code}: {:?} lacks {needle:?}", hit.message);
}

#[test]
fn a_valid_export_passes_clean() {
    let (_, out) = exported();
    let text = valid_modelfile();
    assert!(text.contains("FROM ./model-q8_0.gguf\n"), "{text}");
    for stop in ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>"] {
        assert!(text.contains(&format!("PARAMETER stop \"{stop}\"\n")), "{stop}");
    }
    assert!(text.contains("PARAMETER num_ctx 1024\n") && !text.contains("num_ctx 2048"), "{text}");
    assert!(!text.contains("\nSYSTEM"), "no SYSTEM unless asked");
    assert!(text.contains(&format!("TEMPLATE \"\"\"{}\"\"\"\n", ollama::Family::MiniMind2.go_template())));

    let r = validate(out);
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{}", r.to_text());
    assert_eq!(r.cases.len(), 20);
    assert_eq!(r.count(CaseStatus::Differs), 0);
    assert_eq!(r.count(CaseStatus::Equal), 14, "{}", r.to_text());
    assert_eq!(r.tool_tag.as_deref(), Some("<tool_call>"));
    assert!(r.notes.iter().any(|n| n.code == "known_difference"), "unavoidable differences are reported");

    // The CLI: text and --json, exit status 0.
    let work = exported().0.path();
    let text = ok(&mm(&["validate", "ollama", "out"], work));
    assert!(text.contains("errors (0)") && text.contains("warnings (0)"), "{text}");
    let json: Json = serde_json::from_str(&ok(&mm(&["validate", "ollama", "out/Modelfile", "--json"], work))).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["family"], "minimind2");
    assert_eq!(json["cases"].as_array().unwrap().len(), 20);
}

#[test]
fn export_options_are_checked_before_any_work() {
    let work = exported().0.path();
    for (param, needle) in [
        ("temperature=hot", "invalid float value"),
        ("top_k=0.5", "invalid int value"),
        ("max_tokens=5", "unknown parameter"),
        ("mirostat=1", "deprecated"),
        ("oops", "NAME=VALUE"),
    ] {
        let out = mm(&["export", "ollama", "model", "-o", "bad", "--param", param], work);
        assert!(!out.status.success(), "{param}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{param}: {err}");
    }
    assert!(!work.join("bad").exists(), "nothing written for refused options");
    let out = mm(&["export", "ollama", "model", "-o", "bad", "--system", "a \"\"\" b"], work);
    assert!(!out.status.success());
}

#[test]
fn export_refuses_an_unknown_chat_template() {
    let work = tempfile::tempdir().unwrap();
    ok(&mm(&["init", "--preset", "tiny", "--layers", "1", "-o", "model"], work.path()));
    let cfg_path = work.path().join("model/tokenizer_config.json");
    let mut cfg: Json = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = Json::String("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}".into());
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let out = mm(&["export", "ollama", "model", "-o", "out"], work.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown chat template") && err.contains("minimind3"), "{err}");
    assert!(!work.path().join("out/Modelfile").exists());
}

#[test]
fn a_minimind3_model_gets_the_minimind3_template() {
    let shared = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let reference = shared.join("reference/minimind3");
    if !reference.is_dir() {
        assert!(std::env::var_os("MM_REQUIRE_SHARED").is_none(), "shared fixtures missing");
        skip::skipped("minimind3 ollama validation", &format!("no {} (set MM_SHARED)", reference.display()));
        return;
    }
    let work = tempfile::tempdir().unwrap();
    ok(&mm(&["init", "--preset", "tiny", "--layers", "1", "-o", "model"], work.path()));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(reference.join(f), work.path().join("model").join(f)).unwrap();
    }
    let stdout = ok(&mm(&["export", "ollama", "model", "-o", "out", "--quant", "f16", "--system", "你是 MiniMind"], work.path()));
    assert!(stdout.contains("minimind3 chat template"), "{stdout}");
    let text = std::fs::read_to_string(work.path().join("out/Modelfile")).unwrap();
    assert!(text.contains("SYSTEM \"你是 MiniMind\"\n"), "{text}");
    let r = validate(&work.path().join("out"));
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{}", r.to_text());
    assert_eq!(r.family, Some(ollama::Family::MiniMind3));
    assert_eq!(r.count(CaseStatus::Differs), 0);
}

// ---------------------------------------------------------------------------------------------
// Seeded defects: one Modelfile each, each caught with its own message.

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the Modelfile");
    text.replacen(from, to, 1)
}

#[test]
fn seeded_defects_are_each_caught() {
    let good = valid_modelfile();
    let template = ollama::Family::MiniMind2.go_template();
    let with_template = |t: &str| replace_once(&good, template, t);
    let out = &exported().1;
    std::fs::write(out.join("notgguf.gguf"), "this is not a GGUF file").unwrap();
    let gguf = std::fs::read(out.join("model-q8_0.gguf")).unwrap();
    std::fs::write(out.join("truncated.gguf"), &gguf[..gguf.len() / 2]).unwrap();

    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("missing-from", replace_once(&good, "FROM ./model-q8_0.gguf\n", ""), "missing_from", "no FROM line"),
        ("from-missing-file", replace_once(&good, "./model-q8_0.gguf", "./nowhere.gguf"), "from_missing", "does not exist"),
        ("from-not-gguf", replace_once(&good, "./model-q8_0.gguf", "./notgguf.gguf"), "from_not_gguf", "is not a GGUF file"),
        ("from-truncated-gguf", replace_once(&good, "./model-q8_0.gguf", "./truncated.gguf"), "from_bad_gguf", "does not load"),
        (
            "template-does-not-parse",
            with_template(&template.replacen("{{- end }}\n</tools>", "\n</tools>", 1)),
            "template_parse",
            "does not parse as a Go text/template",
        ),
        (
            "template-prints-function-struct",
            with_template(&template.replacen(
                "{{- range .Tools }}\n{\"type\"",
                "{{- range .Tools }}\n{{ .Function }}{{ end }}{{ range .Tools }}{\"type\"",
                1,
            )),
            "template_go_struct",
            "prints a Go struct",
        ),
        ("missing-stop", replace_once(&good, "PARAMETER stop \"<|im_end|>\"\n", ""), "stop_missing", "<|im_end|>"),
        ("wrong-param-type", replace_once(&good, "PARAMETER top_k 50", "PARAMETER top_k 0.5"), "param_type", "invalid int value"),
        ("unknown-param", format!("{good}PARAMETER max_tokens 100\n"), "param_unknown", "unknown parameter 'max_tokens'"),
        ("unknown-instruction", format!("{good}TEMPERATURE 0.5\n"), "unknown_instruction", "command must be one of"),
        ("bad-message-role", format!("{good}MESSAGE tool hello\n"), "message_role", "message role must be one of"),
        ("unterminated-quote", format!("{good}SYSTEM \"\"\"never closed\n"), "modelfile_syntax", "unexpected EOF"),
        ("requires-not-semver", format!("{good}REQUIRES latest\n"), "requires_semver", "not a semver"),
        (
            "template-differs-from-jinja",
            with_template(&template.replacen("You are a helpful assistant", "You are helpful", 1)),
            "case_differs",
            "renders differently from the jinja template",
        ),
        (
            "template-reads-missing-field",
            with_template(&template.replacen("{{- $prev := \"\" }}", "{{- $prev := \"\" }}{{ .Prompts }}", 1)),
            "template_unknown_field",
            ".Prompts",
        ),
    ];
    assert!(cases.len() >= 8);
    let mut codes = std::collections::HashSet::new();
    for (name, text, code, needle) in &cases {
        let r = check(name, text);
        assert_error(&r, code, needle);
        assert!(!r.ok(), "{name}");
        assert!(codes.insert(*code), "each defect is a different check: {code}");
    }
    // The CLI exits non-zero and reports the code in --json.
    let work = exported().0.path();
    let out = mm(&["validate", "ollama", "out/missing-stop.Modelfile", "--json"], work);
    assert!(!out.status.success());
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert!(json["errors"].as_array().unwrap().iter().any(|e| e["code"] == "stop_missing"));
}

#[test]
fn warnings_are_listed_apart_from_errors() {
    let good = valid_modelfile();
    let template = ollama::Family::MiniMind2.go_template();
    let cases: Vec<(&str, String, &str)> = vec![
        ("trailing-newline", replace_once(&good, &format!("{template}\"\"\""), &format!("{template}\n\"\"\"")), "template_trailing_newline"),
        ("deprecated-param", format!("{good}PARAMETER mirostat 1\n"), "param_deprecated"),
        ("legacy-template", replace_once(&good, template, "{{ .System }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}"), "template_legacy"),
        (
            "no-thinking-tags",
            replace_once(&good, template, &template.replace("{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}", "")),
            "no_thinking",
        ),
        (
            "tool-tag-lost",
            replace_once(&good, template, &template.replace("{{ range $j, $tc := .ToolCalls }}<tool_call>", "{{ range $j, $tc := .ToolCalls }}{{ \"\" }}<tool_call>")),
            "tool_tag",
        ),
        ("non-printable", format!("{good}SYSTEM \"a\u{200B}b\"\n"), "non_printable"),
        ("registry-from", replace_once(&good, "./model-q8_0.gguf", "qwen2.5:0.5b"), "from_registry"),
    ];
    for (name, text, code) in cases {
        let r = check(name, &text);
        assert!(r.warnings.iter().any(|w| w.code == code), "{name}: expected warning {code}:\n{}", r.to_text());
        assert!(!r.errors.iter().any(|e| e.code == code), "{name}");
        if matches!(name, "deprecated-param" | "legacy-template" | "non-printable" | "registry-from") {
            assert!(r.errors.is_empty(), "{name}: only warnings expected:\n{}", r.to_text());
        }
    }
    // A warning alone does not fail the CLI.
    let work = exported().0.path();
    let out = mm(&["validate", "ollama", "out/deprecated-param.Modelfile"], work);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
