//! ggml block quantization, bit-exact with ggml's reference (`quantize_row_*_ref`) quantizers.
//!
//! [`quantize`] and [`dequantize`] are the whole public surface; the per-format block code lives
//! in one file per family:
//! * [`float`]: F32 / F16 / BF16 and the scalar fp16/bf16 conversions;
//! * [`legacy`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks);
//! * [`k_quants`]: Q4_K, Q5_K, Q6_K (256-value super-blocks);
//! * [`rounding`]: the float → int roundings ggml uses.
//!
//! Output equals what llama-quantize writes without an importance matrix (the `_ref` path),
//! as built for x86-64 (no FMA in ggml-base); `tests/quant_golden.rs` checks it against
//! llama.cpp's own files.

pub mod float;
pub mod ggml_type;
pub mod k_quants;
mod lanes;
pub mod legacy;
pub mod rounding;

#[cfg(test)]
mod tests;

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

pub use ggml_type::GgmlType;

type Encoder = fn(&[f32], &mut [u8]);
type Decoder = fn(&[u8], &mut [f32]);

/// The block codecs of a type. Both work on any whole number of blocks.
fn codec(ty: GgmlType) -> (Encoder, Decoder) {
    match ty {
        GgmlType::F32 => (float::encode_f32, float::decode_f32),
        GgmlType::F16 => (float::encode_f16, float::decode_f16),
        GgmlType::BF16 => (float::encode_bf16, float::decode_bf16),
        GgmlType::Q4_0 => (legacy::quantize_q4_0, legacy::dequantize_q4_0),
        GgmlType::Q4_1 => (legacy::quantize_q4_1, legacy::dequantize_q4_1),
        GgmlType::Q5_0 => (legacy::quantize_q5_0, legacy::dequantize_q5_0),
        GgmlType::Q5_1 => (legacy::quantize_q5_1, legacy::dequantize_q5_1),
        GgmlType::Q8_0 => (legacy::quantize_q8_0, legacy::dequantize_q8_0),
        GgmlType::Q4_K => (k_quants::quantize_q4_k, k_quants::dequantize_q4_k),
        GgmlType::Q5_K => (k_quants::quantize_q5_k, k_quants::dequantize_q5_k),
        GgmlType::Q6_K => (k_quants::quantize_q6_k, k_quants::dequantize_q6_k),
    }
}

/// Blocks handed to one rayon task: about 8 Ki values, so small tensors stay on one thread
/// and big ones spread without per-block scheduling overhead.
fn blocks_per_task(ty: GgmlType) -> usize {
    (8192 / ty.block_size()).max(1)
}

/// Quantize `data` (row-major, rows of `n_per_row` values) to `ty`. Rows in parallel with rayon
/// (blocks are independent, so output is thread-count independent). Error (anyhow) if
/// n_per_row is not a multiple of ty.block_size() or data.len() % n_per_row != 0.
pub fn quantize(ty: GgmlType, data: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    ensure!(n_per_row > 0, "cannot quantize to {ty}: rows of 0 values");
    let Some(row_bytes) = ty.row_bytes(n_per_row) else {
        bail!(
            "cannot quantize to {ty}: a row has {n_per_row} values, not a multiple of the block size {}",
            ty.block_size()
        );
    };
    ensure!(
        data.len().is_multiple_of(n_per_row),
        "cannot quantize to {ty}: {} values is not a whole number of rows of {n_per_row}",
        data.len()
    );
    let (encode, _) = codec(ty);
    let n_blocks = data.len() / ty.block_size();
    let mut out = vec![0u8; n_blocks * ty.type_size()];
    // Rows are whole blocks, so splitting on block boundaries is splitting the same work finer.
    let per_task = blocks_per_task(ty);
    data.par_chunks(per_task * ty.block_size())
        .zip(out.par_chunks_mut(per_task * ty.type_size()))
        .for_each(|(x, y)| encode(x, y));
    debug_assert_eq!(out.len(), data.len() / n_per_row * row_bytes);
    Ok(out)
}

/// Inverse: bytes of `n` values (n multiple of the block size) → f32. Error on wrong byte length.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let Some(expected) = ty.row_bytes(n) else {
        bail!("cannot dequantize {ty}: {n} values is not a multiple of the block size {}", ty.block_size());
    };
    ensure!(
        bytes.len() == expected,
        "cannot dequantize {n} values of {ty}: expected {expected} bytes, got {}",
        bytes.len()
    );
    let (_, decode) = codec(ty);
    let mut out = vec![0f32; n];
    let per_task = blocks_per_task(ty);
    bytes
        .par_chunks(per_task * ty.type_size())
        .zip(out.par_chunks_mut(per_task * ty.block_size()))
        .for_each(|(y, x)| decode(y, x));
    Ok(out)
}
