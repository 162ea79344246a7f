//! resin-qemu-tests: the whole fleet lifecycle end to end on an emulated ARM64
//! device (QEMU `-M virt`, UEFI → GRUB → A/B slots), driven through the cloud API
//! and the serial console. The runner binary is `resin-qemu`.
//!
//! - [`assets`]: the cached arm64 rootfs stand-in, kernel, initrd, GRUB, the
//!   cross-compiled supervisor (through `scripts/assets.sh`), and the disk.
//! - [`qemu`]: one device, its console log and waits with timeouts.
//! - [`host`]: resin-cloud and Docker Distribution on loopback, the API client.

pub mod assets;
pub mod host;
pub mod qemu;
