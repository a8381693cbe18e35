//! Epochs, deterministic shuffling, batching and an exact resume position.
//!
//! # The shuffle
//!
//! Epoch `e`'s order is a Fisher–Yates (Durstenfeld) shuffle of `0..n`: for `i` from `n - 1`
//! down to 1, swap `i` with `j = below(i + 1)`. The random numbers come from SplitMix64
//! (state += 0x9E3779B97F4A7C15; output = the SplitMix64 finalizer of the state), started at
//! `mix(seed) ^ mix(e + 0x632BE59BD9B4E019)` where `mix` is that finalizer. `below(b)` draws
//! 64-bit outputs `r`, rejects those with `r < 2^64 mod b`, and returns `r mod b` (exactly
//! uniform). Everything is implemented here, so an order depends only on `(seed, epoch, n)`,
//! never on a crate version. Upstream shuffles with torch's RNG, which is not reproduced.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::formats::Dataset;
use crate::jsonl::SkipReport;

/// SplitMix64 (Steele, Lea & Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    pub fn new(state: u64) -> Self {
        Self { state }
    }

    /// The SplitMix64 output function.
    pub fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        Self::mix(self.state)
    }

    /// Uniform in `0..bound` (`bound > 0`), by rejection.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        let threshold = bound.wrapping_neg() % bound; // 2^64 mod bound
        loop {
            let r = self.next_u64();
            if r >= threshold {
                return r % bound;
            }
        }
    }
}

/// The sample order of one epoch: `0..n`, shuffled as the module docs describe when
/// `shuffle` is on.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::new(SplitMix64::mix(seed) ^ SplitMix64::mix(epoch.wrapping_add(0x632B_E59B_D9B4_E019)));
        for i in (1..n).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// How to walk a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub epochs: u64,
    pub shuffle: bool,
    pub seed: u64,
    /// Drop an epoch's last batch when it is short (upstream keeps it: `drop_last=False`).
    pub drop_last: bool,
}

impl LoaderOptions {
    /// One epoch, shuffled with seed 42, short last batch kept.
    pub fn new(batch_size: usize) -> Self {
        Self { batch_size, epochs: 1, shuffle: true, seed: 42, drop_last: false }
    }
}

/// Where the next batch starts: epoch, and index into that epoch's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    /// Samples of this epoch's order already consumed (used or skipped).
    pub index: u64,
}

/// Everything needed to resume exactly; save it with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub position: Position,
    pub seed: u64,
    pub shuffle: bool,
    /// Good lines in the file; a different count means different data.
    pub dataset_len: u64,
    /// Samples skipped while reading so far (for the report).
    pub skipped_at_read: u64,
    /// Batches produced so far in this epoch (the next batch's `step`).
    pub step_in_epoch: u64,
    /// Batches produced so far, over all epochs.
    pub batches: u64,
}

/// Where a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub epoch: u64,
    /// 0-based batch number within the epoch.
    pub step: u64,
    /// Position of its first sample and the position after it (the resume point).
    pub start: Position,
    pub end: Position,
    /// With a [`Loader::shard`]: this rank's share of the global batch was empty (a short
    /// last batch), and the batch holds one stand-in row that must get weight 0.
    pub stand_in: bool,
    /// With a [`Loader::shard`]: where this rank's rows start within the global batch (0
    /// without one), so per-row randomness can follow the global row, not the rank.
    pub first_row: usize,
}

/// Batches of a [`Dataset`] over epochs.
pub struct Loader<D: Dataset> {
    dataset: D,
    opts: LoaderOptions,
    pos: Position,
    /// The order of `order_epoch`, when computed.
    order: Vec<usize>,
    order_epoch: Option<u64>,
    step_in_epoch: u64,
    batches: u64,
    report: SkipReport,
    /// (rank, world): read only this rank's rows of each global batch.
    shard: Option<(usize, usize)>,
    /// Rows skipped because they had no loss tokens (reported on stderr as they are met).
    rows_without_loss: u64,
}

/// Rank `rank`'s contiguous rows of a global batch of `rows`: (start, len), as even as possible.
pub fn shard_of(rows: usize, rank: usize, world: usize) -> (usize, usize) {
    let start = rows * rank / world;
    let end = rows * (rank + 1) / world;
    (start, end - start)
}

impl<D: Dataset> Loader<D> {
    /// Data parallelism: every rank walks the same global batches (`batch_size` samples, the
    /// same order and positions, so the resume state is shared) but reads and returns only its
    /// [`shard_of`] rows. With `skip_bad_lines` a bad line makes its rank's share shorter
    /// instead of being replaced (the ranks never need to agree on replacements).
    pub fn shard(mut self, rank: usize, world: usize) -> Self {
        if world > 1 {
            self.shard = Some((rank, world));
        }
        self
    }

