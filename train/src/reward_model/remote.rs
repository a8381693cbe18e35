//! `--reward-url URL`: a client for vLLM's pooling API, as `vllm serve <reward model>
//! --task reward` (or `--runner pooling`) answers it, and as `mm serve` answers it for an mm
//! reward model. One conversation per request:
//!
//! ```text
//! POST /pooling  {"messages": [{"role": "user", "content": …}, {"role": "assistant", …}],
//!                 "encoding_format": "float", "model": …}           (model only when given)
//! 200            {"id": "pool-…", "object": "list", "created": …, "model": …,
//!                 "data": [{"index": 0, "object": "pooling", "data": …}], "usage": {…}}
//! ```
//!
//! The inner `data` is `[score]` (one label, last-token pooling: a sequence classifier, and mm)
//! or `[[s₀], [s₁], …]` (one row per token, vLLM's reward task with ALL pooling, e.g.
//! InternLM2-1.8B-Reward), where the score is the last token's row, as the model's own
//! `get_score` reads it. Anything else is refused with a message naming the URL.
//!
//! Each request has a timeout; timeouts, connection failures, 429 and 5xx answers are retried
//! with exponential backoff; other answers fail at once (a 4xx says what the server disliked,
//! garbage stays garbage on a retry).

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::reward_model::model::messages_json;
use crate::rlaif::calculate_rewards::ChatMessage;

/// The most bytes of an answer read (a one-score answer is ~200 bytes; per-token rows of a
/// long conversation a few hundred KiB).
pub const MAX_RESPONSE_BYTES: u64 = 8 << 20;

/// Characters of a bad answer quoted in an error.
const EXCERPT_CHARS: usize = 200;

/// A `/pooling` endpoint.
#[derive(Clone)]
pub struct PoolingClient {
    url: String,
    model: Option<String>,
    agent: ureq::Agent,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
}

impl std::fmt::Debug for PoolingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolingClient").field("url", &self.url).field("model", &self.model).field("timeout", &self.timeout).finish()
    }
}

impl PoolingClient {
    /// `url` is the server (`http://host:8000`, `/pooling` is added; a trailing `/v1` is
    /// dropped, since vLLM serves `/pooling` at the root) or the endpoint itself
    /// (`…/pooling`). Defaults: 60 s timeout, 3 retries from 0.5 s backoff.
    pub fn new(url: &str) -> Result<Self> {
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => bail!("--reward-url {url}: https is not supported; reach the scorer over http (on localhost, a private network or an SSH tunnel)"),
            _ => bail!("--reward-url {url}: expected http://HOST:PORT[/pooling]"),
        };
        if rest.is_empty() || rest.starts_with('/') {
            bail!("--reward-url {url}: no host");
        }
        let base = url.trim_end_matches('/');
        let endpoint = if base.ends_with("/pooling") {
            base.to_string()
        } else {
            format!("{}/pooling", base.strip_suffix("/v1").unwrap_or(base))
        };
        let mut client = Self { url: endpoint, model: None, agent: agent(Duration::from_secs(60)), timeout: Duration::from_secs(60), retries: 3, backoff: Duration::from_millis(500) };
        client.agent = agent(client.timeout);
        Ok(client)
    }

    /// The time one request may take, connection included.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.agent = agent(timeout);
        self
    }

    /// Retries after the first try, and the first wait (doubled each time).
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// The `model` field of each request (vLLM checks it against its served name).
    pub fn with_model(mut self, model: Option<String>) -> Self {
        self.model = model;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The raw score of one conversation.
    pub fn score_chat(&self, chat: &[ChatMessage]) -> Result<f64> {
        self.score_messages(&messages_json(chat))
    }

    /// The raw score of one conversation given as a JSON message list.
    pub fn score_messages(&self, messages: &Value) -> Result<f64> {
        let mut body = json!({"messages": messages, "encoding_format": "float"});
        if let Some(m) = &self.model {
            body["model"] = json!(m);
        }
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            match self.try_once(&body) {
                Ok(score) => return Ok(score),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) if attempt >= self.retries => {
                    let tries = attempt + 1;
                    return Err(e.context(format!("reward scorer {}: gave up after {tries} tr{}", self.url, if tries == 1 { "y" } else { "ies" })));
                }
                Err(Failure::Transient(_)) => {
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    fn try_once(&self, body: &Value) -> std::result::Result<f64, Failure> {
        let url = &self.url;
        let mut response = match self.agent.post(url).send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Failure::Transient(anyhow!("reward scorer {url}: no answer within {:.1} s (timed out)", self.timeout.as_secs_f64())))
            }
            Err(e) => return Err(Failure::Transient(anyhow!("reward scorer {url}: request failed: {e}"))),
        };
        let status = response.status().as_u16();
        let text = match response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_string() {
            Ok(t) => t,
            Err(ureq::Error::Timeout(_)) => {
                return Err(Failure::Transient(anyhow!("reward scorer {url}: the answer did not arrive within {:.1} s (timed out)", self.timeout.as_secs_f64())))
            }
            Err(ureq::Error::BodyExceedsLimit(_)) => {
                return Err(Failure::Final(anyhow!("reward scorer {url}: the answer is over {MAX_RESPONSE_BYTES} bytes")))
            }
            Err(e) => return Err(Failure::Transient(anyhow!("reward scorer {url}: cannot read the answer: {e}"))),
        };
        if status != 200 {
            let e = anyhow!("reward scorer {url}: HTTP {status}: {}", excerpt(&text));
            return Err(if status == 429 || status >= 500 { Failure::Transient(e) } else { Failure::Final(e) });
        }
        parse_pooling_response(&text).with_context(|| format!("reward scorer {url}")).map_err(Failure::Final)
    }
}

