//! Locating `../shared` fixtures for tests; tests skip with a notice when it is absent.
#![allow(dead_code)]

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
    if dir.is_none() {
        eprintln!("skipping {test}: shared fixtures not found (set MM_SHARED)");
    }
    dir
}

/// Extracts `fixtures/minimind2/<cfg>/weights.tar.xz` once per test process.
pub fn weights_dir(shared: &Path, cfg: &str) -> PathBuf {
    static DIRS: OnceLock<std::sync::Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let map = DIRS.get_or_init(Default::default);
    let mut map = map.lock().unwrap();
    map.entry(cfg.to_string())
        .or_insert_with(|| {
            let out = std::env::temp_dir().join(format!("mm-fixture-{}-{cfg}", std::process::id()));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let file = std::fs::File::open(shared.join(format!("fixtures/minimind2/{cfg}/weights.tar.xz"))).unwrap();
            tar::Archive::new(xz2::read::XzDecoder::new(file)).unpack(&out).unwrap();
            out
        })
        .clone()
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
