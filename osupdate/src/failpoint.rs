//! Failpoints for crash tests, compiled only with the `failpoints` feature.
//!
//! A failpoint is named (`before-install`, `before-mark-good`, …) and armed
//! either per agent ([`crate::AgentOptions::failpoints`]) or for the whole
//! process through `RESIN_OSUPDATE_FAILPOINTS=name=action[,name=action]`.
//! Actions: `stop` (the agent task ends right there, as if the process had
//! been killed: nothing more is persisted), `exit` (the process exits with
//! status 137 at once).

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// End the agent task without touching any state.
    Stop,
    /// `std::process::exit(137)`.
    Exit,
}

/// A failpoint fired with [`FailAction::Stop`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failpoint {0} fired")]
pub struct Fired(pub String);

/// Checks failpoint `name` against `armed` and the environment.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str, armed: &[(String, FailAction)]) -> Result<(), Fired> {
    let mut action = armed.iter().find(|(n, _)| n == name).map(|(_, a)| *a);
    if action.is_none() {
        if let Ok(spec) = std::env::var("RESIN_OSUPDATE_FAILPOINTS") {
            for item in spec.split(',') {
                match item.split_once('=') {
                    Some((n, "stop")) if n == name => action = Some(FailAction::Stop),
                    Some((n, "exit")) if n == name => action = Some(FailAction::Exit),
                    _ => {}
                }
            }
        }
    }
    match action {
        Some(FailAction::Stop) => {
            tracing::warn!(failpoint = name, "failpoint fired: stopping the agent");
            Err(Fired(name.to_string()))
        }
        Some(FailAction::Exit) => {
            tracing::warn!(failpoint = name, "failpoint fired: exiting");
            std::process::exit(137)
        }
        None => Ok(()),
    }
}

/// Without the `failpoints` feature nothing ever fires.
#[cfg(not(feature = "failpoints"))]
#[inline]
pub fn hit(_name: &str, _armed: &[(String, FailAction)]) -> Result<(), Fired> {
    Ok(())
}
