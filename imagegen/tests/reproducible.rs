//! Bit-for-bit rebuilds at a real size: two builds from a rootfs of more than 300 MB, at
//! different wall-clock times, under different umasks and with the source directories'
//! entries in a different on-disk order, give the same image and bmap for the same
//! SOURCE_DATE_EPOCH. The first tree is on /var/tmp, its copy on tmpfs. Heavy (about a GiB of I/O), so `#[ignore]`d: scripts/checks/60-imagegen.sh
//! runs it once with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const FILES_PER_DIR: usize = 20;
const DIRS: usize = 16;
const FILE_LEN: usize = 1 << 20;

/// Deterministic pseudo-random bytes, a u64 at a time (fast enough in a debug build).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// 16 directories of 20 files of 1 MiB (335 MB) plus the small common rootfs.
fn big_rootfs(dir: &Path) -> PathBuf {
    let r = rootfs(dir);
    for d in 0..DIRS {
        let sub = r.join(format!("usr/share/blobs{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..FILES_PER_DIR {
            let p = sub.join(format!("f{f:02}.bin"));
            std::fs::write(&p, noise((d * 100 + f) as u64 + 1, FILE_LEN)).unwrap();
        }
    }
    r
}

/// A copy of `r` (modes and mtimes kept) on tmpfs under `to`. ext4 with `dir_index` returns a
/// directory's entries in hash order whatever the order they were made in, so the other order
/// comes from another filesystem: tmpfs lists the newest entry first.
fn copy_to_tmpfs(r: &Path, to: &Path) -> PathBuf {
    let o = run(Command::new("cp").arg("-a").arg(r).arg(to));
    assert!(
        o.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    to.join(r.file_name().unwrap())
}

/// `ls -f` order of a directory (the order readdir, and so `mkfs.ext4 -d`, sees).
fn readdir_order(d: &Path) -> Vec<String> {
    let o = run(Command::new("ls").arg("-f").arg(d));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(".bin"))
        .map(str::to_string)
        .collect()
}

fn build(rootfs: &Path, boot: &Path, out: &Path, umask: &str) {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {umask} && exec \"$@\""))
        .arg("sh")
        .arg(bin())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(layout());
    for s in small_sets() {
        c.arg("--set").arg(s);
    }
    c.args(["--set", "rootA.size=420MiB"])
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--boot")
        .arg(boot)
        .arg("--output")
        .arg(out);
    let o = run(&mut c);
    assert!(
        o.status.success(),
        "build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn sha256(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    String::from_utf8(o.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "heavy: ~700 MB written; run by scripts/checks/60-imagegen.sh with --ignored"]
fn a_300_mb_rootfs_rebuilds_bit_for_bit() {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let r = big_rootfs(d.path());
    let b = bootdir(d.path());
    let first = r.join("usr/share/blobs00");
    let a = d.path().join("a.img");
    build(&r, &b, &a, "022");

    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let r2 = copy_to_tmpfs(&r, shm.path());
    assert_ne!(
        readdir_order(&first),
        readdir_order(&r2.join("usr/share/blobs00")),
        "the copy lists its entries in the same order"
    );
    // A later wall-clock second, another umask, the other entry order.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b_img = d.path().join("b.img");
    build(&r2, &b, &b_img, "077");
    drop(shm);

    let diff = run(Command::new("cmp").arg("-l").arg(&a).arg(&b_img));
    let listing = String::from_utf8_lossy(&diff.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        sha256(&a),
        sha256(&b_img),
        "the images differ in {} bytes, first (offset, octal a, octal b): {:?}",
        lines.len(),
        &lines[..lines.len().min(8)]
    );
    assert_eq!(
        sha256(&sibling(&a, ".bmap")),
        sha256(&sibling(&b_img, ".bmap")),
        "the bmaps differ"
    );
}
