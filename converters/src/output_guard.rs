//! Whether mm may put its output at a path that already holds something.
//!
//! Users hand mm their only copy of a model, so an existing target is replaced only when it
//! is a previous output of the same kind: a file whose content is what mm writes there (a
//! GGUF for a GGUF, a torch zip for a `.pth`, …), or a directory whose every file the new
//! output writes again. Anything else — a foreign file, a directory holding other files, a
//! device, a FIFO, a socket, a symbolic link — is refused with a message naming the path,
//! unless the user passed `--force` (which still never replaces a device, FIFO or socket, nor
//! a directory by a file).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

static FORCE: AtomicBool = AtomicBool::new(false);

/// The user's `--force`: replace existing outputs even when mm does not recognise them as its
/// own. Set once by the CLI.
pub fn set_force(force: bool) {
    FORCE.store(force, Ordering::Relaxed);
}

pub fn forced() -> bool {
    FORCE.load(Ordering::Relaxed)
}

/// What a file output holds, so an existing file can be recognised as an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// GGUF (`GGUF` magic).
    Gguf,
    /// A `torch.save` zip (a zip archive with a `data.pkl` record).
    TorchZip,
    /// A safetensors file (a little-endian header length, then a JSON object).
    Safetensors,
    /// One JSON document.
    Json,
    /// JSON lines (every non-blank line one JSON value): training metrics.
    JsonLines,
    /// A PNG image.
    Png,
    /// An ollama Modelfile (its first instruction is `FROM`).
    Modelfile,
}

impl FileKind {
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Gguf => "a GGUF file",
            FileKind::TorchZip => "a torch .pth zip",
            FileKind::Safetensors => "a safetensors file",
            FileKind::Json => "a JSON file",
            FileKind::JsonLines => "a JSON-lines file",
            FileKind::Png => "a PNG image",
            FileKind::Modelfile => "an ollama Modelfile",
        }
    }

    /// Whether the file at `path` (a regular file) holds this kind of content.
    fn recognises(self, path: &Path, len: u64) -> bool {
        // Text kinds are read whole; anything this large is not a previous output of them.
        const TEXT_LIMIT: u64 = 256 << 20;
        let head = |n: usize| -> Option<Vec<u8>> {
            let mut buf = vec![0u8; n];
            let mut f = std::fs::File::open(path).ok()?;
            f.read_exact(&mut buf).ok()?;
            Some(buf)
        };
        let text = || -> Option<String> {
            (len <= TEXT_LIMIT).then(|| std::fs::read_to_string(path).ok()).flatten()
        };
        match self {
            FileKind::Gguf => head(4).is_some_and(|h| h == b"GGUF"),
            FileKind::Png => head(8).is_some_and(|h| h == b"\x89PNG\r\n\x1a\n"),
            FileKind::Safetensors => head(9).is_some_and(|h| {
                let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
                h[8] == b'{' && n.checked_add(8).is_some_and(|end| end <= len)
            }),
            FileKind::TorchZip => head(4).is_some_and(|h| h == b"PK\x03\x04") && zip_has_data_pkl(path),
            FileKind::Json => text().is_some_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok()),
            FileKind::JsonLines => text().is_some_and(|t| {
                t.lines().filter(|l| !l.trim().is_empty()).all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            }),
            FileKind::Modelfile => text().is_some_and(|t| {
                t.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .is_some_and(|l| l.get(..5).is_some_and(|w| w.eq_ignore_ascii_case("from ")))
            }),
        }
    }
}

fn zip_has_data_pkl(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else { return false };
    let Ok(archive) = zip::ZipArchive::new(file) else { return false };
    let found = archive.file_names().flatten().any(|n| n == "data.pkl" || n.ends_with("/data.pkl"));
    found
}

/// What is at `path` now, as far as replacing it is concerned.
enum Existing {
    Nothing,
    File { len: u64 },
    Dir,
    /// A symlink, device, FIFO or socket: never mm's output.
    Special(&'static str),
}

fn existing(path: &Path) -> Result<Existing> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let ft = meta.file_type();
    Ok(if ft.is_file() {
        Existing::File { len: meta.len() }
    } else if ft.is_dir() {
        Existing::Dir
    } else if ft.is_symlink() {
        Existing::Special("a symbolic link")
    } else {
        Existing::Special(special_kind(&ft))
    })
}

#[cfg(unix)]
fn special_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "not a regular file"
}

const HOW_TO_PROCEED: &str = "choose another output path, move it away yourself, or pass --force to replace it";

/// Checks that a file of `kind` may be written at `path`: nothing is there, or an earlier
/// output of the same kind (an empty file holds nothing to lose), or `--force` with a
/// regular file.
pub fn check_file_target(path: &Path, kind: FileKind) -> Result<()> {
    match existing(path)? {
        Existing::Nothing => Ok(()),
        Existing::Special(what) => {
            bail!("{} is {what}; mm writes its outputs only as new regular files and will not replace it", path.display())
        }
        Existing::Dir => bail!(
            "{} is a directory; mm would write {} there and will not replace a directory with a file",
            path.display(),
            kind.describe()
        ),
        Existing::File { len } if len == 0 || forced() || kind.recognises(path, len) => Ok(()),
        Existing::File { .. } => bail!(
            "{} already exists and is not {} that mm wrote; refusing to replace it ({HOW_TO_PROCEED})",
            path.display(),
            kind.describe()
        ),
    }
}

