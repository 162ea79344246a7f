//! A service's build context as the tar the engine reads: the files of the
//! context directory minus what its `.dockerignore` excludes (the
//! Dockerfile and `.dockerignore` are always sent), refused once it grows
//! over the size limit.

use std::path::Path;

use crate::error::BuildError;

/// `.dockerignore` patterns: `#` comments, `!` re-includes, `*`, `?` and
/// `**`; a pattern that matches a directory excludes all below it; the last
/// matching pattern wins (as in Docker).
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    rules: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Ignore {
        let mut rules = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, pat) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let parts: Vec<String> = pat
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect();
            if !parts.is_empty() {
                rules.push((neg, parts));
            }
        }
        Ignore { rules }
    }

    /// Whether the relative path `rel` (`a/b/c`) is excluded.
    pub fn excluded(&self, rel: &str) -> bool {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = false;
        for (neg, pat) in &self.rules {
            // The path or any of its parent directories matches.
            let hit = (1..=comps.len()).any(|n| match_parts(pat, &comps[..n]));
            if hit {
                out = !neg;
            }
        }
        out
    }
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_parts(rest, &path[i..])),
        Some((p, rest)) => match path.split_first() {
            Some((c, prest)) => glob(p.as_bytes(), c.as_bytes()) && match_parts(rest, prest),
            None => false,
        },
    }
}

/// `*` and `?` within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => {
            !s.is_empty() && s[0] == rest[0] && glob(&rest[1..], &s[1..])
        }
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

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

    #[test]
    fn dockerignore_patterns_match_like_docker() {
        let i = Ignore::parse("# c\nnode_modules\n*.log\n!keep.log\nsecret/**\ndocs/*.md\n");
        assert!(i.excluded("node_modules"));
        assert!(i.excluded("node_modules/a/b.js"));
        assert!(i.excluded("x.log"));
        assert!(!i.excluded("keep.log"));
        assert!(i.excluded("secret/a/b"));
        assert!(i.excluded("docs/a.md"));
        assert!(!i.excluded("docs/sub/a.md"));
        assert!(!i.excluded("src/main.rs"));
        assert!(
            !i.excluded("sub/x.log"),
            "patterns are anchored at the root"
        );
    }

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
