//! The MiniMind model in candle: one file per block, the decoder in `minimind.rs`.

mod attention;
pub mod cpu;
pub mod gguf;
pub mod init;
pub mod linear;
pub mod minimind;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use gguf::{gguf_holds_quantized, is_gguf_path, GgufModelFile, GgufWeight};
pub use cpu::Logits;
pub use minimind::{KvCache, MiniMind, Mode, ModelOutput};
pub use minimind::WeightSource;

/// Whether tensors on `device` run through mm's fused CUDA kernels (`crate::fused`): on CUDA,
/// unless `MM_NO_FUSED` is set (to measure or debug against candle's composite ops). The CPU
/// keeps the composite forms, which the upstream parity tests pin.
pub fn fused_kernels(device: &candle_core::Device) -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    device.is_cuda() && !*DISABLED.get_or_init(|| std::env::var_os("MM_NO_FUSED").is_some())
}

/// [`fused_kernels`] for a tensor: the fused kernels take f32 and bf16, so an f16 model (`--dtype
/// f16` on CUDA) runs candle's ops.
pub fn fused_for(t: &candle_core::Tensor) -> bool {
    t.dtype() != candle_core::DType::F16 && fused_kernels(t.device())
}
