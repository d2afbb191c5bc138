//! The `download` kind: fetch a guest image (the seed's "Downloading the System
//! Image") over https, http or from a `file://` URL, check it against a pinned
//! checksum before it enters the cache, and hand it downstream in the format
//! `qemu-img info` detects (`image.qcow2`, `image.raw`, ...), never the one its
//! name suggests.
//!
//! The body streams into `partial` in the step's state directory, which outlives
//! a failed or interrupted run: the next attempt (a retry inside this run, or the
//! next `qflow apply`) asks for the rest with a `Range` request. Transient failures
//! (a dropped connection, a 5xx answer) retry with exponential backoff; a 404 or a
//! TLS failure stops at once with a plain message. A checksum mismatch deletes the
//! partial file, names the expected and actual hashes and keeps nothing.
//!
//! `checksum_url` names a `SHA256SUMS` file (Ubuntu's format) instead of a pinned
//! hash; the hash found there is recorded in `qflow.lock` (note `sha256`), and the
//! step key (fields) stays the same, so a rerun is a cache hit with no request.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use qflow_engine::{
    CheckContext, FieldError, HostNeed, OutputRole, RunContext, Step, StepFields, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::Digest as _;

use crate::qemu_img::{self, ImageFormat};

/// Attempts per run before a transient failure fails the step (the partial file stays).
const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Largest `SHA256SUMS` file accepted.
const MAX_SUMS_BYTES: u64 = 4 << 20;
/// How often the byte progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

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
        let mut buf = vec![0u8; 1 << 20];
        match self {
            Checksum::Sha256(_) => {
                let mut h = sha2::Sha256::new();
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
            }
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

/// The last path segment of a URL, without query or fragment.
fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
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

/// A URL with any `user:password@` removed, for messages and logs.
fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth retrying: the connection dropped, the server had a bad moment.
    Transient(anyhow::Error),
    /// Retrying cannot help: 404, TLS, a bad URL, Ctrl-C.
    Fatal(anyhow::Error),
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Streams bytes into the partial file and shows progress.
struct Sink<'a> {
    ctx: &'a RunContext,
    file: File,
    written: u64,
    total: Option<u64>,
    last_shown: Instant,
}

impl Sink<'_> {
    fn copy_from(&mut self, reader: &mut dyn Read) -> Result<(), Failure> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            if self.ctx.is_cancelled() {
                return Err(Failure::Fatal(anyhow!(
                    "interrupted; the partial download is kept for the next apply"
                )));
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure::Transient(anyhow!(
                        "the transfer broke after {}: {e}",
                        human_bytes(self.written)
                    )));
                }
            };
            self.file
                .write_all(&buf[..n])
                .map_err(|e| Failure::Fatal(anyhow!("cannot write the partial download: {e}")))?;
            self.written += n as u64;
            if self.last_shown.elapsed() >= PROGRESS_EVERY {
                self.show();
            }
        }
        self.show();
        self.file
            .flush()
            .map_err(|e| Failure::Fatal(anyhow!("cannot write the partial download: {e}")))
    }

    fn show(&mut self) {
        self.last_shown = Instant::now();
        let text = match self.total {
            Some(t) if t > 0 => format!(
                "{} / {} ({}%)",
                human_bytes(self.written),
                human_bytes(t),
                self.written * 100 / t
            ),
            _ => human_bytes(self.written),
        };
        self.ctx.progress(&text);
    }
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

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer fails the attempt, which then resumes with Range.
            .timeout_per_read(Some(Duration::from_secs(30)))
            .user_agent(concat!("qflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    }

    /// The expected checksum: the pinned one, or the one `checksum_url` lists.
    fn expected(&self, ctx: &mut RunContext, agent: &ureq::Agent) -> anyhow::Result<Checksum> {
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
        let sums = fetch_small(agent, sums_url)?;
        let hash = find_in_sums(&sums, name).with_context(|| {
            format!(
                "`{}` lists no file named `{name}`; check `checksum_url`, or pin `sha256:` instead",
                shown_url(sums_url)
            )
        })?;
        Ok(Checksum::Sha256(hash))
    }

    /// One attempt: continue `partial` from its current length.
    fn fetch_once(
        &self,
        ctx: &RunContext,
        agent: &ureq::Agent,
        partial: &Path,
    ) -> Result<(), Failure> {
        if let Some(path) = self.url.strip_prefix("file://") {
            return copy_local(ctx, Path::new(path), partial);
        }
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut req = agent.get(&self.url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
            ctx.log(&format!("resuming after {have} bytes"));
        }
        let url = shown_url(&self.url);
        let mut resp = req.call().map_err(|e| classify(e, &url))?;
        let status = resp.status().as_u16();
        let length = resp.body().content_length();
        let (append, total) = match status {
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if !range.starts_with(&format!("bytes {have}-")) {
                    // Not the range asked for: start over rather than splice wrong bytes.
                    let _ = std::fs::remove_file(partial);
                    return Err(Failure::Transient(anyhow!(
                        "{url} answered range `{range}` to `bytes={have}-`; starting over"
                    )));
                }
                let total = range.rsplit('/').next().and_then(|t| t.parse().ok());
                (true, total.or(length.map(|l| l + have)))
            }
            200 => {
                if have > 0 {
                    ctx.log("the server ignored the Range request; downloading from the start");
                }
                (false, length)
            }
            416 if have > 0 => {
                ctx.log("the server has no bytes past the partial download: it is complete");
                return Ok(());
            }
            404 | 410 => {
                return Err(Failure::Fatal(anyhow!(
                    "{url} was not found (HTTP {status}); check `url`"
                )));
            }
            408 | 429 | 500..=599 => {
                return Err(Failure::Transient(anyhow!("{url} answered HTTP {status}")));
            }
            _ => {
                return Err(Failure::Fatal(anyhow!(
                    "{url} answered HTTP {status}; expected the file"
                )));
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .map_err(|e| Failure::Fatal(anyhow!("cannot open {}: {e}", partial.display())))?;
        let mut sink = Sink {
            ctx,
            file,
            written: if append { have } else { 0 },
            total,
            last_shown: Instant::now(),
        };
        let mut reader = resp.body_mut().as_reader();
        sink.copy_from(&mut reader)?;
        if let Some(total) = total
            && sink.written < total
        {
            return Err(Failure::Transient(anyhow!(
                "{url} closed the connection after {} of {} bytes",
                sink.written,
                total
            )));
        }
        Ok(())
    }
}

/// Map a ureq error (of the request itself, before any body byte) to a
/// transient or fatal failure with a plain message.
fn classify(e: ureq::Error, url: &str) -> Failure {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
            Failure::Fatal(anyhow!(
                "TLS failed talking to {url}: {e}; check the URL's host name, the system clock and the CA certificates"
            ))
        }
        ureq::Error::HostNotFound => Failure::Fatal(anyhow!(
            "cannot resolve the host of {url}; check `url` and the network"
        )),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::TooManyRedirects => {
            Failure::Fatal(anyhow!("cannot fetch {url}: {e}"))
        }
        // rustls reports handshake failures (a bad certificate, a server that
        // does not speak TLS) as `InvalidData` I/O errors; retrying cannot help.
        ureq::Error::Io(io)
            if url.starts_with("https://") && io.kind() == std::io::ErrorKind::InvalidData =>
        {
            Failure::Fatal(anyhow!(
                "TLS failed talking to {url}: {io}; check that the server speaks https, its certificate and the system clock"
            ))
        }
        other => Failure::Transient(anyhow!("cannot fetch {url}: {other}")),
    }
}

