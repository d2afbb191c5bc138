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
//! still hashes in fifteen batches (the stat cache and the tree index
//! answer most of them from stats). Each batch wakes the run loop.
//!
//! The hashing stays at most [`AHEAD`] steps ahead of the run: a step's digests
//! are held from when they are hashed until its result is recorded, and a
//! first apply of 10,000 one-file steps held all of them (1.7 MB) while the
//! run was still at its first steps. It waits while that many are held, and
//! goes on at once when the run has nothing left to start but steps waiting
//! for their inputs ([`InputDigests::hurry`]), so a step whose digests stay
//! held (a remote hit keeps its own) never holds the run back.
//!
//! Imports `inputs` and `dag`; the hashing itself is the function it is given
//! (`Session::digest_inputs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::dag::{Dag, StepId};
use crate::inputs::InputDigest;

/// The most steps hashed in one batch: a batch's file lists are held while it
/// is hashed (about 400 bytes a step), and 4,096 steps of them were the peak of
/// a first apply of 10,000.
const LARGEST_BATCH: usize = 1024;

/// The most steps whose digests are held (hashed, result not yet recorded) before
/// the hashing waits for the run: two batches, so one is hashed while the run
/// works through the other.
pub const AHEAD: usize = 2 * LARGEST_BATCH;

/// Once it waited, the hashing goes on when this many steps fit again: a batch of
/// one step each time one is released would wake the run loop once a step.
const RESUME: usize = LARGEST_BATCH / 2;

/// One step's input digests, or why they could not be had.
pub type Digests = Arc<Result<Vec<InputDigest>, String>>;

/// Where one step's digests are.
#[derive(Debug, Default)]
enum Slot {
    /// Being hashed.
    #[default]
    Pending,
    Known(Digests),
    /// Dropped once the step's result and lock entry were made: they are not
    /// asked for again, and a first apply of 50,000 one-file steps held 9 MB of
    /// them to its end.
    Released,
}

/// Per step: its input digests once hashed, or why they could not be.
#[derive(Debug, Default)]
pub struct InputDigests {
    steps: Vec<Mutex<Slot>>,
    held: Mutex<Held>,
    /// Signalled when digests are released or the run hurries the hashing.
    room: Condvar,
}

/// How many steps' digests are held, and whether the run waits for more.
#[derive(Debug, Default)]
struct Held {
    count: usize,
    hurried: bool,
}

impl InputDigests {
    /// `n` steps, none hashed yet.
    pub fn pending(n: usize) -> InputDigests {
        InputDigests {
            steps: (0..n).map(|_| Mutex::default()).collect(),
            ..Default::default()
        }
    }

    /// Every step's digests, known already.
    pub fn of(all: Vec<Vec<InputDigest>>) -> InputDigests {
        let held = Held {
            count: all.len(),
            hurried: false,
        };
        InputDigests {
            steps: (all.into_iter())
                .map(|d| Mutex::new(Slot::Known(Arc::new(Ok(d)))))
                .collect(),
            held: Mutex::new(held),
            room: Condvar::new(),
        }
    }

