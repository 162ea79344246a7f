//! The engine side of a build, through bollard: the classic builder with
//! the `platform` option (arm64 runs under binfmt/qemu-user on an amd64
//! host), pulls, pushes, and the image's architecture as the engine records
//! it. docs/builder.md says why the classic builder and not BuildKit.

use std::collections::HashMap;

use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, PushImageOptions, TagImageOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use resin_api_types::build::BuildLogLine;

use crate::error::BuildError;

/// Sends one log line about `service`.
pub fn say(log: &UnboundedSender<BuildLogLine>, service: Option<&str>, message: impl Into<String>) {
    let _ = log.send(BuildLogLine {
        service: service.map(str::to_owned),
        message: message.into(),
        state: None,
        release: None,
        is_error: false,
    });
}

/// The architecture part of a platform (`linux/arm64` → `arm64`,
/// `linux/arm/v7` → `arm`), as image configs record it.
pub fn arch_of(platform: &str) -> &str {
    platform.split('/').nth(1).unwrap_or(platform)
}

pub struct BuildArgs<'a> {
    pub service: &'a str,
    pub tag: &'a str,
    pub dockerfile: &'a str,
    pub platform: &'a str,
    pub nocache: bool,
    pub cache_from: Vec<String>,
    pub args: HashMap<String, String>,
}

/// Builds one image from a context tar; returns the image id. The engine's
/// output goes to the log line by line.
pub async fn build(
    docker: &Docker,
    a: BuildArgs<'_>,
    context: Vec<u8>,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<String, BuildError> {
    let opts = BuildImageOptions {
        dockerfile: a.dockerfile.to_owned(),
        t: Some(a.tag.to_owned()),
        platform: a.platform.to_owned(),
        nocache: a.nocache,
        cachefrom: (!a.cache_from.is_empty()).then(|| a.cache_from.clone()),
        buildargs: (!a.args.is_empty()).then(|| a.args.clone()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    let mut id = None;
    let mut partial = String::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| match e {
            bollard::errors::Error::DockerStreamError { error } => BuildError::BuildFailed {
                service: a.service.to_owned(),
                message: error,
            },
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                BuildError::BuildFailed {
                    service: a.service.to_owned(),
                    message,
                }
            }
            e => BuildError::Engine(e),
        })?;
        if let Some(s) = info.stream {
            partial.push_str(&s);
            while let Some(i) = partial.find('\n') {
                let line: String = partial.drain(..=i).collect();
                let line = strip_ansi(line.trim_end());
                if !line.is_empty() {
                    say(log, Some(a.service), line);
                }
            }
        }
        if let Some(d) = info.error_detail {
            return Err(BuildError::BuildFailed {
                service: a.service.to_owned(),
                message: d
                    .message
                    .unwrap_or_else(|| "the engine reported an error".into()),
            });
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    if !partial.trim().is_empty() {
        say(log, Some(a.service), strip_ansi(partial.trim_end()));
    }
    match id {
        Some(id) => Ok(id),
        // Old engines print "Successfully built <id>" instead of aux.
        None => docker
            .inspect_image(a.tag)
            .await
            .ok()
            .and_then(|i| i.id)
            .ok_or_else(|| BuildError::BuildFailed {
                service: a.service.to_owned(),
                message: "the engine returned no image".into(),
            }),
    }
}

/// Whether an image exists in the engine.
pub async fn exists(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

/// Removes a tag (the image goes with its last tag); errors are only logged.
pub async fn untag(docker: &Docker, image: &str) {
    if let Err(e) = docker
        .remove_image(
            image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        if !matches!(
            e,
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            }
        ) {
            tracing::warn!(%image, "removing the build's tag: {e}");
        }
    }
}

/// Tags `image` as `repo:tag`.
pub async fn tag(docker: &Docker, image: &str, repo: &str, tag: &str) -> Result<(), BuildError> {
    docker
        .tag_image(
            image,
            Some(TagImageOptions {
                repo: Some(repo.to_owned()),
                tag: Some(tag.to_owned()),
            }),
        )
        .await
        .map_err(BuildError::Engine)
}

/// Pushes `repo:tag` and returns the manifest digest the registry stored.
pub async fn push(
    docker: &Docker,
    repo: &str,
    tag: &str,
    service: &str,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<String, BuildError> {
    let image = format!("{repo}:{tag}");
    let perr = |message: String| BuildError::Push {
        image: image.clone(),
        message,
    };
    let mut stream = docker.push_image(
        repo,
        Some(PushImageOptions {
            tag: Some(tag.to_owned()),
            ..Default::default()
        }),
        None,
    );
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| perr(e.to_string()))?;
        if let Some(d) = info.error_detail {
            return Err(perr(d.message.unwrap_or_default()));
        }
        if let Some(s) = info.status {
            // "<tag>: digest: sha256:… size: N"
            if let Some(rest) = s.split("digest: ").nth(1) {
                digest = rest.split_whitespace().next().map(str::to_owned);
            }
        }
    }
    let digest = digest.ok_or_else(|| perr("the registry returned no digest".into()))?;
    say(log, Some(service), format!("pushed {repo}@{digest}"));
    Ok(digest)
}

/// Pulls `image` for `platform` and returns it pinned (`repo@sha256:…`),
/// after checking the architecture the engine recorded.
pub async fn pull_pinned(
    docker: &Docker,
    service: &str,
    image: &str,
    platform: &str,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<String, BuildError> {
    let perr = |message: String| BuildError::Pull {
        image: image.to_owned(),
        message,
    };
    say(
        log,
        Some(service),
        format!("pulling {image} for {platform}"),
    );
    let mut stream = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(image.to_owned()),
            platform: platform.to_owned(),
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| perr(e.to_string()))?;
        if let Some(d) = info.error_detail {
            return Err(perr(d.message.unwrap_or_default()));
        }
    }
    let inspect = docker
        .inspect_image(image)
        .await
        .map_err(|e| perr(e.to_string()))?;
    let found = inspect.architecture.clone().unwrap_or_default();
    if found != arch_of(platform) {
        return Err(BuildError::WrongArchitecture {
            service: service.to_owned(),
            expected: arch_of(platform).to_owned(),
            found,
        });
    }
    let repo = repo_of(image);
    let pinned = inspect
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.split('@').next() == Some(repo))
        .ok_or_else(|| perr("the engine knows no digest for it".into()))?;
    Ok(pinned)
}

/// The repository of an image reference (without tag or digest).
pub fn repo_of(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// Drops ANSI escape sequences (the engine colours a step's stderr).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_architectures_are_read_from_references() {
        assert_eq!(repo_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b");
        assert_eq!(repo_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(repo_of("r/a@sha256:ab"), "r/a");
        assert_eq!(repo_of("busybox:1"), "busybox");
        assert_eq!(arch_of("linux/arm64"), "arm64");
        assert_eq!(arch_of("linux/arm/v7"), "arm");
        assert_eq!(strip_ansi("\u{1b}[91mboom\u{1b}[0m"), "boom");
    }
}
