//! `POST /v1/completions`: raw-text (or token-id) prompts, `echo`, and log-probabilities in
//! the legacy shape (`tokens`, `token_logprobs` with `null` first, `top_logprobs` holding the
//! argmax, `text_offset`) that lm-evaluation-harness's `local-completions` scores with.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value as Json_};
use tokio::sync::mpsc;

use mm_model::generate::SamplingParams;
use crate::chat::completion_id;
use crate::engine::{Event, FinishReason, GenerationRequest, SubmitError};
use crate::error::ApiError;
use crate::logprobs::TokenLogprob;
use crate::params::{Body, Sampling, MAX_TOP_LOGPROBS};
use crate::{body_bytes, event_stream, unix_now, Shared};

/// Most prompts in one request (lm-eval batches a few).
const MAX_PROMPTS: usize = 64;

/// `{prompt_tokens, completion_tokens, total_tokens}`.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Json_ {
    json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
}

/// A whole (not streamed) response of either endpoint, its tokens counted in the metrics.
pub fn response_body(state: &Shared, id: &str, object: &str, choices: Vec<Json_>, prompt_tokens: usize, completion_tokens: usize) -> Response {
    state.metrics.tokens(prompt_tokens, completion_tokens);
    Json(json!({
        "id": id,
        "object": object,
        "created": unix_now(),
        "model": state.model_name,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response()
}

/// Queues `sampling.n` sequences for one prompt (seeds `seed`, `seed + 1`, …).
pub fn submit(
    state: &Shared,
    prompt: &[u32],
    sampling: &Sampling,
    max_new: usize,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
    }
    if prompt.len() >= state.ctx {
        return Err(ApiError::invalid(
            format!("The prompt has {} tokens; the context is {} (prompt and reply together).", prompt.len(), state.ctx),
            Some("prompt"),
        ));
    }
    let vocab = state.tokenizer.vocab_size().max(1) as u32;
    if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
        return Err(ApiError::invalid(format!("Token id {bad} is outside the vocabulary of {vocab}."), Some("prompt")));
    }
    let seed = sampling.seed.unwrap_or_else(|| unix_now() ^ u64::from(std::process::id()));
    let deadline = Instant::now() + state.request_timeout;
    let mut receivers = Vec::with_capacity(sampling.n);
    for i in 0..sampling.n {
        let (tx, rx) = mpsc::unbounded_channel();
        let params = SamplingParams {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            repetition_penalty: sampling.repetition_penalty,
            max_new_tokens: max_new,
            seed: seed.wrapping_add(i as u64),
            stop_ids: state.stop_ids.clone(),
        };
        let request = GenerationRequest {
            prompt: prompt.to_vec(),
            params,
            logprobs,
            prompt_logprobs,
            stops: sampling.stops.clone(),
            deadline,
            events: tx,
        };
        match state.engine.submit(request) {
            Ok(()) => receivers.push(rx),
            Err(SubmitError::Busy) => return Err(ApiError::busy()),
            Err(SubmitError::Stopped) => return Err(ApiError::internal("The generation engine has stopped.")),
        }
    }
    Ok(receivers)
}

/// The prompts of a request as token ids: a string, a list of strings, a list of ids, or a
/// list of id lists.
fn prompts(state: &Shared, body: &Body) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || ApiError::invalid("`prompt` must be a string, a list of strings, a list of token ids or a list of such lists.", Some("prompt"));
    let encode = |s: &str| state.tokenizer.encode(s, false).map_err(|e| ApiError::internal(format!("{e:#}")));
    let ids = |v: &Json_| -> Option<Vec<u32>> {
        v.as_array()?.iter().map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok())).collect()
    };
    let list = match body.get("prompt") {
        None => return Err(ApiError::invalid("`prompt` is required.", Some("prompt"))),
        Some(Json_::String(s)) => vec![encode(s)?],
        Some(Json_::Array(items)) if items.is_empty() => return Err(bad()),
        Some(v @ Json_::Array(items)) => match &items[0] {
            Json_::Number(_) => vec![ids(v).ok_or_else(bad)?],
            Json_::String(_) => items.iter().map(|s| s.as_str().ok_or_else(bad).and_then(encode)).collect::<Result<_, _>>()?,
            Json_::Array(_) => items.iter().map(|l| ids(l).ok_or_else(bad)).collect::<Result<_, _>>()?,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    if list.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(format!("At most {MAX_PROMPTS} prompts per request."), Some("prompt")));
    }
    Ok(list)
}

/// What one choice produced.
#[derive(Default)]
struct Collected {
    text: String,
    prompt_logprobs: Vec<TokenLogprob>,
    tokens: Vec<(u32, String, Option<TokenLogprob>)>,
    finish: Option<FinishReason>,
    completion_tokens: usize,
}

async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Prompt(lp) => c.prompt_logprobs = lp,
            Event::Token { id, text, logprob } => {
                c.text.push_str(&text);
                c.tokens.push((id, text, logprob));
            }
            Event::Text(t) => c.text.push_str(&t),
            Event::Finished { reason, completion_tokens, .. } => {
                c.finish = Some(reason);
                c.completion_tokens = completion_tokens;
                break;
            }
            Event::Failed(m) => return Err(ApiError::internal(m)),
        }
    }
    Ok(c)
}

