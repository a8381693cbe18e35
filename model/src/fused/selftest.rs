//! The fused ops' self-test (`mm selftest-fused`, hidden): checks `crate::fused` on a device
//! against its CPU path and times it against the composite candle forms, for the GPU machine
//! (which has no Rust toolchain).
//!
//! Every op runs forward and backward (loss = Σ y · w, w seeded) on the device and on the CPU
//! with the same seeded inputs, at small odd shapes and at the training shapes. Each output's
//! max |Δ| is printed with PASS/FAIL against a per-dtype tolerance; any FAIL makes the exit
//! status 1. Then each op is timed on the device, fused against composite, forward alone and
//! forward+backward (both include the same `Σ y · w` for the backward).

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::fused::compare::{compare, random, Tol};
use crate::fused::{self, reference, AdamWStep};
use crate::fused::clip_coefficient;

/// What to run.
#[derive(Debug, Clone)]
pub struct SelftestOptions {
    /// How the device is named in the report (`cuda:0`).
    pub device_name: String,
    /// Timed calls per measurement, after 2 warm-up calls.
    pub reps: usize,
    /// Only the correctness checks.
    pub no_timing: bool,
    /// Only the small shapes (a quick smoke test; no timing).
    pub small: bool,
}

type Forward = fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// One op at one shape: its inputs (on the CPU), which of them get gradients, and its fused and
/// composite forward over those inputs.
struct Case {
    op: &'static str,
    label: String,
    inputs: Vec<Tensor>,
    /// Output names: "y", then one per gradient input.
    outputs: &'static [&'static str],
    grad_inputs: &'static [usize],
    fused: Forward,
    composite: Forward,
    /// Timed as well as checked.
    timed: bool,
}

/// Device against CPU: the same math in another summation order, with CUDA's expf; bf16 may
/// differ by an ulp where an f32 value lands near a rounding boundary.
fn device_tol(dtype: DType) -> Tol {
    match dtype {
        DType::BF16 => Tol { rel: 1.6e-2, abs: 4e-3 },
        _ => Tol { rel: 1e-4, abs: 1e-5 },
    }
}

const EPS: f64 = 1e-5;
const SCALE: f32 = 0.125; // 1 / sqrt(head_dim 64)

fn rms_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::rms_norm(&a[0], &a[1], EPS)
}
fn rms_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    reference::rms_norm(&a[0], &a[1], EPS)
}
// rope's input is [b, t, h, d], transposed to [b, h, t, d] as attention hands q and k over.
fn rope_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::rope(&a[0].transpose(1, 2)?, &a[1], &a[2])
}
fn rope_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    reference::rope(&a[0].transpose(1, 2)?, &a[1], &a[2])
}
// a[1] is the causal mask, built once as the model does; only the composite uses it.
fn softmax_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::causal_softmax(&a[0], SCALE)
}
fn softmax_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    reference::causal_softmax_masked(&a[0], SCALE, &a[1])
}
fn swiglu_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::swiglu(&a[0], &a[1])
}
fn swiglu_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    reference::swiglu(&a[0], &a[1])
}
fn ce_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::cross_entropy(&a[0], &a[1])
}
fn ce_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    reference::cross_entropy(&a[0], &a[1])
}

fn swap_fused(a: &[Tensor]) -> candle_core::Result<Tensor> {
    fused::swap_middle(&a[0])
}
fn swap_composite(a: &[Tensor]) -> candle_core::Result<Tensor> {
    a[0].transpose(1, 2)?.contiguous()
}

fn shape_label(dims: &[usize], dtype: DType) -> String {
    format!("{dims:?} {}", dtype.as_str())
}

