//! The command line of `resin`, declared with clap. It lives in the library
//! so that completions and `docs/cli.md` are generated from the same
//! declaration the binary parses (see [`crate::docs`]).

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::compose;

/// The resin CLI. The API URL and key come from `--api-url`/`--api-key`
/// (or RESIN_API_URL/RESIN_API_KEY), else from what `resin login` stored.
///
/// Exit codes: 0 on success, 1 when the cloud refused or failed a request
/// (or could not be reached), 2 on bad usage.
#[derive(Debug, Parser)]
#[command(name = "resin", version, about, long_about)]
pub struct Cli {
    /// Cloud API URL, e.g. https://cloud.example.com:8080 [default: the stored login]
    #[arg(long, global = true, env = "RESIN_API_URL")]
    pub api_url: Option<String>,
    /// API key of a user [default: the stored login]
    #[arg(long, global = true, env = "RESIN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// PEM file of the CA to trust for the cloud (e.g. the ca.pem of
    /// `resin-cloud init`): then only that CA is trusted [default: the stored
    /// login's, else the public roots]
    #[arg(long, global = true, env = "RESIN_CA")]
    pub ca: Option<PathBuf>,
    /// Where `resin login` stores URL and key [default: ~/.config/resin/cli.json]
    #[arg(long, global = true, env = "RESIN_CLI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Answer yes to confirmations (needed for destructive commands when
    /// stdin is not a terminal)
    #[arg(long, short = 'y', global = true)]
    pub yes: bool,
    /// Timeout of ordinary API requests, in seconds (uploads, downloads and
    /// `logs --follow` only time out while connecting)
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Check an API key against the cloud and store URL and key (mode 0600)
    Login,
    /// Show who the API key belongs to, and which cloud it talks to
    Whoami,
    /// Fleets
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// Devices: list, show, rename, pin, move, restart, reboot, remove
    #[command(subcommand)]
    Device(DeviceCmd),
    /// List devices (the same as `resin device list`)
    Devices(DeviceFilter),
    /// Tags of a fleet or a device
    #[command(subcommand)]
    Tag(TagCmd),
    /// Environment and config variables of a fleet, a device or a release's service
    #[command(subcommand)]
    Env(EnvCmd),
    /// Releases
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// API keys of the logged-in user
    #[command(subcommand)]
    Key(KeyCmd),
    /// Provisioning keys, with which devices register into a fleet
    #[command(subcommand, name = "provisioning-key")]
    ProvisioningKey(ProvisioningKeyCmd),
    /// OS releases: list, upload bundles and images, download configured images
    #[command(subcommand)]
    Os(OsCmd),
    /// Staged rollouts of a release or an OS version, in waves that halt themselves
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Build a project (docker-compose.yml with `build:`, or a Dockerfile) in
    /// the cloud for the fleet's devices and make it a release
    Push(PushArgs),
    /// Show a device's logs (DEVICE is its uuid or numeric id)
    Logs(LogsArgs),
    /// A shell on a device (or in one of its services), or one command run there, through the cloud's tunnel
    Ssh(SshArgs),
    /// Forward a local TCP port to a port on a device (or one the device reaches), through the cloud's tunnel
    Tunnel(TunnelArgs),
    /// Print a shell completion script: `resin completions bash > /etc/bash_completion.d/resin`
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// Create a fleet
    Create {
        /// Fleet name (unique among your fleets)
        name: String,
        /// Device type slug, e.g. qemuarm64
        #[arg(long)]
        device_type: String,
    },
    /// List fleets
    List,
}

