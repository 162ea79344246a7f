//! A small resin disk image for upload and download tests.

use std::path::Path;

/// A small image with resin's layout (slots shrunk to keep it quick).
pub fn base_image(dir: &Path) -> std::path::PathBuf {
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../imagegen/layouts/resin-ab.toml");
    let sets: Vec<String> = [
        "rootA.size=8MiB",
        "boot.size=8MiB",
        "state.size=8MiB",
        "data.min-size=8MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = resin_imagegen::layout::Layout::load(&layout, &sets)
        .unwrap()
        .plan()
        .unwrap();
    let rootfs = dir.join("rootfs");
    let boot = dir.join("boot");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/os-release"), "VERSION_ID=1.0\n").unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    let out = dir.join("base.img");
    let opts = resin_imagegen::build::BuildOptions {
        inputs: [("rootfs".to_string(), rootfs), ("boot".to_string(), boot)]
            .into_iter()
            .collect(),
        config: None,
        output: out.clone(),
        bmap: false,
        compression: resin_imagegen::configure::Compression::None,
        seed: Some("cloud-test".into()),
    };
    resin_imagegen::build::build(&plan, &opts).unwrap();
    out
}
