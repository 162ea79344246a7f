//! The declarative disk layout (TOML): parsing, `--set` overrides, validation and placement.
//!
//! The layout file is the single source of truth for the disk. [`Layout::load`] reads it and
//! applies command-line overrides; [`Layout::plan`] validates every field *before anything is
//! written* and places the partitions, naming the offending field in every error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::size::Size;

/// GPT type GUID of an EFI system partition.
pub const ESP_TYPE: Uuid = Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B);
/// GPT type GUID of a generic Linux filesystem.
pub const LINUX_TYPE: Uuid = Uuid::from_u128(0x0FC63DAF_8483_4772_8E79_3D69D8477DE4);
/// Sectors the backup GPT (header and 128 entries) needs at the end of a 512-byte-sector disk.
const BACKUP_GPT_SECTORS: u64 = 33;

/// Why a layout could not be loaded or is invalid. Validation errors name the field.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot read layout {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layout {path} is not valid TOML for a layout: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("--set {arg}: {msg}")]
    Set { arg: String, msg: String },
    #[error("layout field `{field}`: {msg}")]
    Field { field: String, msg: String },
}

fn field_err(field: impl Into<String>, msg: impl Into<String>) -> LayoutError {
    LayoutError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

/// The whole layout file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Layout {
    /// Device type slug; RAUC's `compatible` is `resin-<device-type>`.
    pub device_type: String,
    /// Directory of custom minijinja templates, relative to the layout file. Absent: the
    /// templates built into the binary (imagegen/templates, embedded at compile time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<PathBuf>,
    #[serde(default)]
    pub disk: DiskSpec,
    #[serde(rename = "bootloader", default)]
    pub boot: BootSpec,
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
    #[serde(default, rename = "render")]
    pub renders: Vec<RenderSpec>,
    /// Raw images written at fixed offsets outside the partition table (SoC boot ROMs read
    /// their bootloader from there: i.MX at 33KiB, Rockchip at 32KiB).
    #[serde(default, rename = "raw", skip_serializing_if = "Vec::is_empty")]
    pub raws: Vec<RawSpec>,
    /// Directory of the layout file (relative paths resolve against it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[disk]`: the partition table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSpec {
    /// Partition table type; only `gpt` is supported.
    #[serde(default = "default_table")]
    pub table: String,
    /// Alignment of every partition start and size (default `4MiB`).
    #[serde(default = "default_alignment")]
    pub alignment: String,
    /// Logical sector size (512).
    #[serde(default = "default_sector")]
    pub sector_size: u64,
    /// Total disk size, or `auto` (the partitions plus the backup GPT, rounded to the alignment).
    #[serde(default = "default_auto")]
    pub size: String,
    /// Partition names (at most 3) also entered in a hybrid MBR beside the GPT, for boot ROMs
    /// and firmware that read only an MBR (older Raspberry Pi firmware). Empty: a protective MBR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hybrid_mbr: Vec<String>,
}

impl Default for DiskSpec {
    fn default() -> Self {
        Self {
            table: default_table(),
            alignment: default_alignment(),
            sector_size: default_sector(),
            size: default_auto(),
            hybrid_mbr: Vec::new(),
        }
    }
}

fn default_alignment() -> String {
    "4MiB".into()
}
fn default_table() -> String {
    "gpt".into()
}
fn default_sector() -> u64 {
    512
}
fn default_auto() -> String {
    "auto".into()
}

/// `[bootloader]`: the A/B boot contract the templates render. Every key has a default (the
/// values of the shipped resin-ab.toml; docs/imagegen.md lists them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct BootSpec {
    /// RAUC bootloader backend: `grub` or `uboot`.
    pub loader: String,
    /// Boot attempts of a slot before the bootloader falls back to the other one.
    pub attempts: u32,
    /// Kernel console device, without `/dev/`.
    pub console: String,
    /// Kernel path inside a root slot.
    pub kernel: String,
    /// Initrd path inside a root slot.
    pub initrd: String,
    /// Extra kernel command line arguments.
    pub cmdline_extra: String,
    /// Path of RAUC's keyring on the device.
    pub keyring: String,
    /// Space reserved for `config.json` in the boot partition (contiguous clusters).
    pub config_reserve: String,
    /// U-Boot: the `ext4load` device (`mmc 0`, `virtio 0`).
    pub uboot_device: String,
}

impl Default for BootSpec {
    fn default() -> Self {
        Self {
            loader: "grub".into(),
            attempts: 3,
            console: "ttyAMA0".into(),
            kernel: "/boot/vmlinuz".into(),
            initrd: "/boot/initrd.img".into(),
            cmdline_extra: "rootwait panic=30".into(),
            keyring: "/etc/rauc/keyring.pem".into(),
            config_reserve: "64KiB".into(),
            uboot_device: default_uboot_dev(),
        }
    }
}

fn default_uboot_dev() -> String {
    "mmc 0".into()
}

