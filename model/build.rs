//! With the `cuda` feature, compiles the fused-op kernels (src/fused/kernels/*.cu) to PTX in
//! OUT_DIR, where src/fused/cuda.rs embeds them; candle JIT-loads PTX on the device. Without
//! the feature it does nothing, so the CPU build needs no CUDA.
//!
//! Knobs: NVCC (the compiler; else `nvcc` on PATH, else $CUDA_HOME/bin/nvcc) and
//! CUDA_COMPUTE_CAP (default 90, H100/H200). No --use_fast_math: the kernels must round like
//! candle's composite ops, and --fmad=false keeps `a*b+c` two roundings as on the CPU.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_DIR: &str = "src/fused/kernels";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc().unwrap_or_else(|| {
        panic!(
            "the `cuda` feature compiles {KERNEL_DIR}/*.cu with nvcc, and none was found: set NVCC, \
             put nvcc on PATH or set CUDA_HOME (scripts/build-cuda.sh does this)"
        )
    });
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().trim_end_matches('a').replace('.', "");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(KERNEL_DIR)
        .unwrap_or_else(|e| panic!("cannot list {KERNEL_DIR}: {e}"))
        .map(|entry| entry.expect("readable kernel dir entry").path())
        .collect();
    sources.sort();
    for path in &sources {
        // Headers are included by the .cu files; the directory watch covers their changes.
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for cu in sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")) {
        let ptx = out_dir.join(cu.file_stem().expect("a .cu file has a stem")).with_extension("ptx");
        compile_ptx(&nvcc, cu, &ptx, &cap);
    }
}

fn compile_ptx(nvcc: &Path, cu: &Path, ptx: &Path, cap: &str) {
    let output = Command::new(nvcc)
        .args(["--ptx", "-O3", "--fmad=false", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-I")
        .arg(KERNEL_DIR)
        .arg("-o")
        .arg(ptx)
        .arg(cu)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc failed on {}:\n{}{}",
            cu.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// $NVCC, else `nvcc` on PATH, else $CUDA_HOME/bin/nvcc.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = env::var_os("PATH") {
        if let Some(found) = env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file()) {
            return Some(found);
        }
    }
    let home = PathBuf::from(env::var_os("CUDA_HOME")?).join("bin/nvcc");
    home.is_file().then_some(home)
}
