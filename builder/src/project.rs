//! The project a build starts from: a directory with a docker-compose.yml
//! (services with `build:` contexts or `image:` references) or a single
//! Dockerfile. Parsed and validated only through api-types' compose module.

use std::path::{Path, PathBuf};

use resin_api_types::build::{parse_build_project, BuildProject, ServiceSource};
use resin_api_types::compose::{kv_map, BareKey};
use serde_json::Value;

use crate::error::BuildError;

/// The compose file names looked for, in this order.
pub const COMPOSE_FILES: &[&str] = &[
    "docker-compose.yml",
    "docker-compose.yaml",
    "compose.yml",
    "compose.yaml",
];

/// A loaded project: its root and its validated services.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub project: BuildProject,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads and checks the project at `root`: the compose document is valid,
/// every build context is a directory inside the project and has its
/// Dockerfile.
pub fn load(root: &Path) -> Result<Project, BuildError> {
    let compose = COMPOSE_FILES
        .iter()
        .map(|f| root.join(f))
        .find(|p| p.is_file());
    let project = match compose {
        Some(file) => {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            let doc = yaml_to_json(&name, &text)?;
            parse_build_project(&doc)
                .map_err(|source| BuildError::Compose { file: name, source })?
        }
        None if root.join("Dockerfile").is_file() => BuildProject::single_dockerfile(),
        None => return Err(BuildError::EmptyProject),
    };
    let canon_root = root.canonicalize().map_err(io(root))?;
    for (service, source) in &project.services {
        let ServiceSource::Build(spec) = source else {
            continue;
        };
        let ctx = root.join(&spec.context);
        let inside = ctx
            .canonicalize()
            .map(|c| c.starts_with(&canon_root) && c.is_dir())
            .unwrap_or(false);
        if !inside {
            return Err(BuildError::MissingContext {
                service: service.clone(),
                context: spec.context.clone(),
            });
        }
        let df = ctx.join(&spec.dockerfile);
        let df_ok = df
            .canonicalize()
            .map(|c| c.starts_with(&canon_root) && c.is_file())
            .unwrap_or(false);
        if !df_ok {
            let shown = if spec.context == "." {
                spec.dockerfile.clone()
            } else {
                format!("{}/{}", spec.context, spec.dockerfile)
            };
            return Err(BuildError::MissingDockerfile {
                service: service.clone(),
                path: shown,
            });
        }
    }
    Ok(Project {
        root: root.to_owned(),
        project,
    })
}

/// A compose file's YAML as the JSON document the validator reads: merge
/// keys applied, `x-` extension fields dropped, `- KEY` list entries of
/// `environment`/`labels` made `KEY=""` (as the CLI does for `resin release
/// create`).
pub fn yaml_to_json(file: &str, text: &str) -> Result<Value, BuildError> {
    let yaml_err = |source| BuildError::Yaml {
        file: file.to_owned(),
        source,
    };
    let mut doc: serde_norway::Value = serde_norway::from_str(text).map_err(yaml_err)?;
    doc.apply_merge().map_err(yaml_err)?;
    let shape = |message: String| BuildError::ComposeShape {
        file: file.to_owned(),
        message,
    };
    let mut json = serde_json::to_value(&doc)
        .map_err(|e| shape(format!("cannot be read as a JSON document: {e}")))?;
    let Value::Object(root) = &mut json else {
        return Err(shape(
            "the compose file must be a mapping with a `services` key".into(),
        ));
    };
    root.retain(|k, _| !k.starts_with("x-"));
    if let Some(Value::Object(services)) = root.get_mut("services") {
        for (name, svc) in services.iter_mut() {
            let Value::Object(svc) = svc else { continue };
            svc.retain(|k, _| !k.starts_with("x-"));
            for key in ["environment", "labels"] {
                if let Some(v) = svc.get_mut(key) {
                    let map = kv_map(&format!("services.{name}.{key}"), v, BareKey::Empty)
                        .map_err(|source| BuildError::Compose {
                            file: file.to_owned(),
                            source,
                        })?;
                    *v = Value::Object(
                        map.into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect(),
                    );
                }
            }
        }
    }
    Ok(json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn an_empty_directory_is_an_empty_project() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(load(d.path()), Err(BuildError::EmptyProject)));
    }

    #[test]
    fn a_single_dockerfile_is_service_main() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM x\n");
        let p = load(d.path()).unwrap();
        assert_eq!(p.project.services.keys().collect::<Vec<_>>(), ["main"]);
    }

    #[test]
    fn a_missing_dockerfile_names_the_service_and_path() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "docker-compose.yml",
            "services:\n  web:\n    build: ./web\n",
        );
        std::fs::create_dir_all(d.path().join("web")).unwrap();
        let e = load(d.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service web: no Dockerfile at \"web/Dockerfile\""
        );
    }

    #[test]
    fn a_bad_compose_file_is_refused_by_the_api_types_validator() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "docker-compose.yml",
            "services:\n  web:\n    build: .\n    ports: ['70000:80']\n",
        );
        write(d.path(), "Dockerfile", "FROM x\n");
        let e = load(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("docker-compose.yml: services.web.ports[0]"),
            "{e}"
        );
        write(
            d.path(),
            "docker-compose.yml",
            "services:\n  web:\n    build: .\n    colour: red\n",
        );
        let e = load(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("docker-compose.yml: services.web.colour"),
            "{e}"
        );
    }

    #[test]
    fn environment_lists_and_extension_fields_are_read_like_the_cli() {
        let j = yaml_to_json(
            "c.yml",
            "x-common: &c {A: 1}\nservices:\n  web:\n    build: .\n    environment: [KEY, B=2]\n    x-note: hi\n",
        )
        .unwrap();
        assert!(j.get("x-common").is_none());
        assert_eq!(j["services"]["web"]["environment"]["KEY"], "");
        assert_eq!(j["services"]["web"]["environment"]["B"], "2");
        assert!(j["services"]["web"].get("x-note").is_none());
    }
}
