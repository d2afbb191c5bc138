//! Whether a server is worth asking, and what went wrong with it.
//!
//! A remote cache only ever saves time, so its faults never fail an apply: a server that is
//! down, hangs, answers 5xx or drops a transfer makes that one request a miss. The first fault
//! gives one warning; after [`MAX_CONSECUTIVE_FAULTS`] faults in a row (or one timeout, since
//! every try of a hung server costs the whole timeout) qflow leaves the server alone for the
//! rest of the run and builds locally. A success resets the count. Credentials refused
//! (401/403) are not a fault of the server but of the configuration: they get their own
//! message, and asking again cannot help, so the server is left alone at once.

use std::sync::Mutex;

/// Faults in a row after which a server is left alone.
pub const MAX_CONSECUTIVE_FAULTS: u32 = 3;

/// What went wrong with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No connection (refused, unreachable, DNS).
    Unreachable(String),
    /// No answer, or no more bytes, within the timeout.
    Timeout(String),
    /// A 5xx, 408 or 429 answer.
    Server(u16),
    /// The connection broke during a transfer.
    Dropped(String),
    /// 401 or 403: the server wants (other) credentials.
    Credentials(u16),
    /// An answer the protocol does not allow here (e.g. 400, 405).
    Unexpected(u16),
}

impl Fault {
    /// A short lowercase description for messages.
    pub fn describe(&self) -> String {
        match self {
            Fault::Unreachable(e) => format!("cannot connect ({e})"),
            Fault::Timeout(e) => format!("no answer in time ({e})"),
            Fault::Server(s) => format!("answered HTTP {s}"),
            Fault::Dropped(e) => format!("dropped the connection ({e})"),
            Fault::Credentials(s) => format!("refused the credentials (HTTP {s})"),
            Fault::Unexpected(s) => {
                format!("answered HTTP {s}, which the protocol does not allow here")
            }
        }
    }
}

/// The health of one server (the read or the write URL) over one run.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    faults: u64,
    warned: bool,
    given_up: bool,
}

impl Health {
    /// Whether the server may be asked.
    pub fn usable(&self) -> bool {
        !self.lock().given_up
    }

    /// A request succeeded (any answer the protocol allows, a 404 included).
    pub fn ok(&self) {
        self.lock().consecutive = 0;
    }

    /// A request failed with `fault`. Returns the warning to show, if this is the first one
    /// (`what` names the server, e.g. "remote cache `http://host:8088`").
    pub fn fault(&self, what: &str, fault: &Fault) -> Option<String> {
        let mut s = self.lock();
        s.faults += 1;
        s.consecutive += 1;
        let give_up = matches!(fault, Fault::Timeout(_) | Fault::Credentials(_))
            || s.consecutive >= MAX_CONSECUTIVE_FAULTS;
        let newly_given_up = give_up && !s.given_up;
        s.given_up |= give_up;
        let first = !s.warned;
        s.warned = true;
        if let Fault::Credentials(_) = fault {
            return first.then(|| {
                format!(
                    "{what} {}; not using it for the rest of this run. Put a `machine` entry in \
                     ~/.netrc or set QFLOW_REMOTE_CACHE_TOKEN or QFLOW_REMOTE_CACHE_HEADER",
                    fault.describe()
                )
            });
        }
        if !first {
            return None;
        }
        Some(if newly_given_up {
            format!(
                "{what} {}; building locally and not asking it again in this run",
                fault.describe()
            )
        } else {
            format!(
                "{what} {}; building locally (after {MAX_CONSECUTIVE_FAULTS} failures in a row \
                 qflow stops asking it for the rest of this run)",
                fault.describe()
            )
        })
    }

    /// Faults counted so far.
    pub fn faults(&self) -> u64 {
        self.lock().faults
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_then_left_alone_after_three_faults_in_a_row() {
        let h = Health::default();
        let w = h.fault("remote cache `x`", &Fault::Server(503)).unwrap();
        assert!(w.contains("HTTP 503"), "{w}");
        assert!(h.usable());
        h.ok();
        assert_eq!(h.fault("x", &Fault::Server(500)), None);
        assert_eq!(h.fault("x", &Fault::Dropped("reset".into())), None);
        assert!(h.usable(), "two in a row after a success");
        assert_eq!(h.fault("x", &Fault::Server(500)), None);
        assert!(!h.usable());
        assert_eq!(h.faults(), 4);
    }

    #[test]
    fn a_timeout_or_refused_credentials_leave_the_server_alone_at_once() {
        let h = Health::default();
        let w = h
            .fault("remote cache `x`", &Fault::Timeout("read".into()))
            .unwrap();
        assert!(w.contains("not asking it again"), "{w}");
        assert!(!h.usable());
        let h = Health::default();
        let w = h
            .fault("remote cache `x`", &Fault::Credentials(401))
            .unwrap();
        assert!(w.contains("credentials") && w.contains(".netrc"), "{w}");
        assert!(!h.usable());
    }
}
