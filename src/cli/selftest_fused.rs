//! `mm selftest-fused` (hidden): the fused ops' self-test of `mm::fused::selftest` on a device.

use anyhow::Result;
use clap::Args;

use mm::fused::selftest::{run as run_selftest, SelftestOptions};

#[derive(Args)]
pub struct SelftestFusedArgs {
    /// The device to check against the CPU: cuda, cuda:N (or cpu, which checks nothing new).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Timed calls per measurement, after 2 warm-up calls.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Only the correctness checks.
    #[arg(long)]
    no_timing: bool,
    /// Only the small shapes (a quick smoke test; no timing).
    #[arg(long)]
    small: bool,
}

pub fn run(a: SelftestFusedArgs) -> Result<()> {
    let dev = super::device_arg(&a.device)?;
    run_selftest(&dev, &SelftestOptions { device_name: a.device, reps: a.reps, no_timing: a.no_timing, small: a.small })
}
