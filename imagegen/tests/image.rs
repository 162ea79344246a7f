//! End-to-end tests of `resin-imagegen` against the real tools: sgdisk/sfdisk, e2fsck,
//! fsck.vfat, bmaptool, mtools, rauc and openssl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::*;
use resin_imagegen::configure::{
    configure_in_place, configured_reader, configured_reader_compressed, locate, Compression,
    ConfigureError,
};
use resin_imagegen::inspect::inspect_image;

const CONFIG: &str = r#"{"apiEndpoint":"http://10.0.2.2:8080","fleetId":7,"fleetName":"f","deviceType":"qemuarm64","provisioningKey":"pk-123","pollIntervalMs":5000}"#;

#[test]
fn structure_is_valid_for_the_real_tools_and_bmap_round_trips() {
    for t in ["sgdisk", "sfdisk", "e2fsck", "fsck.vfat", "bmaptool"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");

    let o = run(Command::new("sgdisk").arg("-v").arg(&img));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("No problems found"),
        "sgdisk -v: {text}"
    );
    let o = run(Command::new("sfdisk").arg("--verify").arg(&img));
    assert!(o.status.success(), "sfdisk --verify: {o:?}");

    let report = inspect_image(&img).unwrap();
    let labels: Vec<_> = report.partitions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "resin-boot",
            "resin-rootA",
            "resin-rootB",
            "resin-state",
            "resin-data"
        ]
    );
    for p in &report.partitions {
        assert_eq!(p.offset % (4 << 20), 0, "{} is 4 MiB aligned", p.label);
        let part = d.path().join(format!("p{}", p.index));
        extract(&img, p.offset, p.size, &part);
        let o = if p.fs.starts_with("vfat") {
            run(Command::new("fsck.vfat").arg("-n").arg(&part))
        } else {
            assert_eq!(p.fs, "ext4", "{}", p.label);
            run(Command::new("e2fsck").arg("-fn").arg(&part))
        };
        assert!(
            o.status.success(),
            "fsck of {}: {}{}",
            p.label,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::remove_file(&part).unwrap();
    }

    // Sparse: the free space of every filesystem is a hole (what stays is the metadata,
    // journals and inode tables included, and the files; tests/flash.rs checks the exact map).
    let md = std::fs::metadata(&img).unwrap();
    assert!(md.blocks() * 512 < md.len() / 3, "image is sparse");

    // bmap round trip through the real bmaptool (it checks the sha256 of every range).
    let copy = d.path().join("copy.img");
    let bmap = d.path().join("disk.img.bmap");
    let o = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(&bmap)
        .arg(&img)
        .arg(&copy));
    assert!(
        o.status.success(),
        "bmaptool copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        same_file(&img, &copy),
        "bmaptool's copy differs from the image"
    );
}

#[test]
fn grub_files_on_the_esp_come_from_the_layout() {
    need("mtype");
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");
    let r = inspect_image(&img).unwrap();
    let esp = &r.partitions[0];
    let spec = format!("{}@@{}", img.display(), esp.offset);
    let cat = |p: &str| {
        let o = run(Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &spec, p]));
        assert!(o.status.success(), "mtype {p}: {o:?}");
        o.stdout
    };
    let env = cat("::/EFI/BOOT/grubenv");
    assert_eq!(env.len(), 1024);
    assert!(String::from_utf8_lossy(&env).contains("ORDER=A B\nA_OK=1\nA_TRY=0\nB_OK=0\nB_TRY=0\n"));
    let cfg = String::from_utf8(cat("::/EFI/BOOT/grub.cfg")).unwrap();
    assert!(cfg.contains("root=PARTLABEL=resin-rootA rauc.slot=A console=ttyAMA0 ro"));
    assert_eq!(cat("::/EFI/BOOT/BOOTAA64.EFI").len(), 100_000);
}