/// Which devices to list.
#[derive(Debug, Clone, Default, Args)]
pub struct DeviceFilter {
    /// Only the devices of this fleet (name or id)
    #[arg(long)]
    pub fleet: Option<String>,
    /// Only devices with this status, as the supervisor reports it (e.g. idle, updating)
    #[arg(long)]
    pub status: Option<String>,
    /// Only online devices
    #[arg(long, conflicts_with = "offline")]
    pub online: bool,
    /// Only offline devices
    #[arg(long)]
    pub offline: bool,
    /// Only devices with this tag: KEY=VALUE, or KEY for any value (repeatable: all must match)
    #[arg(long = "tag", value_name = "KEY[=VALUE]")]
    pub tags: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List devices
    List(DeviceFilter),
    /// Show one device: state, versions, pinned release, tags
    Show {
        /// Device uuid or numeric id
        device: String,
    },
    /// Rename a device
    Rename {
        /// Device uuid or numeric id
        device: String,
        /// The new name
        name: String,
    },
    /// Pin a device to a release of its fleet (it stops following the fleet's target)
    Pin {
        /// Device uuid or numeric id
        device: String,
        /// Release id or uuid
        release: String,
    },
    /// Let a pinned device follow its fleet's target release again
    Unpin {
        /// Device uuid or numeric id
        device: String,
    },
    /// Move a device to another fleet of the same owner and device type
    /// (asks first unless --yes); its pin is dropped and it follows the new
    /// fleet's target
    Move {
        /// Device uuid or numeric id
        device: String,
        /// The fleet to move it to (name or id)
        fleet: String,
    },
    /// Restart a device's services, or one service (asks first unless
    /// --yes); the supervisor restarts the containers once
    Restart {
        /// Device uuid or numeric id
        device: String,
        /// Only this service (its compose name)
        #[arg(long, short = 's')]
        service: Option<String>,
    },
    /// Reboot a device once no update lock is held (asks first unless --yes)
    Reboot {
        /// Device uuid or numeric id
        device: String,
    },
    /// A device's actions (restart, reboot), newest first, and where each is
    Actions {
        /// Device uuid or numeric id
        device: String,
    },
    /// The audit of a device's remote-access sessions (`resin ssh`,
    /// `resin tunnel`), newest first: who, kind, target, start and end,
    /// bytes each way, exit status
    Sessions {
        /// Device uuid or numeric id
        device: String,
    },
    /// Remove devices from the cloud (asks first unless --yes)
    #[command(alias = "remove")]
    Rm {
        /// Device uuids or numeric ids
        #[arg(required = true)]
        devices: Vec<String>,
    },
}

/// A fleet or a device (exactly one).
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("tag_owner").required(true).args(["fleet", "device"]))]
pub struct TagOwner {
    /// Of a fleet (name or id)
    #[arg(long)]
    pub fleet: Option<String>,
    /// Of a device (uuid or id)
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TagCmd {
    /// List the tags of a fleet or a device
    List(TagOwner),
    /// Create or update a tag
    Set {
        /// Tag key
        key: String,
        /// Tag value
        value: String,
        #[command(flatten)]
        owner: TagOwner,
    },
    /// Remove a tag (asks first unless --yes)
    Rm {
        /// Tag key
        key: String,
        #[command(flatten)]
        owner: TagOwner,
    },
}

/// Where a variable lives: a fleet, a device, or a service of a release.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("owner").required(true).args(["fleet", "device", "service"]))]
pub struct VarOwner {
    /// On a fleet (name or id)
    #[arg(long)]
    pub fleet: Option<String>,
    /// On a device (uuid or id)
    #[arg(long)]
    pub device: Option<String>,
    /// On a service of a release (with --release)
    #[arg(long, requires = "release")]
    pub service: Option<String>,
    /// The release (id or uuid) of --service
    #[arg(long, requires = "service")]
    pub release: Option<String>,
    /// Config variables (supervisor and OS settings) instead of environment
    /// variables; fleets and devices only
    #[arg(long = "config-var", conflicts_with = "service")]
    pub config_var: bool,
}

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// List the variables of a fleet, a device or a service
    List(VarOwner),
    /// Create or update a variable
    #[command(alias = "add")]
    Set(EnvSet),
    /// Remove a variable (asks first unless --yes)
    Rm {
        /// Variable name
        name: String,
        #[command(flatten)]
        owner: VarOwner,
    },
}

