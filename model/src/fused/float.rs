//! The storage types the fused ops accept (f32 and bf16; all arithmetic is f32) and how the CPU
//! paths read their inputs.

use candle_core::{bail, CpuStorage, Layout, Result, WithDType};
use half::bf16;

/// A storage type of the fused ops: converts to f32 for the arithmetic and back (round to
/// nearest even, as candle and torch store bf16).
pub trait FusedFloat: WithDType {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;

    /// `v` as it reads back after being stored as `Self`: where a composite op would have
    /// written a tensor of this dtype. (Not `round`: that would resolve to `f32::round`.)
    fn round_trip(v: f32) -> f32 {
        Self::from_f32(v).to_f32()
    }
}

impl FusedFloat for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl FusedFloat for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// Runs `$body` with `$T` bound to the Rust type of `$dtype` (f32 or bf16); any other dtype is
/// an error naming the op.
macro_rules! with_float_type {
    ($dtype:expr, $op:expr, $T:ident => $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            other => candle_core::bail!("{}: dtype {other:?} is not supported (f32 or bf16)", $op),
        }
    };
}
pub(crate) use with_float_type;

/// The elements of a contiguous CPU operand (the public wrappers make every operand contiguous).
pub(crate) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused op: {what} is not contiguous");
    };
    Ok(&T::cpu_storage_as_slice(s)?[start..end])
}

/// Checks what every public wrapper needs: an f32 or bf16 tensor with at least one element.
pub(crate) fn check_float(op: &str, what: &str, t: &candle_core::Tensor) -> Result<()> {
    if !matches!(t.dtype(), candle_core::DType::F32 | candle_core::DType::BF16) {
        bail!("{op}: {what} is {:?}; the fused op takes f32 or bf16", t.dtype());
    }
    if t.elem_count() == 0 {
        bail!("{op}: {what} is empty");
    }
    Ok(())
}
