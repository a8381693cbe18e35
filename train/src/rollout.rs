//! Batched sampling for RLAIF rollouts: `n` completions per prompt, as upstream's trainers get
//! from HF `generate(..., do_sample=True, temperature=0.8, num_return_sequences=n)`.
//!
//! Each prompt is prefilled once and its KV cache cloned for its `n` rows; then every live
//! row advances one token per batched forward (`MiniMind::forward_step_batch`). A row ends at
//! its own EOS (kept as its last token) or at `max_new_tokens` and leaves the batch at once.
//! Each row samples with its own seeded RNG, so a row's tokens depend only on its prompt and
//! seed: they are what [`generate`](mm_model::generate::generate) gives for that prompt and seed
//! (bit for bit on the CPU engine, whose rows do not depend on the batch).
//!
//! Upstream left-pads the prompts of a batch and masks the pads; mm runs each prompt alone
//! instead. The two agree: upstream's RoPE positions count the pads, but every real token of a
//! row is shifted by the same amount and RoPE scores depend only on position differences.

use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor};

use mm_model::generate::{FinishReason, Sampler, SamplingParams, Sequence};
use mm_model::model::{KvCache, MiniMind, Mode};

/// Upstream's rollout sampling: temperature 0.8 and HF `generate`'s other defaults (top-k 50,
/// top-p 1.0, no repetition penalty), `max_gen_len` new tokens.
pub fn upstream_params(max_gen_len: usize, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 1.0,
        top_k: 50,
        repetition_penalty: 1.0,
        max_new_tokens: max_gen_len,
        seed,
        stop_ids: Vec::new(),
    }
}

