//! A `.pth` written by mm carries its whole checkpoint: the config and the tokenizer (with
//! its chat template) as `<stem>.` sidecars, so converting through `.pth` loses nothing.

use std::process::Command;

const MM: &str = env!("CARGO_BIN_EXE_mm");

fn ok(args: &[&str]) {
    let out = Command::new(MM).args(args).output().unwrap();
    assert!(out.status.success(), "mm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_custom_chat_template_survives_a_round_trip_through_pth() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    ok(&["init", "--hidden-size", "64", "--layers", "1", "--heads", "4", "--kv-heads", "2", "-o", &p("hf")]);
    let config_path = dir.path().join("hf/tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let template = "{% for m in messages %}<<{{ m.role }}>>{{ m.content }}{% endfor %}";
    config["chat_template"] = serde_json::json!(template);
    std::fs::write(&config_path, config.to_string()).unwrap();

    // Elsewhere, so no tokenizer of the source directory is beside the .pth.
    std::fs::create_dir(dir.path().join("pth")).unwrap();
    ok(&["convert", &p("hf"), "--to", "pth", "-o", &p("pth/model.pth")]);
    assert!(dir.path().join("pth/model.tokenizer.json").is_file());
    ok(&["convert", &p("pth/model.pth"), "--to", "hf", "-o", &p("back")]);
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("back/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(back["chat_template"], template);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("back/tokenizer.json")).unwrap(),
        std::fs::read_to_string(dir.path().join("hf/tokenizer.json")).unwrap()
    );
}