/// Where a partition's contents come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contents {
    /// A named input bound on the command line (`--input NAME=PATH`, `--rootfs`, `--boot`).
    Input(String),
    /// A directory.
    Dir(PathBuf),
    /// A tarball (`.tar`, `.tar.gz`, `.tar.xz`, `.tar.zst`).
    Tar(PathBuf),
    /// An existing filesystem image, copied as is.
    Image(PathBuf),
}

/// One `[[partition]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PartitionSpec {
    /// Short name used by `--set NAME.field=…` and `=NAME` size references.
    pub name: String,
    /// GPT partition name (PARTLABEL).
    pub label: String,
    /// `esp`, `linux`, or a type GUID.
    #[serde(rename = "type")]
    pub type_: String,
    /// `100MiB`, `N%`, `rest`, `=NAME` (same size as partition NAME), or `image` (the size
    /// of the partition's image file, rounded up to the alignment).
    pub size: String,
    /// Minimum size of a `rest` partition when the disk size is `auto`.
    #[serde(default)]
    pub min_size: Option<String>,
    /// Explicit start offset (default: right after the previous partition, aligned).
    #[serde(default)]
    pub offset: Option<String>,
    /// `vfat`, `ext4` or `none`.
    pub fs: String,
    /// Filesystem label (default: derived from the partition label).
    #[serde(default)]
    pub fs_label: Option<String>,
    /// Mount point on the device (rendered into fstab).
    #[serde(default)]
    pub mount: Option<String>,
    /// `boot`, `root`, `state` or `data`.
    #[serde(default)]
    pub role: Option<String>,
    /// RAUC bootname of a root slot (`A`, `B`).
    #[serde(default)]
    pub slot: Option<String>,
    /// Grows to fill the disk on first boot (informational; rendered for the device).
    #[serde(default)]
    pub grow: bool,
    /// What goes in; absent means an empty filesystem.
    #[serde(default)]
    pub contents: Option<Contents>,
    /// Explicit GPT partition GUID (default: derived from the seed and the label).
    #[serde(default)]
    pub uuid: Option<String>,
    /// GPT attribute flags: `required` (bit 0), `no-block-io` (1), `legacy-bios-bootable` (2),
    /// or a bit number 0..=63 (48..=63 are type-specific, e.g. ChromeOS/systemd flags).
    #[serde(default)]
    pub attributes: Vec<toml::Value>,
    /// Extra arguments for mkfs.ext4 / mkfs.vfat, after resin's own (e.g. `["-O",
    /// "^has_journal"]`, `["-i", "8192"]`, `["-S", "4096"]`).
    #[serde(default)]
    pub mkfs_options: Vec<String>,
    /// Only in images whose `bootloader.loader` is this (`grub` or `uboot`); absent: always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader: Option<String>,
    /// `fs = "uboot-env"`: size of one environment copy, U-Boot's CONFIG_ENV_SIZE (16KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_size: Option<String>,
    /// `fs = "uboot-env"`: two copies, the second right after the first, each with the
    /// redundant format's flag byte (CONFIG_ENV_REDUNDANT) (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_redundant: Option<bool>,
    /// `fs = "verity"`: the name of the (squashfs) partition whose dm-verity hash tree this
    /// partition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity_data: Option<String>,
}

/// A U-Boot environment partition's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnvGeometry {
    /// Bytes of one copy (CONFIG_ENV_SIZE).
    pub size: u64,
    /// Two copies, at the partition's start and `size` bytes after it.
    pub redundant: bool,
}

/// Default size of one U-Boot environment copy.
pub const DEFAULT_ENV_SIZE: &str = "16KiB";

/// One `[[raw]]`: bytes written at a fixed offset, outside every partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSpec {
    /// Short name (errors name `raw[NAME]`).
    pub name: String,
    /// Byte offset on the disk, after the primary GPT and before the first partition.
    pub offset: String,
    /// `{ input = "NAME" }` (bound with `--input NAME=PATH`) or `{ image = "PATH" }`.
    pub contents: Contents,
}

/// A raw image placed on the disk (its length is known at build time).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRaw {
    pub name: String,
    pub offset: u64,
    #[serde(skip)]
    pub contents: Contents,
}

/// One `[[render]]`: a template rendered from the layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RenderSpec {
    /// Template file name in the templates directory.
    pub template: String,
    /// Output path (relative to `render --out`, and inside the partition for `install`).
    pub path: String,
    /// Partition name `build` installs the rendered file into.
    #[serde(default)]
    pub install: Option<String>,
    /// Only rendered/installed when `boot.loader` equals this.
    #[serde(default)]
    pub loader: Option<String>,
    /// Pad the output to a 1024-byte GRUB environment block.
    #[serde(default)]
    pub grubenv: bool,
}

/// Filesystem of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fs {
    Vfat,
    Ext4,
    /// A U-Boot environment (mkenvimage format), written by imagegen from `uboot-env.txt.j2`.
    #[serde(rename = "uboot-env")]
    UbootEnv,
    /// A read-only squashfs made with mksquashfs.
    Squashfs,
    /// The dm-verity hash tree (veritysetup format) of the partition named by `verity-data`.
    Verity,
    None,
}

