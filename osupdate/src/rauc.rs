//! Our typed zbus proxy for RAUC's `de.pengutronix.rauc.Installer` D-Bus
//! interface (object `/` on `de.pengutronix.rauc`), plus [`Rauc`], a small
//! client that installs a bundle while following `Progress` and `Completed`.
//!
//! The method and property names follow RAUC's interface XML
//! (`/usr/share/dbus-1/interfaces/de.pengutronix.rauc.Installer.xml`, the
//! same in RAUC 1.8, Debian 12's version).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::{proxy, Connection, OwnedVariant, Variant};

/// Bus name RAUC's service owns.
pub const BUS_NAME: &str = "de.pengutronix.rauc";

#[proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/"
)]
pub trait Installer {
    /// Old install method (source only); kept for RAUC before 1.0.
    fn install(&self, source: &str) -> zbus::Result<()>;

    /// Starts installing the bundle at `source` (a path RAUC can read).
    /// Returns at once; the outcome comes as the `Completed` signal.
    fn install_bundle(&self, source: &str, args: HashMap<&str, Variant<'_>>) -> zbus::Result<()>;

    /// `rauc info` over D-Bus: the bundle's (compatible, version).
    fn info(&self, bundle: &str) -> zbus::Result<(String, String)>;

    /// Marks a slot `good`, `bad` or `active`; `slot_identifier` is
    /// `booted`, `other` or a slot name. Answers (slot name, message).
    fn mark(&self, state: &str, slot_identifier: &str) -> zbus::Result<(String, String)>;

    /// Every slot's status as (slot name, dictionary).
    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedVariant>)>>;

    /// The slot the bootloader will boot next.
    fn get_primary(&self) -> zbus::Result<String>;

    /// `idle` or `installing`.
    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    /// (percentage, message, nesting depth) of the running installation.
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;

    /// Message of the last error (empty when none).
    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    /// Bootname of the slot the system booted from (e.g. `A`).
    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;

    /// The system's compatible string from system.conf.
    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;

    /// The system's variant.
    #[zbus(property)]
    fn variant(&self) -> zbus::Result<String>;

    /// Emitted when an installation ends; 0 means success.
    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;
}

/// Errors talking to RAUC.
#[derive(Debug, thiserror::Error)]
pub enum RaucError {
    #[error("cannot connect to D-Bus at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("RAUC D-Bus call {call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: zbus::Error,
    },
    /// RAUC ran the installation and reported failure (bad signature, wrong
    /// compatible, …); `last_error` is RAUC's `LastError`.
    #[error("RAUC refused the bundle {bundle}: {last_error}")]
    Rejected { bundle: String, last_error: String },
    #[error("RAUC did not finish {what} within {secs} s")]
    Timeout { what: &'static str, secs: u64 },
    #[error("RAUC's signal stream ended while installing {bundle}")]
    StreamEnded { bundle: String },
    #[error("slot {slot} is not in RAUC's slot status")]
    UnknownSlot { slot: String },
}

/// One slot as `GetSlotStatus` describes it (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotStatus {
    /// e.g. `rootfs.1`.
    pub name: String,
    pub class: String,
    /// e.g. `B` (empty for slots without a bootname).
    pub bootname: String,
    /// `booted`, `active` or `inactive`.
    pub state: String,
    /// `good` or `bad` as the bootloader sees it, when RAUC knows.
    pub boot_status: String,
    /// Version of the bundle last installed into the slot.
    pub bundle_version: Option<String>,
    /// `ok` or `failed` for the last installation into the slot.
    pub status: Option<String>,
    pub installed_timestamp: Option<String>,
    /// How many installations went into the slot.
    pub installed_count: Option<u32>,
    pub device: String,
}

impl SlotStatus {
    fn from_dict(name: String, dict: &HashMap<String, OwnedVariant>) -> Self {
        let s = |key: &str| -> Option<String> {
            dict.get(key).and_then(|v| String::try_from(v.clone()).ok())
        };
        Self {
            class: s("class").unwrap_or_default(),
            bootname: s("bootname").unwrap_or_default(),
            state: s("state").unwrap_or_default(),
            boot_status: s("boot-status").unwrap_or_default(),
            bundle_version: s("bundle.version"),
            status: s("status"),
            installed_timestamp: s("installed.timestamp"),
            device: s("device").unwrap_or_default(),
            installed_count: dict
                .get("installed.count")
                .and_then(|v| u32::try_from(v.clone()).ok()),
            name,
        }
    }
}

/// A connection to RAUC's service.
#[derive(Clone)]
pub struct Rauc {
    /// Caches properties and follows their changes (for `Progress`).
    cached: InstallerProxy<'static>,
    /// Reads properties fresh from the service every time.
    fresh: InstallerProxy<'static>,
}

