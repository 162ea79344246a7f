//! Test helpers: a private dbus-daemon with the real `rauc service` on
//! file-backed slots and a custom bootloader script, RAUC bundles made with
//! `rauc bundle`, and a tiny HTTP server with Range support that can drop
//! connections on purpose.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resin_osupdate::rauc::Rauc;
use sha2::{Digest, Sha256};

pub const COMPATIBLE: &str = "resin-test";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is missing: install the Debian packages in scripts/lib/common.sh (rauc rauc-service dbus openssl squashfs-tools), e.g. by running scripts/services.sh or scripts/test.sh"
    );
}

/// A private bus with RAUC's service on two 64 MiB file slots.
pub struct RaucEnv {
    pub dir: tempfile::TempDir,
    pub address: String,
    bus: Child,
    service: Option<Child>,
}

impl RaucEnv {
    /// Starts everything with slot `A` booted.
    pub async fn start() -> Self {
        for t in ["rauc", "dbus-daemon", "openssl", "mksquashfs"] {
            need(t);
        }
        let dir = tempfile::Builder::new()
            .prefix("osupdate-rauc-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("bus.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={}/bus.sock</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
"#,
                d.display()
            ),
        )
        .unwrap();
        // The custom bootloader backend keeps primary and per-slot state in
        // files, so Mark and boot-order changes are real and inspectable.
        let script = d.join("bootloader.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
D={}
echo "$@" >> $D/bl.log
case "$1" in
get-primary) cat $D/bl.primary 2>/dev/null || echo A ;;
set-primary) echo "$2" > $D/bl.primary ;;
get-state) cat $D/bl.state.$2 2>/dev/null || echo good ;;
set-state)
  # bl.fail-bad holds how many of the next "bad" marks fail.
  if [ "$3" = bad ] && [ -s $D/bl.fail-bad ]; then
    n=$(cat $D/bl.fail-bad)
    if [ "$n" -gt 0 ]; then echo $((n-1)) > $D/bl.fail-bad; exit 1; fi
  fi
  echo "$3" > $D/bl.state.$2 ;;
