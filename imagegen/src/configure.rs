//! Writing `config.json` into an image's boot partition without rewriting any other byte.
//!
//! `build` reserves the file: `/config.json` in the FAT boot partition with a fixed size
//! (`boot.config-reserve`, 64 KiB by default). Configuring overwrites just those clusters with
//! the new JSON padded by trailing whitespace (still valid JSON); if the file's recorded size is
//! smaller than its clusters (a file made by another tool), the directory entry's size field is
//! the only other thing that changes. [`configured_reader`] applies the same patches on the fly
//! while streaming the base image, so no temporary copy is made.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::fat::{FatError, FatFile, FatVolume};
use crate::gptread::{check_partitions, read_gpt};
use crate::layout::ESP_TYPE;
use crate::sparse::{OverlayReader, Patch};

/// Name of the config file in the boot partition's root directory.
pub const CONFIG_NAME: &str = "config.json";
/// GPT label of the boot partition.
pub const BOOT_LABEL: &str = "resin-boot";

/// Why an image could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("I/O error on the image: {0}")]
    Io(#[from] std::io::Error),
    /// The image's partition table is missing or disagrees with the file or its filesystems
    /// (a sentence: "it is truncated: …").
    #[error("the image is unusable: {0}")]
    Image(String),
    #[error("the image has no boot partition (GPT label `resin-boot` or an EFI system partition)")]
    NoBootPartition,
    #[error(transparent)]
    Fat(#[from] FatError),
    #[error("the boot partition has no /config.json reservation; build the image with resin-imagegen (it reserves the space) or add a config.json of at least the config's size")]
    NoReservation,
    #[error("config.json is {len} bytes but the image reserves only {capacity} bytes for it")]
    TooLarge { len: usize, capacity: u64 },
    #[error("the config is not valid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("the config must be a JSON object")]
    NotObject,
    #[error("the root CA holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    RootCaNotPem,
}

/// config.json with `rootCA` set to `ca_pem` (base64 of the PEM text, the
/// only CA the device then trusts for the cloud); other fields are kept.
pub fn with_root_ca(config_json: &[u8], ca_pem: &[u8]) -> Result<Vec<u8>, ConfigureError> {
    let text = String::from_utf8_lossy(ca_pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigureError::RootCaNotPem);
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(config_json).map_err(ConfigureError::InvalidJson)?;
    let obj = v.as_object_mut().ok_or(ConfigureError::NotObject)?;
    obj.insert(
        "rootCA".into(),
        resin_api_types::encode_root_ca(ca_pem).into(),
    );
    serde_json::to_vec(&v).map_err(ConfigureError::InvalidJson)
}

/// Where the config lives in an image.
#[derive(Debug, Clone)]
pub struct ConfigSlot {
    pub volume: FatVolume,
    pub file: FatFile,
}

/// Finds the boot partition and its `/config.json` reservation.
pub fn locate(f: &File) -> Result<ConfigSlot, ConfigureError> {
    let gpt = read_gpt(f).map_err(ConfigureError::Image)?;
    check_partitions(f, &gpt).map_err(ConfigureError::Image)?;
    let boot = gpt
        .parts
        .iter()
        .find(|p| p.label == BOOT_LABEL)
        .or_else(|| gpt.parts.iter().find(|p| p.type_guid == ESP_TYPE))
        .ok_or(ConfigureError::NoBootPartition)?;
    let volume = FatVolume::open(f, boot.offset, boot.size)?;
    let file = volume
        .find_root_file(f, CONFIG_NAME)?
        .ok_or(ConfigureError::NoReservation)?;
    if file.extents.is_empty() {
        return Err(ConfigureError::NoReservation);
    }
    Ok(ConfigSlot { volume, file })
}

/// The config padded with whitespace to `capacity` bytes (valid JSON, ends in a newline).
pub fn padded_config(config_json: &[u8], capacity: u64) -> Result<Vec<u8>, ConfigureError> {
    let v: serde_json::Value =
        serde_json::from_slice(config_json).map_err(ConfigureError::InvalidJson)?;
    if !v.is_object() {
        return Err(ConfigureError::NotObject);
    }
    let body = trim_ascii_end(config_json);
    if body.len() as u64 + 1 > capacity {
        return Err(ConfigureError::TooLarge {
            len: body.len(),
            capacity,
        });
    }
    let mut out = body.to_vec();
    out.resize(capacity as usize - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

fn trim_ascii_end(b: &[u8]) -> &[u8] {
    let mut n = b.len();
    while n > 0 && b[n - 1].is_ascii_whitespace() {
        n -= 1;
    }
    &b[..n]
}

/// The byte patches that write `config_json` into the image `f`.
pub fn patches(f: &File, config_json: &[u8]) -> Result<Vec<Patch>, ConfigureError> {
    let slot = locate(f)?;
    let capacity = slot.file.capacity();
    let content = padded_config(config_json, capacity)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    for &(s, e) in &slot.file.extents {
        let n = (e - s) as usize;
        out.push(Patch {
            offset: s,
            bytes: content[pos..pos + n].to_vec(),
        });
        pos += n;
    }
    if slot.file.size as u64 != capacity {
        let size = u32::try_from(capacity).map_err(|_| ConfigureError::TooLarge {
            len: content.len(),
            capacity,
        })?;
        out.push(Patch {
            offset: slot.file.dirent_offset + 28,
            bytes: size.to_le_bytes().to_vec(),
        });
    }
    Ok(out)
}

/// Writes `config_json` into the image at `path` in place (only the config bytes change).
pub fn configure_in_place(path: &Path, config_json: &[u8]) -> Result<(), ConfigureError> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let ps = patches(&f, config_json)?;
    for p in &ps {
        f.write_all_at(&p.bytes, p.offset)?;
    }
    f.sync_data()?;
    Ok(())
}

/// Reads the config.json stored in an image (trailing padding removed).
pub fn read_config(f: &File) -> Result<Vec<u8>, ConfigureError> {
    let slot = locate(f)?;
    let bytes = slot.file.read(f)?;
    Ok(trim_ascii_end(&bytes).to_vec())
}

/// The whole image `base` with `config_json` written in, as a stream. Nothing is copied to a
/// temporary file: holes are emitted as zeros and the config bytes are substituted on the fly.
/// Errors (no reservation, config too large, invalid JSON) come before the first byte.
pub fn configured_reader(
    base: File,
    config_json: &[u8],
) -> Result<impl Read + Send + 'static, ConfigureError> {
    let ps = patches(&base, config_json)?;
    Ok(OverlayReader::new(base, ps)?)
}

/// Output compression of a streamed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Zstd,
    Xz,
}