fn cases(small_only: bool) -> Result<Vec<Case>> {
    let mut out = Vec::new();
    for dtype in [DType::BF16, DType::F32] {
        let cast = |t: Tensor| t.to_dtype(dtype);
        // (dims, timed): small odd shapes, then the training ones.
        let rms_shapes: &[(&[usize], bool)] = &[(&[3, 37], false), (&[7, 100], false), (&[32 * 512, 512], true), (&[32 * 512, 768], true)];
        for &(dims, timed) in rms_shapes {
            if small_only && timed {
                continue;
            }
            let h = dims[1];
            out.push(Case {
                op: "rms_norm",
                label: shape_label(dims, dtype),
                inputs: vec![cast(random(dims, 1.0, 1))?, cast((random(&[h], 0.2, 2) + 1.0)?)?],
                outputs: &["y", "dx", "dw"],
                grad_inputs: &[0, 1],
                fused: rms_fused,
                composite: rms_composite,
                timed,
            });
        }
        // [b, t, h, d]
        let rope_shapes: &[(&[usize], bool)] = &[(&[2, 37, 3, 8], false), (&[1, 1, 2, 96], false), (&[32, 512, 8, 64], true), (&[32, 512, 2, 64], true)];
        for &(dims, timed) in rope_shapes {
            if small_only && timed {
                continue;
            }
            let (t, d) = (dims[1], dims[3]);
            let angles = random(&[t, d / 2], 3.0, 3);
            out.push(Case {
                op: "rope",
                label: shape_label(&[dims[0], dims[2], t, d], dtype),
                inputs: vec![cast(random(dims, 1.0, 4))?, cast(angles.cos()?)?, cast(angles.sin()?)?],
                outputs: &["y", "dx"],
                grad_inputs: &[0],
                fused: rope_fused,
                composite: rope_composite,
                timed,
            });
        }
        let softmax_shapes: &[(&[usize], bool)] = &[(&[1, 1, 1, 1], false), (&[1, 2, 37, 37], false), (&[1, 2, 256, 256], false), (&[4, 8, 512, 512], true)];
        for &(dims, timed) in softmax_shapes {
            if small_only && timed {
                continue;
            }
            let t = dims[3];
            out.push(Case {
                op: "causal_softmax",
                label: shape_label(dims, dtype),
                inputs: vec![cast(random(dims, 8.0, 5))?, reference::causal_mask(t, &Device::Cpu)?],
                outputs: &["p", "ds"],
                grad_inputs: &[0],
                fused: softmax_fused,
                composite: softmax_composite,
                timed,
            });
        }
        let swiglu_shapes: &[(&[usize], bool)] = &[(&[3, 37], false), (&[32 * 512, 1408], true)];
        for &(dims, timed) in swiglu_shapes {
            if small_only && timed {
                continue;
            }
            out.push(Case {
                op: "swiglu",
                label: shape_label(dims, dtype),
                inputs: vec![cast(random(dims, 2.0, 6))?, cast(random(dims, 1.0, 7))?],
                outputs: &["y", "dgate", "dup"],
                grad_inputs: &[0, 1],
                fused: swiglu_fused,
                composite: swiglu_composite,
                timed,
            });
        }
        // [b, t, h, d]: rows of 3 (odd: element copies), 64 and 96 (16-byte words) values.
        let swap_shapes: &[(&[usize], bool)] = &[(&[2, 5, 3, 3], false), (&[2, 7, 3, 64], false), (&[32, 512, 8, 64], true), (&[32, 512, 8, 96], true)];
        for &(dims, timed) in swap_shapes {
            if small_only && timed {
                continue;
            }
            out.push(Case {
                op: "swap_middle",
                label: shape_label(dims, dtype),
                inputs: vec![cast(random(dims, 1.0, 9))?],
                outputs: &["y", "dx"],
                grad_inputs: &[0],
                fused: swap_fused,
                composite: swap_composite,
                timed,
            });
        }
        let ce_shapes: &[(&[usize], bool)] = &[(&[3, 37], false), (&[5, 6400], false), (&[32 * 512, 6400], true)];
        for &(dims, timed) in ce_shapes {
            if small_only && timed {
                continue;
            }
            let (n, v) = (dims[0], dims[1]);
            let targets: Vec<u32> = (0..n).map(|i| ((i * 7919 + 13) % v) as u32).collect();
            out.push(Case {
                op: "cross_entropy",
                label: shape_label(dims, dtype),
                inputs: vec![cast(random(dims, 3.0, 8))?, Tensor::from_vec(targets, n, &Device::Cpu)?],
                outputs: &["loss", "dlogits"],
                grad_inputs: &[0],
                fused: ce_fused,
                composite: ce_composite,
                timed,
            });
        }
    }
    Ok(out)
}

