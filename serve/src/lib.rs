//! `mm serve`: an OpenAI-compatible HTTP server (axum) over the continuous-batching engine.
//!
//! Endpoints: `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`
//! (streamed as server-sent events or whole), vLLM's `POST /tokenize`, `POST /detokenize` and
//! `GET /tokenizer_info`, `GET /health` and `GET /metrics` (Prometheus). Every error is
//! OpenAI's JSON shape; bodies are size-limited and requests time out. `GET /` is a chat page.
//! Over a reward model (`LlamaForSequenceClassification`) it answers vLLM's `POST /pooling`
//! instead (see [`pooling`]).

pub mod chat;
pub mod completions;
pub mod engine;
pub mod error;
pub mod logprobs;
pub mod metrics;
pub mod params;
pub mod pooling;
pub mod stop;
pub mod tokenizer_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use mm_chat::{ChatTemplate, Tokenizer};
use mm_model::model::MiniMind;
use crate::engine::EngineHandle;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The web chat page (one self-contained file: no CDN, no build step).
const CHAT_PAGE: &str = include_str!("chat_page.html");

/// Largest request body accepted (a long conversation with tools is far smaller).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What `mm serve` was asked for.
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub model_name: String,
    pub api_key: Option<String>,
    /// Tokens per sequence, prompt and reply together.
    pub ctx: usize,
    pub max_batch: usize,
    /// Requests that may wait for a batch slot before the server answers 503.
    pub queue: usize,
    /// A request running longer than this is ended (streamed ones with finish_reason "length").
    pub request_timeout: Duration,
}

/// Everything a handler needs.
pub struct Server {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub model_name: String,
    pub api_key: Option<String>,
    pub ctx: usize,
    /// Ids that end a reply (the tokenizer's eos and the template's end of turn).
    pub stop_ids: Vec<u32>,
    pub metrics: Arc<Metrics>,
    pub request_timeout: Duration,
    /// When the server started (`created` of `/v1/models`).
    pub started: u64,
}

pub type Shared = Arc<Server>;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds the server state and the router (also used by tests on an ephemeral port).
pub fn app(model: MiniMind, tokenizer: Tokenizer, template: Option<ChatTemplate>, opts: &ServeOptions) -> (Router, Shared) {
    let metrics = Arc::new(Metrics::default());
    let ctx = opts.ctx.min(model.config.max_position_embeddings).max(2);
    let mut stop_ids = vec![model.config.eos_token_id];
    stop_ids.extend(tokenizer.eos_id());
    stop_ids.extend(tokenizer.token_id("<|im_end|>"));
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let tokenizer = Arc::new(tokenizer);
    let engine = engine::start(Arc::new(model), tokenizer.clone(), opts.max_batch, opts.queue, metrics.clone());
    let state = Arc::new(Server {
        engine,
        tokenizer,
        template,
        model_name: opts.model_name.clone(),
        api_key: opts.api_key.clone(),
        ctx,
        stop_ids,
        metrics,
        request_timeout: opts.request_timeout,
        started: unix_now(),
    });
    let api = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/tokenize", post(tokenizer_api::tokenize))
        .route("/detokenize", post(tokenizer_api::detokenize))
        .route("/tokenizer_info", get(tokenizer_api::info))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let router = Router::new()
        .merge(api)
        .route("/", get(|| async { axum::response::Html(CHAT_PAGE) }))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics_text))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state.clone());
    (router, state)
}

/// Serves until SIGINT/SIGTERM, then stops accepting and lets in-flight requests finish.
pub async fn serve(router: Router, addr: SocketAddr, on_ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    on_ready(listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.context("serving")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing the requests in flight");
}

async fn require_key(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// One log line per request, and the per-status request counter.
async fn log_request(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let endpoint = match path.as_str() {
        "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/tokenize" | "/detokenize" | "/tokenizer_info"
        | "/health" | "/metrics" | "/" => path.as_str(),
        _ => "other",
    };
    state.metrics.request(endpoint, status.as_u16());
    eprintln!("{method} {path} {} {:.1} ms", status.as_u16(), started.elapsed().as_secs_f64() * 1e3);
    response
}

async fn models(State(state): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "created": state.started,
            "owned_by": "mm",
            "max_model_len": state.ctx,
        }]
    }))
}

async fn metrics_text(State(state): State<Shared>) -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

/// The sending end of a server-sent-event stream.
pub struct EventSender(tokio::sync::mpsc::Sender<Result<axum::response::sse::Event, std::convert::Infallible>>);

impl EventSender {
    /// Sends one `data:` event; false once the client is gone (the stream was dropped).
    pub async fn send(&self, data: impl AsRef<str>) -> bool {
        self.0.send(Ok(axum::response::sse::Event::default().data(data.as_ref()))).await.is_ok()
    }
}

/// A streamed response whose events `task` sends (on its own task, so a slow or departed
/// client never holds up the engine); keep-alive comments every 15 s.
pub fn event_stream<F, Fut>(task: F) -> impl IntoResponse
where
    F: FnOnce(EventSender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(task(EventSender(tx)));
    axum::response::sse::Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(axum::response::sse::KeepAlive::default().interval(Duration::from_secs(15)))
}

/// The body of a JSON request, with a body over the limit or unreadable as an OpenAI error.
pub fn body_bytes(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let mut err = ApiError::invalid(format!("Cannot read the request body: {e}"), None);
        err.status = e.status();
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            err.message = format!("The request body is over the {MAX_BODY_BYTES}-byte limit.");
        }
        err
    })
}