#[test]
fn same_inputs_and_source_date_epoch_give_identical_images() {
    let d = tempfile::tempdir().unwrap();
    let a = build_ok(d.path(), "a.img");
    // A second build from fresh copies of the same inputs.
    let d2 = tempfile::tempdir().unwrap();
    let b = build_ok(d2.path(), "b.img");
    // The source trees are recreated (new ctimes), so this also shows that only
    // the declared inputs matter.
    assert!(same_file(&a, &b), "two builds differ");
    assert_eq!(
        std::fs::read(d.path().join("a.img.bmap")).unwrap(),
        std::fs::read(d2.path().join("b.img.bmap")).unwrap()
    );
}

#[test]
fn configure_changes_only_the_config_bytes_and_the_stream_matches() {
    let d = tempfile::tempdir().unwrap();
    let base = build_ok(d.path(), "disk.img");
    let before = std::fs::read(&base).unwrap();
    let slot = locate(&std::fs::File::open(&base).unwrap()).unwrap();

    // The stream (before touching the file) …
    let mut streamed = Vec::new();
    configured_reader(std::fs::File::open(&base).unwrap(), CONFIG.as_bytes())
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();

    // … and in place, through the CLI.
    let inplace = d.path().join("inplace.img");
    std::fs::copy(&base, &inplace).unwrap();
    let cfg = d.path().join("config.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let o = run(Command::new(bin())
        .arg("configure")
        .arg(&inplace)
        .arg("--config")
        .arg(&cfg));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = std::fs::read(&inplace).unwrap();
    assert_eq!(after, streamed, "the stream equals the in-place result");

    // Outside config.json's clusters nothing changed.
    assert_eq!(before.len(), after.len());
    let in_config = |i: u64| slot.file.extents.iter().any(|&(s, e)| i >= s && i < e);
    let changed = differing_bytes(&before, &after);
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|&i| in_config(i)),
        "bytes outside config.json changed: {:?}",
        changed
            .iter()
            .filter(|&&i| !in_config(i))
            .take(5)
            .collect::<Vec<_>>()
    );

    let report = inspect_image(&inplace).unwrap();
    assert!(report.configured);
    assert_eq!(report.config["provisioningKey"], "pk-123");
    let o = run(Command::new(bin()).arg("inspect").arg(&inplace));
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("pk-123"));

    // Reconfiguring with a shorter config replaces it completely.
    configure_in_place(&inplace, br#"{"apiEndpoint":"http://b","fleetId":1,"fleetName":"g","deviceType":"qemuarm64","provisioningKey":"k2"}"#).unwrap();
    let r = inspect_image(&inplace).unwrap();
    assert_eq!(r.config["provisioningKey"], "k2");
    assert!(r.config.get("pollIntervalMs").is_none());

    // Compressed stream decompresses to the same bytes.
    let mut z = configured_reader_compressed(
        std::fs::File::open(&base).unwrap(),
        CONFIG.as_bytes(),
        Compression::Zstd,
    )
    .unwrap();
    let mut comp = Vec::new();
    z.read_to_end(&mut comp).unwrap();
    assert!(comp.len() < streamed.len() / 20);
    assert_eq!(zstd::decode_all(&comp[..]).unwrap(), streamed);
}

#[test]
fn configure_rejects_bad_input_and_leaves_the_image_alone() {
    need("mdel");
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");
    let before = std::fs::read(&img).unwrap();
    let big = format!(r#"{{"apiEndpoint":"{}"}}"#, "x".repeat(70_000));
    assert!(matches!(
        configure_in_place(&img, big.as_bytes()),
        Err(ConfigureError::TooLarge { .. })
    ));
    assert!(matches!(
        configure_in_place(&img, b"{not json"),
        Err(ConfigureError::InvalidJson(_))
    ));
    assert!(matches!(
        configure_in_place(&img, b"[1]"),
        Err(ConfigureError::NotObject)
    ));
    assert_eq!(std::fs::read(&img).unwrap(), before);

    // An image whose FAT has no config.json reservation.
    let r = inspect_image(&img).unwrap();
    let spec = format!("{}@@{}", img.display(), r.partitions[0].offset);
    let o = run(Command::new("mdel").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &spec,
        "::/config.json",
    ]));
    assert!(o.status.success(), "{o:?}");
    let err = configured_reader(std::fs::File::open(&img).unwrap(), CONFIG.as_bytes())
        .err()
        .unwrap();
    assert!(matches!(err, ConfigureError::NoReservation), "{err}");
    let cfg = d.path().join("c.json");
    std::fs::write(&cfg, CONFIG).unwrap();
    let o = run(Command::new(bin())
        .arg("configure")
        .arg(&img)
        .arg("--config")
        .arg(&cfg));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no /config.json reservation"));
}

