//! The redundant U-Boot environment partition (`fs = "uboot-env"`), read back with the real
//! `fw_printenv -c` (libubootenv) from the image, compared with `mkenvimage`, and read from
//! the second copy when the first is corrupt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::*;

const ENV_SIZE: u64 = 0x4000;

fn uboot_build(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("uboot.img");
    let o = cli_build(dir, &img, &["--set", "bootloader.loader=uboot"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    img
}

fn env_partition(img: &Path) -> (u64, u64) {
    let r = resin_imagegen::inspect::inspect_image(img).unwrap();
    let p = r
        .partitions
        .iter()
        .find(|p| p.label == "resin-env")
        .unwrap_or_else(|| panic!("no resin-env partition: {:?}", r.partitions));
    (p.offset, p.size)
}

fn printenv(cfg: &Path) -> (bool, String) {
    let o = run(Command::new("fw_printenv").arg("-c").arg(cfg));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn fw_printenv_reads_both_copies_and_falls_back_to_the_second() {
    need("fw_printenv");
    need("mkenvimage");
    let d = tempfile::tempdir().unwrap();
    let img = uboot_build(d.path());
    let (off, size) = env_partition(&img);
    assert!(size >= 2 * ENV_SIZE);

    // libubootenv's config: the image file, each copy at its byte offset.
    let cfg = d.path().join("fw_env.config");
    std::fs::write(
        &cfg,
        format!(
            "{img} {:#x} {ENV_SIZE:#x}\n{img} {:#x} {ENV_SIZE:#x}\n",
            off,
            off + ENV_SIZE,
            img = img.display()
        ),
    )
    .unwrap();
    let (ok, out) = printenv(&cfg);
    assert!(ok, "{out}");
    assert!(out.contains("BOOT_ORDER=A B\n"), "{out}");
    assert!(out.contains("BOOT_A_LEFT=3\n"), "{out}");
    assert!(out.contains("BOOT_B_LEFT=0\n"), "{out}");

    // Copy 1 is what mkenvimage -r makes of the rendered uboot-env.txt (flag byte 1); copy 2
    // is the same environment with flag 0, so either U-Boot flag scheme picks copy 1.
    let rendered = d.path().join("rendered");
    let mut c = Command::new(bin());
    c.args(["render", "--set", "bootloader.loader=uboot"]);
    for s in small_sets() {
        c.arg("--set").arg(s);
    }
    let o = run(c.arg("--out").arg(&rendered));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mk = d.path().join("mk.env");
    let o = run(Command::new("mkenvimage")
        .args(["-r", "-p", "0", "-s", &ENV_SIZE.to_string(), "-o"])
        .arg(&mk)
        .arg(rendered.join("uboot-env.txt")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mk = std::fs::read(&mk).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut c1 = vec![0u8; ENV_SIZE as usize];
    let mut c2 = vec![0u8; ENV_SIZE as usize];
    f.read_exact_at(&mut c1, off).unwrap();
    f.read_exact_at(&mut c2, off + ENV_SIZE).unwrap();
    assert!(c1 == mk, "copy 1 differs from mkenvimage -r");
    assert_eq!(c2[4], 0, "copy 2's flag byte");
    assert_eq!(c1[..4], c2[..4], "same CRC");
    assert_eq!(c1[5..], c2[5..], "same environment");

    // The device's fw_env.config and U-Boot's Kconfig fragment, rendered from the layout.
    let fw = std::fs::read_to_string(rendered.join("etc/fw_env.config")).unwrap();
    assert!(
        fw.contains("/dev/disk/by-partlabel/resin-env 0x0 0x4000\n")
            && fw.contains("/dev/disk/by-partlabel/resin-env 0x4000 0x4000\n"),
        "{fw}"
    );
    let kc = std::fs::read_to_string(rendered.join("uboot-env.cfg")).unwrap();
    assert!(
        kc.contains(&format!("CONFIG_ENV_OFFSET={off:#x}\n")),
        "{kc}"
    );
    assert!(
        kc.contains(&format!("CONFIG_ENV_OFFSET_REDUND={:#x}\n", off + ENV_SIZE)),
        "{kc}"
    );
    assert!(kc.contains("CONFIG_ENV_SIZE=0x4000\n"), "{kc}");
    assert!(kc.contains("CONFIG_ENV_REDUNDANT=y\n"), "{kc}");
    assert!(kc.contains("CONFIG_ENV_IS_IN_MMC=y\n"), "{kc}");

    // A corrupt first copy: the environment still reads, from the second.
    f.write_all_at(b"XX", off + 100).unwrap();
    let (ok, out) = printenv(&cfg);
    assert!(
        ok && out.contains("BOOT_ORDER=A B\n"),
        "copy 1 corrupt: {out}"
    );
    // Both corrupt: the test can tell (no A/B state left).
    f.write_all_at(b"XX", off + ENV_SIZE + 100).unwrap();
    let (_, out) = printenv(&cfg);
    assert!(
        !out.contains("BOOT_ORDER=A B\n"),
        "both copies corrupt: {out}"
    );
}

#[test]
fn the_env_partition_is_only_in_uboot_images() {
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "grub.img");
    let r = resin_imagegen::inspect::inspect_image(&img).unwrap();
    assert!(
        !r.partitions.iter().any(|p| p.label == "resin-env"),
        "a GRUB image has no U-Boot environment"
    );
}

#[test]
fn env_size_must_fit_the_partition_twice() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("x.img");
    let o = cli_build(
        d.path(),
        &img,
        &[
            "--set",
            "bootloader.loader=uboot",
            "--set",
            "env.env-size=3MiB",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("partition[env].env-size"), "{err}");
    assert!(!img.exists());
}
