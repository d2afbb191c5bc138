//! Shared `qemu-img` knowledge for every kind that makes or reads disk images:
//! sizes in qemu-img's units, the [`Tool`] entry, and what `qemu-img info
//! --output=json` says about an image (its format, backing file, qcow2 compat
//! level and internal snapshots), and the one way qflow makes a qcow2 overlay over
//! an upstream image ([`create_overlay`], [`overlay_argv`]).
//!
//! The format of an image is always asked of `qemu-img info`, never guessed from
//! its name: a cloud image called `.img` is usually qcow2. Use [`info`] (it runs
//! through the step's [`RunContext`], so it is logged and killed on Ctrl-C) or
//! [`ImageInfo::parse`] on JSON you already have.
//!
//! ```ignore
//! let size = Size::parse("10G")?;                // 10 GiB, like qemu-img
//! let info = qemu_img::info(ctx, &image)?;       // qemu-img info --output=json
//! if info.format == ImageFormat::Qcow2 { ... }
//! let overlay = qemu_img::create_overlay(ctx, &out_dir, "image.qcow2", &upstream)?;
//! ```
//!
//! An overlay names its backing file by a path relative to the overlay's directory
//! (`../<upstream tree>/image.qcow2`), which resolves while the step runs in
//! `<cache>/trees/.tmp-XXX/`, after the rename to `<cache>/trees/<hash>/`, and after
//! the whole cache directory moves; `-F` records the backing format `qemu-img info`
//! found, so QEMU never probes it.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use qflow_engine::{RunContext, Tool};

/// The `qemu-img` tool entry for [`qflow_engine::Step::tools`].
pub fn tool() -> Tool {
    Tool::new("qemu-img", &["--version"], "qemu-utils")
}

/// The units qemu-img accepts, for error messages.
pub const SIZE_UNITS: &str = "a number of bytes, or a number with one of the units k, M, G, T, P, E (powers of 1024, either case), e.g. `512M`, `10G`, `1.5T`";