impl Fs {
    /// The layout's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Vfat => "vfat",
            Fs::Ext4 => "ext4",
            Fs::UbootEnv => "uboot-env",
            Fs::Squashfs => "squashfs",
            Fs::Verity => "verity",
            Fs::None => "none",
        }
    }
}

/// A partition placed on the disk.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedPart {
    /// 1-based GPT index.
    pub index: u32,
    pub name: String,
    pub label: String,
    pub fs_label: String,
    pub type_guid: Uuid,
    pub offset: u64,
    pub size: u64,
    pub fs: Fs,
    pub mount: Option<String>,
    pub role: Option<String>,
    pub slot: Option<String>,
    pub grow: bool,
    #[serde(skip)]
    pub contents: Option<Contents>,
    /// Explicit partition GUID, if the layout gives one.
    pub uuid: Option<Uuid>,
    /// GPT attribute bits.
    pub attributes: u64,
    pub mkfs_options: Vec<String>,
    /// `fs = "uboot-env"`: the environment's copies.
    pub env: Option<EnvGeometry>,
    /// `fs = "verity"`: the name of the partition whose hash tree this one holds.
    pub verity_data: Option<String>,
}

/// A validated layout with every partition placed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub layout: Layout,
    pub sector: u64,
    pub alignment: u64,
    pub disk_size: u64,
    pub config_reserve: u64,
    pub parts: Vec<PlannedPart>,
    pub raws: Vec<PlannedRaw>,
}

/// Bytes at the start of a GPT disk that the protective MBR, the primary header and a
/// 128-entry array occupy (sectors 0..34).
pub const GPT_HEAD: u64 = 34 * 512;

impl Layout {
    /// Reads a layout file and applies `--set KEY=VALUE` overrides (see [`Layout::from_str_with`]).
    pub fn load(path: &Path, sets: &[String]) -> Result<Self, LayoutError> {
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str_with(&text, path, &base, sets)
    }

