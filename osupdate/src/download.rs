//! Resumable, sha256-verified bundle download with ureq: checks free space
//! first, continues a `.part` file with `Range`, hashes through a reading
//! adapter, and renames to the final name only when the hash matches.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Read/write buffer: large enough for few syscalls, small enough to check
/// for cancellation often.
const BUFFER_SIZE: usize = 64 * 1024;
/// How often the cancel flag is looked at while the body is waited for.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

/// What to fetch and where.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub url: String,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
    pub size: u64,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: String,
    pub dir: PathBuf,
    /// Bytes that must stay free on the filesystem besides the bundle.
    pub free_space_margin: u64,
    /// Connection attempts; each resumes where the last one stopped.
    pub attempts: u32,
    /// Pause between attempts.
    pub retry_delay: Duration,
    /// Longest wait for the next bytes of the body: a stream stalled this
    /// long counts as interrupted (and is resumed by the next attempt).
    pub read_timeout: Duration,
    /// TLS trust (config.json's `rootCA`); `None`: ureq's public roots.
    pub tls: Option<ureq::tls::TlsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("bundle sha256 {sha256:?} is not 64 lowercase hex characters")]
    BadSha256 { sha256: String },
    #[error("not enough free space in {dir}: the bundle needs {needed} more bytes, {available} are free")]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url} answered a compressed body ({encoding}); bundles must be sent as is")]
    Encoded { url: String, encoding: String },
    #[error("GET {url} was interrupted at byte {at} of {size}: {source}")]
    Interrupted {
        url: String,
        at: u64,
        size: u64,
        #[source]
        source: io::Error,
    },
    #[error("GET {url} sent more than the expected {size} bytes")]
    TooLong { url: String, size: u64 },
    #[error("bundle sha256 mismatch: expected {expected}, got {actual}; the download was removed")]
    Sha256Mismatch { expected: String, actual: String },
    #[error("download cancelled")]
    Cancelled,
}

impl DownloadError {
    /// True for errors another attempt may get past (the connection).
    fn is_transient(&self) -> bool {
        match self {
            Self::Http { .. } | Self::Interrupted { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// A reader that feeds every byte it passes on into a sha256.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, hasher: Sha256) -> Self {
        Self {
            inner,
            hasher,
            count: 0,
        }
    }

    /// Bytes read through this adapter.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn into_hasher(self) -> Sha256 {
        self.hasher
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Final path of a verified bundle.
pub fn bundle_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.raucb"))
}

/// Path of the partial download.
pub fn part_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.raucb.part"))
}

/// Free bytes for unprivileged use on the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> Result<u64, DownloadError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| DownloadError::Io {
        path: dir.to_path_buf(),
        source: io::Error::from(e),
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Downloads the bundle, resuming a `.part` file, and returns the path of
/// the verified bundle. `progress` gets the byte count so far.
pub fn download(
    req: &DownloadRequest,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<PathBuf, DownloadError> {
    if req.sha256.len() != 64
        || !req
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(DownloadError::BadSha256 {
            sha256: req.sha256.clone(),
        });
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io {
            path: path.clone(),
            source,
        }
    };
    fs::create_dir_all(&req.dir).map_err(io_err(&req.dir))?;
    let done = bundle_path(&req.dir, &req.sha256);
    if done.exists() {
        // Verified before the rename; check again in case the disk lies.
        let actual = hash_file(&done)?;
        if actual == req.sha256 {
            progress(req.size);
            return Ok(done);
        }
        fs::remove_file(&done).map_err(io_err(&done))?;
    }
    let part = part_path(&req.dir, &req.sha256);
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let have = if have > req.size {
        fs::remove_file(&part).map_err(io_err(&part))?;
        0
    } else {
        have
    };
    let needed = req.size - have;
    let available = free_space(&req.dir)?;
    if needed.saturating_add(req.free_space_margin) > available {
        return Err(DownloadError::NoSpace {
            dir: req.dir.clone(),
            needed: needed.saturating_add(req.free_space_margin),
            available,
        });
    }

    let mut agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(req.read_timeout));
    if let Some(tls) = &req.tls {
        agent = agent.tls_config(tls.clone());
    }
    let agent: ureq::Agent = agent.build().into();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_once(&agent, req, &part, cancel, progress) {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt < req.attempts.max(1) => {
                tracing::warn!(attempt, error = %e, "bundle download interrupted; resuming");
                std::thread::sleep(req.retry_delay);
                if cancel.load(Ordering::Relaxed) {
                    return Err(DownloadError::Cancelled);
                }
            }
            Err(e) => return Err(e),
        }
    }

    // The whole file is there: verify it before anything may use it.
    let actual = hash_file(&part)?;
    if actual != req.sha256 {
        fs::remove_file(&part).map_err(io_err(&part))?;
        return Err(DownloadError::Sha256Mismatch {
            expected: req.sha256.clone(),
            actual,
        });
    }
    fs::rename(&part, &done).map_err(io_err(&done))?;
    File::open(&req.dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&req.dir))?;
    Ok(done)
}

