//! `mm`: the MiniMind toolchain command line.

mod cli;

use clap::Parser;

// Training and inference allocate and free large tensors every step; mimalloc reuses that
// memory instead of returning it to the kernel and faulting fresh zeroed pages back in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = cli::Cli::parse();
    if let Err(err) = cli::run(args) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