*) exit 1 ;;
esac
"#,
                d.display()
            ),
        )
        .unwrap();
        run(Command::new("chmod").arg("+x").arg(&script));
        for s in ["slotA.img", "slotB.img"] {
            run(Command::new("truncate").args(["-s", "64M"]).arg(d.join(s)));
        }
        // Dev keys made the way the product makes them (resin-imagegen keys).
        for signer in ["ca", "foreign"] {
            resin_imagegen::rauc::make_dev_keys(
                &d.join(format!("keys-{signer}")),
                &format!("resin test {signer}"),
            )
            .unwrap_or_else(|e| panic!("resin-imagegen keys: {e}"));
        }
        std::fs::create_dir_all(d.join("mnt")).unwrap();
        std::fs::write(
            d.join("system.conf"),
            format!(
                "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nbundle-formats=plain\nmountprefix={d}/mnt\ndata-directory={d}/data\n\n[keyring]\npath={d}/keys-ca/keyring.pem\n\n[handlers]\nbootloader-custom-backend={d}/bootloader.sh\n\n[slot.rootfs.0]\ndevice={d}/slotA.img\ntype=raw\nbootname=A\n\n[slot.rootfs.1]\ndevice={d}/slotB.img\ntype=raw\nbootname=B\n",
                d = d.display()
            ),
        )
        .unwrap();
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", d.join("bus.conf").display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sock = d.join("bus.sock");
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "dbus-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let address = format!("unix:path={}", sock.display());
        let mut env = Self {
            dir,
            address,
            bus,
            service: None,
        };
        env.start_service("A").await;
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)starts `rauc service` as if the system had booted `bootname`.
    pub async fn start_service(&mut self, bootname: &str) {
        self.stop_service();
        let d = self.path().to_path_buf();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rauc-service.log"))
            .unwrap();
        let child = Command::new("rauc")
            .arg(format!("--conf={}", d.join("system.conf").display()))
            .arg("service")
            .arg(format!("--override-boot-slot={bootname}"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.service = Some(child);
        let t0 = Instant::now();
        loop {
            if let Ok(r) = Rauc::connect(Some(&self.address)).await {
                if r.operation().await.is_ok() {
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "rauc service did not come up: {}",
                std::fs::read_to_string(d.join("rauc-service.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop_service(&mut self) {
        if let Some(mut c) = self.service.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn rauc(&self) -> Rauc {
        Rauc::connect(Some(&self.address)).await.unwrap()
    }

    pub fn slot(&self, bootname: &str) -> PathBuf {
        self.path().join(format!("slot{bootname}.img"))
    }

    /// Bootloader state the custom backend holds for `bootname`.
    pub fn bl_state(&self, bootname: &str) -> String {
        std::fs::read_to_string(self.path().join(format!("bl.state.{bootname}")))
            .unwrap_or_else(|_| "good".into())
            .trim()
            .to_string()
    }

    /// Makes the bootloader backend fail the next `n` marks of a slot as
    /// bad (RAUC's `Mark("bad", …)` then fails).
    pub fn fail_mark_bad(&self, n: u32) {
        std::fs::write(self.path().join("bl.fail-bad"), format!("{n}\n")).unwrap();
    }

    pub fn bl_primary(&self) -> String {
        std::fs::read_to_string(self.path().join("bl.primary"))
            .unwrap_or_else(|_| "A".into())
            .trim()
            .to_string()
    }

    /// A plain-format bundle made by `resin-imagegen bundle` (its library
    /// entry point) holding `payload` as the rootfs image, signed with the
    /// system's dev keys (`signer = "ca"`) or foreign ones (`"foreign"`).
    pub fn bundle(
        &self,
        name: &str,
        version: &str,
        compatible: &str,
        signer: &str,
        payload: &[u8],
    ) -> PathBuf {
        let d = self.path();
        let image = d.join(format!("payload-{name}.ext4"));
        std::fs::write(&image, payload).unwrap();
        let keys = d.join(format!("keys-{signer}"));
        let out = d.join(format!("{name}.raucb"));
        resin_imagegen::rauc::make_bundle(&resin_imagegen::rauc::BundleSpec {
            rootfs: image,
            cert: keys.join("signing.cert.pem"),
            key: keys.join("signing.key.pem"),
            keyring: None,
            compatible: compatible.to_string(),
            version: version.to_string(),
            format: resin_imagegen::rauc::BundleFormat::Plain,
            compression: Default::default(),
            image_size: None,
            slot_size: None,
            output: out.clone(),
        })
        .unwrap_or_else(|e| panic!("resin-imagegen bundle: {e}"));
        out
    }
}

impl Drop for RaucEnv {
    fn drop(&mut self) {
        self.stop_service();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), &mut v[..]);
    v
}

/// A one-file HTTP/1.1 server on 127.0.0.1 with `Range: bytes=N-`
/// support and Bearer auth. `cuts` lists, per connection in order, after
/// how many body bytes to drop the connection.
pub struct FileServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    pub served: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start(body: Vec<u8>, key: &str, cuts: Vec<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/os/bundle/1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(body);
        let cuts = Arc::new(Mutex::new(cuts.into_iter()));
        let key = key.to_string();
        {
            let requests = requests.clone();
            let served = served.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { return };
                    let cut = cuts.lock().unwrap().next();
                    let _ = serve(conn, &body, &key, cut, &requests, &served);
                }
            });
        }
        Self {
            url,
            requests,
            served,
        }
    }
}

fn serve(
    mut conn: TcpStream,
    body: &[u8],
    key: &str,
    cut: Option<u64>,
    requests: &Mutex<Vec<String>>,
    served: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    requests.lock().unwrap().push(head.clone());
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    if header("authorization").as_deref() != Some(&format!("Bearer {key}")) {
        conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let start = header("range")
        .and_then(|r| r.strip_prefix("bytes=").map(str::to_string))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
    let (status, from) = match start {
        Some(s) if s < body.len() => ("206 Partial Content", s),
        Some(_) => {
            conn.write_all(b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        }
        None => ("200 OK", 0),
    };
    let rest = &body[from..];
    let mut headers = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        rest.len()
    );
    if from > 0 {
        headers.push_str(&format!(
            "Content-Range: bytes {from}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        ));
    }
    headers.push_str("\r\n");
    conn.write_all(headers.as_bytes())?;
    let n = cut
        .map(|c| (c as usize).min(rest.len()))
        .unwrap_or(rest.len());
    conn.write_all(&rest[..n])?;
    served.fetch_add(n, Ordering::SeqCst);
    conn.flush()?;
    drop(reader);
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let _ = conn.read(&mut [0u8; 1]);
    Ok(())
}