/// The case's inputs on `dev`, with the gradient inputs as variables.
fn device_inputs(case: &Case, dev: &Device) -> Result<(Vec<Tensor>, Vec<Var>)> {
    let mut args = case.inputs.iter().map(|t| t.to_device(dev)).collect::<candle_core::Result<Vec<_>>>()?;
    let mut vars = Vec::new();
    for &i in case.grad_inputs {
        let v = Var::from_tensor(&args[i])?;
        args[i] = v.as_tensor().clone();
        vars.push(v);
    }
    Ok((args, vars))
}

/// The weights of `Σ y · w`, seeded, on `dev`.
fn loss_weights(y: &Tensor, dev: &Device) -> Result<Tensor> {
    Ok(random(y.dims(), 1.0, 99).to_dtype(y.dtype())?.to_device(dev)?)
}

/// y and the gradient of each gradient input, with `forward` on `dev`.
fn forward_backward(case: &Case, forward: Forward, dev: &Device) -> Result<Vec<Tensor>> {
    let (args, vars) = device_inputs(case, dev)?;
    let y = forward(&args)?;
    let grads = (&y * loss_weights(&y, dev)?)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for (v, name) in vars.iter().zip(&case.outputs[1..]) {
        let Some(g) = grads.get(v) else { bail!("{} {}: no gradient for {name}", case.op, case.label) };
        out.push(g.clone());
    }
    Ok(out)
}

/// Prints one comparison line; returns whether it passed.
fn report(op: &str, label: &str, output: &str, got: &Tensor, want: &Tensor, tol: Tol) -> bool {
    match compare(got, want, tol) {
        Ok(c) => {
            let verdict = if c.passes() { "PASS" } else { "FAIL" };
            println!("{op:<15} {label:<28} {output:<10} {:>11.3e} {:>11.3e} {:>8.3} {verdict}", c.max_abs_diff, c.max_abs_want, c.worst);
            c.passes()
        }
        Err(e) => {
            println!("{op:<15} {label:<28} {output:<10} FAIL: {e}");
            false
        }
    }
}

