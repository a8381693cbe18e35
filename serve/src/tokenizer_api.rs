//! vLLM's tokenizer endpoints, which lm-evaluation-harness's API models probe so that they
//! need no local copy of the tokenizer: `POST /tokenize`, `POST /detokenize`,
//! `GET /tokenizer_info`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value as Json_};

use mm_chat::RenderRequest;
use crate::error::ApiError;
use crate::params::Body;
use crate::{body_bytes, Shared};

/// `{"prompt": str, "add_special_tokens": bool}` or `{"messages": [...],
/// "add_generation_prompt": bool}` → `{"count", "max_model_len", "tokens", "token_strs"}`.
pub async fn tokenize(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Json_>, ApiError> {
    let body = Body::parse(&body_bytes(body)?)?;
    body.check_model(&state.model_name)?;
    let text = match (body.str("prompt")?, body.get("messages")) {
        (Some(p), None) => p.to_string(),
        (None, Some(messages @ Json_::Array(_))) => {
            let template = state.template.as_ref().ok_or_else(|| ApiError::invalid("This model has no chat template.", Some("messages")))?;
            let req = RenderRequest::new(messages.clone()).with_generation_prompt(body.bool("add_generation_prompt", true)?);
            template.render(&req).map_err(|e| ApiError::invalid(format!("The chat template failed: {e:#}"), Some("messages")))?
        }
        _ => return Err(ApiError::invalid("Pass either `prompt` (a string) or `messages` (a list).", Some("prompt"))),
    };
    let add_special = body.bool("add_special_tokens", true)?;
    let ids = state.tokenizer.encode(&text, add_special).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let strs: Option<Vec<String>> = if body.bool("return_token_strs", false)? {
        Some(ids.iter().map(|&id| state.tokenizer.id_to_token(id).unwrap_or_default()).collect())
    } else {
        None
    };
    Ok(Json(json!({"count": ids.len(), "max_model_len": state.ctx, "tokens": ids, "token_strs": strs})))
}

/// `{"tokens": [ids]}` → `{"prompt": str}`.
pub async fn detokenize(State(state): State<Shared>, body: Result<Bytes, BytesRejection>) -> Result<Json<Json_>, ApiError> {
    let body = Body::parse(&body_bytes(body)?)?;
    body.check_model(&state.model_name)?;
    let bad = || ApiError::invalid("`tokens` must be a list of token ids.", Some("tokens"));
    let ids: Vec<u32> = body
        .get("tokens")
        .and_then(Json_::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_u64().and_then(|i| u32::try_from(i).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let vocab = state.tokenizer.vocab_size() as u32;
    if let Some(id) = ids.iter().find(|&&id| id >= vocab) {
        return Err(ApiError::invalid(format!("Token id {id} is outside the vocabulary of {vocab}."), Some("tokens")));
    }
    let text = state.tokenizer.decode(&ids, false).map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(json!({"prompt": text})))
}

/// The tokenizer's configuration: special tokens, chat template, context length.
pub async fn info(State(state): State<Shared>) -> Json<Json_> {
    let mut info = match state.tokenizer.config() {
        Some(Json_::Object(cfg)) => {
            let mut cfg = cfg.clone();
            cfg.remove("added_tokens_decoder");
            cfg
        }
        _ => serde_json::Map::new(),
    };
    let special = state.tokenizer.special_tokens();
    for (key, value) in [("bos_token", &special.bos), ("eos_token", &special.eos), ("pad_token", &special.pad), ("unk_token", &special.unk)] {
        info.insert(key.into(), json!(value));
    }
    info.insert("chat_template".into(), json!(state.template.as_ref().map(|t| t.source().to_string())));
    info.insert("model_max_length".into(), json!(state.ctx));
    info.insert("vocab_size".into(), json!(state.tokenizer.vocab_size()));
    Json(Json_::Object(info))
}
