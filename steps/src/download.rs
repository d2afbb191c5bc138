//! The `download` kind: fetch a guest image (the recipe's "Downloading the System
//! Image") over https, http or from a `file://` URL, check it against a pinned
//! checksum before it enters the cache, and hand it downstream in the format
//! `qemu-img info` detects (`image.qcow2`, `image.raw`, ...), never the one its
//! name suggests.
//!
//! The body streams into `partial` in the step's state directory through
//! [`crate::fetch`] (Range resume across attempts and applies, retries with backoff,
//! timeouts, credentials masked in every URL shown). A checksum mismatch deletes the
//! partial file, names the expected and actual hashes and keeps nothing.
//!
//! `checksum_url` names a `SHA256SUMS` file (Ubuntu's format) instead of a pinned
//! hash; the hash found there is recorded in `qflow.lock` (note `sha256`), and the
//! step key (fields) stays the same, so a rerun is a cache hit with no request.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::{
    CheckContext, FieldError, HostNeed, OutputRole, RunContext, Step, StepFields, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::fetch::{self, shown_url, url_file_name};
use crate::qemu_img::{self, ImageFormat};

/// Largest `SHA256SUMS` file accepted.
const MAX_SUMS_BYTES: u64 = 4 << 20;

/// A guest image fetched from a URL and checked against a checksum.
///
/// ```yaml
/// base:
///   kind: download
///   url: https://cloud-images.ubuntu.com/releases/22.04/release/ubuntu-22.04-server-cloudimg-amd64.img
///   checksum_url: https://cloud-images.ubuntu.com/releases/22.04/release/SHA256SUMS
/// ```
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// `https://`, `http://` or `file://` URL of the image.
    pub url: String,
    /// Expected SHA-256 of the file (64 hex digits).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Expected BLAKE3 of the file (64 hex digits).
    #[serde(default)]
    pub blake3: Option<String>,
    /// URL of a `SHA256SUMS` file listing the image's file name, instead of a pinned
    /// hash; the hash it gives is recorded in `qflow.lock`.
    #[serde(default)]
    pub checksum_url: Option<String>,
    /// The format the image must have (`qcow2`, `raw`). Optional: the format is
    /// always detected with `qemu-img info`; naming it lets other steps refer to
    /// `${{ steps.NAME }}/image.<format>` and fails the step if it differs.
    #[serde(default)]
    pub format: Option<ExpectedFormat>,
}

/// The formats a `download` step may insist on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedFormat {
    Qcow2,
    Raw,
}

impl ExpectedFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            ExpectedFormat::Qcow2 => ImageFormat::Qcow2,
            ExpectedFormat::Raw => ImageFormat::Raw,
        }
    }
}

/// A checksum the downloaded bytes must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    Blake3(String),
}

impl Checksum {
    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Blake3(_) => "blake3",
        }
    }

    fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Blake3(h) => h,
        }
    }

    /// The same algorithm's hash of `path`.
    fn of_file(&self, path: &Path) -> anyhow::Result<String> {
        let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        match self {
            Checksum::Sha256(_) => fetch::sha256_of_file(path),
            Checksum::Blake3(_) => {
                let mut h = blake3::Hasher::new();
                h.update_reader(&mut f)?;
                Ok(h.finalize().to_hex().to_string())
            }
        }
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The hash `sums` (a `SHA256SUMS` file: `<hex> *<name>` or `<hex>  <name>` per
/// line) gives for `file_name`.
pub fn find_in_sums(sums: &str, file_name: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let (hash, rest) = line.trim().split_once(char::is_whitespace)?;
        let name = rest.trim_start().trim_start_matches('*');
        (name == file_name && is_hex64(hash)).then(|| hash.to_ascii_lowercase())
    })
}

fn check_url(field: &str, url: &str) -> Result<(), FieldError> {
    let ok = ["https://", "http://", "file://"]
        .iter()
        .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
    if !ok {
        return Err(FieldError::new(
            field,
            format!("`{url}` is not an https://, http:// or file:// URL"),
        ));
    }
    if url_file_name(url).is_empty() {
        return Err(FieldError::new(field, format!("`{url}` names no file")));
    }
    Ok(())
}

impl Download {
    fn pinned(&self) -> Option<Checksum> {
        if let Some(h) = &self.sha256 {
            return Some(Checksum::Sha256(h.to_ascii_lowercase()));
        }
        self.blake3
            .as_ref()
            .map(|h| Checksum::Blake3(h.to_ascii_lowercase()))
    }

    /// The expected checksum: the pinned one, or the one `checksum_url` lists.
    fn expected(&self, ctx: &mut RunContext) -> anyhow::Result<Checksum> {
        if let Some(c) = self.pinned() {
            return Ok(c);
        }
        let sums_url = self
            .checksum_url
            .as_deref()
            .expect("check() requires a checksum");
        let name = url_file_name(&self.url);
        ctx.log(&format!(
            "reading {} for the sha256 of `{name}`",
            shown_url(sums_url)
        ));
        let sums = fetch::text(sums_url, "checksum_url", MAX_SUMS_BYTES)?;
        let hash = find_in_sums(&sums, name).with_context(|| {
            format!(
                "`{}` lists no file named `{name}`; check `checksum_url`, or pin `sha256:` instead",
                shown_url(sums_url)
            )
        })?;
        Ok(Checksum::Sha256(hash))
    }
}

/// Move `from` to `to`, copying when they are on different filesystems.
fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(from)?;
    Ok(())
}

impl StepFields for Download {
    const KIND: &'static str = "download";
    const SCHEMA_VERSION: u32 = 1;

    fn kind_tools() -> Vec<Tool> {
        vec![qemu_img::tool()]
    }

