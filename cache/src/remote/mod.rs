//! A remote cache over HTTP, shared by a group: read always when configured, written when
//! asked, with the protocol of Bazel's HTTP remote cache so the servers groups already run
//! (bazel-remote, nginx with WebDAV, a bucket behind bazel-remote) work as they are.
//!
//! Like Bazel's, the server is a dumb store and all trust lives here, in the client:
//! - names (`names.rs`): `/ac/<sha256 of a namespaced step key>` holds a [`RemoteRecord`]
//!   (`remote_record.rs`), `/cas/<sha256 of the bytes>` holds content;
//! - upload (`upload.rs`): every content object first, the action entry last, so a reader
//!   that sees an entry can fetch everything it names;
//! - download (`fetch.rs`): every byte is verified against the sha256 of its name and the
//!   blake3 of the record before it enters the local cache; a mismatch or a missing object is
//!   a miss and one warning naming the object, never a wrong result or a partial tree;
//!   [`RemoteCache::fetch_usable`] brings only the output tree and the trees its disk
//!   images back onto (`backing.rs`), not every tree the record retains;
//! - results left on the server (`kept_entry.rs`): the entry of a hit whose bytes were not
//!   needed yet, kept locally so a later apply knows the result without asking the server;
//! - faults (`health.rs`): a server that is down, hangs, answers 5xx or drops a transfer
//!   makes a miss and one warning, and is left alone after a few faults in a row; refused
//!   credentials (401/403) are their own error (`credentials.rs`).
//!
//! Transfers stream with constant memory and at most [`RemoteConfig::transfers`] run at a
//! time over every fetch and upload of a run (`transfer_slots.rs`).
//! This module never prints: warnings go to [`RemoteConfig::on_warning`] and are kept for
//! [`RemoteCache::warnings`]; counters are in [`RemoteCache::stats`].

mod backing;
mod credentials;
mod fetch;
mod health;
mod http_store;
mod kept_entry;
mod names;
mod remote_record;
mod transfer_slots;
mod tree_claims;
mod upload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use backing::backing_name;
pub use credentials::{Credentials, HEADER_ENV, Secret, TOKEN_ENV, shown_url};
pub use health::{Fault, MAX_CONSECUTIVE_FAULTS};
pub use http_store::Timeouts;
pub use kept_entry::{forget_entry, keep_entry, kept_entry};
pub use names::{Sha256, action_name};
pub use remote_record::{
    MAX_REMOTE_RECORD_BYTES, ObjectRef, REMOTE_RECORD_FORMAT, RemoteRecord, RetainedTree,
};
pub use transfer_slots::map_bounded;
pub use upload::UploadOutcome;

use crate::Hash;
use http_store::{Endpoint, HttpStore, Kind};
use transfer_slots::{TransferSlots, for_each_bounded};

/// A callback that hears warnings, one line each.
pub type Warn = Arc<dyn Fn(&str) + Send + Sync>;
/// A callback that hears how many bytes just moved (for progress bars).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Transfers at once by default.
pub const DEFAULT_TRANSFERS: usize = 4;

/// How to reach a remote cache.
#[derive(Clone)]
pub struct RemoteConfig {
    /// The URL read from (`--remote-cache`, `QFLOW_REMOTE_CACHE`); `user:password@` allowed.
    pub url: String,
    /// Where to write, when it differs from `url`.
    pub write_url: Option<String>,
    /// Whether to write at all (`--remote-cache-upload`).
    pub upload: bool,
    /// Credentials for `url`; `None`: from the environment, the URL or netrc
    /// (see [`Credentials::for_url`]).
    pub credentials: Option<Credentials>,
    /// Credentials for `write_url`; `None`: as for `url`.
    pub write_credentials: Option<Credentials>,
    /// How long to wait for the server.
    pub timeouts: Timeouts,
    /// Transfers at once.
    pub transfers: usize,
    /// Hears every warning (else they are only kept, see [`RemoteCache::warnings`]).
    pub on_warning: Option<Warn>,
    /// Hears every piece of a transfer (bytes), for a progress line.
    pub on_progress: Option<Progress>,
}

impl RemoteConfig {
    /// Reading from `url`, with the defaults.
    pub fn new(url: &str) -> RemoteConfig {
        RemoteConfig {
            url: url.to_string(),
            write_url: None,
            upload: false,
            credentials: None,
            write_credentials: None,
            timeouts: Timeouts::default(),
            transfers: DEFAULT_TRANSFERS,
            on_warning: None,
            on_progress: None,
        }
    }
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &shown_url(&self.url))
            .field("write_url", &self.write_url.as_deref().map(shown_url))
            .field("upload", &self.upload)
            .field("transfers", &self.transfers)
            .finish_non_exhaustive()
    }
}

