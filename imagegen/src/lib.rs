//! resin-imagegen: partition-aware A/B disk images (GPT, ext4, vfat) from one declarative
//! layout file, with bmap, compression, in-place `config.json` injection (also as a stream for
//! resin-cloud's downloads), image inspection, and signed RAUC bundles.
//!
//! - [`layout`]: the layout file, `--set` overrides, validation and placement
//! - [`render`]: grub.cfg, grubenv, U-Boot script, fstab and RAUC system.conf from templates
//! - [`repart`]: systemd-repart definitions (repart.d) from the layout
//! - [`genimage`]: genimage configs converted to layouts (`import-genimage`)
//! - [`build`]: the disk image, its `.bmap` and compressed copies
//! - [`configure`]: writes config.json in place, or streams a configured image
//! - [`inspect`]: partition table, filesystems and config of an image, with invariant checks
//! - [`rauc`]: development keys and RAUC bundles
//! - [`readonly`]: squashfs roots and their dm-verity hash trees
//! - [`ubootenv`]: U-Boot environment images (mkenvimage format, redundant)
//! - `testing` (feature `test-support`): a small image for other crates' tests

pub mod bmap;
pub mod build;
pub mod configure;
pub mod ext4;
pub mod fat;
pub mod genimage;
pub mod gptread;
pub mod inspect;
pub mod layout;
pub mod preflight;
pub mod rauc;
pub mod readonly;
pub mod render;
pub mod repart;
pub mod size;
pub mod sparse;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod ubootenv;
pub mod util;
pub mod vfat;
