//! The fused kernels on candle's CUDA device: the PTX build.rs compiled from
//! src/fused/kernels/*.cu (one module per file, JIT-loaded once per device), and the small
//! helpers every op's launch code shares.

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::{kernel_name, CudaDType, CudaDevice};
use candle_core::{bail, Layout, Result, WithDType};

use super::float::FusedFloat;

/// One .cu file's PTX and the module name candle caches it under.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

macro_rules! ptx_module {
    ($const:ident, $file:literal) => {
        pub(crate) const $const: Module =
            Module { name: concat!("mm-fused-", $file), ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")) };
    };
}
ptx_module!(RMS_NORM, "rms_norm");
ptx_module!(ROPE, "rope");
ptx_module!(CAUSAL_SOFTMAX, "causal_softmax");
ptx_module!(SWIGLU, "swiglu");
ptx_module!(CROSS_ENTROPY, "cross_entropy");
ptx_module!(ADAMW, "adamw");
ptx_module!(GRAD_NORM, "grad_norm");
ptx_module!(EMBEDDING, "embedding");
ptx_module!(SWAP_MIDDLE, "swap_middle");

impl Module {
    /// The kernel `<root>_<dtype>` (the .cu files instantiate each kernel for f32 and bf16).
    pub(crate) fn get<T: WithDType>(&self, dev: &CudaDevice, root: &str) -> Result<CudaFunction> {
        self.get_named(dev, &kernel_name::<T>(root))
    }

    /// A kernel by its full name.
    pub(crate) fn get_named(&self, dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
        Ok((*dev.get_or_load_custom_func(name, self.name, self.ptx)?).clone())
    }
}

/// What a fused kernel can be instantiated for on the device.
pub(crate) trait GpuFloat: FusedFloat + CudaDType + DeviceRepr {}
impl GpuFloat for f32 {}
impl GpuFloat for half::bf16 {}

/// The elements of a contiguous device operand.
pub(crate) fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused op: {what} is not contiguous");
    };
    Ok(s.slice(start..end))
}

/// `grid` blocks of `threads` threads with `shared` bytes of dynamic shared memory.
pub(crate) fn config(grid: usize, threads: u32, shared: u32) -> Result<LaunchConfig> {
    let Ok(grid) = u32::try_from(grid) else { bail!("fused op: {grid} blocks is too many") };
    Ok(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared })
}

/// Threads for a block that strides over `n` elements of one row: a multiple of 32, at most
/// 1024, about `per_thread` elements each.
pub(crate) fn row_threads(n: usize, per_thread: usize) -> u32 {
    (n.div_ceil(per_thread).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Blocks of `threads` threads covering `n` elements one per thread.
pub(crate) fn grid_for(n: usize, threads: u32) -> usize {
    n.div_ceil(threads as usize)
}

/// A u32 kernel argument, checked.
pub(crate) fn u32_arg(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("fused op: {what} = {v} does not fit in u32")))
}

/// Blocks of 256 threads for a grid-stride loop over `n` elements (a few waves of an
/// H100/H200 at most; each thread then handles several elements).
pub(crate) fn elementwise_grid(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 8192)
}
