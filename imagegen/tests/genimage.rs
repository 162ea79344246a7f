//! `import-genimage`: realistic genimage configs (a Raspberry Pi 4 one and an i.MX8M one with a
//! raw bootloader at 33K, in the shape buildroot ships them) become layouts that resin-imagegen
//! builds, read back with `sfdisk --json`; what a layout cannot express is listed on stderr
//! with exit status 3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const RPI4: &str = r#"
# Raspberry Pi 4 (64 bit), as buildroot's board/raspberrypi/genimage-raspberrypi4-64.cfg
image boot.vfat {
	vfat {
		files = {
			"bcm2711-rpi-4-b.dtb",
			"rpi-firmware/start4.elf",
			"rpi-firmware/fixup4.dat",
			"rpi-firmware/config.txt",
			"rpi-firmware/cmdline.txt",
			"Image"
		}
		label = "boot"
	}
	size = 64M
}

image sdcard.img {
	hdimage {
		partition-table-type = "gpt"
	}

	partition boot {
		partition-type-uuid = "U"
		bootable = "true"
		image = "boot.vfat"
	}

	partition rootfs {
		partition-type-uuid = "L"
		partition-uuid = "6b2b8f43-7a8e-4c38-9d1e-3f6a7b0c9e21"
		image = "rootfs.ext4"   // made by the rootfs build, sized by its file
	}
}
"#;

const IMX8: &str = r#"
/* i.MX8M EVK, as buildroot's board/freescale/common/imx/genimage.cfg.template_imx8 */
image boot.vfat {
  vfat {
    files = { "Image", "imx8mq-evk.dtb" }
  }
  size = 32M
}

image rootfs.ext4 {
  ext4 {
    label = "rootfs"
    use-mke2fs = true
    extraargs = "-O ^metadata_csum"
  }
  size = 120M
}

image sdcard.img {
  hdimage {
  }

  partition imx-boot {
    in-partition-table = "no"
    image = "imx8-boot-sd.bin"
    offset = 33K
  }

  partition boot {
    partition-type = 0xC
    bootable = "true"
    image = "boot.vfat"
    offset = 8M
  }

  partition rootfs {
    partition-type = 0x83
    image = "rootfs.ext4"
    fill = true
  }
}
"#;

fn import(dir: &Path, name: &str, cfg: &str, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let f = dir.join(name);
    std::fs::write(&f, cfg).unwrap();
    let out = dir.join(format!("{name}.toml"));
    let o = run(Command::new(bin())
        .arg("import-genimage")
        .arg(&f)
        .arg("--output")
        .arg(&out)
        .args(extra));
    (o, out)
}

fn sfdisk(img: &Path) -> serde_json::Value {
    let o = run(Command::new("sfdisk").arg("--json").arg(img));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["partitiontable"].clone()
}

#[test]
fn raspberry_pi_config_imports_and_builds() {
    need("sfdisk");
    let d = tempfile::tempdir().unwrap();
    // genimage's --inputpath: the rootfs image whose size sizes the partition.
    let input = d.path().join("images");
    std::fs::create_dir_all(&input).unwrap();
    let rootfs_img = input.join("rootfs.ext4");
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rootfs"])
        .arg(&rootfs_img)
        .arg("20M"));
    assert!(o.status.success());
    let (o, layout) = import(
        d.path(),
        "genimage-raspberrypi4-64.cfg",
        RPI4,
        &["--inputpath", input.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(3), "{err}");
    // The file list of boot.vfat is not a layout concept: it becomes an input.
    assert!(err.contains("image boot.vfat: its files"), "{err}");
    assert!(err.contains("--input boot=DIR"), "{err}");
    let text = std::fs::read_to_string(&layout).unwrap();
    assert!(text.contains("role = \"boot\""), "{text}");
    assert!(
        text.contains("uuid = \"6b2b8f43-7a8e-4c38-9d1e-3f6a7b0c9e21\""),
        "{text}"
    );

    // It builds, with the boot files as a directory and the rootfs image as is.
    let boot = bootdir(d.path());
    let img = d.path().join("rpi.img");
    let o = run(Command::new(bin())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(&layout)
        .arg("--input")
        .arg(format!("boot={}", boot.display()))
        .arg("--output")
        .arg(&img));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = sfdisk(&img);
    assert_eq!(t["label"], "gpt");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{t}");
    assert_eq!(parts[0]["name"], "boot");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[0]["size"].as_u64().unwrap() * 512, 64 << 20);
    assert!(
        parts[0]["attrs"]
            .as_str()
            .unwrap()
            .contains("LegacyBIOSBootable"),
        "bootable: {t}"
    );
    assert_eq!(parts[1]["name"], "rootfs");
    assert_eq!(parts[1]["uuid"], "6B2B8F43-7A8E-4C38-9D1E-3F6A7B0C9E21");
    assert!(parts[1]["size"].as_u64().unwrap() * 512 >= 20 << 20);

    assert!(text.contains("size = \"image\""), "{text}");
    assert_eq!(
        parts[1]["size"].as_u64().unwrap() * 512,
        20 << 20,
        "the image's size"
    );

    // Without --inputpath the rootfs is an input, sized from its file at build time.
    let (o, again) = import(d.path(), "again.cfg", RPI4, &[]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("partition rootfs: no size: `size = \"image\"`"),
        "{err}"
    );
    assert!(!err.contains("does not validate"), "{err}");
    let big = d.path().join("rootfs-big.ext4");
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rootfs"])
        .arg(&big)
        .arg("30M"));
    assert!(o.status.success());
    let img2 = d.path().join("rpi2.img");
    let o = run(Command::new(bin())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(&again)
        .arg("--input")
        .arg(format!("boot={}", boot.display()))
        .arg("--input")
        .arg(format!("rootfs={}", big.display()))
        .arg("--output")
        .arg(&img2));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = sfdisk(&img2);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(
        parts[1]["size"].as_u64().unwrap() * 512,
        32 << 20,
        "30 MiB up to the 4 MiB alignment"
    );
}

