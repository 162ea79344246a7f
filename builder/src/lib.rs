//! resin's builder: turns a project (a docker-compose.yml with `build:`
//! contexts, or a single Dockerfile) into images for the fleet's
//! architecture, pushes them to the registry under one repository per fleet
//! and service, and yields the release composition with every image pinned
//! by digest. `git push` and `resin push` both end here.
//!
//! Steps of [`run`]: load and validate the project (api-types' compose
//! validator) → check the registry answers → build every `build:` service at
//! once with the engine's classic builder for the fleet's platform (binfmt
//! runs foreign `RUN` steps) and check the architecture the engine recorded,
//! while each `image:` service is pulled and pinned → only then push the
//! built images (an image identical to the fleet cache's `latest`, which an
//! earlier build pushed, is found in the registry instead) → read each
//! manifest's config back from the registry and check its architecture →
//! pin the composition. Nothing is pushed unless every service built, so a
//! failed build leaves no half-made release behind.

pub mod context;
pub mod engine;
pub mod error;
pub mod project;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use resin_api_types::build::{BuildLogLine, BuildState, ServiceSource};
use resin_api_types::ReleaseTarget;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

pub use error::BuildError;

/// Limits of one build.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole build, from loading the project to the last push.
    pub timeout: Duration,
    /// The largest context (sum of file sizes) of one service.
    pub max_context_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30 * 60),
            max_context_bytes: 500 << 20,
        }
    }
}

/// What to build and where the images go.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The unpacked project.
    pub project_dir: PathBuf,
    /// The registry (`host[:port]`) the engine pushes to.
    pub registry: String,
    /// The same registry as devices reach it, when that name differs (a
    /// registry behind another address or proxy): the release's images are
    /// named `<device_registry>/<namespace>/<service>@<digest>`. `None`:
    /// `registry`.
    pub device_registry: Option<String>,
    /// The fleet's namespace in the registry: repositories are
    /// `<registry>/<namespace>/<service>`; lowercase, `[a-z0-9._-]`.
    pub namespace: String,
    /// e.g. `linux/arm64`, from the fleet's device type.
    pub platform: String,
    /// The tag pushed (unique per build, e.g. `build-42`).
    pub tag: String,
    /// Build without the fleet's layer cache.
    pub nocache: bool,
    pub limits: Limits,
}

/// A successful build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The release composition, every image pinned (`repo@sha256:…`).
    pub composition: Value,
    pub target: ReleaseTarget,
    /// Service → pinned image.
    pub images: BTreeMap<String, String>,
}

/// A build's state machine: each transition is checked against
/// [`BuildState::can_go`], logged with tracing and sent to the build log.
#[derive(Debug)]
pub struct Machine {
    state: BuildState,
    log: UnboundedSender<BuildLogLine>,
}

impl Machine {
    pub fn new(log: UnboundedSender<BuildLogLine>) -> Machine {
        Machine {
            state: BuildState::Queued,
            log,
        }
    }

    pub fn state(&self) -> BuildState {
        self.state
    }

    /// Moves to `to`, or refuses (and changes nothing) when the transition
    /// is not allowed.
    pub fn go(&mut self, to: BuildState, why: &str) -> Result<(), BuildError> {
        if !self.state.can_go(to) {
            return Err(BuildError::Invalid(format!(
                "a build cannot go from {} to {to}",
                self.state
            )));
        }
        tracing::info!(from = %self.state, to = %to, "build: {why}");
        self.state = to;
        let _ = self.log.send(BuildLogLine {
            service: None,
            message: why.to_owned(),
            state: Some(to),
            release: None,
            is_error: to == BuildState::Failed,
        });
        Ok(())
    }
}

/// Repository for one service of a namespace: `<registry>/<ns>/<service>`.
pub fn repository(registry: &str, namespace: &str, service: &str) -> String {
    let s: String = service
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{registry}/{namespace}/{s}")
}

