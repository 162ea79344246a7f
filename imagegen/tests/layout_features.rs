//! Layout features beyond the A/B defaults, read back with the real tools: explicit partition
//! GUIDs and GPT attribute flags (`sgdisk -i`), and mkfs options (`dumpe2fs -h`, `e2fsck -fn`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

const ROOT_A_GUID: &str = "0f4c2e1a-6b1d-4c55-9a3e-2d4f6a8b9c01";

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
    let o = run(Command::new("sfdisk").arg("--json").arg(&img));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let size_of = |name: &str| -> u64 {
        v["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["size"]
            .as_u64()
            .unwrap()
            * 512
    };
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
