//! `import-genimage`: reads a genimage configuration (libconfuse syntax) and writes the
//! equivalent resin-imagegen layout, listing what a layout cannot express.
//!
//! The parser covers what genimage configs use: sections `name ["title"] { … }`, options
//! `key = value` with quoted or bare values and `{ a, b }` lists, `#`, `//` and `/* */`
//! comments. The converter takes the first `hdimage` image: its partitions become
//! `[[partition]]`s (or `[[raw]]` images when `in-partition-table` is off), and an image that
//! the same file defines (`vfat`, `ext4`, `squashfs` sections) gives the partition its
//! filesystem, label, mkfs options and size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::layout::{Layout, GPT_HEAD};
use crate::size::Size;

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GenimageError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Content { path: PathBuf, msg: String },
}

/// An option's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Scalar(String),
    List(Vec<String>),
}

/// One item of a section body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Section {
        kind: String,
        title: Option<String>,
        items: Vec<Item>,
    },
    Opt {
        key: String,
        value: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Eq,
    Comma,
    Paren(char),
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, (usize, String)> {
    let mut out = Vec::new();
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        match ch {
            '\n' => {
                line += 1;
                i += 1;
            }
            ' ' | '\t' | '\r' | ';' => i += 1,
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let start = line;
                i += 2;
                loop {
                    if i + 1 >= c.len() {
                        return Err((start, "unterminated /* comment".into()));
                    }
                    if c[i] == '\n' {
                        line += 1;
                    }
                    if c[i] == '*' && c[i + 1] == '/' {
                        i += 2;
                        break;
                    }
                    i += 1;
                }
            }
            '{' => {
                out.push((Tok::Open, line));
                i += 1;
            }
            '}' => {
                out.push((Tok::Close, line));
                i += 1;
            }
            '=' => {
                out.push((Tok::Eq, line));
                i += 1;
            }
            ',' => {
                out.push((Tok::Comma, line));
                i += 1;
            }
            '(' | ')' => {
                out.push((Tok::Paren(ch), line));
                i += 1;
            }
            '"' | '\'' => {
                let start = line;
                let mut s = String::new();
                i += 1;
                loop {
                    let Some(&x) = c.get(i) else {
                        return Err((start, "unterminated string".into()));
                    };
                    i += 1;
                    if x == ch {
                        break;
                    }
                    if x == '\n' {
                        line += 1;
                    }
                    if x == '\\' && ch == '"' {
                        let Some(&e) = c.get(i) else {
                            return Err((start, "unterminated string".into()));
                        };
                        i += 1;
                        s.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    } else {
                        s.push(x);
                    }
                }
                out.push((Tok::Str(s), line));
            }
            _ => {
                let mut s = String::new();
                while i < c.len() && !" \t\r\n{}=,;\"'#()".contains(c[i]) {
                    if c[i] == '/' && matches!(c.get(i + 1), Some('/') | Some('*')) {
                        break;
                    }
                    s.push(c[i]);
                    i += 1;
                }
                out.push((Tok::Word(s), line));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .map(|t| t.1)
            .unwrap_or(1)
    }
    fn peek(&self, n: usize) -> Option<&Tok> {
        self.toks.get(self.pos + n).map(|t| &t.0)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, (usize, String)> {
        Err((self.line(), msg.into()))
    }

    fn body(&mut self, top: bool) -> Result<Vec<Item>, (usize, String)> {
        let mut items = Vec::new();
        loop {
            match self.next() {
                None if top => return Ok(items),
                None => return self.err("a `}` is missing at the end"),
                Some(Tok::Close) if !top => return Ok(items),
                Some(Tok::Word(w)) => match self.peek(0) {
                    Some(Tok::Eq) => {
                        self.pos += 1;
                        let value = self.value()?;
                        items.push(Item::Opt { key: w, value });
                    }
                    Some(Tok::Open) => {
                        self.pos += 1;
                        let inner = self.body(false)?;
                        items.push(Item::Section {
                            kind: w,
                            title: None,
                            items: inner,
                        });
                    }
                    Some(Tok::Word(_)) | Some(Tok::Str(_)) => {
                        let title = match self.next() {
                            Some(Tok::Word(t)) | Some(Tok::Str(t)) => t,
                            _ => return self.err("expected a section title"),
                        };
                        if self.next() != Some(Tok::Open) {
                            return self.err(format!("expected `{{` after `{w} {title}`"));
                        }
                        let inner = self.body(false)?;
                        items.push(Item::Section {
                            kind: w,
                            title: Some(title),
                            items: inner,
                        });
                    }
                    Some(Tok::Paren('(')) => {
                        return self.err(format!(
                            "`{w}(…)` (a libconfuse function such as include) is not supported: \
                             merge the included file first"
                        ))
                    }
                    _ => return self.err(format!("expected `=` or `{{` after `{w}`")),
                },
                Some(t) => return self.err(format!("unexpected {t:?}")),
            }
        }
    }

    fn scalar(&mut self) -> Result<String, (usize, String)> {
        match self.next() {
            Some(Tok::Word(w)) | Some(Tok::Str(w)) => Ok(w),
            other => self.err(format!("expected a value, found {other:?}")),
        }
    }

    fn value(&mut self) -> Result<Value, (usize, String)> {
        if self.peek(0) == Some(&Tok::Open) {
            self.pos += 1;
            let mut list = Vec::new();
            if self.peek(0) == Some(&Tok::Close) {
                self.pos += 1;
                return Ok(Value::List(list));
            }
            loop {
                list.push(self.scalar()?);
                match self.next() {
                    Some(Tok::Comma) => continue,
                    Some(Tok::Close) => return Ok(Value::List(list)),
                    other => return self.err(format!("expected `,` or `}}`, found {other:?}")),
                }
            }
        }
        Ok(Value::Scalar(self.scalar()?))
    }
}

/// Parses genimage/libconfuse text into its items.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Item>, GenimageError> {
    let syn = |(line, msg): (usize, String)| GenimageError::Syntax {
        path: path.to_path_buf(),
        line,
        msg,
    };
    let toks = tokenize(text).map_err(syn)?;
    Parser { toks, pos: 0 }.body(true).map_err(syn)
}

/// The layout text and the list of what it could not express.
#[derive(Debug, Clone)]
pub struct Imported {
    pub layout: String,
    pub notes: Vec<String>,
}

fn opt<'a>(items: &'a [Item], key: &str) -> Option<&'a Value> {
    items.iter().find_map(|i| match i {
        Item::Opt { key: k, value } if k == key => Some(value),
        _ => None,
    })
}