#[test]
fn inspect_fails_clearly_on_damaged_images() {
    let d = tempfile::tempdir().unwrap();
    let img = build_ok(d.path(), "disk.img");
    let r = inspect_image(&img).unwrap();

    // Truncated: the backup GPT is gone.
    let cut = d.path().join("cut.img");
    std::fs::copy(&img, &cut).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(r.size - (1 << 20)).unwrap();
    let o = run(Command::new(bin()).arg("inspect").arg(&cut));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("damaged"),
        "{o:?}"
    );

    // rootA's ext4 superblock wiped.
    let wiped = d.path().join("wiped.img");
    std::fs::copy(&img, &wiped).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&wiped)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 1024], r.partitions[1].offset + 1024)
        .unwrap();
    let o = run(Command::new(bin()).arg("inspect").arg(&wiped));
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("resin-rootA") && e.contains("Ext4"), "{e}");

    // Not an image at all.
    let junk = d.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let o = run(Command::new(bin()).arg("inspect").arg(&junk));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("it has no GPT: sector 1"),
        "{o:?}"
    );
}

#[test]
fn bad_layouts_name_the_field_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let big_root = d.path().join("bigroot");
    std::fs::create_dir_all(&big_root).unwrap();
    std::fs::write(big_root.join("big"), vec![1u8; 40 << 20]).unwrap();
    let cases: Vec<(Vec<String>, Option<&std::path::Path>, &str)> = vec![
        (
            vec!["rootB.offset=8MiB".into()],
            None,
            "partition[rootB].offset",
        ),
        (vec![], Some(&big_root), "partition[rootA].contents"),
        (
            vec!["rootB.label=resin-rootA".into()],
            None,
            "duplicate label",
        ),
        (
            vec!["state.size=6MiB".into()],
            None,
            "partition[state].size",
        ),
        (vec!["disk.size=100MiB".into()], None, "disk.size"),
        (
            vec!["bootloader.attempts=0".into()],
            None,
            "bootloader.attempts",
        ),
    ];
    let r = rootfs(d.path());
    let b = bootdir(d.path());
    for (sets, root, want) in cases {
        let out_dir = d.path().join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("disk.img");
        let mut c = Command::new(bin());
        c.arg("build").arg("--layout").arg(layout());
        for s in small_sets().into_iter().chain(sets.clone()) {
            c.arg("--set").arg(s);
        }
        c.arg("--rootfs")
            .arg(root.unwrap_or(&r))
            .arg("--boot")
            .arg(&b)
            .arg("--output")
            .arg(&out);
        let o = run(&mut c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{sets:?} should fail");
        assert!(
            err.contains(want),
            "{sets:?}: error `{err}` should name {want}"
        );
        let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert!(left.is_empty(), "{sets:?} left files: {left:?}");
    }
}

