//! `mm selftest-train-step`: the upstream training-fixture step (`mm::train::fixture_step`)
//! on a chosen device, for machines without a Rust toolchain (the GPU machine). Exits
//! non-zero when a fixture tolerance fails.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use mm::train::fixture_step::{run as run_step, FixtureFiles};

#[derive(Args)]
pub struct SelftestTrainStepArgs {
    /// `shared/fixtures/minimind2` (inputs.json, <cfg>/expected.json, <cfg>/train_step1*.safetensors).
    #[arg(long)]
    fixtures: PathBuf,
    /// The directory holding the fixture model unpacked from <cfg>/weights.tar.xz (its `hf-minimind/`).
    #[arg(long)]
    model_root: PathBuf,
    /// dense or moe.
    #[arg(long, default_value = "dense")]
    cfg: String,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: SelftestTrainStepArgs) -> Result<()> {
    if a.cfg != "dense" && a.cfg != "moe" {
        bail!("--cfg {:?}: the fixture has dense and moe", a.cfg);
    }
    let device = super::device_arg(&a.device)?;
    let files = FixtureFiles::in_shared(&a.fixtures, &a.cfg, &a.model_root);
    let report = run_step(&files, &device)?;
    println!("fixture step ({}, f32, {}):\n{}", a.cfg, a.device, report.summary());
    let failures = report.failures();
    if failures.is_empty() {
        println!("PASS: every fixture tolerance holds");
        Ok(())
    } else {
        for f in &failures {
            println!("FAIL: {f}");
        }
        bail!("{} fixture check(s) failed", failures.len())
    }
}
