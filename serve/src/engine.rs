//! Continuous batching: one thread owns the model and decodes every active sequence in one
//! batched forward per step. A new request's prompt is prefilled between steps and its
//! sequence joins the next step; a request whose receiver is gone (the client disconnected,
//! or its deadline passed) leaves the batch at once and frees its KV cache. The engine also
//! turns tokens into text (never a broken character) and ends a sequence at a stop string.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use tokio::sync::mpsc;

use mm_chat::{StreamDecoder, Tokenizer};
pub use mm_model::generate::FinishReason;
use mm_model::generate::{Sampler, SamplingParams, Sequence};
use mm_model::model::{KvCache, MiniMind};
use crate::logprobs::{log_softmax, TokenLogprob};
use crate::metrics::Metrics;
use crate::stop::StopMatcher;

/// One sequence to generate.
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    /// Sampling, `max_new_tokens` (already capped by the context) and stop ids.
    pub params: SamplingParams,
    /// Return the log-probability of each generated token and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Return the log-probability of every prompt token (after the first) with this many top
    /// alternatives (`echo` with `logprobs` in /v1/completions).
    pub prompt_logprobs: Option<usize>,
    /// Text that ends the output (not included in it).
    pub stops: Vec<String>,
    /// The request is ended (finish reason length) when it runs past this.
    pub deadline: Instant,
    pub events: mpsc::UnboundedSender<Event>,
}

/// What the engine reports about a request, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (token 0 has none).
    Prompt(Vec<TokenLogprob>),
    /// One generated token, the text it makes visible (special tokens are not shown; text
    /// that may begin a stop string is held back), its log-probability when asked for.
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// Text held back until the end.
    Text(String),
    Finished { reason: FinishReason, prompt_tokens: usize, completion_tokens: usize },
    Failed(String),
}

/// A sequence being decoded.
struct Active<'t> {
    request: GenerationRequest,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    cache: KvCache,
    sampler: Sampler,
    /// Sampling and stop ids, shared with `generate`.
    seq: Sequence,
    last: u32,
}

/// The handle the HTTP side submits to.
#[derive(Clone)]
pub struct EngineHandle {
    queue: mpsc::Sender<GenerationRequest>,
    pub max_batch: usize,
    metrics: Arc<Metrics>,
}

/// Why a request could not be queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The queue is full: try again later (HTTP 503).
    Busy,
    /// The engine thread is gone.
    Stopped,
}

