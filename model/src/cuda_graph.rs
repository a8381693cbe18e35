//! Recording work queued on a CUDA device once and replaying it: a training step is a few
//! thousand small kernel launches, and queuing them from the host costs about as long as the
//! GPU takes to run them. A replayed graph queues the whole step in one call.
//!
//! What a recorded closure may do: queue kernels, allocate and free device memory (the graph
//! owns those allocations; each replay makes them again at the same addresses), and upload
//! small host values candle has already uploaded once with the same bytes while
//! [`UploadCache`] was held (candle keeps those on the device). What it must not do: read a
//! value back, or upload anything new; the recording fails with an error then, and nothing
//! has run. Values a replay must vary (the batch, the learning rate) live in device buffers
//! made before recording, which the host rewrites between replays; results come back the
//! same way.

use anyhow::{bail, Result};
use candle_core::Device;

/// While held, candle keeps every small host-to-device upload on the device, keyed by its
/// bytes: hold one over a warm-up run of exactly what will be recorded, and over the recording.
pub struct UploadCache {
    // candle's guard (its type is not exported); dropping it ends the caching. Not Send: the
    // cache is per thread.
    #[cfg(feature = "cuda")]
    _guard: Option<Box<dyn std::any::Any>>,
}

impl UploadCache {
    pub fn hold(device: &Device) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            let guard = match device {
                Device::Cuda(cuda) => Some(Box::new(cuda.enable_cuda_graph_htod_cache()) as Box<dyn std::any::Any>),
                _ => None,
            };
            Ok(Self { _guard: guard })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Ok(Self {})
        }
    }
}

/// Work recorded on a CUDA device's stream, replayable with [`launch`](Self::launch).
pub struct Graph {
    #[cfg(feature = "cuda")]
    graph: candle_core::cuda_backend::cudarc::driver::CudaGraph,
}

impl Graph {
    /// Records what `f` queues on `device` (CUDA only) without running it.
    pub fn record(device: &Device, f: impl FnOnce() -> Result<()>) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(cuda) = device {
            use candle_core::cuda_backend::cudarc::driver::sys;
            let stream = cuda.cuda_stream();
            let _cache = UploadCache::hold(device)?;
            stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
            let recorded = f();
            // End the capture whatever happened, so the stream is usable again.
            let ended = stream.end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
            recorded.map_err(|e| e.context("recording a CUDA graph"))?;
            let Some(graph) = ended.map_err(|e| anyhow::anyhow!("ending a CUDA graph capture: {e:?}"))? else {
                bail!("recording a CUDA graph: nothing was queued");
            };
            graph.upload().map_err(|e| anyhow::anyhow!("uploading a CUDA graph: {e:?}"))?;
            return Ok(Self { graph });
        }
        let _ = f;
        bail!("CUDA graphs need a CUDA device, not {device:?}")
    }

    /// Queues one replay on the stream it was recorded on.
    pub fn launch(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.graph.launch().map_err(|e| anyhow::anyhow!("launching a CUDA graph: {e:?}"))?;
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        unreachable!("a Graph is only made on CUDA")
    }
}

/// Peak memory of the device's CUDA-graph allocations (bytes in use at the high mark, bytes
/// reserved), which the stream-ordered pool's figures do not include. None on the CPU.
pub fn graph_memory_peak(device: &Device) -> Result<Option<(u64, u64)>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let stream = cuda.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()?;
        let get = |attr: sys::CUgraphMem_attribute| -> Result<u64> {
            let mut v = 0u64;
            // SAFETY: both attributes write a cuuint64_t.
            let r = unsafe { sys::cuDeviceGetGraphMemAttribute(ctx.cu_device(), attr, &mut v as *mut u64 as *mut std::ffi::c_void) };
            if r != sys::CUresult::CUDA_SUCCESS {
                bail!("cuDeviceGetGraphMemAttribute: {r:?}");
            }
            Ok(v)
        };
        return Ok(Some((
            get(sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH)?,
            get(sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH)?,
        )));
    }
    let _ = device;
    Ok(None)
}
