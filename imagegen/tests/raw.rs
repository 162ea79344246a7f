//! `[[raw]]` images at fixed offsets outside the partition table (an i.MX-style bootloader at
//! 33 KiB): written byte for byte, kept by `bmaptool copy` onto an erased (0xFF) medium, the
//! GPT still clean; misplaced ones are refused before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn blob(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    // A run of zeros inside, which the bootloader needs as zeros.
    let mid = len / 2;
    v[mid..mid + 8192].fill(0);
    v
}

fn layout_with_raw(dir: &Path, offset: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(layout()).unwrap();
    text.push_str(&format!(
        "\n[[raw]]\nname = \"spl\"\noffset = \"{offset}\"\ncontents = {{ input = \"spl\" }}\n"
    ));
    let p = dir.join("raw.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn build(dir: &Path, layout: &Path, spl: &Path, out: &Path) -> Output {
    let r = rootfs(dir);
    let b = bootdir(dir);
    let mut c = Command::new(bin());
    c.env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(layout);
    for s in small_sets() {
        c.arg("--set").arg(s);
    }
    c.arg("--rootfs")
        .arg(&r)
        .arg("--boot")
        .arg(&b)
        .arg("--input")
        .arg(format!("spl={}", spl.display()))
        .arg("--output")
        .arg(out);
    run(&mut c)
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut v, offset)
        .unwrap();
    v
}

#[test]
fn a_raw_bootloader_at_33kib_survives_bmap_flashing_onto_erased_flash() {
    for t in ["sgdisk", "bmaptool", "losetup"] {
        need(t);
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let spl_bytes = blob(300 * 1024);
    let spl = d.path().join("spl.bin");
    std::fs::write(&spl, &spl_bytes).unwrap();
    let l = layout_with_raw(d.path(), "33KiB");
    let img = d.path().join("disk.img");
    let o = build(d.path(), &l, &spl, &img);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(read_at(&img, 33 * 1024, spl_bytes.len()) == spl_bytes);
    let o = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "{o:?}"
    );

    let len = std::fs::metadata(&img).unwrap().len();
    let medium = d.path().join("medium.img");
    std::fs::write(&medium, vec![0xFFu8; len as usize]).unwrap();
    {
        let dev = Loop::attach(&medium);
        let o = run(Command::new("bmaptool")
            .args(["-q", "copy", "--bmap"])
            .arg(sibling(&img, ".bmap"))
            .arg(&img)
            .arg(&dev.0));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(
        read_at(&medium, 33 * 1024, spl_bytes.len()) == spl_bytes,
        "the raw image differs after flashing"
    );
    let o = run(Command::new("sgdisk").arg("-v").arg(&medium));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "{o:?}"
    );
}

#[test]
fn misplaced_raw_images_are_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let spl = d.path().join("spl.bin");
    std::fs::write(&spl, blob(64 * 1024)).unwrap();
    let img = d.path().join("disk.img");

    let o = build(d.path(), &layout_with_raw(d.path(), "8KiB"), &spl, &img);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("raw[spl].offset") && e.contains("GPT"),
        "{e}"
    );

    let big = d.path().join("big.bin");
    std::fs::write(&big, blob(5 << 20)).unwrap();
    let o = build(d.path(), &layout_with_raw(d.path(), "33KiB"), &big, &img);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("raw[spl]") && e.contains("first partition"),
        "{e}"
    );
    assert!(!img.exists());
}
