//! `mm serve` over a reward model (an HF `LlamaForSequenceClassification` directory, as `mm
//! train reward` writes): vLLM's pooling API as `vllm serve <reward model> --task reward`
//! answers it, so `--reward-url` points at either server.
//!
//! * `POST /pooling`: `{"messages": [...]}` (one conversation, rendered by the model's chat
//!   template without a generation prompt) or `{"input": "text" | ["text", …]}` (raw text);
//!   optional `model` (must be the served name) and `encoding_format` (`float` only).
//!   Answer: `{"id": "pool-N", "object": "list", "created", "model", "data": [{"index": i,
//!   "object": "pooling", "data": [score]}], "usage": {"prompt_tokens", "total_tokens",
//!   "completion_tokens": 0}}`: one score per input, read at the last non-pad token.
//! * `GET /v1/models`, `GET /health`; other paths 404. Errors are OpenAI's JSON shape, bodies
//!   size-limited, requests time out; scoring runs off the async threads, one batch at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::params::Body;
use crate::{body_bytes, unix_now, ServeOptions, MAX_BODY_BYTES};
use mm_train::reward_model::RewardModel;

/// Most inputs one request may score.
pub const MAX_INPUTS: usize = 256;

/// The state of a reward-model server.
pub struct RewardServer {
    pub model: Arc<RewardModel>,
    pub model_name: String,
    pub api_key: Option<String>,
    pub ctx: usize,
    pub request_timeout: Duration,
    pub started: u64,
    /// One scoring batch at a time (each uses every core).
    busy: Arc<tokio::sync::Semaphore>,
    next_id: AtomicU64,
}

pub type SharedReward = Arc<RewardServer>;

/// The router of a reward-model server (tests use it on an ephemeral port).
pub fn reward_app(model: RewardModel, opts: &ServeOptions) -> (Router, SharedReward) {
    let ctx = opts.ctx.min(model.context()).max(2);
    let state = Arc::new(RewardServer {
        model: Arc::new(model),
        model_name: opts.model_name.clone(),
        api_key: opts.api_key.clone(),
        ctx,
        request_timeout: opts.request_timeout,
        started: unix_now(),
        busy: Arc::new(tokio::sync::Semaphore::new(1)),
        next_id: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/pooling", post(pooling))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(middleware::from_fn(log_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    (router, state)
}

async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    eprintln!("{method} {path} {} {:.1} ms", response.status().as_u16(), started.elapsed().as_secs_f64() * 1e3);
    response
}

fn check_key(state: &RewardServer, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(key) = &state.api_key {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(())
}

async fn models(State(state): State<SharedReward>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_key(&state, &headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": state.model_name, "object": "model", "created": state.started, "owned_by": "mm", "max_model_len": state.ctx}]
    })))
}

/// The token rows a request asks to score.
fn request_rows(state: &RewardServer, body: &Body) -> Result<Vec<Vec<u32>>, ApiError> {
    let model = &state.model;
    let texts: Vec<&str> = match (body.get("messages"), body.get("input")) {
        (Some(messages @ Value::Array(list)), None) => {
            if list.is_empty() {
                return Err(ApiError::invalid("`messages` is empty.", Some("messages")));
            }
            let ids = model.encode(messages, None).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("messages")))?;
            return check_len(state, vec![ids], "messages");
        }
        (Some(_), None) => return Err(ApiError::invalid("`messages` must be a list of chat messages.", Some("messages"))),
        (None, Some(Value::String(s))) => vec![s.as_str()],
        (None, Some(Value::Array(items))) if !items.is_empty() && items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        (None, Some(_)) => return Err(ApiError::invalid("`input` must be a string or a non-empty list of strings.", Some("input"))),
        (Some(_), Some(_)) => return Err(ApiError::invalid("Pass `messages` or `input`, not both.", Some("input"))),
        (None, None) => {
            return Err(ApiError::invalid("Pass `messages` (a list of chat messages) or `input` (a string or a list of strings).", Some("messages")))
        }
    };
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(format!("At most {MAX_INPUTS} inputs per request, got {}.", texts.len()), Some("input")));
    }
    let rows = texts
        .iter()
        .map(|t| model.tokenizer.encode(t, true).map_err(|e| ApiError::invalid(format!("{e:#}"), Some("input"))))
        .collect::<Result<Vec<_>, _>>()?;
    check_len(state, rows, "input")
}

fn check_len(state: &RewardServer, rows: Vec<Vec<u32>>, param: &str) -> Result<Vec<Vec<u32>>, ApiError> {
    for (i, r) in rows.iter().enumerate() {
        if r.is_empty() {
            return Err(ApiError::invalid(format!("Input {i} has no tokens."), Some(param)));
        }
        if r.len() > state.ctx {
            return Err(ApiError::invalid(
                format!("Input {i} is {} tokens long; this model reads at most {}.", r.len(), state.ctx),
                Some(param),
            ));
        }
    }
    Ok(rows)
}

async fn pooling(State(state): State<SharedReward>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    check_key(&state, &headers)?;
    let body = Body::parse(&body_bytes(body)?)?;
    body.check_model(&state.model_name)?;
    match body.str("encoding_format")? {
        None | Some("float") => {}
        Some(other) => return Err(ApiError::invalid(format!("`encoding_format` {other:?} is not supported; use \"float\"."), Some("encoding_format"))),
    }
    let rows = request_rows(&state, &body)?;
    let tokens: usize = rows.iter().map(Vec::len).sum();
    let permit = tokio::time::timeout(state.request_timeout, state.busy.clone().acquire_owned())
        .await
        .map_err(|_| timed_out(state.request_timeout))?
        .map_err(|_| ApiError::internal("The scorer has stopped."))?;
    let model = state.model.clone();
    // The permit goes with the job: a request that times out does not let the next batch
    // start beside a forward pass still running.
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        model.score_ids(&rows)
    });
    let scores = tokio::time::timeout(state.request_timeout, job)
        .await
        .map_err(|_| timed_out(state.request_timeout))?
        .map_err(|e| ApiError::internal(format!("The scorer failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("Scoring failed: {e:#}")))?;
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let data: Vec<Value> = scores.iter().enumerate().map(|(i, s)| json!({"index": i, "object": "pooling", "data": [s]})).collect();
    Ok(Json(json!({
        "id": format!("pool-{id}"),
        "object": "list",
        "created": unix_now(),
        "model": state.model_name,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    })))
}

fn timed_out(limit: Duration) -> ApiError {
    let mut e = ApiError::internal(format!("Scoring did not finish within the server's {} s request timeout.", limit.as_secs()));
    e.status = StatusCode::GATEWAY_TIMEOUT;
    e
}
