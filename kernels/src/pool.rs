//! A persistent thread pool for the forward pass: the caller and `n - 1` workers run the same
//! closure, each with its own index, and the call returns when all are done.
//!
//! A decode step of a 26M model is ~1 ms made of ~50 products; a pool that wakes threads
//! through the OS (rayon's sleep/wake, tens of µs) would spend much of it waking. Workers here
//! spin on an epoch counter between jobs, and sleep on a condvar only after spinning for
//! [`SPIN`] without work, so an idle process does not burn its cores.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped once per job; a worker runs the job when it sees a new value.
    epoch: AtomicUsize,
    /// The current job; written by the caller before it bumps `epoch`, read by workers after.
    job: UnsafeCell<Option<&'static Job>>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// A worker's panic payload, handed back to the caller.
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written only by the caller holding `Pool::running`, while no worker reads it
// (all finished the previous job), and published to workers through `epoch` (Release/Acquire).
unsafe impl Sync for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (the serve engine and a bench never share a pool concurrently, but
    /// nothing forbids it).
    running: Mutex<()>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            remaining: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("mm-kernel-{index}"))
                    .spawn(move || worker(&shared, index, threads))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Pool { shared, workers, running: Mutex::new(()), threads }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(index, threads)` for every index in `0..threads`, index 0 on this thread.
    /// A panic in any of them is resumed here once all have stopped.
    pub fn run<'a>(&self, job: &'a (dyn Fn(usize, usize) + Sync + 'a)) {
        if self.threads == 1 {
            job(0, 1);
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the reference is only used by workers until `remaining` reaches 0, which
        // this function waits for before returning, so it never outlives `job`.
        let job_static: &'static Job = unsafe { std::mem::transmute::<&'a (dyn Fn(usize, usize) + Sync + 'a), &'static Job>(job) };
        unsafe { *s.job.get() = Some(job_static) };
        s.remaining.store(self.threads - 1, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0, self.threads)));
        // Spin briefly, then yield: a worker that lost its core to another process (a server's
        // own threads, a build) gets it back sooner than if this thread burned its slice.
        let mut spins = 0u32;
        while s.remaining.load(Acquire) != 0 {
            spins = spins.saturating_add(1);
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        unsafe { *s.job.get() = None };
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = s.panicked.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(payload);
        }
    }

    /// Splits `0..n` into `threads` contiguous parts whose inner bounds are multiples of
    /// `align`, and returns part `index`.
    pub fn share(n: usize, align: usize, index: usize, threads: usize) -> std::ops::Range<usize> {
        let align = align.max(1);
        let units = n.div_ceil(align);
        let bound = |i: usize| (units * i / threads * align).min(n);
        bound(index)..bound(index + 1)
    }
}

fn worker(s: &Shared, index: usize, threads: usize) {
    let mut seen = 0usize;
    loop {
        let mut idle_since: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if s.shutdown.load(Acquire) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN {
                std::thread::yield_now();
                continue;
            }
            let mut guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
            idle_since = None;
        }
        // SAFETY: published before the epoch bump we just saw; the caller keeps it alive
        // until `remaining` reaches 0.
        let job = unsafe { (*s.job.get()).expect("a job is set while workers run") };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(index, threads))) {
            *s.panicked.lock().unwrap_or_else(|e| e.into_inner()) = Some(payload);
        }
        s.remaining.fetch_sub(1, Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _guard = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the size of the process-wide pool (`--threads`); effective only before its first use.
pub fn set_threads(threads: usize) {
    THREADS.store(threads, SeqCst);
}

/// The process-wide pool: `set_threads`' size, else one thread per available core.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        let n = match THREADS.load(SeqCst) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Pool::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job() {
        let pool = Pool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i, n| {
                assert_eq!(n, 3);
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
        }
    }

    #[test]
    fn jobs_after_sleeping_still_run() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, SeqCst);
        });
        std::thread::sleep(SPIN * 3);
        pool.run(&|_, _| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 4);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| pool.run(&|i, _| assert_ne!(i, 1, "worker fails"))));
        assert!(caught.is_err());
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 2);
    }

    #[test]
    fn shares_cover_the_range_on_aligned_bounds() {
        for n in [0, 1, 7, 16, 100, 1408, 6400] {
            for align in [1, 4, 8, 16] {
                for threads in 1..5 {
                    let parts: Vec<_> = (0..threads).map(|i| Pool::share(n, align, i, threads)).collect();
                    assert_eq!(parts[0].start, 0);
                    assert_eq!(parts[threads - 1].end, n);
                    for w in parts.windows(2) {
                        assert_eq!(w[0].end, w[1].start);
                        assert!(w[0].end % align == 0 || w[0].end == n);
                    }
                }
            }
        }
    }
}
