//! `render-repart`: systemd-repart definitions from the layout, read by the real
//! `systemd-repart`: on an empty scratch disk it lays out the layout's partitions (labels,
//! types, sizes), and on an image built from the same layout (the device's first boot) it
//! keeps every partition and grows only resin-data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use resin_imagegen::layout::{Layout, ESP_TYPE, LINUX_TYPE};

fn render_repart(out: &Path, sets: &[String]) {
    let mut c = Command::new(bin());
    c.arg("render-repart").arg("--layout").arg(layout());
    for s in sets {
        c.arg("--set").arg(s);
    }
    let o = run(c.arg("--out").arg(out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn repart_json(args: &[&str], defs: &Path, disk: &Path) -> Vec<serde_json::Value> {
    let o = run(Command::new("systemd-repart")
        .args(args)
        .arg(format!("--definitions={}", defs.display()))
        .arg("--json=short")
        .arg("--no-pager")
        .arg(disk));
    assert!(
        o.status.success(),
        "systemd-repart: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn type_name(t: uuid::Uuid) -> String {
    if t == ESP_TYPE {
        "esp".into()
    } else if t == LINUX_TYPE {
        "linux-generic".into()
    } else {
        t.to_string()
    }
}

#[test]
fn rendered_definitions_describe_the_layout() {
    let d = tempfile::tempdir().unwrap();
    let defs = d.path().join("repart.d");
    render_repart(&defs, &[]);
    let mut names: Vec<String> = std::fs::read_dir(&defs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "10-boot.conf",
            "20-rootA.conf",
            "30-rootB.conf",
            "40-state.conf",
            "50-data.conf"
        ]
    );
    let boot = std::fs::read_to_string(defs.join("10-boot.conf")).unwrap();
    for l in [
        "[Partition]\n",
        "Type=esp\n",
        "Label=resin-boot\n",
        "SizeMinBytes=104857600\n",
        "SizeMaxBytes=104857600\n",
        "Format=vfat\n",
    ] {
        assert!(boot.contains(l), "{l} missing: {boot}");
    }
    let data = std::fs::read_to_string(defs.join("50-data.conf")).unwrap();
    assert!(data.contains("Label=resin-data\n"), "{data}");
    assert!(data.contains("SizeMinBytes=67108864\n"), "{data}");
    assert!(!data.contains("SizeMaxBytes"), "resin-data grows: {data}");
}

#[test]
fn systemd_repart_lays_out_the_layout_on_an_empty_disk() {
    need("systemd-repart");
    for (sets, what) in [
        (vec![], "grub"),
        (vec!["bootloader.loader=uboot".to_string()], "uboot"),
    ] {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let defs = d.path().join("repart.d");
        render_repart(&defs, &sets);
        let plan = Layout::load(&layout(), &sets).unwrap().plan().unwrap();
        let disk = d.path().join("scratch.img");
        // Room for repart's own 1 MiB first-partition offset and alignment.
        let size = plan.disk_size + (16 << 20);
        let parts = repart_json(
            &["--dry-run=yes", "--empty=create", &format!("--size={size}")],
            &defs,
            &disk,
        );
        assert_eq!(parts.len(), plan.parts.len(), "{what}: {parts:?}");
        for (got, want) in parts.iter().zip(&plan.parts) {
            assert_eq!(got["label"], want.label.as_str(), "{what}");
            assert_eq!(got["type"], type_name(want.type_guid).as_str(), "{what}");
            let raw = got["raw_size"].as_u64().unwrap();
            if want.grow {
                assert!(
                    raw >= want.size,
                    "{what}: {} {raw} < {}",
                    want.label,
                    want.size
                );
            } else {
                assert_eq!(raw, want.size, "{what}: {}", want.label);
            }
        }
    }
}

#[test]
fn on_first_boot_repart_keeps_the_partitions_and_grows_only_data() {
    need("systemd-repart");
    need("sgdisk");
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = build_ok(d.path(), "disk.img");
    let defs = d.path().join("repart.d");
    render_repart(&defs, &small_sets());
    let before = resin_imagegen::inspect::inspect_image(&img).unwrap();
    // The card is bigger than the image.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(before.size + (256 << 20)).unwrap();
    drop(f);
    let parts = repart_json(&["--dry-run=no"], &defs, &img);
    for p in &parts {
        let label = p["label"].as_str().unwrap();
        let want = if label == "resin-data" {
            "resize"
        } else {
            "unchanged"
        };
        assert_eq!(p["activity"], want, "{label}: {p}");
    }
    let o = run(Command::new("sgdisk").arg("-v").arg(&img));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = run(Command::new("sgdisk").arg("-p").arg(&img));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    for p in &before.partitions {
        let line = table
            .lines()
            .find(|l| l.ends_with(&p.label))
            .unwrap_or_else(|| panic!("{} missing: {table}", p.label));
        let start: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(start * 512, p.offset, "{} moved", p.label);
        let end: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        let size = (end + 1) * 512 - p.offset;
        if p.label == "resin-data" {
            assert!(
                size >= p.size + (200 << 20),
                "resin-data did not grow: {line}"
            );
        } else {
            assert_eq!(size, p.size, "{} resized: {line}", p.label);
        }
    }
}
