//! The remote-access tunnel's wire format (`GET /device/v1/tunnel` for the
//! device, `GET /v1/device(<id>)/tunnel` for a user): one binary WebSocket
//! message carries exactly one [`Frame`].
//!
//! ```text
//! byte 0      protocol version (1)
//! byte 1      frame type (see FrameType)
//! bytes 2..6  stream id, u32 big-endian (0 = the connection itself)
//! bytes 6..   payload, by type:
//!   Open      JSON OpenRequest            (client → device)
//!   Opened    empty                       (device → client: the session runs)
//!   Data      raw bytes, ≤ MAX_DATA       (both ways: stdin / stdout / TCP bytes)
//!   Stderr    raw bytes, ≤ MAX_DATA       (device → client, a command without a TTY)
//!   Credit    u32 BE: bytes the receiver has consumed and may be sent again
//!   Resize    u16 BE cols, u16 BE rows    (client → device, TTY sessions)
//!   Eof       empty                       (the sender will send no more Data)
//!   Close     JSON CloseInfo              (either way; ends the stream)
//!   PollNow   empty, stream 0             (cloud → device: fetch the target state now)
//!   Reboot    empty, stream 0             (cloud → device: reboot, honouring update locks)
//! ```
//!
//! **Flow control** is per stream and end to end: each side may have at
//! most [`INITIAL_WINDOW`] bytes of Data/Stderr payload sent and not yet
//! credited back; the receiver returns [`FrameType::Credit`] for what it
//! has written out (to the PTY, the socket, the terminal). A consumer that
//! stops reading therefore stops only its own stream: the sender waits for
//! credit on that stream while the others go on, and nobody in between
//! (the cloud relays frames unchanged but for the stream id) buffers more
//! than one window per stream.

use serde::{Deserialize, Serialize};

/// The protocol version in byte 0 of every frame.
pub const VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 6;
/// The largest Data/Stderr payload of one frame.
pub const MAX_DATA: usize = 32 * 1024;
/// The largest JSON payload (Open, Close).
pub const MAX_JSON: usize = 16 * 1024;
/// Bytes a sender may have in flight per stream before it needs credit.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// The device's tunnel path (the user's is `/v1/device(<id>)/tunnel`).
pub const DEVICE_PATH: &str = "/device/v1/tunnel";

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Open = 1,
    Opened = 2,
    Data = 3,
    Stderr = 4,
    Credit = 5,
    Resize = 6,
    Eof = 7,
    Close = 8,
    PollNow = 9,
    Reboot = 10,
}

impl FrameType {
    fn from_u8(b: u8) -> Option<Self> {
        use FrameType::*;
        Some(match b {
            1 => Open,
            2 => Opened,
            3 => Data,
            4 => Stderr,
            5 => Credit,
            6 => Resize,
            7 => Eof,
            8 => Close,
            9 => PollNow,
            10 => Reboot,
            _ => return None,
        })
    }
}

/// What a session is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OpenRequest {
    /// A shell on the host, or `command` run by `sh -c` (its words joined
    /// by spaces, as ssh does); `service` runs it in that service's
    /// container instead (an engine exec).
    Shell {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// A PTY of this size; none: pipes (stdout as Data, stderr as Stderr).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<WinSize>,
    },
    /// A TCP connection from the device to `host:port` (an allow-list on
    /// the device decides; loopback only by default).
    Tcp { host: String, port: u16 },
}

impl OpenRequest {
    /// The audit's kind: `shell`, `exec` (a shell in a service) or `tcp`.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenRequest::Shell {
                service: Some(_), ..
            } => "exec",
            OpenRequest::Shell { .. } => "shell",
            OpenRequest::Tcp { .. } => "tcp",
        }
    }

    /// The audit's target: the command (or `-` for a login shell), with
    /// the service in front; or `host:port`.
    pub fn target(&self) -> String {
        match self {
            OpenRequest::Shell {
                command, service, ..
            } => {
                let cmd = if command.is_empty() {
                    "-".to_owned()
                } else {
                    command.join(" ")
                };
                match service {
                    Some(s) => format!("{s}: {cmd}"),
                    None => cmd,
                }
            }
            OpenRequest::Tcp { host, port } => format!("{host}:{port}"),
        }
    }
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub cols: u16,
    pub rows: u16,
}

