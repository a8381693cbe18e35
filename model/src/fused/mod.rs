//! Fused forward+backward kernels for training: candle custom ops that take part in autograd,
//! each with a plain-Rust CPU path (the reference the tests check) and, with the `cuda`
//! feature, a CUDA kernel compiled to PTX by build.rs from `kernels/*.cu`.
//!
//! Every op takes f32 or bf16 activations, computes in f32 and rounds where the composite
//! candle form it replaces would have stored a tensor (see each op's module docs and
//! [`reference`]). Inputs may be non-contiguous: the wrappers copy them first.
//!
//! * [`cross_entropy`]`(logits [n, v], targets [n] u32)`: f32 loss per row; dlogits.
//! * [`rms_norm`]`(x [.., h], w [h], eps)`: dx and dw.
//! * [`causal_softmax`]`(scores [.., t, t], scale)`: dscores; the causal mask built in.
//! * [`rope`]`(x [b, h, t, d], cos, sin [t, d/2])`: dx; bit-identical to `rope_slow`.
//! * [`swiglu`]`(gate, up)`: `silu(gate) * up`; dgate and dup.
//! * [`swap_middle`]`(x [a, b, c, d])`: `[a, c, b, d]` contiguous (attention's head transposes).
//! * [`embedding`]`(weight [v, h], ids)`: rows; a deterministic dweight (no atomics).
//! * [`adamw_step_`]: one in-place AdamW step of a parameter and its moments (f32), with
//!   [`sum_of_squares`] for gradient clipping without a host sync.
//! * [`accumulate_`]: `acc += g` in place (gradient buffers that outlive a step).

mod accumulate;
mod adamw;
mod causal_softmax;
pub mod compare;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod embedding;
mod float;
mod grad_norm;
pub mod reference;
mod rms_norm;
mod rope;
pub mod selftest;
mod swap_middle;
mod swiglu;

pub use accumulate::accumulate_;
pub use adamw::{adamw_constants, adamw_step_, adamw_step_with_, set_adamw_constants, AdamWStep};
pub use causal_softmax::causal_softmax;
pub use cross_entropy::cross_entropy;
pub use embedding::embedding;
pub use float::FusedFloat;
pub use grad_norm::{clip_coefficient, sum_of_squares};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use swap_middle::swap_middle;
pub use swiglu::swiglu;
