//! The sizes mm accepts from its inputs, checked before anything is allocated from them.
//!
//! A MiniMind model has at most a few hundred million parameters (MiniMind2: 26M, 104M, 145M
//! MoE). The shape limits below leave ten times that room and more, while refusing the sizes
//! a corrupt or hostile `config.json`, GGUF header or command-line flag uses to make mm allocate
//! without bound (`num_hidden_layers: 1e9`, `--hidden-size 4294967296`, …). Side files (configs,
//! tokenizers, templates) are read only when they are regular files no larger than their limit,
//! so `/dev/zero` or a FIFO given as one is an error instead of an endless read.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// `hidden_size` (MiniMind2: 512 and 768).
pub const MAX_HIDDEN_SIZE: usize = 16_384;
/// `intermediate_size`, the FFN (or expert) width.
pub const MAX_INTERMEDIATE_SIZE: usize = 65_536;
/// `num_hidden_layers` (MiniMind2: 8 and 16).
pub const MAX_LAYERS: usize = 512;
/// `num_attention_heads` and `num_key_value_heads`.
pub const MAX_ATTENTION_HEADS: usize = 1_024;
/// `vocab_size` (MiniMind: 6400).
pub const MAX_VOCAB_SIZE: usize = 1 << 20;
/// `n_routed_experts` and `n_shared_experts` (MiniMind2-MoE: 4 and 1).
pub const MAX_EXPERTS: usize = 256;
/// The declared context, `max_position_embeddings` (MiniMind2: 32768). Only a number: nothing
/// is allocated per declared position (the rotary tables are sized by the positions used).
pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 24;
/// Unique parameters of the whole model: 2^31, about 2.1 billion (f32: 8 GiB).
pub const MAX_PARAMETERS: u128 = 1 << 31;

/// `config.json`, `tokenizer_config.json`, `chat_template.json`, a `.pth` config sidecar.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `tokenizer.json` (MiniMind's is 0.5 MB; Qwen's 7 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;
/// A model file read whole rather than mapped (an MNN `llm.mnn` graph): 4 GiB, which is the
/// model's own size, but never a device or FIFO.
pub const MAX_MODEL_FILE_BYTES: u64 = 4 << 30;
/// A chat template file (`chat_template.jinja`, `--template`); see also the template limits
/// in the root crate's `chat::template`.
pub const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// Checks one shape value against its limit; the error names the field.
pub fn check_at_most(field: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        bail!("{field} {value} exceeds mm's limit of {max} (MiniMind models are far smaller)");
    }
    Ok(())
}

/// Refuses anything but a regular file (a device never ends; opening a FIFO blocks until a
/// writer comes). Readers that map or stream a file call this before opening it.
pub fn check_regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: the {what} is not a regular file", path.display());
    }
    Ok(())
}

/// The bytes of `path`, which must be a regular file of at most `max_bytes` bytes. `what`
/// names the file's role in errors (`config`, `tokenizer.json`, …).
pub fn read_file(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    check_regular_file(path, what)?;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > max_bytes {
        bail!("{}: the {what} is {} bytes, more than the {max_bytes} mm reads", path.display(), meta.len());
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after the check: read at most one byte past the limit to notice.
    file.take(max_bytes + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!("{}: the {what} is more than the {max_bytes} bytes mm reads", path.display());
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_to_string(path: &Path, max_bytes: u64, what: &str) -> Result<String> {
    String::from_utf8(read_file(path, max_bytes, what)?).with_context(|| format!("{}: the {what} is not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn devices_and_fifos_are_not_read() {
        let err = read_file(Path::new("/dev/zero"), MAX_CONFIG_BYTES, "config").unwrap_err().to_string();
        assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, vec![b' '; 2000]).unwrap();
        let err = read_to_string(&path, 1000, "config").unwrap_err().to_string();
        assert!(err.contains("big.json") && err.contains("2000 bytes"), "{err}");
        assert_eq!(read_to_string(&path, 2000, "config").unwrap().len(), 2000);
    }
}