impl Compression {
    /// File name suffix (with the dot), empty for none.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
        }
    }
}

/// Wraps a reader so it yields compressed bytes.
pub fn compress_reader<R: Read + Send + 'static>(
    r: R,
    c: Compression,
) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Zstd => Box::new(zstd::stream::read::Encoder::new(r, 3)?),
        Compression::Xz => Box::new(xz2::read::XzEncoder::new(r, 6)),
    })
}

/// [`configured_reader`], compressed.
pub fn configured_reader_compressed(
    base: File,
    config_json: &[u8],
    compression: Compression,
) -> Result<Box<dyn Read + Send>, ConfigureError> {
    let r = configured_reader(base, config_json)?;
    Ok(compress_reader(r, compression)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn root_ca_goes_into_config_json_as_base64_pem() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cfg = br#"{"apiEndpoint":"https://10.0.2.2:8443","fleetId":1,"fleetName":"f","deviceType":"qemuarm64","provisioningKey":"k","x":1}"#;
        let out = with_root_ca(cfg, pem).unwrap();
        let c = resin_api_types::ConfigJson::parse(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(c.root_ca_pem().unwrap().unwrap(), pem);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["x"], 1, "other fields are kept");
        assert!(matches!(
            with_root_ca(cfg, b"not a cert"),
            Err(ConfigureError::RootCaNotPem)
        ));
        assert!(matches!(
            with_root_ca(b"[1]", pem),
            Err(ConfigureError::NotObject)
        ));
    }
}
