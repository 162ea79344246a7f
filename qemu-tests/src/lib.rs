//! resin-qemu-tests: the whole fleet lifecycle end to end on an emulated ARM64
//! device (QEMU `-M virt`, UEFI → GRUB → A/B slots), driven through the cloud API
//! and the serial console. The runner binary is `resin-qemu`.
//!
//! - [`assets`]: the cached arm64 rootfs stand-in, kernel, initrd, GRUB, the
//!   cross-compiled supervisor (through `scripts/assets.sh`), and the disk.
//! - [`qemu`]: one device, its console log and waits with timeouts.
//! - [`device`]: the guest rootfs, the A/B disk and bundles through resin-imagegen.
//! - [`disk`]: the disk's slots and partition labels, from imagegen's layout.
//! - [`apps`]: the arm64 test image and the test releases.
//! - [`scenarios`]: provision, deploy, update-app on one shared device.
//! - [`host`]: resin-cloud and Docker Distribution on loopback, the API client.
//! - [`workdir`]: a run's work dir, the free-space check, old runs' cleanup.

pub mod apps;
pub mod assets;
pub mod device;
pub mod disk;
pub mod host;
pub mod qemu;
pub mod scenarios;
pub mod workdir;