    /// Parses layout text. Each override is `KEY=VALUE` where KEY is `disk.FIELD`, `bootloader.FIELD`,
    /// `device-type`, or `PARTNAME.FIELD` (e.g. `rootA.size=2GiB`, `data.contents.dir=/x`).
    pub fn from_str_with(
        text: &str,
        path: &Path,
        base: &Path,
        sets: &[String],
    ) -> Result<Self, LayoutError> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| LayoutError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        let parse = |v: &toml::Table| -> Result<Layout, String> {
            toml::Value::Table(v.clone())
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())
        };
        // A key or value that only an override brings in is that override's fault, not the
        // file's: each `--set` is checked on its own once the file itself reads.
        let mut good = parse(&value).is_ok();
        for arg in sets {
            apply_set(&mut value, arg)?;
            match parse(&value) {
                Err(msg) if good => {
                    return Err(LayoutError::Set {
                        arg: arg.clone(),
                        msg: msg.trim().replace('\n', " "),
                    })
                }
                r => good = r.is_ok(),
            }
        }
        let mut layout = parse(&value).map_err(|msg| LayoutError::Parse {
            path: path.to_path_buf(),
            msg,
        })?;
        layout.base_dir = base.to_path_buf();
        Ok(layout)
    }

    /// Directory holding custom templates, if the layout names one.
    pub fn templates_dir(&self) -> Option<PathBuf> {
        self.templates.as_ref().map(|t| self.resolve(t))
    }

    /// Resolves a path from the layout relative to the layout file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Validates every field and places the partitions. Nothing is written. A `size =
    /// "image"` partition needs its image named in the layout (`contents = { image = P }`);
    /// for one bound on the command line use [`Layout::plan_with_inputs`].
    pub fn plan(&self) -> Result<Plan, LayoutError> {
        self.plan_with_inputs(&BTreeMap::new())
    }

    /// [`Layout::plan`], with the named inputs of the build (`--input NAME=PATH`,
    /// `--rootfs`, `--boot`), so a `size = "image"` partition whose contents is
    /// `{ input = NAME }` takes that file's size.
    pub fn plan_with_inputs(
        &self,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<Plan, LayoutError> {
        if self.disk.table != "gpt" {
            return Err(field_err("disk.table", "only `gpt` is supported"));
        }
        if self.device_type.trim().is_empty()
            || !self
                .device_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(field_err(
                "device-type",
                "must be a non-empty slug of letters, digits, `-` and `_`",
            ));
        }
        let sector = self.disk.sector_size;
        if sector != 512 {
            return Err(field_err("disk.sector-size", "only 512 is supported"));
        }
        let alignment = parse_size("disk.alignment", &self.disk.alignment)?;
        if alignment == 0 || alignment % sector != 0 {
            return Err(field_err(
                "disk.alignment",
                format!(
                    "{} is not a positive multiple of the {sector}-byte sector",
                    Size(alignment)
                ),
            ));
        }
        match self.boot.loader.as_str() {
            "grub" | "uboot" => {}
            other => {
                return Err(field_err(
                    "bootloader.loader",
                    format!("`{other}` is not `grub` or `uboot`"),
                ))
            }
        }
        if !(1..=100).contains(&self.boot.attempts) {
            return Err(field_err(
                "bootloader.attempts",
                "must be between 1 and 100",
            ));
        }
        let config_reserve = parse_size("bootloader.config-reserve", &self.boot.config_reserve)?;
        if config_reserve < 4096 || config_reserve % 4096 != 0 {
            return Err(field_err(
                "bootloader.config-reserve",
                "must be a multiple of 4KiB, at least 4KiB",
            ));
        }
        for p in &self.partitions {
            if let Some(l) = &p.loader {
                if l != "grub" && l != "uboot" {
                    return Err(field_err(
                        format!("partition[{}].loader", p.name),
                        format!("`{l}` is not `grub` or `uboot`"),
                    ));
                }
            }
        }
        // Partitions of the other bootloader are not in this image.
        let partitions: Vec<&PartitionSpec> = self
            .partitions
            .iter()
            .filter(|p| p.loader.as_ref().is_none_or(|l| *l == self.boot.loader))
            .collect();
        if partitions.is_empty() {
            return Err(field_err("partition", "the layout has no partitions"));
        }
        if partitions.len() > 128 {
            return Err(field_err("partition", "GPT holds at most 128 partitions"));
        }

        let mut names = BTreeSet::new();
        let mut labels = BTreeSet::new();
        let mut slots = BTreeSet::new();
        for p in &partitions {
            let f = |k: &str| format!("partition[{}].{k}", p.name);
            if p.name.is_empty() || p.name.contains(['.', '=']) {
                return Err(field_err(
                    "partition.name",
                    format!("`{}` must be non-empty without `.` or `=`", p.name),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(field_err(f("name"), "duplicate partition name"));
            }
            if p.label.is_empty() || p.label.encode_utf16().count() > 36 {
                return Err(field_err(f("label"), "must be 1 to 36 characters"));
            }
            if !labels.insert(p.label.clone()) {
                return Err(field_err(
                    f("label"),
                    format!("duplicate label `{}`", p.label),
                ));
            }
            if let Some(s) = &p.slot {
                if !slots.insert(s.clone()) {
                    return Err(field_err(
                        f("slot"),
                        format!("duplicate slot bootname `{s}`"),
                    ));
                }
                if p.fs != "ext4" && p.fs != "squashfs" {
                    return Err(field_err(f("fs"), "a root slot must be ext4 or squashfs"));
                }
            }
        }
        let boots: Vec<_> = partitions
            .iter()
            .filter(|p| p.role.as_deref() == Some("boot"))
            .collect();
        if boots.len() != 1 {
            return Err(field_err(
                "partition.role",
                "exactly one partition must have role = \"boot\"",
            ));
        }
        if boots[0].fs != "vfat" {
            return Err(field_err(
                format!("partition[{}].fs", boots[0].name),
                "the boot partition must be vfat",
            ));
        }

        // Fixed sizes first (resolving `=NAME` references), then placement.
        let mut fixed: Vec<Option<u64>> = Vec::new();
        let mut rest_idx = None;
        for (i, p) in partitions.iter().enumerate() {
            let field = format!("partition[{}].size", p.name);
            let s = p.size.trim();
            if s == "rest" {
                if rest_idx.is_some() {
                    return Err(field_err(field, "only one partition may be `rest`"));
                }
                if i + 1 != partitions.len() {
                    return Err(field_err(field, "a `rest` partition must be the last one"));
                }
                rest_idx = Some(i);
                fixed.push(None);
            } else if let Some(other) = s.strip_prefix('=') {
                let o = partitions
                    .iter()
                    .position(|q| q.name == other)
                    .ok_or_else(|| field_err(&field, format!("no partition named `{other}`")))?;
                match fixed.get(o).copied().flatten() {
                    Some(v) => fixed.push(Some(v)),
                    None => {
                        return Err(field_err(
                            field,
                            format!("`{other}` must be an earlier partition with a fixed size"),
                        ))
                    }
                }
            } else if let Some(pct) = s.strip_suffix('%') {
                let v = percent_size(&field, pct, &self.disk.size, alignment)?;
                fixed.push(Some(v));
            } else if s == SIZE_FROM_IMAGE {
                let v = self.image_size(&field, p, inputs)?;
                fixed.push(Some(round_up(v, alignment)));
            } else {
                let v = parse_size(&field, s)?;
                if v == 0 {
                    return Err(field_err(field, "must not be zero"));
                }
                if v % alignment != 0 {
                    return Err(field_err(
                        field,
                        format!(
                            "{} is not a multiple of the {} alignment (disk.alignment)",
                            Size(v),
                            Size(alignment)
                        ),
                    ));
                }
                fixed.push(Some(v));
            }
        }

        let first_usable = 34 * sector;
        let mut parts = Vec::new();
        let mut cursor = alignment.max(round_up(first_usable, alignment));
        let mut prev_name: Option<&str> = None;
        for (i, p) in partitions.iter().enumerate() {
            let offset = match &p.offset {
                Some(o) => {
                    let field = format!("partition[{}].offset", p.name);
                    let v = parse_size(&field, o)?;
                    if v % alignment != 0 {
                        return Err(field_err(
                            field,
                            format!("{} is not aligned to {}", Size(v), Size(alignment)),
                        ));
                    }
                    if v < first_usable {
                        return Err(field_err(field, "overlaps the primary GPT"));
                    }
                    if v < cursor {
                        return Err(field_err(
                            field,
                            format!(
                                "{} overlaps partition[{}], which ends at {}",
                                Size(v),
                                prev_name.unwrap_or("?"),
                                Size(cursor)
                            ),
                        ));
                    }
                    v
                }
                None => cursor,
            };
            let size = fixed[i].unwrap_or(0);
            parts.push(PlannedPart {
                index: (i + 1) as u32,
                name: p.name.clone(),
                label: p.label.clone(),
                fs_label: p.fs_label.clone().unwrap_or_else(|| fs_label_for(&p.label)),
                type_guid: parse_type(&format!("partition[{}].type", p.name), &p.type_)?,
                offset,
                size,
                fs: match p.fs.as_str() {
                    "vfat" => Fs::Vfat,
                    "ext4" => Fs::Ext4,
                    "uboot-env" => Fs::UbootEnv,
                    "squashfs" => Fs::Squashfs,
                    "verity" => Fs::Verity,
                    "none" => Fs::None,
                    other => {
                        return Err(field_err(
                            format!("partition[{}].fs", p.name),
                            format!(
                                "`{other}` is not vfat, ext4, squashfs, verity, uboot-env or none"
                            ),
                        ))
                    }
                },
                mount: p.mount.clone(),
                role: p.role.clone(),
                slot: p.slot.clone(),
                grow: p.grow,
                contents: p.contents.clone(),

                uuid: match &p.uuid {
                    None => None,
                    Some(u) => Some(Uuid::parse_str(u).map_err(|e| {
                        field_err(format!("partition[{}].uuid", p.name), format!("`{u}`: {e}"))
                    })?),
                },
                attributes: parse_attributes(&p.name, &p.attributes)?,
                mkfs_options: p.mkfs_options.clone(),
                env: env_geometry(p, size)?,
                verity_data: p.verity_data.clone(),
            });
            cursor = offset + size;
            prev_name = Some(&p.name);
        }

        let backup = BACKUP_GPT_SECTORS * sector;
        let disk_size = if self.disk.size.trim() == "auto" {
            if let Some(r) = rest_idx {
                let p = partitions[r];
                let field = format!("partition[{}].min-size", p.name);
                let min = match &p.min_size {
                    Some(m) => parse_size(&field, m)?,
                    None => alignment,
                };
                let min = round_up(min, alignment);
                parts[r].size = min;
                cursor = parts[r].offset + min;
            }
            round_up(cursor + backup, alignment)
        } else {
            let d = parse_size("disk.size", &self.disk.size)?;
            if d % sector != 0 {
                return Err(field_err(
                    "disk.size",
                    "must be a multiple of the sector size",
                ));
            }
            let usable_end = d.saturating_sub(backup) / alignment * alignment;
            if let Some(r) = rest_idx {
                let p = partitions[r];
                let min = match &p.min_size {
                    Some(m) => parse_size(&format!("partition[{}].min-size", p.name), m)?,
                    None => alignment,
                };
                let avail = usable_end.saturating_sub(parts[r].offset);
                if avail < min.max(alignment) {
                    return Err(field_err(
                        "disk.size",
                        format!(
                            "{} is too small: the partitions need at least {}",
                            Size(d),
                            Size(
                                parts[r].offset + round_up(min.max(alignment), alignment) + backup
                            )
                        ),
                    ));
                }
                parts[r].size = avail;
                cursor = parts[r].offset + avail;
            }
            if cursor + backup > d {
                return Err(field_err(
                    "disk.size",
                    format!(
                        "{} is too small: the partitions need at least {}",
                        Size(d),
                        Size(round_up(cursor + backup, alignment))
                    ),
                ));
            }
            d
        };

        for r in &self.renders {
            if let Some(i) = &r.install {
                if !parts.iter().any(|p| &p.name == i && p.fs == Fs::Vfat) {
                    return Err(field_err(
                        format!("render[{}].install", r.template),
                        format!("no vfat partition named `{i}`"),
                    ));
                }
            }
        }
        let boot = parts
            .iter()
            .find(|p| p.role.as_deref() == Some("boot"))
            .map(|p| p.size)
            .unwrap_or(0);
        if config_reserve * 4 > boot {
            return Err(field_err(
                "bootloader.config-reserve",
                "is larger than a quarter of the boot partition",
            ));
        }

        for (i, a) in parts.iter().enumerate() {
            if let Some(u) = a.uuid {
                if let Some(b) = parts[..i].iter().find(|b| b.uuid == Some(u)) {
                    return Err(field_err(
                        format!("partition[{}].uuid", a.name),
                        format!("{u} is also partition[{}]'s", b.name),
                    ));
                }
            }
        }
        for v in &parts {
            let field = format!("partition[{}].verity-data", v.name);
            match (v.fs, &v.verity_data) {
                (Fs::Verity, None) => {
                    return Err(field_err(
                        field,
                        "a verity partition names its data partition (verity-data = \"rootA\")",
                    ))
                }
                (Fs::Verity, Some(n)) => {
                    let Some(data) = parts.iter().find(|p| &p.name == n) else {
                        return Err(field_err(field, format!("no partition named `{n}`")));
                    };
                    if data.fs != Fs::Squashfs {
                        return Err(field_err(
                            field,
                            format!(
                                "partition[{n}] is {}, not squashfs (a read-only root)",
                                data.fs.as_str()
                            ),
                        ));
                    }
                    if let Some(o) = parts
                        .iter()
                        .find(|o| o.name != v.name && o.verity_data.as_deref() == Some(n.as_str()))
                    {
                        return Err(field_err(
                            field,
                            format!("partition[{}] already holds {n}'s hash tree", o.name),
                        ));
                    }
                    if v.contents.is_some() {
                        return Err(field_err(
                            format!("partition[{}].contents", v.name),
                            "a verity partition is computed from its data partition; it takes no contents",
                        ));
                    }
                }
                (_, Some(_)) => {
                    return Err(field_err(
                        field,
                        "is only for a partition with fs = \"verity\"",
                    ))
                }
                (_, None) => {}
            }
        }
        if self.disk.hybrid_mbr.len() > 3 {
            return Err(field_err(
                "disk.hybrid-mbr",
                "an MBR has four entries and the GPT's protective one takes one: at most 3",
            ));
        }
        for (i, n) in self.disk.hybrid_mbr.iter().enumerate() {
            let Some(p) = parts.iter().find(|p| &p.name == n) else {
                return Err(field_err(
                    "disk.hybrid-mbr",
                    format!("no partition named `{n}`"),
                ));
            };
            if self.disk.hybrid_mbr[..i].contains(n) {
                return Err(field_err(
                    "disk.hybrid-mbr",
                    format!("`{n}` is listed twice"),
                ));
            }
            if (p.offset + p.size) / sector > u32::MAX as u64 {
                return Err(field_err(
                    "disk.hybrid-mbr",
                    format!("partition[{n}] ends beyond the 2 TiB an MBR can address"),
                ));
            }
        }
        let first_part = parts.iter().map(|p| p.offset).min().unwrap_or(disk_size);
        let mut raws: Vec<PlannedRaw> = Vec::new();
        for r in &self.raws {
            let field = format!("raw[{}].offset", r.name);
            let offset = parse_size(&field, &r.offset)?;
            if raws.iter().any(|o| o.name == r.name) {
                return Err(field_err(format!("raw[{}].name", r.name), "is used twice"));
            }
            if offset < GPT_HEAD {
                return Err(field_err(
                    field,
                    format!(
                        "{offset} overlaps the primary GPT (bytes 0..{GPT_HEAD}); raw images go \
                         between it and the first partition"
                    ),
                ));
            }
            if offset >= first_part {
                return Err(field_err(
                    field,
                    format!(
                        "{offset} is not before the first partition, which starts at {first_part}"
                    ),
                ));
            }
            if matches!(r.contents, Contents::Dir(_) | Contents::Tar(_)) {
                return Err(field_err(
                    format!("raw[{}].contents", r.name),
                    "must be an `input` or an `image` file",
                ));
            }
            raws.push(PlannedRaw {
                name: r.name.clone(),
                offset,
                contents: r.contents.clone(),
            });
        }
        Ok(Plan {
            layout: self.clone(),
            sector,
            alignment,
            disk_size,
            config_reserve,
            parts,
            raws,
        })
    }
}

impl Plan {
    /// The boot (vfat) partition.
    pub fn boot(&self) -> Option<&PlannedPart> {
        self.role("boot")
    }
    /// The partition named `name`.
    pub fn part(&self, name: &str) -> Option<&PlannedPart> {
        self.parts.iter().find(|p| p.name == name)
    }
    /// The partition with role `role` (`boot`, `state`, `data`), the first if several.
    pub fn role(&self, role: &str) -> Option<&PlannedPart> {
        self.parts.iter().find(|p| p.role.as_deref() == Some(role))
    }
    /// The A/B root slots (the partitions with a `slot`, its bootname), in layout order:
    /// RAUC's slot `rootfs.N` is the N-th ([`crate::render::rauc_slot_name`]).
    pub fn root_slots(&self) -> impl Iterator<Item = &PlannedPart> {
        self.parts.iter().filter(|p| p.slot.is_some())
    }
}

fn parse_size(field: &str, s: &str) -> Result<u64, LayoutError> {
    Size::parse(s)
        .map(|s| s.0)
        .map_err(|e| field_err(field, e.to_string()))
}

fn parse_type(field: &str, s: &str) -> Result<Uuid, LayoutError> {
    match s {
        "esp" => Ok(ESP_TYPE),
        "linux" => Ok(LINUX_TYPE),
        g => Uuid::parse_str(g)
            .map_err(|_| field_err(field, format!("`{g}` is not esp, linux or a GUID"))),
    }
}

/// Rounds `v` up to a multiple of `a`.
pub fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// ext4 labels hold 16 bytes; vfat labels 11. Derive a label from the partition label.
fn fs_label_for(label: &str) -> String {
    label.chars().take(16).collect()
}

/// `N%` of an explicit `disk.size`, rounded down to the alignment.
/// `size = "image"`: the partition is as big as its image file, rounded up to the alignment.
pub const SIZE_FROM_IMAGE: &str = "image";

impl Layout {
    /// The byte length of partition `p`'s image file, for `size = "image"`.
    fn image_size(
        &self,
        field: &str,
        p: &PartitionSpec,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<u64, LayoutError> {
        let path = match &p.contents {
            Some(Contents::Image(f)) => self.resolve(f),
            Some(Contents::Input(name)) => inputs.get(name).cloned().ok_or_else(|| {
                field_err(
                    field,
                    format!(
                        "`image` takes the size of input `{name}`, which was not given \
                         (--input {name}=FILE)"
                    ),
                )
            })?,
            Some(Contents::Dir(_) | Contents::Tar(_)) | None => {
                return Err(field_err(
                    field,
                    "`image` needs an image file as contents ({ image = \"FILE\" } or \
                     { input = \"NAME\" } bound to a file)",
                ))
            }
        };
        let meta = std::fs::metadata(&path).map_err(|e| {
            field_err(
                field,
                format!("`image`: cannot read the size of {}: {e}", path.display()),
            )
        })?;
        if !meta.is_file() {
            return Err(field_err(
                field,
                format!("`image`: {} is not a regular file", path.display()),
            ));
        }
        if meta.len() == 0 {
            return Err(field_err(
                field,
                format!("`image`: {} is empty", path.display()),
            ));
        }
        Ok(meta.len())
    }
}

fn percent_size(field: &str, pct: &str, disk: &str, alignment: u64) -> Result<u64, LayoutError> {
    let p: f64 = pct
        .trim()
        .parse()
        .ok()
        .filter(|p: &f64| *p > 0.0 && *p <= 100.0)
        .ok_or_else(|| field_err(field, format!("`{pct}%` is not a percentage in (0, 100]")))?;
    if disk.trim() == "auto" {
        return Err(field_err(
            field,
            "a `%` size needs an explicit disk.size (it is `auto`)",
        ));
    }
    let d = parse_size("disk.size", disk)?;
    let v = ((d as f64 * p / 100.0) as u64) / alignment * alignment;
    if v == 0 {
        return Err(field_err(
            field,
            format!(
                "{pct}% of {} is less than the {} alignment",
                Size(d),
                Size(alignment)
            ),
        ));
    }
    Ok(v)
}

/// A `uboot-env` partition's copies, checked to fit; the env keys on any other partition are
/// an error. `size` is the partition's (0 for a `rest` one, which cannot hold an environment).
fn env_geometry(p: &PartitionSpec, size: u64) -> Result<Option<EnvGeometry>, LayoutError> {
    let f = |k: &str| format!("partition[{}].{k}", p.name);
    if p.fs != "uboot-env" {
        if p.env_size.is_some() || p.env_redundant.is_some() {
            return Err(field_err(
                f(if p.env_size.is_some() {
                    "env-size"
                } else {
                    "env-redundant"
                }),
                "is only for a partition with fs = \"uboot-env\"",
            ));
        }
        return Ok(None);
    }
    if p.contents.is_some() {
        return Err(field_err(
            f("contents"),
            "a uboot-env partition is rendered from the uboot-env.txt.j2 template; it takes no contents",
        ));
    }
    if p.size.trim() == "rest" {
        return Err(field_err(
            f("size"),
            "a uboot-env partition needs a fixed size",
        ));
    }
    let env = parse_size(
        &f("env-size"),
        p.env_size.as_deref().unwrap_or(DEFAULT_ENV_SIZE),
    )?;
    if env < 1024 || env % 512 != 0 {
        return Err(field_err(
            f("env-size"),
            format!(
                "{} is not a multiple of 512 bytes of at least 1KiB",
                Size(env)
            ),
        ));
    }
    let redundant = p.env_redundant.unwrap_or(true);
    let copies = if redundant { 2 } else { 1 };
    if env * copies > size {
        return Err(field_err(
            f("env-size"),
            format!(
                "{} {}is more than partition[{}].size {}",
                Size(env),
                if redundant {
                    "twice (env-redundant) "
                } else {
                    ""
                },
                p.name,
                Size(size)
            ),
        ));
    }
    Ok(Some(EnvGeometry {
        size: env,
        redundant,
    }))
}

/// GPT attribute names and bit numbers → the attribute word.
fn parse_attributes(part: &str, attrs: &[toml::Value]) -> Result<u64, LayoutError> {
    let mut bits = 0u64;
    for a in attrs {
        let bit = match a {
            toml::Value::String(s) => match s.as_str() {
                "required" => 0,
                "no-block-io" => 1,
                "legacy-bios-bootable" => 2,
                other => {
                    return Err(field_err(
                        format!("partition[{part}].attributes"),
                        format!(
                            "`{other}` is not required, no-block-io, legacy-bios-bootable or a bit number 0..=63"
                        ),
                    ))
                }
            },
            toml::Value::Integer(n) if (0..=63).contains(n) => *n as u32,
            other => {
                return Err(field_err(
                    format!("partition[{part}].attributes"),
                    format!("`{other}` is not an attribute name or a bit number 0..=63"),
                ))
            }
        };
        bits |= 1u64 << bit;
    }
    Ok(bits)
}

fn apply_set(root: &mut toml::Table, arg: &str) -> Result<(), LayoutError> {
    let set_err = |msg: &str| LayoutError::Set {
        arg: arg.to_string(),
        msg: msg.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| set_err("expected KEY=VALUE"))?;
    let mut path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(set_err("empty key segment"));
    }
    // Partition name first: `rootA.size` (or `partition.rootA.size`).
    let table: &mut toml::Table =
        if path[0] == "partition" || !matches!(path[0], "disk" | "bootloader") {
            if path[0] == "partition" {
                path.remove(0);
            }
            if path.len() == 1 && root.contains_key(path[0]) {
                root
            } else {
                let name = path.remove(0);
                let parts = root
                    .get_mut("partition")
                    .and_then(|v| v.as_array_mut())
                    .ok_or_else(|| set_err("the layout has no partitions"))?;
                let t = parts
                    .iter_mut()
                    .filter_map(|v| v.as_table_mut())
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
                    .ok_or_else(|| set_err(&format!("no partition named `{name}`")))?;
                if path.is_empty() {
                    return Err(set_err("missing the partition field"));
                }
                t
            }
        } else {
            root
        };
    let mut cur = table;
    let last = path.pop().ok_or_else(|| set_err("empty key"))?;
    for seg in path {
        cur = cur
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| set_err(&format!("`{seg}` is not a table")))?;
    }
    let value = match cur.get(last) {
        Some(toml::Value::String(_)) | None => {
            // Strings stay strings; a value that parses as TOML (numbers, bools) is typed.
            if matches!(cur.get(last), Some(toml::Value::String(_))) {
                toml::Value::String(raw.to_string())
            } else {
                parse_toml_value(raw)
            }
        }
        Some(_) => parse_toml_value(raw),
    };
    cur.insert(last.to_string(), value);
    Ok(())
}