/// The seed of row `row` (prompt `i`, sample `j`: row `i * n + j`) of a call seeded `seed`.
/// SplitMix64 of the pair, so neighbouring seeds and rows give unrelated streams.
pub fn row_seed(seed: u64, row: usize) -> u64 {
    let mut z = seed.wrapping_add((row as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of its prompt in the call's `prompts`.
    pub prompt: usize,
    /// Which of the prompt's `n` samples it is.
    pub sample: usize,
    /// The seed its sampler ran with.
    pub seed: u64,
    /// The new tokens; an EOS, when generated, is the last one.
    pub completion: Vec<u32>,
    pub finish: FinishReason,
}

impl Rollout {
    /// Tokens upstream's completion mask covers: up to and including the first EOS, or all.
    pub fn mask_len(&self) -> usize {
        self.completion.len()
    }

    /// Whether it ended at EOS (rather than running out of `max_new_tokens`).
    pub fn ended_at_eos(&self) -> bool {
        self.finish == FinishReason::Stop
    }
}

/// The completions of one call, in upstream's row order (prompt-major: row `i * n + j`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollouts {
    pub rows: Vec<Rollout>,
    pub per_prompt: usize,
}

impl Rollouts {
    /// The longest completion: upstream's completion width `R`.
    pub fn width(&self) -> usize {
        self.rows.iter().map(|r| r.completion.len()).max().unwrap_or(0)
    }

    /// Completion ids [rows, R] row-major, each row padded after its end with `pad` (what HF
    /// `generate` writes after a finished row).
    pub fn padded_completions(&self, pad: u32) -> Vec<u32> {
        let width = self.width();
        let mut ids = Vec::with_capacity(self.rows.len() * width);
        for r in &self.rows {
            ids.extend_from_slice(&r.completion);
            ids.resize(ids.len() + width - r.completion.len(), pad);
        }
        ids
    }

    /// Upstream's completion mask [rows, R] row-major: 1 up to and including a row's first
    /// EOS, 1 everywhere for a row without one (it ran to `max_new_tokens`, so it is `R`
    /// long), 0 on the padding.
    pub fn completion_mask(&self) -> Vec<f32> {
        let width = self.width();
        let mut mask = Vec::with_capacity(self.rows.len() * width);
        for r in &self.rows {
            mask.extend(std::iter::repeat_n(1.0, r.mask_len()));
            mask.resize(mask.len() + width - r.mask_len(), 0.0);
        }
        mask
    }

    /// Tokens under each row's mask (upstream's `completion_mask.sum(dim=1)`, the response
    /// length it logs).
    pub fn lengths(&self) -> Vec<usize> {
        self.rows.iter().map(Rollout::mask_len).collect()
    }

    /// Upstream's `outputs` of `generate`: each row's prompt left-padded with `pad` to the
    /// longest prompt `P`, then its padded completion; [rows, P + R] row-major, with `P`.
    pub fn left_padded_sequences(&self, prompts: &[Vec<u32>], pad: u32) -> Result<(Vec<u32>, usize)> {
        let width = self.width();
        let prompt_width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let completions = self.padded_completions(pad);
        let mut ids = Vec::with_capacity(self.rows.len() * (prompt_width + width));
        for (r, completion) in self.rows.iter().zip(completions.chunks(width.max(1))) {
            let Some(prompt) = prompts.get(r.prompt) else {
                bail!("rollout of prompt {} but only {} prompts given", r.prompt, prompts.len());
            };
            ids.resize(ids.len() + prompt_width - prompt.len(), pad);
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(&completion[..width]);
        }
        Ok((ids, prompt_width))
    }

    /// [`padded_completions`](Self::padded_completions) (u32) and
    /// [`completion_mask`](Self::completion_mask) (f32) as [rows, R] tensors on `device`.
    pub fn tensors(&self, pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
        let shape = (self.rows.len(), self.width());
        let ids = Tensor::from_vec(self.padded_completions(pad), shape, device)?;
        let mask = Tensor::from_vec(self.completion_mask(), shape, device)?;
        Ok((ids, mask))
    }
}

/// A row still being sampled.
struct Live {
    row: usize,
    cache: KvCache,
    sampler: Sampler,
    seq: Sequence,
    last: u32,
}

/// Samples `n_per_prompt` completions of every prompt (see the module docs). `params` gives
/// the sampling settings, `max_new_tokens` and the base seed (row seeds: [`row_seed`]); its
/// `stop_ids` are replaced by `eos`, the only token that ends a row (upstream's mask knows
/// no other).
pub fn sample_rollouts(
    model: &MiniMind,
    prompts: &[Vec<u32>],
    n_per_prompt: usize,
    params: &SamplingParams,
    eos: u32,
) -> Result<Rollouts> {
    sample_rollouts_at(model, prompts, n_per_prompt, params, eos, 0)
}

/// [`sample_rollouts`] of prompts that sit from `first_prompt` on in a larger batch: the
/// row seeds are those of that batch's rows, so a data-parallel rank samples exactly what
/// one process given the whole batch would.
pub fn sample_rollouts_at(
    model: &MiniMind,
    prompts: &[Vec<u32>],
    n_per_prompt: usize,
    params: &SamplingParams,
    eos: u32,
    first_prompt: usize,
) -> Result<Rollouts> {
    check_request(model, n_per_prompt, params, eos)?;
    let context = model.config.max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if !model.device().is_cpu() && longest + params.max_new_tokens <= context {
        return sample_rollouts_in_one_batch(model, prompts, n_per_prompt, params, eos, first_prompt);
    }
    let mut done: Vec<Option<Rollout>> = vec![None; prompts.len() * n_per_prompt];
    let mut live: Vec<Live> = Vec::with_capacity(done.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let row_params = |j: usize| params_of_row(params, eos, (first_prompt + i) * n_per_prompt + j);
        // Every row of the prompt has the same limits; the first one checks the prompt.
        let seq = Sequence::new(prompt, &row_params(0), context).map_err(|e| e.context(format!("prompt {i}")))?;
        let mut cache = KvCache::new(&model.config);
        let ids = Tensor::new(prompt.as_slice(), model.device())?.unsqueeze(0)?;
        let logits: Vec<f32> = model.forward_last(&ids, &mut cache)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
        for j in 0..n_per_prompt {
            let p = row_params(j);
            let row = i * n_per_prompt + j;
            let mut sampler = Sampler::new(p.clone())?;
            let mut seq = seq.clone();
            let (token, finish) = seq.push(&mut sampler, &logits);
            match finish {
                Some(finish) => done[row] = Some(finished(row, n_per_prompt, p.seed, seq, finish)),
                None => {
                    // The last row takes the prompt's cache itself rather than a copy.
                    let cache = if j + 1 == n_per_prompt { std::mem::replace(&mut cache, KvCache::new(&model.config)) } else { cache.clone() };
                    live.push(Live { row, cache, sampler, seq, last: token });
                }
            }
        }
    }
    while !live.is_empty() {
        let tokens: Vec<u32> = live.iter().map(|l| l.last).collect();
        let logits: Vec<Vec<f32>> = {
            let mut caches: Vec<&mut KvCache> = live.iter_mut().map(|l| &mut l.cache).collect();
            model.forward_step_batch(&tokens, &mut caches)?.to_dtype(DType::F32)?.to_vec2()?
        };
        let mut still = Vec::with_capacity(live.len());
        for (mut l, row_logits) in live.into_iter().zip(logits) {
            let (token, finish) = l.seq.push(&mut l.sampler, &row_logits);
            match finish {
                Some(finish) => done[l.row] = Some(finished(l.row, n_per_prompt, l.sampler.params().seed, l.seq, finish)),
                None => {
                    l.last = token;
                    still.push(l);
                }
            }
        }
        live = still;
    }
    // Every row ends: each step adds a token to each live row and rows are capped.
    let rows = done.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| anyhow!("a rollout row never finished"))?;
    Ok(Rollouts { rows, per_prompt: n_per_prompt })
}

