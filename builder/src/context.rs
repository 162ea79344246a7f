//! A service's build context as the tar the engine reads: the files of the
//! context directory minus what its `.dockerignore` excludes (the
//! Dockerfile and `.dockerignore` are always sent), refused once it grows
//! over the size limit.

use std::path::Path;

use resin_api_types::build::DockerIgnore as Ignore;

use crate::error::BuildError;

/// Makes the tar of `dir` for `service`; `always` are relative paths sent
/// even when ignored (the Dockerfile). Fails once the files' sizes add up
/// to more than `limit` bytes.
pub fn tar_context(
    service: &str,
    dir: &Path,
    always: &[&str],
    limit: u64,
) -> Result<Vec<u8>, BuildError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(t) => Ignore::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(io(&dir.join(".dockerignore"))(e)),
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut total: u64 = 0;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.is_empty() {
            dir.to_owned()
        } else {
            dir.join(&rel)
        };
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(io(&abs))?
            .collect::<Result<_, _>>()
            .map_err(io(&abs))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let forced = always.contains(&r.as_str()) || r == ".dockerignore";
            let ft = e.file_type().map_err(io(&e.path()))?;
            if !forced && ignore.excluded(&r) && !ft.is_dir() {
                continue;
            }
            if ft.is_dir() {
                // A directory whose pattern matches may still hold re-included
                // files; walk it, but only add it when not excluded.
                if !ignore.excluded(&r) {
                    builder.append_dir(&r, e.path()).map_err(io(&e.path()))?;
                }
                stack.push(r);
                continue;
            }
            if ft.is_file() {
                let len = e.metadata().map_err(io(&e.path()))?.len();
                total = total.saturating_add(len);
                if total > limit {
                    return Err(BuildError::ContextTooLarge {
                        service: service.to_owned(),
                        limit,
                    });
                }
            }
            builder
                .append_path_with_name(e.path(), &r)
                .map_err(io(&e.path()))?;
        }
    }
    builder.into_inner().map_err(io(dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_context_tar_honours_dockerignore_and_the_limit() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "big\nDockerfile\n").unwrap();
        std::fs::write(d.path().join("big"), vec![0u8; 4096]).unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/a"), "a").unwrap();
        let t = tar_context("web", d.path(), &["Dockerfile"], 1000).unwrap();
        let n = names(&t);
        assert!(n.contains(&"Dockerfile".to_string()), "{n:?}");
        assert!(n.contains(&"src/a".to_string()), "{n:?}");
        assert!(!n.contains(&"big".to_string()), "{n:?}");
        std::fs::write(d.path().join(".dockerignore"), "").unwrap();
        let e = tar_context("web", d.path(), &["Dockerfile"], 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service web: the build context is over the limit of 1000 bytes"
        );
    }
}
