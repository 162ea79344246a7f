//! The stored login: `~/.config/resin/cli.json` (`$XDG_CONFIG_HOME/resin/cli.json`
//! when that is set), holding the API URL and key, mode 0600.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `resin login` stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogin {
    pub api_url: String,
    pub api_key: String,
    /// The CA file given to `resin login --ca` (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find a config directory: neither XDG_CONFIG_HOME nor HOME is set")]
    NoHome,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid resin CLI config: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Atomic(#[from] resin_fsutil::Error),
}

/// `$XDG_CONFIG_HOME/resin/cli.json`, else `$HOME/.config/resin/cli.json`.
pub fn default_path() -> Result<PathBuf, ConfigError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(ConfigError::NoHome)?).join(".config"),
    };
    Ok(base.join("resin").join("cli.json"))
}

/// Loads the stored login; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<StoredLogin>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Stores the login: directory 0700, file 0600, temp file + fsync + rename.
pub fn save(path: &Path, login: &StoredLogin) -> Result<(), ConfigError> {
    let werr = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(werr)?;
    }
    let mut body = serde_json::to_vec_pretty(login).map_err(|e| werr(std::io::Error::other(e)))?;
    body.push(b'\n');
    Ok(resin_fsutil::write_atomic(path, &body, 0o600)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_then_load_round_trips_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/cli.json");
        assert_eq!(load(&p).unwrap(), None);
        let l = StoredLogin {
            ca: None,
            api_url: "http://127.0.0.1:1".into(),
            api_key: "k".into(),
        };
        save(&p, &l).unwrap();
        assert_eq!(load(&p).unwrap(), Some(l));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn garbage_config_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cli.json");
        std::fs::write(&p, "{nope").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("not a valid resin CLI config"), "{e}");
    }
}