/// Why a stream ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseInfo {
    /// The command's exit status (shell and exec sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Set when the session failed or was refused (feature off, not in the
    /// allow-list, too many sessions, idle timeout, device gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One frame (see the module docs for the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Open(u32, OpenRequest),
    Opened(u32),
    Data(u32, Vec<u8>),
    Stderr(u32, Vec<u8>),
    Credit(u32, u32),
    Resize(u32, WinSize),
    Eof(u32),
    Close(u32, CloseInfo),
    PollNow,
    Reboot,
}

/// A frame that cannot be decoded (or encoded).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("tunnel frame of {len} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short { len: usize },
    #[error("tunnel frame has protocol version {got}, this side speaks {VERSION}")]
    Version { got: u8 },
    #[error("tunnel frame has unknown type {ty}")]
    UnknownType { ty: u8 },
    #[error("tunnel frame {ty:?} has a {len}-byte payload, expected {expected}")]
    Length {
        ty: FrameType,
        len: usize,
        expected: &'static str,
    },
    #[error("tunnel frame {ty:?} on stream {stream}: {why}")]
    Stream {
        ty: FrameType,
        stream: u32,
        why: &'static str,
    },
    #[error("tunnel frame {ty:?} carries invalid JSON: {source}")]
    Json {
        ty: FrameType,
        #[source]
        source: serde_json::Error,
    },
}

impl Frame {
    /// The stream the frame belongs to (0 for connection frames).
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open(s, _)
            | Frame::Opened(s)
            | Frame::Data(s, _)
            | Frame::Stderr(s, _)
            | Frame::Credit(s, _)
            | Frame::Resize(s, _)
            | Frame::Eof(s)
            | Frame::Close(s, _) => *s,
            Frame::PollNow | Frame::Reboot => 0,
        }
    }

    /// The same frame on stream `to` (the cloud's relay renumbers streams).
    pub fn with_stream(self, to: u32) -> Frame {
        match self {
            Frame::Open(_, o) => Frame::Open(to, o),
            Frame::Opened(_) => Frame::Opened(to),
            Frame::Data(_, d) => Frame::Data(to, d),
            Frame::Stderr(_, d) => Frame::Stderr(to, d),
            Frame::Credit(_, n) => Frame::Credit(to, n),
            Frame::Resize(_, w) => Frame::Resize(to, w),
            Frame::Eof(_) => Frame::Eof(to),
            Frame::Close(_, c) => Frame::Close(to, c),
            f @ (Frame::PollNow | Frame::Reboot) => f,
        }
    }

    /// Payload bytes that count against the flow-control window.
    pub fn window_len(&self) -> usize {
        match self {
            Frame::Data(_, d) | Frame::Stderr(_, d) => d.len(),
            _ => 0,
        }
    }

    fn ty(&self) -> FrameType {
        match self {
            Frame::Open(..) => FrameType::Open,
            Frame::Opened(_) => FrameType::Opened,
            Frame::Data(..) => FrameType::Data,
            Frame::Stderr(..) => FrameType::Stderr,
            Frame::Credit(..) => FrameType::Credit,
            Frame::Resize(..) => FrameType::Resize,
            Frame::Eof(_) => FrameType::Eof,
            Frame::Close(..) => FrameType::Close,
            Frame::PollNow => FrameType::PollNow,
            Frame::Reboot => FrameType::Reboot,
        }
    }

    /// The frame's bytes. Data longer than [`MAX_DATA`] is an error (split
    /// it first); so is a session frame on stream 0.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let ty = self.ty();
        let stream = self.stream();
        check_stream(ty, stream)?;
        let mut out = Vec::with_capacity(HEADER_LEN + 16);
        out.push(VERSION);
        out.push(ty as u8);
        out.extend_from_slice(&stream.to_be_bytes());
        match self {
            Frame::Open(_, o) => {
                out.extend(serde_json::to_vec(o).map_err(|source| FrameError::Json { ty, source })?)
            }
            Frame::Close(_, c) => {
                out.extend(serde_json::to_vec(c).map_err(|source| FrameError::Json { ty, source })?)
            }
            Frame::Data(_, d) | Frame::Stderr(_, d) => {
                if d.len() > MAX_DATA {
                    return Err(FrameError::Length {
                        ty,
                        len: d.len(),
                        expected: "at most MAX_DATA (32 KiB)",
                    });
                }
                out.extend_from_slice(d)
            }
            Frame::Credit(_, n) => out.extend_from_slice(&n.to_be_bytes()),
            Frame::Resize(_, w) => {
                out.extend_from_slice(&w.cols.to_be_bytes());
                out.extend_from_slice(&w.rows.to_be_bytes());
            }
            Frame::Opened(_) | Frame::Eof(_) | Frame::PollNow | Frame::Reboot => {}
        }
        if matches!(ty, FrameType::Open | FrameType::Close) && out.len() - HEADER_LEN > MAX_JSON {
            return Err(FrameError::Length {
                ty,
                len: out.len() - HEADER_LEN,
                expected: "at most MAX_JSON (16 KiB)",
            });
        }
        Ok(out)
    }

    /// Parses one frame (one WebSocket binary message).
    pub fn decode(b: &[u8]) -> Result<Frame, FrameError> {
        if b.len() < HEADER_LEN {
            return Err(FrameError::Short { len: b.len() });
        }
        if b[0] != VERSION {
            return Err(FrameError::Version { got: b[0] });
        }
        let ty = FrameType::from_u8(b[1]).ok_or(FrameError::UnknownType { ty: b[1] })?;
        let stream = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        check_stream(ty, stream)?;
        let p = &b[HEADER_LEN..];
        let len = |expected: &'static str| FrameError::Length {
            ty,
            len: p.len(),
            expected,
        };
        let json_len = || {
            if p.len() > MAX_JSON {
                Err(len("at most MAX_JSON (16 KiB)"))
            } else {
                Ok(())
            }
        };
        Ok(match ty {
            FrameType::Open => {
                json_len()?;
                Frame::Open(
                    stream,
                    serde_json::from_slice(p).map_err(|source| FrameError::Json { ty, source })?,
                )
            }
            FrameType::Close => {
                json_len()?;
                Frame::Close(
                    stream,
                    serde_json::from_slice(p).map_err(|source| FrameError::Json { ty, source })?,
                )
            }
            FrameType::Data | FrameType::Stderr => {
                if p.len() > MAX_DATA {
                    return Err(len("at most MAX_DATA (32 KiB)"));
                }
                if ty == FrameType::Data {
                    Frame::Data(stream, p.to_vec())
                } else {
                    Frame::Stderr(stream, p.to_vec())
                }
            }
            FrameType::Credit => {
                let n: [u8; 4] = p.try_into().map_err(|_| len("4"))?;
                Frame::Credit(stream, u32::from_be_bytes(n))
            }
            FrameType::Resize => {
                let w: [u8; 4] = p.try_into().map_err(|_| len("4"))?;
                Frame::Resize(
                    stream,
                    WinSize {
                        cols: u16::from_be_bytes([w[0], w[1]]),
                        rows: u16::from_be_bytes([w[2], w[3]]),
                    },
                )
            }
            FrameType::Opened | FrameType::Eof | FrameType::PollNow | FrameType::Reboot => {
                if !p.is_empty() {
                    return Err(len("0"));
                }
                match ty {
                    FrameType::Opened => Frame::Opened(stream),
                    FrameType::Eof => Frame::Eof(stream),
                    FrameType::PollNow => Frame::PollNow,
                    _ => Frame::Reboot,
                }
            }
        })
    }
}

