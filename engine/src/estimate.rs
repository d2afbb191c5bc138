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
//! Steps are known by a 64-bit hash of their name, not a copy of it: the
//! tally of a 50,000-step run keeps a tenth of what it did with names. Two
//! names of one workflow would share a hash about once in 10^10 runs of that
//! size, and then only the count and the estimate would be off.
//!
//! Imports nothing of the engine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, DefaultHasher, Hasher};
use std::time::{Duration, Instant};

/// A step's name, as the tally knows it.
type Name = u64;

fn name_of(step: &str) -> Name {
    let mut h = DefaultHasher::new();
    h.write(step.as_bytes());
    h.finish()
}

/// Names are hashes already: a map keyed by them uses them as they are.
#[derive(Default)]
struct AsIs(u64);

impl Hasher for AsIs {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByName = BuildHasherDefault<AsIs>;

/// What the run expects of one step, given once when the first step is ready.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The step.
    pub name: &'a str,
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

/// What the tally keeps of an [`Expected`] step not finished: all but its name,
/// whose hash keys it. Twelve bytes: times over 49 days count as 49 days, widths
/// over 65,535 slots as 65,535 (a 50,000-step run keeps one per step).
#[derive(Debug, Clone, Copy)]
struct Left {
    ms: u32,
    path_ms: u32,
    width: u16,
    previous: bool,
}

impl Left {
    fn of(e: &Expected) -> Left {
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Left {
            ms: ms(e.ms),
            path_ms: ms(e.path_ms),
            width: u16::try_from(e.width.max(1)).unwrap_or(u16::MAX),
            previous: e.previous,
        }
    }

    /// Its work: `ms` times `width`.
    fn work(&self) -> u64 {
        u64::from(self.ms) * u64::from(self.width)
    }
}

/// The count and the estimate, kept as steps start and finish.
///
/// Every event costs the same whatever the run's size: the sums and the
/// longest path of what is left are kept up to date as steps start and finish,
/// and only the running steps are looked at one by one (a progress line per
/// event that went over every step made a run's cost grow with the square of
/// its steps).
#[derive(Debug, Default)]
pub struct Tally {
    /// Steps in the run (0 until known).
    total: usize,
    /// Steps finished (ran, cached, failed, skipped, interrupted).
    finished: usize,
    /// The steps already announced finished, so each counts once.
    seen: HashSet<Name, ByName>,
    /// The steps not finished yet.
    expected: HashMap<Name, Left, ByName>,
    slots: usize,
    /// The running steps, since when.
    started: HashMap<Name, Instant, ByName>,
    /// How many steps not finished have a previous time.
    with_previous: usize,
    /// The work of the steps not finished: `ms` times `width`, summed.
    work: u64,
    /// The `path_ms` of the steps neither started nor finished, with how many
    /// steps have each.
    paths: BTreeMap<u32, usize>,
}

impl Tally {
    /// The run's steps (all of them, done ones with `ms` 0) and its CPU slots.
    pub fn expect(&mut self, steps: Vec<Expected>, slots: usize) {
        self.total = steps.len();
        self.slots = slots.max(1);
        self.expected = HashMap::with_capacity_and_hasher(steps.len(), ByName::default());
        self.expected.extend((steps.into_iter()).map(|e| {
            let left = Left::of(&e);
            (name_of(e.name), left)
        }));
        self.with_previous = 0;
        self.work = 0;
        self.paths.clear();
        for (name, e) in &self.expected {
            self.with_previous += usize::from(e.previous && e.ms > 0);
            self.work += e.work();
            if !self.started.contains_key(name) {
                *self.paths.entry(e.path_ms).or_default() += 1;
            }
        }
    }

    /// Step `name` started at `at`.
    pub fn started(&mut self, name: &str, at: Instant) {
        let name = name_of(name);
        if self.started.insert(name, at).is_none()
            && let Some(e) = self.expected.get(&name)
        {
            forget_path(&mut self.paths, e.path_ms);
        }
    }

