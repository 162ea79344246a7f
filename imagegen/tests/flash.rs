//! Flashing through the `.bmap` onto a medium that is not blank: `bmaptool copy` writes only
//! the mapped blocks onto a loop device over a file pre-filled with 0xFF (erased flash) or with
//! random bytes (a used card). Every partition must then pass `fsck.vfat -n` / `e2fsck -fn`,
//! and every file must read back byte for byte, for the default (GRUB) and the U-Boot layout.
//! Needs root for the loop device, like the real flashing path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use resin_imagegen::inspect::inspect_image;

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file with runs of zeros between data: 4 KiB data, 60 KiB zeros, 8 KiB data (73,728 bytes).
fn zero_runs() -> Vec<u8> {
    let mut v = noise(7, 4096);
    v.extend(vec![0u8; 60 * 1024]);
    v.extend(noise(8, 8192));
    v
}

fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let r = rootfs(dir);
    std::fs::create_dir_all(r.join("var/lib")).unwrap();
    std::fs::write(r.join("var/lib/zero-runs.bin"), zero_runs()).unwrap();
    std::fs::write(r.join("var/lib/all-zero.bin"), vec![0u8; 64 * 1024]).unwrap();
    std::fs::write(r.join("var/lib/empty"), b"").unwrap();
    let b = bootdir(dir);
    std::fs::write(b.join("zero-runs.bin"), zero_runs()).unwrap();
    std::fs::write(b.join("EFI/BOOT/all-zero.bin"), vec![0u8; 40 * 1024]).unwrap();
    (r, b)
}

/// With `ext4_image`, the rootfs goes in as a ready-made ext4 image (`mkfs.ext4 -d`, its
/// inode tables left for lazy init), as a Yocto build hands it over.
fn build_from(dir: &Path, name: &str, extra: &[&str], ext4_image: bool) -> PathBuf {
    let (r, b) = inputs(dir);
    let r = if ext4_image {
        let img = dir.join("rootfs.ext4");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let o = run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=1", "-d"])
            .arg(&r)
            .arg(&img));
        check_output(&o, "mkfs.ext4 -d");
        img
    } else {
        r
    };
    let out = dir.join(name);
    let mut c = Command::new(bin());
    c.env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(layout());
    for s in small_sets() {
        c.arg("--set").arg(s);
    }
    for s in extra {
        c.arg("--set").arg(s);
    }
    c.arg("--rootfs")
        .arg(&r)
        .arg("--boot")
        .arg(&b)
        .arg("--output")
        .arg(&out);
    let o = run(&mut c);
    assert!(
        o.status.success(),
        "build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Every regular file under `root`, by path relative to it.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = p.symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn assert_same_files(src: &Path, got: &Path, what: &str) {
    let want = files(src);
    let have = files(got);
    assert!(!want.is_empty());
    for (p, bytes) in &want {
        let Some(h) = have.get(p) else {
            panic!("{what}: {} is missing", p.display());
        };
        let differ = differing_bytes_any(bytes, h);
        assert!(
            differ == 0,
            "{what}: {} differs in {differ} of {} bytes",
            p.display(),
            bytes.len()
        );
    }
}