fn check_cases(cases: &[Case], dev: &Device) -> Result<usize> {
    let mut failed = 0;
    for case in cases {
        let on_device = forward_backward(case, case.fused, dev);
        let on_cpu = forward_backward(case, case.fused, &Device::Cpu);
        let (on_device, on_cpu) = match (on_device, on_cpu) {
            (Ok(d), Ok(c)) => (d, c),
            (d, c) => {
                let err = d.err().or(c.err()).map(|e| format!("{e:#}")).unwrap_or_default();
                println!("{:<15} {:<28} FAIL: {err}", case.op, case.label);
                failed += 1;
                continue;
            }
        };
        for ((name, d), c) in case.outputs.iter().zip(&on_device).zip(&on_cpu) {
            // The loss of cross_entropy is f32 whatever the logits' dtype.
            if !report(case.op, &case.label, name, d, c, device_tol(d.dtype())) {
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// Gradient-shaped tensors like MiniMind2-small's parameters (hidden 512, 8 layers, GQA 8/2,
/// FFN 1408, vocab 6400): about 26M values.
fn minimind_param_shapes() -> Vec<Vec<usize>> {
    let mut shapes = vec![vec![6400, 512], vec![512]];
    for _ in 0..8 {
        shapes.extend([vec![512, 512], vec![128, 512], vec![128, 512], vec![512, 512]]);
        shapes.extend([vec![1408, 512], vec![1408, 512], vec![512, 1408], vec![512], vec![512]]);
    }
    shapes
}

/// Three clipped AdamW steps of a few parameters (odd sizes included) on the device and on the
/// CPU: sum_of_squares, the trainer's clip coefficient and adamw_step_ together.
fn check_adamw(dev: &Device) -> Result<usize> {
    let shapes: Vec<Vec<usize>> = vec![vec![37], vec![1408, 512], vec![3, 5, 7]];
    let run = |dev: &Device| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let params = shapes.iter().enumerate().map(|(i, s)| random(s, 0.5, 200 + i as u64).to_device(dev)).collect::<candle_core::Result<Vec<_>>>()?;
        let moments = |p: &Tensor| -> candle_core::Result<(Tensor, Tensor)> { Ok((p.zeros_like()?, p.zeros_like()?)) };
        let state = params.iter().map(moments).collect::<candle_core::Result<Vec<_>>>()?;
        let mut totals = Vec::new();
        for step in 1..=3u64 {
            let grads = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| random(s, 2.0, 300 + 10 * step + i as u64).to_device(dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let total = fused::sum_of_squares(&grads)?;
            let coef = clip_coefficient(&total.to_dtype(DType::F64)?.sqrt()?, 1.0)?;
            let h = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step };
            for ((p, (m, v)), g) in params.iter().zip(&state).zip(&grads) {
                fused::adamw_step_(p, m, v, g, &h, Some(&coef))?;
            }
            totals.push(total);
        }
        let mut out = params;
        for (m, v) in state {
            out.extend([m, v]);
        }
        Ok((out, totals))
    };
    let (on_device, totals_device) = run(dev)?;
    let (on_cpu, totals_cpu) = run(&Device::Cpu)?;
    let mut failed = 0;
    let tol = device_tol(DType::F32);
    for (step, (d, c)) in totals_device.iter().zip(&totals_cpu).enumerate() {
        if !report("sum_of_squares", &format!("step {}", step + 1), "total", d, c, tol) {
            failed += 1;
        }
    }
    let n = shapes.len();
    for (i, (d, c)) in on_device.iter().zip(&on_cpu).enumerate() {
        let what = ["param", "exp_avg", "exp_avg_sq"][if i < n { 0 } else { 1 + (i - n) % 2 }];
        let shape = &shapes[if i < n { i } else { (i - n) / 2 }];
        if !report("adamw_step_", &format!("{shape:?} f32, 3 steps"), what, d, c, tol) {
            failed += 1;
        }
    }
    Ok(failed)
}

/// Mean milliseconds per call of `f`, after 2 warm-up calls, synchronising the device.
fn time_ms(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev.synchronize()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    dev.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3 / reps.max(1) as f64)
}

fn time_case(case: &Case, dev: &Device, reps: usize) -> Result<[f64; 4]> {
    let (args, _vars) = device_inputs(case, dev)?;
    let w = loss_weights(&(case.fused)(&args)?, dev)?;
    let fwd = |f: Forward| time_ms(dev, reps, || f(&args).map(drop).map_err(Into::into));
    let fwd_bwd = |f: Forward| {
        time_ms(dev, reps, || {
            (f(&args)? * &w)?.sum_all()?.backward()?;
            Ok(())
        })
    };
    Ok([fwd(case.fused)?, fwd(case.composite)?, fwd_bwd(case.fused)?, fwd_bwd(case.composite)?])
}

/// The optimizer step over MiniMind2-small-shaped gradients: fused (device-side norm, clip
/// coefficient, one kernel per parameter) against the composite (per-tensor norm read back as
/// train/src/step.rs does, scaled gradients, train/src/adamw.rs's update and `Var::set`).
fn time_adamw(dev: &Device, reps: usize) -> Result<[f64; 2]> {
    let shapes = minimind_param_shapes();
    let make = |seed: u64, scale: f32| -> candle_core::Result<Vec<Tensor>> {
        shapes.iter().enumerate().map(|(i, s)| random(s, scale, seed + i as u64).to_device(dev)).collect()
    };
    let params: Vec<Var> = make(400, 0.5)?.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
    let grads = make(500, 1e-2)?;
    let ms: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect::<candle_core::Result<_>>()?;
    let vs: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect::<candle_core::Result<_>>()?;
    let mut step = 0u64;
    let mut hyper = move || {
        step += 1;
        AdamWStep { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step }
    };
    let fused_ms = time_ms(dev, reps, || {
        let h = hyper();
        let coef = clip_coefficient(&fused::sum_of_squares(&grads)?.to_dtype(DType::F64)?.sqrt()?, 1.0)?;
        for (((p, m), v), g) in params.iter().zip(&ms).zip(&vs).zip(&grads) {
            fused::adamw_step_(p, m, v, g, &h, Some(&coef))?;
        }
        Ok(())
    })?;
    let mut state: Vec<(Tensor, Tensor)> = params.iter().map(|p| Ok((p.zeros_like()?, p.zeros_like()?))).collect::<candle_core::Result<_>>()?;
    let composite_ms = time_ms(dev, reps, || {
        let h = hyper();
        let mut sq = 0f64;
        for g in &grads {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let coef = (1.0 / (sq.sqrt() + 1e-6)).min(1.0);
        for (p, (g, (m, v))) in params.iter().zip(grads.iter().zip(state.iter_mut())) {
            let g = (g * coef)?;
            let (np, nm, nv) = reference::adamw_step(p.as_tensor(), m, v, &g, &h)?;
            p.set(&np)?;
            (*m, *v) = (nm, nv);
        }
        Ok(())
    })?;
    Ok([fused_ms, composite_ms])
}

/// Runs the checks (and timings) on `dev`, printing the report; an error when a check fails.
pub fn run(dev: &Device, a: &SelftestOptions) -> Result<()> {
    let dev = dev.clone();
    let cases = cases(a.small)?;
    println!("fused ops on {} against their CPU path, same inputs (loss = Σ y·w for the gradients)", a.device_name);
    println!("{:<15} {:<28} {:<10} {:>11} {:>11} {:>8}", "op", "case", "output", "max|Δ|", "max|cpu|", "×tol");
    let mut failed = check_cases(&cases, &dev)?;
    failed += check_adamw(&dev)?;

    if !a.no_timing && !a.small {
        println!();
        println!("time on {} in ms per call (mean of {} after 2 warm-up calls; fwd+bwd includes Σ y·w and its backward)", a.device_name, a.reps);
        println!("{:<15} {:<28} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}", "op", "case", "fused fwd", "comp fwd", "speedup", "fused f+b", "comp f+b", "speedup");
        for case in cases.iter().filter(|c| c.timed) {
            match time_case(case, &dev, a.reps) {
                Ok([ff, cf, fb, cb]) => println!(
                    "{:<15} {:<28} {ff:>10.3} {cf:>10.3} {:>7.1}x {fb:>10.3} {cb:>10.3} {:>7.1}x",
                    case.op,
                    case.label,
                    cf / ff,
                    cb / fb
                ),
                Err(e) => println!("{:<15} {:<28} timing failed: {e:#}", case.op, case.label),
            }
        }
        match time_adamw(&dev, a.reps) {
            Ok([f, c]) => println!(
                "{:<15} {:<28} {f:>10.3} {c:>10.3} {:>7.1}x   (norm + clip + AdamW over {} tensors)",
                "optimizer step",
                "MiniMind2-small grads f32",
                c / f,
                minimind_param_shapes().len()
            ),
            Err(e) => println!("optimizer step timing failed: {e:#}"),
        }
    }

    println!();
    if failed == 0 {
        println!("PASS: every fused output is within tolerance of the CPU path");
        Ok(())
    } else {
        bail!("{failed} fused check(s) failed")
    }
}
