//! `build --format qcow2`: the image for QEMU, read back with the real `qemu-img` (check,
//! compare against the raw build of the same inputs, info).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

#[test]
fn qcow2_output_passes_qemu_img_check_and_equals_the_raw_image() {
    need("qemu-img");
    let d = tempfile::tempdir().unwrap();
    let raw = build_ok(d.path(), "disk.img");
    let q = d.path().join("disk.qcow2");
    let o = cli_build(d.path(), &q, &["--format", "qcow2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !sibling(&q, ".bmap").exists(),
        "a .bmap describes a raw image, not a qcow2"
    );

    let o = run(Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&q));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "qemu-img check: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("No errors were found"), "{out}");

    let o = run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&q));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "qemu-img compare: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("Images are identical"), "{out}");

    let o = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&q));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(
        info["virtual-size"].as_u64().unwrap(),
        std::fs::metadata(&raw).unwrap().len()
    );
    // Sparse: only the data is allocated, far less than the virtual size.
    assert!(
        info["actual-size"].as_u64().unwrap() < info["virtual-size"].as_u64().unwrap() / 4,
        "{info}"
    );

    // Reproducible like the raw image.
    let q2 = d.path().join("again.qcow2");
    let o = cli_build(d.path(), &q2, &["--format", "qcow2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(same_file(&q, &q2), "two qcow2 builds differ");
}

#[test]
fn qcow2_refuses_bmap_and_compression() {
    let d = tempfile::tempdir().unwrap();
    let q = d.path().join("disk.qcow2");
    for extra in [&["--bmap"][..], &["--compress", "zstd"][..]] {
        let mut args = vec!["--format", "qcow2"];
        args.extend_from_slice(extra);
        let o = cli_build(d.path(), &q, &args);
        assert!(!o.status.success(), "{extra:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("qcow2"), "{err}");
        assert!(!q.exists());
    }
}
