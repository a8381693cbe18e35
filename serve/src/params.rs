//! The request fields chat and text completions share, read from the JSON body with a 400
//! naming the field for every wrong type or value.

use serde_json::{Map, Value as Json};

use crate::error::ApiError;

/// Most choices one request may ask for (`n`).
pub const MAX_CHOICES: usize = 16;
/// Most stop strings, and their longest length in bytes.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_BYTES: usize = 256;
/// Most alternatives per position (`top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A JSON object body.
pub struct Body(pub Map<String, Json>);

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Json = serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("The body is not valid JSON: {e}"), None))?;
        match value {
            Json::Object(map) => Ok(Self(map)),
            _ => Err(ApiError::invalid("The body must be a JSON object.", None)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn f64_in(&self, key: &str, default: f64, ok: impl Fn(f64) -> bool, rule: &str) -> Result<f64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && ok(x) => Ok(x),
                _ => Err(ApiError::invalid(format!("`{key}` must be {rule}, got {v}."), Some(key))),
            },
        }
    }

    pub fn int_in(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::invalid(format!("`{key}` must be an integer from {min} to {max}, got {v}."), Some(key))),
            },
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(Json::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::invalid(format!("`{key}` must be a boolean, got {v}."), Some(key))),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(format!("`{key}` must be a string, got {v}."), Some(key))),
        }
    }

    /// `model`: absent or the served name.
    pub fn check_model(&self, served: &str) -> Result<(), ApiError> {
        match self.str("model")? {
            Some(m) if m != served => Err(ApiError::model_not_found(m, served)),
            _ => Ok(()),
        }
    }

    /// `stop`: a string or a list of strings.
    pub fn stops(&self) -> Result<Vec<String>, ApiError> {
        let list = match self.get("stop") {
            None => return Ok(Vec::new()),
            Some(Json::String(s)) => vec![s.clone()],
            Some(Json::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::invalid("`stop` must be a string or a list of strings.", Some("stop")))?,
            Some(_) => return Err(ApiError::invalid("`stop` must be a string or a list of strings.", Some("stop"))),
        };
        if list.len() > MAX_STOPS || list.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid(
                format!("`stop` takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes."),
                Some("stop"),
            ));
        }
        Ok(list)
    }

    /// `stream_options.include_usage`.
    pub fn include_usage(&self) -> Result<bool, ApiError> {
        match self.get("stream_options") {
            None => Ok(false),
            Some(Json::Object(o)) => match o.get("include_usage") {
                None | Some(Json::Null) => Ok(false),
                Some(Json::Bool(b)) => Ok(*b),
                Some(v) => Err(ApiError::invalid(format!("`stream_options.include_usage` must be a boolean, got {v}."), Some("stream_options"))),
            },
            Some(v) => Err(ApiError::invalid(format!("`stream_options` must be an object, got {v}."), Some("stream_options"))),
        }
    }
}

/// The sampling fields every completion takes.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub seed: Option<u64>,
    pub n: usize,
    pub stops: Vec<String>,
    /// `max_tokens` / `max_completion_tokens` as asked (capped by the context later).
    pub max_tokens: Option<usize>,
}

impl Sampling {
    /// Defaults are upstream `serve_openai_api.py`'s (temperature 0.7, top-p 0.92), with
    /// HF's top-k 50 and no repetition penalty.
    pub fn read(body: &Body) -> Result<Self, ApiError> {
        let max_tokens = match body.int_in("max_completion_tokens", 0, i64::from(u32::MAX))? {
            Some(m) => Some(m),
            None => body.int_in("max_tokens", 0, i64::from(u32::MAX))?,
        };
        Ok(Self {
            temperature: body.f64_in("temperature", 0.7, |t| (0.0..=100.0).contains(&t), "a number from 0 to 100")?,
            top_p: body.f64_in("top_p", 0.92, |p| p > 0.0 && p <= 1.0, "a number above 0 and at most 1")?,
            // vLLM's -1 (and 0) mean "off".
            top_k: body.int_in("top_k", -1, 1 << 20)?.map_or(50, |k| k.max(0) as usize),
            repetition_penalty: body.f64_in("repetition_penalty", 1.0, |p| p > 0.0 && p <= 100.0, "a number above 0 and at most 100")?,
            seed: body.int_in("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
            n: body.int_in("n", 1, MAX_CHOICES as i64)?.map_or(1, |n| n as usize),
            stops: body.stops()?,
            max_tokens: max_tokens.map(|m| m as usize),
        })
    }
}
