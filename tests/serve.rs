//! `mm serve` over HTTP on loopback: OpenAI shapes (models, chat whole and streamed, usage,
//! n, logprobs, completions with echo), continuous batching that does not change greedy
//! output, disconnects that free their slots, and bad requests that get 4xx JSON errors while
//! the server stays up. (The openai SDK, lm-eval and a browser check it from outside in CI.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

const MM: &str = env!("CARGO_BIN_EXE_mm");

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    model: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny");
    let out = Command::new(MM)
        .args(["init", "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "3", "-o"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}

/// Starts `mm serve` on a free port and waits for its "serving … on http://ADDR" line.
fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let mut command = Command::new(MM);
    // The server dies with the test process (the shared one is never dropped).
    #[cfg(target_os = "linux")]
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .arg("serve")
        .arg(&model)
        .args(["--port", "0", "--served-model-name", "tiny"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no address in {line:?}"));
    Server { child, base: format!("http://{addr}"), _dir: dir, model }
}

/// One server for the tests that can share it. Linux's parent-death signal follows the
/// thread that spawned the child, so it is spawned from a thread that lives as long as the
/// test process.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            tx.send(start(&["--max-batch", "32"])).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap()
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(300))).build().into()
}

fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut r = agent().post(&format!("{base}{path}")).send_json(body).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

fn post_raw(base: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut r = agent().post(&format!("{base}{path}")).header("content-type", "application/json").send(body).unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
}

/// The head and body (by Content-Length) of one HTTP response on a raw socket.
fn read_response(sock: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        sock.read_exact(&mut byte).unwrap();
        data.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&data).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    sock.read_exact(&mut body).unwrap();
    (head, body)
}

fn get(base: &str, path: &str) -> (u16, String) {
    let mut r = agent().get(&format!("{base}{path}")).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The `data:` payloads of an SSE response.
fn stream(base: &str, path: &str, body: &Value) -> Vec<String> {
    let mut r = agent().post(&format!("{base}{path}")).send_json(body).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.body_mut().read_to_string().unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect()
}

fn chat(messages: Value, extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 12});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

fn hello() -> Value {
    json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好"}])
}

#[test]
fn models_and_whole_chat_completions_have_openai_shapes() {
    let s = shared();
    let (status, models) = get(&s.base, "/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");

    let (status, r) = post(&s.base, "/v1/chat/completions", &chat(hello(), json!({"n": 2, "logprobs": true, "top_logprobs": 3})));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["model"], "tiny");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["message"]["role"], "assistant");
        assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
        let lp = c["logprobs"]["content"].as_array().unwrap();
        assert!(!lp.is_empty());
        for e in lp {
            let top = e["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            // The chosen token is greedy here, so it is the best alternative.
            assert_eq!(top[0]["logprob"], e["logprob"]);
        }
    }
    // Greedy: both choices are the same.
    assert_eq!(choices[0]["message"], choices[1]["message"]);
    let usage = &r["usage"];
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap());
}