/// An image size in bytes, parsed from qemu-img's notation (`512M`, `10G`, `1T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parse a size as qemu-img does: bytes, or a decimal number followed by one
    /// of `k K M G T P E` (binary multiples; `b`/`B` means bytes). The error
    /// names the accepted units: `10X` is rejected.
    pub fn parse(text: &str) -> Result<Size, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
            return Err(format!("`{text}` is not a size; use {SIZE_UNITS}"));
        }
        let shift = match unit {
            "" | "b" | "B" => 0,
            "k" | "K" => 10,
            "m" | "M" => 20,
            "g" | "G" => 30,
            "t" | "T" => 40,
            "p" | "P" => 50,
            "e" | "E" => 60,
            _ => {
                return Err(format!(
                    "`{text}` has an unknown unit `{unit}`; use {SIZE_UNITS}"
                ));
            }
        };
        let multiplier = 1u128 << shift;
        let bytes = match number.split_once('.') {
            None => {
                number
                    .parse::<u128>()
                    .map_err(|_| format!("`{text}` is too large"))?
                    * multiplier
            }
            Some((whole, frac)) => {
                if shift == 0 {
                    return Err(format!("`{text}`: a number of bytes must be whole"));
                }
                let whole: u128 = whole
                    .parse()
                    .map_err(|_| format!("`{text}` is too large"))?;
                let digits = frac.len().min(18) as u32;
                let frac: u128 = frac[..digits as usize].parse().unwrap_or(0);
                whole * multiplier + frac * multiplier / 10u128.pow(digits)
            }
        };
        if bytes == 0 {
            return Err(format!(
                "`{text}` is zero; an image needs a size above zero"
            ));
        }
        u64::try_from(bytes)
            .ok()
            .filter(|b| *b <= i64::MAX as u64)
            .map(Size)
            .ok_or_else(|| format!("`{text}` is too large for an image"))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The argument qemu-img, mke2fs and friends get: the exact byte count.
    pub fn arg(self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for Size {
    /// The shortest exact qemu-img spelling (`10G`, `1536M`, `1000`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [
            (60, "E"),
            (50, "P"),
            (40, "T"),
            (30, "G"),
            (20, "M"),
            (10, "K"),
        ] {
            if self.0 >= (1 << shift) && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A disk image format as qemu-img names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormat {
    Qcow2,
    Raw,
    /// Any other format qemu-img knows (`vmdk`, `vdi`, `vpc`, ...).
    Other(String),
}

impl ImageFormat {
    pub fn from_name(name: &str) -> ImageFormat {
        match name {
            "qcow2" => ImageFormat::Qcow2,
            "raw" => ImageFormat::Raw,
            other => ImageFormat::Other(other.to_string()),
        }
    }

    /// The name qemu-img uses (`-f`, `-F`, `-O`).
    pub fn name(&self) -> &str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
            ImageFormat::Other(s) => s,
        }
    }

    /// The output file name an image-producing step uses for this format:
    /// `image.qcow2`, `image.raw` (see `image_file`).
    pub fn file_name(&self) -> String {
        format!("image.{}", self.name())
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One internal snapshot (`qemu-img snapshot -l`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
}

/// What `qemu-img info --output=json` says about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the file takes on the host.
    pub actual_size: Option<u64>,
    /// The backing file as written in the image (relative paths stay relative).
    pub backing_file: Option<String>,
    /// The backing file's format, when the image records it (`-F`).
    pub backing_format: Option<String>,
    /// qcow2 only: `0.10` (qcow2 v2) or `1.1` (v3).
    pub compat: Option<String>,
    pub snapshots: Vec<Snapshot>,
}

impl ImageInfo {
    /// Parse the JSON of `qemu-img info --output=json` (one image, not `--backing-chain`).
    pub fn parse(json: &str) -> anyhow::Result<ImageInfo> {
        let v: serde_json::Value =
            serde_json::from_str(json).context("`qemu-img info` did not print JSON")?;
        let str_of = |key: &str| v.get(key).and_then(|x| x.as_str()).map(|s| s.to_string());
        let format = str_of("format").context("`qemu-img info` printed no `format`")?;
        let virtual_size = v
            .get("virtual-size")
            .and_then(|x| x.as_u64())
            .context("`qemu-img info` printed no `virtual-size`")?;
        let compat = v
            .pointer("/format-specific/data/compat")
            .and_then(|x| x.as_str())
            .map(|s| s.to_string());
        let snapshots = v
            .get("snapshots")
            .and_then(|s| s.as_array())
            .map(|list| {
                list.iter()
                    .map(|s| Snapshot {
                        id: s
                            .get("id")
                            .and_then(|x| x.as_str())
                            .unwrap_or_default()
                            .to_string(),
                        name: s
                            .get("name")
                            .and_then(|x| x.as_str())
                            .unwrap_or_default()
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ImageInfo {
            format: ImageFormat::from_name(&format),
            virtual_size,
            actual_size: v.get("actual-size").and_then(|x| x.as_u64()),
            backing_file: str_of("backing-filename"),
            backing_format: str_of("backing-filename-format"),
            compat,
            snapshots,
        })
    }

    /// Snapshot names, comma-separated, for a `qflow.lock` note.
    pub fn snapshot_names(&self) -> String {
        self.snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Run `qemu-img info --output=json -U IMAGE` through the step's context and parse
/// it. The format is probed by qemu-img (read-only), which is what detection means
/// here; `-U` (force share) lets it read an image a running QEMU holds locked, as
/// parallel runs of a boot over one cached image do.
pub fn info(ctx: &mut RunContext, image: &Path) -> anyhow::Result<ImageInfo> {
    let mut cmd = ctx.command("qemu-img");
    cmd.args(["info", "--output=json", "-U"]).arg(image);
    let json = ctx.run_capture(cmd)?;
    ImageInfo::parse(&json).with_context(|| {
        format!(
            "cannot read what `qemu-img info` says about {}",
            image.display()
        )
    })
}

/// The backing-file reference for an overlay created in `dir` over `image`: `image`
/// relative to `dir`, both resolved on disk first (both must exist).
pub fn backing_reference(dir: &Path, image: &Path) -> anyhow::Result<String> {
    Ok(qflow_engine::paths::relative_to_existing(dir, image)?
        .to_string_lossy()
        .into_owned())
}

/// `qemu-img create -f qcow2 -b BACKING -F FORMAT OUT [SIZE]`: a qcow2 overlay over
/// `backing` (a reference relative to the overlay's directory), optionally grown to `size`.
pub fn overlay_argv(
    backing: &str,
    backing_format: &str,
    out: &str,
    size: Option<Size>,
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "qemu-img",
        "create",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        backing_format,
        out,
    ]
    .map(String::from)
    .to_vec();
    argv.extend(size.map(Size::arg));
    argv
}

/// Create the qcow2 overlay `dir/name` over the existing image `backing`: its format
/// asked of `qemu-img info`, its path written relative to `dir`. `qemu-img` runs in
/// `dir`, so the reference resolves the way QEMU will resolve it later.
pub fn create_overlay(
    ctx: &mut RunContext,
    dir: &Path,
    name: &str,
    backing: &Path,
) -> anyhow::Result<PathBuf> {
    let format = info(ctx, backing)?.format;
    let reference = backing_reference(dir, backing)?;
    let argv = overlay_argv(&reference, format.name(), name, None);
    let mut cmd = ctx.command(&argv[0]);
    cmd.args(&argv[1..]).current_dir(dir);
    ctx.run(cmd)?;
    Ok(dir.join(name))
}

/// QEMU's error when an old QEMU meets a qcow2 v3 image.
const QCOW_V3_ERROR: &str = "QCOW version 3";

/// A hint for a QEMU error line, naming the workflow field that fixes it; `None`
/// when qflow knows no fix. Boot steps call this on QEMU's last lines.
///
/// The error "uses a qcow2 feature which is not supported by this qemu version:
/// QCOW version 3" is fixed by `compat: "0.10"` on the `image` step that makes the disk.
pub fn hint_for_qemu_error(line: &str) -> Option<String> {
    if line.contains(QCOW_V3_ERROR) && line.contains("not supported") {
        return Some(
            "this QEMU cannot read qcow2 v3 images: give the disk's `image` step `compat: \"0.10\"` \
             (it runs `qemu-img amend -f qcow2 -o compat=0.10`)"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_qemu_img_binary_units() {
        assert_eq!(Size::parse("512M"), Ok(Size(512 << 20)));
        assert_eq!(Size::parse("10G"), Ok(Size(10 << 30)));
        assert_eq!(Size::parse("10g"), Ok(Size(10 << 30)));
        assert_eq!(Size::parse("1T"), Ok(Size(1 << 40)));
        assert_eq!(Size::parse("64k"), Ok(Size(64 << 10)));
        assert_eq!(Size::parse("1.5G"), Ok(Size(3 << 29)));
        assert_eq!(Size::parse("4096"), Ok(Size(4096)));
    }

    #[test]
    fn unknown_units_are_rejected_with_the_list_of_units() {
        let err = Size::parse("10X").unwrap_err();
        assert!(err.contains("unknown unit `X`"), "{err}");
        assert!(err.contains("k, M, G, T, P, E"), "{err}");
        assert!(Size::parse("").is_err());
        assert!(Size::parse("G").is_err());
        assert!(Size::parse("0").is_err());
        assert!(Size::parse("1.2.3G").is_err());
        assert!(Size::parse("99999999E").is_err());
    }

    #[test]
    fn sizes_display_in_the_shortest_exact_unit() {
        assert_eq!(Size(10 << 30).to_string(), "10G");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(1000).to_string(), "1000");
    }

    #[test]
    fn info_json_of_an_overlay_gives_format_backing_and_compat() {
        let json = r#"{ "backing-filename-format": "qcow2", "virtual-size": 67108864,
            "filename": "ov.qcow2", "format": "qcow2", "actual-size": 200704,
            "format-specific": { "type": "qcow2", "data": { "compat": "1.1" } },
            "backing-filename": "../abc/image.qcow2",
            "snapshots": [ { "id": "1", "name": "clean" } ] }"#;
        let info = ImageInfo::parse(json).unwrap();
        assert_eq!(info.format, ImageFormat::Qcow2);
        assert_eq!(info.virtual_size, 64 << 20);
        assert_eq!(info.backing_file.as_deref(), Some("../abc/image.qcow2"));
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(info.compat.as_deref(), Some("1.1"));
        assert_eq!(info.snapshot_names(), "clean");
    }

    #[test]
    fn an_overlay_names_its_backing_file_relatively_and_its_format() {
        let root = std::env::temp_dir().join(format!("qflow-qemu-img-{}", std::process::id()));
        let base = root.join("trees/abc");
        let out = root.join("trees/.tmp-1");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(base.join("image.qcow2"), "").unwrap();
        let reference = backing_reference(&out, &base.join("image.qcow2")).unwrap();
        assert_eq!(reference, "../abc/image.qcow2");
        assert_eq!(
            overlay_argv(&reference, "raw", "image.qcow2", Some(Size(1 << 30))).join(" "),
            "qemu-img create -f qcow2 -b ../abc/image.qcow2 -F raw image.qcow2 1073741824"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_qcow_v3_error_of_an_old_qemu_names_the_compat_field() {
        let line = "qemu-system-x86_64: 'ide0-hd1' uses a qcow2 feature which is not supported by this qemu version: QCOW version 3";
        assert!(
            hint_for_qemu_error(line)
                .unwrap()
                .contains("compat: \"0.10\"")
        );
        assert_eq!(hint_for_qemu_error("qemu: something else"), None);
    }
}