pub async fn handle(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let body = Body::parse(&body_bytes(body)?)?;
    body.check_model(&state.model_name)?;
    if body.get("suffix").is_some() {
        return Err(ApiError::invalid("`suffix` is not supported.", Some("suffix")));
    }
    let sampling = Sampling::read(&body)?;
    let echo = body.bool("echo", false)?;
    let logprobs = body.int_in("logprobs", 0, MAX_TOP_LOGPROBS as i64)?.map(|n| n as usize);
    let stream = body.bool("stream", false)?;
    let include_usage = body.include_usage()?;
    let prompts = prompts(&state, &body)?;
    let id = format!("cmpl-{}", completion_id());
    let mut jobs = Vec::new();
    for prompt in &prompts {
        let max_new = sampling.max_tokens.unwrap_or(16).min(state.ctx.saturating_sub(prompt.len()));
        let prompt_lp = if echo { logprobs } else { None };
        jobs.push(submit(&state, prompt, &sampling, max_new, logprobs, prompt_lp)?);
    }
    if stream {
        return Ok(stream_response(state, prompts, jobs, sampling.n, echo, id, include_usage).into_response());
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (p, (prompt, receivers)) in prompts.iter().zip(jobs).enumerate() {
        prompt_tokens += prompt.len();
        for (j, rx) in receivers.into_iter().enumerate() {
            let c = collect(rx).await?;
            if p == 0 && j == 0 {
                state.metrics.first_token(arrived.elapsed().as_secs_f64());
            }
            completion_tokens += c.completion_tokens;
            let prompt_text = if echo { state.tokenizer.decode(prompt, false).map_err(|e| ApiError::internal(format!("{e:#}")))? } else { String::new() };
            let lp = logprobs.map(|_| logprobs_json(&state, prompt, echo, &c));
            choices.push(json!({
                "index": p * sampling.n + j,
                "text": format!("{prompt_text}{}", c.text),
                "logprobs": lp,
                "finish_reason": finish_name(c.finish),
            }));
        }
    }
    Ok(response_body(&state, &id, "text_completion", choices, prompt_tokens, completion_tokens))
}

fn finish_name(reason: Option<FinishReason>) -> &'static str {
    match reason {
        Some(FinishReason::Stop) => "stop",
        _ => "length",
    }
}

/// The legacy logprobs object over the echoed prompt (first token: null) and the generated
/// tokens.
fn logprobs_json(state: &Shared, prompt: &[u32], echo: bool, c: &Collected) -> Json_ {
    let piece = |id: u32| state.tokenizer.decode(&[id], false).unwrap_or_default();
    let top_map = |t: &TokenLogprob| -> Json_ {
        let mut m = Map::new();
        for &(id, lp) in &t.top {
            m.entry(piece(id)).or_insert(json!(lp));
        }
        Json_::Object(m)
    };
    let (mut tokens, mut token_logprobs, mut top_logprobs, mut text_offset) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0usize;
    let mut push = |text: String, lp: Json_, top: Json_| {
        text_offset.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        token_logprobs.push(lp);
        top_logprobs.push(top);
    };
    if echo {
        for (i, &id) in prompt.iter().enumerate() {
            match i.checked_sub(1).and_then(|k| c.prompt_logprobs.get(k)) {
                Some(t) => push(piece(id), json!(t.logprob), top_map(t)),
                None => push(piece(id), Json_::Null, Json_::Null),
            }
        }
    }
    for (id, _, lp) in &c.tokens {
        match lp {
            Some(t) => push(piece(*id), json!(t.logprob), top_map(t)),
            None => push(piece(*id), Json_::Null, Json_::Null),
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": text_offset})
}

fn stream_response(
    state: Shared,
    prompts: Vec<Vec<u32>>,
    jobs: Vec<Vec<mpsc::UnboundedReceiver<Event>>>,
    n: usize,
    echo: bool,
    id: String,
    include_usage: bool,
) -> impl IntoResponse {
    event_stream(move |out| async move {
        let created = unix_now();
        let chunk = |index: usize, text: &str, finish: Option<&str>| {
            json!({"id": id, "object": "text_completion", "created": created, "model": state.model_name,
                   "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": finish}]})
        };
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        // Choices are streamed one after the other (they decode together in the engine).
        for (p, (prompt, receivers)) in prompts.iter().zip(jobs).enumerate() {
            prompt_tokens += prompt.len();
            for (j, mut rx) in receivers.into_iter().enumerate() {
                let index = p * n + j;
                if echo {
                    let text = state.tokenizer.decode(prompt, false).unwrap_or_default();
                    if !out.send(chunk(index, &text, None).to_string()).await {
                        return;
                    }
                }
                while let Some(event) = rx.recv().await {
                    let event = match event {
                        Event::Token { text, .. } | Event::Text(text) if !text.is_empty() => chunk(index, &text, None),
                        Event::Finished { reason, completion_tokens: ct, .. } => {
                            completion_tokens += ct;
                            chunk(index, "", Some(finish_name(Some(reason))))
                        }
                        Event::Failed(m) => ApiError::internal(m).body(),
                        _ => continue,
                    };
                    if !out.send(event.to_string()).await {
                        state.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        state.metrics.tokens(prompt_tokens, completion_tokens);
        if include_usage {
            let last = json!({"id": id, "object": "text_completion", "created": created, "model": state.model_name,
                              "choices": [], "usage": usage(prompt_tokens, completion_tokens)});
            if !out.send(last.to_string()).await {
                return;
            }
        }
        out.send("[DONE]").await;
    })
}
