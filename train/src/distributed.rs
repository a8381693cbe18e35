//! Data parallelism over the GPUs of one host, the way upstream's `torchrun` + DDP does it:
//! one process per GPU, each with a full copy of the model, gradients summed with NCCL.
//!
//! `mm train <stage> --gpus N` starts N copies of itself ([`launch`]); copy `r` trains on
//! `cuda:r` and learns its place from the environment (`MM_DIST_RANK`, `MM_DIST_WORLD`,
//! `MM_DIST_NCCL_ID`, read by [`current`]). A process started by torchrun or Slurm instead
//! reads their variables and gets the NCCL id from rank 0 over TCP ([`crate::rendezvous`]). Every step each rank reads its share of the
//! global batch (`mm_dataset::Loader::shard`) (`--batch-size` rows per GPU, so the global batch is `N × batch`) and
//! weights its loss by its share of the global batch's loss tokens, so the summed gradient
//! is the gradient of the global batch's mean loss: the same mathematics as one GPU fed the
//! global batch. All ranks then clip and step identically, so the weights stay equal
//! without being broadcast. Rank 0 alone logs, draws progress and saves.
//!
//! On CPUs (`--device cpu --gpus N`, or torchrun/Slurm with `--device cpu`) the ranks are
//! processes on this host or others and sum over TCP through rank 0 ([`crate::tcp_group`]),
//! as torch's gloo backend would: the same loop, for CPU-only hosts and for testing the
//! data-parallel mathematics without GPUs.

use anyhow::{bail, ensure, Context, Result};
use candle_core::Tensor;

/// Environment variables a launched rank reads.
pub const ENV_RANK: &str = "MM_DIST_RANK";
pub const ENV_WORLD: &str = "MM_DIST_WORLD";
pub const ENV_NCCL_ID: &str = "MM_DIST_NCCL_ID";

/// This process's place in a data-parallel run.
pub struct DataParallel {
    pub rank: usize,
    pub world: usize,
    backend: Backend,
}

/// How the ranks sum.
enum Backend {
    #[cfg(feature = "nccl")]
    Nccl(nccl::Communicator),
    Tcp(crate::tcp_group::TcpGroup),
}

/// The id rank 0 hands out in a CPU run (an NCCL id is 256 hex digits: ranks that disagree
/// on the backend notice).
const TCP_ID: &str = "tcp";

static CURRENT: std::sync::OnceLock<Option<DataParallel>> = std::sync::OnceLock::new();

/// The run's data-parallel role, `None` in a single-process run. Joins the NCCL group on
/// first use (`device` is this rank's GPU); every rank must call it.
pub fn join(device: &candle_core::Device) -> Result<Option<&'static DataParallel>> {
    if let Some(dp) = CURRENT.get() {
        return Ok(dp.as_ref());
    }
    let dp = from_env(device)?;
    Ok(CURRENT.get_or_init(|| dp).as_ref())
}

/// The role joined by [`join`] (None before it, or in a single-process run).
pub fn current() -> Option<&'static DataParallel> {
    CURRENT.get().and_then(Option::as_ref)
}

/// The rank and world size the launcher gave this process, if any: `mm … --gpus N`'s own
/// variables, else torchrun's or Slurm's (see [`crate::rendezvous`]).
pub fn env_role() -> Result<Option<(usize, usize)>> {
    let (Ok(rank), Ok(world)) = (std::env::var(ENV_RANK), std::env::var(ENV_WORLD)) else {
        return Ok(crate::rendezvous::from_env(|k| std::env::var(k).ok())?.map(|l| (l.rank, l.world)));
    };
    let rank: usize = rank.parse().with_context(|| format!("{ENV_RANK}={rank:?} is not a number"))?;
    let world: usize = world.parse().with_context(|| format!("{ENV_WORLD}={world:?} is not a number"))?;
    if world == 0 || rank >= world {
        bail!("{ENV_RANK}={rank} does not fit {ENV_WORLD}={world}");
    }
    Ok(Some((rank, world)))
}