/// Fetch a small text file (`SHA256SUMS`), with the same retries.
fn fetch_small(agent: &ureq::Agent, url: &str) -> anyhow::Result<String> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"));
    }
    let shown = shown_url(url);
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = match agent.get(url).call() {
            Ok(mut resp) => match resp.status().as_u16() {
                200 => resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_SUMS_BYTES)
                    .read_to_string()
                    .map_err(|e| Failure::Transient(anyhow!("cannot read {shown}: {e}"))),
                s @ (404 | 410) => Err(Failure::Fatal(anyhow!(
                    "{shown} was not found (HTTP {s}); check `checksum_url`"
                ))),
                s @ (408 | 429 | 500..=599) => {
                    Err(Failure::Transient(anyhow!("{shown} answered HTTP {s}")))
                }
                s => Err(Failure::Fatal(anyhow!("{shown} answered HTTP {s}"))),
            },
            Err(e) => Err(classify(e, &shown)),
        };
        match result {
            Ok(text) => return Ok(text),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) if attempt >= MAX_ATTEMPTS => return Err(e),
            Err(Failure::Transient(_)) => {
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// `file://` URLs: copy the whole file (a local copy needs no resume).
fn copy_local(ctx: &RunContext, src: &Path, partial: &Path) -> Result<(), Failure> {
    let mut input = File::open(src)
        .map_err(|e| Failure::Fatal(anyhow!("cannot read {}: {e}; check `url`", src.display())))?;
    let total = input.metadata().ok().map(|m| m.len());
    let file = File::create(partial)
        .map_err(|e| Failure::Fatal(anyhow!("cannot create {}: {e}", partial.display())))?;
    let mut sink = Sink {
        ctx,
        file,
        written: 0,
        total,
        last_shown: Instant::now(),
    };
    sink.copy_from(&mut input)
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
        let agent = Self::agent();
        let expected = self.expected(ctx, &agent)?;
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

        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.fetch_once(ctx, &agent, &partial) {
                Ok(()) => break,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) if attempt >= MAX_ATTEMPTS => {
                    return Err(e.context(format!(
                        "download failed {MAX_ATTEMPTS} times; the partial file is kept and the next apply resumes it"
                    )));
                }
                Err(Failure::Transient(e)) => {
                    ctx.log(&format!(
                        "attempt {attempt} failed: {e:#}; retrying in {delay:?}"
                    ));
                    ctx.progress(&format!("retrying ({e})"));
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
            }
        }

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
    fn url_file_names_and_shown_urls_drop_noise_and_secrets() {
        assert_eq!(url_file_name("https://h/a/b/img.qcow2?x=1#y"), "img.qcow2");
        assert_eq!(shown_url("https://user:secret@h/a.img"), "https://h/a.img");
        assert_eq!(shown_url("http://h/a@b.img"), "http://h/a@b.img");
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
