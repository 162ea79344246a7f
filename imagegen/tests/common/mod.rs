//! Shared helpers of imagegen's integration tests: small inputs and the real tools.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const EPOCH: &str = "1700000000";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_resin-imagegen"))
}

pub fn layout() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/layouts/resin-ab.toml"
    ))
}

/// Small partition sizes so a test image is ~200 MiB sparse and builds in well under a second.
pub fn small_sets() -> Vec<String> {
    [
        "boot.size=36MiB",
        "rootA.size=32MiB",
        "state.size=8MiB",
        "data.min-size=8MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Fails loudly when a real tool the tests need is missing.
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is missing: install the imagegen packages listed in scripts/lib/common.sh \
         (RESIN_APT_PACKAGES; scripts/test.sh installs them)"
    );
}

/// A rootfs directory with a kernel stand-in and some incompressible data.
pub fn rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    std::fs::create_dir_all(r.join("boot")).unwrap();
    std::fs::create_dir_all(r.join("etc/rauc")).unwrap();
    std::fs::write(r.join("boot/vmlinuz"), b"not really a kernel").unwrap();
    std::fs::write(r.join("boot/initrd.img"), b"not really an initrd").unwrap();
    std::fs::write(r.join("etc/hostname"), b"resin\n").unwrap();
    // Deterministic pseudo-random bytes (so squashfs in bundles has something to hold).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(r.join("etc/blob"), blob).unwrap();
    r
}

/// A boot directory with a GRUB stand-in.
pub fn bootdir(dir: &Path) -> PathBuf {
    let b = dir.join("bootin");
    std::fs::create_dir_all(b.join("EFI/BOOT")).unwrap();
    std::fs::write(b.join("EFI/BOOT/BOOTAA64.EFI"), vec![0x4du8; 100_000]).unwrap();
    b
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs the CLI `build` with the small sizes; returns its output.
pub fn cli_build(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let r = rootfs(dir);
    let b = bootdir(dir);
    let mut c = Command::new(bin());
    c.env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(layout());
    for s in small_sets() {
        c.arg("--set").arg(s);
    }
    c.arg("--rootfs")
        .arg(&r)
        .arg("--boot")
        .arg(&b)
        .arg("--output")
        .arg(out)
        .args(extra);
    run(&mut c)
}

pub fn build_ok(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let o = cli_build(dir, &out, &[]);
    assert!(
        o.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Copies `len` bytes at `offset` of `img` into a new file (a partition, for fsck).
pub fn extract(img: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut f.by_ref().take(len), &mut out).unwrap();
}

/// True when two files have the same bytes (the real `cmp`, fast on big images).
pub fn same_file(a: &Path, b: &Path) -> bool {
    run(Command::new("cmp").arg("-s").arg(a).arg(b))
        .status
        .success()
}

/// Offsets of 4 KiB blocks whose bytes differ between two equally long buffers.
pub fn differing_bytes(a: &[u8], b: &[u8]) -> Vec<u64> {
    assert_eq!(a.len(), b.len());
    let mut out = Vec::new();
    for (i, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
        if x != y {
            for (j, (p, q)) in x.iter().zip(y).enumerate() {
                if p != q {
                    out.push((i * 4096 + j) as u64);
                }
            }
        }
    }
    out
}

/// `disk.img` + `.bmap` → `disk.img.bmap`.
pub fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A loop device over a file, detached on drop (also when an assertion fails).
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let o = run(Command::new("losetup").args(["-f", "--show"]).arg(file));
        assert!(
            o.status.success(),
            "losetup (needs root and /dev/loop-control, as flashing does): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8(o.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