fn check_stream(ty: FrameType, stream: u32) -> Result<(), FrameError> {
    let conn = matches!(ty, FrameType::PollNow | FrameType::Reboot);
    match (conn, stream) {
        (true, 0) | (false, 1..) => Ok(()),
        (true, _) => Err(FrameError::Stream {
            ty,
            stream,
            why: "a connection frame must be on stream 0",
        }),
        (false, _) => Err(FrameError::Stream {
            ty,
            stream,
            why: "a session frame cannot be on stream 0",
        }),
    }
}

/// The device's allow-list entry for TCP forwards (config.json
/// `tunnel.tcpAllow`): `HOST:PORT`, where HOST is an IP address, a CIDR
/// block (`172.17.0.0/16`), `[v6]`/`[v6]/len` or `localhost`, and PORT a
/// number or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    net: AllowHost,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowHost {
    Localhost,
    Net(std::net::IpAddr, u8),
}

/// An allow-list entry that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("tunnel allow-list entry {entry:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:8080, 172.17.0.0/16:*, [::1]:22)")]
pub struct AllowRuleError {
    pub entry: String,
    pub why: &'static str,
}

impl std::str::FromStr for AllowRule {
    type Err = AllowRuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| AllowRuleError {
            entry: s.to_owned(),
            why,
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("no :PORT"))?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| err("PORT is not 1-65535 or *"))?,
            ),
        };
        if port == Some(0) {
            return Err(err("PORT is not 1-65535 or *"));
        }
        let net = if host.eq_ignore_ascii_case("localhost") {
            AllowHost::Localhost
        } else {
            let (addr, len) = match host.split_once('/') {
                Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| err("bad prefix"))?)),
                None => (host, None),
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = addr.parse().map_err(|_| err("HOST is not an IP"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = len.unwrap_or(max);
            if len > max {
                return Err(err("prefix too long"));
            }
            AllowHost::Net(ip, len)
        };
        Ok(AllowRule { net, port })
    }
}