impl EngineHandle {
    pub fn submit(&self, request: GenerationRequest) -> Result<(), SubmitError> {
        match self.queue.try_send(request) {
            Ok(()) => {
                self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(SubmitError::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SubmitError::Stopped),
        }
    }
}

/// Starts the engine thread over `model`; at most `max_batch` sequences decode together and
/// at most `queue` more wait.
pub fn start(model: Arc<MiniMind>, tokenizer: Arc<Tokenizer>, max_batch: usize, queue: usize, metrics: Arc<Metrics>) -> EngineHandle {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let handle = EngineHandle { queue: tx, max_batch: max_batch.max(1), metrics: metrics.clone() };
    let max_batch = handle.max_batch;
    std::thread::Builder::new()
        .name("mm-engine".into())
        .spawn(move || run(&model, &tokenizer, rx, max_batch, &metrics))
        .expect("spawning the engine thread");
    handle
}

fn run(
    model: &MiniMind,
    tokenizer: &Tokenizer,
    mut rx: mpsc::Receiver<GenerationRequest>,
    max_batch: usize,
    metrics: &Metrics,
) {
    let mut active: Vec<Active> = Vec::new();
    loop {
        // Admit new requests between steps; wait for one when nothing is running.
        while active.len() < max_batch {
            let next = if active.is_empty() {
                match rx.blocking_recv() {
                    Some(r) => r,
                    None => return, // the server is shutting down and nothing is left
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if next.events.is_closed() {
                continue;
            }
            match prefill(model, tokenizer, next) {
                Ok(Some(seq)) => active.push(seq),
                Ok(None) => {}
                Err((events, e)) => {
                    let _ = events.send(Event::Failed(format!("{e:#}")));
                }
            }
        }
        let now = Instant::now();
        active.retain_mut(|s| {
            if s.request.deadline <= now {
                finish(s, FinishReason::Length);
            }
            s.request.deadline > now && !s.request.events.is_closed()
        });
        metrics.active.store(active.len(), Ordering::Relaxed);
        if active.is_empty() {
            continue;
        }
        if let Err(e) = decode_step(model, &mut active, metrics) {
            for seq in active.drain(..) {
                let _ = seq.request.events.send(Event::Failed(format!("{e:#}")));
            }
        }
        metrics.active.store(active.len(), Ordering::Relaxed);
    }
}

type PrefillError = (mpsc::UnboundedSender<Event>, anyhow::Error);

/// Runs the prompt, emits its first token; `None` when the request is already complete.
fn prefill<'t>(model: &MiniMind, tokenizer: &'t Tokenizer, request: GenerationRequest) -> Result<Option<Active<'t>>, PrefillError> {
    let mut cache = KvCache::new(&model.config);
    let run = |cache: &mut KvCache| -> Result<(Sampler, Sequence, Vec<f32>)> {
        let sampler = Sampler::new(request.params.clone())?;
        let seq = Sequence::new(&request.prompt, &request.params, model.config.max_position_embeddings)?;
        let last = if let Some(top) = request.prompt_logprobs {
            let rows: Vec<Vec<f32>> = model.forward_all_logits(&request.prompt, cache)?.to_dtype(DType::F32)?.to_vec2()?;
            let prompt_lp =
                (1..request.prompt.len()).map(|i| TokenLogprob::of(&log_softmax(&rows[i - 1]), request.prompt[i], top)).collect();
            let _ = request.events.send(Event::Prompt(prompt_lp));
            rows.last().cloned().unwrap_or_default()
        } else {
            let ids = Tensor::new(request.prompt.as_slice(), model.device())?.unsqueeze(0)?;
            model.forward_last(&ids, cache)?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?
        };
        Ok((sampler, seq, last))
    };
    let (sampler, sequence, last_logits) = match run(&mut cache) {
        Ok(r) => r,
        Err(e) => return Err((request.events, e)),
    };
    let mut seq = Active {
        seq: sequence,
        decoder: StreamDecoder::new(tokenizer),
        stops: StopMatcher::new(request.stops.clone()),
        request,
        cache,
        sampler,
        last: 0,
    };
    if seq.request.params.max_new_tokens == 0 {
        finish(&mut seq, FinishReason::Length);
        return Ok(None);
    }
    Ok(take_token(&mut seq, &last_logits).then_some(seq))
}

/// Samples from `logits`, reports the token; false when the sequence is finished.
fn take_token(seq: &mut Active, logits: &[f32]) -> bool {
    let (id, ended) = seq.seq.push(&mut seq.sampler, logits);
    let logprob = seq.request.logprobs.map(|top| TokenLogprob::of(&log_softmax(logits), id, top));
    seq.last = id;
    let (text, stopped) = match seq.decoder.push(id) {
        Ok(piece) => seq.stops.push(&piece),
        Err(e) => {
            let _ = seq.request.events.send(Event::Failed(format!("decoding token {id}: {e:#}")));
            return false;
        }
    };
    if seq.request.events.send(Event::Token { id, text, logprob }).is_err() {
        return false;
    }
    match (stopped, ended) {
        (true, _) => finish(seq, FinishReason::Stop),
        (false, Some(reason)) => finish(seq, reason),
        (false, None) => return true,
    }
    false
}

fn finish(seq: &mut Active, reason: FinishReason) {
    if !seq.stops.stopped() {
        let rest = seq.decoder.finish().unwrap_or_default();
        let (mut text, _) = seq.stops.push(&rest);
        text.push_str(&seq.stops.finish());
        if !text.is_empty() {
            let _ = seq.request.events.send(Event::Text(text));
        }
    }
    let _ = seq.request.events.send(Event::Finished {
        reason,
        prompt_tokens: seq.request.prompt.len(),
        completion_tokens: seq.seq.generated().len(),
    });
}

/// One batched forward over every active sequence's last token.
fn decode_step(model: &MiniMind, active: &mut Vec<Active>, metrics: &Metrics) -> Result<()> {
    let started = Instant::now();
    let tokens: Vec<u32> = active.iter().map(|s| s.last).collect();
    let logits = {
        let mut caches: Vec<&mut KvCache> = active.iter_mut().map(|s| &mut s.cache).collect();
        model.forward_step_batch(&tokens, &mut caches)?
    };
    let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
    let mut keep = Vec::with_capacity(active.len());
    for (mut seq, row) in active.drain(..).zip(rows) {
        if take_token(&mut seq, &row) {
            keep.push(seq);
        }
    }
    *active = keep;
    metrics.step(tokens.len(), started.elapsed().as_secs_f64());
    Ok(())
}
