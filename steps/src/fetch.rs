//! Fetching a file over https, http or from a `file://` URL, the one way every
//! kind downloads (a guest image, a kernel tarball, a `SHA256SUMS` file).
//!
//! The body streams into a partial file the caller names, which outlives a failed
//! or interrupted run: the next attempt (a retry inside this run, or the next
//! `qflow apply`) asks for the rest with a `Range` request. Every request has
//! timeouts (connect, first response, each read), so a stalled server fails the
//! attempt instead of hanging the step. Transient failures (a dropped connection,
//! a 5xx answer, a stall) retry with exponential backoff; a 404 or a TLS failure
//! stops at once with a plain message naming the field to fix. A URL is shown in
//! messages, logs and progress only through [`shown_url`], which drops any
//! `user:password@`. Checking the bytes is the caller's business.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use qflow_engine::RunContext;

/// Attempts per run before a transient failure fails the step (the partial file stays).
const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// How often the byte progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A URL with any `user:password@` removed and credential query values hidden,
/// for messages, logs and notes.
pub use qflow_engine::masking::shown_url;

/// The last path segment of a URL, without query or fragment.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// Fetch `url` into `partial`, continuing what an earlier attempt left there, with
/// retries. `field` names the workflow field holding the URL, for messages. On an
/// error the partial file stays for the next apply (it is the caller's to delete
/// when its bytes are wrong).
pub fn download(ctx: &RunContext, url: &str, field: &str, partial: &Path) -> anyhow::Result<()> {
    let agent = agent();
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match fetch_once(ctx, &agent, url, field, partial) {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) if attempt >= MAX_ATTEMPTS || ctx.is_cancelled() => {
                return Err(e.context(format!(
                    "download failed {attempt} times; the partial file is kept and the next apply resumes it"
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
}

/// Fetch a small text file (a `SHA256SUMS`) of at most `limit` bytes, with the same
/// retries and timeouts.
pub fn text(url: &str, field: &str, limit: u64) -> anyhow::Result<String> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"));
    }
    let agent = agent();
    let shown = shown_url(url);
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = match agent.get(url).call() {
            Ok(mut resp) => match resp.status().as_u16() {
                200 => resp
                    .body_mut()
                    .with_config()
                    .limit(limit)
                    .read_to_string()
                    .map_err(|e| Failure::Transient(anyhow!("cannot read {shown}: {e}"))),
                status => Err(status_failure(status, &shown, field)),
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

/// The sha256 of a file in hex, the hash downloads are pinned by.
pub fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let mut f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Why one attempt failed.
enum Failure {
    /// Worth retrying: the connection dropped, the server had a bad moment.
    Transient(anyhow::Error),
    /// Retrying cannot help: 404, TLS, a bad URL, Ctrl-C.
    Fatal(anyhow::Error),
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

/// An answer other than the file: fatal or worth retrying.
fn status_failure(status: u16, shown: &str, field: &str) -> Failure {
    match status {
        404 | 410 => Failure::Fatal(anyhow!(
            "{shown} was not found (HTTP {status}); check `{field}`"
        )),
        408 | 429 | 500..=599 => Failure::Transient(anyhow!("{shown} answered HTTP {status}")),
        _ => Failure::Fatal(anyhow!("{shown} answered HTTP {status}; expected the file")),
    }
}

/// One attempt: continue `partial` from its current length.
fn fetch_once(
    ctx: &RunContext,
    agent: &ureq::Agent,
    url: &str,
    field: &str,
    partial: &Path,
) -> Result<(), Failure> {
    if let Some(path) = url.strip_prefix("file://") {
        return copy_local(ctx, Path::new(path), field, partial);
    }
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
        ctx.log(&format!("resuming after {have} bytes"));
    }
    let url = shown_url(url);
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
        _ => return Err(status_failure(status, &url, field)),
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
            "cannot resolve the host of {url}; check the URL and the network"
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

/// `file://` URLs: copy the whole file (a local copy needs no resume).
fn copy_local(ctx: &RunContext, src: &Path, field: &str, partial: &Path) -> Result<(), Failure> {
    let mut input = File::open(src).map_err(|e| {
        Failure::Fatal(anyhow!(
            "cannot read {}: {e}; check `{field}`",
            src.display()
        ))
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_file_names_and_shown_urls_drop_noise_and_secrets() {
        assert_eq!(url_file_name("https://h/a/b/img.qcow2?x=1#y"), "img.qcow2");
        assert_eq!(shown_url("https://user:secret@h/a.img"), "https://h/a.img");
        assert_eq!(shown_url("http://h/a@b.img"), "http://h/a@b.img");
    }
}
