//! The device's inputs: the cached artefacts of `qemu-tests/scripts/assets.sh`
//! (arm64 rootfs stand-in, kernel + initrd, GRUB EFI, aarch64 supervisor), the
//! composed guest rootfs, and the A/B disk built from it by `resin-imagegen`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while building the device's inputs.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}):\n{stderr}")]
    Command {
        what: String,
        status: String,
        stderr: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AssetError {
    let what = what.into();
    move |source| AssetError::Io { what, source }
}

/// Runs `cmd`, returning its trimmed stdout; stderr is passed through to ours
/// (progress) and its tail kept for the error.
pub fn run(what: &str, cmd: &mut Command) -> Result<String, AssetError> {
    tracing::debug!(?cmd, "running");
    let out = cmd.output().map_err(io(format!("starting {what}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(AssetError::Command {
            what: what.into(),
            status: out.status.to_string(),
            stderr: crate::qemu::tail_lines(&stderr, 40),
        });
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Locations of the workspace's scripts and binaries.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The repository root.
    pub root: PathBuf,
    /// Cache of slow artefacts (rootfs, kernel, …), outside the clone.
    pub cache: PathBuf,
}

impl Workspace {
    fn script(&self) -> PathBuf {
        self.root.join("qemu-tests/scripts/assets.sh")
    }

    /// `assets.sh <step> [args]`: the path it prints.
    pub fn step(
        &self,
        step: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<PathBuf, AssetError> {
        let mut c = Command::new("bash");
        c.arg(self.script())
            .arg(step)
            .args(args)
            .env("RESIN_QEMU_CACHE", &self.cache);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = run(&format!("assets.sh {step}"), &mut c)?;
        Ok(PathBuf::from(out.lines().last().unwrap_or_default()))
    }
}

/// The RAUC keys of a test run: the device's keyring (CA), a signing cert +
/// key under it, and a foreign CA's signing pair for the bad-bundle scenario.
#[derive(Debug, Clone)]
pub struct Keys {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub foreign_cert: PathBuf,
    pub foreign_key: PathBuf,
}

/// Runs openssl quietly (its key-generation progress goes nowhere), keeping
/// stderr for the error.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Result<(), AssetError> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(io("starting openssl"))?;
    if !out.status.success() {
        return Err(AssetError::Command {
            what: format!("openssl {}", args.first().copied().unwrap_or_default()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Makes (or reuses) test keys in `dir` with openssl: CA → signing cert, and a
/// second, unrelated CA → signing cert.
pub fn make_keys(dir: &Path) -> Result<Keys, AssetError> {
    std::fs::create_dir_all(dir).map_err(io("creating the keys dir"))?;
    let k = Keys {
        ca: dir.join("ca.cert.pem"),
        cert: dir.join("signing.cert.pem"),
        key: dir.join("signing.key.pem"),
        foreign_cert: dir.join("foreign.cert.pem"),
        foreign_key: dir.join("foreign.key.pem"),
    };
    if k.foreign_key.exists() {
        return Ok(k);
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "[v3_leaf]\nbasicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .map_err(io("writing ext.cnf"))?;
    for (prefix, ca_name) in [("", "resin qemu-tests CA"), ("foreign-", "a foreign CA")] {
        let ca_key = format!("{prefix}ca.key.pem");
        let ca_cert = format!("{prefix}ca.cert.pem");
        let leaf = if prefix.is_empty() {
            "signing".to_string()
        } else {
            "foreign".to_string()
        };
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &ca_key,
                "-out",
                &ca_cert,
                "-days",
                "3650",
                "-subj",
                &format!("/CN={ca_name}"),
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{leaf}.key.pem"),
                "-out",
                &format!("{leaf}.csr"),
                "-subj",
                &format!("/CN={leaf} (resin qemu-tests)"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{leaf}.csr"),
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &format!("{leaf}.cert.pem"),
                "-days",
                "3650",
                "-extfile",
                "ext.cnf",
                "-extensions",
                "v3_leaf",
            ],
        )?;
    }
    Ok(k)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_chain_to_their_own_ca_only() {
        let d = tempfile::tempdir().unwrap();
        let k = make_keys(d.path()).unwrap();
        let verify = |ca: &Path, cert: &Path| {
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .arg(cert)
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(&k.ca, &k.cert));
        assert!(
            !verify(&k.ca, &k.foreign_cert),
            "the foreign signer must not chain to the device CA"
        );
        // A second call reuses the keys.
        let before = std::fs::read(&k.cert).unwrap();
        make_keys(d.path()).unwrap();
        assert_eq!(before, std::fs::read(&k.cert).unwrap());
    }

    #[test]
    fn run_reports_failures_with_stderr() {
        let e = run(
            "sh",
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("boom") && s.contains("3"), "{s}");
    }
}
