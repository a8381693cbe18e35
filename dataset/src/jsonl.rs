//! A jsonl file read line by line: one streaming pass checks every line and records where
//! each good one starts; samples are then read back by position, so files larger than memory
//! work (the index costs 12 bytes a line).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

/// A line that cannot be used, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct LineError {
    pub path: PathBuf,
    /// 1-based line number in the file (blank lines count).
    pub line: u64,
    pub message: String,
}

/// How many error messages a report keeps (the count is always complete).
pub const KEEP_ERRORS: usize = 8;

/// Lines of one file that were skipped, always counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipReport {
    /// Lines skipped when the file was indexed (bad JSON, missing field, wrong type).
    pub at_index: u64,
    /// Samples skipped when they were read (the chat template or tokenizer failed).
    pub at_read: u64,
    /// The first [`KEEP_ERRORS`] errors, in the order met.
    pub first_errors: Vec<LineError>,
}

impl SkipReport {
    pub fn total(&self) -> u64 {
        self.at_index + self.at_read
    }

    pub(crate) fn keep(&mut self, error: LineError) {
        if self.first_errors.len() < KEEP_ERRORS {
            self.first_errors.push(error);
        }
    }
}

impl std::fmt::Display for SkipReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} bad line(s) ({} when indexing, {} when reading)", self.total(), self.at_index, self.at_read)?;
        for e in &self.first_errors {
            write!(f, "\n  {e}")?;
        }
        if self.total() > self.first_errors.len() as u64 {
            write!(f, "\n  …")?;
        }
        Ok(())
    }
}

/// Checks one parsed line; the message says what is wrong (`missing field "text"`, …).
pub type Validator = fn(&Value) -> Result<(), String>;

/// Lines processed per parallel round while indexing.
const CHUNK_BYTES: usize = 16 << 20;

/// The longest line a jsonl file may have: 1 MiB. Longer lines are bad lines (an error naming
/// the file and line, or skipped with `skip_bad_lines`) and are never held in memory: a sample
/// is tokenized whole before it is cut to `max_seq_len`, and tokenizing costs about 100 bytes
/// of memory per byte of text.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The good lines of a jsonl file: their byte ranges and line numbers.
#[derive(Debug)]
pub struct JsonlIndex {
    path: PathBuf,
    file: ReadAt,
    starts: Vec<u64>,
    lens: Vec<u32>,
    /// Line numbers of the skipped lines, ascending.
    skipped: Vec<u64>,
    total_lines: u64,
    report: SkipReport,
}