fn from_env(device: &candle_core::Device) -> Result<Option<DataParallel>> {
    let Some((rank, world)) = env_role()? else { return Ok(None) };
    if world == 1 {
        return Ok(None);
    }
    if device.is_cpu() {
        let launch = crate::rendezvous::from_env(|k| std::env::var(k).ok())?
            .context("a CPU rank joins through torchrun's or Slurm's variables (RANK, WORLD_SIZE, MASTER_ADDR)")?;
        let joined = launch.join((rank == 0).then_some(TCP_ID), rendezvous_timeout()?)?;
        ensure!(joined.id == TCP_ID, "rank {rank} runs on the CPU but rank 0 does not (it handed out an NCCL id); give every rank the same --device");
        let group = crate::tcp_group::TcpGroup::new(rank, world, joined.streams, step_timeout()?)?;
        return Ok(Some(DataParallel { rank, world, backend: Backend::Tcp(group) }));
    }
    #[cfg(feature = "nccl")]
    {
        let id = match std::env::var(ENV_NCCL_ID) {
            Ok(id) => id,
            // Started by torchrun or Slurm: rank 0 makes the id and hands it out at the master.
            Err(_) => {
                let launch = crate::rendezvous::from_env(|k| std::env::var(k).ok())?.with_context(|| format!("{ENV_NCCL_ID} is not set"))?;
                let own = if rank == 0 { Some(nccl::new_id()?) } else { None };
                let id = launch.exchange(own.as_deref(), rendezvous_timeout()?)?;
                ensure!(id != TCP_ID, "rank {rank} runs on a GPU but rank 0 runs on the CPU; give every rank the same --device");
                id
            }
        };
        let comm = nccl::Communicator::join(device, rank, world, &id)?;
        Ok(Some(DataParallel { rank, world, backend: Backend::Nccl(comm) }))
    }
    #[cfg(not(feature = "nccl"))]
    {
        bail!("rank {rank} of {world}: this mm was built without NCCL (scripts/build-cuda.sh builds it with); on CPUs pass --device cpu")
    }
}

/// How long ranks wait for each other at the master (`MM_RENDEZVOUS_TIMEOUT` seconds, default 300).
fn rendezvous_timeout() -> Result<std::time::Duration> {
    seconds("MM_RENDEZVOUS_TIMEOUT", 300)
}

/// How long a CPU rank waits for the others within a step (`MM_DIST_TIMEOUT` seconds,
/// default 1800: a slow rank's whole step, not a network delay).
fn step_timeout() -> Result<std::time::Duration> {
    seconds("MM_DIST_TIMEOUT", 1800)
}

fn seconds(key: &str, default: u64) -> Result<std::time::Duration> {
    let secs = match std::env::var(key) {
        Ok(v) => v.trim().parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| anyhow::anyhow!("{key}={v:?} is not a number of seconds"))?,
        Err(_) => default,
    };
    Ok(std::time::Duration::from_secs(secs))
}

impl DataParallel {
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Σ over ranks, element-wise (f32 tensors on this rank's device).
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        match &self.backend {
            #[cfg(feature = "nccl")]
            Backend::Nccl(comm) => comm.all_reduce_sum(t),
            Backend::Tcp(group) => {
                let mut values = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                group.all_reduce_sum(&mut values)?;
                Ok(Tensor::from_vec(values, t.shape(), t.device())?.to_dtype(t.dtype())?)
            }
        }
    }