/// What a build leaves in the engine to remove afterwards: its own tags
/// (`<repo>:<tag>`), and the fleet cache's previous image once `latest`
/// moved on. Filled while the build runs, so a caller that drops the build
/// (cancelled, timed out) still knows what to remove.
#[derive(Debug, Default, Clone)]
pub struct Leftovers(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Leftovers {
    fn add(&self, image: String) {
        if let Ok(mut v) = self.0.lock() {
            v.push(image);
        }
    }

    /// Removes them, all at once (errors other than "not found" are logged).
    pub async fn remove(&self, docker: &Docker) {
        let images = self.0.lock().map(|mut v| std::mem::take(&mut *v));
        let images = images.unwrap_or_default();
        futures_util::future::join_all(images.iter().map(|t| engine::untag(docker, t))).await;
    }
}

/// Runs a build under its timeout and removes what it leaves behind: a
/// failed build leaves no image, a successful one its pushed image and the
/// fleet cache's `latest`. The caller drives the state machine: see
/// [`run_machine`] for the usual wrapping.
pub async fn run(
    docker: &Docker,
    req: &BuildRequest,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<BuildOutput, BuildError> {
    let leftovers = Leftovers::default();
    let r = run_leaving(docker, req, log, &leftovers).await;
    leftovers.remove(docker).await;
    r
}

/// [`run`] without the clean-up: what is to be removed is in `leftovers`,
/// for the caller to remove once it has recorded the outcome.
pub async fn run_leaving(
    docker: &Docker,
    req: &BuildRequest,
    log: &UnboundedSender<BuildLogLine>,
    leftovers: &Leftovers,
) -> Result<BuildOutput, BuildError> {
    let secs = req.limits.timeout.as_secs();
    match tokio::time::timeout(req.limits.timeout, run_inner(docker, req, log, leftovers)).await {
        Ok(r) => r,
        Err(_) => Err(BuildError::Timeout(secs)),
    }
}

/// [`run`] inside the state machine: queued → building → success or
/// failed; the error is also the last log line.
pub async fn run_machine(
    docker: &Docker,
    req: &BuildRequest,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<BuildOutput, BuildError> {
    let mut m = Machine::new(log.clone());
    m.go(BuildState::Building, "building")?;
    match run(docker, req, log).await {
        Ok(out) => {
            m.go(BuildState::Success, "build succeeded")?;
            Ok(out)
        }
        Err(e) => {
            m.go(BuildState::Failed, &format!("build failed: {e}"))?;
            Err(e)
        }
    }
}

async fn run_inner(
    docker: &Docker,
    req: &BuildRequest,
    log: &UnboundedSender<BuildLogLine>,
    leftovers: &Leftovers,
) -> Result<BuildOutput, BuildError> {
    let dir = req.project_dir.clone();
    let project = tokio::task::spawn_blocking(move || project::load(&dir))
        .await
        .map_err(|e| BuildError::Invalid(format!("loading the project: {e}")))??;
    let registry = req.registry.clone();
    tokio::task::spawn_blocking(move || registry::reachable(&registry))
        .await
        .map_err(|e| BuildError::Invalid(format!("checking the registry: {e}")))??;
    let arch = engine::arch_of(&req.platform).to_owned();
    engine::say(
        log,
        None,
        format!(
            "{} service(s) for {}: {}",
            project.project.services.len(),
            req.platform,
            project
                .project
                .services
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    // Every service at once: the engine builds side by side, and a pull
    // waits for the network, not for the other builds. The first error
    // drops the others' requests, which stops their builds.
    let mut builds = Vec::new();
    let mut pulls = Vec::new();
    for (service, source) in &project.project.services {
        match source {
            ServiceSource::Build(spec) => {
                let repo = repository(&req.registry, &req.namespace, service);
                leftovers.add(format!("{repo}:{}", req.tag));
                builds.push(build_service(
                    docker,
                    req,
                    project.root.join(&spec.context),
                    service,
                    spec,
                    repo,
                    &arch,
                    log,
                ));
            }
            ServiceSource::Image(image) => pulls.push(async move {
                engine::pull_pinned(docker, service, image, &req.platform, log)
                    .await
                    .map(|pinned| (service.clone(), pinned))
            }),
        }
    }
    let (built, pulled) = futures_util::future::try_join(
        futures_util::future::try_join_all(builds),
        futures_util::future::try_join_all(pulls),
    )
    .await?;
    let mut images: BTreeMap<String, String> = pulled.into_iter().collect();
    // Only now, with every service built: push (or find the unchanged image
    // already in the registry), all at once.
    let pushed = futures_util::future::try_join_all(
        built.iter().map(|b| publish(docker, req, b, &arch, log)),
    )
    .await?;
    for (service, pinned) in pushed {
        images.insert(service, pinned);
    }
    // The fleet's layer cache: the last successful build of each service.
    // The previous cache image goes (with the leftovers) once nothing names it.
    futures_util::future::try_join_all(built.iter().map(|b| async move {
        if b.unchanged.is_some() {
            return Ok(());
        }
        engine::tag(
            docker,
            &format!("{}:{}", b.repo, req.tag),
            &b.repo,
            "latest",
        )
        .await?;
        if let Some(old) = b.previous.clone().filter(|o| *o != b.id) {
            leftovers.add(old);
        }
        Ok::<(), BuildError>(())
    }))
    .await?;
    let (composition, target) =
        project
            .project
            .pin(&images)
            .map_err(|source| BuildError::Compose {
                file: "the pinned composition".into(),
                source,
            })?;
    for (s, i) in &images {
        engine::say(log, Some(s), format!("image {i}"));
    }
    Ok(BuildOutput {
        composition,
        target,
        images,
    })
}

/// One built service, not yet pushed.
struct Built {
    service: String,
    repo: String,
    /// The image id the engine built.
    id: String,
    /// The image the fleet cache's `latest` named before this build.
    previous: Option<String>,
    /// The digest under which the registry already holds this very image:
    /// the build changed nothing since the fleet's last build (every step
    /// came from the cache), and that build pushed it.
    unchanged: Option<String>,
}

/// Packs one service's context and builds it for the fleet's platform;
/// checks the architecture the engine recorded.
#[allow(clippy::too_many_arguments)]
async fn build_service(
    docker: &Docker,
    req: &BuildRequest,
    ctx_dir: PathBuf,
    service: &str,
    spec: &resin_api_types::build::BuildSpec,
    repo: String,
    arch: &str,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<Built, BuildError> {
    let (svc, df, limit) = (
        service.to_owned(),
        spec.dockerfile.clone(),
        req.limits.max_context_bytes,
    );
    let tar = tokio::task::spawn_blocking(move || {
        context::tar_context(&svc, &ctx_dir, &[df.as_str()], limit)
    })
    .await
    .map_err(|e| BuildError::Invalid(format!("packing the context: {e}")))??;
    engine::say(
        log,
        Some(service),
        format!(
            "building {} ({} KiB context, {})",
            spec.context,
            tar.len() / 1024,
            if req.nocache {
                "no cache"
            } else {
                "fleet cache"
            }
        ),
    );
    // The fleet's layer cache: with `cachefrom` set, the classic builder
    // takes cache only from those images (one that does not exist yet gives
    // none), never from other fleets' images.
    let latest = format!("{repo}:latest");
    let image = format!("{repo}:{}", req.tag);
    let id = engine::build(
        docker,
        engine::BuildArgs {
            service,
            tag: &image,
            dockerfile: &spec.dockerfile,
            platform: &req.platform,
            nocache: req.nocache,
            cache_from: vec![latest.clone()],
            args: spec.args.clone().into_iter().collect::<HashMap<_, _>>(),
        },
        tar,
        log,
    )
    .await?;
    let built = docker
        .inspect_image(&image)
        .await
        .map_err(BuildError::Engine)?;
    let found = built.architecture.clone().unwrap_or_default();
    if found != arch {
        return Err(BuildError::WrongArchitecture {
            service: service.to_owned(),
            expected: arch.to_owned(),
            found,
        });
    }
    let id = built.id.clone().unwrap_or(id);
    // The same image as the cache's `latest`, which an earlier build pushed
    // (the engine remembers the digest it pushed under).
    let previous = docker.inspect_image(&latest).await.ok().and_then(|l| l.id);
    let unchanged = match &previous {
        Some(p) if *p == id => built
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find_map(|d| {
                let (r, digest) = d.split_once('@')?;
                (r == repo).then(|| digest.to_owned())
            }),
        _ => None,
    };
    Ok(Built {
        service: service.to_owned(),
        repo,
        id,
        previous,
        unchanged,
    })
}

/// Pushes one built service (or, when it is unchanged, finds it already in
/// the registry), checks the architecture of the config the registry holds
/// for the digest, and returns the service with its pinned image.
async fn publish(
    docker: &Docker,
    req: &BuildRequest,
    b: &Built,
    arch: &str,
    log: &UnboundedSender<BuildLogLine>,
) -> Result<(String, String), BuildError> {
    let service = b.service.as_str();
    let check = |digest: String| {
        let r = b.repo.clone();
        async move {
            let d = digest.clone();
            tokio::task::spawn_blocking(move || registry::architecture(&r, &d))
                .await
                .map_err(|e| BuildError::Invalid(format!("reading the manifest: {e}")))?
                .map(|found| (digest, found))
        }
    };
    let known = match &b.unchanged {
        // Still there? (a registry can be wiped or garbage-collected).
        Some(d) => match check(d.clone()).await {
            Ok(r) => {
                engine::say(
                    log,
                    Some(service),
                    format!(
                        "unchanged since the fleet's last build: {}@{}, already in the registry",
                        b.repo, r.0
                    ),
                );
                Some(r)
            }
            Err(e) => {
                tracing::info!(%service, "the cached digest is not usable, pushing: {e}");
                None
            }
        },
        None => None,
    };
    let (digest, found) = match known {
        Some(r) => r,
        None => {
            engine::say(
                log,
                Some(service),
                format!("pushing {}:{}", b.repo, req.tag),
            );
            let digest = engine::push(docker, &b.repo, &req.tag, service, log).await?;
            check(digest).await?
        }
    };
    if found != arch {
        return Err(BuildError::WrongArchitecture {
            service: service.to_owned(),
            expected: arch.to_owned(),
            found,
        });
    }
    let named = match &req.device_registry {
        Some(d) => repository(d, &req.namespace, service),
        None => b.repo.clone(),
    };
    Ok((service.to_owned(), format!("{named}@{digest}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_refuses_a_transition_it_does_not_have() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut m = Machine::new(tx);
        assert!(m.go(BuildState::Success, "x").is_err());
        assert_eq!(m.state(), BuildState::Queued);
        m.go(BuildState::Building, "building").unwrap();
        m.go(BuildState::Failed, "boom").unwrap();
        assert!(m.go(BuildState::Success, "late").is_err());
        assert_eq!(m.state(), BuildState::Failed);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.state, Some(BuildState::Building));
        let second = rx.try_recv().unwrap();
        assert!(second.is_error);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn repositories_are_per_namespace_and_service() {
        assert_eq!(
            repository("r:5000", "fleet-1", "Web_App"),
            "r:5000/fleet-1/web_app"
        );
    }
}
