//! Outputs appear whole or not at all: write beside the target, then rename. An existing
//! target is replaced only as [`output_guard`](crate::output_guard) allows, and the leftovers
//! of a killed run (its temporary file or directory, or a directory half-way through being
//! swapped in) are cleaned up or put back by the next write to the same path.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::output_guard::{check_dir_replacement, check_dir_target, check_file_target, only_what_was_written, FileKind, KnownOutputs};

/// Writes `path` through `fill`, into a temporary file in the same directory that is
/// renamed over `path` only when `fill` succeeds; on error nothing is left behind. An
/// existing `path` must be an earlier output of `kind` (or `--force`).
pub fn write_file_atomically<F>(path: &Path, kind: FileKind, fill: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    check_file_target(path, kind)?;
    remove_stale_temps(path);
    let tmp = temp_path_beside(path, "");
    let result: Result<()> = (|| {
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = BufWriter::new(file);
        fill(&mut writer)?;
        writer.flush()?;
        writer.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Builds a directory through `fill` in a temporary sibling, then swaps it into place. An
/// existing directory at `dir` is replaced only after the new one is complete, and only if
/// the new one writes every file it holds again (or `--force`).
pub fn write_dir_atomically<F>(dir: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    write_output_dir(dir, &only_what_was_written, fill)
}

/// [`write_dir_atomically`] for an output kind whose other configurations write other files
/// (`known`): an earlier output holding those is replaced too.
pub fn write_output_dir<F>(dir: &Path, known: KnownOutputs, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    recover_interrupted_swap(dir)?;
    check_dir_target(dir)?;
    remove_stale_temps(dir);
    let tmp = temp_path_beside(dir, "");
    let result: Result<()> = (|| {
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&tmp)?;
        check_dir_replacement(dir, &tmp, known)?;
        swap_into_place(&tmp, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing {}", dir.display()))
}

/// Puts `staged` at `dir`. An existing directory is exchanged atomically where the system
/// can (Linux `RENAME_EXCHANGE`): there is no moment without `dir`. Elsewhere the old one is
/// first renamed to `.NAME.old.PID.tmp`, which [`recover_interrupted_swap`] puts back if the
/// process dies before the new one is in place.
fn swap_into_place(staged: &Path, dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).ok();
    match meta {
        None => std::fs::rename(staged, dir).with_context(|| format!("cannot rename {} to {}", staged.display(), dir.display())),
        Some(m) if m.is_file() => {
            // Only reached with --force (check_dir_target refuses a file otherwise).
            std::fs::remove_file(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
            std::fs::rename(staged, dir).with_context(|| format!("cannot rename {} to {}", staged.display(), dir.display()))
        }
        Some(_) => {
            if exchange(staged, dir) {
                // `staged` now holds the old directory.
                let _ = std::fs::remove_dir_all(staged);
                return Ok(());
            }
            let old = temp_path_beside(dir, "old.");
            std::fs::rename(dir, &old).with_context(|| format!("cannot move {} aside", dir.display()))?;
            if let Err(e) = std::fs::rename(staged, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(e).with_context(|| format!("cannot rename {} to {}", staged.display(), dir.display()));
            }
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        }
    }
}

/// Atomically exchanges two paths; false where the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) = (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes())) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated paths; renameat2 only reads them.
    unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// If a run died between moving the old `dir` aside and moving the new one in, `dir` is
/// missing and `.NAME.old.PID.tmp` holds it: put it back (a live process's swap is left
/// alone). Called before every directory write, and by `--resume` before it looks.
pub fn recover_interrupted_swap(dir: &Path) -> Result<()> {
    if std::fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    for (path, tag, pid) in temps_of(dir) {
        if tag == "old." && !process_alive(pid) && path.is_dir() {
            std::fs::rename(&path, dir)
                .with_context(|| format!("{} was left half-replaced; cannot restore it from {}", dir.display(), path.display()))?;
            eprintln!("note: restored {} from {} (a run was interrupted while replacing it)", dir.display(), path.display());
            return Ok(());
        }
    }
    Ok(())
}

/// Removes the temporaries that killed runs left beside `path` (`.NAME.PID.tmp`, and
/// `.NAME.old.PID.tmp` once `path` exists again). Only names of this pattern whose process
/// is gone are touched.
pub fn remove_stale_temps(path: &Path) {
    let target_exists = std::fs::symlink_metadata(path).is_ok();
    for (temp, tag, pid) in temps_of(path) {
        if pid == std::process::id() || process_alive(pid) || (tag == "old." && !target_exists) {
            continue;
        }
        let removed = match std::fs::symlink_metadata(&temp) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&temp),
            Ok(_) => std::fs::remove_file(&temp),
            Err(_) => continue,
        };
        if removed.is_ok() {
            eprintln!("note: removed {} left by an interrupted run", temp.display());
        }
    }
}

/// The temporaries named after `path` in its directory: (path, "" or "old.", pid).
fn temps_of(path: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Vec::new() };
    let parent = parent_of(path);
    let Ok(entries) = std::fs::read_dir(parent) else { return Vec::new() };
    let prefix = format!(".{name}.");
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(middle) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let (tag, digits) = match middle.strip_prefix("old.") {
            Some(d) => ("old.", d),
            None => ("", middle),
        };
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(pid) = digits.parse::<u32>() {
                out.push((entry.path(), tag, pid));
            }
        }
    }
    out
}