    fn kind_needs() -> Vec<HostNeed> {
        Vec::new()
    }
}

impl Step for Download {
    /// `image.<format>` when `format` is given. Otherwise the name depends on what
    /// `qemu-img info` detects, so nothing is declared up front; the run still
    /// writes exactly one `image.*` file (see `image_file`).
    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        self.format
            .map(|f| (f.image_format().file_name(), OutputRole::Image))
            .into_iter()
            .collect()
    }

    /// The one file a download writes is its image, whatever name it got.
    fn output_role(&self, _output: &str) -> OutputRole {
        OutputRole::Image
    }

    fn tools(&self) -> Vec<Tool> {
        vec![qemu_img::tool()]
    }

    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        check_url("url", &self.url)?;
        let given = [
            self.sha256.is_some(),
            self.blake3.is_some(),
            self.checksum_url.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given == 0 {
            return Err(FieldError::new(
                "sha256",
                "a download needs a checksum: `sha256: <64 hex digits>`, `blake3: <64 hex digits>`, \
                 or `checksum_url:` naming a SHA256SUMS file",
            ));
        }
        if given > 1 {
            let field = if self.checksum_url.is_some() {
                "checksum_url"
            } else {
                "blake3"
            };
            return Err(FieldError::new(
                field,
                "give exactly one of `sha256`, `blake3` and `checksum_url`",
            ));
        }
        for (field, value) in [("sha256", &self.sha256), ("blake3", &self.blake3)] {
            if let Some(h) = value
                && !is_hex64(h)
            {
                return Err(FieldError::new(
                    field,
                    format!("`{h}` is not a {field} hash (64 hex digits)"),
                ));
            }
        }
        if let Some(u) = &self.checksum_url {
            check_url("checksum_url", u)?;
        }
        Ok(())
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(u) = &self.checksum_url {
            lines.push(format!(
                "# GET {} (sha256 of `{}`)",
                shown_url(u),
                url_file_name(&self.url)
            ));
        }
        lines.push(format!(
            "# GET {} -> <state>/partial (Range resume)",
            shown_url(&self.url)
        ));
        match self.pinned() {
            Some(c) => lines.push(format!("# check {} {}", c.algorithm(), c.hex())),
            None => lines.push("# check sha256 from checksum_url".to_string()),
        }
        lines.push("qemu-img info --output=json <state>/partial".to_string());
        lines
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let expected = self.expected(ctx)?;
        let state = ctx.state_dir().to_path_buf();
        let partial = state.join("partial");
        let source = state.join("partial.source");
        // A partial download is resumed only for the same URL and checksum.
        let identity = format!(
            "{}\n{}:{}\n",
            self.url,
            expected.algorithm(),
            expected.hex()
        );
        if std::fs::read_to_string(&source).ok().as_deref() != Some(identity.as_str()) {
            let _ = std::fs::remove_file(&partial);
            std::fs::write(&source, &identity)
                .with_context(|| format!("cannot write {}", source.display()))?;
        }

        fetch::download(ctx, &self.url, "url", &partial)?;

        ctx.progress(&format!("checking {}", expected.algorithm()));
        let actual = expected.of_file(&partial)?;
        if actual != expected.hex() {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&source);
            bail!(
                "checksum mismatch for {}: expected {} {}, got {}; nothing was kept",
                shown_url(&self.url),
                expected.algorithm(),
                expected.hex(),
                actual
            );
        }
        if self.checksum_url.is_some() || self.sha256.is_some() {
            ctx.note("sha256", expected.hex());
        } else {
            ctx.note("blake3", expected.hex());
        }

        let info = qemu_img::info(ctx, &partial)?;
        if let Some(want) = self.format
            && want.image_format() != info.format
        {
            bail!(
                "{} is a {} image, not {} as `format` says; fix `format` or remove it",
                shown_url(&self.url),
                info.format,
                want.image_format()
            );
        }
        ctx.note("format", info.format.name());
        let out: PathBuf = ctx.out_dir().join(info.format.file_name());
        move_file(&partial, &out)?;
        let _ = std::fs::remove_file(&source);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_lines_in_both_modes_are_found() {
        let a = "a".repeat(64);
        let b = "B".repeat(64);
        let sums = format!("{a} *ubuntu-22.04-server-cloudimg-amd64.img\n{b}  other.img\n");
        assert_eq!(
            find_in_sums(&sums, "ubuntu-22.04-server-cloudimg-amd64.img"),
            Some(a)
        );
        assert_eq!(find_in_sums(&sums, "other.img"), Some("b".repeat(64)));
        assert_eq!(find_in_sums(&sums, "missing.img"), None);
    }

    #[test]
    fn bad_fields_are_refused_before_anything_runs() {
        let ctx = CheckContext {
            work_dir: PathBuf::from("/"),
        };
        let check = |yaml: &str| serde_yaml::from_str::<Download>(yaml).unwrap().check(&ctx);
        let h = "0".repeat(64);
        check(&format!("url: https://h/a.img\nsha256: {h}")).unwrap();
        check("url: https://h/a.img\nchecksum_url: https://h/SHA256SUMS").unwrap();
        assert_eq!(check("url: https://h/a.img").unwrap_err().field, "sha256");
        assert_eq!(
            check(&format!("url: ftp://h/a.img\nsha256: {h}"))
                .unwrap_err()
                .field,
            "url"
        );
        assert_eq!(
            check("url: https://h/a.img\nsha256: 12ab")
                .unwrap_err()
                .field,
            "sha256"
        );
        let both = format!("url: https://h/a.img\nsha256: {h}\nchecksum_url: https://h/S");
        assert_eq!(check(&both).unwrap_err().field, "checksum_url");
    }
}
