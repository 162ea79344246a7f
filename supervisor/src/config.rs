//! The supervisor's one typed config: flags and `RESIN_SUPERVISOR_*` env
//! vars (clap), each with a documented default; the device's cloud settings
//! come from `config.json` (resin_api_types::ConfigJson).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "resin-supervisor", version, about = "resin device supervisor")]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// config.json on the boot partition (cloud endpoint, provisioning key).
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_CONFIG_JSON",
        default_value = "/mnt/boot/config.json"
    )]
    pub config_json: PathBuf,
    /// The supervisor's state: device.json, target.json, images.json, the
    /// local API key.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_STATE_DIR",
        default_value = "/mnt/state/resin-supervisor"
    )]
    pub state_dir: PathBuf,
    /// Docker engine; unset means DOCKER_HOST, then /var/run/docker.sock.
    #[arg(long, env = "RESIN_SUPERVISOR_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Local API address.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_LISTEN",
        default_value = "127.0.0.1:48484"
    )]
    pub listen: SocketAddr,
    /// Overrides config.json's pollIntervalMs.
    #[arg(long, env = "RESIN_SUPERVISOR_POLL_INTERVAL_MS")]
    pub poll_interval_ms: Option<u64>,
    /// State reports are sent on change (debounced) and at least this often.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_REPORT_INTERVAL_SECS",
        default_value_t = 600
    )]
    pub report_interval_secs: u64,
    /// Changes within this window go out in one report.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_REPORT_DEBOUNCE_MS",
        default_value_t = 1000
    )]
    pub report_debounce_ms: u64,
    /// Log lines kept in memory while the cloud is away; older ones drop.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_LOG_BUFFER_LINES",
        default_value_t = 2000
    )]
    pub log_buffer_lines: usize,
    /// Log lines are sent at least this often.
    #[arg(long, env = "RESIN_SUPERVISOR_LOG_FLUSH_MS", default_value_t = 2000)]
    pub log_flush_ms: u64,
    /// The running OS's os-release (VERSION_ID, else VERSION).
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_OS_RELEASE",
        default_value = "/etc/os-release"
    )]
    pub os_release: PathBuf,
    /// The data partition, for storage metrics.
    #[arg(long, env = "RESIN_SUPERVISOR_DATA_PATH", default_value = "/mnt/data")]
    pub data_path: PathBuf,
    /// Run the OS-update agent (resin-osupdate).
    #[arg(long, env = "RESIN_SUPERVISOR_OS_UPDATES", default_value_t = true, action = clap::ArgAction::Set)]
    pub os_updates: bool,
    /// Where OS bundles are downloaded.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_DOWNLOAD_DIR",
        default_value = "/mnt/data/resin-osupdate"
    )]
    pub download_dir: PathBuf,
    /// D-Bus address for RAUC and logind; unset means the system bus.
    #[arg(long, env = "RESIN_SUPERVISOR_DBUS_ADDRESS")]
    pub dbus_address: Option<String>,
    /// The kernel's boot id, which tells a reboot action that the device
    /// rebooted.
    #[arg(
        long,
        env = "RESIN_SUPERVISOR_BOOT_ID",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_path: PathBuf,
    /// Drop the capabilities the supervisor does not need at start.
    #[arg(long, env = "RESIN_SUPERVISOR_DROP_CAPABILITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_capabilities: bool,
    /// Manage only these app uuids (comma-separated). For tests and
    /// benchmarks that share one engine between supervisors; unset on a
    /// device, where the supervisor owns every managed container.
    #[arg(long, env = "RESIN_SUPERVISOR_ONLY_APPS", value_delimiter = ',')]
    pub only_apps: Option<Vec<String>>,
    /// Print the effective config as JSON and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,
}