fn scalar<'a>(items: &'a [Item], key: &str) -> Option<&'a str> {
    match opt(items, key) {
        Some(Value::Scalar(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn truthy(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
}

/// genimage sizes: a number with an optional `k`/`K`, `M`, `G`, `T` (1024-based) or `s`
/// (512-byte sectors) suffix; `%` is not supported here.
fn genimage_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'M') => (&s[..i], 1 << 20),
        (i, 'G') => (&s[..i], 1 << 30),
        (i, 'T') => (&s[..i], 1 << 40),
        (i, 's') => (&s[..i], 512),
        _ => (s, 1),
    };
    let n = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse::<u64>().ok()?
    };
    n.checked_mul(mul)
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// An `image NAME { … }` section the config defines.
struct ImageDef<'a> {
    kind: &'a str,
    body: &'a [Item],
    size: Option<u64>,
}

/// Partition type from genimage's `partition-type` (an MBR byte) or `partition-type-uuid`
/// (a GUID or sfdisk's shortcut).
fn gpt_type(items: &[Item], notes: &mut Vec<String>, name: &str) -> String {
    const BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
    if let Some(u) = scalar(items, "partition-type-uuid") {
        return match u.to_ascii_lowercase().as_str() {
            "l" | "linux" => "linux".into(),
            "u" | "esp" | "uefi" => "esp".into(),
            "s" | "swap" => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f".into(),
            "h" | "home" => "933ac7e1-2eb4-4f13-b844-0e14e2aef915".into(),
            "f" => BASIC_DATA.into(),
            g if uuid::Uuid::parse_str(g).is_ok() => g.into(),
            other => {
                notes.push(format!(
                    "partition {name}: partition-type-uuid `{other}` is not a GUID or a known \
                     shortcut (L, U, S, H, F); written as linux"
                ));
                "linux".into()
            }
        };
    }
    let Some(t) = scalar(items, "partition-type") else {
        return "linux".into();
    };
    let byte = t
        .strip_prefix("0x")
        .map(|h| u8::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| t.parse().ok());
    match byte {
        Some(0x83) => "linux".into(),
        Some(0xEF) => "esp".into(),
        Some(0x82) => "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f".into(),
        Some(0x01 | 0x04 | 0x06 | 0x0B | 0x0C | 0x0E) => BASIC_DATA.into(),
        _ => {
            notes.push(format!(
                "partition {name}: MBR partition-type {t} has no GPT equivalent here; written as linux"
            ));
            "linux".into()
        }
    }
}

