//! `MiniMind::forward_step_batch`: one decode step over many sequences, each with its own
//! KV cache of its own length, must give every sequence what decoding it alone gives —
//! logits within a small bound, greedy tokens identical — for dense (f32/f16/bf16), MoE,
//! quantized GGUF models and with a LoRA attached, also while sequences join and leave.
//! Also `forward_all_logits` (every prompt position in one pass). All models are random and
//! built here, so nothing needs the shared fixtures.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use mm::converters::gguf::checkpoint::{self as gguf_ckpt, GgufOptions, SourcePrecision};
use mm::converters::gguf::mixture::QuantScheme;
use mm::converters::{Checkpoint, MiniMindConfig, TokenizerFiles};
use mm::model::{GgufModelFile, KvCache, MiniMind};

fn dense_config() -> MiniMindConfig {
    // Q4_K needs rows of 256 values: hidden 256 (FFN 704 goes to Q5_0/Q8_0, as upstream's 1408).
    MiniMindConfig { num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(256, 2) }
}

fn moe_config() -> MiniMindConfig {
    let mut cfg = dense_config();
    cfg.use_moe = true;
    cfg.n_routed_experts = 4;
    cfg.n_shared_experts = 1;
    cfg.num_experts_per_tok = 2;
    cfg
}

fn checkpoint(cfg: &MiniMindConfig, seed: u64) -> Checkpoint {
    mm::model::init::random_checkpoint(cfg, seed, TokenizerFiles::builtin_minimind2()).unwrap()
}

fn model(cfg: &MiniMindConfig, seed: u64, dtype: DType) -> MiniMind {
    MiniMind::from_checkpoint(&checkpoint(cfg, seed), dtype, &Device::Cpu).unwrap()
}

fn gguf_model(cfg: &MiniMindConfig, seed: u64, dir: &Path) -> MiniMind {
    let path = dir.join("m.gguf");
    let options = GgufOptions { scheme: QuantScheme::Q4_K_M, source_precision: SourcePrecision::Exact, name: "t".into() };
    gguf_ckpt::write(&checkpoint(cfg, seed), &path, &options, &|_, _, _| {}).unwrap();
    let file = GgufModelFile::read(&path).unwrap();
    let m = MiniMind::from_gguf(&file, DType::F32, &Device::Cpu).unwrap();
    assert!(m.is_quantized());
    m
}

/// Random LoRA branches (rank 4, B nonzero) on attention and FFN projections of every layer.
fn add_lora(model: &mut MiniMind, seed: u64) {
    let cfg = model.config.clone();
    let dtype = model.dtype();
    let kv = cfg.num_key_value_heads * cfg.head_dim();
    let (h, f) = (cfg.hidden_size, cfg.intermediate_size);
    let mut targets = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        targets.push((format!("model.layers.{l}.self_attn.q_proj"), h, h));
        targets.push((format!("model.layers.{l}.self_attn.v_proj"), kv, h));
        targets.push((format!("model.layers.{l}.self_attn.o_proj"), h, h));
        if cfg.use_moe {
            targets.push((format!("model.layers.{l}.mlp.experts.0.up_proj"), f, h));
            targets.push((format!("model.layers.{l}.mlp.shared_experts.0.down_proj"), h, f));
        } else {
            targets.push((format!("model.layers.{l}.mlp.gate_proj"), f, h));
            targets.push((format!("model.layers.{l}.mlp.down_proj"), h, f));
        }
    }
    for (i, (name, out, inp)) in targets.into_iter().enumerate() {
        let s = seed as f32 + i as f32;
        let wave = |len: usize, f: f32| -> Vec<f32> { (0..len).map(|j| 0.05 * (j as f32 * f + s).sin()).collect() };
        let a = Tensor::from_vec(wave(4 * inp, 0.37), (4, inp), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(wave(out * 4, 0.71), (out, 4), &Device::Cpu).unwrap();
        model.set_lora(&name, a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap()).unwrap();
    }
}

/// Prompts of different lengths (1 to 41 tokens) over the vocabulary.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    [1usize, 7, 23, 4, 41, 12]
        .iter()
        .enumerate()
        .map(|(p, &len)| (0..len).map(|i| ((3 + p * 977 + i * 151 + i * i * 7) % vocab) as u32).collect())
        .collect()
}

