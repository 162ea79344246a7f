//! Compose files → the release composition the cloud stores: the YAML is
//! read with serde_norway, merge keys are applied, mapping keys become
//! strings, `environment`/`labels` lists become maps, and images are
//! replaced by the refs given on the command line. Then the document goes
//! through the one compose validator of api-types (the one the cloud runs
//! on upload), so a bad file is refused here, before anything is sent.

use std::collections::BTreeMap;

use resin_api_types::compose::{self, BareKey};
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("not valid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Compose(#[from] compose::ComposeError),
}

fn invalid(msg: impl Into<String>) -> ComposeError {
    ComposeError::Invalid(msg.into())
}

/// Parses `--image service=ref`.
pub fn parse_image_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, r)) if !svc.is_empty() && !r.is_empty() => Ok((svc.to_string(), r.to_string())),
        _ => Err(format!("expected SERVICE=IMAGE_REF, got {s:?}")),
    }
}

/// Parses and validates a compose document; `images` replaces (or supplies)
/// each named service's image.
pub fn composition(yaml: &str, images: &BTreeMap<String, String>) -> Result<Value, ComposeError> {
    let mut doc: serde_norway::Value = serde_norway::from_str(yaml)?;
    doc.apply_merge()?;
    let mut root = match to_json(doc, "")? {
        Value::Object(m) => m,
        Value::Null => return Err(invalid("the compose file is empty")),
        _ => {
            return Err(invalid(
                "the compose file must be a mapping with a `services` key",
            ))
        }
    };
    // `x-` extension fields hold YAML anchors for the file's own use; the
    // composition the cloud stores has no place for them.
    root.retain(|k, _| !k.starts_with("x-"));
    if let Some(Value::Object(services)) = root.get_mut("services") {
        for name in images.keys() {
            if !services.contains_key(name) {
                let known: Vec<&str> = services.keys().map(String::as_str).collect();
                return Err(invalid(format!(
                    "--image names service `{name}`, which the compose file does not define (it has: {})",
                    known.join(", ")
                )));
            }
        }
        for (name, svc) in services.iter_mut() {
            let Value::Object(svc) = svc else { continue };
            svc.retain(|k, _| !k.starts_with("x-"));
            if let Some(r) = images.get(name) {
                svc.insert("image".into(), Value::String(r.clone()));
                svc.remove("build");
            }
            if svc.contains_key("build") {
                return Err(invalid(format!(
                    "service `{name}` has `build:`; build it with `resin push` (or `git push`), or pass --image {name}=REF"
                )));
            }
            // A compose file's `- KEY` is `KEY=""`; the stored composition
            // is explicit.
            for key in ["environment", "labels"] {
                if let Some(v) = svc.get_mut(key) {
                    let map =
                        compose::kv_map(&format!("services.{name}.{key}"), v, BareKey::Empty)?;
                    *v = Value::Object(
                        map.into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect(),
                    );
                }
            }
        }
    }
    compose::parse_release(&Value::Object(root.clone()))?;
    Ok(Value::Object(root))
}

/// YAML → JSON: mapping keys become strings, tags are dropped, non-finite
/// floats are refused (JSON cannot carry them).
fn to_json(v: serde_norway::Value, at: &str) -> Result<Value, ComposeError> {
    use serde_norway::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .ok_or_else(|| {
                        invalid(format!("{at}: number {n} cannot be represented in JSON"))
                    })?
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, it)| to_json(it, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, val) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    other => {
                        return Err(invalid(format!(
                            "{at}: mapping key {other:?} must be a string"
                        )))
                    }
                };
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let j = to_json(val, &path)?;
                out.insert(key, j);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(t.value, at)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn imgs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    const DOC: &str = r#"
version: "2.4"
x-common: &common
  restart: always
  labels:
    - io.resin.update.strategy=kill-then-download
services:
  web:
    <<: *common
    build: ./web
    ports: ["80:8080"]
    environment:
      - MODE=prod
      - EMPTY
  worker:
    image: busybox:1
    environment:
      RETRIES: 3
      DEBUG: true
volumes:
  data: {}
"#;

    #[test]
    fn images_are_replaced_and_lists_become_maps() {
        let c = composition(DOC, &imgs(&[("web", "127.0.0.1:55000/web@sha256:ab")])).unwrap();
        let web = &c["services"]["web"];
        assert_eq!(web["image"], "127.0.0.1:55000/web@sha256:ab");
        assert!(web.get("build").is_none());
        assert_eq!(web["restart"], "always");
        assert_eq!(web["environment"]["MODE"], "prod");
        assert_eq!(web["environment"]["EMPTY"], "");
        assert_eq!(
            web["labels"]["io.resin.update.strategy"],
            "kill-then-download"
        );
        assert_eq!(c["services"]["worker"]["environment"]["RETRIES"], "3");
        assert_eq!(c["services"]["worker"]["environment"]["DEBUG"], "true");
        assert!(c["volumes"]["data"].is_object());
        assert!(c.get("x-common").is_none());
    }

    /// `depends_on` goes to the cloud as written (list or map form); the
    /// cloud checks the names and cycles.
    #[test]
    fn depends_on_passes_through() {
        let doc = r#"
services:
  web: {image: "w:1", depends_on: [db]}
  api:
    image: a:1
    depends_on:
      db: {condition: service_started}
  db: {image: "d:1"}
"#;
        let c = composition(doc, &imgs(&[])).unwrap();
        assert_eq!(
            c["services"]["web"]["depends_on"],
            serde_json::json!(["db"])
        );
        assert_eq!(
            c["services"]["api"]["depends_on"],
            serde_json::json!({"db": {"condition": "service_started"}})
        );
    }

    #[test]
    fn build_without_image_is_refused_with_a_hint() {
        let e = composition(DOC, &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("--image web=REF"), "{e}");
    }

    #[test]
    fn unknown_service_in_image_override_is_refused() {
        let e = composition(DOC, &imgs(&[("web", "a"), ("db", "b")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`db`"), "{e}");
    }

    #[test]
    fn bad_documents_are_clear_errors() {
        for (doc, want) in [
            ("", "empty"),
            ("[1, 2]", "must be a mapping"),
            ("services: {}", "empty"),
            ("services:\n  -web:\n    image: x", "service name"),
            ("services:\n  web:\n    image: \"\"", "non-empty"),
            ("services: [\n", "YAML"),
            ("services:\n  a:\n    image: x\nfoo: 1", "top-level"),
        ] {
            let e = composition(doc, &BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains(want), "{doc:?}: {e}");
        }
    }

    /// The validator of api-types runs here: a bad port is refused before
    /// upload, naming the service and the field.
    #[test]
    fn typed_fields_are_validated_before_upload() {
        for (doc, want) in [
            (
                "services:\n  web:\n    image: x\n    ports: [\"8o:80\"]",
                "services.web.ports[0]",
            ),
            (
                "services:\n  web:\n    image: x\n    volumes: [\"./src:/src\"]",
                "services.web.volumes[0]",
            ),
            (
                "services:\n  web:\n    image: x\n    restart: sometimes",
                "services.web.restart",
            ),
            (
                "services:\n  web:\n    image: x\n    build: .",
                "--image web=REF",
            ),
        ] {
            let e = composition(doc, &BTreeMap::new()).unwrap_err().to_string();
            assert!(e.contains(want), "{doc:?}: {e}");
        }
    }

    #[test]
    fn image_override_syntax() {
        assert_eq!(
            parse_image_override("a=b:1").unwrap(),
            ("a".into(), "b:1".into())
        );
        assert!(parse_image_override("nope").is_err());
        assert!(parse_image_override("=x").is_err());
    }
}
