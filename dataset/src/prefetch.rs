//! A [`Loader`] on its own thread, a few batches ahead, so reading and tokenising the next
//! batch overlaps the training step instead of preceding it.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use crate::formats::Dataset;
use crate::loader::{BatchInfo, Loader, LoaderState};

/// A batch with the loader's state right after it (what a resume checkpoint saved at this
/// batch must hold, not the state of the batches read ahead).
struct Fetched<B> {
    info: BatchInfo,
    batch: B,
    state: LoaderState,
    finished: bool,
}

/// Batches of a loader read `depth` ahead on a background thread, in the loader's order.
pub struct Prefetch<D: Dataset> {
    rx: Option<Receiver<anyhow::Result<Fetched<D::Batch>>>>,
    worker: Option<JoinHandle<()>>,
    state: LoaderState,
    finished: bool,
}

impl<D> Prefetch<D>
where
    D: Dataset + Send + 'static,
    D::Batch: Send + 'static,
{
    pub fn new(mut loader: Loader<D>, depth: usize) -> Self {
        let state = loader.state();
        let finished = loader.finished();
        let (tx, rx) = sync_channel(depth.max(1));
        let worker = std::thread::Builder::new()
            .name("mm-loader".into())
            .spawn(move || loop {
                let next = match loader.next_batch() {
                    Ok(Some((info, batch))) => Ok(Fetched { info, batch, state: loader.state(), finished: loader.finished() }),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let failed = next.is_err();
                // A closed channel means the consumer stopped early: stop reading.
                if tx.send(next).is_err() || failed {
                    return;
                }
            })
            .expect("spawning the loader thread");
        Self { rx: Some(rx), worker: Some(worker), state, finished }
    }

    /// The next batch, `None` after the last.
    pub fn next_batch(&mut self) -> anyhow::Result<Option<(BatchInfo, D::Batch)>> {
        let Some(rx) = &self.rx else { return Ok(None) };
        match rx.recv() {
            Ok(Ok(f)) => {
                self.state = f.state;
                self.finished = f.finished;
                Ok(Some((f.info, f.batch)))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None), // the loader ran out
        }
    }

    /// The loader's state after the last batch returned (for resume checkpoints).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Whether every epoch has been read, as of the last batch returned.
    pub fn finished(&self) -> bool {
        self.finished
    }
}

impl<D: Dataset> Drop for Prefetch<D> {
    fn drop(&mut self) {
        // Closing the channel unblocks a worker waiting to send; then it exits.
        self.rx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