    /// Step `name` finished; false when it was already counted.
    pub fn finished(&mut self, name: &str) -> bool {
        let name = name_of(name);
        if !self.seen.insert(name) {
            return false;
        }
        self.finished += 1;
        let was_running = self.started.remove(&name).is_some();
        if let Some(e) = self.expected.remove(&name) {
            self.with_previous -= usize::from(e.previous && e.ms > 0);
            self.work -= e.work();
            if !was_running {
                forget_path(&mut self.paths, e.path_ms);
            }
            // Its room is given back as the run goes: held to the end, 10,000
            // steps' room was a megabyte at the run's peak.
            if self.expected.len() * 4 < self.expected.capacity() {
                self.expected.shrink_to(self.expected.len() * 2);
            }
        }
        true
    }

    /// Whether step `name` was announced finished.
    pub fn is_finished(&self, name: &str) -> bool {
        self.seen.contains(&name_of(name))
    }

    /// `(finished, total)` once the run's size is known.
    pub fn count(&self) -> Option<(usize, usize)> {
        (self.total > 0).then(|| (self.finished.min(self.total), self.total))
    }

    /// The estimate of the time left at `now`, if any step left has a previous time.
    pub fn left(&self, now: Instant) -> Option<Duration> {
        if self.with_previous == 0 {
            return None;
        }
        // Steps not started count whole; a running one less what it has done.
        let mut work = self.work;
        let mut chain: u64 = self
            .paths
            .last_key_value()
            .map_or(0, |(p, _)| u64::from(*p));
        for (name, at) in &self.started {
            let Some(e) = self.expected.get(name) else {
                continue;
            };
            let done = now.saturating_duration_since(*at).as_millis() as u64;
            work -= u64::from(e.ms).min(done) * u64::from(e.width);
            chain = chain.max(u64::from(e.path_ms).saturating_sub(done));
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

/// One step fewer with path `ms` in `paths`.
fn forget_path(paths: &mut BTreeMap<u32, usize>, ms: u32) {
    if let Some(n) = paths.get_mut(&ms) {
        *n -= 1;
        if *n == 0 {
            paths.remove(&ms);
        }
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

    fn step(name: &str, ms: u64, previous: bool, path_ms: u64) -> Expected<'_> {
        Expected {
            name,
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
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let steps = names.iter().map(|n| step(n, 10_000, true, 10_000));
        tally.expect(steps.collect(), 2);
        assert_eq!(tally.left(Instant::now()), Some(Duration::from_secs(40)));
    }

    #[test]
    fn the_estimate_kept_as_steps_start_and_finish_is_the_one_counted_over_every_step_left() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..40u64).map(|i| format!("s{i}")).collect();
        let steps: Vec<Expected> = (0..40u64)
            .map(|i| Expected {
                name: &names[i as usize],
                ms: (i * 7919) % 5000,
                previous: i % 3 != 0,
                path_ms: (i * 104_729) % 20_000,
                width: 1 + (i % 3) as usize,
            })
            .collect();
        let counted = |tally: &Tally, left: &[Expected], now: Instant| {
            if !left.iter().any(|e| e.previous && e.ms > 0) {
                return None;
            }
            let (mut work, mut chain) = (0u64, 0u64);
            for e in left {
                let done = (tally.started.get(&name_of(e.name)))
                    .map_or(0, |t| now.saturating_duration_since(*t).as_millis() as u64);
                work += e.ms.saturating_sub(done) * e.width as u64;
                chain = chain.max(e.path_ms.saturating_sub(done));
            }
            Some(Duration::from_millis(chain.max(work / 3)))
        };
        let mut tally = Tally::default();
        tally.started("s5", t0);
        tally.expect(steps.clone(), 3);
        let mut left = steps;
        for i in 0..40u64 {
            let now = t0 + Duration::from_millis(i * 300);
            tally.started(&format!("s{}", (i * 13) % 40), now);
            let gone = format!("s{}", (i * 17) % 40);
            tally.finished(&gone);
            left.retain(|e| e.name != gone);
            let later = now + Duration::from_millis(150);
            assert_eq!(
                tally.left(later),
                counted(&tally, &left, later),
                "after {i} events"
            );
        }
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
