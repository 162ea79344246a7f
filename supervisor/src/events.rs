//! The engine's event stream: a managed container that dies or is removed
//! (by the supervisor or behind its back) is reported at once, so the main
//! loop reconciles without waiting for the next poll. The stream is opened
//! again after an error or its end, with backoff, and each reopening is
//! reported too (events may have been missed meanwhile).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::EventMessageTypeEnum;
use bollard::query_parameters::EventsOptionsBuilder;
use futures_util::StreamExt;
use resin_api_types::labels;

use crate::engine::Engine;

/// Container actions that can leave a service short of its target.
pub const WATCHED_ACTIONS: &[&str] = &["die", "destroy", "oom"];

/// What the stream reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A managed container died, was removed or ran out of memory.
    Container {
        app_uuid: String,
        service: String,
        /// `die`, `destroy` or `oom`.
        action: String,
        /// The exit code of a `die`.
        exit_code: Option<i64>,
    },
    /// The stream was opened again after an error: events may be lost.
    Reconnected,
}

/// A container event from the engine's message; `None` for anything else.
pub fn container_event(
    typ: Option<EventMessageTypeEnum>,
    action: Option<&str>,
    attributes: &HashMap<String, String>,
) -> Option<EngineEvent> {
    if typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = action?;
    if !WATCHED_ACTIONS.contains(&action) || attributes.get(labels::MANAGED)? != "1" {
        return None;
    }
    Some(EngineEvent::Container {
        app_uuid: attributes.get(labels::APP_UUID)?.clone(),
        service: attributes
            .get(labels::SERVICE_NAME)
            .cloned()
            .unwrap_or_default(),
        action: action.to_owned(),
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
    })
}

/// Delay before the `failures`-th reopening: 1 s doubling to 30 s.
pub fn reconnect_delay(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

/// Follows the engine's events for ever, calling `on_event` for each
/// managed container event in the engine's scope.
pub async fn watch(engine: Engine, on_event: impl Fn(EngineEvent) + Send + 'static) {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![format!("{}=1", labels::MANAGED)]),
        (
            "event".to_owned(),
            WATCHED_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
        ),
    ]);
    let mut failures = 0u32;
    let mut first = true;
    loop {
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        let mut stream = engine.docker().events(Some(opts));
        if !first {
            on_event(EngineEvent::Reconnected);
        }
        first = false;
        let opened = tokio::time::Instant::now();
        while let Some(item) = stream.next().await {
            match item {
                Ok(msg) => {
                    failures = 0;
                    let actor = msg.actor.unwrap_or_default();
                    let attributes = actor.attributes.unwrap_or_default();
                    if let Some(ev) = container_event(msg.typ, msg.action.as_deref(), &attributes) {
                        let in_scope = match &ev {
                            EngineEvent::Container { app_uuid, .. } => engine.in_scope(app_uuid),
                            EngineEvent::Reconnected => true,
                        };
                        if in_scope {
                            tracing::debug!(event = ?ev, "engine event");
                            on_event(ev);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "engine event stream failed");
                    break;
                }
            }
        }
        // A stream that ran a while and ended is reopened at once.
        if opened.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        let wait = reconnect_delay(failures);
        failures = failures.saturating_add(1);
        tracing::info!(retry_in = ?wait, "engine event stream ended; reopening");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_managed_container_deaths_and_removals_count() {
        let managed = attrs(&[
            (labels::MANAGED, "1"),
            (labels::APP_UUID, "app"),
            (labels::SERVICE_NAME, "web"),
            ("exitCode", "137"),
        ]);
        let c = Some(EventMessageTypeEnum::CONTAINER);
        assert_eq!(
            container_event(c, Some("die"), &managed),
            Some(EngineEvent::Container {
                app_uuid: "app".into(),
                service: "web".into(),
                action: "die".into(),
                exit_code: Some(137),
            })
        );
        assert!(container_event(c, Some("destroy"), &managed).is_some());
        assert!(container_event(c, Some("start"), &managed).is_none());
        assert!(container_event(c, Some("die"), &attrs(&[("x", "1")])).is_none());
        assert!(
            container_event(Some(EventMessageTypeEnum::NETWORK), Some("die"), &managed).is_none()
        );
    }

    #[test]
    fn reconnects_back_off_to_30_seconds() {
        assert_eq!(reconnect_delay(0), Duration::from_secs(1));
        assert_eq!(reconnect_delay(3), Duration::from_secs(8));
        assert_eq!(reconnect_delay(40), Duration::from_secs(30));
    }
}
