//! The external tools resin-imagegen runs, and a check that each one is
//! installed and starts (`resin-imagegen preflight`), so a missing Debian
//! package is named before a build fails halfway.
//!
//! The list is kept honest by a test: every program this crate's sources
//! start with `Command::new` must be listed here.

use std::process::{Command, Stdio};

/// One external tool: its name, arguments that make it print its version and
/// exit, and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub name: &'static str,
    pub version_args: &'static [&'static str],
    pub package: &'static str,
}

/// Every tool the crate executes.
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "mkfs.ext4",
        version_args: &["-V"],
        package: "e2fsprogs",
    },
    Tool {
        name: "debugfs",
        version_args: &["-V"],
        package: "e2fsprogs",
    },
    Tool {
        name: "dumpe2fs",
        version_args: &["-V"],
        package: "e2fsprogs",
    },
    Tool {
        name: "e2fsck",
        version_args: &["-V"],
        package: "e2fsprogs",
    },
    Tool {
        name: "mkfs.vfat",
        version_args: &["--help"],
        package: "dosfstools",
    },
    Tool {
        name: "mcopy",
        version_args: &["--version"],
        package: "mtools",
    },
    Tool {
        name: "tar",
        version_args: &["--version"],
        package: "tar",
    },
    Tool {
        name: "qemu-img",
        version_args: &["--version"],
        package: "qemu-utils",
    },
    Tool {
        name: "veritysetup",
        version_args: &["--version"],
        package: "cryptsetup-bin",
    },
    Tool {
        name: "openssl",
        version_args: &["version"],
        package: "openssl",
    },
    Tool {
        name: "rauc",
        version_args: &["--version"],
        package: "rauc",
    },
    Tool {
        name: "mksquashfs",
        version_args: &["-version"],
        package: "squashfs-tools",
    },
];

/// Errors of the preflight.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{tool} is missing (Debian package {package}): {source}")]
    Missing {
        tool: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs each tool with its version arguments; the first one that cannot be
/// started is an error naming its package. The exit status is not judged
/// (some tools exit non-zero after printing their version).
pub fn check() -> Result<Vec<&'static str>, PreflightError> {
    let mut ok = Vec::new();
    for t in TOOLS {
        Command::new(t.name)
            .args(t.version_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| PreflightError::Missing {
                tool: t.name,
                package: t.package,
                source,
            })?;
        ok.push(t.name);
    }
    Ok(ok)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every program the crate's sources start is in TOOLS.
    #[test]
    fn every_executed_tool_is_listed() {
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut seen = Vec::new();
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("Command::new(\"").skip(1) {
                    let name = part.split('"').next().unwrap().to_string();
                    seen.push((name, p.display().to_string()));
                }
            }
        }
        assert!(
            !seen.is_empty(),
            "no Command::new found: the scan is broken"
        );
        for (name, file) in seen {
            assert!(
                TOOLS.iter().any(|t| t.name == name),
                "{file} runs {name:?}, which preflight::TOOLS does not list"
            );
        }
    }

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let name = "resin-no-such-tool";
        let e = Command::new(name)
            .status()
            .map_err(|source| PreflightError::Missing {
                tool: "resin-no-such-tool",
                package: "none",
                source,
            })
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("resin-no-such-tool is missing (Debian package none)"));
    }
}
