//! `mm chat`: an interactive conversation that keeps its history.

use std::io::{BufRead, Write};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use mm::chat::StreamDecoder;
use mm::generate::{generate, Sampler};

use super::generate::render_prompt;
use super::{ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Keep only the last N messages of history (default: all that fit the context).
    #[arg(long)]
    history: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let loaded = a.model.load()?;
    let eos = loaded.tokenizer.eos_id().unwrap_or(loaded.model.config.eos_token_id);
    let context = loaded.model.config.max_position_embeddings;
    eprintln!("{}", loaded.checkpoint_summary);
    eprintln!("type a message; /reset clears the history, /exit or Ctrl-D quits");
    let mut history: Vec<Value> = Vec::new();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    loop {
        print!("> ");
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                history.clear();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(json!({"role": "user", "content": line}));
        if let Some(n) = a.history {
            let excess = history.len().saturating_sub(n.max(1));
            history.drain(..excess);
        }
        // Drop the oldest turns until the prompt leaves room to answer.
        let prompt = loop {
            let mut messages = Vec::new();
            if let Some(system) = &a.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.extend(history.iter().cloned());
            let ids = loaded.tokenizer.encode(&render_prompt(&loaded, &json!(messages))?, false)?;
            if ids.len() + 16 < context || history.len() <= 1 {
                break ids;
            }
            history.drain(..2.min(history.len() - 1));
        };
        let mut params = a.sampling.params(vec![eos]);
        params.seed = params.seed.wrapping_add(turn);
        turn += 1;
        let mut sampler = Sampler::new(params)?;
        let mut decoder = StreamDecoder::new(&loaded.tokenizer);
        let mut reply = String::new();
        let tokens = generate(&loaded.model, &prompt, &mut sampler, |id| {
            let piece = decoder.push(id)?;
            reply.push_str(&piece);
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
            Ok(true)
        })?;
        let tail = decoder.finish()?;
        reply.push_str(&tail);
        println!("{tail}");
        let content = loaded.tokenizer.decode(&tokens, true)?;
        history.push(json!({"role": "assistant", "content": content}));
    }
}
