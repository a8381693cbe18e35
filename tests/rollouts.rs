//! `train::rollout::sample_rollouts`: n completions per prompt through batched decode steps.
//! Each row must be what `generate` gives for its prompt and seed (the CPU engine: bit for bit),
//! must not depend on the other rows of the batch (candle's ops too), must end at its first EOS
//! or at `max_new_tokens`, and its padded ids and mask must follow upstream's layout. Random
//! models built here; nothing needs the shared fixtures.

use candle_core::{DType, Device};
use mm::converters::{MiniMindConfig, TokenizerFiles};
use mm::generate::{generate, FinishReason, Sampler, SamplingParams};
use mm::model::MiniMind;
use mm::train::rollout::{sample_rollouts, sample_rollouts_in_one_batch, upstream_params, Rollouts};

fn model(cpu_engine: bool) -> MiniMind {
    let cfg = MiniMindConfig { num_attention_heads: 4, num_key_value_heads: 2, ..MiniMindConfig::with_hidden(64, 2) };
    let ckpt = mm::model::init::random_checkpoint(&cfg, 11, TokenizerFiles::builtin_minimind2()).unwrap();
    let mut m = MiniMind::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap();
    m.set_cpu_engine(cpu_engine);
    m
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 320, 77, 2001, 15], vec![1, 9], vec![1, 4000, 4001, 4002, 33, 34, 35, 36, 37, 38, 39]]
}

/// Few candidates per step, so tokens repeat and an EOS drawn from them is likely.
fn params(max_new: usize) -> SamplingParams {
    SamplingParams { top_k: 4, ..upstream_params(max_new, 1234) }
}

/// An id this model samples often after the prompts: the commonest first token of a probe run.
fn frequent_token(m: &MiniMind) -> u32 {
    let probe = sample_rollouts(m, &prompts(), 6, &params(4), 0).unwrap();
    let mut counts = std::collections::HashMap::new();
    for r in probe.rows.iter().filter(|r| r.completion[0] != 0) {
        *counts.entry(r.completion[0]).or_insert(0) += 1;
    }
    counts.into_iter().max_by_key(|&(id, c)| (c, std::cmp::Reverse(id))).unwrap().0
}

fn check_layout(r: &Rollouts, eos: u32, max_new: usize, pad: u32) {
    let width = r.width();
    let ids = r.padded_completions(pad);
    let mask = r.completion_mask();
    assert_eq!(ids.len(), r.rows.len() * width);
    assert_eq!(mask.len(), ids.len());
    for (k, row) in r.rows.iter().enumerate() {
        assert_eq!((row.prompt, row.sample), (k / r.per_prompt, k % r.per_prompt));
        let first_eos = row.completion.iter().position(|&t| t == eos);
        match row.finish {
            FinishReason::Stop => assert_eq!(first_eos, Some(row.completion.len() - 1), "a row ends at its first EOS"),
            FinishReason::Length => {
                assert_eq!(first_eos, None);
                assert_eq!(row.completion.len(), max_new);
            }
        }
        // Upstream's mask recomputed from the padded ids: up to and including the first EOS.
        let padded = &ids[k * width..(k + 1) * width];
        let end = padded.iter().position(|&t| t == eos).map_or(width, |i| i + 1);
        let expected: Vec<f32> = (0..width).map(|i| if i < end { 1.0 } else { 0.0 }).collect();
        assert_eq!(&mask[k * width..(k + 1) * width], expected.as_slice());
        assert_eq!(r.lengths()[k], end);
    }
}