/// Refused credentials: a configuration error, reported before anything runs.
#[derive(Debug)]
pub struct CredentialsError(pub String);

impl std::fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CredentialsError {}

/// What one run did with the remote cache (for `qflow status`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Steps found on the server (and fetched, when they were fetched).
    pub hits: u64,
    /// Steps asked for and not found, found unusable, or whose fetch failed.
    pub misses: u64,
    /// Bytes downloaded (entries and objects).
    pub bytes_down: u64,
    /// Bytes uploaded (entries and objects).
    pub bytes_up: u64,
    /// Objects downloaded and verified.
    pub objects_down: u64,
    /// Objects uploaded.
    pub objects_up: u64,
    /// Action entries written.
    pub records_up: u64,
    /// Warnings given.
    pub warnings: u64,
    /// Requests that failed for the server's fault (down, hung, 5xx, dropped, refused).
    pub faults: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    objects_down: AtomicU64,
    objects_up: AtomicU64,
    records_up: AtomicU64,
}

/// A remote cache for one run.
pub struct RemoteCache {
    http: HttpStore,
    read: Endpoint,
    /// `None` when uploads are off.
    write: Option<Endpoint>,
    transfers: usize,
    /// Object transfers in flight, over every fetch and upload of the run.
    slots: TransferSlots,
    /// Trees fetches of the run are bringing in now (each downloaded once).
    claims: tree_claims::TreeClaims,
    on_warning: Option<Warn>,
    on_progress: Option<Progress>,
    warnings: Mutex<Vec<String>>,
    counters: Counters,
    /// The answer of [`RemoteCache::check`].
    access: std::sync::OnceLock<Result<(), String>>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("read", &self.read.shown())
            .field("write", &self.write.as_ref().map(|w| w.shown()))
            .finish_non_exhaustive()
    }
}

