//! The binary as installed: run from a directory that has nothing of the source tree, with
//! the layout found by `--layout` or else the built-in one, templates from inside the binary,
//! and the documented defaults for keys a layout leaves out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn in_dir(cwd: &Path, args: &[&str]) -> Output {
    run(Command::new(bin())
        .current_dir(cwd)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(args))
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn render_and_build_from_an_empty_directory_without_a_layout() {
    let cwd = tempfile::tempdir().unwrap();
    let o = in_dir(cwd.path(), &["render", "--out", "r"]);
    ok(&o);
    let grub = read(&cwd.path().join("r/EFI/BOOT/grub.cfg"));
    assert!(grub.contains("root=PARTLABEL=resin-rootA"), "{grub}");
    assert!(read(&cwd.path().join("r/etc/rauc/system.conf")).contains("compatible=resin-qemuarm64"));

    let inputs = tempfile::tempdir().unwrap();
    let r = rootfs(inputs.path());
    let b = bootdir(inputs.path());
    let mut args: Vec<String> = vec!["build".into()];
    for s in small_sets() {
        args.push("--set".into());
        args.push(s);
    }
    args.extend([
        "--rootfs".into(),
        r.display().to_string(),
        "--boot".into(),
        b.display().to_string(),
        "--output".into(),
        "disk.img".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&in_dir(cwd.path(), &args));
    ok(&in_dir(cwd.path(), &["inspect", "disk.img"]));
}

#[test]
fn a_layout_copied_out_of_the_source_tree_renders_with_the_built_in_templates() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::copy(layout(), cwd.path().join("my.toml")).unwrap();
    ok(&in_dir(
        cwd.path(),
        &["render", "--layout", "my.toml", "--out", "r"],
    ));
    assert!(read(&cwd.path().join("r/etc/fstab")).contains("PARTLABEL=resin-state"));
}

#[test]
fn a_layout_without_bootloader_or_disk_tables_gets_the_documented_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    // The shipped layout minus its [disk] and [bootloader] tables.
    let full = read(&layout());
    let mut out = String::new();
    let mut skip = false;
    for line in full.lines() {
        if line.starts_with('[') {
            skip = line == "[disk]" || line == "[bootloader]";
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(!out.contains("attempts") && !out.contains("alignment"));
    std::fs::write(cwd.path().join("min.toml"), out).unwrap();
    ok(&in_dir(
        cwd.path(),
        &["render", "--layout", "min.toml", "--out", "r"],
    ));
    let grub = read(&cwd.path().join("r/EFI/BOOT/grub.cfg"));
    assert!(grub.contains("console=ttyAMA0"), "{grub}");
    assert!(grub.contains("rootwait panic=30"), "{grub}");
    let sc = read(&cwd.path().join("r/etc/rauc/system.conf"));
    assert!(
        sc.contains("bootloader=grub") && sc.contains("/etc/rauc/keyring.pem"),
        "{sc}"
    );
    // The defaults equal what the full layout renders.
    ok(&in_dir(cwd.path(), &["render", "--out", "full"]));
    for f in [
        "EFI/BOOT/grub.cfg",
        "EFI/BOOT/grubenv",
        "etc/fstab",
        "etc/rauc/system.conf",
    ] {
        assert_eq!(
            read(&cwd.path().join("r").join(f)),
            read(&cwd.path().join("full").join(f)),
            "{f}"
        );
    }
}