/// [`sample_rollouts_at`] on a GPU: every row of the call decodes in one batch over one KV
/// cache, the prompts left-padded to the longest with their pads masked (upstream's layout:
/// RoPE positions count the pads, which shifts all of a row's positions alike), and a row
/// that has ended fed a pad until the last one ends, as HF `generate` does. One batched
/// forward per token: the per-row attention of the general path launches each of its kernels
/// once per row, and on a GPU those launches, not the arithmetic, set the pace. The rows'
/// samplers and seeds are the general path's; their logits differ from it by rounding only.
/// Public so that tests can run it on the CPU too.
pub fn sample_rollouts_in_one_batch(
    model: &MiniMind,
    prompts: &[Vec<u32>],
    n_per_prompt: usize,
    params: &SamplingParams,
    eos: u32,
    first_prompt: usize,
) -> Result<Rollouts> {
    // The id fed at masked positions and after a row's end; no output is read there.
    const PAD: u32 = 0;
    check_request(model, n_per_prompt, params, eos)?;
    if prompts.is_empty() {
        return Ok(Rollouts { rows: Vec::new(), per_prompt: n_per_prompt });
    }
    let device = model.device();
    let context = model.config.max_position_embeddings;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let rows = prompts.len() * n_per_prompt;
    let mut states = Vec::with_capacity(rows);
    // Each row's left pads: the only masked positions, whatever the step.
    let mut pads = Vec::with_capacity(rows);
    let mut ids = Vec::with_capacity(rows * width);
    for (i, prompt) in prompts.iter().enumerate() {
        for j in 0..n_per_prompt {
            let p = params_of_row(params, eos, (first_prompt + i) * n_per_prompt + j);
            let seq = Sequence::new(prompt, &p, context).map_err(|e| e.context(format!("prompt {i}")))?;
            states.push(Some((Sampler::new(p)?, seq)));
            pads.push(width - prompt.len());
            ids.extend(std::iter::repeat_n(PAD, width - prompt.len()).chain(prompt.iter().copied()));
        }
    }
    // The padding mask [rows, len] for `len` positions so far: 0 on a row's pads, 1 after them
    // (an ended row's positions count as real; its output is not read).
    let padding = |len: usize| {
        let mask: Vec<f32> = pads.iter().flat_map(|&p| (0..len).map(move |pos| if pos < p { 0.0 } else { 1.0 })).collect();
        Tensor::from_vec(mask, (rows, len), device)
    };
    // Every row's positions run to the longest prompt plus its own new tokens.
    ensure!(
        width + params.max_new_tokens <= context,
        "{width} prompt positions and {} new tokens do not fit the model's {context}-position context in one padded batch",
        params.max_new_tokens
    );
    let mut cache = KvCache::new(&model.config);
    let mut input = Tensor::from_vec(ids, (rows, width), device)?;
    let mut done: Vec<Option<Rollout>> = vec![None; rows];
    let mut last = vec![PAD; rows];
    loop {
        let len = cache.len() + input.dim(1)?;
        let (hidden, _) = model.forward_hidden(&input, Some(&mut cache), Some(&padding(len)?), Mode::Inference)?;
        let t = hidden.dim(1)?;
        let logits: Vec<Vec<f32>> = model.logits(&hidden.narrow(1, t - 1, 1)?.squeeze(1)?.contiguous()?)?.to_dtype(DType::F32)?.to_vec2()?;
        for (row, row_logits) in logits.iter().enumerate() {
            let Some((sampler, seq)) = &mut states[row] else { continue };
            let (token, finish) = seq.push(sampler, row_logits);
            last[row] = token;
            if let Some(finish) = finish {
                let (sampler, seq) = states[row].take().expect("matched above");
                done[row] = Some(finished(row, n_per_prompt, sampler.params().seed, seq, finish));
                last[row] = PAD;
            }
        }
        if states.iter().all(Option::is_none) {
            break;
        }
        input = Tensor::from_vec(last.clone(), (rows, 1), device)?;
    }
    let rows = done.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| anyhow!("a rollout row never finished"))?;
    Ok(Rollouts { rows, per_prompt: n_per_prompt })
}

/// The checks both layouts make before sampling anything.
fn check_request(model: &MiniMind, n_per_prompt: usize, params: &SamplingParams, eos: u32) -> Result<()> {
    ensure!(n_per_prompt > 0, "rollouts need at least one sample per prompt");
    ensure!(params.max_new_tokens > 0, "rollouts need max_new_tokens > 0");
    ensure!((eos as usize) < model.config.vocab_size, "eos id {eos} is outside the vocabulary ({})", model.config.vocab_size);
    params.validate()
}

/// Row `row`'s sampling settings (row `i * n + j` of the whole batch): its own seed, and EOS
/// the only stop.
fn params_of_row(params: &SamplingParams, eos: u32, row: usize) -> SamplingParams {
    SamplingParams { seed: row_seed(params.seed, row), stop_ids: vec![eos], ..params.clone() }
}

fn finished(row: usize, n: usize, seed: u64, seq: Sequence, finish: FinishReason) -> Rollout {
    Rollout { prompt: row / n, sample: row % n, seed, completion: seq.into_generated(), finish }
}