    pub fn new(dataset: D, opts: LoaderOptions) -> anyhow::Result<Self> {
        if opts.batch_size == 0 {
            anyhow::bail!("batch_size must be at least 1");
        }
        if dataset.is_empty() {
            let idx = dataset.index();
            anyhow::bail!("{} has no usable lines ({} lines, {} skipped)", idx.path().display(), idx.total_lines(), idx.report().at_index);
        }
        let report = dataset.index().report().clone();
        Ok(Self {
            dataset,
            opts,
            pos: Position::default(),
            order: Vec::new(),
            order_epoch: None,
            step_in_epoch: 0,
            batches: 0,
            report,
            shard: None,
            rows_without_loss: 0,
        })
    }

    /// A loader that continues where `state` was saved. The seed, shuffle and dataset length
    /// must match.
    pub fn resume(dataset: D, opts: LoaderOptions, state: &LoaderState) -> anyhow::Result<Self> {
        let mut loader = Self::new(dataset, opts)?;
        if state.seed != opts.seed || state.shuffle != opts.shuffle {
            anyhow::bail!(
                "resume state was saved with seed {} shuffle {}, but the loader has seed {} shuffle {}",
                state.seed,
                state.shuffle,
                opts.seed,
                opts.shuffle
            );
        }
        let n = loader.dataset.len() as u64;
        if state.dataset_len != n {
            anyhow::bail!(
                "resume state was saved for {} samples, but {} has {n}",
                state.dataset_len,
                loader.dataset.index().path().display()
            );
        }
        if state.position.index > n {
            anyhow::bail!("resume position {} is past the {n} samples of an epoch", state.position.index);
        }
        loader.pos = state.position;
        loader.step_in_epoch = state.step_in_epoch;
        loader.batches = state.batches;
        loader.report.at_read = state.skipped_at_read;
        Ok(loader)
    }

    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    pub fn options(&self) -> &LoaderOptions {
        &self.opts
    }

    /// Where the next batch starts.
    pub fn position(&self) -> Position {
        self.pos
    }

    pub fn state(&self) -> LoaderState {
        LoaderState {
            position: self.pos,
            seed: self.opts.seed,
            shuffle: self.opts.shuffle,
            dataset_len: self.dataset.len() as u64,
            skipped_at_read: self.report.at_read,
            step_in_epoch: self.step_in_epoch,
            batches: self.batches,
        }
    }

    /// Bad lines skipped so far: when indexing and when reading.
    pub fn report(&self) -> &SkipReport {
        &self.report
    }

    /// Batches per epoch, before any read-time skips: `ceil(n / batch)` (`floor` with
    /// `drop_last`).
    pub fn steps_per_epoch(&self) -> u64 {
        let n = self.dataset.len() as u64;
        let b = self.opts.batch_size as u64;
        if self.opts.drop_last { n / b } else { n.div_ceil(b) }
    }

    /// Whether every epoch has been read.
    pub fn finished(&self) -> bool {
        self.pos.epoch >= self.opts.epochs
    }

    fn ensure_order(&mut self) {
        if self.order_epoch != Some(self.pos.epoch) {
            self.order = epoch_order(self.dataset.len(), self.opts.seed, self.pos.epoch, self.opts.shuffle);
            self.order_epoch = Some(self.pos.epoch);
        }
    }

    fn next_epoch(&mut self) {
        self.pos = Position { epoch: self.pos.epoch + 1, index: 0 };
        self.step_in_epoch = 0;
    }