    /// The ranks' `[n_r]` vectors laid end to end in rank order (the global batch's rows,
    /// since each rank holds a contiguous share); a rank that does not `contribute` adds
    /// none. Two sums: the counts, then each rank's rows placed in a zero vector (adding
    /// zeros is exact, so every rank gets the very values a single process would hold).
    pub fn all_gather_rows(&self, local: &Tensor, contribute: bool) -> Result<Tensor> {
        let n = if contribute { local.dims1()? } else { 0 };
        let device = local.device();
        let mut counts = vec![0f32; self.world];
        counts[self.rank] = n as f32;
        let counts: Vec<f32> = self.all_reduce_sum(&Tensor::from_vec(counts, self.world, device)?)?.to_vec1()?;
        let counts: Vec<usize> = counts.iter().map(|&c| c as usize).collect();
        let offset: usize = counts[..self.rank].iter().sum();
        let total: usize = counts.iter().sum();
        let mut parts = Vec::new();
        let local = local.to_dtype(candle_core::DType::F32)?;
        if offset > 0 {
            parts.push(Tensor::zeros(offset, candle_core::DType::F32, device)?);
        }
        if n > 0 {
            parts.push(local);
        }
        if total > offset + n {
            parts.push(Tensor::zeros(total - offset - n, candle_core::DType::F32, device)?);
        }
        self.all_reduce_sum(&Tensor::cat(&parts, 0)?)
    }

    /// How this rank adds to the step's batch-wide figures (`stand_in`: it holds only a
    /// weight-0 stand-in row, which must not count).
    pub fn global_batch(&self, stand_in: bool) -> GlobalBatch<'_> {
        GlobalBatch { parallel: self, stand_in }
    }

    /// Sums every gradient over the ranks: one all-reduce over all of them laid end to end
    /// (one NCCL call per tensor would pay its latency ~60 times a step).
    pub fn all_reduce_grads(&self, grads: &mut [Option<Tensor>]) -> Result<()> {
        let flat: Vec<Tensor> = grads.iter().flatten().map(|g| g.flatten_all()).collect::<candle_core::Result<_>>()?;
        if flat.is_empty() {
            return Ok(());
        }
        let summed = self.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
        let mut at = 0;
        for g in grads.iter_mut().flatten() {
            let n = g.elem_count();
            *g = summed.narrow(0, at, n)?.reshape(g.shape())?;
            at += n;
        }
        Ok(())
    }
}

/// A data-parallel step's view of its global batch, for figures taken over all its rows
/// (GRPO's advantage normalisation, SPO's tracker, logged spreads).
#[derive(Clone, Copy)]
pub struct GlobalBatch<'a> {
    pub parallel: &'a DataParallel,
    pub stand_in: bool,
}

impl GlobalBatch<'_> {
    /// Every rank's rows of a `[n]` vector in global order (a stand-in adds none).
    pub fn gather_rows(&self, local: &Tensor) -> Result<Tensor> {
        self.parallel.all_gather_rows(local, !self.stand_in)
    }

    /// Σ over the ranks (a stand-in adds zeros).
    pub fn sum(&self, t: &Tensor) -> Result<Tensor> {
        let t = if self.stand_in { t.zeros_like()? } else { t.clone() };
        self.parallel.all_reduce_sum(&t)
    }
}

/// Starts `world` copies of this program, one per GPU (`cuda:0` … `cuda:world-1`) or, with
/// `cpu`, `world` CPU processes sharing this host's cores (joined as torchrun's ranks would
/// be, at 127.0.0.1), with `args` minus any `--device`/`--gpus` flags, and waits for them.
/// The first failure stops the others.
pub fn launch(world: usize, args: &[String], cpu: bool) -> Result<()> {
    #[cfg(not(feature = "nccl"))]
    if !cpu {
        let _ = args;
        bail!("--gpus {world}: this mm was built without NCCL; see scripts/build-cuda.sh (or pass --device cpu for CPU processes)");
    }
    let exe = std::env::current_exe().context("locating the mm executable to start the ranks")?;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--device" || a == "--gpus" {
            it.next();
        } else if !(a.starts_with("--device=") || a.starts_with("--gpus=")) {
            rest.push(a.clone());
        }
    }
    let command = |rank: usize| {
        let mut c = std::process::Command::new(&exe);
        c.args(&rest).env(ENV_RANK, rank.to_string()).env(ENV_WORLD, world.to_string());
        c
    };
    let mut children = Vec::new();
    if cpu {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port for the ranks to meet")?
            .port();
        // Each rank gets its share of the cores (unless the user set the count).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| (cores / world).max(1).to_string());
        for rank in 0..world {
            let child = command(rank)
                .args(["--device", "cpu"])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MM_RENDEZVOUS_PORT", port.to_string())
                .env("RAYON_NUM_THREADS", &threads)
                .spawn()
                .with_context(|| format!("starting rank {rank}"))?;
            children.push(child);
        }
    } else {
        #[cfg(feature = "nccl")]
        {
            let id = nccl::new_id()?;
            for rank in 0..world {
                let child = command(rank)
                    .arg("--device")
                    .arg(format!("cuda:{rank}"))
                    .env(ENV_NCCL_ID, &id)
                    .spawn()
                    .with_context(|| format!("starting rank {rank}"))?;
                children.push(child);
            }
        }
    }
    let mut failed = None;
    loop {
        let mut running = 0;
        for (rank, c) in children.iter_mut().enumerate() {
            match c.try_wait()? {
                Some(status) if !status.success() && failed.is_none() => failed = Some((rank, status)),
                Some(_) => {}
                None => running += 1,
            }
        }
        if let Some((rank, status)) = failed {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            bail!("rank {rank} failed ({status}); stopped the other ranks");
        }
        if running == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(feature = "nccl")]
