//! The host: reboot and power-off through logind over D-Bus (zbus), dropping
//! capabilities, and device facts for the state report (OS version, IPs,
//! CPU, memory, storage, temperature from /proc and /sys).

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("D-Bus: {0}")]
    Dbus(#[from] zbus::Error),
    #[error("capabilities: {0}")]
    Caps(String),
}

async fn bus(address: Option<&str>) -> Result<zbus::Connection, zbus::Error> {
    match address {
        Some(a) => zbus::connection::Builder::address(a).build().await,
        None => zbus::Connection::system().await,
    }
}

/// `org.freedesktop.login1.Manager.Reboot(false)` or `PowerOff(false)`.
pub async fn logind(action: &str, dbus_address: Option<&str>) -> Result<(), SystemError> {
    let conn = bus(dbus_address).await?;
    conn.call_method(
        Some("org.freedesktop.login1"),
        "/org/freedesktop/login1",
        Some("org.freedesktop.login1.Manager"),
        action,
        &(false,),
    )
    .await?;
    Ok(())
}

/// Capabilities kept: file ops on state and lock dirs owned by others
/// (containers create lock files). The Docker socket and logind need none
/// as root. Must match CapabilityBoundingSet in the unit.
pub const KEPT_CAPS: [caps::Capability; 4] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
];

/// Drops every capability but [`KEPT_CAPS`] from all sets.
pub fn drop_capabilities() -> Result<(), SystemError> {
    use caps::{CapSet, Capability};
    let err = |e: caps::errors::CapsError| SystemError::Caps(e.to_string());
    let keep: caps::CapsHashSet = KEPT_CAPS.iter().copied().collect();
    let bounding = caps::read(None, CapSet::Bounding).map_err(err)?;
    for c in bounding.iter().filter(|c| !keep.contains(c)) {
        caps::drop(None, CapSet::Bounding, *c).map_err(err)?;
    }
    let _ = caps::clear(None, CapSet::Ambient);
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    let keep_now: caps::CapsHashSet = keep
        .intersection(&permitted)
        .copied()
        .collect::<std::collections::HashSet<Capability>>();
    caps::set(None, CapSet::Effective, &keep_now).map_err(err)?;
    caps::set(None, CapSet::Permitted, &keep_now).map_err(err)?;
    Ok(())
}

/// VERSION_ID (else VERSION) from an os-release file.
pub fn os_version(os_release: &Path) -> Option<String> {
    let text = std::fs::read_to_string(os_release).ok()?;
    let get = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
    };
    get("VERSION_ID")
        .or_else(|| get("VERSION"))
        .filter(|v| !v.is_empty())
}

/// Non-loopback IPv4/IPv6 addresses.
pub fn ip_addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<String> = addrs
        .filter(|a| {
            a.interface_name != "lo"
                && !a.interface_name.starts_with("docker")
                && !a.interface_name.starts_with("br-")
                && !a.interface_name.starts_with("veth")
        })
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(v4.ip().to_string())
            } else {
                let v6 = addr.as_sockaddr_in6()?.ip();
                (!v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80).then(|| v6.to_string())
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// (busy, total) jiffies from /proc/stat's first line.
pub fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// (used, total) bytes from /proc/meminfo.
pub fn memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = kb("MemTotal:")?;
    let avail = kb("MemAvailable:")?;
    Some(((total - avail) * 1024, total * 1024))
}

/// (used, total) bytes of the file system holding `path`.
pub fn storage(path: &Path) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as u64;
    let total = s.blocks() as u64 * frsize;
    let free = s.blocks_free() as u64 * frsize;
    Some((total - free, total))
}

/// Degrees Celsius of the first thermal zone, where there is one.
pub fn cpu_temp() -> Option<f64> {
    let t = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    Some(t.trim().parse::<f64>().ok()? / 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn os_version_prefers_version_id() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("os-release");
        std::fs::write(&p, "NAME=resin\nVERSION=\"1.2 (x)\"\nVERSION_ID=\"1.2\"\n").unwrap();
        assert_eq!(os_version(&p).as_deref(), Some("1.2"));
        std::fs::write(&p, "VERSION=\"3.0\"\n").unwrap();
        assert_eq!(os_version(&p).as_deref(), Some("3.0"));
        assert_eq!(os_version(&d.path().join("none")), None);
    }

    #[test]
    fn host_metrics_are_read() {
        let (used, total) = memory().unwrap();
        assert!(used > 0 && used < total);
        let (busy, all) = cpu_times().unwrap();
        assert!(busy <= all);
        assert!(storage(Path::new("/")).unwrap().1 > 0);
    }
}
