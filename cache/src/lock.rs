//! The workspace lock: one `qflow` run at a time per cache.
//!
//! An exclusive `flock` (std's `File::lock`) on `<root>/lock`, held for the whole run and
//! released by the kernel when the process dies, so a killed run never leaves a stale lock.
//! The holder writes its pid into the file for the "waiting for ..." message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::Cache;

/// What `Cache::lock` does when another run holds the lock.
pub enum LockWait<'a> {
    /// Wait for it; the callback runs once, before waiting (to say "waiting for ...").
    Wait(&'a dyn Fn()),
    /// Fail at once (`--no-wait`).
    NoWait,
}

/// The held workspace lock; released on drop.
#[derive(Debug)]
pub struct WorkspaceLock {
    file: File,
    path: PathBuf,
}

impl WorkspaceLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkspaceLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Cache {
    /// Takes the workspace lock of this cache.
    pub fn lock(&self, wait: LockWait<'_>) -> anyhow::Result<WorkspaceLock> {
        let path = self.root().join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file `{}`", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => match wait {
                LockWait::NoWait => {
                    let holder = holder(&mut file);
                    bail!(
                        "another qflow run{holder} holds the cache lock at `{}`; run this again once it has finished",
                        path.display()
                    );
                }
                LockWait::Wait(say) => {
                    say();
                    file.lock()
                        .with_context(|| format!("cannot lock `{}`", path.display()))?;
                }
            },
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock `{}`", path.display()));
            }
        }
        // Best effort: the pid only feeds messages.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(WorkspaceLock { file, path })
    }
}

/// " (pid N)" from the lock file, if readable.
fn holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut s));
    match s.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_wait_fails_while_the_lock_is_held() {
        let (_dir, c) = crate::test_cache("lock_nowait");
        let held = c.lock(LockWait::NoWait).unwrap();
        let err = c.lock(LockWait::NoWait).unwrap_err().to_string();
        assert!(err.contains("another qflow run"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        c.lock(LockWait::NoWait).unwrap();
    }

    #[test]
    fn wait_blocks_until_the_holder_releases_the_lock() {
        let (_dir, c) = crate::test_cache("lock_wait");
        let held = c.lock(LockWait::NoWait).unwrap();
        let released = AtomicBool::new(false);
        let told = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let say = || told.store(true, Ordering::SeqCst);
                let lock = c.lock(LockWait::Wait(&say)).unwrap();
                assert!(
                    released.load(Ordering::SeqCst),
                    "got the lock while it was held"
                );
                lock
            });
            std::thread::sleep(Duration::from_millis(300));
            assert!(told.load(Ordering::SeqCst), "the waiter said it is waiting");
            released.store(true, Ordering::SeqCst);
            drop(held);
            drop(waiter.join().unwrap());
        });
        // Not told when there is nothing to wait for.
        let quiet = || panic!("no need to wait");
        c.lock(LockWait::Wait(&quiet)).unwrap();
    }
}
