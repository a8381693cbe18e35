//! Helpers shared by the fuzz targets.
//!
//! Several readers take a path (they map or stream the file, or read sibling files of a
//! directory), so those targets write the input to a scratch directory and call the reader
//! on it. The directory is per process, under `/dev/shm` when it exists (no disk I/O), and is
//! removed when libFuzzer exits.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This process's scratch directory (created on first use).
pub fn scratch() -> &'static Path {
    SCRATCH.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
        let dir = base.join(format!("mm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        // SAFETY: registers a plain function; libFuzzer ends with exit(), which runs it.
        unsafe { atexit(remove_scratch) };
        dir
    })
}

/// A subdirectory of the scratch directory, created if needed.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch().join(name);
    std::fs::create_dir_all(&dir).expect("cannot create a fuzz scratch subdirectory");
    dir
}

/// Writes `bytes` to `dir/name` (replacing what was there) and returns the path.
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("cannot write a fuzz scratch file");
    path
}

/// Readers fan out with rayon; one fuzz process should use one core.
pub fn one_thread() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
}

/// Splits an input at the first `sep`: the bytes before it and, if present, after it.
pub fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], Some(&data[i + sep.len()..])),
        None => (data, None),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed files the harnesses put beside the fuzzed one (written by examples/gen_seeds.rs).

/// config.json of the small model (hidden 8, one layer, vocab 32) whose tensors are in
/// [`TINY_SAFETENSORS`] and in the pth/pickle seeds.
pub const TINY_CONFIG: &[u8] = include_bytes!("../fixtures/small-config.json");
/// model.safetensors of that small model.
pub const TINY_SAFETENSORS: &[u8] = include_bytes!("../fixtures/small.safetensors");
/// A tiny MiniMind GGUF (hidden 32, vocab 300, F16) with a chat template, for FROM lines.
pub const TINY_GGUF: &[u8] = include_bytes!("../fixtures/tiny.gguf");
/// llm.mnn and config.json of that tiny model's MNN export.
pub const TINY_MNN_NET: &[u8] = include_bytes!("../fixtures/llm.mnn");
pub const TINY_MNN_CONFIG: &[u8] = include_bytes!("../fixtures/mnn-config.json");
/// MiniMind2's tokenizer_config.json (special tokens, chat template).
pub const TINY_TOKENIZER_CONFIG: &[u8] = include_bytes!("../fixtures/tokenizer_config.json");

// ---------------------------------------------------------------------------------------------
// .pth

/// Writes a torch.save-style zip (stored entries): `<prefix>/data.pkl` = `pickle`,
/// `<prefix>/data/<i>` = `storages[i]`, `<prefix>/byteorder` = `little`.
pub fn write_torch_zip(path: &Path, prefix: &str, pickle: &[u8], storages: &[Vec<u8>]) {
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let file = std::fs::File::create(path).expect("cannot create the fuzz archive");
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: String, data: &[u8]| {
        zip.start_file(name, options).expect("zip entry");
        zip.write_all(data).expect("zip write");
    };
    add(format!("{prefix}/data.pkl"), pickle);
    add(format!("{prefix}/byteorder"), b"little");
    for (i, s) in storages.iter().enumerate() {
        add(format!("{prefix}/data/{i}"), s);
    }
    zip.finish().expect("zip finish");
}

/// The small model of [`TINY_CONFIG`] + [`TINY_SAFETENSORS`], read once.
pub fn small_checkpoint() -> &'static mm_converters::Checkpoint {
    static SMALL: OnceLock<mm_converters::Checkpoint> = OnceLock::new();
    SMALL.get_or_init(|| {
        let dir = scratch_dir("small-model");
        put(&dir, "config.json", TINY_CONFIG);
        put(&dir, "model.safetensors", TINY_SAFETENSORS);
        mm_converters::hf::read(&dir).expect("the fixture model reads")
    })
}

/// What mm does with the tensors of a `.pth`: `mm convert` (config inferred from the
/// shapes, then the checkpoint checked against it) and `mm lora merge` (A/B pairing, then
/// the adapters checked against and merged into the small model, whose shapes the LoRA seed
/// fits).
pub fn pth_consumers(path: &Path) {
    use mm_converters::lora::Lora;
    use mm_converters::pth::checkpoint::infer_config;
    use mm_converters::{pth, Checkpoint, Provenance, TokenizerFiles};
    let Ok(tensors) = pth::read_pth(path) else { return };
    if let Ok(lora) = Lora::from_tensors(tensors.clone()) {
        let _ = lora.merge_into(small_checkpoint());
    }
    for heads in [None, Some(1), Some(2)] {
        if let Ok(cfg) = infer_config(&tensors, heads) {
            let tok = TokenizerFiles { tokenizer_json: None, tokenizer_config: None, chat_template: None };
            if let Ok(ckpt) = Checkpoint::new(cfg, tensors.clone(), tok, Provenance::new("pth", path)) {
                let _ = ckpt.state_dict();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation limit

/// libFuzzer's `-malloc_limit_mb` needs a sanitizer's malloc hooks; these targets are built
/// without one (see README.md), so a single allocation above the limit (`MM_FUZZ_MALLOC_LIMIT_MB`,
/// default 2048, libFuzzer's default RSS limit) aborts here instead, with its size. That is
/// the bug class "allocates by a declared size": a huge reservation that is never touched
/// would not show in the RSS that libFuzzer watches.
struct LimitedAlloc;

static LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn limit() -> usize {
    use std::sync::atomic::Ordering;
    let l = LIMIT.load(Ordering::Relaxed);
    if l != 0 {
        return l;
    }
    // No allocation may happen here: read the variable through libc.
    extern "C" {
        fn getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
        fn atol(s: *const std::ffi::c_char) -> std::ffi::c_long;
    }
    // SAFETY: a NUL-terminated name; getenv's result is only read when non-null.
    let mb = unsafe {
        let v = getenv(c"MM_FUZZ_MALLOC_LIMIT_MB".as_ptr());
        if v.is_null() { 2048 } else { atol(v).max(1) as usize }
    };
    let l = mb << 20;
    LIMIT.store(l, Ordering::Relaxed);
    l
}

fn too_big(size: usize) -> ! {
    extern "C" {
        fn write(fd: i32, buf: *const u8, n: usize) -> isize;
    }
    const MSG: &[u8; 70] = b"==mm-fuzz== out-of-memory: one allocation of 0x0000000000000000 bytes\n";
    const DIGITS: usize = 47; // after the "0x"
    let mut msg = *MSG;
    let hex = b"0123456789abcdef";
    for i in 0..16 {
        msg[DIGITS + i] = hex[(size >> (60 - 4 * i)) & 15];
    }
    // SAFETY: writes a stack buffer to stderr.
    unsafe { write(2, msg.as_ptr(), msg.len()) };
    std::process::abort()
}

unsafe impl std::alloc::GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > limit() {
            too_big(layout.size())
        }
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > limit() {
            too_big(layout.size())
        }
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            too_big(new_size)
        }
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: LimitedAlloc = LimitedAlloc;
