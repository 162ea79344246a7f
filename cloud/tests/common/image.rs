//! A small resin disk image for upload and download tests.

use std::path::Path;

/// A small image with resin's layout (slots shrunk to keep it quick).
pub fn base_image(dir: &Path) -> std::path::PathBuf {
    resin_imagegen::testing::small_image(dir, "1.0", "cloud-test").unwrap()
}
