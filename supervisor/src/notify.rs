//! systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET
//! (READY=1, STATUS=…, WATCHDOG=1). A no-op when not run by systemd.

use std::os::unix::net::UnixDatagram;

#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// Reads $NOTIFY_SOCKET (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| UnixDatagram::unbound().ok().map(|s| (s, path)));
        Self { socket }
    }

    /// Sends `msg` (e.g. `READY=1`); errors are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let r = if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
        } else {
            sock.send_to(msg.as_bytes(), path)
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", status.replace('\n', " ")));
    }

    /// The watchdog interval systemd asked for, halved (send twice per period).
    pub fn watchdog_interval() -> Option<std::time::Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        Some(std::time::Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_the_notify_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
        };
        n.send("READY=1");
        n.status("applying\nstep");
        let mut buf = [0u8; 64];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STATUS=applying step");
    }
}