/// Checks, before any work, that a directory output may go to `dir`: nothing there, or a
/// directory (whose files are compared with the new output's by [`check_dir_replacement`]),
/// or `--force` with a regular file.
pub fn check_dir_target(dir: &Path) -> Result<()> {
    match existing(dir)? {
        Existing::Nothing | Existing::Dir => Ok(()),
        Existing::File { .. } if forced() => Ok(()),
        Existing::File { .. } => {
            bail!("{} is a file, not an output directory of mm's; refusing to replace it ({HOW_TO_PROCEED})", dir.display())
        }
        Existing::Special(what) => {
            bail!("{} is {what}; mm writes its output directories only as new directories and will not replace it", dir.display())
        }
    }
}

/// Names an output kind may write besides the ones a given run wrote (an optional file such
/// as MNN's `llm.mnn.json`, the other sharding of an HF directory), as relative paths.
pub type KnownOutputs<'a> = &'a dyn Fn(&Path) -> bool;

/// Nothing beyond what the run wrote.
pub fn only_what_was_written(_: &Path) -> bool {
    false
}

/// With the new output complete in `staged`, checks that the existing `dir` may be replaced
/// by it: every file and folder in `dir` is one the new output writes again or one its kind
/// writes in another configuration (`known`), so nothing of the user's is lost; or `--force`.
pub fn check_dir_replacement(dir: &Path, staged: &Path, known: KnownOutputs) -> Result<()> {
    check_dir_target(dir)?;
    if !matches!(existing(dir)?, Existing::Dir) || forced() {
        return Ok(());
    }
    let old = relative_entries(dir)?;
    let new = relative_entries(staged)?;
    let foreign: Vec<&PathBuf> = old.difference(&new).filter(|p| !known(p)).collect();
    if let Some(first) = foreign.first() {
        let more = if foreign.len() > 1 { format!(" and {} more", foreign.len() - 1) } else { String::new() };
        bail!(
            "{} already exists and holds {}{more}, which this output would not write again; refusing to replace it ({HOW_TO_PROCEED})",
            dir.display(),
            first.display()
        );
    }
    Ok(())
}

/// Refuses an output that is one of the inputs, or a directory holding one (replacing it
/// would delete the input), however the paths are spelled (`dir/`, `./dir`, a symlink).
pub fn check_not_an_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let Some(out) = resolved(output) else { return Ok(()) };
    for input in inputs {
        let Ok(inp) = input.canonicalize() else { continue };
        if inp == out {
            bail!("output {} is the input {}; pass another -o", output.display(), input.display());
        }
        if inp.starts_with(&out) {
            bail!("output {} holds the input {}; replacing it would delete the input; pass another -o", output.display(), input.display());
        }
    }
    Ok(())
}

/// `path` with its directory resolved (the path itself may not exist yet).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(parent.canonicalize().ok()?.join(name))
}

/// Every file and folder under `root`, relative to it (symlinks are listed, not followed).
fn relative_entries(root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("listed under root").to_path_buf();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            }
            out.insert(rel);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_kinds_mm_writes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let gguf = write("a.gguf", b"GGUF\x03\0\0\0");
        assert!(check_file_target(&gguf, FileKind::Gguf).is_ok());
        assert!(check_file_target(&gguf, FileKind::TorchZip).is_err());
        let notes = write("notes.txt", b"my only copy");
        for kind in [FileKind::Gguf, FileKind::TorchZip, FileKind::Safetensors, FileKind::Json, FileKind::Png, FileKind::Modelfile] {
            let err = check_file_target(&notes, kind).unwrap_err().to_string();
            assert!(err.contains("notes.txt") && err.contains("refusing"), "{err}");
        }
        let json = write("c.json", b"{\"a\": 1}");
        assert!(check_file_target(&json, FileKind::Json).is_ok());
        let modelfile = write("Modelfile", b"# made by mm\nFROM ./model.gguf\n");
        assert!(check_file_target(&modelfile, FileKind::Modelfile).is_ok());
        let st = write("m.safetensors", b"\x02\0\0\0\0\0\0\0{}");
        assert!(check_file_target(&st, FileKind::Safetensors).is_ok());
        let empty = write("empty.bin", b"");
        assert!(check_file_target(&empty, FileKind::Gguf).is_ok());
        assert!(check_file_target(dir.path(), FileKind::Gguf).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_special_files_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = check_file_target(&fifo, FileKind::Gguf).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        assert!(check_dir_target(&fifo).is_err());
        let err = check_file_target(Path::new("/dev/null"), FileKind::Json).unwrap_err().to_string();
        assert!(err.contains("device"), "{err}");
        let target = dir.path().join("real.gguf");
        std::fs::write(&target, b"GGUF").unwrap();
        let link = dir.path().join("link.gguf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(check_file_target(&link, FileKind::Gguf).unwrap_err().to_string().contains("symbolic link"));
    }

    #[test]
    fn a_directory_is_replaced_only_by_an_output_writing_all_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staged = dir.path().join("staged");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(out.join("config.json"), "{}").unwrap();
        std::fs::write(staged.join("config.json"), "{}").unwrap();
        std::fs::write(staged.join("model.safetensors"), "x").unwrap();
        assert!(check_dir_replacement(&out, &staged, &only_what_was_written).is_ok());
        std::fs::write(out.join("extra.json"), "{}").unwrap();
        assert!(check_dir_replacement(&out, &staged, &only_what_was_written).is_err());
        assert!(check_dir_replacement(&out, &staged, &|p| p == Path::new("extra.json")).is_ok());
        std::fs::write(out.join("thesis.tex"), "years of work").unwrap();
        let err = check_dir_replacement(&out, &staged, &|p| p == Path::new("extra.json")).unwrap_err().to_string();
        assert!(err.contains("thesis.tex") && err.contains("out"), "{err}");
    }
}
