//! Test support for other crates' tests (feature `test-support`): a small disk image
//! with resin's default layout, its slots shrunk, for upload, download and configure tests.

use std::path::{Path, PathBuf};

use crate::build::{build, BuildError, BuildOptions};
use crate::configure::Compression;
use crate::layout::load_or_default;

/// Builds `DIR/base.img`: the default layout with 8 MiB slots, boot, state and data,
/// a rootfs holding only `/etc/os-release` with `VERSION_ID=os_version`, an empty boot
/// directory, and `seed` for its GUIDs. No `.bmap`, not compressed.
pub fn small_image(dir: &Path, os_version: &str, seed: &str) -> Result<PathBuf, BuildError> {
    let sets: Vec<String> = [
        "rootA.size=8MiB",
        "boot.size=8MiB",
        "state.size=8MiB",
        "data.min-size=8MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let plan = load_or_default(None, &sets)?.plan()?;
    let io = |path: &Path, source: std::io::Error| BuildError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let rootfs = dir.join("rootfs");
    let boot = dir.join("boot");
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| io(&etc, e))?;
    let osr = etc.join("os-release");
    std::fs::write(&osr, format!("VERSION_ID={os_version}\n")).map_err(|e| io(&osr, e))?;
    std::fs::create_dir_all(&boot).map_err(|e| io(&boot, e))?;
    let out = dir.join("base.img");
    let opts = BuildOptions {
        inputs: [("rootfs".to_string(), rootfs), ("boot".to_string(), boot)]
            .into_iter()
            .collect(),
        config: None,
        output: out.clone(),
        bmap: false,
        compression: Compression::None,
        seed: Some(seed.into()),
    };
    build(&plan, &opts)?;
    Ok(out)
}