fn argmax(row: &Tensor) -> u32 {
    row.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Prefills `prompt` alone; returns its cache and the first greedy token.
fn prefill(model: &MiniMind, prompt: &[u32]) -> (KvCache, u32) {
    let mut cache = KvCache::new(&model.config);
    let input = Tensor::new(prompt, model.device()).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward_last(&input, &mut cache).unwrap().squeeze(0).unwrap();
    (cache, argmax(&logits))
}

/// Greedy decoding of one sequence alone through `forward_last`: the first token (from the
/// prefill), then `steps` decode steps. Returns the tokens (steps + 1) and each step's
/// logits [vocab] f32.
fn alone(model: &MiniMind, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Tensor>) {
    let (mut cache, mut tok) = prefill(model, prompt);
    let mut tokens = vec![tok];
    let mut logits = Vec::new();
    for _ in 0..steps {
        let input = Tensor::new(&[[tok]], model.device()).unwrap();
        let row = model.forward_last(&input, &mut cache).unwrap().squeeze(0).unwrap().to_dtype(DType::F32).unwrap();
        tok = argmax(&row);
        tokens.push(tok);
        logits.push(row);
    }
    (tokens, logits)
}

/// The same through `forward_step_batch` with a batch of one.
fn solo(model: &MiniMind, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Tensor>) {
    let (mut cache, mut tok) = prefill(model, prompt);
    let mut tokens = vec![tok];
    let mut logits = Vec::new();
    for _ in 0..steps {
        let row = model.forward_step_batch(&[tok], &mut [&mut cache]).unwrap().get(0).unwrap();
        tok = argmax(&row);
        tokens.push(tok);
        logits.push(row);
    }
    (tokens, logits)
}

/// A sequence of the batched run: joins (is prefilled) at global step `join` and leaves
/// after `steps` decode steps.
struct Seq {
    prompt: Vec<u32>,
    join: usize,
    steps: usize,
}

/// What a batched run measured against the sequences decoded alone.
#[derive(Debug, Default)]
struct Outcome {
    /// Against `forward_last` alone.
    max_delta: f32,
    /// Against `forward_step_batch` alone (a batch of one): 0 when nothing else in the batch
    /// changes a row.
    max_delta_solo: f32,
    /// (sequence, step, our top-2 logit gap) where the batched greedy token differs.
    token_mismatches: Vec<(usize, usize, f32)>,
    /// Batch sizes of the steps run.
    batch_sizes: Vec<usize>,
}

/// Runs `seqs` through `forward_step_batch` with joins and leaves, comparing each row with
/// the same sequence decoded alone.
fn batched_vs_alone(model: &MiniMind, seqs: &[Seq]) -> Outcome {
    let refs: Vec<(Vec<u32>, Vec<Tensor>)> = seqs.iter().map(|s| alone(model, &s.prompt, s.steps)).collect();
    let solos: Vec<(Vec<u32>, Vec<Tensor>)> = seqs.iter().map(|s| solo(model, &s.prompt, s.steps)).collect();
    // (sequence index, cache, tokens so far)
    let mut active: Vec<(usize, KvCache, Vec<u32>)> = Vec::new();
    let mut done: Vec<Option<Vec<u32>>> = vec![None; seqs.len()];
    let mut out = Outcome::default();
    let last = seqs.iter().map(|s| s.join + s.steps).max().unwrap();
    for step in 0..=last {
        for (i, s) in seqs.iter().enumerate() {
            if s.join == step {
                let (cache, tok) = prefill(model, &s.prompt);
                // Joining sequences go in the middle of the batch, not only at its end.
                let at = active.len() / 2;
                active.insert(at, (i, cache, vec![tok]));
            }
        }
        // Leave: sequences whose decode steps are all done.
        let mut k = 0;
        while k < active.len() {
            let i = active[k].0;
            if active[k].2.len() == seqs[i].steps + 1 {
                done[i] = Some(active.remove(k).2);
            } else {
                k += 1;
            }
        }
        if active.is_empty() {
            continue;
        }
        let tokens: Vec<u32> = active.iter().map(|a| *a.2.last().unwrap()).collect();
        let mut caches: Vec<&mut KvCache> = active.iter_mut().map(|a| &mut a.1).collect();
        let logits = model.forward_step_batch(&tokens, &mut caches).unwrap();
        assert_eq!(logits.dims(), [active.len(), model.config.vocab_size]);
        assert_eq!(logits.dtype(), DType::F32);
        out.batch_sizes.push(active.len());
        for (row, a) in active.iter_mut().enumerate() {
            let i = a.0;
            let local = a.2.len() - 1;
            let got = logits.get(row).unwrap();
            let want = &refs[i].1[local];
            out.max_delta = out.max_delta.max(max_abs_diff(&got, want));
            out.max_delta_solo = out.max_delta_solo.max(max_abs_diff(&got, &solos[i].1[local]));
            let tok = argmax(&got);
            if tok != refs[i].0[local + 1] || tok != solos[i].0[local + 1] {
                let mut v: Vec<f32> = want.to_vec1().unwrap();
                v.sort_by(|a, b| b.total_cmp(a));
                out.token_mismatches.push((i, local, v[0] - v[1]));
            }
            a.2.push(tok);
        }
    }
    for (i, got) in done.iter().enumerate() {
        let got = got.as_ref().unwrap_or_else(|| panic!("sequence {i} never finished"));
        assert_eq!(got.len(), seqs[i].steps + 1);
        if (got != &refs[i].0 || got != &solos[i].0) && out.token_mismatches.iter().all(|m| m.0 != i) {
            panic!("sequence {i}: greedy tokens {got:?} differ from alone {:?}", refs[i].0);
        }
    }
    out
}

/// All prompts together for `steps` steps, then a schedule where sequences join mid-way and
/// leave early. Returns the worst Δ of both; asserts identical greedy tokens.
fn check(what: &str, model: &MiniMind, steps: usize, tol: f32) -> f32 {
    let prompts = prompts(model.config.vocab_size);
    let together: Vec<Seq> = prompts.iter().map(|p| Seq { prompt: p.clone(), join: 0, steps }).collect();
    let a = batched_vs_alone(model, &together);
    // Joins at steps 0, 0, 2, 3, 5, 5; leaves after 3 to 9 steps (the batch grows, shrinks, regrows).
    let joins = [0, 0, 2, 3, 5, 5];
    let lens = [9, 3, 6, 4, 7, 5];
    let churn: Vec<Seq> =
        prompts.iter().enumerate().map(|(i, p)| Seq { prompt: p.clone(), join: joins[i], steps: lens[i] }).collect();
    let b = batched_vs_alone(model, &churn);
    eprintln!(
        "{what}: batched vs forward_last alone max|Δlogit| {:.3e} (all together, batch sizes {:?}), {:.3e} (join/leave, batch sizes {:?}); \
         vs a batch of one {:.3e} / {:.3e}",
        a.max_delta, a.batch_sizes, b.max_delta, b.batch_sizes, a.max_delta_solo, b.max_delta_solo
    );
    // Bit for bit: what else is in the batch never changes a sequence's logits.
    assert_eq!(a.max_delta_solo.max(b.max_delta_solo), 0.0, "{what}: a row depends on the rest of the batch");
    for o in [&a, &b] {
        assert!(o.token_mismatches.is_empty(), "{what}: greedy tokens differ from decoding alone (seq, step, top-2 gap): {:?}", o.token_mismatches);
    }
    let worst = a.max_delta.max(b.max_delta);
    assert!(worst <= tol, "{what}: batched logits differ from decoding alone by {worst} (bound {tol})");
    worst
}

#[test]
fn batched_decode_dense_f32() {
    check("dense f32", &model(&dense_config(), 1, DType::F32), 8, 1e-4);
}

#[test]
fn batched_decode_dense_f16_bf16() {
    let cfg = dense_config();
    check("dense f16", &model(&cfg, 2, DType::F16), 6, 2e-2);
    check("dense bf16", &model(&cfg, 2, DType::BF16), 6, 1e-1);
}

#[test]
fn batched_decode_moe() {
    check("moe f32", &model(&moe_config(), 3, DType::F32), 8, 1e-4);
}

#[test]
fn batched_decode_quantized_gguf() {
    // Against forward_last the float parts sum in another order (~1e-7); the next quantized
    // product rounds its input to Q8, where such a last bit can cross a rounding step and
    // move the logits by up to a few 1e-2 (bound 5e-2; measured figures in the output).
    // Between batch compositions the logits stay identical (`check` asserts it).
    let tmp = tempfile::tempdir().unwrap();
    check("dense q4_k_m gguf", &gguf_model(&dense_config(), 4, tmp.path()), 8, 5e-2);
    let tmp = tempfile::tempdir().unwrap();
    check("moe q4_k_m gguf", &gguf_model(&moe_config(), 5, tmp.path()), 6, 5e-2);
}

#[test]
fn batched_decode_with_lora() {
    let mut m = model(&dense_config(), 6, DType::F32);
    add_lora(&mut m, 1);
    check("dense f32 + lora", &m, 6, 1e-4);
    let mut m = model(&moe_config(), 7, DType::F32);
    add_lora(&mut m, 2);
    check("moe f32 + lora", &m, 6, 1e-4);
    let tmp = tempfile::tempdir().unwrap();
    let mut m = gguf_model(&dense_config(), 8, tmp.path());
    add_lora(&mut m, 3);
    // Quantized base: see batched_decode_quantized_gguf for the bound against forward_last.
    check("dense q4_k_m gguf + lora", &m, 6, 5e-2);
}

#[test]
fn a_batch_of_one_is_the_single_sequence_step() {
    // n = 1 runs the products of forward_last, some padded to more rows (summation order only).
    for (what, m) in [("dense", model(&dense_config(), 9, DType::F32)), ("moe", model(&moe_config(), 9, DType::F32))] {
        let prompt = &prompts(m.config.vocab_size)[2];
        let (mut a, tok) = prefill(&m, prompt);
        let mut b = a.clone();
        let single = m.forward_last(&Tensor::new(&[[tok]], m.device()).unwrap(), &mut a).unwrap();
        let batched = m.forward_step_batch(&[tok], &mut [&mut b]).unwrap();
        let d = max_abs_diff(&single, &batched);
        eprintln!("{what}: batch of one vs forward_last max|Δ| {d:.3e}");
        assert!(d <= 1e-5, "{what}: {d}");
        assert_eq!(a.len(), b.len());
    }
}

#[test]
fn an_empty_cache_decodes_from_position_zero() {
    let m = model(&dense_config(), 10, DType::F32);
    let (mut full, tok) = prefill(&m, &prompts(m.config.vocab_size)[4]);
    let mut empty = KvCache::new(&m.config);
    let logits = m.forward_step_batch(&[tok, 17], &mut [&mut full, &mut empty]).unwrap();
    let (_, alone_logits) = {
        let mut c = KvCache::new(&m.config);
        let l = m.forward_last(&Tensor::new(&[[17u32]], m.device()).unwrap(), &mut c).unwrap();
        (c, l)
    };
    assert!(max_abs_diff(&logits.get(1).unwrap().unsqueeze(0).unwrap(), &alone_logits) <= 1e-4);
    assert_eq!(empty.len(), 1);
    // Mismatched inputs are errors, not panics.
    assert!(m.forward_step_batch(&[1, 2], &mut [&mut empty]).is_err());
    assert!(m.forward_step_batch(&[], &mut []).is_err());
}

#[test]
fn all_prompt_logits_in_one_pass() {
    for (what, m) in [("dense", model(&dense_config(), 11, DType::F32)), ("moe", model(&moe_config(), 11, DType::F32))] {
        let prompt = &prompts(m.config.vocab_size)[4];
        let mut cache = KvCache::new(&m.config);
        let all = m.forward_all_logits(prompt, &mut cache).unwrap();
        assert_eq!(all.dims(), [prompt.len(), m.config.vocab_size]);
        assert_eq!(all.dtype(), DType::F32);
        assert_eq!(cache.len(), prompt.len());
        // Row j is the next-token distribution after prompt[..=j]: the last row is forward_last's
        // and every row matches a token-by-token decode.
        let (mut c2, _) = (KvCache::new(&m.config), ());
        let last = m.forward_last(&Tensor::new(prompt.as_slice(), m.device()).unwrap().unsqueeze(0).unwrap(), &mut c2).unwrap();
        // (forward_last runs the head on one row, this on all: the product may sum in another order.)
        let d = max_abs_diff(&all.get(prompt.len() - 1).unwrap().unsqueeze(0).unwrap(), &last);
        assert!(d <= 1e-5, "{what}: last row differs from forward_last by {d}");
        let mut c3 = KvCache::new(&m.config);
        let mut worst = 0f32;
        for (j, &t) in prompt.iter().enumerate() {
            let row = m.forward_last(&Tensor::new(&[[t]], m.device()).unwrap(), &mut c3).unwrap().squeeze(0).unwrap();
            worst = worst.max(max_abs_diff(&all.get(j).unwrap(), &row));
        }
        eprintln!("{what}: forward_all_logits vs token-by-token max|Δ| {worst:.3e}");
        assert!(worst <= 1e-4, "{what}: {worst}");
        // It extends a cache like any prefill: the continuation after it matches one pass over both.
        let more = [5u32, 6, 7];
        let cont = m.forward_all_logits(&more, &mut cache).unwrap();
        let both: Vec<u32> = prompt.iter().chain(&more).copied().collect();
        let whole = m.forward_all_logits(&both, &mut KvCache::new(&m.config)).unwrap();
        let d = max_abs_diff(&cont, &whole.narrow(0, prompt.len(), more.len()).unwrap());
        assert!(d <= 1e-4, "{what}: continuation differs by {d}");
        assert!(m.forward_all_logits(&[], &mut KvCache::new(&m.config)).is_err());
    }
}

/// User + system CPU time of this process so far, from /proc/self/stat (0 where absent).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    if f.len() < 13 {
        return 0.0;
    }
    // USER_HZ is 100 on Linux.
    (f[11] + f[12]) / 100.0
}

