//! A bound on the transfers in flight, over every step a run fetches or uploads at once.
//!
//! The run asks the remote cache for several steps at the same time (the roots of a
//! workflow settle together) and each fetch moves several objects; each object transfer
//! holds one slot, so the server and the link see at most [`TransferSlots::new`]'s count
//! whatever the shape of the workflow. Also the worker pool that runs such work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// A counting semaphore.
#[derive(Debug)]
pub struct TransferSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One slot, given back on drop.
pub struct Slot<'a>(&'a TransferSlots);

impl TransferSlots {
    pub fn new(n: usize) -> TransferSlots {
        TransferSlots {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot.
    pub fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

/// Runs `f` on every item, at most `n` at a time, stopping early once one fails; returns the
/// first failure.
pub fn for_each_bounded<T: Sync, E: Send>(
    items: &[T],
    n: usize,
    f: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<E>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..n.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        if slot.is_none() {
                            *slot = Some(e);
                        }
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `f` of every item, at most `n` at a time, in the items' order.
pub fn map_bounded<T: Sync, R: Send>(items: &[T], n: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let indexed: Vec<usize> = (0..items.len()).collect();
    let _ = for_each_bounded(&indexed, n, |&i| {
        *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(f(&items[i]));
        Ok::<(), ()>(())
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item mapped")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_n_hold_a_slot_at_once() {
        let slots = TransferSlots::new(2);
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let items: Vec<u32> = (0..16).collect();
        let out = map_bounded(&items, 8, |i| {
            let _slot = slots.take();
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            inside.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
