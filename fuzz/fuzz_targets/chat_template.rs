//! Chat templates (Jinja, minijinja with mm's transformers-compatible environment): compiled
//! through the constructor mm uses everywhere, then rendered with fixed conversations (tools,
//! thinking switch, generation prompt, continue-final-message) and MiniMind's special tokens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mm::chat::{ChatTemplate, RenderRequest};
use serde_json::{json, Value};

static CONFIG: OnceLock<Value> = OnceLock::new();

fuzz_target!(init: {
    mm_fuzz::one_thread();
    CONFIG.set(serde_json::from_slice(mm_fuzz::TINY_TOKENIZER_CONFIG).expect("seed config is JSON")).unwrap();
}, |data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let Ok(template) = ChatTemplate::new(source) else { return };
    let template = template.with_special_tokens_from_config(CONFIG.get().unwrap());
    let _ = template.variables();
    let _ = template.thinking_kwargs(true);
    let messages = json!([
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi <|im_end|> there"},
        {"role": "assistant", "content": "", "reasoning_content": "think",
         "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1.5}"}}]},
        {"role": "tool", "content": "{\"r\": [1, 2]}"},
        {"role": "assistant", "content": "done"}
    ]);
    let tools = json!([{"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]);
    let _ = template.render(&RenderRequest::new(messages.clone()).with_generation_prompt(true));
    let _ = template.render(&RenderRequest::new(messages.clone()).with_tools(tools).with_kwarg("enable_thinking", json!(false)));
    let mut cont = RenderRequest::new(json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]));
    cont.continue_final_message = true;
    let _ = template.render(&cont);
});
