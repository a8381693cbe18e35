//! Opening the compute device, and what it can tell about memory.
//!
//! A CUDA device is set up for one process driving one stream, which is how mm trains and
//! generates:
//! * candle's per-allocation CUDA events are turned off. They exist to order buffers shared
//!   between streams; with one stream they only cost two event records per kernel launch.
//! * the stream-ordered memory pool keeps what it has reserved. By default it gives memory
//!   back to the driver at every synchronisation (release threshold 0), so a training step
//!   that reads its loss would map and unmap gigabytes every step.

use anyhow::Result;
use candle_core::Device;

/// The peak memory of the device's stream-ordered pool since the last [`reset_peak_memory`]:
/// bytes handed out to tensors, and bytes the pool reserved from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakMemory {
    pub used: u64,
    pub reserved: u64,
}

/// CUDA device `ordinal`, configured as described in the module docs.
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    let cuda = device.as_cuda_device()?;
    // SAFETY: mm drives each device from one stream (candle's), so no buffer is ever shared
    // across streams and the events have nothing to order.
    unsafe { cuda.disable_event_tracking() };
    pool::set_attribute(&device, pool::Attribute::ReleaseThreshold, u64::MAX)?;
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
pub fn open_cuda(_ordinal: usize) -> Result<Device> {
    anyhow::bail!("this mm was built without CUDA; see scripts/build-cuda.sh")
}

/// `cpu`, `cuda:N` or `metal:N`: how `--device` names it.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Peak pool memory of a CUDA device (`None` on the CPU).
pub fn peak_memory(device: &Device) -> Result<Option<PeakMemory>> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return Ok(Some(PeakMemory {
            used: pool::attribute(device, pool::Attribute::UsedHigh)?,
            reserved: pool::attribute(device, pool::Attribute::ReservedHigh)?,
        }));
    }
    let _ = device;
    Ok(None)
}

/// Gives the stream-ordered pool's unused reservations back to the driver (CUDA; nothing
/// elsewhere): after a warm-up whose tensors a recorded CUDA graph now allocates from its own
/// memory, the pool would otherwise keep a second copy of the step's memory reserved.
pub fn release_unused_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        device.synchronize()?;
        pool::trim(device)?;
    }
    let _ = device;
    Ok(())
}

/// Starts a new peak-memory window (the high-water marks drop to what is in use now).
pub fn reset_peak_memory(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        pool::set_attribute(device, pool::Attribute::UsedHigh, 0)?;
        pool::set_attribute(device, pool::Attribute::ReservedHigh, 0)?;
    }
    let _ = device;
    Ok(())
}

#[cfg(feature = "cuda")]
mod pool {
    use anyhow::{bail, Result};
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    #[derive(Clone, Copy)]
    pub enum Attribute {
        ReleaseThreshold,
        UsedHigh,
        ReservedHigh,
    }

    impl Attribute {
        fn raw(self) -> sys::CUmemPool_attribute {
            match self {
                Self::ReleaseThreshold => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                Self::UsedHigh => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                Self::ReservedHigh => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
            }
        }
    }

    fn check(what: &str, r: sys::CUresult) -> Result<()> {
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("CUDA {what} failed: {r:?}");
        }
        Ok(())
    }

    /// The default pool of the device's context (the one `cuMemAllocAsync` draws from).
    fn default_pool(device: &Device) -> Result<sys::CUmemoryPool> {
        let stream = device.as_cuda_device()?.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: plain driver calls with valid out-pointers on a bound context.
        check("cuDeviceGetDefaultMemPool", unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) })?;
        Ok(pool)
    }

    pub fn set_attribute(device: &Device, attr: Attribute, value: u64) -> Result<()> {
        let pool = default_pool(device)?;
        let mut v = value;
        // SAFETY: the three attributes used here all take a cuuint64_t.
        check("cuMemPoolSetAttribute", unsafe {
            sys::cuMemPoolSetAttribute(pool, attr.raw(), &mut v as *mut u64 as *mut std::ffi::c_void)
        })
    }

    pub fn trim(device: &Device) -> Result<()> {
        let pool = default_pool(device)?;
        // SAFETY: a plain driver call on a valid pool.
        check("cuMemPoolTrimTo", unsafe { sys::cuMemPoolTrimTo(pool, 0) })
    }

    pub fn attribute(device: &Device, attr: Attribute) -> Result<u64> {
        let pool = default_pool(device)?;
        let mut v = 0u64;
        // SAFETY: as above, a cuuint64_t out-value.
        check("cuMemPoolGetAttribute", unsafe {
            sys::cuMemPoolGetAttribute(pool, attr.raw(), &mut v as *mut u64 as *mut std::ffi::c_void)
        })?;
        Ok(v)
    }
}