impl RemoteCache {
    /// A client for `config`. Fails only on a malformed URL or credentials setting.
    pub fn from_config(config: RemoteConfig) -> anyhow::Result<RemoteCache> {
        let endpoint = |url: &str, given: Option<Credentials>| -> anyhow::Result<Endpoint> {
            let shown = shown_url(url);
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "the remote cache URL `{shown}` must start with `http://` or `https://`"
            );
            let (bare, found) = Credentials::for_url(url)?;
            Ok(Endpoint::new(&bare, given.unwrap_or(found)))
        };
        let read = endpoint(&config.url, config.credentials.clone())?;
        let write = if config.upload {
            let url = config.write_url.as_deref().unwrap_or(&config.url);
            let creds = config.write_credentials.or(config.credentials);
            Some(endpoint(url, creds)?)
        } else {
            None
        };
        let transfers = config.transfers.max(1);
        Ok(RemoteCache {
            http: HttpStore::new(config.timeouts, transfers * 2),
            read,
            write,
            transfers,
            slots: TransferSlots::new(transfers),
            claims: tree_claims::TreeClaims::default(),
            on_warning: config.on_warning,
            on_progress: config.on_progress,
            warnings: Mutex::new(Vec::new()),
            counters: Counters::default(),
            access: std::sync::OnceLock::new(),
        })
    }

    /// The read URL, fit to print.
    pub fn shown_url(&self) -> String {
        self.read.shown()
    }

    /// How many object transfers run at once.
    pub fn transfers(&self) -> usize {
        self.transfers
    }

    /// Whether this client writes to the server.
    pub fn uploads(&self) -> bool {
        self.write.is_some()
    }

    /// Whether the read URL accepts this client, asked once per run (later calls return the
    /// first answer, waiting for it if another thread is asking): refused credentials are a
    /// [`CredentialsError`]; a server that is down or broken only gives its one warning (the
    /// run goes on, building locally). Callers ask before their first lookup, so a no-op
    /// apply that needs nothing from the server never waits for it.
    pub fn check(&self) -> Result<(), CredentialsError> {
        self.access
            .get_or_init(|| self.ask_access())
            .clone()
            .map_err(CredentialsError)
    }

    /// Starts [`RemoteCache::check`] on a thread of its own, so its round trip overlaps the
    /// work before the first lookup.
    pub fn check_in_background(self: &Arc<Self>) {
        let me = self.clone();
        std::thread::spawn(move || {
            let _ = me.check();
        });
    }

    fn ask_access(&self) -> Result<(), String> {
        let empty = Sha256::of_bytes(b"");
        match self.http.head(&self.read, Kind::Cas, &empty) {
            Ok(_) => {
                self.read.health.ok();
                Ok(())
            }
            Err(Fault::Credentials(status)) => {
                let _ = self.read.health.fault("", &Fault::Credentials(status));
                Err(self.credentials_message(&self.read, status))
            }
            Err(fault) => {
                self.fault(&self.read, &fault);
                Ok(())
            }
        }
    }

    fn credentials_message(&self, ep: &Endpoint, status: u16) -> String {
        let sent = match ep.credentials_source() {
            Some(source) => format!("the credentials from {source} were refused"),
            None => "it demands credentials and none were given".to_string(),
        };
        format!(
            "the remote cache `{}` answered HTTP {status}: {sent}; put a `machine {}` entry with \
             `login` and `password` in ~/.netrc, or set {TOKEN_ENV} (a bearer token) or \
             {HEADER_ENV} (`Name: value`)",
            ep.shown(),
            credentials::host_of(&ep.shown()),
        )
    }

    /// The action entry for step key `key` on the server, if there is a sound one. Faults and
    /// unusable entries are misses (with a warning); nothing is downloaded but the entry.
    pub fn lookup(&self, key: &Hash) -> Option<RemoteRecord> {
        let found = self.lookup_entry(key);
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn lookup_entry(&self, key: &Hash) -> Option<RemoteRecord> {
        if !self.read.health.usable() {
            return None;
        }
        let name = action_name(key);
        let bytes = match self
            .http
            .get_small(&self.read, Kind::Ac, &name, MAX_REMOTE_RECORD_BYTES)
        {
            Ok(found) => {
                self.read.health.ok();
                found?
            }
            Err(fault) => {
                self.fault(&self.read, &fault);
                return None;
            }
        };
        self.add_down(bytes.len() as u64);
        let parsed = serde_json::from_slice::<RemoteRecord>(&bytes)
            .map_err(|e| anyhow::anyhow!("it is not a qflow remote record ({e})"))
            .and_then(|rr| rr.check(key).map(|()| rr));
        match parsed {
            Ok(rr) => Some(rr),
            Err(e) => {
                self.warn(&format!(
                    "remote cache `{}`: the entry `ac/{name}` for step key `{}` is not usable: \
                     {e:#}; ignoring it",
                    self.read.shown(),
                    key.short()
                ));
                None
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            bytes_down: get(&c.bytes_down),
            bytes_up: get(&c.bytes_up),
            objects_down: get(&c.objects_down),
            objects_up: get(&c.objects_up),
            records_up: get(&c.records_up),
            warnings: self.lock_warnings().len() as u64,
            faults: self.read.health.faults()
                + self.write.as_ref().map_or(0, |w| w.health.faults()),
        }
    }

    /// Every warning given so far.
    pub fn warnings(&self) -> Vec<String> {
        self.lock_warnings().clone()
    }

    fn lock_warnings(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.warnings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn(&self, message: &str) {
        self.lock_warnings().push(message.to_string());
        if let Some(w) = &self.on_warning {
            w(message);
        }
    }

    /// Weighs a fault of `ep`, warning if it is the first.
    fn fault(&self, ep: &Endpoint, fault: &Fault) {
        if let Fault::Credentials(status) = fault {
            if ep.health.fault("", fault).is_some() {
                self.warn(&self.credentials_message(ep, *status));
            }
            return;
        }
        let what = format!("remote cache `{}`", ep.shown());
        if let Some(w) = ep.health.fault(&what, fault) {
            self.warn(&w);
        }
    }

    fn add_down(&self, n: u64) {
        self.counters.bytes_down.fetch_add(n, Ordering::Relaxed);
        if let Some(p) = &self.on_progress {
            p(n);
        }
    }

    fn add_up(&self, n: u64) {
        self.counters.bytes_up.fetch_add(n, Ordering::Relaxed);
        if let Some(p) = &self.on_progress {
            p(n);
        }
    }

    /// Turns a counted hit into a miss (its fetch failed).
    fn hit_became_miss(&self) {
        let c = &self.counters;
        let _ = c
            .hits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| h.checked_sub(1));
        c.misses.fetch_add(1, Ordering::Relaxed);
    }
}