mod nccl {
    use anyhow::{bail, ensure, Context, Result};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{CustomOp1, DType, Layout, Shape, Tensor};

    pub struct Communicator {
        comm: std::sync::Arc<Comm>,
    }

    // SAFETY: a rank drives its communicator from the one thread that trains; the static
    // that holds it (`CURRENT`) needs Send + Sync but no second thread ever touches it.
    unsafe impl Send for Communicator {}
    unsafe impl Sync for Communicator {}

    /// A fresh NCCL unique id as hex (it travels to the ranks in the environment).
    pub fn new_id() -> Result<String> {
        let id = Id::new().map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
        Ok(id.internal().iter().map(|&b| format!("{:02x}", b as u8)).collect())
    }

    fn parse_id(hex: &str) -> Result<Id> {
        if hex.len() != 256 {
            bail!("{}: expected 256 hex digits, got {}", super::ENV_NCCL_ID, hex.len());
        }
        let mut raw = [0 as std::ffi::c_char; 128];
        for (i, b) in raw.iter_mut().enumerate() {
            let byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| format!("{}: not hex", super::ENV_NCCL_ID))?;
            *b = byte as std::ffi::c_char;
        }
        Ok(Id::uninit(raw))
    }

    impl Communicator {
        pub fn join(device: &candle_core::Device, rank: usize, world: usize, id: &str) -> Result<Self> {
            let stream = device.as_cuda_device().context("data-parallel ranks run on CUDA devices")?.cuda_stream();
            let comm = Comm::from_rank(stream, rank, world, parse_id(id)?)
                .map_err(|e| anyhow::anyhow!("rank {rank} of {world}: ncclCommInitRank failed: {e:?}"))?;
            Ok(Self { comm: std::sync::Arc::new(comm) })
        }

        pub fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            if t.dtype() != DType::F32 {
                bail!("all-reduce of {:?} tensors: gradients are f32", t.dtype());
            }
            Ok(t.contiguous()?.apply_op1_no_bwd(&AllReduceSum { comm: self.comm.clone() })?)
        }
    }

    /// Σ over ranks into a new buffer, on the tensor's stream (queued, no host wait).
    struct AllReduceSum {
        comm: std::sync::Arc<Comm>,
    }

    // SAFETY: the communicator is used only from the thread that drives this rank's stream;
    // candle requires custom ops to be Send + Sync but never moves them across threads here.
    unsafe impl Send for AllReduceSum {}
    unsafe impl Sync for AllReduceSum {}

    impl CustomOp1 for AllReduceSum {
        fn name(&self) -> &'static str {
            "nccl-all-reduce-sum"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("NCCL all-reduce needs CUDA tensors")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("all-reduce input is not contiguous".into()))?;
            let device = s.device().clone();
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            // SAFETY: every element is written by the all-reduce before anyone reads it.
            let mut dst = unsafe { device.alloc::<f32>(end - start) }?;
            self.comm
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, device), l.shape().clone()))
        }
    }
}