#[derive(Debug, Args)]
pub struct EnvSet {
    /// Variable name: letters, digits and _, not starting with a digit
    pub name: String,
    /// Value
    pub value: String,
    #[command(flatten)]
    pub owner: VarOwner,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Create a release from a compose file
    Create {
        /// Fleet name
        #[arg(long)]
        fleet: String,
        /// The compose file
        #[arg(long)]
        compose: PathBuf,
        /// Use this image for a service: SERVICE=REF (repeatable)
        #[arg(long = "image", value_name = "SERVICE=REF", value_parser = compose::parse_image_override)]
        images: Vec<(String, String)>,
        /// Also make it the fleet's target release
        #[arg(long, alias = "set-target")]
        pin: bool,
    },
    /// List releases, newest first
    List {
        /// Only the releases of this fleet (name or id)
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Show a release: its services and images
    Show {
        /// Release id or uuid
        release: String,
    },
    /// The build log of a release made by `resin push` or `git push`
    Logs {
        /// Release id or uuid
        release: String,
    },
    /// Remove a release (asks first unless --yes)
    Rm {
        /// Release id or uuid
        release: String,
        /// Also when a fleet targets it or a device pins it (the fleet's
        /// target is cleared, pinned devices are unpinned)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Create a draft rollout (then `resin rollout start ID`, or `--start`)
    Create(RolloutCreate),
    /// List rollouts, newest first
    List {
        /// Only the rollouts of this fleet (name or id)
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Show a rollout: per-wave progress and its events
    Show {
        /// Rollout id
        id: i64,
        /// Refresh every 2 s until the rollout is completed, halted,
        /// paused or cancelled
        #[arg(long)]
        watch: bool,
    },
    /// Start a draft rollout: the first wave gets the new release
    Start(RolloutAct),
    /// Pause a running rollout: no new assignments until resumed
    Pause(RolloutAct),
    /// Resume a paused or halted rollout
    Resume(RolloutAct),
    /// Halt a rollout: no new assignments; updated devices keep the release
    Halt(RolloutAct),
    /// Roll back: move every updated device back to the fleet's previous
    /// release or OS, and end the rollout (asks first unless --yes)
    Rollback(RolloutAct),
    /// Cancel a draft rollout
    Cancel(RolloutAct),
}

#[derive(Debug, Args)]
pub struct RolloutAct {
    /// Rollout id
    pub id: i64,
    /// Why, recorded in the rollout's event
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct RolloutCreate {
    /// Fleet name (or id)
    #[arg(long)]
    pub fleet: String,
    /// Release id or uuid to roll out
    #[arg(
        long,
        conflicts_with = "os_version",
        required_unless_present = "os_version"
    )]
    pub release: Option<String>,
    /// OS version to roll out
    #[arg(long)]
    pub os_version: Option<String>,
    /// Cumulative percentages of the waves, ending at 100
    #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
    pub waves: Vec<u32>,
    /// A first wave of hand-picked canaries: devices with this tag (KEY=VALUE, repeatable: all of them)
    #[arg(long = "canary-tag", value_name = "KEY=VALUE")]
    pub canary_tags: Vec<String>,
    /// Seconds a device must stay healthy on the new release
    #[arg(long, default_value_t = 300)]
    pub soak: u64,
    /// Seconds after which a device not yet healthy counts as failed
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Percent of a wave that must be healthy to go on (1-100)
    #[arg(long, default_value_t = 100)]
    pub success_percent: u32,
    /// Halt when more than this percent of a wave's decided devices failed (0-100)
    #[arg(long, default_value_t = 10)]
    pub max_failure_percent: u32,
    /// Halt when more than this many devices of a wave failed
    #[arg(long)]
    pub max_failures: Option<u64>,
    /// Decided devices a wave needs before the percentage applies
    #[arg(long, default_value_t = 1)]
    pub min_sample: u64,
    /// Pause after every wave but the last (resume by hand)
    #[arg(long)]
    pub pause_after_each: bool,
    /// A name for the rollout
    #[arg(long)]
    pub name: Option<String>,
    /// Start it right away
    #[arg(long)]
    pub start: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create an API key; it is printed once and cannot be shown again
    Create {
        /// A name to tell keys apart
        name: String,
        /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z)
        #[arg(long)]
        expires: Option<String>,
        /// The key may only read: every change made with it is refused (403)
        #[arg(long)]
        read_only: bool,
        /// The key reaches only this fleet (name or id) and what hangs off it
        #[arg(long)]
        fleet: Option<String>,
    },
    /// List your API keys (names and dates, never the keys)
    List,
    /// Revoke an API key by id (asks first unless --yes)
    #[command(alias = "rm")]
    Revoke {
        /// Key id (see `resin key list`)
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProvisioningKeyCmd {
    /// Create a provisioning key for a fleet; it is printed once
    Create {
        /// A name to tell keys apart
        name: String,
        /// Fleet name or id
        #[arg(long)]
        fleet: String,
        /// When it stops working (RFC 3339)
        #[arg(long)]
        expires: Option<String>,
    },
    /// List provisioning keys
    List {
        /// Only those of this fleet (name or id)
        #[arg(long)]
        fleet: Option<String>,
    },
    /// Revoke a provisioning key by id (asks first unless --yes)
    #[command(alias = "rm")]
    Revoke {
        /// Key id (see `resin provisioning-key list`)
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum OsCmd {
    /// List OS releases
    List {
        /// Only this device type
        #[arg(long)]
        device_type: Option<String>,
    },
    /// Create an OS release and upload its RAUC bundle (and disk image)
    Upload {
        #[arg(long)]
        device_type: String,
        #[arg(long)]
        version: String,
        /// RAUC bundle (.raucb)
        #[arg(long)]
        bundle: PathBuf,
        /// Base disk image, for configured downloads
        #[arg(long)]
        image: Option<PathBuf>,
    },
    /// Download a fleet's configured disk image
    Download {
        /// Fleet name
        #[arg(long)]
        fleet: String,
        /// OS version
        #[arg(long)]
        version: String,
        #[arg(long, value_enum, default_value_t = Compression::None)]
        compression: Compression,
        /// Where to write the image (temp file + rename)
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Compression {
    Zstd,
    Xz,
    None,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Device uuid or numeric id
    pub device: String,
    /// Run in this service's container instead of on the host OS
    #[arg(long, short = 's', value_name = "SERVICE")]
    pub service: Option<String>,
    /// Give a command a terminal too (when stdin and stdout are terminals)
    #[arg(short = 't', conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never allocate a terminal (pipes: stdout and stderr stay apart)
    #[arg(short = 'T')]
    pub no_tty: bool,
    /// The command (after `--`); none: an interactive shell. Exits with its exit code
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TunnelArgs {
    /// Device uuid or numeric id
    pub device: String,
    /// `[LOCAL_ADDR:]LOCAL_PORT:[HOST:]PORT`: listen on LOCAL (127.0.0.1 unless given) and
    /// forward each connection to HOST:PORT as seen from the device (HOST default 127.0.0.1;
    /// the device's config.json tunnel.tcpAllow decides what it may reach)
    #[arg(value_name = "LOCAL:REMOTE")]
    pub mapping: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Device uuid or numeric id
    pub device: String,
    /// Keep streaming new lines (Server-Sent Events) until interrupted
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N stored lines (before --service/--since filter them)
    #[arg(long, short = 'n', value_name = "N")]
    pub tail: Option<u64>,
    /// Only the lines of this service (repeatable); `system` for the supervisor's own
    #[arg(long, short = 's', value_name = "SERVICE")]
    pub service: Vec<String>,
    /// Only lines at or after this time: RFC 3339, or an age like 30s, 10m, 2h, 1d
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
}

/// The clap command, for completions and docs.
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Fleet name or id
    pub fleet: String,
    /// The project directory (its .dockerignore is honoured)
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Build without the fleet's layer cache
    #[arg(long)]
    pub nocache: bool,
    /// Do not make the new release the fleet's target
    #[arg(long)]
    pub no_pin: bool,
}
