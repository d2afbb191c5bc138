//! The states of one run's steps, and what they allow next: which waiting
//! steps may be settled, which ready steps fit in the free CPU slots, which
//! steps are skipped after a failure or an interrupt.
//!
//! Every change of a step's state goes through [`Schedule::set`], which keeps
//! the counts per state, the free slots, each step's count of upstream steps
//! not yet done and the two queues (steps to look at, steps ready to start)
//! consistent. So an event costs work in proportion to the steps it touches,
//! not to the size of the workflow. The to-look-at queue is ordered by the
//! DAG's schedule order ([`Dag::order`]): the same order in which a pass over
//! all steps would meet them. The ready queue puts the critical path first:
//! the step with the longest remaining path below it (each step weighted by
//! its expected duration, [`Schedule::weigh`]) starts first, so a long kernel
//! build does not wait behind short steps that nothing long depends on. It knows nothing of keys, records or executors (`run.rs` does);
//! imports only `dag.rs`.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::dag::{Dag, StepId};

/// Where a step is in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// An upstream step is not done yet, or the step was not looked at yet.
    Waiting,
    /// Its key has no usable result: it waits for CPU slots.
    Ready,
    /// Handed to the executor (or being recorded); holds its slots.
    Running,
    /// It has an output (ran or cached).
    Done,
    /// It ran and failed, or was interrupted.
    Failed,
    /// It will not run: an upstream step failed, or the run was interrupted.
    Skipped,
}

const STATES: usize = 6;

impl StepState {
    fn slot(self) -> usize {
        self as usize
    }
}

/// What to do with a waiting step, given its upstream steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// An upstream step is not done yet.
    Wait,
    /// Every upstream step is done: compute the key and look for a result.
    Settle,
    /// It cannot run: these upstream steps failed or were skipped.
    UpstreamFailed(Vec<StepId>),
    /// It cannot run: the run was interrupted before its upstream was done.
    Interrupted,
}

/// The states of every step of one run (n2's `BuildStates`).
pub struct Schedule<'d> {
    dag: &'d Dag,
    /// Each step's position in the schedule order.
    position: Vec<usize>,
    order: Vec<StepId>,
    states: Vec<StepState>,
    counts: [usize; STATES],
    /// Per step: upstream steps not done yet.
    ups_left: Vec<usize>,
    /// Waiting steps whose upstream changed since they were last looked at.
    to_look_at: BTreeSet<usize>,
    /// Ready steps: longest remaining path first, then by position.
    ready: BTreeSet<(Reverse<u64>, usize)>,
    /// Per step: its expected duration plus the longest such path below it (ms).
    remaining: Vec<u64>,
    /// CPU slots each step takes when it runs.
    width: Vec<usize>,
    free: usize,
    stopped: bool,
    interrupted: bool,
}

