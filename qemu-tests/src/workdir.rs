//! The runner's work dirs (disk images, bundles, console logs, cloud data):
//! making a fresh one, checking that its filesystem has room for a whole run
//! before the first byte is written, and removing what earlier runs left.
//!
//! A run's work dir carries a marker file with the runner's pid. A dir whose
//! marker names a pid that is no longer running is *stale*: its run ended
//! (it failed, was killed, or ran with `--keep`). The newest stale dirs are
//! kept for their artefacts; older ones are removed, and so are the newest
//! when the disk is too full for the next run.

use std::path::{Path, PathBuf};

/// Marks a work dir as the runner's; holds the pid of the run using it.
pub const WORK_MARKER: &str = ".resin-qemu-work";

/// Stale run dirs always kept (the newest ones), for their artefacts.
pub const KEEP_STALE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0} is not empty and not an earlier resin-qemu work dir; pick another --work-dir")]
    Foreign(PathBuf),
    #[error(
        "{dir} has {free} free, but a whole run needs {need} (disk images, bundles, cloud data, \
         the registry); free some space there, or point --work-dir (RESIN_QEMU_WORK) at a \
         filesystem with more room"
    )]
    NoRoom { dir: PathBuf, free: Gib, need: Gib },
}

/// Bytes printed in GiB with one decimal.
#[derive(Debug, Clone, Copy)]
pub struct Gib(pub u64);

impl std::fmt::Display for Gib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} GiB", self.0 as f64 / (1u64 << 30) as f64)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkDirError {
    let what = what.into();
    move |source| WorkDirError::Io { what, source }
}

/// Empties `work` if an earlier run made it (it has the marker); refuses a
/// non-empty directory without the marker; creates it and the marker with
/// this process's pid.
pub fn fresh(work: &Path) -> Result<(), WorkDirError> {
    if work.join(WORK_MARKER).exists() {
        std::fs::remove_dir_all(work).map_err(io(format!("emptying {}", work.display())))?;
    } else if std::fs::read_dir(work)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        return Err(WorkDirError::Foreign(work.to_owned()));
    }
    std::fs::create_dir_all(work).map_err(io(format!("creating {}", work.display())))?;
    std::fs::write(work.join(WORK_MARKER), std::process::id().to_string())
        .map_err(io("writing the work dir marker"))?;
    Ok(())
}

/// Bytes available to this user on the filesystem holding `dir` (or its
/// nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> Result<u64, WorkDirError> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let st = nix::sys::statvfs::statvfs(probe).map_err(|e| WorkDirError::Io {
        what: format!("statvfs {}", probe.display()),
        source: e.into(),
    })?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Whether the run that made `dir` has ended: its marker names no live
/// process (an empty or unreadable marker counts as ended).
fn is_stale(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(WORK_MARKER)) else {
        return false; // not a work dir at all: never touched
    };
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => {
            if pid as u32 == std::process::id() {
                return false;
            }
            // Signal 0 checks for existence; EPERM still means it exists.
            !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Ok(()) | Err(nix::errno::Errno::EPERM)
            )
        }
        _ => true,
    }
}

/// The stale run dirs directly under `parent` (other than `except`), newest
/// first.
pub fn stale_runs(parent: &Path, except: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p != except && p.is_dir() && is_stale(p))
        .filter_map(|p| {
            let t = std::fs::metadata(p.join(WORK_MARKER))
                .and_then(|m| m.modified())
                .ok()?;
            Some((t, p))
        })
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    runs.into_iter().map(|(_, p)| p).collect()
}

/// Makes room for a run in `work`: removes stale runs under `parent` beyond
/// the newest [`KEEP_STALE`], then, while the filesystem has less than
/// `need` bytes free, the kept ones too, oldest first. Fails with a clear
/// message (before anything big is written) when that is still not enough.
/// Returns the removed dirs.
pub fn make_room(parent: &Path, work: &Path, need: u64) -> Result<Vec<PathBuf>, WorkDirError> {
    let mut removed = Vec::new();
    let stale = stale_runs(parent, work);
    let (keep, old) = stale.split_at(stale.len().min(KEEP_STALE));
    for dir in old {
        remove(dir, &mut removed)?;
    }
    for dir in keep.iter().rev() {
        if free_bytes(work)? >= need {
            break;
        }
        remove(dir, &mut removed)?;
    }
    let free = free_bytes(work)?;
    if free < need {
        return Err(WorkDirError::NoRoom {
            dir: work.to_owned(),
            free: Gib(free),
            need: Gib(need),
        });
    }
    Ok(removed)
}

fn remove(dir: &Path, removed: &mut Vec<PathBuf>) -> Result<(), WorkDirError> {
    tracing::info!(dir = %dir.display(), "removing the work dir of an earlier run");
    std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
    removed.push(dir.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A finished run's dir: a marker naming a pid that has exited.
    fn ended_run(parent: &Path, name: &str, age_secs: u64) -> PathBuf {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("device.img"), vec![1u8; 4096]).unwrap();
        let marker = dir.join(WORK_MARKER);
        std::fs::write(&marker, pid.to_string()).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(&marker)
            .unwrap()
            .set_modified(t)
            .unwrap();
        dir
    }

    #[test]
    fn old_ended_runs_go_the_newest_stay_live_and_foreign_dirs_are_untouched() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let a = ended_run(p, "run-1", 300);
        let b = ended_run(p, "run-2", 200);
        let c = ended_run(p, "run-3", 100);
        let d = ended_run(p, "run-4", 50);
        // A run still going (this process), and a dir that is not a run's.
        let live = p.join("run-live");
        fresh(&live).unwrap();
        let foreign = p.join("notes");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join("x"), "mine").unwrap();
        let work = p.join("run-new");
        let removed = make_room(p, &work, 0).unwrap();
        assert_eq!(removed, vec![b.clone(), a.clone()]);
        assert!(!a.exists() && !b.exists());
        assert!(c.exists() && d.exists(), "the two newest ended runs stay");
        assert!(live.exists() && foreign.join("x").exists());
    }

    #[test]
    fn too_little_space_removes_kept_runs_then_refuses_clearly() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        let old = ended_run(p, "run-old", 100);
        let new = ended_run(p, "run-new", 10);
        let work = p.join("run-next");
        let need = free_bytes(p).unwrap() * 4; // more than any disk here has
        let e = make_room(p, &work, need).unwrap_err().to_string();
        assert!(!old.exists() && !new.exists(), "kept runs go when short");
        assert!(
            e.contains("a whole run needs") && e.contains("GiB free"),
            "{e}"
        );
        assert!(!work.exists(), "nothing written for the run");
    }

    #[test]
    fn fresh_refuses_a_foreign_dir_and_reuses_its_own() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("w");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep-me"), "x").unwrap();
        assert!(matches!(fresh(&dir), Err(WorkDirError::Foreign(_))));
        assert!(dir.join("keep-me").exists());
        let own = parent.path().join("own");
        fresh(&own).unwrap();
        std::fs::write(own.join("device.img"), "old").unwrap();
        fresh(&own).unwrap();
        assert!(!own.join("device.img").exists());
        assert_eq!(
            std::fs::read_to_string(own.join(WORK_MARKER)).unwrap(),
            std::process::id().to_string()
        );
    }
}