enum Failure {
    /// Worth another try (timeout, connection, 429, 5xx).
    Transient(anyhow::Error),
    Final(anyhow::Error),
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

fn excerpt(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        return "(empty answer)".into();
    }
    let cut: String = t.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < t.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// The score in a `/pooling` answer (see the module docs for the shapes accepted).
pub fn parse_pooling_response(text: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow!("the answer is not JSON ({e}): {}", excerpt(text)))?;
    let entries = v.get("data").and_then(Value::as_array).ok_or_else(|| anyhow!("the answer has no `data` list: {}", excerpt(text)))?;
    let first = entries.first().ok_or_else(|| anyhow!("the answer's `data` list is empty"))?;
    let inner = first.get("data").ok_or_else(|| anyhow!("`data[0]` has no `data` field: {}", excerpt(text)))?;
    let number = |x: &Value, what: &str| -> Result<f64> {
        let s = x.as_f64().ok_or_else(|| anyhow!("{what} is not a number: {x}"))?;
        if !s.is_finite() {
            bail!("{what} is not finite");
        }
        Ok(s)
    };
    match inner {
        Value::String(_) => bail!("`data[0].data` is base64 (encoding_format float was asked for)"),
        Value::Array(items) if items.is_empty() => bail!("`data[0].data` is empty"),
        Value::Array(items) if items.iter().all(Value::is_array) => {
            // One row per token: the last token's.
            let last = items.last().and_then(Value::as_array).expect("non-empty list of lists");
            match last.as_slice() {
                [s] => number(s, "the last token's score"),
                other => bail!("the last token's row has {} values; a reward model gives one", other.len()),
            }
        }
        Value::Array(items) => match items.as_slice() {
            [s] => number(s, "the score"),
            other => bail!("`data[0].data` has {} values; a reward model gives one score (num_labels 1)", other.len()),
        },
        other => bail!("`data[0].data` is neither a list nor base64: {}", excerpt(&other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(PoolingClient::new("http://127.0.0.1:8000").unwrap().url(), "http://127.0.0.1:8000/pooling");
        assert_eq!(PoolingClient::new("http://h:1/v1/").unwrap().url(), "http://h:1/pooling");
        assert_eq!(PoolingClient::new("http://h:1/pooling").unwrap().url(), "http://h:1/pooling");
        assert!(PoolingClient::new("https://h").unwrap_err().to_string().contains("https is not supported"));
        assert!(PoolingClient::new("h:8000").unwrap_err().to_string().contains("expected http://"));
        assert!(PoolingClient::new("http://").unwrap_err().to_string().contains("no host"));
    }

    #[test]
    fn answers() {
        let one = r#"{"id":"pool-1","object":"list","data":[{"index":0,"object":"pooling","data":[1.25]}]}"#;
        assert_eq!(parse_pooling_response(one).unwrap(), 1.25);
        let rows = r#"{"data":[{"index":0,"data":[[0.5],[-0.5],[2.0]]}]}"#;
        assert_eq!(parse_pooling_response(rows).unwrap(), 2.0);
        let err = |t: &str| parse_pooling_response(t).unwrap_err().to_string();
        assert!(err("<html>oops</html>").contains("not JSON"));
        assert!(err("{}").contains("no `data` list"));
        assert!(err(r#"{"data":[]}"#).contains("empty"));
        assert!(err(r#"{"data":[{"data":[1,2]}]}"#).contains("2 values"));
        assert!(err(r#"{"data":[{"data":[[1,2]]}]}"#).contains("2 values"));
        assert!(err(r#"{"data":[{"data":"AAAA"}]}"#).contains("base64"));
        assert!(err(r#"{"data":[{"data":["x"]}]}"#).contains("not a number"));
    }
}
