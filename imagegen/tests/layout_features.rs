//! Layout features beyond the A/B defaults, read back with the real tools: explicit partition
//! GUIDs and GPT attribute flags (`sgdisk -i`), mkfs options (`dumpe2fs -h`, `e2fsck -fn`), `%`
//! sizes and sizes from an image file (`sfdisk --json`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

const ROOT_A_GUID: &str = "0f4c2e1a-6b1d-4c55-9a3e-2d4f6a8b9c01";

/// Bytes of the partition named `name` in `img`, by `sfdisk --json`.
fn partition_size(img: &std::path::Path, name: &str) -> u64 {
    let o = run(Command::new("sfdisk").arg("--json").arg(img));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["size"]
        .as_u64()
        .unwrap()
        * 512
}

#[test]
fn explicit_guid_attributes_and_mkfs_options_reach_the_image() {
    for t in ["sgdisk", "dumpe2fs", "e2fsck"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let o = cli_build(
        d.path(),
        &img,
        &[
            "--set",
            &format!("rootA.uuid={ROOT_A_GUID}"),
            "--set",
            r#"rootA.attributes=["required", 60]"#,
            "--set",
            r#"state.mkfs-options=["-O", "^has_journal", "-i", "65536"]"#,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = run(Command::new("sgdisk").args(["-i", "2"]).arg(&img));
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        info.contains(&format!(
            "Partition unique GUID: {}",
            ROOT_A_GUID.to_uppercase()
        )),
        "{info}"
    );
    assert!(info.contains("Attribute flags: 1000000000000001"), "{info}");
    let o = run(Command::new("sgdisk").args(["-i", "3"]).arg(&img));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Attribute flags: 0000000000000000"),
        "rootB keeps no flags"
    );

    let r = resin_imagegen::inspect::inspect_image(&img).unwrap();
    let state = r
        .partitions
        .iter()
        .find(|p| p.label == "resin-state")
        .unwrap();
    let part = d.path().join("state.ext4");
    extract(&img, state.offset, state.size, &part);
    let o = run(Command::new("dumpe2fs").arg("-h").arg(&part));
    let h = String::from_utf8_lossy(&o.stdout);
    let features = h
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap();
    assert!(!features.contains("has_journal"), "{features}");
    let inodes: u64 = h
        .lines()
        .find_map(|l| l.strip_prefix("Inode count:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        inodes <= state.size / 65536 + 16,
        "{inodes} inodes for -i 65536"
    );
    let o = run(Command::new("e2fsck").arg("-fn").arg(&part));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn bad_guids_and_attributes_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    for (set, want) in [
        ("rootA.uuid=not-a-guid", "partition[rootA].uuid"),
        (
            r#"rootA.attributes=["sticky"]"#,
            "partition[rootA].attributes",
        ),
        ("rootA.attributes=[64]", "partition[rootA].attributes"),
    ] {
        let o = cli_build(d.path(), &img, &["--set", set]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{set}: {e}");
    }
    let o = cli_build(
        d.path(),
        &img,
        &[
            "--set",
            &format!("rootA.uuid={ROOT_A_GUID}"),
            "--set",
            &format!("state.uuid={ROOT_A_GUID}"),
        ],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("partition[state].uuid"),
        "{e}"
    );
    assert!(!img.exists());
}

#[test]
fn percent_sizes_are_shares_of_the_disk_rounded_to_the_alignment() {
    need("sfdisk");
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let o = cli_build(
        d.path(),
        &img,
        &[
            "--set",
            "disk.size=256MiB",
            "--set",
            "rootA.size=25%",
            "--set",
            "state.size=10%",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 256 << 20);
    let size_of = |name: &str| partition_size(&img, name);
    assert_eq!(size_of("resin-rootA"), 64 << 20, "25% of 256MiB");
    assert_eq!(size_of("resin-rootB"), 64 << 20, "=rootA");
    assert_eq!(
        size_of("resin-state"),
        24 << 20,
        "10% of 256MiB, down to 4MiB"
    );

    // Without an explicit disk size a share means nothing.
    let o = cli_build(
        d.path(),
        &d.path().join("x.img"),
        &["--set", "state.size=10%"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("partition[state].size") && e.contains("disk.size"),
        "{e}"
    );
}

#[test]
fn an_image_sized_partition_takes_its_files_size_rounded_to_the_alignment() {
    for t in ["sfdisk", "mkfs.ext4", "e2fsck"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    // A 9 MiB ext4 image with a file on it: the partition is 12 MiB (the 4 MiB alignment).
    let st = d.path().join("state.ext4");
    let seed = d.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("hello"), "from the image\n").unwrap();
    let o = run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&seed)
        .arg(&st)
        .arg("9M"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Named in the layout, and bound on the command line: the same partition.
    let by_path = d.path().join("a.img");
    let image_set = format!("state.contents.image={}", st.display());
    let o = cli_build(
        d.path(),
        &by_path,
        &["--set", "state.size=image", "--set", &image_set],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let by_input = d.path().join("b.img");
    let input = format!("st={}", st.display());
    let o = cli_build(
        d.path(),
        &by_input,
        &[
            "--set",
            "state.size=image",
            "--set",
            "state.contents.input=st",
            "--input",
            &input,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for img in [&by_path, &by_input] {
        assert_eq!(
            partition_size(img, "resin-state"),
            12 << 20,
            "9 MiB up to 12 MiB"
        );
        let r = resin_imagegen::inspect::inspect_image(img).unwrap();
        let state = r
            .partitions
            .iter()
            .find(|p| p.label == "resin-state")
            .unwrap();
        let part = d.path().join("state.out");
        extract(img, state.offset, 9 << 20, &part);
        let o = run(Command::new("e2fsck").arg("-fn").arg(&part));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let o = run(Command::new("debugfs")
            .args(["-R", "cat /hello"])
            .arg(&part));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "from the image\n");
    }

    // Without a file to measure: the field and the reason, and no image.
    let bad = d.path().join("bad.img");
    for (sets, want) in [
        (vec!["state.size=image"], "needs an image file"),
        (
            vec!["state.size=image", "state.contents.input=st"],
            "input `st`, which was not given",
        ),
        (
            vec![
                "state.size=image",
                "state.contents.image=/nonexistent/state.ext4",
            ],
            "/nonexistent/state.ext4",
        ),
    ] {
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
        let o = cli_build(d.path(), &bad, &args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("partition[state].size") && e.contains(want),
            "{sets:?}: {e}"
        );
        assert!(!bad.exists());
    }
}

#[test]
fn a_hybrid_mbr_shows_the_boot_partition_to_mbr_readers_and_keeps_the_gpt() {
    for t in ["fdisk", "sgdisk", "sfdisk"] {
        need(t);
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    let o = cli_build(d.path(), &img, &["--set", r#"disk.hybrid-mbr=["boot"]"#]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = resin_imagegen::inspect::inspect_image(&img).unwrap();
    let boot = &r.partitions[0];
    let (start, sectors) = (boot.offset / 512, boot.size / 512);

    // What an MBR-only reader sees: the GPT's 0xEE entry, then the bootable FAT32 partition.
    let o = run(Command::new("fdisk").args(["-l", "-t", "dos"]).arg(&img));
    let t = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<Vec<&str>> = t
        .lines()
        .filter(|l| l.starts_with(&*img.to_string_lossy()))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{t}");
    assert_eq!(
        &rows[0][1..],
        [
            "1",
            &(start - 1).to_string(),
            &(start - 1).to_string(),
            "4M",
            "ee",
            "GPT"
        ]
    );
    assert_eq!(rows[1][1], "*", "bootable: {t}");
    assert_eq!(rows[1][2], start.to_string());
    assert_eq!(rows[1][4], sectors.to_string());
    assert!(t.contains("W95 FAT32 (LBA)"), "{t}");

    // The GPT is intact for everything else.
    let o = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "{o:?}"
    );
    let o = run(Command::new("sfdisk").arg("--verify").arg(&img));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(r.partitions.len(), 5);

    for (set, want) in [
        (
            r#"disk.hybrid-mbr=["boot", "rootA", "rootB", "state"]"#,
            "at most 3",
        ),
        (r#"disk.hybrid-mbr=["bogus"]"#, "no partition named `bogus`"),
    ] {
        let o = cli_build(d.path(), &d.path().join("x.img"), &["--set", set]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("disk.hybrid-mbr") && e.contains(want),
            "{e}"
        );
    }
}
