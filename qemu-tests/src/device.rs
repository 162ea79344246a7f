//! Building one device: the guest rootfs (composed by `assets.sh device-rootfs`,
//! or a kas build's `--rootfs`), the A/B disk from `resin-imagegen build`, and
//! the configured image the cloud hands out.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::assets::{run, AssetError, Keys, Workspace};

/// The layout's `cmdline-extra` plus `apparmor=0`, for the QEMU disk.
pub const QEMU_CMDLINE: &str = "bootloader.cmdline-extra=rootwait panic=30 apparmor=0";

/// Where the device's parts come from.
#[derive(Debug, Clone)]
pub struct DeviceInputs {
    pub ws: Workspace,
    /// `resin-imagegen` binary.
    pub imagegen: PathBuf,
    /// imagegen's layout file.
    pub layout: PathBuf,
    /// A rootfs (tarball or directory) from a kas build, used instead of the
    /// Debian stand-in.
    pub rootfs_override: Option<PathBuf>,
    /// Total disk size passed to imagegen (`disk.size`).
    pub disk_size: String,
    /// The registry as the guest reaches it (`10.0.2.2:<port>`).
    pub guest_registry: String,
}

impl DeviceInputs {
    fn imagegen(&self, what: &str, args: &[&str]) -> Result<String, AssetError> {
        let mut c = Command::new(&self.imagegen);
        c.args(args);
        run(&format!("resin-imagegen {what}"), &mut c)
    }

    /// `resin-imagegen render` (grub.cfg, grubenv, fstab and system.conf) and
    /// `render-repart` (into `repart.d/`) from the layout, with the disk's kernel command line ([`QEMU_CMDLINE`]) plus
    /// `boot_arg`: the grub.cfg an OS update installs into resin-boot (the
    /// rootfs's boot payload) is this one.
    pub fn render(&self, out: &Path, boot_arg: Option<&str>) -> Result<PathBuf, AssetError> {
        let o = out.display().to_string();
        let l = self.layout.display().to_string();
        let cmdline = match boot_arg {
            Some(a) => format!("{QEMU_CMDLINE} {a}"),
            None => QEMU_CMDLINE.to_string(),
        };
        self.imagegen(
            "render",
            &["render", "--layout", &l, "--set", &cmdline, "--output", &o],
        )?;
        // systemd-repart's definitions (resin-persist installs them).
        let r = out.join("repart.d").display().to_string();
        self.imagegen(
            "render-repart",
            &["render-repart", "--layout", &l, "--out", &r],
        )?;
        Ok(out.into())
    }

    /// The guest rootfs of OS `version`: the Debian stand-in with meta-resin's
    /// files (rendered from the layout, the test keyring, the supervisor), or
    /// the kas rootfs as given.
    /// `extra` is copied over it last; the units in `mask` are masked (e.g.
    /// the supervisor, for the rollback test); `boot_arg` is added to the
    /// kernel command line of the grub.cfg it carries for resin-boot.
    #[allow(clippy::too_many_arguments)]
    pub fn rootfs(
        &self,
        work: &Path,
        version: &str,
        keys: &Keys,
        supervisor: Option<&Path>,
        extra: Option<&Path>,
        mask: &[&str],
        boot_arg: Option<&str>,
    ) -> Result<PathBuf, AssetError> {
        if let Some(r) = &self.rootfs_override {
            return Ok(r.clone());
        }
        let rendered = self.render(&work.join("rendered"), boot_arg)?;
        let out = work.join(format!("rootfs-{version}"));
        // The supervisor's units and every other resin-owned file come from
        // meta-resin's recipes (assets.sh os-layer, recipe-install.sh).
        let mut env: Vec<(&str, &Path)> = vec![
            ("RESIN_QEMU_RENDERED", rendered.as_path()),
            ("RESIN_QEMU_KEYRING", keys.ca.as_path()),
        ];
        if let Some(s) = supervisor {
            env.push(("RESIN_QEMU_SUPERVISOR", s));
        }
        if let Some(e) = extra {
            env.push(("RESIN_QEMU_EXTRA", e));
        }
        let reg = PathBuf::from(&self.guest_registry);
        env.push(("RESIN_QEMU_REGISTRY", reg.as_path()));
        let masked = PathBuf::from(mask.join(" "));
        env.push(("RESIN_QEMU_MASK", masked.as_path()));
        let o = out.display().to_string();
        self.ws.step("device-rootfs", &[&o, version], &env)
    }