    fn slot(&self, i: usize) -> std::sync::MutexGuard<'_, Slot> {
        self.steps[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step `i`'s digests, or why they could not be had; `None` while being hashed.
    pub fn get(&self, i: usize) -> Option<Digests> {
        match &*self.slot(i) {
            Slot::Pending => None,
            Slot::Known(d) => Some(d.clone()),
            Slot::Released => Some(Arc::new(Err(
                "its input digests were asked for after its result was recorded".into(),
            ))),
        }
    }

    /// Whether step `i`'s inputs were hashed (or failed to be).
    pub fn is_known(&self, i: usize) -> bool {
        !matches!(*self.slot(i), Slot::Pending)
    }

    /// Step `i`'s digests, read through [`listed`]: none while unknown or failed
    /// (use after [`Self::get`]).
    pub fn digests(&self, i: usize) -> Digests {
        self.get(i).unwrap_or_else(|| Arc::new(Ok(Vec::new())))
    }

    /// Step `i`'s digests for its key, read through [`listed`]; why not while
    /// they are being hashed or when they could not be had.
    pub fn for_key(&self, i: usize) -> Result<Digests, String> {
        let digests = self.get(i).ok_or("its inputs are not hashed yet")?;
        match &*digests {
            Ok(_) => Ok(digests),
            Err(e) => Err(e.clone()),
        }
    }

    /// Set step `i`'s digests (the first answer stands).
    pub fn set(&self, i: usize, digests: Result<Vec<InputDigest>, String>) {
        let mut slot = self.slot(i);
        if matches!(*slot, Slot::Pending) {
            *slot = Slot::Known(Arc::new(digests));
            self.held().count += 1;
        }
    }

    /// Drop step `i`'s digests: its result is recorded and its lock entry made,
    /// or it failed or was skipped.
    pub fn release(&self, i: usize) {
        let mut slot = self.slot(i);
        if matches!(*slot, Slot::Known(_)) {
            *slot = Slot::Released;
            drop(slot);
            let mut held = self.held();
            held.count -= 1;
            if held.count + RESUME == AHEAD {
                self.room.notify_all();
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run has nothing left to start but steps waiting for their inputs: the
    /// next batch is hashed however many digests are held.
    pub fn hurry(&self) {
        self.held().hurried = true;
        self.room.notify_all();
    }

    /// How many steps may be hashed now: waits while `ahead` steps' digests are
    /// held (then until [`RESUME`] steps fit, or `ahead` is smaller) and the run
    /// does not hurry the hashing; 0 once `stop` is set.
    fn wait_for_room(&self, ahead: usize, stop: &AtomicBool) -> usize {
        let mut held = self.held();
        let mut waited = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return 0;
            }
            if held.hurried {
                held.hurried = false;
                return LARGEST_BATCH;
            }
            let room = ahead.saturating_sub(held.count);
            if room > 0 && (!waited || room >= RESUME.min(ahead)) {
                return room;
            }
            waited = true;
            // `stop` is set without a signal: looked at again now and then.
            held = (self.room.wait_timeout(held, Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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

/// The digests in `d`; none when they could not be had.
pub fn listed(d: &Digests) -> &[InputDigest] {
    match &**d {
        Ok(d) => d,
        Err(_) => &[],
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
/// hashed again step by step, so each step gets its own answer. Holds at most
/// `ahead` steps' digests unless hurried (see [`InputDigests::hurry`]). Stops
/// between batches once `stop` is set, leaving the rest unknown.
pub fn hash_in_order(
    order: &[StepId],
    table: &InputDigests,
    ahead: usize,
    stop: &AtomicBool,
    digest: impl Fn(&[StepId]) -> anyhow::Result<Vec<Vec<InputDigest>>>,
    hashed: impl Fn(),
) {
    let mut at = 0;
    let mut size = 1;
    while at < order.len() {
        let room = table.wait_for_room(ahead, stop);
        if room == 0 {
            break;
        }
        let batch = &order[at..(at + size.min(room)).min(order.len())];
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
            AHEAD,
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
        let label = |i: usize| listed(&table.get(i).unwrap())[0].label.clone();
        assert_eq!(label(1), "1");
        assert_eq!(
            table.get(2).unwrap().as_ref().as_ref().unwrap_err(),
            "input `two` cannot be read"
        );
        assert_eq!(label(3), "3");
        assert_eq!(label(6), "6");
    }

    #[test]
    fn a_steps_digests_are_dropped_once_released_and_it_stays_hashed() {
        let table = InputDigests::pending(2);
        assert_eq!(
            table.for_key(0).unwrap_err(),
            "its inputs are not hashed yet"
        );
        table.set(1, Err("cannot read `a`".into()));
        assert_eq!(table.for_key(1).unwrap_err(), "cannot read `a`");
        assert!(
            listed(&table.digests(1)).is_empty(),
            "a failed step lists nothing"
        );
        table.release(0);
        assert!(!table.is_known(0), "nothing to release before it is hashed");
        table.set(0, Ok(vec![digest("a")]));
        let held = table.for_key(0).unwrap();
        table.release(0);
        assert!(table.is_known(0));
        assert_eq!(listed(&held)[0].label, "a", "a holder keeps its copy");
        assert_eq!(Arc::strong_count(&held), 1, "the table's copy is gone");
        let after = table.get(0).unwrap();
        assert!(after.is_err(), "asking again is an error, not empty inputs");
        table.set(0, Ok(vec![digest("b")]));
        assert!(table.get(0).unwrap().is_err(), "the first answer stands");
    }

    #[test]
    fn the_hashing_waits_while_its_window_is_held_and_goes_on_when_a_batch_fits_or_it_is_hurried() {
        let order: Vec<StepId> = (0..6).map(StepId).collect();
        let table = InputDigests::pending(6);
        let stop = AtomicBool::new(false);
        // Stops the hashing however the test ends, so the scope can end.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|scope| {
            let _stop = Stop(&stop);
            scope.spawn(|| {
                let digests = |ids: &[StepId]| {
                    Ok(ids
                        .iter()
                        .map(|id| vec![digest(&id.0.to_string())])
                        .collect())
                };
                hash_in_order(&order, &table, 2, &stop, digests, || {});
            });
            let known = || (0..6).filter(|&i| table.is_known(i)).count();
            let reaches = |n: usize| {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while known() < n && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                known()
            };
            assert_eq!(reaches(2), 2);
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(known(), 2, "two steps' digests held: the hashing waits");
            table.release(0);
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(known(), 2, "room for one step: it waits for a batch's room");
            table.release(1);
            assert_eq!(reaches(4), 4, "two released: two more hashed");
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(known(), 4);
            table.hurry();
            assert_eq!(
                reaches(6),
                6,
                "hurried: the next batch goes whatever is held"
            );
        });
    }

    #[test]
    fn a_stopped_hashing_leaves_the_rest_unknown() {
        let order: Vec<StepId> = (0..4).map(StepId).collect();
        let table = InputDigests::pending(4);
        let stop = AtomicBool::new(false);
        hash_in_order(
            &order,
            &table,
            AHEAD,
            &stop,
            |ids| Ok(ids.iter().map(|_| Vec::new()).collect()),
            || stop.store(true, Ordering::Relaxed),
        );
        assert!(table.is_known(0));
        assert!(!table.is_known(1) && !table.is_known(3));
    }
}