impl AllowRule {
    /// Loopback only: the default allow-list.
    pub fn defaults() -> Vec<AllowRule> {
        ["127.0.0.0/8:*", "[::1]:*", "localhost:*"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// Does this rule allow `host:port`? `host` is matched as written (no
    /// name lookups: only `localhost` is a name).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match &self.net {
            AllowHost::Localhost => host.eq_ignore_ascii_case("localhost"),
            AllowHost::Net(net, len) => {
                let h = host.trim_start_matches('[').trim_end_matches(']');
                let Ok(ip) = h.parse::<std::net::IpAddr>() else {
                    return false;
                };
                in_net(ip, *net, *len)
            }
        }
    }
}

fn in_net(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// config.json `tunnel`: the device's own switches for remote access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// Keep the tunnel at all (off: no WebSocket, no poll-now).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Shells on the host OS.
    #[serde(default = "yes")]
    pub shell: bool,
    /// Shells and commands in service containers.
    #[serde(default = "yes")]
    pub exec: bool,
    /// TCP port forwards (to what `tcpAllow` allows).
    #[serde(default = "yes")]
    pub tcp: bool,
    /// Allowed TCP targets ([`AllowRule`]); default loopback only.
    #[serde(default = "default_allow")]
    pub tcp_allow: Vec<String>,
    /// Sessions open at once; more are refused.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
}

fn yes() -> bool {
    true
}

fn default_allow() -> Vec<String> {
    vec![
        "127.0.0.0/8:*".into(),
        "[::1]:*".into(),
        "localhost:*".into(),
    ]
}

fn default_max_sessions() -> u32 {
    16
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            shell: true,
            exec: true,
            tcp: true,
            tcp_allow: default_allow(),
            max_sessions: default_max_sessions(),
        }
    }
}

