//! `configure` and `inspect` on images that are not what their partition table says:
//! truncated, too short for a GPT, padded, or with a partition entry that disagrees with its
//! filesystem. Both refuse, say what is wrong and where, say it once, and configure changes
//! nothing. Also the command line's own mistakes: a `--set` typo and `--output` into a
//! directory that does not exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn configure(img: &Path, cfg: &Path) -> Output {
    run(Command::new(bin())
        .arg("configure")
        .arg(img)
        .arg("--config")
        .arg(cfg))
}

fn inspect(img: &Path) -> Output {
    run(Command::new(bin()).arg("inspect").arg(img))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// No clause of the message is said twice ("x: y: y", "the image has the … is damaged").
fn said_once(e: &str) {
    let parts: Vec<&str> = e.trim().split(": ").collect();
    for w in parts.windows(2) {
        assert_ne!(w[0], w[1], "repeated clause in {e:?}");
    }
    assert!(!e.contains("has the"), "garbled: {e:?}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e:?}");
}

/// Both commands refuse `img` with a message holding every one of `want`; configure leaves
/// the file as it was.
fn refused(img: &Path, cfg: &Path, want: &[&str]) {
    let before = std::fs::read(img).unwrap();
    let o = configure(img, cfg);
    let e = stderr(&o);
    assert!(!o.status.success(), "configure accepted it: {o:?}");
    for w in want {
        assert!(e.contains(w), "configure: {w:?} not in {e:?}");
    }
    said_once(&e);
    assert!(
        std::fs::read(img).unwrap() == before,
        "configure changed the image"
    );

    let o = inspect(img);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "inspect: {o:?}");
    for w in want {
        assert!(e.contains(w), "inspect: {w:?} not in {e:?}");
    }
    said_once(&e);
}

fn copy_with_len(img: &Path, to: &Path, len: u64) {
    std::fs::copy(img, to).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(to).unwrap();
    f.set_len(len).unwrap();
}

#[test]
fn configure_and_inspect_refuse_truncated_short_and_padded_images() {
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");
    let len = std::fs::metadata(&img).unwrap().len();
    let cfg = d.path().join("config.json");
    std::fs::write(&cfg, br#"{"provisioningKey":"k"}"#).unwrap();
    let last = len / 512 - 1;

    // Cut short (as a 256 MiB image cut to 100 MiB was accepted by configure).
    let cut = d.path().join("cut.img");
    copy_with_len(&img, &cut, 100 << 20);
    refused(
        &cut,
        &cfg,
        &[
            "truncated",
            &format!("{} bytes", 100u64 << 20),
            &format!("{len}-byte disk"),
            &format!("sector {last}"),
        ],
    );

    // One sector short: the backup header is gone.
    copy_with_len(&img, &cut, len - 512);
    refused(&cut, &cfg, &["truncated", &format!("{len}-byte disk")]);

    // Cut inside the partition entry array.
    copy_with_len(&img, &cut, 8192);
    refused(&cut, &cfg, &["truncated", "entry array"]);

    // Too short for any GPT.
    copy_with_len(&img, &cut, 1000);
    refused(&cut, &cfg, &["only 1000 bytes", "too short"]);

    // Padded: 1 MiB appended.
    let long = d.path().join("long.img");
    copy_with_len(&img, &long, len + (1 << 20));
    refused(
        &long,
        &cfg,
        &[
            &format!("{} more than the {len}-byte disk", 1 << 20),
            &format!("sector {last}"),
        ],
    );

    // The intact image is still accepted.
    let o = configure(&img, &cfg);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn configure_and_inspect_refuse_a_partition_table_that_disagrees_with_a_filesystem() {
    need("sgdisk");
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");
    let cfg = d.path().join("config.json");
    std::fs::write(&cfg, br#"{"provisioningKey":"k"}"#).unwrap();
    let r = resin_imagegen::inspect::inspect_image(&img).unwrap();
    let root_a = r
        .partitions
        .iter()
        .find(|p| p.label == "resin-rootA")
        .unwrap()
        .clone();
    // rootA's entry shrunk to 16 MiB (its 32 MiB ext4 stays), as a hand-edited table would.
    let start = root_a.offset / 512;
    let i = root_a.index;
    let o = run(Command::new("sgdisk")
        .arg(format!("--delete={i}"))
        .arg(format!("--new={i}:{start}:+16M"))
        .arg(format!("--change-name={i}:resin-rootA"))
        .arg(&img));
    assert!(o.status.success(), "sgdisk: {o:?}");
    refused(
        &img,
        &cfg,
        &[
            &format!("partition {i} (resin-rootA)"),
            &format!("{} bytes", root_a.size),
            &format!("{} bytes", 16 << 20),
            "disagree",
        ],
    );
}

#[test]
fn a_set_typo_names_the_set_argument_not_the_layout_file() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("x.img");
    let o = cli_build(d.path(), &out, &["--set", "rootA.sise=2GiB"]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("--set rootA.sise=2GiB") && e.contains("sise"),
        "{e}"
    );
    assert!(!e.contains("resin-ab.toml"), "blames the layout file: {e}");
    said_once(&e);
    // A bad value too.
    let o = cli_build(d.path(), &out, &["--set", "bootloader.attempts=many"]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("--set bootloader.attempts=many"), "{e}");
    assert!(!out.exists());
}

#[test]
fn output_into_a_missing_directory_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nonexist");
    let o = cli_build(d.path(), &missing.join("x.img"), &[]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("--output") && e.contains("does not exist"),
        "{e}"
    );
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(!missing.exists(), "the directory was created");

    let img = build_ok(d.path(), "disk.img");
    let cfg = d.path().join("config.json");
    std::fs::write(&cfg, br#"{"provisioningKey":"k"}"#).unwrap();
    let o = run(Command::new(bin())
        .arg("configure")
        .arg(&img)
        .arg("--config")
        .arg(&cfg)
        .arg("--output")
        .arg(missing.join("c.img")));
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("--output") && e.contains("does not exist"),
        "{e}"
    );
    assert!(!missing.exists());
}
