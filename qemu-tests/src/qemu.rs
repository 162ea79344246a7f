//! One emulated ARM64 device: qemu-system-aarch64 (`-M virt`, UEFI, virtio disk,
//! user-mode networking) with its serial console captured to a log file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Where the AAVMF (UEFI for ARM64) firmware lives on Debian (`qemu-efi-aarch64`).
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// The template for the writable UEFI variable store.
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// Errors of a QEMU device.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {secs} s waiting for {what:?} on the serial console")]
    Timeout { what: String, secs: u64 },
    #[error("qemu exited ({status}) while waiting for {what:?} on the serial console")]
    Exited { what: String, status: String },
    #[error("qemu-system-aarch64 cannot start the device: {file} is missing ({hint})\nqemu said: {stderr}")]
    Missing {
        file: String,
        hint: String,
        stderr: String,
    },
}

/// The Debian package that ships a file qemu-system-aarch64 opens for the
/// device, for the preflight's message (the check itself is qemu starting).
/// `efi-virtio.rom` (virtio-net's option ROM) is in `ipxe-qemu`, only a
/// Recommends of `qemu-system-arm`, so `--no-install-recommends` drops it.
pub fn package_of(file: &str) -> &'static str {
    match file.rsplit('/').next().unwrap_or(file) {
        f if f.starts_with("efi-") && f.ends_with(".rom") => "package ipxe-qemu",
        f if f.starts_with("AAVMF") => "package qemu-efi-aarch64",
        "qemu-system-aarch64" => "package qemu-system-arm",
        _ => "see `apt-file search` for its package",
    }
}

/// The file named in qemu's stderr as missing, if any: a ROM
/// (`failed to find romfile "efi-virtio.rom"`) or a drive/firmware file
/// (`Could not open '/usr/share/AAVMF/AAVMF_CODE.fd': No such file or directory`).
pub fn missing_file(stderr: &str) -> Option<String> {
    if let Some(i) = stderr.find("failed to find romfile \"") {
        let rest = &stderr[i + "failed to find romfile \"".len()..];
        return rest.split('"').next().map(str::to_string);
    }
    for line in stderr.lines() {
        if line.contains("No such file or directory") {
            if let Some(i) = line.find("Could not open '") {
                let rest = &line[i + "Could not open '".len()..];
                return rest.split('\'').next().map(str::to_string);
            }
        }
    }
    None
}

/// What the firmware prints first on the serial console.
pub const FIRMWARE_BANNER: &str = "UEFI firmware";

