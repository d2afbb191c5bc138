//! A run's overall count (`[3/10]`: steps finished of steps in the run) and its
//! estimate of the time left, from how long each step took when it made the
//! result its lock entry names (the previous run's time, the same the schedule
//! weighs steps by for critical-path order); a step never run before counts its
//! kind's guess.
//!
//! The estimate is the larger of two lower bounds on what is left: the longest
//! chain of steps still to finish (the schedule's remaining critical path, less
//! what its running step has already done) and the work still to do spread over
//! the run's CPU slots. No estimate is given when no step left has a previous
//! time: a guess made of guesses only is not shown.
//!
//! Imports nothing of the engine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the run expects of one step, given once when the first step is ready.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The step.
    pub name: String,
    /// How long it is expected to take (0 for a step already done).
    pub ms: u64,
    /// Whether `ms` is a time it took before (else its kind's guess).
    pub previous: bool,
    /// The longest chain of expected times from this step to the end of the
    /// run, itself included (the schedule's remaining critical path).
    pub path_ms: u64,
    /// The CPU slots it holds.
    pub width: usize,
}

/// The count and the estimate, kept as steps start and finish.
#[derive(Debug, Default)]
pub struct Tally {
    /// Steps in the run (0 until known).
    total: usize,
    /// Steps finished (ran, cached, failed, skipped, interrupted).
    finished: usize,
    /// The steps already announced finished, so each counts once.
    seen: std::collections::HashSet<String>,
    expected: HashMap<String, Expected>,
    slots: usize,
    started: HashMap<String, Instant>,
}

impl Tally {
    /// The run's steps (all of them, done ones with `ms` 0) and its CPU slots.
    pub fn expect(&mut self, steps: Vec<Expected>, slots: usize) {
        self.total = steps.len();
        self.slots = slots.max(1);
        self.expected = steps.into_iter().map(|e| (e.name.clone(), e)).collect();
    }

    /// Step `name` started at `at`.
    pub fn started(&mut self, name: &str, at: Instant) {
        self.started.insert(name.to_string(), at);
    }

    /// Step `name` finished; false when it was already counted.
    pub fn finished(&mut self, name: &str) -> bool {
        if !self.seen.insert(name.to_string()) {
            return false;
        }
        self.finished += 1;
        self.started.remove(name);
        self.expected.remove(name);
        true
    }

    /// Whether step `name` was announced finished.
    pub fn is_finished(&self, name: &str) -> bool {
        self.seen.contains(name)
    }

    /// `(finished, total)` once the run's size is known.
    pub fn count(&self) -> Option<(usize, usize)> {
        (self.total > 0).then(|| (self.finished.min(self.total), self.total))
    }

    /// The estimate of the time left at `now`, if any step left has a previous time.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        if !self.expected.values().any(|e| e.previous && e.ms > 0) {
            return None;
        }
        let mut work: u64 = 0;
        let mut chain: u64 = 0;
        for e in self.expected.values() {
            let done = (self.started.get(&e.name))
                .map(|t| now.saturating_duration_since(*t).as_millis() as u64)
                .unwrap_or(0);
            work += e.ms.saturating_sub(done) * e.width.max(1) as u64;
            chain = chain.max(e.path_ms.saturating_sub(done));
        }
        Some(Duration::from_millis(chain.max(work / self.slots as u64)))
    }

    /// `[3/10]`, `[3/10, about 1m05s left]` (`under 1s left`), or nothing before
    /// the size is known.
    pub fn describe(&self, now: Instant) -> Option<String> {
        let (n, m) = self.count()?;
        Some(match self.left(now) {
            Some(left) if left < Duration::from_millis(500) => format!("[{n}/{m}, under 1s left]"),
            Some(left) => format!("[{n}/{m}, about {} left]", human_duration(left)),
            None => format!("[{n}/{m}]"),
        })
    }
}

/// `45s`, `1m05s`, `2h03m`: a duration as people read it.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, ms: u64, previous: bool, path_ms: u64) -> Expected {
        Expected {
            name: name.into(),
            ms,
            previous,
            path_ms,
            width: 1,
        }
    }

    #[test]
    fn the_estimate_is_the_longest_chain_left_or_the_work_over_the_slots() {
        let t0 = Instant::now();
        let mut tally = Tally::default();
        // a (10 s) then b (20 s); c (6 s) beside them; two slots.
        tally.expect(
            vec![
                step("a", 10_000, true, 30_000),
                step("b", 20_000, true, 20_000),
                step("c", 6_000, true, 6_000),
            ],
            2,
        );
        assert_eq!(tally.describe(t0).unwrap(), "[0/3, about 30s left]");
        tally.started("a", t0);
        tally.started("c", t0);
        let later = t0 + Duration::from_secs(4);
        assert_eq!(tally.left(later), Some(Duration::from_secs(26)));
        assert!(tally.finished("c"));
        assert!(!tally.finished("c"), "a step counts once");
        assert!(tally.finished("a"));
        assert_eq!(tally.describe(later).unwrap(), "[2/3, about 20s left]");
    }

    #[test]
    fn many_steps_on_few_slots_take_their_work_over_the_slots() {
        let mut tally = Tally::default();
        let steps = (0..8).map(|i| step(&format!("s{i}"), 10_000, true, 10_000));
        tally.expect(steps.collect(), 2);
        assert_eq!(tally.left(Instant::now()), Some(Duration::from_secs(40)));
    }

    #[test]
    fn no_estimate_is_made_of_guesses_alone() {
        let mut tally = Tally::default();
        assert_eq!(tally.describe(Instant::now()), None, "size not known yet");
        tally.expect(vec![step("a", 60_000, false, 60_000)], 4);
        assert_eq!(tally.describe(Instant::now()).unwrap(), "[0/1]");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(Duration::from_millis(44_600)), "45s");
        assert_eq!(human_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(human_duration(Duration::from_secs(7380)), "2h03m");
    }
}
