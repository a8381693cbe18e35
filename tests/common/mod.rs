//! Locating `../shared` fixtures for tests; tests skip with a notice when it is absent.
#![allow(dead_code)]

pub mod skip;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Tensor;

/// `MM_SHARED`, or `../shared` beside the repository.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    dir.join("fixtures/minimind2/README.md").exists().then_some(dir)
}

/// Returns the shared dir, or prints the skip notice for `test` and returns None.
pub fn shared_or_skip(test: &str) -> Option<PathBuf> {
    let dir = shared_dir();
    if dir.is_none() && std::env::var_os("MM_REQUIRE_SHARED").is_some() {
        panic!("{test}: MM_REQUIRE_SHARED is set but the shared fixtures are missing");
    }
    if dir.is_none() {
        skip::skipped(test, "shared fixtures not found (set MM_SHARED)");
    }
    dir
}

/// Extracts `fixtures/minimind2/<cfg>/weights.tar.xz` once into a temp folder that is
/// reused by later runs (extracted beside, then renamed, so parallel tests never see half).
pub fn weights_dir(shared: &Path, cfg: &str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    let archive = shared.join(format!("fixtures/minimind2/{cfg}/weights.tar.xz"));
    let size = std::fs::metadata(&archive).unwrap().len();
    let out = std::env::temp_dir().join(format!("mm-fixture-{cfg}-{size}"));
    if !out.join("model.pth").exists() {
        let staging = std::env::temp_dir().join(format!("mm-fixture-{cfg}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let file = std::fs::File::open(&archive).unwrap();
        tar::Archive::new(xz2::read::XzDecoder::new(file)).unpack(&staging).unwrap();
        if std::fs::rename(&staging, &out).is_err() {
            let _ = std::fs::remove_dir_all(&staging); // another process won the race
        }
    }
    out
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Reference tensors of a fixture safetensors file, by name.
pub fn reference(path: &Path) -> HashMap<String, Tensor> {
    mm::converters::safetensors_file::read_file(path).unwrap().into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A file of `dataset/samples/`.
pub fn samples(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples").join(name)
}

/// Runs the `mm` binary, which must succeed; its stdout.
pub fn mm_ok(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().unwrap();
    assert!(out.status.success(), "mm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