/// Starts qemu-system-aarch64 with the device's exact machine and device
/// arguments on a blank disk in `run_dir`, and waits for the UEFI firmware's
/// banner on the serial console: so every binary, firmware image and ROM the
/// device needs is there and loads. Returns the time to the banner.
pub fn preflight(run_dir: &Path, cpu: &str, timeout: Duration) -> Result<Duration, QemuError> {
    for f in [AAVMF_CODE, AAVMF_VARS] {
        if !Path::new(f).exists() {
            return Err(QemuError::Missing {
                file: f.into(),
                hint: package_of(f).into(),
                stderr: String::new(),
            });
        }
    }
    std::fs::create_dir_all(run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    let disk = run_dir.join("blank.img");
    File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .map_err(io(format!("creating {}", disk.display())))?;
    let mut cfg = QemuConfig::new(disk, run_dir.to_path_buf());
    cpu.clone_into(&mut cfg.cpu);
    let t = Instant::now();
    let mut vm = Vm::start(cfg).map_err(|e| match e {
        QemuError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            QemuError::Missing {
                file: "qemu-system-aarch64".into(),
                hint: package_of("qemu-system-aarch64").into(),
                stderr: String::new(),
            }
        }
        e => e,
    })?;
    match vm.wait_for(FIRMWARE_BANNER, timeout) {
        Ok(_) => Ok(t.elapsed()),
        Err(e @ QemuError::Exited { .. }) => {
            let stderr = std::fs::read_to_string(run_dir.join("qemu.stderr")).unwrap_or_default();
            match missing_file(&stderr) {
                Some(file) => Err(QemuError::Missing {
                    hint: package_of(&file).into(),
                    file,
                    stderr: stderr.trim().to_string(),
                }),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// How to boot a device.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The raw disk image (virtio-blk).
    pub disk: PathBuf,
    /// Directory for the console log, UEFI vars and pid file.
    pub run_dir: PathBuf,
    /// `-cpu`: cortex-a57 boots far faster than `max` under TCG (3.5 s against
    /// 12.8 s to a busybox marker on this kind of machine).
    pub cpu: String,
    pub smp: u32,
    pub memory_mib: u32,
    /// Direct kernel boot (`-kernel/-initrd/-append`) instead of UEFI → GRUB; for
    /// debugging a rootfs without a bootloader.
    pub direct_kernel: Option<DirectKernel>,
}

/// A kernel booted by QEMU itself, bypassing firmware and GRUB.
#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
}

impl QemuConfig {
    /// Defaults of the QEMU tests: 2 vCPUs, 2 GiB, cortex-a57.
    pub fn new(disk: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            disk,
            run_dir,
            cpu: "cortex-a57".into(),
            smp: 2,
            memory_mib: 2048,
            direct_kernel: None,
        }
    }

    /// The console log file.
    pub fn console_log(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The UEFI variable store (a copy of AAVMF_VARS.fd, kept across reboots).
    pub fn vars(&self) -> PathBuf {
        self.run_dir.join("vars.fd")
    }

    /// The qemu-system-aarch64 arguments. The network is user-mode only: the
    /// guest reaches the host's loopback as 10.0.2.2 and nothing else.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-M".into(),
            "virt".into(),
            "-cpu".into(),
            self.cpu.clone(),
            "-smp".into(),
            self.smp.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
        ];
        match &self.direct_kernel {
            Some(k) => {
                a.extend([
                    "-kernel".into(),
                    k.kernel.display().to_string(),
                    "-initrd".into(),
                    k.initrd.display().to_string(),
                    "-append".into(),
                    k.append.clone(),
                ]);
            }
            None => {
                a.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,readonly=on,file={AAVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", self.vars().display()),
                ]);
            }
        }
        a.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,format=raw,cache=unsafe",
                self.disk.display()
            ),
            // Entropy from the host, as a board's hardware RNG would give.
            "-object".into(),
            "rng-random,filename=/dev/urandom,id=rng0".into(),
            "-device".into(),
            "virtio-rng-pci,rng=rng0".into(),
            "-netdev".into(),
            "user,id=n0".into(),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
            "-chardev".into(),
            format!("file,id=c0,path={}", self.console_log().display()),
            "-serial".into(),
            "chardev:c0".into(),
        ]);
        a
    }
}

/// A running device.
pub struct Vm {
    cfg: QemuConfig,
    child: Child,
    started: Instant,
    /// Console offset from which the next [`Vm::wait_for`] searches.
    cursor: u64,
}

impl Vm {
    /// Starts qemu; the console log is truncated (boots append to a fresh file).
    pub fn start(cfg: QemuConfig) -> Result<Self, QemuError> {
        std::fs::create_dir_all(&cfg.run_dir)
            .map_err(io(format!("creating {}", cfg.run_dir.display())))?;
        if cfg.direct_kernel.is_none() && !cfg.vars().exists() {
            std::fs::copy(AAVMF_VARS, cfg.vars()).map_err(io(format!("copying {AAVMF_VARS}")))?;
        }
        // Keep earlier boots' console output: rename it aside.
        let log = cfg.console_log();
        if log.exists() {
            let mut n = 1;
            while cfg.run_dir.join(format!("console.{n}.log")).exists() {
                n += 1;
            }
            std::fs::rename(&log, cfg.run_dir.join(format!("console.{n}.log")))
                .map_err(io("rotating the console log"))?;
        }
        File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let child = crate::host::dies_with_runner("qemu-system-aarch64")
            .args(cfg.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::create(cfg.run_dir.join("qemu.stderr"))
                    .map_err(io("creating qemu.stderr"))?,
            )
            .spawn()
            .map_err(io(
                "starting qemu-system-aarch64 (apt-get install qemu-system-arm)",
            ))?;
        tracing::info!(pid = child.id(), console = %log.display(), "qemu started");
        Ok(Self {
            cfg,
            child,
            started: Instant::now(),
            cursor: 0,
        })
    }

    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    /// Seconds since qemu was started.
    pub fn uptime(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The whole console log so far (lossy UTF-8).
    pub fn console(&self) -> String {
        read_lossy(&self.cfg.console_log(), 0).unwrap_or_default()
    }

    /// The last `n` lines of the console log.
    pub fn console_tail(&self, n: usize) -> String {
        tail_lines(&self.console(), n)
    }

    /// Waits until `needle` appears on the console after the previous match;
    /// returns the line that holds it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, QemuError> {
        self.wait_for_any(&[needle], timeout).map(|(_, line)| line)
    }

