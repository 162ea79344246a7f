//! A small resin disk image for upload and download tests.

use std::path::Path;

/// A small image with resin's layout (slots shrunk to keep it quick).
pub fn base_image(dir: &Path) -> std::path::PathBuf {
    resin_imagegen::testing::small_image(dir, "1.0", "cloud-test").unwrap()
}

/// A small signed RAUC bundle (verity format) made by rauc itself through
/// resin-imagegen, as a device would install it.
pub fn small_bundle(dir: &Path, version: &str) -> std::path::PathBuf {
    use resin_imagegen::rauc::{
        make_bundle, make_dev_keys, BundleFormat, BundleSpec, SquashfsCompression,
    };
    let keys = make_dev_keys(&dir.join("keys"), "cloud-test").unwrap();
    let root = dir.join(format!("root-{version}"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        format!("VERSION_ID={version}\n"),
    )
    .unwrap();
    // Incompressible filler: rauc refuses a one-block squashfs.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let filler: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("filler.bin"), filler).unwrap();
    let out = dir.join(format!("resin-{version}.raucb"));
    make_bundle(&BundleSpec {
        rootfs: root,
        cert: keys.cert.clone(),
        key: keys.key.clone(),
        keyring: Some(keys.keyring.clone()),
        compatible: "resin-qemuarm64".into(),
        version: version.into(),
        format: BundleFormat::Verity,
        compression: SquashfsCompression::Lz4,
        image_size: None,
        slot_size: None,
        output: out.clone(),
    })
    .unwrap();
    out
}