impl TunnelSettings {
    /// The parsed allow-list.
    pub fn allow_rules(&self) -> Result<Vec<AllowRule>, AllowRuleError> {
        self.tcp_allow.iter().map(|s| s.parse()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Open(
                1,
                OpenRequest::Shell {
                    command: vec!["cat".into(), "/etc/os-release".into()],
                    service: Some("store".into()),
                    tty: Some(WinSize { cols: 80, rows: 24 }),
                },
            ),
            Frame::Open(
                7,
                OpenRequest::Tcp {
                    host: "127.0.0.1".into(),
                    port: 8080,
                },
            ),
            Frame::Opened(2),
            Frame::Data(3, b"hello".to_vec()),
            Frame::Data(3, vec![]),
            Frame::Data(3, vec![7; MAX_DATA]),
            Frame::Stderr(u32::MAX, b"oops".to_vec()),
            Frame::Credit(4, INITIAL_WINDOW),
            Frame::Resize(
                5,
                WinSize {
                    cols: 132,
                    rows: 43,
                },
            ),
            Frame::Eof(6),
            Frame::Close(
                6,
                CloseInfo {
                    exit_code: Some(1),
                    error: None,
                },
            ),
            Frame::Close(6, CloseInfo::default()),
            Frame::PollNow,
            Frame::Reboot,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for f in all() {
            let b = f.encode().unwrap();
            assert_eq!(b[0], VERSION);
            assert_eq!(Frame::decode(&b).unwrap(), f, "{b:?}");
        }
    }

    #[test]
    fn the_header_is_as_documented() {
        let b = Frame::Credit(0x0102_0304, 5).encode().unwrap();
        assert_eq!(b, [1, 5, 1, 2, 3, 4, 0, 0, 0, 5]);
        let b = Frame::Resize(1, WinSize { cols: 80, rows: 24 })
            .encode()
            .unwrap();
        assert_eq!(&b[6..], [0, 80, 0, 24]);
        let open = Frame::Open(
            1,
            OpenRequest::Tcp {
                host: "::1".into(),
                port: 22,
            },
        )
        .encode()
        .unwrap();
        assert_eq!(&open[6..], br#"{"kind":"tcp","host":"::1","port":22}"#);
    }

    #[test]
    fn malformed_frames_are_clear_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "0 bytes is shorter than its 6-byte header"),
            (vec![1, 3, 0, 0], "4 bytes is shorter"),
            (vec![2, 3, 0, 0, 0, 1], "protocol version 2"),
            (vec![1, 99, 0, 0, 0, 1], "unknown type 99"),
            (vec![1, 3, 0, 0, 0, 0, b'x'], "cannot be on stream 0"),
            (vec![1, 9, 0, 0, 0, 1], "must be on stream 0"),
            (
                vec![1, 5, 0, 0, 0, 1, 0, 1],
                "Credit has a 2-byte payload, expected 4",
            ),
            (
                vec![1, 6, 0, 0, 0, 1, 0, 1, 0],
                "Resize has a 3-byte payload",
            ),
            (
                vec![1, 7, 0, 0, 0, 1, 0],
                "Eof has a 1-byte payload, expected 0",
            ),
            (vec![1, 1, 0, 0, 0, 1, b'{'], "Open carries invalid JSON"),
            (
                [&[1u8, 1, 0, 0, 0, 1][..], br#"{"kind":"telnet"}"#].concat(),
                "unknown variant `telnet`",
            ),
            (
                [&[1u8, 1, 0, 0, 0, 1][..], br#"{"kind":"tcp","host":"x"}"#].concat(),
                "missing field `port`",
            ),
            (
                [&[1u8, 3, 0, 0, 0, 1][..], &vec![0u8; MAX_DATA + 1]].concat(),
                "32769-byte payload, expected at most MAX_DATA",
            ),
        ];
        for (bytes, want) in cases {
            let e = Frame::decode(&bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{bytes:?}: {e:?} lacks {want:?}");
        }
        let e = Frame::Data(1, vec![0; MAX_DATA + 1]).encode().unwrap_err();
        assert!(e.to_string().contains("MAX_DATA"), "{e}");
        let e = Frame::Eof(0).encode().unwrap_err();
        assert!(e.to_string().contains("stream 0"), "{e}");
    }

    #[test]
    fn kinds_and_targets_for_the_audit() {
        let sh = OpenRequest::Shell {
            command: vec![],
            service: None,
            tty: None,
        };
        assert_eq!((sh.kind(), sh.target().as_str()), ("shell", "-"));
        let ex = OpenRequest::Shell {
            command: vec!["ls".into(), "/data".into()],
            service: Some("store".into()),
            tty: None,
        };
        assert_eq!(
            (ex.kind(), ex.target().as_str()),
            ("exec", "store: ls /data")
        );
        let tcp = OpenRequest::Tcp {
            host: "127.0.0.1".into(),
            port: 80,
        };
        assert_eq!((tcp.kind(), tcp.target().as_str()), ("tcp", "127.0.0.1:80"));
    }

    #[test]
    fn settings_default_to_everything_on_and_loopback() {
        let s: TunnelSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, TunnelSettings::default());
        assert_eq!(s.allow_rules().unwrap(), AllowRule::defaults());
        let s: TunnelSettings =
            serde_json::from_str(r#"{"shell":false,"tcpAllow":["10.0.0.0/8:80"]}"#).unwrap();
        assert!(!s.shell && s.exec && s.tcp);
        assert!(s.allow_rules().unwrap()[0].allows("10.1.1.1", 80));
        let e = serde_json::from_str::<TunnelSettings>(r#"{"shel":false}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `shel`"), "{e}");
    }

    #[test]
    fn allow_rules() {
        let d = AllowRule::defaults();
        assert_eq!(d.len(), 3);
        let ok = |h: &str, p| d.iter().any(|r| r.allows(h, p));
        assert!(ok("127.0.0.1", 80));
        assert!(ok("127.1.2.3", 65535));
        assert!(ok("::1", 22));
        assert!(ok("[::1]", 22));
        assert!(ok("LOCALHOST", 1));
        assert!(!ok("10.0.0.1", 80));
        assert!(!ok("172.17.0.2", 80));
        assert!(!ok("example.com", 80));
        assert!(!ok("127.0.0.1.nip.io", 80));
        let r: AllowRule = "172.17.0.0/16:8080".parse().unwrap();
        assert!(r.allows("172.17.3.4", 8080));
        assert!(!r.allows("172.17.3.4", 8081));
        assert!(!r.allows("172.18.0.1", 8080));
        let any: AllowRule = "0.0.0.0/0:*".parse().unwrap();
        assert!(any.allows("8.8.8.8", 53));
        assert!(!any.allows("::1", 53));
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "host:80",
            "1.2.3.4/33:1",
            "1.2.3.4:x",
        ] {
            let e = bad.parse::<AllowRule>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