    /// Waits until one of `needles` appears on the console after the previous
    /// match; returns which one came first and the line that holds it.
    pub fn wait_for_any(
        &mut self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), QemuError> {
        let deadline = Instant::now() + timeout;
        let what = needles.join(" | ");
        loop {
            let text = read_lossy(&self.cfg.console_log(), self.cursor)
                .map_err(io("reading the console log"))?;
            let first = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| text.find(n).map(|pos| (pos, i)))
                .min();
            // Only whole lines: the rest of a line may still be on its way.
            if let Some((pos, i)) = first {
                if let Some(nl) = text[pos..].find('\n') {
                    let start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
                    let end = pos + nl;
                    self.cursor += end as u64;
                    return Ok((i, strip_ansi(text[start..end].trim_end_matches('\r'))));
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(QemuError::Exited {
                    what,
                    status: status.to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    what,
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How many times `needle` appears in the whole console log so far.
    pub fn count(&self, needle: &str) -> usize {
        self.console().matches(needle).count()
    }

    /// A power cut and power on: SIGKILL qemu, then start it again on the
    /// same disk and UEFI variables (a fresh console log; the old one is
    /// kept as `console.N.log`).
    pub fn power_cycle(&mut self) -> Result<(), QemuError> {
        self.kill()?;
        let fresh = Vm::start(self.cfg.clone())?;
        // `fresh` now owns the new qemu; swap it in and let the old (dead)
        // one drop.
        let old = std::mem::replace(self, fresh);
        drop(old);
        Ok(())
    }

    /// Whether qemu is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, as a power cut: no flush, no shutdown.
    pub fn kill(&mut self) -> Result<(), QemuError> {
        if self.running() {
            self.child.kill().map_err(io("killing qemu"))?;
        }
        self.child.wait().map_err(io("waiting for qemu"))?;
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!("stopping qemu: {e}");
        }
    }
}

fn read_lossy(path: &Path, from: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `line` without ANSI escape sequences (systemd's colours, `ESC[K`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates up to the final byte (@..~).
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn args_use_uefi_virtio_and_user_networking_only() {
        let c = QemuConfig::new("/d/disk.img".into(), "/d/run".into());
        let a = c.args().join(" ");
        assert!(a.contains("-M virt -cpu cortex-a57 -smp 2 -m 2048"));
        assert!(a.contains(&format!("file={AAVMF_CODE}")));
        assert!(a.contains("file=/d/disk.img,if=virtio"));
        assert!(a.contains("-netdev user,id=n0"));
        assert!(
            !a.contains("hostfwd"),
            "nothing is forwarded into the guest"
        );
        assert!(!a.contains("-no-reboot"), "guest reboots must work");
        assert!(a.contains("path=/d/run/console.log"));
    }

    #[test]
    fn missing_files_are_named_with_their_package() {
        let rom = "qemu-system-aarch64: -device virtio-net-pci,netdev=n0: failed to find romfile \"efi-virtio.rom\"";
        assert_eq!(missing_file(rom).as_deref(), Some("efi-virtio.rom"));
        assert_eq!(package_of("efi-virtio.rom"), "package ipxe-qemu");
        let fw = "qemu-system-aarch64: -drive if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd: Could not open '/usr/share/AAVMF/AAVMF_CODE.fd': No such file or directory";
        assert_eq!(missing_file(fw).as_deref(), Some(AAVMF_CODE));
        assert_eq!(package_of(AAVMF_CODE), "package qemu-efi-aarch64");
        assert_eq!(
            missing_file("qemu-system-aarch64: terminating on signal 15"),
            None
        );
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[Kresin-qemu: up \u{1b}[0;32mOK\u{1b}[0m"),
            "resin-qemu: up OK"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