/// Converts a parsed config. `inputpath` is genimage's `--inputpath` (where images that the
/// config does not define are found, to size their partitions); `device_type` the layout's.
pub fn convert(
    items: &[Item],
    path: &Path,
    inputpath: Option<&Path>,
    device_type: &str,
) -> Result<Imported, GenimageError> {
    let content = |msg: String| GenimageError::Content {
        path: path.to_path_buf(),
        msg,
    };
    let mut notes = Vec::new();
    let mut defs: BTreeMap<&str, ImageDef> = BTreeMap::new();
    let mut disks = Vec::new();
    for it in items {
        match it {
            Item::Section {
                kind,
                title: Some(name),
                items: body,
            } if kind == "image" => {
                let inner = body.iter().find_map(|i| match i {
                    Item::Section { kind, items, .. } if kind != "partition" => {
                        Some((kind.as_str(), items.as_slice()))
                    }
                    _ => None,
                });
                let size = scalar(body, "size").and_then(genimage_size);
                match inner {
                    Some(("hdimage", hd)) => disks.push((name.as_str(), body.as_slice(), hd, size)),
                    Some((k, b)) => {
                        defs.insert(
                            name.as_str(),
                            ImageDef {
                                kind: k,
                                body: b,
                                size,
                            },
                        );
                    }
                    None => notes.push(format!("image {name}: no image type section; ignored")),
                }
            }
            Item::Section { kind, .. } if kind == "config" => notes.push(
                "the config section (tool paths, inputpath, …) is not a layout concept; ignored"
                    .into(),
            ),
            Item::Section { kind, title, .. } => notes.push(format!(
                "{kind} {}: not an image; ignored",
                title.as_deref().unwrap_or("")
            )),
            Item::Opt { key, .. } => notes.push(format!("top-level option {key}: ignored")),
        }
    }
    let Some(&(disk_name, body, hd, disk_size)) = disks.first() else {
        return Err(content(
            "no `image … { hdimage { … } … }`: only disk images with a partition table convert to a layout".into(),
        ));
    };
    for (n, ..) in disks.iter().skip(1) {
        notes.push(format!(
            "image {n}: only the first hdimage ({disk_name}) is converted"
        ));
    }

    // The partition table.
    let table = scalar(hd, "partition-table-type")
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            scalar(hd, "gpt").map(|g| {
                if truthy(g) {
                    "gpt".into()
                } else {
                    "mbr".into()
                }
            })
        })
        .unwrap_or_else(|| "mbr".into());
    for it in hd {
        if let Item::Opt { key, value } = it {
            match key.as_str() {
                "partition-table-type" | "gpt" | "align" => {}
                "partition-table" if matches!(value, Value::Scalar(s) if !truthy(s)) => notes
                    .push("hdimage: partition-table = false (no table) cannot be expressed: the layout writes a GPT".into()),
                other => notes.push(format!("hdimage: {other} is not expressed in the layout")),
            }
        }
    }
    let mut alignment: u64 = 4 << 20;
    if let Some(a) = scalar(hd, "align").and_then(genimage_size) {
        if a > alignment && a.is_power_of_two() {
            alignment = a;
        }
    }

    // Partitions.
    struct Part {
        name: String,
        lines: Vec<String>,
        offset: Option<u64>,
        size: Option<u64>,
        /// No size in the config, and an image genimage would take its size from: the
        /// layout says `size = "image"` (`size` is then the file's length, if it was found).
        from_image: bool,
        fs: String,
        rest: bool,
    }
    let mut parts: Vec<Part> = Vec::new();
    let mut raws: Vec<String> = Vec::new();
    let mut boot_seen = false;
    for it in body {
        let Item::Section {
            kind,
            title,
            items: p,
        } = it
        else {
            if let Item::Opt { key, .. } = it {
                if key != "size" {
                    notes.push(format!("image {disk_name}: {key} is not expressed"));
                }
            }
            continue;
        };
        if kind != "partition" {
            continue;
        }
        let name = title
            .clone()
            .unwrap_or_else(|| format!("part{}", parts.len() + 1));
        let image = scalar(p, "image");
        let offset = scalar(p, "offset").and_then(genimage_size);
        let in_table = scalar(p, "in-partition-table").is_none_or(truthy);
        for it in p {
            if let Item::Opt { key, .. } = it {
                match key.as_str() {
                    "image"
                    | "offset"
                    | "size"
                    | "in-partition-table"
                    | "partition-type"
                    | "partition-type-uuid"
                    | "partition-uuid"
                    | "bootable"
                    | "read-only"
                    | "hidden"
                    | "no-automount"
                    | "autoresize" => {}
                    other => notes.push(format!("partition {name}: {other} is not expressed")),
                }
            }
        }
        if !in_table {
            let Some(off) = offset else {
                notes.push(format!(
                    "partition {name}: outside the partition table without an offset; left out"
                ));
                continue;
            };
            if off < GPT_HEAD {
                notes.push(format!(
                    "partition {name}: offset {off} lies inside the primary GPT (bytes 0..{GPT_HEAD}); \
                     the layout writes a GPT, so this raw image is left out (boot ROMs that read \
                     there, e.g. i.MX6 at 1KiB, need an MBR-only disk)"
                ));
                continue;
            }
            let contents = match image {
                Some(i) => match inputpath.map(|d| d.join(i)).filter(|p| p.exists()) {
                    Some(p) => format!("{{ image = {} }}", q(&p.display().to_string())),
                    None => format!("{{ input = {} }}", q(&name)),
                },
                None => {
                    notes.push(format!("partition {name}: no image; left out"));
                    continue;
                }
            };
            raws.push(format!(
                "[[raw]]\n# genimage partition {name}, image {}\nname = {}\noffset = {}\ncontents = {contents}\n",
                image.unwrap_or("-"),
                q(&name),
                q(&Size(off).to_string())
            ));
            continue;
        }

        let mut lines = vec![
            format!("name = {}", q(&name)),
            format!("label = {}", q(&name)),
        ];
        lines.push(format!("type = {}", q(&gpt_type(p, &mut notes, &name))));
        let def = image.and_then(|i| defs.get(i));
        let mut size = scalar(p, "size").and_then(genimage_size);
        let mut from_image = false;
        let mut fs = "none".to_string();
        let mut extra: Vec<String> = Vec::new();
        match (image, def) {
            (Some(i), Some(d)) => {
                size = size.or(d.size);
                let stem = i.split('.').next().unwrap_or(i).to_string();
                match d.kind {
                    "vfat" => {
                        fs = "vfat".into();
                        if let Some(files) = opt(d.body, "files") {
                            let list = match files {
                                Value::List(l) => l.join(", "),
                                Value::Scalar(s) => s.clone(),
                            };
                            notes.push(format!(
                                "image {i}: its files ({list}) are a list, not a layout concept: \
                                 the partition's contents are input `{stem}`; bind a directory \
                                 holding those files with --input {stem}=DIR"
                            ));
                        }
                        for it in d.body {
                            if let Item::Section { kind, title, .. } = it {
                                notes.push(format!(
                                    "image {i}: {kind} {} is not expressed",
                                    title.as_deref().unwrap_or("")
                                ));
                            }
                        }
                    }
                    "ext2" | "ext3" | "ext4" => {
                        fs = "ext4".into();
                        if d.kind != "ext4" {
                            notes.push(format!("image {i}: {} becomes ext4", d.kind));
                        }
                        if let Some(f) = scalar(d.body, "features") {
                            extra.push("-O".into());
                            extra.push(f.to_string());
                        }
                        if let Some(x) = scalar(d.body, "extraargs") {
                            extra.extend(x.split_whitespace().map(str::to_string));
                        }
                    }
                    "squashfs" => fs = "squashfs".into(),
                    other => notes.push(format!(
                        "image {i}: {other} images are not made by resin-imagegen; the partition \
                         takes a ready-made image as input `{stem}`"
                    )),
                }
                if let Some(l) = scalar(d.body, "label") {
                    lines.push(format!("fs-label = {}", q(l)));
                }
                if let Some(m) = scalar(d.body, "mountpoint").filter(|m| *m != "/") {
                    notes.push(format!(
                        "image {i}: mountpoint {m} (a subtree of the rootfs): bind that directory \
                         with --input {stem}=DIR"
                    ));
                }
                for it in d.body {
                    if let Item::Opt { key, .. } = it {
                        if !matches!(
                            key.as_str(),
                            "files"
                                | "label"
                                | "features"
                                | "extraargs"
                                | "use-mke2fs"
                                | "mountpoint"
                        ) {
                            notes.push(format!("image {i}: {key} is not expressed"));
                        }
                    }
                }
                let input = if fs == "ext4" && parts.iter().all(|p| p.fs != "ext4") {
                    "rootfs".to_string()
                } else {
                    stem
                };
                lines.push(format!("contents = {{ input = {} }}", q(&input)));
            }
            (Some(i), None) => {
                from_image = size.is_none();
                let lower = i.to_ascii_lowercase();
                fs = if lower.ends_with(".ext4")
                    || lower.ends_with(".ext3")
                    || lower.ends_with(".ext2")
                {
                    "ext4"
                } else if lower.ends_with(".vfat") || lower.ends_with(".fat") {
                    "vfat"
                } else if lower.ends_with(".squashfs") || lower.ends_with(".sqfs") {
                    "squashfs"
                } else {
                    "none"
                }
                .into();
                match inputpath.map(|d| d.join(i)).filter(|p| p.exists()) {
                    Some(file) => {
                        if size.is_none() {
                            size = std::fs::metadata(&file).ok().map(|m| m.len());
                        }
                        lines.push(format!(
                            "contents = {{ image = {} }}",
                            q(&file.display().to_string())
                        ));
                    }
                    None => {
                        let input = i.split('.').next().unwrap_or(i);
                        lines.push(format!("contents = {{ input = {} }}", q(input)));
                    }
                }
            }
            (None, _) => {}
        }
        lines.push(format!("fs = {}", q(&fs)));
        if fs == "vfat" && !boot_seen {
            boot_seen = true;
            lines.push("role = \"boot\"".into());
        }
        if !extra.is_empty() {
            let v: Vec<String> = extra.iter().map(|e| q(e)).collect();
            lines.push(format!("mkfs-options = [{}]", v.join(", ")));
        }
        if let Some(u) = scalar(p, "partition-uuid") {
            lines.push(format!("uuid = {}", q(u)));
        }
        let mut attrs = Vec::new();
        if scalar(p, "bootable").is_some_and(truthy) {
            attrs.push("\"legacy-bios-bootable\"");
        }
        for (k, bit) in [
            ("read-only", "60"),
            ("hidden", "62"),
            ("no-automount", "63"),
        ] {
            if scalar(p, k).is_some_and(truthy) {
                attrs.push(bit);
            }
        }
        if !attrs.is_empty() {
            lines.push(format!("attributes = [{}]", attrs.join(", ")));
        }
        let rest = scalar(p, "autoresize").is_some_and(truthy);
        parts.push(Part {
            name,
            lines,
            offset,
            size,
            from_image,
            fs,
            rest,
        });
    }
    if parts.is_empty() {
        return Err(content(format!(
            "image {disk_name} has no partitions in its table"
        )));
    }

    // The largest alignment (up to 4 MiB, at least one sector) that every explicit offset and
    // size keeps.
    while alignment > 512
        && parts.iter().any(|p| {
            p.offset.is_some_and(|o| o % alignment != 0)
                || (!p.rest
                    && !p.from_image
                    && p.size.is_some_and(|s| s % alignment != 0 && s > alignment))
        })
    {
        alignment /= 2;
    }

    let mut out = format!(
        "# Imported by `resin-imagegen import-genimage` from {} (image {disk_name}).\n\
         # It renders no boot files ([[render]]); add the ones you need (docs/imagegen.md).\n\
         device-type = {}\n\n[disk]\ntable = \"gpt\"\nalignment = {}\n",
        path.display(),
        q(device_type),
        q(&Size(alignment).to_string())
    );
    if let Some(s) = disk_size {
        out += &format!("size = {}\n", q(&Size(s).to_string()));
    }
    match table.as_str() {
        "gpt" => {}
        "mbr" | "dos" | "hybrid" => {
            let listed: Vec<String> = parts.iter().take(3).map(|p| q(&p.name)).collect();
            out += &format!("hybrid-mbr = [{}]\n", listed.join(", "));
            notes.push(format!(
                "hdimage: partition-table-type {table}: the layout writes a GPT with a hybrid MBR \
                 listing {} (an MBR-only disk cannot be expressed{})",
                listed.join(", "),
                if parts.len() > 3 {
                    format!(
                        "; the other {} partitions are in the GPT only",
                        parts.len() - 3
                    )
                } else {
                    String::new()
                }
            ));
        }
        other => notes.push(format!(
            "hdimage: partition-table-type {other} cannot be expressed; the layout writes a GPT"
        )),
    }
    let last = parts.len() - 1;
    for (i, p) in parts.iter().enumerate() {
        out += &format!("\n[[partition]]\n# genimage partition {}\n", p.name);
        for l in &p.lines {
            out += l;
            out.push('\n');
        }
        if let Some(o) = p.offset {
            out += &format!("offset = {}\n", q(&Size(o).to_string()));
        }
        if p.rest && i == last {
            out += "size = \"rest\"\ngrow = true\n";
            if let Some(s) = p.size {
                out += &format!(
                    "min-size = {}\n",
                    q(&Size(s.div_ceil(alignment) * alignment).to_string())
                );
            }
        } else {
            if p.rest {
                notes.push(format!(
                    "partition {}: autoresize on a partition that is not the last cannot be expressed",
                    p.name
                ));
            }
            match p.size {
                _ if p.from_image => {
                    out += "size = \"image\"  # genimage: the image's size\n";
                    if p.size.is_none() {
                        notes.push(format!(
                            "partition {}: no size: `size = \"image\"` takes the size of its \
                             image, bound at build time with --input",
                            p.name
                        ));
                    }
                }
                Some(s) => {
                    out += &format!(
                        "size = {}\n",
                        q(&Size(s.div_ceil(alignment) * alignment).to_string())
                    );
                }
                None => {
                    notes.push(format!(
                        "partition {}: neither a size nor an image: set size (1GiB written)",
                        p.name
                    ));
                    out += "size = \"1GiB\"  # placeholder: no size and no image in genimage's config\n";
                }
            }
        }
    }
    for r in &raws {
        out.push('\n');
        out += r;
    }
    // The result must load and validate as a layout; what does not is listed too.
    // A `size = "image"` partition whose image is an input is sized at build time: it is
    // validated with the alignment as a stand-in size.
    let stand_ins: Vec<String> = parts
        .iter()
        .filter(|p| p.from_image && p.size.is_none())
        .map(|p| format!("{}.size={}", p.name, Size(alignment)))
        .collect();
    match Layout::from_str_with(
        &out,
        Path::new("<imported layout>"),
        Path::new("."),
        &stand_ins,
    )
    .map_err(|e| e.to_string())
    .and_then(|l| l.plan().map_err(|e| e.to_string()))
    {
        Ok(_) => {}
        Err(e) => notes.push(format!("the imported layout does not validate: {e}")),
    }
    Ok(Imported { layout: out, notes })
}