#[test]
fn rows_match_generate_on_the_cpu_engine() {
    let m = model(true);
    assert!(m.prepare_cpu_engine());
    let eos = frequent_token(&m);
    let max_new = 12;
    let r = sample_rollouts(&m, &prompts(), 4, &params(max_new), eos).unwrap();
    assert_eq!(r.rows.len(), 12);
    let stops = r.rows.iter().filter(|x| x.finish == FinishReason::Stop).count();
    assert!(stops > 0 && stops < r.rows.len(), "want rows ending both ways, got {stops} EOS of {}", r.rows.len());
    check_layout(&r, eos, max_new, 0);
    let seeds: std::collections::HashSet<u64> = r.rows.iter().map(|x| x.seed).collect();
    assert_eq!(seeds.len(), r.rows.len(), "every row has its own seed");
    for row in &r.rows {
        let p = SamplingParams { seed: row.seed, stop_ids: vec![eos], ..params(max_new) };
        let alone = generate(&m, &prompts()[row.prompt], &mut Sampler::new(p).unwrap(), |_| Ok(true)).unwrap();
        assert_eq!(row.completion, alone, "row {}/{}", row.prompt, row.sample);
    }
    // The same call again gives the same rows.
    assert_eq!(sample_rollouts(&m, &prompts(), 4, &params(max_new), eos).unwrap(), r);
}

#[test]
fn rows_do_not_depend_on_the_batch_with_candles_ops() {
    let m = model(false);
    assert!(!m.prepare_cpu_engine());
    let eos = frequent_token(&m);
    let all = sample_rollouts(&m, &prompts(), 3, &params(10), eos).unwrap();
    check_layout(&all, eos, 10, 0);
    // Prompt 0's rows have the same seeds alone; its batch is the other prompts' rows or none.
    let alone = sample_rollouts(&m, &prompts()[..1], 3, &params(10), eos).unwrap();
    assert_eq!(alone.rows, all.rows[..3]);
}

/// The GPU's layout (one left-padded batch, ended rows fed pads) gives each row what the
/// per-row path gives: the same tokens, greedy and sampled, EOS and length ends alike.
#[test]
fn one_padded_batch_gives_the_per_row_rollouts() {
    let m = model(false);
    let eos = frequent_token(&m);
    let greedy = SamplingParams { temperature: 0.0, ..params(12) };
    for p in [params(12), greedy] {
        let per_row = sample_rollouts(&m, &prompts(), 4, &p, eos).unwrap();
        let batched = sample_rollouts_in_one_batch(&m, &prompts(), 4, &p, eos, 0).unwrap();
        check_layout(&batched, eos, 12, 0);
        assert_eq!(batched, per_row, "temperature {}", p.temperature);
    }
    let p = params(12);
    let stops = sample_rollouts_in_one_batch(&m, &prompts(), 4, &p, eos, 0).unwrap().rows.iter().filter(|x| x.finish == FinishReason::Stop).count();
    assert!(stops > 0 && stops < 12, "want rows ending both ways, got {stops} EOS of 12");
    // A rank holding prompts 1.. of a batch samples the rows one process would.
    let whole = sample_rollouts_in_one_batch(&m, &prompts(), 4, &p, eos, 0).unwrap();
    let tail = sample_rollouts_in_one_batch(&m, &prompts()[1..], 4, &p, eos, 1).unwrap();
    assert_eq!(tail.rows.iter().map(|r| &r.completion).collect::<Vec<_>>(), whole.rows[4..].iter().map(|r| &r.completion).collect::<Vec<_>>());
}

#[test]
fn left_padded_sequences_are_upstreams_outputs() {
    let m = model(true);
    let ps = prompts();
    let r = sample_rollouts(&m, &ps, 2, &params(6), frequent_token(&m)).unwrap();
    let (ids, prompt_width) = r.left_padded_sequences(&ps, 0).unwrap();
    assert_eq!(prompt_width, 11);
    let (width, completions) = (r.width(), r.padded_completions(0));
    let row_len = prompt_width + width;
    assert_eq!(ids.len(), r.rows.len() * row_len);
    for (k, row) in r.rows.iter().enumerate() {
        let seq = &ids[k * row_len..(k + 1) * row_len];
        let prompt = &ps[row.prompt];
        assert!(seq[..prompt_width - prompt.len()].iter().all(|&t| t == 0));
        assert_eq!(&seq[prompt_width - prompt.len()..prompt_width], prompt.as_slice());
        assert_eq!(&seq[prompt_width..], &completions[k * width..(k + 1) * width]);
    }
    let (t_ids, t_mask) = r.tensors(0, &Device::Cpu).unwrap();
    assert_eq!(t_ids.dims(), &[6, width]);
    assert_eq!(t_mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(), r.completion_mask());
}