#[test]
fn streamed_chat_sends_role_first_chunks_usage_and_done() {
    let s = shared();
    let (_, whole) = post(&s.base, "/v1/chat/completions", &chat(hello(), json!({})));
    let events = stream(&s.base, "/v1/chat/completions", &chat(hello(), json!({"stream": true, "stream_options": {"include_usage": true}})));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    let mut finish = None;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        assert_eq!(c["model"], "tiny");
        assert!(c["created"].is_u64());
        assert_eq!(c["choices"][0]["index"], 0);
        content.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], whole["usage"]);
    assert_eq!(content, whole["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(finish.as_deref(), whole["choices"][0]["finish_reason"].as_str());
}

/// The content a stream adds up to.
fn streamed_content(base: &str, body: &Value) -> String {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let events = stream(base, "/v1/chat/completions", &body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn greedy_output_does_not_depend_on_the_batch() {
    let s = shared();
    // 32 simultaneous streaming clients, every reply equal to the same request served alone.
    let prompts: Vec<Value> =
        (0..32).map(|i| json!([{"role": "user", "content": format!("问题 {i}: {}", "为什么".repeat(i % 5))}])).collect();
    let body = |m: &Value| chat(m.clone(), json!({"max_tokens": 16}));
    let alone: Vec<String> = prompts.iter().map(|m| streamed_content(&s.base, &body(m))).collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts.iter().map(|m| scope.spawn(|| streamed_content(&s.base, &body(m)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    let whole = post(&s.base, "/v1/chat/completions", &body(&prompts[3])).1;
    assert_eq!(whole["choices"][0]["message"]["content"], alone[3]);
}

#[test]
fn completions_echo_logprobs_are_the_models_own() {
    let s = shared();
    let ids: Vec<u32> = vec![1, 320, 1450, 271, 3012, 88];
    let (status, r) = post(
        &s.base,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": [ids.clone()], "max_tokens": 1, "logprobs": 1, "echo": true, "temperature": 0}),
    );
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let token_logprobs = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(token_logprobs.len(), ids.len() + 1, "every prompt position plus the generated token");
    assert!(token_logprobs[0].is_null());
    assert_eq!(lp["tokens"].as_array().unwrap().len(), ids.len() + 1);
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), ids.len() + 1);
    // The same figures from mm's own forward pass.
    let loaded = mm::loaded::LoadedModel::load(&s.model, &Default::default()).unwrap();
    let mut cache = mm::model::KvCache::new(&loaded.model.config);
    let logits: Vec<Vec<f32>> = loaded.model.forward_all_logits(&ids, &mut cache).unwrap().to_vec2().unwrap();
    let mut worst = 0f64;
    for i in 1..ids.len() {
        let lse = logits[i - 1].iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        let want = logits[i - 1][ids[i] as usize] as f64 - lse;
        worst = worst.max((token_logprobs[i].as_f64().unwrap() - want).abs());
        let top = lp["top_logprobs"][i].as_object().unwrap();
        let best = logits[i - 1].iter().copied().fold(f32::MIN, f32::max) as f64 - lse;
        assert!((top.values().next().unwrap().as_f64().unwrap() - best).abs() < 1e-4, "top_logprobs lacks the argmax");
    }
    assert!(worst < 1e-4, "token logprobs differ from the model's by {worst}");
    // Several prompts (strings and ids), max_tokens 0 with echo.
    let (status, r) = post(&s.base, "/v1/completions", &json!({"prompt": ["a b", "c"], "max_tokens": 0, "echo": true}));
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert_eq!(r["choices"][1]["text"], "c");
    assert_eq!(r["usage"]["completion_tokens"], 0);
}

#[test]
fn tokenizer_endpoints_have_vllm_shapes() {
    let s = shared();
    let (status, r) = post(&s.base, "/tokenize", &json!({"prompt": "你好 world", "add_special_tokens": false}));
    assert_eq!(status, 200, "{r}");
    let ids = r["tokens"].clone();
    assert_eq!(r["count"], ids.as_array().unwrap().len());
    let (_, back) = post(&s.base, "/detokenize", &json!({"tokens": ids}));
    assert_eq!(back["prompt"], "你好 world");
    let (status, info) = get(&s.base, "/tokenizer_info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(info["eos_token"].is_string() && info["chat_template"].is_string(), "{info}");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let s = shared();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, None),
        ("/v1/chat/completions", b"[1, 2]".to_vec(), 400, None),
        ("/v1/chat/completions", br#"{"messages": []}"#.to_vec(), 400, Some("messages")),
        ("/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), 400, Some("messages")),
        ("/v1/chat/completions", br#"{"messages": [{"content": "x"}]}"#.to_vec(), 400, Some("messages")),
        ("/v1/chat/completions", br#"{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}"#.to_vec(), 404, Some("model")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}"#.to_vec(), 400, Some("max_tokens")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e30}"#.to_vec(), 400, Some("max_tokens")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#.to_vec(), 400, Some("temperature")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}"#.to_vec(), 400, None),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "temperature": -1}"#.to_vec(), 400, Some("temperature")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "n": 1000}"#.to_vec(), 400, Some("n")),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "x"}], "stop": 5}"#.to_vec(), 400, Some("stop")),
        ("/v1/completions", br#"{"prompt": [[1, 99999999]]}"#.to_vec(), 400, Some("prompt")),
        ("/v1/completions", br#"{"prompt": {"a": 1}}"#.to_vec(), 400, Some("prompt")),
        ("/v1/nothing", b"{}".to_vec(), 404, None),
    ];
    for (path, body, want, param) in cases {
        let (status, r) = post_raw(&s.base, path, &body);
        assert_eq!(status, want, "{path} {}: {r}", String::from_utf8_lossy(&body));
        let e = &r["error"];
        assert!(e["message"].is_string() && e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{r}");
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{r}");
        }
    }
    // A 20 MB body: refused from its Content-Length, before it is read.
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 20 << 20).unwrap();
    let mut writer = sock.try_clone().unwrap();
    // Written from another thread: the server stops reading once the limit is passed.
    std::thread::spawn(move || {
        let _ = writer.write_all(&vec![b' '; 20 << 20]);
    });
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (head, body) = read_response(&mut sock);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let r: Value = serde_json::from_slice(&body).unwrap();
    assert!(r["error"]["message"].as_str().unwrap().contains("limit"), "{r}");
    let (status, _) = get(&s.base, "/health");
    assert_eq!(status, 200);
}

#[test]
fn an_api_key_is_required_when_set() {
    let s = start(&["--api-key", "sekrit"]);
    let (status, r) = post(&s.base, "/v1/chat/completions", &chat(hello(), json!({})));
    assert_eq!(status, 401, "{r}");
    assert_eq!(r["error"]["code"], "invalid_api_key");
    let mut ok = agent().get(&format!("{}/v1/models", s.base)).header("Authorization", "Bearer sekrit").call().unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let _ = ok.body_mut().read_to_string();
    assert_eq!(get(&s.base, "/health").0, 200);
}

#[test]
fn clients_that_disconnect_free_their_slots() {
    let s = start(&["--max-batch", "16", "--ctx", "30000"]);
    let addr = s.base.strip_prefix("http://").unwrap().to_string();
    // Greedy on random weights loops without ever choosing the end of turn: a reply as long as asked.
    let body = json!({"messages": [{"role": "user", "content": "讲个很长的故事"}], "max_tokens": 25000, "stream": true, "temperature": 0}).to_string();
    let mut sockets = Vec::new();
    for _ in 0..8 {
        let mut sock = TcpStream::connect(&addr).unwrap();
        write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut first = [0u8; 64];
        sock.read_exact(&mut first).unwrap(); // the stream has started
        sockets.push(sock);
    }
    let active = |s: &Server| -> u64 {
        let (_, text) = get(&s.base, "/metrics");
        text.lines().find_map(|l| l.strip_prefix("mm_active_sequences ")).unwrap().parse().unwrap()
    };
    let started = std::time::Instant::now();
    while active(&s) < 8 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(active(&s), 8, "the streams were not all decoding");
    drop(sockets);
    let started = std::time::Instant::now();
    while active(&s) > 0 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(active(&s), 0, "slots of disconnected clients were not freed");
    let (_, text) = get(&s.base, "/metrics");
    let cancelled: u64 = text.lines().find_map(|l| l.strip_prefix("mm_requests_cancelled_total ")).unwrap().parse().unwrap();
    assert_eq!(cancelled, 8, "{text}");
}

#[test]
fn ten_thousand_mutated_requests_get_answers_and_memory_stays_bounded() {
    let s = start(&["--ctx", "48", "--max-batch", "4"]);
    let pid = s.child.id();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
    };
    let seeds: Vec<(&str, String)> = vec![
        ("/v1/chat/completions", chat(hello(), json!({"max_tokens": 4, "n": 2, "logprobs": true, "top_logprobs": 2})).to_string()),
        ("/v1/chat/completions", chat(hello(), json!({"stream": true, "stop": ["a", "b"]})).to_string()),
        ("/v1/completions", json!({"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 3, "echo": true, "logprobs": 2}).to_string()),
        ("/tokenize", json!({"prompt": "你好", "add_special_tokens": false}).to_string()),
        ("/detokenize", json!({"tokens": [1, 2, 300]}).to_string()),
    ];
    let alphabet = br#"{}[]":,0123456789-.eE truefalsnul\"abc"#;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Warm up the allocator, then measure.
    for (path, body) in &seeds {
        let mut r = agent().post(&format!("{}{path}", s.base)).header("content-type", "application/json").send(body.as_bytes()).unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.body_mut().read_to_string().unwrap();
    }
    let before = rss();
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..10_000 {
        let (path, seed) = &seeds[(next() % seeds.len() as u64) as usize];
        let mut body = seed.clone().into_bytes();
        for _ in 0..1 + next() % 4 {
            let len = body.len();
            let at = (next() % len.max(1) as u64) as usize;
            let byte = alphabet[(next() % alphabet.len() as u64) as usize];
            match next() % 4 {
                _ if len == 0 => body.push(byte),
                0 => body[at.min(len - 1)] = byte,
                1 => body.insert(at, byte),
                2 => {
                    body.remove(at.min(len - 1));
                }
                _ => body.truncate(at.max(1)),
            }
        }
        let mut r = agent().post(&format!("{}{path}", s.base)).header("content-type", "application/json").send(&body[..]).unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        assert!(status == 200 || (400..500).contains(&status), "{status} for {}: {text}", String::from_utf8_lossy(&body));
        if status != 200 {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
            assert!(v["error"]["message"].is_string(), "{text}");
        }
        *statuses.entry(status).or_insert(0u32) += 1;
    }
    let after = rss();
    println!("statuses {statuses:?}; RSS {before} kB -> {after} kB");
    assert_eq!(get(&s.base, "/health").0, 200);
    assert!(after < before + 64 * 1024, "RSS grew from {before} kB to {after} kB");
}

#[test]
fn a_conversation_longer_than_the_context_is_cut_on_tokens_and_still_answered() {
    let s = start(&["--ctx", "96"]);
    let mut messages = vec![json!({"role": "system", "content": "You are terse."})];
    for i in 0..40 {
        messages.push(json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("第{i}句话，内容很长很长。")}));
    }
    let (status, r) = post(&s.base, "/v1/chat/completions", &chat(json!(messages), json!({"max_tokens": 8})));
    assert_eq!(status, 200, "{r}");
    let prompt_tokens = r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens + 8 <= 96, "prompt of {prompt_tokens} tokens in a 96-token context");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    // A system prompt that alone overflows the context is an error, not a silent cut.
    let long_system = json!([{"role": "system", "content": "很长的系统提示。".repeat(100)}, {"role": "user", "content": "hi"}]);
    let (status, r) = post(&s.base, "/v1/chat/completions", &chat(long_system, json!({"max_tokens": 8})));
    assert_eq!(status, 400, "{r}");
}

#[test]
fn a_full_queue_answers_503_and_a_deadline_ends_a_request() {
    let s = start(&["--max-batch", "1", "--queue", "1", "--ctx", "30000", "--timeout", "3"]);
    let addr = s.base.strip_prefix("http://").unwrap().to_string();
    // Greedy on random weights never ends its turn: each of these runs until its deadline.
    let body = json!({"messages": [{"role": "user", "content": "讲个很长的故事"}], "max_tokens": 25000, "stream": true, "temperature": 0}).to_string();
    let open_stream = || {
        let mut sock = TcpStream::connect(&addr).unwrap();
        write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        sock
    };
    let first = open_stream(); // decoding
    std::thread::sleep(Duration::from_millis(500));
    let second = open_stream(); // waiting in the queue
    std::thread::sleep(Duration::from_millis(200));
    let (status, r) = post(&s.base, "/v1/chat/completions", &chat(hello(), json!({})));
    assert_eq!(status, 503, "{r}");
    assert_eq!(r["error"]["code"], "server_busy");
    // The running request ends at its 3 s deadline with finish_reason "length".
    let mut text = String::new();
    let mut reader = BufReader::new(first);
    let started = std::time::Instant::now();
    while !text.contains("[DONE]") && started.elapsed() < Duration::from_secs(60) {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
    }
    assert!(text.contains(r#""finish_reason":"length""#) && text.contains("[DONE]"), "{}", &text[text.len().saturating_sub(500)..]);
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(second);
}
