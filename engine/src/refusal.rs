//! A request qflow declines before doing anything, saying what to do first.
//!
//! `qflow bundle` without a complete lock, a bundle whose inputs hold a secret,
//! `qflow verify --step` naming no step: the request itself is wrong for this
//! workflow now, like bad usage, so the binary exits 2 on it and prints the message
//! alone. The library's commands return it; only the binary maps it to an exit code.

/// A declined request and what to do instead (a whole sentence, lowercase).
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}
