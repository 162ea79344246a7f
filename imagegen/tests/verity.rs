//! Read-only squashfs roots with dm-verity hash partitions, read back with the real tools:
//! `veritysetup verify` with the root hash the image's grubenv carries, `unsquashfs -lln`
//! against the source rootfs, and two builds compared byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const LAYOUT: &str = r#"
device-type = "verity-test"

[bootloader]
loader = "grub"

[[partition]]
name = "boot"
label = "resin-boot"
type = "esp"
size = "36MiB"
fs = "vfat"
mount = "/mnt/boot"
role = "boot"
contents = { input = "boot" }

[[partition]]
name = "rootA"
label = "resin-rootA"
type = "linux"
size = "32MiB"
fs = "squashfs"
role = "root"
slot = "A"
contents = { input = "rootfs" }

[[partition]]
name = "rootA-verity"
label = "resin-rootA-verity"
type = "linux"
size = "4MiB"
fs = "verity"
verity-data = "rootA"

[[partition]]
name = "rootB"
label = "resin-rootB"
type = "linux"
size = "=rootA"
fs = "squashfs"
role = "root"
slot = "B"

[[partition]]
name = "rootB-verity"
label = "resin-rootB-verity"
type = "linux"
size = "4MiB"
fs = "verity"
verity-data = "rootB"

[[partition]]
name = "state"
label = "resin-state"
type = "linux"
size = "8MiB"
fs = "ext4"
mount = "/mnt/state"
role = "state"

[[render]]
template = "grub.cfg.j2"
path = "EFI/BOOT/grub.cfg"
install = "boot"
loader = "grub"

[[render]]
template = "grubenv.j2"
path = "EFI/BOOT/grubenv"
install = "boot"
loader = "grub"
grubenv = true

[[render]]
template = "system.conf.j2"
path = "etc/rauc/system.conf"
"#;

fn build(dir: &Path, name: &str, rootfs: &Path) -> PathBuf {
    let layout = dir.join("verity.toml");
    std::fs::write(&layout, LAYOUT).unwrap();
    let out = dir.join(name);
    let o = run(Command::new(bin())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(&layout)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("--boot")
        .arg(bootdir(dir))
        .arg("--output")
        .arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn part(img: &Path, label: &str, to: &Path) -> PathBuf {
    let plan = resin_imagegen::layout::Layout::from_str_with(
        LAYOUT,
        Path::new("verity.toml"),
        Path::new("."),
        &[],
    )
    .unwrap()
    .plan()
    .unwrap();
    let p = plan.parts.iter().find(|p| p.label == label).unwrap();
    let out = to.join(label);
    extract(img, p.offset, p.size, &out);
    out
}

/// `unsquashfs -lln` paths (without the `squashfs-root` prefix).
fn squashfs_paths(img: &Path) -> BTreeSet<String> {
    let o = run(Command::new("unsquashfs").arg("-lln").arg(img));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split("squashfs-root").nth(1))
        .map(|p| p.trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn source_paths(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn squashfs_root_verifies_with_the_rendered_root_hash_and_rebuilds_bit_for_bit() {
    for t in ["veritysetup", "unsquashfs", "mcopy"] {
        need(t);
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let rootfs = rootfs(d.path());
    let img = build(d.path(), "disk.img", &rootfs);

    // The root hash, as the boot partition's grubenv gives it to grub.cfg.
    let boot = part(&img, "resin-boot", d.path());
    let o = run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(&boot)
        .arg("::/EFI/BOOT/grubenv")
        .arg("-"));
    let env = String::from_utf8_lossy(&o.stdout).to_string();
    let hash = env
        .lines()
        .find_map(|l| l.strip_prefix("A_ROOTHASH="))
        .unwrap_or_else(|| panic!("no A_ROOTHASH in grubenv: {env}"))
        .to_string();
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(!env.contains("B_ROOTHASH"), "slot B is empty: {env}");
    let o = run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(&boot)
        .arg("::/EFI/BOOT/grub.cfg")
        .arg("-"));
    let cfg = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        cfg.contains(
            "root=/dev/mapper/root systemd.verity_root_data=PARTLABEL=resin-rootA \
             systemd.verity_root_hash=PARTLABEL=resin-rootA-verity roothash=$A_ROOTHASH"
        ),
        "{cfg}"
    );

    let data = part(&img, "resin-rootA", d.path());
    let tree = part(&img, "resin-rootA-verity", d.path());
    let verify = |h: &str| {
        run(Command::new("veritysetup")
            .arg("verify")
            .arg(&data)
            .arg(&tree)
            .arg(h))
    };
    let o = verify(&hash);
    assert!(
        o.status.success(),
        "veritysetup verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let mut wrong = hash.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    assert!(
        !verify(std::str::from_utf8(&wrong).unwrap())
            .status
            .success(),
        "a wrong root hash verified"
    );

    assert_eq!(squashfs_paths(&data), source_paths(&rootfs));

    // RAUC's view: the squashfs slot is raw, its hash partition a child slot.
    let rendered = d.path().join("rendered");
    let o = run(Command::new(bin())
        .arg("render")
        .arg("--layout")
        .arg(d.path().join("verity.toml"))
        .arg("--out")
        .arg(&rendered));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conf = std::fs::read_to_string(rendered.join("etc/rauc/system.conf")).unwrap();
    assert!(
        conf.contains(
            "[slot.rootfs.0]\ndevice=/dev/disk/by-partlabel/resin-rootA\ntype=raw\nbootname=A\n"
        ),
        "{conf}"
    );
    assert!(
        conf.contains(
            "[slot.verity.0]\ndevice=/dev/disk/by-partlabel/resin-rootA-verity\ntype=raw\nparent=rootfs.0\n"
        ),
        "{conf}"
    );

    // Reproducible: a second build from a copy with other mtimes and another umask.
    let copy = d.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let o = run(Command::new("cp").arg("-r").arg(&rootfs).arg(&copy));
    assert!(o.status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = run(Command::new("touch").arg(copy.join("rootfs/etc")));
    assert!(o.status.success());
    let img2 = build(d.path(), "again.img", &copy.join("rootfs"));
    assert!(same_file(&img, &img2), "two builds differ");
    assert!(same_file(&sibling(&img, ".bmap"), &sibling(&img2, ".bmap")));
}

#[test]
fn a_verity_partition_must_name_a_squashfs_partition() {
    let d = tempfile::tempdir().unwrap();
    let layout = d.path().join("bad.toml");
    std::fs::write(
        &layout,
        LAYOUT.replace("verity-data = \"rootA\"", "verity-data = \"state\""),
    )
    .unwrap();
    let o = run(Command::new(bin())
        .arg("render")
        .arg("--layout")
        .arg(&layout)
        .arg("--out")
        .arg(d.path().join("r")));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("partition[rootA-verity].verity-data"), "{err}");
}