fn parse_toml_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The shipped A/B layout, compiled in so `inspect` can check images without a layout file.
pub const DEFAULT_LAYOUT: &str = include_str!("../layouts/resin-ab.toml");

/// The shipped A/B layout, parsed.
pub fn default_layout() -> Result<Layout, LayoutError> {
    default_layout_with(&[])
}

/// The shipped layout with `--set` overrides; relative paths in it resolve against the
/// current directory.
pub fn default_layout_with(sets: &[String]) -> Result<Layout, LayoutError> {
    Layout::from_str_with(
        DEFAULT_LAYOUT,
        Path::new("<built-in resin-ab.toml>"),
        Path::new("."),
        sets,
    )
}

/// The layout at `path`, or the shipped one when no path is given.
pub fn load_or_default(path: Option<&Path>, sets: &[String]) -> Result<Layout, LayoutError> {
    match path {
        Some(p) => Layout::load(p, sets),
        None => default_layout_with(sets),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_plans_to_the_design_table() {
        let plan = default_layout().unwrap().plan().unwrap();
        let labels: Vec<_> = plan.parts.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "resin-boot",
                "resin-rootA",
                "resin-rootB",
                "resin-state",
                "resin-data"
            ]
        );
        assert_eq!(plan.parts[0].offset, 4 << 20);
        assert_eq!(plan.parts[0].size, 100 << 20);
        assert_eq!(plan.parts[1].size, 1 << 30);
        assert_eq!(plan.parts[2].size, 1 << 30);
        assert_eq!(plan.parts[3].size, 64 << 20);
        for p in &plan.parts {
            assert_eq!(p.offset % (4 << 20), 0, "{}", p.label);
        }
    }

    #[test]
    fn set_overrides_sizes_and_b_follows_a() {
        let l = Layout::from_str_with(
            DEFAULT_LAYOUT,
            Path::new("x"),
            Path::new("."),
            &["rootA.size=2GiB".into(), "bootloader.attempts=5".into()],
        )
        .unwrap();
        let plan = l.plan().unwrap();
        assert_eq!(plan.part("rootB").unwrap().size, 2 << 30);
        assert_eq!(plan.layout.boot.attempts, 5);
    }
}
