//! The server as Bazel's HTTP remote-cache protocol sees it: a dumb store of `/ac/<sha256>`
//! (action entries) and `/cas/<sha256>` (content) answering GET, HEAD and PUT.
//!
//! The HTTP client is ureq 3: small, blocking (qflow's scheduler runs steps on threads; an
//! async runtime would buy nothing here), maintained, and speaking https through rustls, so
//! no OpenSSL is needed; the workspace already uses it for `download` steps. Bodies stream in
//! both directions (a file as a PUT body with its length; a GET body read piece by piece), so
//! memory stays constant for multi-GiB images.
//!
//! Every answer is reduced to what the protocol allows: 200 (found, or stored), 404 (absent),
//! 201/204 (stored), 409 (a write-once server that has the name already: as good as stored).
//! Anything else becomes a [`Fault`] for `health.rs` to weigh. Nothing here trusts the bytes:
//! the caller verifies them.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::credentials::{Credentials, shown_url};
use super::health::{Fault, Health};
use super::names::Sha256;

/// Bytes handed on at a time by a streamed GET.
pub(crate) const CHUNK: usize = 1 << 20;

/// Which half of the protocol a name lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/ac/`: action entries (here: qflow's remote records).
    Ac,
    /// `/cas/`: content named by its sha256.
    Cas,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Ac => "ac",
            Kind::Cas => "cas",
        }
    }
}

/// How long to wait for a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To connect (TCP and TLS).
    pub connect: Duration,
    /// For the answer to a request, and for each read or write of a body in flight (a
    /// transfer that stalls this long is dropped; a slow but moving one is not).
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(15),
        }
    }
}

/// A request that did not complete: the server's fault or ours.
#[derive(Debug)]
pub enum Failure {
    Fault(Fault),
    /// Writing or reading the local file failed (disk full...): no fault of the server.
    Local(anyhow::Error),
}

impl From<Fault> for Failure {
    fn from(f: Fault) -> Failure {
        Failure::Fault(f)
    }
}

/// One server URL (the read one or the write one) with its credentials and health.
#[derive(Debug)]
pub struct Endpoint {
    base: String,
    credentials: Credentials,
    pub(crate) health: Health,
}

impl Endpoint {
    /// `url` (without credentials in it) and what to send with each request.
    pub fn new(url: &str, credentials: Credentials) -> Endpoint {
        Endpoint {
            base: url.trim_end_matches('/').to_string(),
            credentials,
            health: Health::default(),
        }
    }

    /// The URL for messages.
    pub fn shown(&self) -> String {
        shown_url(&self.base)
    }

    /// Where the credentials came from, if any were given.
    pub fn credentials_source(&self) -> Option<&str> {
        self.credentials.source()
    }

    fn url(&self, kind: Kind, name: &Sha256) -> String {
        format!("{}/{}/{}", self.base, kind.dir(), name)
    }
}

/// The HTTP client shared by every transfer of one remote cache.
#[derive(Clone, Debug)]
pub struct HttpStore {
    agent: ureq::Agent,
}

