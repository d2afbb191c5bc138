//! Trees being fetched right now, so that two steps sharing a tree download it once.
//!
//! Remote hits are fetched several at once, and an overlay image brings the tree it backs
//! onto with it: the overlay's step and the base image's own step would both download the
//! base image's bytes. Before fetching trees, a fetch claims them; a claim another fetch
//! holds is waited for, after which the tree is usually in the local cache and is not
//! downloaded again. Claims are taken in the order of their hashes, so two fetches
//! claiming overlapping sets never wait for each other in a circle.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};

use crate::Hash;

/// The trees claimed by fetches in flight.
#[derive(Debug, Default)]
pub struct TreeClaims {
    held: Mutex<BTreeSet<Hash>>,
    freed: Condvar,
}

/// Claims held until dropped.
pub struct Claimed<'c> {
    claims: &'c TreeClaims,
    trees: Vec<Hash>,
}

impl TreeClaims {
    /// Claims every tree of `trees`, waiting for each one another fetch holds.
    pub fn claim(&self, trees: impl IntoIterator<Item = Hash>) -> Claimed<'_> {
        let wanted: BTreeSet<Hash> = trees.into_iter().collect();
        let mut claimed = Claimed {
            claims: self,
            trees: Vec::with_capacity(wanted.len()),
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for tree in wanted {
            while held.contains(&tree) {
                held = self.freed.wait(held).unwrap_or_else(|e| e.into_inner());
            }
            held.insert(tree);
            claimed.trees.push(tree);
        }
        claimed
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap_or_else(|e| e.into_inner());
        for tree in &self.trees {
            held.remove(tree);
        }
        self.claims.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_tree_claimed_by_two_fetches_is_held_by_one_at_a_time() {
        let claims = TreeClaims::default();
        let shared = Hash::of_bytes(b"base image");
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..4u8 {
                let (claims, inside, most) = (&claims, &inside, &most);
                s.spawn(move || {
                    let own = Hash::of_bytes(&[i]);
                    // Half claim in one order, half in the other: no circle of waits.
                    let _c = if i % 2 == 0 {
                        claims.claim([shared, own])
                    } else {
                        claims.claim([own, shared])
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(claims.held.lock().unwrap().is_empty());
    }
}