impl JsonlIndex {
    /// Reads `path` once. Every line must be a JSON value that `validate` accepts. With
    /// `skip_bad_lines` a bad line is left out and counted (see [`report`](Self::report));
    /// without it the first bad line is the error.
    ///
    /// Lines are split at `\n` (a `\r` before it is JSON whitespace); a blank line is a bad
    /// line, as it is for upstream's `json.loads`.
    pub fn build(path: &Path, skip_bad_lines: bool, validate: Validator) -> anyhow::Result<Self> {
        let open = || File::open(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()));
        // A device or FIFO (`/dev/zero`, `<(…)`) may never end, and lines are read back by
        // position later: only regular files.
        let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        if !meta.is_file() {
            anyhow::bail!("{}: not a regular file (training data must be a jsonl file)", path.display());
        }
        let mut reader = BufReader::with_capacity(1 << 20, open()?);
        let mut index = Self {
            path: path.to_path_buf(),
            file: ReadAt::new(open()?),
            starts: Vec::new(),
            lens: Vec::new(),
            skipped: Vec::new(),
            total_lines: 0,
            report: SkipReport::default(),
        };
        let mut chunk: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + (1 << 16));
        let mut ranges: Vec<LineSpan> = Vec::new();
        let mut file_offset = 0u64; // file offset of the next line
        loop {
            let before = chunk.len();
            let read = read_line_bounded(&mut reader, &mut chunk, MAX_LINE_BYTES + 1, !skip_bad_lines).map_err(|e| {
                anyhow::anyhow!("reading {} after line {}: {e}", path.display(), index.total_lines + ranges.len() as u64)
            })?;
            let cut = read.cut;
            if read.consumed > 0 {
                let end = if !cut && chunk.last() == Some(&b'\n') { chunk.len() - 1 } else { chunk.len() };
                ranges.push(LineSpan { start: before, end, file_offset, too_long: cut });
                file_offset += read.consumed;
                if cut {
                    // Keep none of an over-long line's bytes.
                    chunk.truncate(before);
                }
            }
            if read.consumed == 0 || chunk.len() >= CHUNK_BYTES || cut {
                index.take_chunk(&chunk, &ranges, skip_bad_lines, validate)?;
                chunk.clear();
                ranges.clear();
            }
            if read.consumed == 0 {
                break;
            }
        }
        index.starts.shrink_to_fit();
        index.lens.shrink_to_fit();
        Ok(index)
    }

    fn take_chunk(&mut self, chunk: &[u8], ranges: &[LineSpan], skip_bad_lines: bool, validate: Validator) -> anyhow::Result<()> {
        let checked: Vec<Result<(), String>> = ranges
            .par_iter()
            .map(|r| {
                if r.too_long {
                    return Err(format!("line is longer than {MAX_LINE_BYTES} bytes, the most a line may have"));
                }
                parse_line(&chunk[r.start..r.end]).and_then(|v| validate(&v))
            })
            .collect();
        for (r, result) in ranges.iter().zip(checked) {
            self.total_lines += 1;
            let line = self.total_lines;
            let result = result.and_then(|()| {
                u32::try_from(r.end - r.start).map_err(|_| format!("line is longer than {} bytes", u32::MAX))
            });
            match result {
                Ok(len) => {
                    self.starts.push(r.file_offset);
                    self.lens.push(len);
                }
                Err(message) => {
                    let error = LineError { path: self.path.clone(), line, message };
                    if !skip_bad_lines {
                        return Err(error.into());
                    }
                    self.skipped.push(line);
                    self.report.at_index += 1;
                    self.report.keep(error);
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of good lines.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Lines in the file, good and bad.
    pub fn total_lines(&self) -> u64 {
        self.total_lines
    }

    /// Line numbers of the skipped lines, ascending.
    pub fn skipped_lines(&self) -> &[u64] {
        &self.skipped
    }

    /// Lines skipped while indexing (`at_read` is always 0 here; the loader adds its own).
    pub fn report(&self) -> &SkipReport {
        &self.report
    }

    /// 1-based file line number of good line `index`.
    pub fn line_number(&self, index: usize) -> u64 {
        // The j-th skipped line (0-based) `s_j` has `s_j - 1 - j` good lines before it, a
        // non-decreasing count; the skipped lines before good line `index` are those with
        // `s_j - j <= index + 1`.
        let target = index as u64 + 1;
        let (mut lo, mut hi) = (0, self.skipped.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.skipped[mid] - mid as u64 <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        target + lo as u64
    }

    /// The bytes of good line `index` (without its newline).
    pub fn read_bytes(&self, index: usize) -> Result<Vec<u8>, LineError> {
        let mut buf = vec![0u8; self.lens[index] as usize];
        self.file.read_exact_at(&mut buf, self.starts[index]).map_err(|e| self.error(index, format!("reading: {e}")))?;
        Ok(buf)
    }

    /// Good line `index`, parsed.
    pub fn read_json(&self, index: usize) -> Result<Value, LineError> {
        let bytes = self.read_bytes(index)?;
        parse_line(&bytes).map_err(|m| self.error(index, format!("{m} (did the file change after it was indexed?)")))
    }

    /// An error about good line `index`, with its file and line number.
    pub fn error(&self, index: usize, message: impl Into<String>) -> LineError {
        LineError { path: self.path.clone(), line: self.line_number(index), message: message.into() }
    }
}

/// One line read while indexing: its bytes in the chunk (without the newline), where it
/// starts in the file, and whether it was longer than [`MAX_LINE_BYTES`] (then no bytes kept).
struct LineSpan {
    start: usize,
    end: usize,
    file_offset: u64,
    too_long: bool,
}

/// What [`read_line_bounded`] read.
struct BoundedRead {
    /// Bytes taken from the reader (the whole line and its newline, unless stopped early).
    consumed: u64,
    /// The line had more than `max` bytes; only the first `max` were kept.
    cut: bool,
}

/// `read_until(b'\n')` that keeps at most `max` bytes of the line (newline included). The rest
/// of a longer line is read and dropped, or with `stop_when_cut` not read at all.
fn read_line_bounded(reader: &mut impl BufRead, buf: &mut Vec<u8>, max: usize, stop_when_cut: bool) -> std::io::Result<BoundedRead> {
    let mut read = BoundedRead { consumed: 0, cut: false };
    let mut kept = 0usize;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read);
        }
        let (line_part, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = max - kept;
        let take = line_part.len().min(room);
        if !read.cut {
            buf.extend_from_slice(&line_part[..take]);
            kept += take;
        }
        if line_part.len() > room {
            read.cut = true;
        }
        let n = line_part.len();
        reader.consume(n);
        read.consumed += n as u64;
        if done || (read.cut && stop_when_cut) {
            return Ok(read);
        }
    }
}

fn parse_line(bytes: &[u8]) -> Result<Value, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("empty line (expected a JSON object)".into());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("bad JSON: {e}"))
}

/// Positional reads that several threads can do at once.
#[derive(Debug)]
struct ReadAt {
    #[cfg(unix)]
    file: File,
    #[cfg(not(unix))]
    file: std::sync::Mutex<File>,
}

impl ReadAt {
    fn new(file: File) -> Self {
        #[cfg(unix)]
        return Self { file };
        #[cfg(not(unix))]
        return Self { file: std::sync::Mutex::new(file) };
    }

    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    #[cfg(not(unix))]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}