#[test]
fn imx_config_with_a_raw_bootloader_imports_and_builds() {
    need("sfdisk");
    let d = tempfile::tempdir().unwrap();
    let (o, layout) = import(d.path(), "imx8.cfg", IMX8, &[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(3), "{err}");
    // genimage's default table is an MBR: the layout has a GPT with a hybrid MBR.
    assert!(err.contains("hybrid"), "{err}");
    assert!(err.contains("partition rootfs: fill"), "{err}");
    let text = std::fs::read_to_string(&layout).unwrap();
    assert!(text.contains("[[raw]]"), "{text}");
    assert!(text.contains("offset = \"33KiB\""), "{text}");
    assert!(
        text.contains("mkfs-options = [\"-O\", \"^metadata_csum\"]"),
        "{text}"
    );

    let spl = d.path().join("imx8-boot-sd.bin");
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + 1) as u8).collect();
    std::fs::write(&spl, &blob).unwrap();
    let rootfs = rootfs(d.path());
    let boot = bootdir(d.path());
    let img = d.path().join("imx.img");
    let o = run(Command::new(bin())
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("build")
        .arg("--layout")
        .arg(&layout)
        .arg("--input")
        .arg(format!("boot={}", boot.display()))
        .arg("--input")
        .arg(format!("rootfs={}", rootfs.display()))
        .arg("--input")
        .arg(format!("imx-boot={}", spl.display()))
        .arg("--output")
        .arg(&img));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = sfdisk(&img);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{t}");
    assert_eq!(parts[0]["name"], "boot");
    assert_eq!(parts[0]["start"].as_u64().unwrap() * 512, 8 << 20);
    assert_eq!(parts[0]["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
    assert_eq!(parts[1]["name"], "rootfs");
    assert_eq!(parts[1]["size"].as_u64().unwrap() * 512, 120 << 20);
    let mut at = vec![0u8; blob.len()];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&img)
        .unwrap()
        .read_exact_at(&mut at, 33 * 1024)
        .unwrap();
    assert!(at == blob, "the bootloader is not at 33KiB");
    // The MBR side of the hybrid table lists the same partitions.
    let o = run(Command::new("sfdisk")
        .args(["--label-nested", "dos", "--json"])
        .arg(&img));
    let mbr: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = mbr["partitiontable"]["partitions"].as_array().unwrap();
    assert!(
        m.iter().any(|p| p["type"] == "c" && p["bootable"] == true),
        "{mbr}"
    );
}

#[test]
fn what_cannot_be_expressed_is_listed_and_bad_syntax_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (o, _) = import(
        d.path(),
        "imx6.cfg",
        r#"image sdcard.img {
  hdimage { partition-table-type = "mbr" extended-partition = 2 }
  partition spl { in-partition-table = false image = "SPL" offset = 1K }
  partition boot { partition-type = 0xC image = "boot.vfat" size = 16M }
}"#,
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("partition spl: offset 1024"), "{err}");
    assert!(err.contains("extended-partition"), "{err}");

    let (o, out) = import(d.path(), "bad.cfg", "image x.img { hdimage { ", &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.cfg"), "{err}");
    assert!(!out.exists());
}
