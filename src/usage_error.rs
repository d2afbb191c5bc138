//! Bad command-line usage found after parsing (`--set` without `=`, `--jobs 0`, a
//! step name the workflow lacks): the binary exits 2 and prints the message alone.

/// A usage mistake and what to write instead.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
