//! Per-token cross-entropy as one kernel with its own backward: moved to
//! [`mm_model::fused::cross_entropy`] (which also takes bf16 logits and runs on CUDA). These are
//! the names the trainer calls.

use candle_core::{DType, Result, Tensor};

/// Whether the fused kernel is used here (CPU, f32 logits, u32 targets); otherwise callers use
/// the composed form. Unchanged by the move: widening it to CUDA or bf16 is the caller's choice.
pub fn supported(logits: &Tensor, targets: &Tensor) -> bool {
    logits.device().is_cpu() && logits.dtype() == DType::F32 && targets.dtype() == DType::U32
}

/// Loss per row of `logits` [n, v] against `targets` [n].
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    mm_model::fused::cross_entropy(logits, targets)
}
