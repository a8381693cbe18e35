//! `mm chat`: an interactive conversation that keeps its history.
//!
//! Ctrl-C during a reply stops that reply and returns to the prompt; Ctrl-C at the prompt
//! (or a second one before the reply has noticed the first) ends the chat. While a reply
//! streams to a terminal, what is typed is not echoed into it, and it is thrown away before
//! the next prompt (termios: ECHO off, then TCIFLUSH).

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
    interrupt::install()?;
    eprintln!("{}", loaded.checkpoint_summary);
    eprintln!("type a message; Ctrl-C stops a reply, /reset clears the history, /exit, Ctrl-D or Ctrl-C at the prompt quits");
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
        let quiet = terminal::QuietInput::start();
        interrupt::replying();
        let result = generate(&loaded.model, &prompt, &mut sampler, |id| {
            let piece = decoder.push(id)?;
            reply.push_str(&piece);
            stdout.write_all(piece.as_bytes())?;
            stdout.flush()?;
            Ok(!interrupt::stop_requested())
        });
        let stopped = interrupt::back_at_prompt();
        drop(quiet);
        let tokens = result?;
        let tail = decoder.finish()?;
        reply.push_str(&tail);
        println!("{tail}");
        if stopped {
            eprintln!("(reply stopped)");
        }
        // A stopped reply stays in the history as far as it went.
        let content = loaded.tokenizer.decode(&tokens, true)?;
        history.push(json!({"role": "assistant", "content": content}));
    }
}

/// Where the chat is, for the Ctrl-C handler: a reply asks to be stopped, the prompt exits.
mod interrupt {
    use std::sync::atomic::{AtomicU8, Ordering::SeqCst};

    use anyhow::Result;

    const PROMPT: u8 = 0;
    const REPLYING: u8 = 1;
    const STOPPING: u8 = 2;
    static STATE: AtomicU8 = AtomicU8::new(PROMPT);

    /// Handles SIGINT on a thread of its own from now on.
    #[cfg(unix)]
    pub fn install() -> Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if STATE.compare_exchange(REPLYING, STOPPING, SeqCst, SeqCst).is_err() {
                    // At the prompt, or the reply has not reached its next token yet.
                    super::terminal::restore();
                    eprintln!();
                    std::process::exit(130);
                }
            }
        });
        Ok(())
    }

    #[cfg(not(unix))]
    pub fn install() -> Result<()> {
        Ok(())
    }

    pub fn replying() {
        STATE.store(REPLYING, SeqCst);
    }

    pub fn stop_requested() -> bool {
        STATE.load(SeqCst) == STOPPING
    }

    /// Back at the prompt; whether Ctrl-C stopped the reply.
    pub fn back_at_prompt() -> bool {
        STATE.swap(PROMPT, SeqCst) == STOPPING
    }
}

/// Terminal input while a reply streams.
mod terminal {
    #[cfg(unix)]
    static SAVED: std::sync::Mutex<Option<libc::termios>> = std::sync::Mutex::new(None);

    /// While alive, input typed on a terminal stdin is not echoed; dropping it restores the
    /// terminal and discards what was typed meanwhile. Does nothing when stdin is no terminal.
    pub struct QuietInput(());

    impl QuietInput {
        pub fn start() -> Option<Self> {
            #[cfg(unix)]
            {
                // SAFETY: tcgetattr/tcsetattr on fd 0 with a termios owned here.
                let mut t: libc::termios = unsafe { std::mem::zeroed() };
                if unsafe { libc::isatty(0) } != 1 || unsafe { libc::tcgetattr(0, &mut t) } != 0 {
                    return None;
                }
                *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                let mut quiet = t;
                quiet.c_lflag &= !libc::ECHO;
                unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
                Some(Self(()))
            }
            #[cfg(not(unix))]
            None
        }
    }

    impl Drop for QuietInput {
        fn drop(&mut self) {
            restore();
            // SAFETY: discards pending input on fd 0, a terminal (checked in `start`).
            #[cfg(unix)]
            unsafe {
                libc::tcflush(0, libc::TCIFLUSH);
            }
        }
    }

    /// Puts back the terminal settings saved by `QuietInput::start`, if any.
    pub fn restore() {
        #[cfg(unix)]
        if let Some(t) = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // SAFETY: restores settings read from this terminal by tcgetattr.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
