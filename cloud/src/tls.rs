//! HTTPS for resin-cloud: the server certificate and key from PEM files
//! (rustls with ring; HTTP/2 and HTTP/1.1 offered by ALPN), reloaded on
//! SIGHUP and when the files change; and `resin-cloud init`, which makes a
//! private CA and a server certificate for the given host names and IPs (rcgen).
//!
//! The files `init` writes, all PEM, in one directory (`<data-dir>/tls` by default):
//! `ca.pem` (the CA certificate: this is what devices and clients trust, and
//! what configured images carry in config.json as `rootCA`), `ca.key`,
//! `server.pem` and `server.key` (what the server serves). Keys are 0600.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// File names inside the TLS directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// The CA's validity: long, because devices in the field carry it.
const CA_DAYS: i64 = 20 * 365;
/// The server certificate's validity; `init --force --keep-ca` issues a new
/// one from the same CA, which devices keep trusting.
const SERVER_DAYS: i64 = 5 * 365;
/// The CA's common name; a CA rebuilt from its key (`--keep-ca`) must carry
/// the same name for the chain to verify.
const CA_NAME: &str = "resin-cloud private CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS certificate {cert} with key {key} is not usable: {source}")]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] resin_fsutil::Error),
    #[error("{path} exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    CaKey { path: PathBuf, source: rcgen::Error },
    #[error("host {host:?} is neither a DNS name nor an IP address")]
    Host { host: String },
    #[error(
        "give at least one --host (a DNS name or an IP address devices use to reach the cloud)"
    )]
    NoHosts,
    #[error("generating the certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the server certificate and key are, and how often to look for a
/// change (0: only SIGHUP reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA written into configured images' config.json as `rootCA`
    /// (`None`: the images carry none, and devices trust the public roots).
    pub ca: Option<PathBuf>,
    pub watch_ms: u64,
}

/// Reads the certificate chain and key into a rustls server config that
/// offers h2 and http/1.1 by ALPN (axum-server sets that).
pub async fn load(s: &TlsSettings) -> Result<RustlsConfig, TlsError> {
    let (cert, key) = read_pair(s)?;
    RustlsConfig::from_pem(cert, key)
        .await
        .map_err(|source| TlsError::Invalid {
            cert: s.cert.clone(),
            key: s.key.clone(),
            source,
        })
}

/// Reads the files again and swaps them in for new connections; on any
/// error the old certificate stays.
pub async fn reload(s: &TlsSettings, config: &RustlsConfig) -> Result<(), TlsError> {
    let (cert, key) = read_pair(s)?;
    config
        .reload_from_pem(cert, key)
        .await
        .map_err(|source| TlsError::Invalid {
            cert: s.cert.clone(),
            key: s.key.clone(),
            source,
        })
}

fn read_pair(s: &TlsSettings) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    Ok((read(&s.cert)?, read(&s.key)?))
}

/// What identifies a version of the two files: a rename (as `init` and most
/// tools write) changes the inode, an edit in place the mtime or length.
fn stamp(s: &TlsSettings) -> Option<[(u64, u64, SystemTime); 2]> {
    use std::os::unix::fs::MetadataExt;
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.ino(), m.len(), m.modified().ok()?))
    };
    Some([one(&s.cert)?, one(&s.key)?])
}

/// Reloads the certificate on SIGHUP and, every `watch_ms`, when the files
/// changed. A failed reload is logged and keeps the old certificate; a
/// change is tried again until the pair loads (a cert written before its key
/// does not match for a moment).
pub fn spawn_reloader(s: TlsSettings, config: RustlsConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("no SIGHUP handler, certificate reload only by file change: {e}");
                None
            }
        };
        let watch = (s.watch_ms > 0).then(|| Duration::from_millis(s.watch_ms));
        let mut loaded = stamp(&s);
        let mut failed = None;
        loop {
            let by_signal = tokio::select! {
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
                () = async {
                    match watch {
                        Some(w) => tokio::time::sleep(w).await,
                        None => std::future::pending().await,
                    }
                } => false,
            };
            let now = stamp(&s);
            if !by_signal && (now == loaded || now.is_none()) {
                continue;
            }
            match reload(&s, &config).await {
                Ok(()) => {
                    tracing::info!(
                        cert = %s.cert.display(),
                        "TLS certificate reloaded ({})",
                        if by_signal { "SIGHUP" } else { "the files changed" }
                    );
                    loaded = now;
                    failed = None;
                }
                Err(e) => {
                    // Said once per version of the files, not every tick.
                    if by_signal || failed != now {
                        tracing::warn!("keeping the old TLS certificate: {e}");
                    }
                    failed = now;
                }
            }
        }
    })
}

/// What `resin-cloud init` does.
#[derive(Debug, Clone)]
pub struct InitRequest {
    pub dir: PathBuf,
    /// DNS names and IP addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Replace existing files.
    pub force: bool,
    /// Issue the server certificate from the CA already in `dir` (devices
    /// that trust it keep working); only the server files are written.
    pub keep_ca: bool,
}