impl Rauc {
    /// Connects to RAUC on the bus at `address` (`None`: the system bus).
    pub async fn connect(address: Option<&str>) -> Result<Self, RaucError> {
        let shown = address.unwrap_or("system bus").to_string();
        let conn_err = |source| RaucError::Connect {
            address: shown.clone(),
            source,
        };
        let conn = match address {
            Some(a) => zbus::connection::Builder::address(a)
                .build()
                .await
                .map_err(conn_err)?,
            None => Connection::system().await.map_err(conn_err)?,
        };
        let cached = InstallerProxy::new(&conn).await.map_err(conn_err)?;
        let fresh = InstallerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(conn_err)?;
        Ok(Self { cached, fresh })
    }

    /// The generated proxy, for calls this wrapper does not cover.
    pub fn proxy(&self) -> &InstallerProxy<'static> {
        &self.fresh
    }

    pub async fn operation(&self) -> Result<String, RaucError> {
        self.fresh.operation().await.map_err(call("Operation"))
    }

    pub async fn last_error(&self) -> Result<String, RaucError> {
        self.fresh.last_error().await.map_err(call("LastError"))
    }

    /// Bootname of the booted slot (`A`).
    pub async fn boot_slot(&self) -> Result<String, RaucError> {
        self.fresh.boot_slot().await.map_err(call("BootSlot"))
    }

    pub async fn compatible(&self) -> Result<String, RaucError> {
        self.fresh.compatible().await.map_err(call("Compatible"))
    }

    pub async fn progress(&self) -> Result<(i32, String, i32), RaucError> {
        self.fresh.progress().await.map_err(call("Progress"))
    }

    pub async fn primary(&self) -> Result<String, RaucError> {
        self.fresh.get_primary().await.map_err(call("GetPrimary"))
    }

    pub async fn slot_status(&self) -> Result<Vec<SlotStatus>, RaucError> {
        let raw = self
            .fresh
            .get_slot_status()
            .await
            .map_err(call("GetSlotStatus"))?;
        let mut slots: Vec<SlotStatus> = raw
            .into_iter()
            .map(|(name, dict)| SlotStatus::from_dict(name, &dict))
            .collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(slots)
    }

    /// The slot (from `GetSlotStatus`) whose bootname is the booted one.
    pub async fn booted_slot(&self) -> Result<SlotStatus, RaucError> {
        let boot = self.boot_slot().await?;
        let slots = self.slot_status().await?;
        slots
            .iter()
            .find(|s| s.bootname == boot && !boot.is_empty())
            .or_else(|| slots.iter().find(|s| s.state == "booted"))
            .cloned()
            .ok_or(RaucError::UnknownSlot { slot: boot })
    }

    /// `Mark(state, slot)`: answers (slot name, message).
    pub async fn mark(&self, state: &str, slot: &str) -> Result<(String, String), RaucError> {
        self.fresh.mark(state, slot).await.map_err(call("Mark"))
    }

    /// Installs `bundle` and waits for `Completed`, calling `on_progress`
    /// with every `Progress` change. A non-zero result is
    /// [`RaucError::Rejected`] carrying RAUC's `LastError`.
    pub async fn install(
        &self,
        bundle: &Path,
        timeout: Duration,
        mut on_progress: impl FnMut(u8, &str),
    ) -> Result<(), RaucError> {
        let shown = bundle.display().to_string();
        // Subscribe before starting, so no signal can be missed.
        let mut completed = self
            .cached
            .receive_completed()
            .await
            .map_err(call("receive Completed"))?;
        let mut progress = self.cached.receive_progress_changed().await;
        let source = bundle.to_string_lossy();
        self.fresh
            .install_bundle(&source, HashMap::new())
            .await
            .map_err(call("InstallBundle"))?;
        let wait = async {
            loop {
                tokio::select! {
                    sig = completed.next() => {
                        let Some(sig) = sig else {
                            return Err(RaucError::StreamEnded { bundle: shown.clone() });
                        };
                        let result = sig.args().map_err(call("Completed args"))?.result;
                        return Ok(result);
                    }
                    Some(change) = progress.next() => {
                        if let Ok((pct, msg, _depth)) = change.get().await {
                            on_progress(pct.clamp(0, 100) as u8, &msg);
                        }
                    }
                }
            }
        };
        let result =
            tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| RaucError::Timeout {
                    what: "an installation",
                    secs: timeout.as_secs(),
                })??;
        if result == 0 {
            on_progress(100, "installed");
            Ok(())
        } else {
            let last_error = self.last_error().await.unwrap_or_default();
            Err(RaucError::Rejected {
                bundle: shown,
                last_error: if last_error.is_empty() {
                    format!("installation failed with result {result}")
                } else {
                    last_error
                },
            })
        }
    }

    /// Waits until `Operation` is `idle` (e.g. an installation that was
    /// running when we crashed), polling every 200 ms.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), RaucError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.operation().await? == "idle" {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RaucError::Timeout {
                    what: "the running operation",
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn call(call: &'static str) -> impl Fn(zbus::Error) -> RaucError {
    move |source| RaucError::Call { call, source }
}