    /// The boot partition's input: `EFI/BOOT/BOOTAA64.EFI` (imagegen adds
    /// grub.cfg, grubenv and the config.json reservation).
    pub fn boot_dir(&self, work: &Path) -> Result<PathBuf, AssetError> {
        let grub = self.ws.step("grub", &[], &[])?;
        let dir = work.join("boot");
        let efi = dir.join("EFI/BOOT");
        std::fs::create_dir_all(&efi).map_err(|source| AssetError::Io {
            what: "creating the boot dir".into(),
            source,
        })?;
        std::fs::copy(&grub, efi.join("BOOTAA64.EFI")).map_err(|source| AssetError::Io {
            what: format!("copying {}", grub.display()),
            source,
        })?;
        Ok(dir)
    }

    /// The `--set`s the disk is built with: its size and [`QEMU_CMDLINE`].
    pub fn layout_sets(&self) -> [String; 2] {
        [format!("disk.size={}", self.disk_size), QEMU_CMDLINE.into()]
    }

    /// The disk's slots and labels, from the layout with [`Self::layout_sets`].
    pub fn disk_layout(&self) -> anyhow::Result<crate::disk::DiskLayout> {
        crate::disk::DiskLayout::load(&self.layout, &self.layout_sets())
    }

    /// `resin-imagegen build`: the A/B disk image with `rootfs` in slot A.
    /// The kernel command line adds `apparmor=0` to the layout's: under TCG
    /// loading the profiles cost every boot seconds (apparmor.service 4 s,
    /// and dockerd's own docker-default profile), and the issue allows it.
    pub fn disk(&self, work: &Path, rootfs: &Path, out: &Path) -> Result<PathBuf, AssetError> {
        let boot = self.boot_dir(work)?;
        let (l, r, b, o) = (
            self.layout.display().to_string(),
            rootfs.display().to_string(),
            boot.display().to_string(),
            out.display().to_string(),
        );
        let [size, cmdline] = self.layout_sets();
        self.imagegen(
            "build",
            &[
                "build", "--layout", &l, "--rootfs", &r, "--boot", &b, "--set", &size, "--set",
                &cmdline, "--output", &o,
            ],
        )?;
        Ok(out.into())
    }

    /// `resin-imagegen bundle`: a RAUC bundle of `rootfs` signed with `cert`/`key`,
    /// for `compatible` (None: the layout's own).
    pub fn bundle(
        &self,
        rootfs: &Path,
        version: &str,
        cert: &Path,
        key: &Path,
        compatible: Option<&str>,
        out: &Path,
    ) -> Result<PathBuf, AssetError> {
        let (l, r, c, k, o) = (
            self.layout.display().to_string(),
            rootfs.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            out.display().to_string(),
        );
        let mut args = vec![
            "bundle",
            "--layout",
            &l,
            "--rootfs",
            &r,
            "--version",
            version,
            "--cert",
            &c,
            "--key",
            &k,
            // lz4: 5x faster to make than gzip here and faster to install
            // under TCG, for a bundle 1.4x larger.
            "--compression",
            "lz4",
        ];
        let compat;
        if let Some(cm) = compatible {
            compat = cm.to_string();
            args.extend(["--compatible", &compat]);
        }
        args.extend(["--output", &o]);
        self.imagegen("bundle", &args)?;
        Ok(out.into())
    }
}
