//! Each step's input digests, filled in while the apply runs: a step is judged
//! (its key computed, cached or ready) only once its own inputs are hashed, so a
//! step without inputs, or whose inputs are small, starts while a large tree of
//! another step is still being read.
//!
//! Whether every input exists was checked when the workflow was loaded (a
//! missing file is refused before anything runs); only the hashing is late.
//! [`hash_in_order`] hashes the steps on a thread of the apply, longest path
//! below first (the steps whose wait would delay the run most), in batches that
//! grow fourfold: the first step comes out alone, so a step on the critical
//! path is not held back by a thousand small ones, and a no-op of 10,000 steps
//! still hashes in seven batches (the stat cache and the tree index
//! answer most of them from stats). Each batch wakes the run loop.
//!
//! Imports `inputs` and `dag`; the hashing itself is the function it is given
//! (`Session::digest_inputs`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dag::{Dag, StepId};
use crate::inputs::InputDigest;

/// The most steps hashed in one batch.
const LARGEST_BATCH: usize = 4096;

/// Per step: its input digests once hashed, or why they could not be.
#[derive(Debug, Default)]
pub struct InputDigests {
    steps: Vec<OnceLock<Result<Vec<InputDigest>, String>>>,
}

impl InputDigests {
    /// `n` steps, none hashed yet.
    pub fn pending(n: usize) -> InputDigests {
        InputDigests {
            steps: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Every step's digests, known already.
    pub fn of(all: Vec<Vec<InputDigest>>) -> InputDigests {
        InputDigests {
            steps: all.into_iter().map(|d| OnceLock::from(Ok(d))).collect(),
        }
    }

    /// Step `i`'s digests, or why they could not be had; `None` while being hashed.
    pub fn get(&self, i: usize) -> Option<Result<&[InputDigest], &str>> {
        self.steps[i]
            .get()
            .map(|r| r.as_deref().map_err(String::as_str))
    }

    /// Whether step `i`'s inputs were hashed (or failed to be).
    pub fn is_known(&self, i: usize) -> bool {
        self.steps[i].get().is_some()
    }

    /// Step `i`'s digests; empty while unknown or failed (use after [`Self::get`]).
    pub fn digests(&self, i: usize) -> &[InputDigest] {
        match self.get(i) {
            Some(Ok(d)) => d,
            _ => &[],
        }
    }

    /// Set step `i`'s digests (the first answer stands).
    pub fn set(&self, i: usize, digests: Result<Vec<InputDigest>, String>) {
        let _ = self.steps[i].set(digests);
    }

    /// How many steps there are.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The steps with inputs (`has_inputs[i]`), longest path below first (each step
/// weighing `expected_ms[i]`), steps of equal weight in schedule order.
pub fn hashing_order(dag: &Dag, expected_ms: &[u64], has_inputs: &[bool]) -> Vec<StepId> {
    let order = dag.order();
    let mut below = vec![0u64; dag.len()];
    for &id in order.iter().rev() {
        let longest = (dag.downstream(id).iter())
            .map(|d| below[d.index()])
            .max()
            .unwrap_or(0);
        below[id.index()] = expected_ms[id.index()].max(1).saturating_add(longest);
    }
    let mut with_inputs: Vec<StepId> = order
        .into_iter()
        .filter(|id| has_inputs[id.index()])
        .collect();
    // Stable: equal weights keep the schedule order.
    with_inputs.sort_by_key(|id| std::cmp::Reverse(below[id.index()]));
    with_inputs
}

/// Hash the steps of `order` into `table` in batches of 1, 4, 16, … steps with
/// `digest` (given a batch's steps, their digests in the same order, or the
/// batch's error), calling `hashed` after each batch. A batch that fails is
/// hashed again step by step, so each step gets its own answer. Stops between
/// batches once `stop` is set, leaving the rest unknown.
pub fn hash_in_order(
    order: &[StepId],
    table: &InputDigests,
    stop: &AtomicBool,
    digest: impl Fn(&[StepId]) -> anyhow::Result<Vec<Vec<InputDigest>>>,
    hashed: impl Fn(),
) {
    let mut at = 0;
    let mut size = 1;
    while at < order.len() && !stop.load(Ordering::Relaxed) {
        let batch = &order[at..(at + size).min(order.len())];
        match digest(batch) {
            Ok(digests) => {
                for (id, d) in batch.iter().zip(digests) {
                    table.set(id.index(), Ok(d));
                }
            }
            Err(_) if batch.len() > 1 => {
                for &id in batch {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let one = digest(std::slice::from_ref(&id)).map(|mut d| d.remove(0));
                    table.set(id.index(), one.map_err(|e| format!("{e:#}")));
                }
            }
            Err(e) => table.set(batch[0].index(), Err(format!("{e:#}"))),
        }
        hashed();
        at += batch.len();
        size = (size * 4).min(LARGEST_BATCH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(label: &str) -> InputDigest {
        InputDigest {
            label: label.into(),
            digest: qflow_cache::Hash::of_bytes(label.as_bytes()),
            entries: Vec::new(),
            from_index: false,
        }
    }

    #[test]
    fn the_step_with_the_longest_path_below_is_hashed_first() {
        // 0 → 1 → 2, and 3 alone but long: 3 weighs 100, the chain 3 x 10.
        let dag = Dag::new(4, [(StepId(0), StepId(1)), (StepId(1), StepId(2))]);
        let order = hashing_order(&dag, &[10, 10, 10, 100], &[true, false, true, true]);
        assert_eq!(order, vec![StepId(3), StepId(0), StepId(2)]);
    }

    #[test]
    fn batches_grow_and_a_failing_one_is_split_so_each_step_has_its_answer() {
        let order: Vec<StepId> = (0..7).map(StepId).collect();
        let table = InputDigests::pending(7);
        let batches = std::sync::Mutex::new(Vec::new());
        hash_in_order(
            &order,
            &table,
            &AtomicBool::new(false),
            |ids| {
                batches.lock().unwrap().push(ids.len());
                if ids.contains(&StepId(2)) {
                    anyhow::bail!("input `two` cannot be read");
                }
                Ok(ids
                    .iter()
                    .map(|id| vec![digest(&id.0.to_string())])
                    .collect())
            },
            || {},
        );
        // 1, then 4 (fails: split into 1 + 1 + 1 + 1), then the last 2.
        assert_eq!(*batches.lock().unwrap(), vec![1, 4, 1, 1, 1, 1, 2]);
        assert_eq!(table.get(1).unwrap().unwrap()[0].label, "1");
        assert_eq!(
            table.get(2).unwrap().unwrap_err(),
            "input `two` cannot be read"
        );
        assert_eq!(table.get(3).unwrap().unwrap()[0].label, "3");
        assert_eq!(table.get(6).unwrap().unwrap()[0].label, "6");
    }

    #[test]
    fn a_stopped_hashing_leaves_the_rest_unknown() {
        let order: Vec<StepId> = (0..4).map(StepId).collect();
        let table = InputDigests::pending(4);
        let stop = AtomicBool::new(false);
        hash_in_order(
            &order,
            &table,
            &stop,
            |ids| Ok(ids.iter().map(|_| Vec::new()).collect()),
            || stop.store(true, Ordering::Relaxed),
        );
        assert!(table.is_known(0));
        assert!(!table.is_known(1) && !table.is_known(3));
    }
}