/// Reads and converts the genimage config at `path`.
pub fn import(
    path: &Path,
    inputpath: Option<&Path>,
    device_type: Option<&str>,
) -> Result<Imported, GenimageError> {
    let text = std::fs::read_to_string(path).map_err(|source| GenimageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let items = parse(&text, path)?;
    let derived: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let dt = device_type
        .map(str::to_string)
        .filter(|d| !d.is_empty())
        .unwrap_or(if derived.is_empty() {
            "imported".into()
        } else {
            derived
        });
    convert(&items, path, inputpath, &dt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_options_lists_and_comments() {
        let items = parse(
            "# c\nimage a.img { /* x\n y */ hdimage { gpt = true } // z\n  partition p { image = \"b\" offset = 1M }\n files = { \"x\", y } }",
            Path::new("t"),
        )
        .unwrap();
        let Item::Section { kind, title, items } = &items[0] else {
            panic!()
        };
        assert_eq!((kind.as_str(), title.as_deref()), ("image", Some("a.img")));
        assert_eq!(items.len(), 3);
        assert_eq!(
            opt(items, "files"),
            Some(&Value::List(vec!["x".into(), "y".into()]))
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("image a {\n  x = \n}", Path::new("f.cfg")).unwrap_err();
        assert!(e.to_string().starts_with("f.cfg:3:"), "{e}");
        let e = parse("include(\"other.cfg\")", Path::new("f.cfg")).unwrap_err();
        assert!(e.to_string().contains("include"), "{e}");
    }

    #[test]
    fn sizes_follow_genimage() {
        assert_eq!(genimage_size("33K"), Some(33 * 1024));
        assert_eq!(genimage_size("8M"), Some(8 << 20));
        assert_eq!(genimage_size("2048s"), Some(1 << 20));
        assert_eq!(genimage_size("0x400"), Some(1024));
        assert_eq!(genimage_size("x"), None);
    }
}