#[cfg(unix)]
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(not(unix))]
fn process_alive(_: u32) -> bool {
    true // never guess another process is gone
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn temp_path_beside(path: &Path, tag: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_of(path).join(format!(".{name}.{tag}{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        let err = write_file_atomically(&target, FileKind::Json, |w| {
            w.write_all(b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn successful_write_replaces_an_earlier_output() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        std::fs::write(&target, b"[1]").unwrap();
        write_file_atomically(&target, FileKind::Json, |w| Ok(w.write_all(b"[2]")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"[2]");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_foreign_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        std::fs::write(&target, b"not json: my notes").unwrap();
        assert!(write_file_atomically(&target, FileKind::Json, |w| Ok(w.write_all(b"[2]")?)).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"not json: my notes");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn directory_swap_keeps_foreign_directories_and_replaces_earlier_outputs() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let fill = |d: &Path| -> Result<()> { Ok(std::fs::write(d.join("a.json"), "{}")?) };
        write_dir_atomically(&out, fill).unwrap();
        write_dir_atomically(&out, fill).unwrap();
        std::fs::write(out.join("mine.txt"), "keep").unwrap();
        assert!(write_dir_atomically(&out, fill).is_err());
        assert_eq!(std::fs::read_to_string(out.join("mine.txt")).unwrap(), "keep");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "no temporaries left");
    }

    #[test]
    fn an_interrupted_swap_is_restored_and_stale_temps_removed() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("run_resume");
        // What a kill between the two renames leaves: the old directory aside, no target.
        let dead = 999_999_999u32; // above any pid_max
        let aside = root.path().join(format!(".run_resume.old.{dead}.tmp"));
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("state.json"), "{}").unwrap();
        let staging = root.path().join(format!(".run_resume.{dead}.tmp"));
        std::fs::create_dir_all(&staging).unwrap();
        recover_interrupted_swap(&out).unwrap();
        assert!(out.join("state.json").exists());
        remove_stale_temps(&out);
        assert!(!staging.exists());
        let stale_file = root.path().join(format!(".model.pth.{dead}.tmp"));
        std::fs::write(&stale_file, "half").unwrap();
        write_file_atomically(&root.path().join("model.pth"), FileKind::TorchZip, |w| Ok(w.write_all(b"x")?)).unwrap();
        assert!(!stale_file.exists());
    }
}