/// `data` as a tensor of `shape` on `device`. On CUDA the copy goes through page-locked host
/// memory and is queued on the stream: a copy from ordinary memory would make the host wait
/// until the GPU has finished all queued work (the previous training step), and the GPU would
/// then idle while the host queues the next forward pass.
pub fn upload<T: candle_core::WithDType + UploadType>(data: &[T], shape: &[usize], device: &Device) -> Result<candle_core::Tensor> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return pinned::upload(data, shape, device);
    }
    Ok(candle_core::Tensor::from_slice(data, shape, device)?)
}

/// Element types [`upload`] takes.
#[cfg(feature = "cuda")]
pub trait UploadType: candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits {}
#[cfg(not(feature = "cuda"))]
pub trait UploadType {}
impl UploadType for u32 {}
impl UploadType for f32 {}

#[cfg(feature = "cuda")]
mod pinned {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use anyhow::Result;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::PinnedHostSlice;
    use candle_core::cuda_backend::{CudaStorage, WrapErr};
    use candle_core::{CustomOp1, DType, Device, Layout, Shape, Tensor, WithDType};

    use super::UploadType;

    /// Staging buffers of recent uploads. A buffer may be freed only once its copy has run;
    /// freeing waits for that, so keeping the last few bounds how far the host runs ahead.
    static IN_FLIGHT: Mutex<VecDeque<Box<dyn Send>>> = Mutex::new(VecDeque::new());
    const KEEP: usize = 16;

    struct Upload<T> {
        staged: Mutex<Option<PinnedHostSlice<T>>>,
        shape: Shape,
    }

    impl<T: WithDType + UploadType> CustomOp1 for Upload<T> {
        fn name(&self) -> &'static str {
            "mm-pinned-upload"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("pinned upload runs on CUDA only")
        }

        fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let dev = s.device().clone();
            let stream = dev.cuda_stream();
            let staged = self.staged.lock().expect("upload lock").take().ok_or_else(|| candle_core::Error::Msg("upload ran twice".into()))?;
            // SAFETY: the copy below writes every element.
            let mut dst = unsafe { stream.alloc::<T>(staged.len()) }.w()?;
            stream.memcpy_htod(&staged, &mut dst).w()?;
            let mut in_flight = IN_FLIGHT.lock().expect("upload queue lock");
            in_flight.push_back(Box::new(SendSlice(staged)));
            while in_flight.len() > KEEP {
                in_flight.pop_front(); // waits for that copy if it has not run yet
            }
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), self.shape.clone()))
        }
    }

    /// A staging buffer parked until its copy has run.
    struct SendSlice<T>(#[allow(dead_code)] PinnedHostSlice<T>);
    // SAFETY: page-locked host memory is plain memory; the slice is only dropped (which waits on
    // its CUDA event) after being parked, never used from two threads.
    unsafe impl<T> Send for SendSlice<T> {}

    pub(super) fn upload<T: WithDType + UploadType>(data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        if count != data.len() {
            anyhow::bail!("upload: {} values for shape {shape:?}", data.len());
        }
        if data.is_empty() {
            return Ok(Tensor::from_slice(data, shape, device)?);
        }
        let cuda = device.as_cuda_device()?;
        let ctx = cuda.cuda_stream().context().clone();
        // SAFETY: every element is written right below before any use.
        let mut staged = unsafe { ctx.alloc_pinned::<T>(data.len()) }?;
        staged.as_mut_slice()?.copy_from_slice(data);
        let op = Upload { staged: Mutex::new(Some(staged)), shape: Shape::from(shape) };
        let seed = Tensor::zeros((), DType::U8, device)?;
        Ok(seed.apply_op1_no_bwd(&op)?)
    }
}