impl<'d> Schedule<'d> {
    /// Every step waiting, `slots` CPU slots free; step `i` takes `width[i]`
    /// slots (at most `slots`).
    pub fn new(dag: &'d Dag, width: Vec<usize>, slots: usize) -> Schedule<'d> {
        let n = dag.len();
        let order = dag.order();
        let mut position = vec![0; n];
        for (p, id) in order.iter().enumerate() {
            position[id.index()] = p;
        }
        let ups_left: Vec<usize> = (0..n).map(|i| dag.upstream(StepId(i)).len()).collect();
        let to_look_at = order
            .iter()
            .filter(|id| ups_left[id.index()] == 0)
            .map(|id| position[id.index()])
            .collect();
        let mut counts = [0; STATES];
        counts[StepState::Waiting.slot()] = n;
        let slots = slots.max(1);
        Schedule {
            dag,
            position,
            order,
            states: vec![StepState::Waiting; n],
            counts,
            ups_left,
            to_look_at,
            ready: BTreeSet::new(),
            remaining: vec![0; n],
            width: width.into_iter().map(|w| w.clamp(1, slots)).collect(),
            free: slots,
            stopped: false,
            interrupted: false,
        }
    }

    /// The state of step `id`.
    pub fn state(&self, id: StepId) -> StepState {
        self.states[id.index()]
    }

    /// How many steps are in `state`.
    pub fn count(&self, state: StepState) -> usize {
        self.counts[state.slot()]
    }

    /// CPU slots not held by a running step.
    pub fn free(&self) -> usize {
        self.free
    }

    /// CPU slots step `id` takes.
    pub fn width(&self, id: StepId) -> usize {
        self.width[id.index()]
    }

    /// Let waiting step `id` take `width` slots (at least 1) instead.
    pub fn set_width(&mut self, id: StepId, width: usize) {
        assert_eq!(self.state(id), StepState::Waiting, "width set once started");
        self.width[id.index()] = width.max(1);
    }

    /// Move step `id` to `state`: the one place where states, counts, slots
    /// and queues change.
    pub fn set(&mut self, id: StepId, state: StepState) {
        let i = id.index();
        let old = self.states[i];
        if old == state {
            return;
        }
        self.states[i] = state;
        self.counts[old.slot()] -= 1;
        self.counts[state.slot()] += 1;
        match old {
            StepState::Ready => {
                self.ready.remove(&self.ready_key(i));
            }
            StepState::Running => self.free += self.width[i],
            _ => {}
        }
        match state {
            StepState::Ready => {
                self.ready.insert(self.ready_key(i));
            }
            StepState::Running => {
                assert!(
                    self.width[i] <= self.free,
                    "step started without free slots"
                );
                self.free -= self.width[i];
            }
            StepState::Done => {
                for &d in self.dag.downstream(id) {
                    self.ups_left[d.index()] -= 1;
                    if self.ups_left[d.index()] == 0 {
                        self.look_at(d);
                    }
                }
            }
            StepState::Failed | StepState::Skipped => {
                for &d in self.dag.downstream(id) {
                    self.look_at(d);
                }
            }
            StepState::Waiting => {}
        }
    }

    fn ready_key(&self, i: usize) -> (Reverse<u64>, usize) {
        (Reverse(self.remaining[i]), self.position[i])
    }

    /// Give each step its expected duration in ms (`expected[i]`, from earlier
    /// runs or its kind's default): ready steps then start longest remaining
    /// path first. Costs one pass over the DAG; without it, ready steps start
    /// in schedule order.
    pub fn weigh(&mut self, expected: &[u64]) {
        let ready: Vec<usize> = self.ready.iter().map(|&(_, p)| p).collect();
        for &id in self.order.iter().rev() {
            let below = (self.dag.downstream(id).iter())
                .map(|d| self.remaining[d.index()])
                .max()
                .unwrap_or(0);
            self.remaining[id.index()] = expected[id.index()].saturating_add(below);
        }
        self.ready = ready
            .into_iter()
            .map(|p| self.ready_key(self.order[p].index()))
            .collect();
    }

    /// The expected duration of the longest path from step `id` down (ms), as
    /// last weighed.
    pub fn remaining(&self, id: StepId) -> u64 {
        self.remaining[id.index()]
    }

    /// Look at waiting step `id` again (it waited for something besides its
    /// upstream steps: its inputs' digests).
    pub fn look_at(&mut self, id: StepId) {
        if self.states[id.index()] == StepState::Waiting {
            self.to_look_at.insert(self.position[id.index()]);
        }
    }

    /// The next waiting step to look at (in schedule order), if any.
    pub fn next_to_look_at(&mut self) -> Option<StepId> {
        while let Some(p) = self.to_look_at.pop_first() {
            let id = self.order[p];
            if self.state(id) == StepState::Waiting {
                return Some(id);
            }
        }
        None
    }

    /// What to do with waiting step `id`.
    pub fn triage(&self, id: StepId) -> Triage {
        let bad: Vec<StepId> = self
            .dag
            .upstream(id)
            .iter()
            .copied()
            .filter(|&u| matches!(self.state(u), StepState::Failed | StepState::Skipped))
            .collect();
        if !bad.is_empty() {
            return if self.interrupted {
                Triage::Interrupted
            } else {
                Triage::UpstreamFailed(bad)
            };
        }
        match (self.ups_left[id.index()], self.interrupted) {
            (0, _) => Triage::Settle,
            (_, true) => Triage::Interrupted,
            (_, false) => Triage::Wait,
        }
    }

    /// Ready steps to start now, longest remaining path first: each one that
    /// fits in the slots left by those before it. Narrower steps behind a wide one may
    /// use the free slots (backfill); the DAG is finite, so the wide step runs
    /// eventually. None once the run is stopped.
    pub fn startable(&self) -> Vec<StepId> {
        if self.stopped {
            return Vec::new();
        }
        let mut free = self.free;
        let mut start = Vec::new();
        for &(_, p) in &self.ready {
            if free == 0 {
                // Thousands of steps may be ready at once: a pass stops when the
                // slots are gone, so each event costs what it starts, not the queue.
                break;
            }
            let id = self.order[p];
            if self.width(id) <= free {
                free -= self.width(id);
                start.push(id);
            }
        }
        start
    }

    /// Start no more steps (a failure without `--keep-going`).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Start no more steps, and skip every waiting step whose upstream is not done.
    pub fn interrupt(&mut self) {
        self.stopped = true;
        self.interrupted = true;
        for i in 0..self.states.len() {
            self.look_at(StepId(i));
        }
    }

    /// Whether no more steps start (a failure without `--keep-going`, or a signal).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the run was interrupted.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// top → left, top → right, left → bottom, right → bottom.
    fn diamond() -> Dag {
        Dag::new(
            4,
            [(0, 1), (0, 2), (1, 3), (2, 3)].map(|(u, d)| (StepId(u), StepId(d))),
        )
    }

    const TOP: StepId = StepId(0);
    const LEFT: StepId = StepId(1);
    const RIGHT: StepId = StepId(2);
    const BOTTOM: StepId = StepId(3);

    /// Look at every step there is to look at; each one to settle becomes ready.
    fn settle_all(s: &mut Schedule) -> Vec<(StepId, Triage)> {
        let mut seen = Vec::new();
        while let Some(id) = s.next_to_look_at() {
            let t = s.triage(id);
            match &t {
                Triage::Settle => s.set(id, StepState::Ready),
                Triage::UpstreamFailed(_) | Triage::Interrupted => s.set(id, StepState::Skipped),
                Triage::Wait => {}
            }
            seen.push((id, t));
        }
        seen
    }

    #[test]
    fn a_diamond_runs_top_then_both_sides_then_bottom() {
        let dag = diamond();
        let mut s = Schedule::new(&dag, vec![1; 4], 2);
        assert_eq!(settle_all(&mut s), [(TOP, Triage::Settle)]);
        assert_eq!(s.startable(), [TOP]);
        s.set(TOP, StepState::Running);
        assert_eq!(s.free(), 1);
        assert!(
            settle_all(&mut s).is_empty(),
            "nothing below a running step settles"
        );
        s.set(TOP, StepState::Done);
        assert_eq!(
            settle_all(&mut s),
            [(LEFT, Triage::Settle), (RIGHT, Triage::Settle)]
        );
        assert_eq!(s.startable(), [LEFT, RIGHT]);
        s.set(LEFT, StepState::Running);
        s.set(RIGHT, StepState::Running);
        assert_eq!(s.free(), 0);
        s.set(LEFT, StepState::Done);
        assert!(
            settle_all(&mut s).is_empty(),
            "bottom still waits for right"
        );
        s.set(RIGHT, StepState::Done);
        assert_eq!(settle_all(&mut s), [(BOTTOM, Triage::Settle)]);
        assert_eq!(s.count(StepState::Done), 3);
        assert_eq!(s.count(StepState::Ready), 1);
        assert_eq!(s.free(), 2);
    }

    #[test]
    fn a_wide_step_waits_for_its_slots_while_a_narrow_one_behind_it_backfills() {
        let dag = Dag::new(3, []);
        let mut s = Schedule::new(&dag, vec![1, 2, 1], 2);
        settle_all(&mut s);
        assert_eq!(s.startable(), [StepId(0), StepId(2)]);
        s.set(StepId(0), StepState::Running);
        s.set(StepId(2), StepState::Running);
        assert!(
            s.startable().is_empty(),
            "the two-slot step waits for both slots"
        );
        s.set(StepId(0), StepState::Done);
        assert!(s.startable().is_empty());
        s.set(StepId(2), StepState::Done);
        assert_eq!(s.startable(), [StepId(1)]);
    }

    #[test]
    fn the_step_at_the_head_of_the_longest_path_starts_first() {
        // 0 → 1 → 2 is a long chain (a kernel at its end); 3 and 4 are short and
        // nothing waits for them. With one slot, 0 goes first though it comes
        // after 3 and 4 in no order but the critical path's.
        let dag = Dag::new(5, [(StepId(0), StepId(1)), (StepId(1), StepId(2))]);
        let mut s = Schedule::new(&dag, vec![1; 5], 1);
        settle_all(&mut s);
        s.weigh(&[10, 10, 600_000, 50, 20]);
        assert_eq!(s.remaining(StepId(0)), 600_020);
        assert_eq!(s.startable(), [StepId(0)]);
        s.set(StepId(0), StepState::Running);
        s.set(StepId(0), StepState::Done);
        settle_all(&mut s);
        assert_eq!(
            s.startable(),
            [StepId(1)],
            "the chain goes on before 3 and 4"
        );
        s.set(StepId(1), StepState::Running);
        s.set(StepId(1), StepState::Done);
        settle_all(&mut s);
        assert_eq!(s.startable(), [StepId(2)]);
        s.set(StepId(2), StepState::Running);
        s.set(StepId(2), StepState::Done);
        assert_eq!(s.startable(), [StepId(3)], "then the longer short step");
    }

    #[test]
    fn ready_steps_weighed_after_they_became_ready_are_reordered() {
        let dag = Dag::new(3, []);
        let mut s = Schedule::new(&dag, vec![1; 3], 1);
        settle_all(&mut s);
        assert_eq!(s.startable(), [StepId(0)], "unweighed: schedule order");
        s.weigh(&[1, 5, 9]);
        assert_eq!(s.startable(), [StepId(2)]);
        s.set(StepId(2), StepState::Running);
        s.set(StepId(2), StepState::Done);
        assert_eq!(s.startable(), [StepId(1)]);
    }

    #[test]
    fn a_wide_step_on_the_critical_path_is_not_starved_by_narrow_ones() {
        // The two-slot step has the longest path: it takes both slots first.
        let dag = Dag::new(3, []);
        let mut s = Schedule::new(&dag, vec![1, 2, 1], 2);
        settle_all(&mut s);
        s.weigh(&[10, 1000, 10]);
        assert_eq!(s.startable(), [StepId(1)]);
    }

    #[test]
    fn a_step_wider_than_the_run_takes_every_slot() {
        let dag = Dag::new(1, []);
        let s = Schedule::new(&dag, vec![64], 4);
        assert_eq!(s.width(StepId(0)), 4);
    }

    #[test]
    fn a_failure_skips_everything_below_it_naming_the_failed_step() {
        let dag = diamond();
        let mut s = Schedule::new(&dag, vec![1; 4], 2);
        settle_all(&mut s);
        s.set(TOP, StepState::Running);
        s.set(TOP, StepState::Failed);
        s.stop();
        assert_eq!(
            settle_all(&mut s),
            [
                (LEFT, Triage::UpstreamFailed(vec![TOP])),
                (RIGHT, Triage::UpstreamFailed(vec![TOP])),
                (BOTTOM, Triage::UpstreamFailed(vec![LEFT, RIGHT])),
            ]
        );
        assert_eq!(s.count(StepState::Skipped), 3);
        assert_eq!(s.free(), 2, "the failed step gave its slot back");
    }

    #[test]
    fn without_keep_going_a_failure_starts_nothing_more_but_with_it_the_other_side_goes_on() {
        for keep_going in [false, true] {
            let dag = diamond();
            let mut s = Schedule::new(&dag, vec![1; 4], 2);
            settle_all(&mut s);
            s.set(TOP, StepState::Running);
            s.set(TOP, StepState::Done);
            settle_all(&mut s);
            s.set(LEFT, StepState::Running);
            s.set(LEFT, StepState::Failed);
            if !keep_going {
                s.stop();
            }
            settle_all(&mut s);
            assert_eq!(s.state(BOTTOM), StepState::Skipped);
            let expected: &[StepId] = if keep_going { &[RIGHT] } else { &[] };
            assert_eq!(s.startable(), expected);
        }
    }

    #[test]
    fn an_interrupt_skips_the_steps_below_a_running_one_and_starts_nothing() {
        let dag = Dag::new(3, [(StepId(0), StepId(1))]);
        let mut s = Schedule::new(&dag, vec![1; 3], 1);
        settle_all(&mut s);
        s.set(StepId(0), StepState::Running);
        s.interrupt();
        assert_eq!(settle_all(&mut s), [(StepId(1), Triage::Interrupted)]);
        assert!(s.startable().is_empty());
        assert_eq!(
            s.state(StepId(2)),
            StepState::Ready,
            "ready but never started"
        );
        s.set(StepId(0), StepState::Failed);
        assert!(settle_all(&mut s).is_empty());
        assert!(s.is_interrupted());
    }
}
