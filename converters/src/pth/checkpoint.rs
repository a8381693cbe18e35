//! Upstream `.pth` state dicts as checkpoints: the tensors come from the `.pth`, the config
//! from a sidecar JSON when there is one, otherwise from the tensor shapes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use crate::checkpoint::{Checkpoint, Provenance, TokenizerFiles};
use crate::config::MiniMindConfig;
use crate::hf::{read_tokenizer_files, read_tokenizer_files_prefixed, write_tokenizer_files_prefixed};
use crate::naming::EMBED;
use crate::pth;

/// What a bare state dict cannot tell: the head count and the RoPE settings.
#[derive(Debug, Clone, Default)]
pub struct PthHints {
    /// A full config to use instead of inferring one.
    pub config: Option<MiniMindConfig>,
    /// Attention heads when inferring (upstream default: 8).
    pub num_attention_heads: Option<usize>,
}

/// The sidecar mm writes beside a `.pth`: `<stem>.config.json`.
pub fn sidecar_config_path(pth_path: &Path) -> PathBuf {
    pth_path.with_file_name(format!("{}config.json", sidecar_prefix(pth_path)))
}

/// `<stem>.`: the prefix of the sidecars (config, tokenizer files) beside a `.pth`.
pub fn sidecar_prefix(pth_path: &Path) -> String {
    let stem = pth_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{stem}.")
}

pub fn read(path: &Path, hints: &PthHints) -> Result<Checkpoint> {
    let tensors = pth::read_pth(path)?;
    let mut provenance = Provenance::new("pth", path);
    let config = match &hints.config {
        Some(c) => c.clone(),
        None => {
            let sidecar = sidecar_config_path(path);
            let beside = path.with_file_name("config.json");
            if sidecar.exists() {
                MiniMindConfig::from_file(&sidecar)?
            } else if beside.exists() {
                MiniMindConfig::from_file(&beside)?
            } else {
                let cfg = infer_config(&tensors, hints.num_attention_heads)
                    .with_context(|| format!("{}: cannot infer the model shape", path.display()))?;
                provenance.notes.push(format!(
                    "config inferred from tensor shapes ({} heads; pass --heads if that is wrong)",
                    cfg.num_attention_heads
                ));
                cfg
            }
        }
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Its own sidecars first (`<stem>.tokenizer.json`, as mm writes them), then the
    // directory's tokenizer files (an upstream checkout), then the built-in tokenizer.
    let mut tokenizer = read_tokenizer_files_prefixed(dir, &sidecar_prefix(path))?;
    if tokenizer.is_empty() {
        tokenizer = read_tokenizer_files(dir)?;
    }
    if tokenizer.is_empty() {
        tokenizer = TokenizerFiles::builtin_minimind2();
        provenance.notes.push("no tokenizer beside the file: using the built-in MiniMind2 tokenizer".into());
    }
    Checkpoint::new(config, tensors, tokenizer, provenance).with_context(|| format!("{}", path.display()))
}

/// Writes the upstream layout (every key, tied head included, like `torch.save(state_dict)`)
/// and the sidecars that let mm read it back whole without hints: `<stem>.config.json` and
/// the tokenizer (`<stem>.tokenizer.json`, `<stem>.tokenizer_config.json` with the chat
/// template).
pub fn write(ckpt: &Checkpoint, path: &Path) -> Result<()> {
    pth::write_pth(path, &ckpt.state_dict())?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    write_tokenizer_files_prefixed(&ckpt.tokenizer, dir, &sidecar_prefix(path))?;
    let config = ckpt.config.to_minimind_json(crate::checkpoint::hf_dtype_name(
        ckpt.uniform_dtype().unwrap_or(candle_core::DType::F32),
    ));
    crate::atomic::write_file_atomically(&sidecar_config_path(path), crate::output_guard::FileKind::Json, |w| {
        use std::io::Write;
        Ok(w.write_all(serde_json::to_string_pretty(&config)?.as_bytes())?)
    })
}

/// Reconstructs the config from state-dict shapes; everything not visible in the shapes
/// keeps upstream's default.
pub fn infer_config(tensors: &[(String, Tensor)], heads: Option<usize>) -> Result<MiniMindConfig> {
    let shape = |name: &str| -> Result<Vec<usize>> {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.dims().to_vec())
            .with_context(|| format!("no tensor `{name}`"))
    };
    let embed = shape(EMBED)?;
    if embed.len() != 2 {
        bail!("`{EMBED}` has shape {embed:?}, expected [vocab, hidden]");
    }
    let (vocab_size, hidden_size) = (embed[0], embed[1]);
    let layer_of = |n: &str| n.strip_prefix("model.layers.")?.split('.').next()?.parse::<usize>().ok();
    let num_hidden_layers = tensors.iter().filter_map(|(n, _)| layer_of(n)).max().map_or(0, |m| m + 1);
    let count = |part: &str| {
        let mut ids: Vec<usize> = tensors
            .iter()
            .filter_map(|(n, _)| n.strip_prefix("model.layers.0.mlp.")?.strip_prefix(part)?.split('.').next()?.parse().ok())
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    let n_routed_experts = count("experts.");
    let use_moe = n_routed_experts > 0;
    let ffn_name = if use_moe { "model.layers.0.mlp.experts.0.gate_proj.weight" } else { "model.layers.0.mlp.gate_proj.weight" };
    // A 0-d tensor has no rows: `rows` is an error for it, not an index past the end.
    let rows = |name: &str| -> Result<usize> {
        let dims = shape(name)?;
        match dims.as_slice() {
            [rows, _] => Ok(*rows),
            _ => bail!("`{name}` has shape {dims:?}, expected a matrix"),
        }
    };
    let intermediate_size = rows(ffn_name)?;
    let num_attention_heads = heads.unwrap_or(MiniMindConfig::default().num_attention_heads);
    if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
        bail!("{num_attention_heads} heads do not divide hidden size {hidden_size}; pass the head count");
    }
    let kv_dim = rows("model.layers.0.self_attn.k_proj.weight")?;
    let head_dim = hidden_size / num_attention_heads;
    if kv_dim % head_dim != 0 {
        bail!("k_proj rows {kv_dim} are not a multiple of head_dim {head_dim}; pass the head count");
    }
    let defaults = MiniMindConfig::default();
    Ok(MiniMindConfig {
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads: kv_dim / head_dim,
        vocab_size,
        intermediate_size,
        use_moe,
        n_routed_experts: if use_moe { n_routed_experts } else { defaults.n_routed_experts },
        n_shared_experts: if use_moe { count("shared_experts.") } else { defaults.n_shared_experts },
        ..defaults
    })
}