/// Not a test: decode tokens/s of the MiniMind2-small shape (random weights) at batch 1, 4 and
/// 16, one `forward_step_batch` per step against n `forward_last` calls per step.
/// `cargo test --release --test batched_decode -- --ignored --nocapture bench`
/// (`MM_BENCH_GGUF=1` also runs a Q4_K_M export; `MM_BENCH_PROMPT`, `MM_BENCH_STEPS`: prompt
/// length (64) and decode steps (48)).
#[test]
#[ignore]
fn bench_batched_decode_small() {
    let cfg = MiniMindConfig::preset("small").unwrap();
    let mut models = vec![("small f32", model(&cfg, 0, DType::F32))];
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("MM_BENCH_GGUF").is_some() {
        models.push(("small q4_k_m", gguf_model(&cfg, 0, tmp.path())));
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let prompt_len = env("MM_BENCH_PROMPT", 64);
    let steps = env("MM_BENCH_STEPS", 48);
    for (what, m) in &models {
        for n in [1usize, 4, 16] {
            let prompts: Vec<Vec<u32>> =
                (0..n).map(|s| (0..prompt_len + s).map(|i| ((7 + s * 131 + i * 53) % cfg.vocab_size) as u32).collect()).collect();
            let start: Vec<(KvCache, u32)> = prompts.iter().map(|p| prefill(m, p)).collect();
            // Warm-up (the first batched step also makes the transposed weight copies).
            let mut warm = start[0].0.clone();
            m.forward_step_batch(&[start[0].1], &mut [&mut warm]).unwrap();
            // Best of three alternating runs of each (the machine is shared), by wall clock and
            // by this process's CPU time.
            let (mut sep_tps, mut bat_tps) = (0f64, 0f64);
            let (mut sep_cpu, mut bat_cpu) = (0f64, 0f64);
            let (mut sep, mut bat) = (start.clone(), start.clone());
            for _ in 0..3 {
                // n separate single-sequence steps.
                sep = start.clone();
                let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
                for _ in 0..steps {
                    for (cache, tok) in sep.iter_mut() {
                        let l = m.forward_last(&Tensor::new(&[[*tok]], m.device()).unwrap(), cache).unwrap();
                        *tok = argmax(&l.squeeze(0).unwrap());
                    }
                }
                sep_tps = sep_tps.max((n * steps) as f64 / t0.elapsed().as_secs_f64());
                sep_cpu = sep_cpu.max((n * steps) as f64 / (cpu_seconds() - c0));
                // One batched step.
                bat = start.clone();
                let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
                for _ in 0..steps {
                    let tokens: Vec<u32> = bat.iter().map(|b| b.1).collect();
                    let mut caches: Vec<&mut KvCache> = bat.iter_mut().map(|b| &mut b.0).collect();
                    let l = m.forward_step_batch(&tokens, &mut caches).unwrap();
                    for (row, b) in bat.iter_mut().enumerate() {
                        b.1 = argmax(&l.get(row).unwrap());
                    }
                }
                bat_tps = bat_tps.max((n * steps) as f64 / t0.elapsed().as_secs_f64());
                bat_cpu = bat_cpu.max((n * steps) as f64 / (cpu_seconds() - c0));
            }
            let same = sep.iter().zip(&bat).all(|(a, b)| a.1 == b.1);
            eprintln!(
                "{what}: batch {n:>2}: forward_step_batch {bat_tps:6.1} tok/s ({bat_cpu:6.1} per CPU-s), {n:>2} × forward_last {sep_tps:6.1} tok/s \
                 ({sep_cpu:6.1} per CPU-s): {:.2}× ({:.2}× per CPU-s), same last tokens: {same}",
                bat_tps / sep_tps,
                bat_cpu / sep_cpu
            );
        }
    }
}


#[test]
fn a_row_is_the_same_bits_in_any_batch() {
    // Batch sizes across gemm's kernel switches (1 row; m·out ≤ 256; m = 64), for every kind.
    let tmp = tempfile::tempdir().unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    let mut kinds = vec![
        ("dense f32", model(&dense_config(), 12, DType::F32)),
        // MiniMind2-small's shape: products deeper than one 512 slice (FFN 1408).
        ("small f32", model(&MiniMindConfig::preset("small").unwrap(), 12, DType::F32)),
        ("dense bf16", model(&dense_config(), 12, DType::BF16)),
        ("moe f16", model(&moe_config(), 12, DType::F16)),
        ("dense q4_k_m gguf", gguf_model(&dense_config(), 12, tmp.path())),
        ("moe q4_k_m gguf", gguf_model(&moe_config(), 12, tmp2.path())),
    ];
    let mut lora = model(&moe_config(), 13, DType::F32);
    add_lora(&mut lora, 4);
    kinds.push(("moe f32 + lora", lora));
    for (what, m) in &kinds {
        let prompts = prompts(m.config.vocab_size);
        let start: Vec<(KvCache, u32)> = prompts.iter().map(|p| prefill(m, p)).collect();
        let row0 = |n: usize| -> Tensor {
            // Sequence 0 first, then the others round and round.
            let members: Vec<usize> = (0..n).map(|j| j % prompts.len()).collect();
            let mut caches: Vec<KvCache> = members.iter().map(|&i| start[i].0.clone()).collect();
            let tokens: Vec<u32> = members.iter().map(|&i| start[i].1).collect();
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            m.forward_step_batch(&tokens, &mut refs).unwrap().get(0).unwrap()
        };
        let alone = row0(1);
        for n in [2, 3, 5, 17, 70] {
            let d = max_abs_diff(&alone, &row0(n));
            assert_eq!(d, 0.0, "{what}: sequence 0 in a batch of {n} differs from alone by {d}");
        }
        eprintln!("{what}: row identical alone and in batches of 2, 3, 5, 17, 70");
    }
}

#[test]
fn kv_cache_grows_and_clones_stay_apart() {
    // The cache's buffers grow in steps of 256 positions and are written in place: decode two
    // clones of one prefilled cache with different tokens across a growth step, and check
    // each against one pass over its whole sequence.
    let m = model(&dense_config(), 14, DType::F32);
    let prompt: Vec<u32> = (0..250).map(|i| (11 + i * 37) % 6400).collect();
    let (mut a, _) = prefill(&m, &prompt);
    let mut b = a.clone();
    let xs: Vec<u32> = (0..12).map(|i| 100 + i).collect();
    let ys: Vec<u32> = (0..12).map(|i| 4000 + 3 * i).collect();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for (x, y) in xs.iter().zip(&ys) {
        // Alternate: batched (both together), then each alone through forward_last.
        if got_a.len() % 2 == 0 {
            let l = m.forward_step_batch(&[*x, *y], &mut [&mut a, &mut b]).unwrap();
            got_a.push(l.get(0).unwrap());
            got_b.push(l.get(1).unwrap());
        } else {
            for (c, t, got) in [(&mut a, *x, &mut got_a), (&mut b, *y, &mut got_b)] {
                got.push(m.forward_last(&Tensor::new(&[[t]], m.device()).unwrap(), c).unwrap().squeeze(0).unwrap());
            }
        }
    }
    assert_eq!((a.len(), b.len()), (262, 262));
    for (toks, got) in [(&xs, &got_a), (&ys, &got_b)] {
        let all: Vec<u32> = prompt.iter().chain(toks.iter()).copied().collect();
        let want = m.forward_all_logits(&all, &mut KvCache::new(&m.config)).unwrap();
        for (j, row) in got.iter().enumerate() {
            let d = max_abs_diff(row, &want.get(prompt.len() + j).unwrap());
            assert!(d <= 1e-4, "step {j}: {d}");
        }
    }
}