/// The files `init` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitDone {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub hosts: Vec<String>,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(CA_DAYS);
    Ok(p)
}

/// Makes (or, with `keep_ca`, reuses) the CA and issues a server certificate
/// for `hosts`. Refuses to replace any file without `force`; every file is
/// written through a temp file, fsync and rename; keys are 0600.
pub fn init(req: &InitRequest) -> Result<InitDone, TlsError> {
    let path = |n: &str| req.dir.join(n);
    let mut outputs = vec![SERVER_CERT, SERVER_KEY];
    if !req.keep_ca {
        outputs.extend([CA_CERT, CA_KEY]);
    }
    if !req.force {
        for n in &outputs {
            if path(n).exists() {
                return Err(TlsError::Exists { path: path(n) });
            }
        }
    }
    if req.hosts.is_empty() {
        return Err(TlsError::NoHosts);
    }
    for h in &req.hosts {
        if !valid_host(h) {
            return Err(TlsError::Host { host: h.clone() });
        }
    }
    // rcgen makes an IP SAN of what parses as an address, else a DNS SAN.
    let sans = CertificateParams::new(req.hosts.clone())?.subject_alt_names;

    let ca_key = if req.keep_ca {
        let p = path(CA_KEY);
        let pem = std::fs::read_to_string(&p).map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })?;
        KeyPair::from_pem(&pem).map_err(|source| TlsError::CaKey { path: p, source })?
    } else {
        KeyPair::generate()?
    };
    let ca = ca_params()?;
    let ca_cert_pem = (!req.keep_ca)
        .then(|| ca.self_signed(&ca_key).map(|c| c.pem()))
        .transpose()?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut sp = CertificateParams::default();
    sp.subject_alt_names = sans;
    sp.distinguished_name.push(
        DnType::CommonName,
        req.hosts.first().cloned().unwrap_or_default(),
    );
    sp.is_ca = IsCa::ExplicitNoCa;
    sp.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    sp.not_before = now - time::Duration::days(1);
    sp.not_after = now + time::Duration::days(SERVER_DAYS);
    let server_cert = sp.signed_by(&server_key, &issuer)?;

    create_dir(&req.dir)?;
    // Keys first: a certificate is never on disk without its key.
    if let Some(ca_pem) = &ca_cert_pem {
        resin_fsutil::write_atomic(&path(CA_KEY), ca_key.serialize_pem().as_bytes(), 0o600)?;
        resin_fsutil::write_atomic(&path(CA_CERT), ca_pem.as_bytes(), 0o644)?;
    }
    resin_fsutil::write_atomic(
        &path(SERVER_KEY),
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    resin_fsutil::write_atomic(&path(SERVER_CERT), server_cert.pem().as_bytes(), 0o644)?;
    Ok(InitDone {
        ca_cert: path(CA_CERT),
        server_cert: path(SERVER_CERT),
        server_key: path(SERVER_KEY),
        hosts: req.hosts.clone(),
    })
}

/// An IP address, or a DNS name: dot-separated labels of letters, digits
/// and inner hyphens (a leading `*.` wildcard allowed), at most 253 bytes.
fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && h.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// The CA file as config.json's `rootCA`: base64 of the PEM text.
pub fn root_ca_field(path: &Path) -> Result<String, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(resin_api_types::encode_root_ca(&pem))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn req(dir: &Path) -> InitRequest {
        InitRequest {
            dir: dir.to_owned(),
            hosts: vec!["cloud.example".into(), "10.0.2.2".into()],
            force: false,
            keep_ca: false,
        }
    }

    #[test]
    fn init_writes_keys_0600_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        init(&req(&dir)).unwrap();
        for (n, mode) in [
            (CA_KEY, 0o600),
            (SERVER_KEY, 0o600),
            (CA_CERT, 0o644),
            (SERVER_CERT, 0o644),
        ] {
            let m = std::fs::metadata(dir.join(n)).unwrap().permissions().mode();
            assert_eq!(m & 0o777, mode, "{n}");
        }
        let ca = std::fs::read(dir.join(CA_CERT)).unwrap();
        let err = init(&req(&dir)).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca, "untouched");
        // --keep-ca: a new server certificate, the same CA.
        let server = std::fs::read(dir.join(SERVER_CERT)).unwrap();
        init(&InitRequest {
            force: true,
            keep_ca: true,
            ..req(&dir)
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca);
        assert_ne!(std::fs::read(dir.join(SERVER_CERT)).unwrap(), server);
        // --force: a new CA.
        init(&InitRequest {
            force: true,
            ..req(&dir)
        })
        .unwrap();
        assert_ne!(std::fs::read(dir.join(CA_CERT)).unwrap(), ca);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_bad_host_is_a_clear_error_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("tls");
        let err = init(&InitRequest {
            hosts: vec!["bad host name!".into()],
            ..req(&dir)
        })
        .unwrap_err();
        assert!(err.to_string().contains("bad host name!"), "{err}");
        assert!(!dir.exists());
    }
}