#[test]
fn render_writes_the_layout_files() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("r");
    let o = run(Command::new(bin())
        .arg("render")
        .arg("--layout")
        .arg(layout())
        .args(["--set", "bootloader.attempts=5", "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conf = std::fs::read_to_string(out.join("etc/rauc/system.conf")).unwrap();
    assert!(conf.contains("bootloader=grub\n"));
    let cfg = std::fs::read_to_string(out.join("EFI/BOOT/grub.cfg")).unwrap();
    assert!(cfg.contains("[ \"$B_TRY\" = \"4\" ]"));
    assert!(out.join("etc/fstab").is_file());
    // U-Boot variant (Raspberry Pi).
    let out2 = d.path().join("u");
    let o = run(Command::new(bin())
        .arg("render")
        .arg("--layout")
        .arg(layout())
        .args(["--set", "bootloader.loader=uboot", "--out"])
        .arg(&out2));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmd = std::fs::read_to_string(out2.join("boot.cmd")).unwrap();
    assert!(cmd.contains("BOOT_ORDER") && cmd.contains("BOOT_B_LEFT"));
    let conf = std::fs::read_to_string(out2.join("etc/rauc/system.conf")).unwrap();
    assert!(conf.contains("bootloader=uboot\n") && !conf.contains("grubenv="));
}

#[test]
fn bundles_are_accepted_by_their_keyring_and_rejected_by_another() {
    for t in ["rauc", "openssl", "mksquashfs"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    let r = rootfs(d.path());
    let keys = |n: &str| {
        let k = d.path().join(n);
        let o = run(Command::new(bin()).arg("keys").arg("--out").arg(&k));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("DEVELOPMENT ONLY"));
        k
    };
    let (k1, k2) = (keys("k1"), keys("k2"));
    for format in ["plain", "verity"] {
        let out = d.path().join(format!("{format}.raucb"));
        let o = run(Command::new(bin())
            .arg("bundle")
            .arg("--layout")
            .arg(layout())
            .arg("--rootfs")
            .arg(&r)
            .arg("--cert")
            .arg(k1.join("signing.cert.pem"))
            .arg("--key")
            .arg(k1.join("signing.key.pem"))
            .args(["--version", "1.2.3", "--format", format, "--output"])
            .arg(&out));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let info = |k: &std::path::Path| {
            run(Command::new("rauc")
                .arg("info")
                .arg(format!("--keyring={}", k.join("keyring.pem").display()))
                .arg(&out))
        };
        let ok = info(&k1);
        let text = String::from_utf8_lossy(&ok.stdout);
        assert!(
            ok.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(
            text.contains("resin-qemuarm64") && text.contains("1.2.3"),
            "{text}"
        );
        assert!(text.contains(format), "{text}");
        let bad = info(&k2);
        assert!(
            !bad.status.success(),
            "{format} bundle accepted by a foreign keyring"
        );
        assert!(String::from_utf8_lossy(&bad.stderr).contains("signature verification failed"));
    }
}

#[test]
fn bundle_compression_is_the_one_asked_for() {
    for t in ["rauc", "openssl", "mksquashfs", "unsquashfs"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    let r = rootfs(d.path());
    let k = d.path().join("k");
    let o = run(Command::new(bin()).arg("keys").arg("--out").arg(&k));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (flag, shown) in [(None, "gzip"), (Some("lz4"), "lz4"), (Some("zstd"), "zstd")] {
        let out = d.path().join(format!("{shown}.raucb"));
        let mut c = Command::new(bin());
        c.arg("bundle")
            .arg("--layout")
            .arg(layout())
            .arg("--rootfs")
            .arg(&r)
            .arg("--cert")
            .arg(k.join("signing.cert.pem"))
            .arg("--key")
            .arg(k.join("signing.key.pem"))
            .args(["--version", "1.2.3", "--output"])
            .arg(&out);
        if let Some(f) = flag {
            c.args(["--compression", f]);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The bundle starts with its squashfs; its superblock names the compressor.
        let s = run(Command::new("unsquashfs").arg("-s").arg(&out));
        let text = String::from_utf8_lossy(&s.stdout);
        assert!(
            text.contains(&format!("Compression {shown}")),
            "{shown}: {text}"
        );
        let ok = run(Command::new("rauc")
            .arg("info")
            .arg(format!("--keyring={}", k.join("keyring.pem").display()))
            .arg(&out));
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    let o = run(Command::new(bin())
        .args([
            "bundle",
            "--compression",
            "brotli",
            "--version",
            "1",
            "--output",
        ])
        .arg(d.path().join("x.raucb"))
        .args(["--rootfs", "/nonexistent", "--cert", "/c", "--key", "/k"]));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("brotli"));
}