fn differing_bytes_any(a: &[u8], b: &[u8]) -> usize {
    if a.len() != b.len() {
        return a.len().max(b.len());
    }
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

fn check_output(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Flashes `img` through its bmap onto a medium pre-filled with `fill` and checks it.
fn flash_and_check(d: &Path, img: &Path, fill: &[u8], what: &str, rootfs: &Path, boot: &Path) {
    let len = std::fs::metadata(img).unwrap().len();
    let medium = d.join("medium.img");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&medium).unwrap();
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(fill.len());
            f.write_all(&fill[..n]).unwrap();
            left -= n;
        }
        f.sync_all().unwrap();
    }
    {
        let dev = Loop::attach(&medium);
        let o = run(Command::new("bmaptool")
            .args(["-q", "copy", "--bmap"])
            .arg(common::sibling(img, ".bmap"))
            .arg(img)
            .arg(&dev.0));
        check_output(&o, &format!("{what}: bmaptool copy"));
    }
    let o = run(Command::new("sgdisk").arg("-v").arg(&medium));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "{what}: sgdisk -v: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let report = inspect_image(&medium).unwrap();
    for p in &report.partitions {
        let part = d.join(format!("part-{}", p.index));
        extract(&medium, p.offset, p.size, &part);
        let label = format!("{what}: {}", p.label);
        if p.fs.starts_with("vfat") {
            check_output(
                &run(Command::new("fsck.vfat").arg("-n").arg(&part)),
                &format!("{label}: fsck.vfat -n"),
            );
            let out = d.join("vfat-out");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            check_output(
                &run(Command::new("mcopy")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-s")
                    .arg("-n")
                    .arg("-i")
                    .arg(&part)
                    .arg("::/")
                    .arg(&out)),
                &format!("{label}: mcopy"),
            );
            assert_same_files(boot, &out, &label);
        } else if p.label == "resin-env" {
            // The U-Boot environment: both copies intact (their CRCs cover the padding too).
            let f = std::fs::File::open(&part).unwrap();
            assert_eq!(
                resin_imagegen::ubootenv::valid_copies(&f, 0, 0x4000, true).unwrap(),
                2,
                "{label}: both environment copies"
            );
            let cfg = d.join("fw_env.config");
            std::fs::write(
                &cfg,
                format!("{0} 0x0 0x4000\n{0} 0x4000 0x4000\n", part.display()),
            )
            .unwrap();
            let o = run(Command::new("fw_printenv").arg("-c").arg(&cfg));
            check_output(&o, &format!("{label}: fw_printenv"));
            assert!(String::from_utf8_lossy(&o.stdout).contains("BOOT_ORDER=A B"));
        } else {
            check_output(
                &run(Command::new("e2fsck").arg("-fn").arg(&part)),
                &format!("{label}: e2fsck -fn"),
            );
            if p.label == "resin-rootA" {
                let out = d.join("ext4-out");
                let _ = std::fs::remove_dir_all(&out);
                std::fs::create_dir_all(&out).unwrap();
                check_output(
                    &run(Command::new("debugfs")
                        .arg("-R")
                        .arg(format!("rdump / {}", out.display()))
                        .arg(&part)),
                    &format!("{label}: debugfs rdump"),
                );
                assert_same_files(rootfs, &out, &label);
            }
        }
        std::fs::remove_file(&part).unwrap();
    }
    std::fs::remove_file(&medium).unwrap();
}

/// The merged block ranges of a bmap file.
fn ranges(bmap: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for line in bmap.lines().filter(|l| l.contains("<Range")) {
        let inner = line
            .split('>')
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .trim();
        let (a, b) = match inner.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (inner.parse().unwrap(), inner.parse().unwrap()),
        };
        match out.last_mut() {
            Some(l) if l.1 + 1 == a => l.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

fn flash_layout(extra: &[&str], what: &str) {
    flash_layout_from(extra, what, false)
}

fn flash_layout_from(extra: &[&str], what: &str, ext4_image: bool) {
    for t in [
        "bmaptool",
        "losetup",
        "fsck.vfat",
        "e2fsck",
        "debugfs",
        "mcopy",
        "sgdisk",
    ] {
        need(t);
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = build_from(d.path(), "disk.img", extra, ext4_image);
    let (rootfs, boot) = (d.path().join("rootfs"), d.path().join("bootin"));

    // Our image is sparse exactly where our bmap leaves blocks out: `bmaptool create` agrees.
    let ours = std::fs::read_to_string(common::sibling(&img, ".bmap")).unwrap();
    let o = run(Command::new("bmaptool").arg("create").arg(&img));
    check_output(&o, "bmaptool create");
    let theirs = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        ranges(&ours),
        ranges(&theirs),
        "{what}: bmaptool create disagrees with our .bmap"
    );

    flash_and_check(
        d.path(),
        &img,
        &[0xFF; 1 << 20],
        &format!("{what} on 0xFF"),
        &rootfs,
        &boot,
    );
    flash_and_check(
        d.path(),
        &img,
        &noise(0x5EED, 1 << 20),
        &format!("{what} on random bytes"),
        &rootfs,
        &boot,
    );
}

#[test]
fn bmap_flash_onto_a_used_medium_gives_clean_filesystems_and_the_same_files() {
    flash_layout(&[], "grub layout");
}

#[test]
fn bmap_flash_of_the_uboot_layout_onto_a_used_medium() {
    flash_layout(&["bootloader.loader=uboot"], "uboot layout");
}

#[test]
fn bmap_flash_with_a_ready_made_ext4_rootfs_image() {
    flash_layout_from(&[], "ext4 image input", true);
}

#[test]
fn bmap_flash_with_a_fat12_boot_partition() {
    // 8 MiB gives mkfs.vfat's FAT12 (packed 12-bit entries, a fixed root directory area).
    flash_layout(&["boot.size=8MiB"], "FAT12 boot");
}
