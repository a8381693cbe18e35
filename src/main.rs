//! `mm`: the MiniMind toolchain command line.

mod cli;

use clap::Parser;

// Training and inference allocate and free large tensors every step; mimalloc reuses that
// memory instead of returning it to the kernel and faulting fresh zeroed pages back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    keep_freed_memory();
    quiet_on_closed_stdout();
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        if is_broken_pipe(&err) {
            std::process::exit(0);
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

/// mimalloc's `purge_delay` option (its index in mimalloc's option enum, the same in the v2 and
/// v3 sources the crate builds; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// By default mimalloc gives memory freed for 10 ms back to the kernel, and the next step's
/// tensors of the same sizes fault it back in as fresh pages the kernel must zero: on the CPU
/// that zeroing was a third of an RLAIF step (`perf`: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page`). Keeping it (-1: never purge) lets each step reuse what the last
/// one freed, for about 12 % more peak memory in a CPU GRPO run (2.13 → 2.38 GB, BENCHMARKS.md).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_RESET_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options on every use and any value is valid.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Whether an error comes from writing to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `mm inspect … | head -1`: once the reader has gone, the rest of the output has nowhere to
/// go, and mm stops with status 0 as `cat` or `grep` would (Rust ignores SIGPIPE, so a write
/// to the closed pipe fails instead, and `println!` panics on that failure). Errors that
/// commands return are mapped the same way in `main`.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}