    /// The next batch, `None` after the last epoch. Batches never span epochs; an epoch's last
    /// batch is short unless `drop_last`. A sample that fails to read is an error, or with
    /// `skip_bad_lines` is counted and replaced by the next one.
    pub fn next_batch(&mut self) -> anyhow::Result<Option<(BatchInfo, D::Batch)>> {
        let n = self.dataset.len();
        let bs = self.opts.batch_size;
        loop {
            if self.finished() {
                return Ok(None);
            }
            let remaining = n - self.pos.index as usize;
            if remaining == 0 || (self.opts.drop_last && remaining < bs) {
                self.next_epoch();
                continue;
            }
            self.ensure_order();
            if let Some((rank, world)) = self.shard {
                return self.next_shard(rank, world).map(Some);
            }
            let start = self.pos;
            let mut cursor = self.pos.index as usize;
            // Never more rows than the file has, whatever the batch size says.
            let mut examples = Vec::with_capacity(bs.min(n - cursor));
            let mut lines = Vec::with_capacity(bs.min(n - cursor));
            let mut skipped = Vec::new();
            let mut empty = Vec::new();
            while examples.len() < bs && cursor < n {
                let want = (bs - examples.len()).min(n - cursor);
                let picks = &self.order[cursor..cursor + want];
                let dataset = &self.dataset;
                let got: Vec<_> = picks.par_iter().map(|&i| dataset.example(i)).collect();
                for (&i, result) in picks.iter().zip(got) {
                    match result {
                        Ok(e) => match dataset.without_loss_tokens(&e) {
                            Some(why) => empty.push(dataset.index().error(i, why)),
                            None => {
                                examples.push(e);
                                lines.push(dataset.index().line_number(i));
                            }
                        },
                        Err(e) if dataset.skip_bad_lines() => skipped.push(e),
                        Err(e) => return Err(e.into()),
                    }
                }
                cursor += want;
            }
            self.note_rows_without_loss(empty);
            for e in skipped {
                self.report.at_read += 1;
                self.report.keep(e);
            }
            self.pos.index = cursor as u64;
            if examples.is_empty() || (self.opts.drop_last && examples.len() < bs) {
                continue; // the rest of the epoch was all bad lines, or a short batch is dropped
            }
            let info = BatchInfo { epoch: start.epoch, step: self.step_in_epoch, start, end: self.pos, stand_in: false, first_row: 0 };
            self.step_in_epoch += 1;
            self.batches += 1;
            return Ok(Some((info, self.dataset.collate(examples, lines))));
        }
    }
}

impl<D: Dataset> Loader<D> {
    /// Rows without loss tokens would make a batch's masked mean 0/0 (NaN); they are skipped
    /// like bad lines, always, and each of the first few is named on stderr.
    fn note_rows_without_loss(&mut self, rows: Vec<crate::LineError>) {
        const NAMED: u64 = 10;
        for row in rows {
            self.rows_without_loss += 1;
            let n = self.rows_without_loss;
            if n <= NAMED {
                eprintln!("note: {row}; row skipped");
            } else if n.is_power_of_two() {
                eprintln!("note: {n} rows without loss tokens skipped so far");
            }
        }
    }

    /// Rows skipped so far because they had no loss tokens.
    pub fn rows_without_loss(&self) -> u64 {
        self.rows_without_loss
    }

    /// The rank's rows of the next global batch (the epoch has samples left, order is ready).
    fn next_shard(&mut self, rank: usize, world: usize) -> anyhow::Result<(BatchInfo, D::Batch)> {
        let n = self.dataset.len();
        let start = self.pos;
        let first = self.pos.index as usize;
        let end = first.saturating_add(self.opts.batch_size).min(n);
        let (offset, len) = shard_of(end - first, rank, world);
        let dataset = &self.dataset;
        let read = |picks: &[usize]| -> Vec<(usize, Result<D::Example, crate::LineError>)> {
            picks.par_iter().map(|&i| (i, dataset.example(i))).collect()
        };
        let mut examples = Vec::with_capacity(len);
        let mut lines = Vec::with_capacity(len);
        let mut skipped = Vec::new();
        let mut empty = Vec::new();
        for (i, result) in read(&self.order[first + offset..first + offset + len]) {
            match result {
                Ok(e) => match dataset.without_loss_tokens(&e) {
                    Some(why) => empty.push(dataset.index().error(i, why)),
                    None => {
                        examples.push(e);
                        lines.push(dataset.index().line_number(i));
                    }
                },
                Err(e) if dataset.skip_bad_lines() => skipped.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        let mut stand_in = false;
        if examples.is_empty() {
            // An empty share still runs a step (every rank joins each all-reduce): the first
            // readable sample of the global batch, weighted 0 by the trainer.
            stand_in = true;
            for (i, result) in read(&self.order[first..end]) {
                // A stand-in needs loss tokens too: 0 × (0/0) is still NaN.
                if let Some(e) = result.ok().filter(|e| dataset.without_loss_tokens(e).is_none()) {
                    examples.push(e);
                    lines.push(dataset.index().line_number(i));
                    break;
                }
            }
            if examples.is_empty() {
                anyhow::bail!("every sample of a global batch failed to read ({} lines)", end - first);
            }
        }
        for e in skipped {
            self.report.at_read += 1;
            self.report.keep(e);
        }
        self.note_rows_without_loss(empty);
        self.pos.index = end as u64;
        let info = BatchInfo { epoch: start.epoch, step: self.step_in_epoch, start, end: self.pos, stand_in, first_row: offset };
        self.step_in_epoch += 1;
        self.batches += 1;
        Ok((info, self.dataset.collate(examples, lines)))
    }
}

impl<D: Dataset> Iterator for Loader<D> {
    type Item = anyhow::Result<(BatchInfo, D::Batch)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}