#[test]
fn bad_requests_are_errors() {
    let m = model(true);
    let p = params(4);
    // Both layouts refuse alike; the message is the per-row path's.
    let err = |prompts: &[Vec<u32>], n: usize, p: &SamplingParams, eos: u32| {
        let batched = format!("{:#}", sample_rollouts_in_one_batch(&m, prompts, n, p, eos, 0).unwrap_err());
        let per_row = format!("{:#}", sample_rollouts(&m, prompts, n, p, eos).unwrap_err());
        assert_eq!(batched, per_row);
        per_row
    };
    assert!(err(&[vec![1, 2], vec![]], 2, &p, 2).contains("prompt 1: empty prompt"));
    assert!(err(&prompts(), 0, &p, 2).contains("at least one sample"));
    assert!(err(&prompts(), 2, &params(0), 2).contains("max_new_tokens > 0"));
    assert!(err(&prompts(), 2, &p, 6400).contains("outside the vocabulary"));
    let long = vec![5u32; m.config.max_position_embeddings];
    assert!(err(&[long], 1, &p, 2).contains("fills the model's"));
    assert!(err(&prompts(), 1, &SamplingParams { top_p: 0.0, ..p.clone() }, 2).contains("top_p"));
    // No prompts, no rows.
    assert!(sample_rollouts(&m, &[], 3, &p, 2).unwrap().rows.is_empty());
    assert!(sample_rollouts_in_one_batch(&m, &[], 3, &p, 2, 0).unwrap().rows.is_empty());
}

#[test]
fn rollouts_are_capped_by_the_context() {
    let mut m = model(true);
    m.config.max_position_embeddings = 16;
    // 11 prompt tokens leave 5 positions although 12 were asked for.
    let r = sample_rollouts(&m, &prompts()[2..], 2, &params(12), 6399).unwrap();
    assert!(r.rows.iter().all(|x| x.completion.len() <= 5));
    // One padded batch cannot give the shorter prompts more room than the longest has.
    let err = sample_rollouts_in_one_batch(&m, &prompts(), 2, &params(12), 6399, 0).unwrap_err();
    assert!(format!("{err:#}").contains("do not fit the model's 16-position context"), "{err:#}");
    assert_eq!(sample_rollouts_in_one_batch(&m, &prompts(), 2, &params(5), 6399, 0).unwrap().rows.len(), 6);
}

/// The toy reasoning-format task (dataset/samples/README.md): the SFT replies mix formats in
/// the documented proportions and rewards, the RL prompts are unseen sums with their answer.
#[test]
fn toy_task_replies_span_the_reasoning_reward() {
    use mm::train::rewards::reasoning_reward;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dataset/samples");
    let read = |name: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["conversations"].as_array().unwrap().iter().map(|t| t["content"].as_str().unwrap().to_string()).collect()
            })
            .collect()
    };
    let sft = read("rlaif_toy_sft.jsonl");
    let mut rewards: Vec<f32> = sft.iter().map(|c| reasoning_reward(&c[1])).collect();
    rewards.sort_by(f32::total_cmp);
    assert_eq!(sft.len(), 48);
    assert_eq!(rewards.iter().filter(|&&r| r == 0.0).count(), 12);
    assert_eq!(rewards.iter().filter(|&&r| r == 0.5).count(), 18);
    assert_eq!(rewards.iter().filter(|&&r| r == 1.5).count(), 18);
    let rl = read("rlaif_toy.jsonl");
    assert_eq!(rl.len(), 32);
    let sft_questions: std::collections::HashSet<&str> = sft.iter().map(|c| c[0].as_str()).collect();
    for c in &rl {
        assert_eq!(c.len(), 2);
        assert!(!sft_questions.contains(c[0].as_str()), "RL prompt {:?} is in the SFT set", c[0]);
        let digits: Vec<u32> = c[0].chars().filter_map(|ch| ch.to_digit(10)).collect();
        assert_eq!(c[1], (digits[0] + digits[1]).to_string());
    }
}
