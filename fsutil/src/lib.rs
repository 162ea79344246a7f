//! Crash-safe file writes: the new content goes to a temp file in the target's
//! directory, which is fsynced, renamed over the target, and then the directory
//! is fsynced, so a reader (or the next boot after a power cut) sees the old
//! file or the new one, never half of one. A write that fails removes its temp
//! file and leaves the old file as it was.
//!
//! The one implementation for every resin crate: the supervisor's and the
//! OS-update agent's state files, the cloud's TLS keys, the CLI's login and
//! downloads, imagegen's rendered files.

use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The step of an atomic write that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDir,
    CreateTemp,
    Write,
    SyncFile,
    Rename,
    SyncDir,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CreateDir => "creating its directory",
            Step::CreateTemp => "creating the temp file",
            Step::Write => "writing the temp file",
            Step::SyncFile => "syncing the temp file",
            Step::Rename => "renaming the temp file over it",
            Step::SyncDir => "syncing its directory",
        })
    }
}

/// An atomic write of `path` failed at `step`; the old file is unchanged.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {step}: {source}", path.display())]
pub struct Error {
    pub path: PathBuf,
    pub step: Step,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn at(path: &Path, step: Step) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error {
            path: path.to_path_buf(),
            step,
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically; the file ends with exactly `mode`
/// (e.g. 0o600 for keys, 0o644 otherwise), whatever the umask. Missing parent
/// directories are created (0o777 less the umask): a caller that wants a
/// private directory creates it first.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    std::fs::create_dir_all(parent_dir(path)).map_err(Error::at(path, Step::CreateDir))?;
    let mut f = AtomicFile::create(path, mode)?;
    f.file()
        .write_all(bytes)
        .map_err(Error::at(path, Step::Write))?;
    f.commit()
}

/// A temp file that becomes its target on [`AtomicFile::commit`], for
/// content written in pieces (a download). Dropped uncommitted (an error, a
/// short download) it removes itself and the target is left alone.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    /// `None` once committed: nothing left to remove.
    temp: Option<PathBuf>,
    file: File,
}

impl AtomicFile {
    /// Creates the temp file in `target`'s directory, which must exist; the
    /// target will have exactly `mode`.
    pub fn create(target: &Path, mode: u32) -> Result<Self, Error> {
        let err = Error::at(target, Step::CreateTemp);
        let Some(name) = target.file_name() else {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path has no file name",
            )));
        };
        // Unique within the process (threads writing the same target) and
        // across processes; a stale one from a crashed run with the same pid
        // is truncated and reused.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let temp = parent_dir(target).join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let opened = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode & 0o7777)
                .open(&temp)?;
            // The umask (or a stale file's mode) must not decide the mode.
            file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
            Ok(file)
        })();
        match opened {
            Ok(file) => Ok(Self {
                target: target.to_path_buf(),
                temp: Some(temp),
                file,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(err(e))
            }
        }
    }

    /// The open temp file, for writing.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file this becomes on commit.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync, rename over the target, fsync the directory. On an error the
    /// temp file is removed and the target is unchanged (unless the error
    /// is in the last step, when the new content is in place but perhaps not
    /// yet durable).
    pub fn commit(mut self) -> Result<(), Error> {
        let target = self.target.clone();
        self.file
            .flush()
            .and_then(|()| self.file.sync_all())
            .map_err(Error::at(&target, Step::SyncFile))?;
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        if let Err(e) = std::fs::rename(&temp, &target) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::at(&target, Step::Rename)(e));
        }
        // The rename is durable once the directory is synced.
        File::open(parent_dir(&target))
            .and_then(|d| d.sync_all())
            .map_err(Error::at(&target, Step::SyncDir))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_write_replaces_the_whole_file_with_its_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.pem");
        std::fs::write(&p, "an old, longer content").unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode_of(&p), 0o600);
        write_atomic(&p, b"public", 0o644).unwrap();
        assert_eq!(mode_of(&p), 0o644);
        assert_eq!(names(d.path()), ["key.pem"]);
    }

    #[test]
    fn missing_parent_directories_are_created() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/state.json");
        write_atomic(&p, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/x")), Path::new("a"));
    }

    #[test]
    fn a_failed_rename_leaves_the_old_file_and_no_temp_behind() {
        let d = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: rename(2) over it fails
        // after the temp file has been written and synced.
        let p = d.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), "old").unwrap();
        let e = write_atomic(&p, b"new", 0o644).unwrap_err();
        assert_eq!(e.step, Step::Rename);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot write {}: renaming", p.display())),
            "{msg}"
        );
        assert_eq!(names(d.path()), ["taken"]);
        assert_eq!(std::fs::read_to_string(p.join("inside")).unwrap(), "old");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_intact_and_no_temp_behind() {
        // A write(2) that fails, without root or a full disk: the temp
        // file's descriptor is swapped for a read-only one (EBADF).
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(&p, "old").unwrap();
        let mut f = AtomicFile::create(&p, 0o600).unwrap();
        f.file = File::open(&p).unwrap(); // read-only
        let e = f
            .file()
            .write_all(b"new content")
            .map_err(Error::at(&p, Step::Write))
            .unwrap_err();
        drop(f);
        assert!(e.to_string().contains("state.json"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(names(d.path()), ["state.json"]);
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_path_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("not-a-dir/x");
        std::fs::write(d.path().join("not-a-dir"), "a file").unwrap();
        let e = write_atomic(&p, b"new", 0o644).unwrap_err();
        assert_eq!(e.step, Step::CreateDir);
        assert!(e.to_string().contains("not-a-dir/x"), "{e}");
        assert_eq!(names(d.path()), ["not-a-dir"]);
        let e = AtomicFile::create(Path::new("/"), 0o644).unwrap_err();
        assert_eq!(e.step, Step::CreateTemp);
    }

    #[test]
    fn a_dropped_uncommitted_file_leaves_the_target_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        std::fs::write(&p, "old").unwrap();
        {
            let mut f = AtomicFile::create(&p, 0o644).unwrap();
            f.file().write_all(b"partial").unwrap();
            assert_eq!(names(d.path()).len(), 2);
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(names(d.path()), ["img"]);
    }

    #[test]
    fn concurrent_writers_of_one_file_never_leave_half_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shared");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(p, &[i; 4096], 0o644).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|b| *b == got[0]));
        assert_eq!(names(d.path()), ["shared"]);
    }
}
