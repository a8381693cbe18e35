//! One AdamW step on the fixture pretrain batch, against upstream PyTorch
//! (`shared/fixtures/minimind2/<cfg>/expected.json` → `train`, `train_step1*.safetensors`).
//! The step and the README's tolerances live in `mm::train::fixture_step`, which
//! `mm selftest-train-step` also runs on a GPU.

mod common;

use candle_core::Device;
use mm::train::fixture_step::{run, FixtureFiles};

fn check(cfg: &str) {
    let Some(shared) = common::shared_or_skip(&format!("train step parity ({cfg})")) else { return };
    let files = FixtureFiles::in_shared(&shared.join("fixtures/minimind2"), cfg, &common::weights_dir(&shared, cfg));
    let report = run(&files, &Device::Cpu).unwrap();
    println!("{cfg}:\n{}", report.summary());
    let failures = report.failures();
    assert!(failures.is_empty(), "{cfg}: {}", failures.join("; "));
}

#[test]
fn dense_step_matches_pytorch() {
    check("dense");
}

#[test]
fn moe_step_matches_pytorch() {
    check("moe");
}