impl HttpStore {
    pub fn new(timeouts: Timeouts, max_connections: usize) -> HttpStore {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeouts.connect))
            .timeout_recv_response(Some(timeouts.idle))
            .timeout_per_read(Some(timeouts.idle))
            .timeout_per_write(Some(timeouts.idle))
            .max_idle_connections_per_host(max_connections.max(1))
            .user_agent(concat!("qflow/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        HttpStore { agent }
    }

    fn with_auth<B>(&self, ep: &Endpoint, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match ep.credentials.header() {
            Some((name, value)) => req.header(name, value),
            None => req,
        }
    }

    /// HEAD: whether the server has `name`.
    pub fn head(&self, ep: &Endpoint, kind: Kind, name: &Sha256) -> Result<bool, Fault> {
        let req = self.with_auth(ep, self.agent.head(ep.url(kind, name)));
        let resp = req.call().map_err(fault_of)?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            s => Err(status_fault(s)),
        }
    }

    /// GET of a small body (an action entry) of at most `limit` bytes; `None` if absent.
    pub fn get_small(
        &self,
        ep: &Endpoint,
        kind: Kind,
        name: &Sha256,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, Fault> {
        let req = self.with_auth(ep, self.agent.get(ep.url(kind, name)));
        let mut resp = req.call().map_err(fault_of)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(status_fault(s)),
        }
        match resp.body_mut().with_config().limit(limit).read_to_vec() {
            Ok(bytes) => Ok(Some(bytes)),
            // Too large for an entry: not one of ours; the caller treats junk as absent.
            Err(ureq::Error::BodyExceedsLimit(_)) => Ok(Some(Vec::new())),
            Err(e) => Err(body_fault(e.into_io())),
        }
    }

    /// GET streamed to `on_chunk`, up to 1 MiB at a time (constant memory); returns the
    /// byte count, `None` if absent. An error from `on_chunk` (a full disk...) is
    /// [`Failure::Local`]. Each chunk is shared, not copied, so `on_chunk` may hand it to
    /// other threads; its buffer is filled again once they all dropped it (a small pool,
    /// so pages are neither faulted in nor zeroed anew for every megabyte).
    pub fn get_into(
        &self,
        ep: &Endpoint,
        kind: Kind,
        name: &Sha256,
        on_chunk: &mut dyn FnMut(Arc<Vec<u8>>) -> anyhow::Result<()>,
    ) -> Result<Option<u64>, Failure> {
        let req = self.with_auth(ep, self.agent.get(ep.url(kind, name)));
        let mut resp = req.call().map_err(fault_of)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            s => return Err(status_fault(s).into()),
        }
        let expected = resp.body().content_length();
        let mut reader = resp.body_mut().as_reader();
        let mut pool: Vec<Arc<Vec<u8>>> = Vec::new();
        let mut total = 0u64;
        loop {
            // A buffer nobody holds any more (only this function makes new holders).
            let mut chunk = match pool.iter().position(|b| Arc::strong_count(b) == 1) {
                Some(i) => pool.swap_remove(i),
                None => Arc::new(vec![0u8; CHUNK]),
            };
            let buf = Arc::get_mut(&mut chunk).expect("a buffer nobody else holds");
            buf.resize(CHUNK, 0);
            // Fill it (a socket read returns far less) so chunks are large.
            let mut filled = 0;
            while filled < CHUNK {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(body_fault(e).into()),
                }
            }
            buf.truncate(filled);
            if filled == 0 {
                break;
            }
            total += filled as u64;
            on_chunk(Arc::clone(&chunk)).map_err(Failure::Local)?;
            pool.push(chunk);
            if filled < CHUNK {
                break;
            }
        }
        if let Some(len) = expected
            && len != total
        {
            return Err(Fault::Dropped(format!("{total} of {len} bytes")).into());
        }
        Ok(Some(total))
    }

    /// PUT of the file at `path` (streamed, with its length). A write-once server that has
    /// the name already (409) counts as stored.
    pub fn put_file(
        &self,
        ep: &Endpoint,
        kind: Kind,
        name: &Sha256,
        path: &Path,
    ) -> Result<(), Failure> {
        let file = std::fs::File::open(path).map_err(|e| {
            Failure::Local(
                anyhow::Error::new(e).context(format!("cannot open `{}`", path.display())),
            )
        })?;
        let req = self.with_auth(ep, self.agent.put(ep.url(kind, name)));
        let resp = req.send(file).map_err(fault_of)?;
        put_status(resp.status().as_u16()).map_err(Failure::Fault)
    }

    /// PUT of `bytes`.
    pub fn put_bytes(
        &self,
        ep: &Endpoint,
        kind: Kind,
        name: &Sha256,
        bytes: &[u8],
    ) -> Result<(), Fault> {
        let req = self.with_auth(ep, self.agent.put(ep.url(kind, name)));
        let resp = req.send(bytes).map_err(fault_of)?;
        put_status(resp.status().as_u16())
    }
}

fn put_status(status: u16) -> Result<(), Fault> {
    match status {
        200 | 201 | 204 | 409 => Ok(()),
        s => Err(status_fault(s)),
    }
}

fn status_fault(status: u16) -> Fault {
    match status {
        401 | 403 => Fault::Credentials(status),
        408 | 429 | 500..=599 => Fault::Server(status),
        s => Fault::Unexpected(s),
    }
}

/// A failed request (no answer at all) as a fault.
fn fault_of(e: ureq::Error) -> Fault {
    match e {
        ureq::Error::Timeout(t) => Fault::Timeout(format!("{t:?}").to_lowercase()),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                Fault::Timeout(io.to_string())
            }
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::NotConnected
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable => Fault::Unreachable(io.to_string()),
            _ => Fault::Dropped(io.to_string()),
        },
        ureq::Error::HostNotFound => Fault::Unreachable("host not found".into()),
        ureq::Error::ConnectionFailed => Fault::Unreachable("connection failed".into()),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
            Fault::Unreachable(format!("TLS: {e}"))
        }
        other => Fault::Unreachable(other.to_string()),
    }
}

/// A failed read of a body in flight as a fault.
fn body_fault(e: std::io::Error) -> Fault {
    let timed_out = e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
    if timed_out {
        Fault::Timeout(e.to_string())
    } else {
        Fault::Dropped(e.to_string())
    }
}
