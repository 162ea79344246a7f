//! Reboots: an OS update's reboot request waits for the update locks, and
//! every reboot goes through logind once the reporter has flushed the state
//! that led to it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::api;
use crate::notify::Notifier;
use crate::planner::CurrentState;
use crate::system;
use std::sync::Arc;

/// Waits until no update lock holds a managed container (an OS update's
/// reboot stops every app); returns the locks it waited for. Looks again
/// every `every` and whenever the engine's state changes.
pub async fn wait_for_update_locks(
    current: &mut watch::Receiver<CurrentState>,
    every: Duration,
) -> Vec<String> {
    let mut waited = Vec::new();
    loop {
        let held = api::locks_held(&current.borrow_and_update());
        if held.is_empty() {
            return waited;
        }
        if held != waited {
            tracing::info!(locks = ?held, "the OS update's reboot waits for update locks");
            waited = held;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            r = current.changed() => {
                if r.is_err() {
                    return waited;
                }
            }
        }
    }
}

/// Passes the OS-update agent's reboot requests on to `reboot` once no
/// update lock is held (a reboot stops every app); a forced reboot through
/// the local API goes to `reboot` directly and does not wait.
pub fn spawn_os_reboots(
    mut requests: mpsc::Receiver<resin_osupdate::RebootRequest>,
    mut current: watch::Receiver<CurrentState>,
    reboot: mpsc::Sender<String>,
    notifier: Arc<Notifier>,
) {
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            notifier.status("OS update: reboot waits for update locks");
            let waited = wait_for_update_locks(&mut current, Duration::from_secs(5)).await;
            if !waited.is_empty() {
                tracing::info!(locks = ?waited, "update locks released: rebooting");
            }
            let _ = reboot.send(format!("OS update: {}", r.reason)).await;
        }
    });
}

/// Reboots through logind for each reason received, after asking the
/// reporter to flush (`flush`; at most 10 s).
pub fn spawn_rebooter(
    mut reasons: mpsc::Receiver<String>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    dbus: Option<String>,
    notifier: Arc<Notifier>,
) {
    tokio::spawn(async move {
        while let Some(reason) = reasons.recv().await {
            let (ack, sent) = oneshot::channel();
            if flush.send(ack).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(10), sent).await;
            }
            tracing::info!(%reason, "rebooting through logind");
            notifier.status(&format!("rebooting: {reason}"));
            if let Err(e) = system::logind("Reboot", dbus.as_deref()).await {
                tracing::error!(error = %e, "reboot through logind failed");
            }
        }
    });
}