/// One GET from wherever the `.part` file ends to the end of the bundle.
fn fetch_once(
    agent: &ureq::Agent,
    req: &DownloadRequest,
    part: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<(), DownloadError> {
    let io_err = |source| DownloadError::Io {
        path: part.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(false)
        .write(true)
        .read(true)
        .truncate(false)
        .open(part)
        .map_err(io_err)?;
    let mut have = file.metadata().map_err(io_err)?.len();
    if have == req.size {
        progress(have);
        return Ok(());
    }
    let mut get = agent
        .get(&req.url)
        .header("Authorization", &format!("Bearer {}", req.api_key))
        .header("Accept-Encoding", "identity");
    if have > 0 {
        get = get.header("Range", &format!("bytes={have}-"));
    }
    let resp = get.call().map_err(|source| DownloadError::Http {
        url: req.url.clone(),
        source,
    })?;
    let status = resp.status().as_u16();
    if let Some(enc) = resp.headers().get("content-encoding") {
        let enc = enc.to_str().unwrap_or("?").to_string();
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(DownloadError::Encoded {
                url: req.url.clone(),
                encoding: enc,
            });
        }
    }
    match status {
        206 => {}
        200 => {
            // The server ignored the Range: start over.
            have = 0;
            file.set_len(0).map_err(io_err)?;
        }
        _ => {
            return Err(DownloadError::Status {
                url: req.url.clone(),
                status,
            })
        }
    }
    file.seek(SeekFrom::Start(have)).map_err(io_err)?;
    progress(have);
    // The body is read on its own thread and handed over in chunks, so a
    // read blocked on a stalled stream never holds back the cancel flag;
    // the stall itself ends in `read_timeout` (ureq's per-read timeout),
    // and then the reader thread ends too.
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    let mut body = resp.into_body().into_reader();
    std::thread::Builder::new()
        .name("bundle-body".into())
        .spawn(move || loop {
            let mut buf = vec![0u8; BUFFER_SIZE];
            let r = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = r.is_err();
            if tx.send(r).is_err() || failed {
                break;
            }
        })
        .map_err(io_err)?;
    loop {
        if cancel.load(Ordering::Relaxed) {
            file.sync_all().map_err(io_err)?;
            return Err(DownloadError::Cancelled);
        }
        let chunk = match rx.recv_timeout(CANCEL_CHECK) {
            Ok(Ok(chunk)) => chunk,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            // The reader ended: the body is complete (or short, below).
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Err(source)) => {
                // Keep what arrived: the next attempt resumes after it.
                file.sync_all().map_err(io_err)?;
                return Err(DownloadError::Interrupted {
                    url: req.url.clone(),
                    at: have,
                    size: req.size,
                    source,
                });
            }
        };
        let n = chunk.len();
        if have + n as u64 > req.size {
            drop(file);
            fs::remove_file(part).map_err(io_err)?;
            return Err(DownloadError::TooLong {
                url: req.url.clone(),
                size: req.size,
            });
        }
        file.write_all(&chunk).map_err(io_err)?;
        have += n as u64;
        progress(have);
    }
    file.sync_all().map_err(io_err)?;
    if have < req.size {
        return Err(DownloadError::Interrupted {
            url: req.url.clone(),
            at: have,
            size: req.size,
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "body ended early"),
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, read through [`HashingReader`].
pub fn hash_file(path: &Path) -> Result<String, DownloadError> {
    let io_err = |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io_err)?;
    let mut r = HashingReader::new(f, Sha256::new());
    io::copy(&mut r, &mut io::sink()).map_err(io_err)?;
    Ok(hex::encode(r.into_hasher().finalize()))
}
