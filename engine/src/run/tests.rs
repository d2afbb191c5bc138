//! The run loop against a fake executor that runs its batch only when asked,
//! like a batch system polled for status, and a `note` kind that writes one
//! file (or fails). Real cache, real records, real `out/` links.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use super::*;
use crate::context::{NoProgress, ProcessGroups};
use crate::executor::{Executor, JobId, JobResult, StepJob};
use crate::step::{Registry, Step, StepFields};
use crate::workflow::{LoadOptions, Workflow};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Note {
    text: String,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    inputs: Vec<String>,
}

impl Step for Note {
    fn inputs(&self) -> Vec<crate::Input> {
        (self.inputs.iter())
            .map(|p| crate::Input::new("inputs", p.as_str()))
            .collect()
    }
    fn output_roles(&self) -> Vec<(String, crate::OutputRole)> {
        vec![("note".into(), crate::OutputRole::Result)]
    }
    fn run(&self, ctx: &mut crate::RunContext) -> anyhow::Result<()> {
        if self.fail {
            anyhow::bail!("it broke");
        }
        std::fs::write(ctx.out_dir().join("note"), &self.text)?;
        Ok(())
    }
}

impl StepFields for Note {
    const KIND: &'static str = "note";
    const SCHEMA_VERSION: u32 = 1;
    fn kind_tools() -> Vec<crate::Tool> {
        Vec::new()
    }
    fn kind_needs() -> Vec<crate::HostNeed> {
        Vec::new()
    }
}

/// Runs nothing at submit; runs every submitted job when polled. Keeps the
/// batches it ran, by step name.
struct Batch<'r> {
    registry: &'r Registry,
    queued: Vec<(JobId, StepJob)>,
    done: Vec<(JobId, JobResult)>,
    batches: Vec<Vec<String>>,
    cancelled: usize,
}

impl Executor for Batch<'_> {
    fn submit(&mut self, job: StepJob) -> anyhow::Result<JobId> {
        let id = JobId(self.queued.len() as u64 + self.done.len() as u64 + 1000);
        self.queued.push((id, job));
        Ok(id)
    }

    fn check_active(&mut self, active: &[JobId]) -> Vec<(JobId, JobResult)> {
        let batch: Vec<(JobId, StepJob)> = self.queued.drain(..).collect();
        if !batch.is_empty() {
            self.batches
                .push(batch.iter().map(|(_, j)| j.step.clone()).collect());
        }
        for (id, job) in batch {
            let result = job.run(self.registry, Arc::new(NoProgress), ProcessGroups::new());
            self.done.push((id, result));
        }
        let (finished, rest) = self.done.drain(..).partition(|(id, _)| active.contains(id));
        self.done = rest;
        finished
    }

    fn cancel(&mut self, active: &[JobId]) {
        self.cancelled += active.len();
        for (id, _) in self.queued.drain(..) {
            self.done.push((id, Err(anyhow::anyhow!("interrupted"))));
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(1))
    }
}

struct Space(PathBuf);

impl Drop for Space {
    fn drop(&mut self) {
        let _ = qflow_cache::remove_dir_force(&self.0);
    }
}

fn space(name: &str, yaml: &str) -> Space {
    let dir =
        std::env::temp_dir().join(format!("qflow-run-{name}-{}", crate::run_record::run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("workflow.yaml"), yaml).unwrap();
    Space(dir)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.add(crate::step::KindOf::<Note>::new());
    r
}

/// One apply of the workflow in `dir` on the fake executor, `slots` wide.
fn run_once(dir: &Path, slots: usize, keep_going: bool) -> (Ended, Vec<Vec<String>>) {
    run_with(dir, slots, keep_going, false)
}

/// [`run_once`], with a signal waiting before the first step is handed out
/// when `interrupt`.
fn run_with(
    dir: &Path,
    slots: usize,
    keep_going: bool,
    interrupt: bool,
) -> (Ended, Vec<Vec<String>>) {
    let registry = registry();
    let options = LoadOptions {
        set: Vec::new(),
        memo_cache: None,
    };
    let wf = Workflow::load(&dir.join("workflow.yaml"), &registry, &options).unwrap();
    let mut session = Session::open(&wf, &registry, &dir.join(".qflow")).unwrap();
    let prepared = session.prepare().unwrap();
    let session = &session;
    let probe = session.cache.probe().unwrap();
    let out_links = OutLinks::open(&dir.join("out"), &session.cache.dir("trees")).unwrap();
    let (tx, rx) = mpsc::channel();
    if interrupt {
        tx.send(Event::Signal).unwrap();
    }
    let parts = RunParts {
        session,
        prepared: &prepared,
        probe: &probe,
        out_links: &out_links,
        in_place: Vec::new(),
        progress: Arc::new(Progress::plain()),
        events: tx,
        started: Instant::now(),
        remote: None,
        uploads: None,
    };
    let mut run = Run::new(parts, slots, keep_going, crate::run_record::run_id());
    let mut batch = Batch {
        registry: &registry,
        queued: Vec::new(),
        done: Vec::new(),
        batches: Vec::new(),
        cancelled: 0,
    };
    std::thread::scope(|scope| drive(&mut run, &mut batch, &rx, scope)).unwrap();
    (run.finish().ended(&wf), batch.batches)
}

/// One apply of the workflow in `dir` on the fake executor, 2 slots wide, whose
/// inputs are hashed by `hasher` on a thread beside the run (given the session,
/// the table to fill and the run's events, to wake it); with a signal waiting
/// when `interrupt`.
fn run_hashing_with(
    dir: &Path,
    interrupt: bool,
    hasher: impl FnOnce(&Session, &crate::input_digests::InputDigests, mpsc::Sender<Event>) + Send,
) -> (Ended, Vec<Vec<String>>) {
    let registry = registry();
    let options = LoadOptions {
        set: Vec::new(),
        memo_cache: None,
    };
    let wf = Workflow::load(&dir.join("workflow.yaml"), &registry, &options).unwrap();
    let mut session = Session::open(&wf, &registry, &dir.join(".qflow")).unwrap();
    let prepared = session.prepare_keys();
    let session = &session;
    let probe = session.cache.probe().unwrap();
    let out_links = OutLinks::open(&dir.join("out"), &session.cache.dir("trees")).unwrap();
    let (tx, rx) = mpsc::channel();
    if interrupt {
        tx.send(Event::Signal).unwrap();
    }
    let parts = RunParts {
        session,
        prepared: &prepared,
        probe: &probe,
        out_links: &out_links,
        in_place: Vec::new(),
        progress: Arc::new(Progress::plain()),
        events: tx.clone(),
        started: Instant::now(),
        remote: None,
        uploads: None,
    };
    let mut run = Run::new(parts, 2, false, crate::run_record::run_id());
    let mut batch = Batch {
        registry: &registry,
        queued: Vec::new(),
        done: Vec::new(),
        batches: Vec::new(),
        cancelled: 0,
    };
    let inputs = &prepared.inputs;
    std::thread::scope(|scope| {
        scope.spawn(move || hasher(session, inputs, tx));
        drive(&mut run, &mut batch, &rx, scope)
    })
    .unwrap();
    (run.finish().ended(&wf), batch.batches)
}

/// `slow` has an input tree; `quick` has none and needs nothing.
const SLOW_AND_QUICK: &str = "version: 1\nsteps:\n  slow:\n    kind: note\n    text: slow\n    inputs: [src]\n  quick:\n    kind: note\n    text: quick\n";

#[test]
fn a_step_without_inputs_runs_while_another_steps_inputs_are_still_being_hashed() {
    let s = space("lazy-inputs", SLOW_AND_QUICK);
    std::fs::create_dir_all(s.0.join("src")).unwrap();
    std::fs::write(s.0.join("src/a.c"), "int a;").unwrap();
    let quick_done = s.0.join("out/quick/note");
    let (f, batches) = run_hashing_with(&s.0, false, |session, table, wake| {
        // `slow`'s inputs are hashed only once `quick` has run and been recorded
        // (or after a minute, for a run loop that waited for every input first).
        let until = Instant::now() + Duration::from_secs(60);
        while !quick_done.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            quick_done.exists(),
            "`quick` did not run while `slow`'s inputs were being hashed"
        );
        let stop = std::sync::atomic::AtomicBool::new(false);
        let digests = session.digest_inputs(&[StepId(0)], &stop).unwrap();
        table.set(0, Ok(digests.into_iter().next().unwrap()));
        wake.send(Event::Wake).unwrap();
    });
    assert_eq!(batches, [vec!["quick"], vec!["slow"]]);
    assert!(
        (f.report.steps.iter()).all(|r| r.outcome == StepOutcome::Ran),
        "{:?}",
        outcomes(&f)
    );
    // Its key was computed from its inputs once they were hashed.
    let slow = f.lock_change("slow").expect("a lock entry for `slow`");
    let entry = slow.parsed().unwrap();
    assert!(entry.inputs.contains_key("src"), "{:?}", entry.inputs);
}

#[test]
fn a_step_whose_inputs_cannot_be_hashed_fails_and_the_others_run() {
    let s = space("unhashable-inputs", SLOW_AND_QUICK);
    std::fs::create_dir_all(s.0.join("src")).unwrap();
    let quick_done = s.0.join("out/quick/note");
    let (f, batches) = run_hashing_with(&s.0, false, |_, table, wake| {
        // The failure is told once `quick` has run: without `--keep-going`
        // an earlier failure would rightly keep `quick` from starting.
        let until = Instant::now() + Duration::from_secs(60);
        while !quick_done.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        table.set(0, Err("cannot read src/a.c: gone".to_string()));
        wake.send(Event::Wake).unwrap();
    });
    assert_eq!(batches, [vec!["quick"]]);
    assert_eq!(f.report.steps[0].outcome, StepOutcome::Failed);
    let error = f.report.steps[0].error.as_deref().unwrap();
    assert!(
        error.contains("cannot hash its inputs: cannot read src/a.c: gone"),
        "{error}"
    );
    assert!(f.lock_change("slow").is_none());
    assert_eq!(
        f.report.steps[1].outcome,
        StepOutcome::Ran,
        "{:?}",
        outcomes(&f)
    );
}

#[test]
fn an_interrupt_skips_a_step_still_waiting_for_its_inputs() {
    let s = space("interrupt-hashing", SLOW_AND_QUICK);
    std::fs::create_dir_all(s.0.join("src")).unwrap();
    // Its inputs are never hashed: the run must end all the same.
    let (f, _) = run_hashing_with(&s.0, true, |_, _, _| {});
    assert!(f.report.interrupted);
    assert_eq!(f.report.steps[0].outcome, StepOutcome::Skipped);
    assert_eq!(f.report.steps[0].reasons, ["run interrupted"]);
}

fn outcomes(f: &Ended) -> Vec<(String, StepOutcome)> {
    (f.report.steps.iter())
        .map(|s| (s.name.clone(), s.outcome))
        .collect()
}

#[test]
fn a_step_gets_the_outputs_it_references_even_when_it_also_waits_for_them_with_after() {
    // `bottom` names `left` in `after:` before referencing it, and only waits for
    // `right`: its job carries `left`'s output, not `right`'s.
    let text = "version: 1\nsteps:\n  left:\n    kind: note\n    text: left\n  right:\n    kind: note\n    text: right\n  bottom:\n    kind: note\n    after: [left, right]\n    text: ${{ steps.left }}\n";
    let s = space("after-and-reference", text);
    let (f, _) = run_once(&s.0, 2, false);
    assert!(
        (f.report.steps.iter()).all(|r| r.outcome == StepOutcome::Ran),
        "{:?}",
        outcomes(&f)
    );
    let bottom = std::fs::read_to_string(s.0.join("out/bottom/note")).unwrap();
    let left = f.report.steps[0].output.unwrap().to_hex();
    assert!(bottom.ends_with(&format!("/trees/{left}")), "{bottom}");
}

const DIAMOND: &str = "version: 1\nsteps:\n  top:\n    kind: note\n    text: top\n  left:\n    kind: note\n    text: ${{ steps.top }}\n  right:\n    kind: note\n    text: right\n    after: [top]\n  bottom:\n    kind: note\n    text: bottom\n    after: [left, right]\n";

#[test]
fn a_diamond_runs_in_three_batches_then_is_all_cached() {
    let s = space("diamond", DIAMOND);
    let (first, batches) = run_once(&s.0, 2, false);
    assert_eq!(
        batches,
        [vec!["top"], vec!["left", "right"], vec!["bottom"]]
    );
    assert!(
        (first.report.steps.iter()).all(|r| r.outcome == StepOutcome::Ran),
        "{:?}",
        outcomes(&first)
    );
    assert_eq!(first.lock_changes.len(), 4);
    assert_eq!(
        std::fs::read_to_string(s.0.join("out/bottom/note")).unwrap(),
        "bottom"
    );
    let left = std::fs::read_to_string(s.0.join("out/left/note")).unwrap();
    assert!(left.contains("/trees/"), "left got top's tree: {left}");
    let (second, batches) = run_once(&s.0, 2, false);
    assert!(batches.is_empty(), "nothing runs again: {batches:?}");
    assert!(
        (second.report.steps.iter()).all(|r| r.outcome == StepOutcome::Cached),
        "{:?}",
        outcomes(&second)
    );
}

#[test]
fn one_slot_runs_the_diamond_one_step_at_a_time_in_file_order() {
    let s = space("one-slot", DIAMOND);
    let (_, batches) = run_once(&s.0, 1, false);
    assert_eq!(
        batches,
        [vec!["top"], vec!["left"], vec!["right"], vec!["bottom"]]
    );
}

/// `top`, then `right` (which fails) and `left`, then `bottom`: `right` comes
/// first in the file, so on one slot it fails before `left` starts.
const FAILING: &str = "version: 1\nsteps:\n  top:\n    kind: note\n    text: top\n  right:\n    kind: note\n    text: right\n    fail: true\n    after: [top]\n  left:\n    kind: note\n    text: left\n    after: [top]\n  bottom:\n    kind: note\n    text: bottom\n    after: [left, right]\n";

#[test]
fn a_failed_step_skips_what_needs_it_and_records_nothing_for_it() {
    let s = space("failure", FAILING);
    let (f, batches) = run_once(&s.0, 2, true);
    assert_eq!(batches, [vec!["top"], vec!["right", "left"]]);
    let bottom = &f.report.steps[3];
    assert_eq!(bottom.outcome, StepOutcome::Skipped);
    assert_eq!(bottom.reasons, ["upstream `right` failed"]);
    assert_eq!(f.report.steps[1].outcome, StepOutcome::Failed);
    assert!(
        f.report.steps[1]
            .error
            .as_deref()
            .unwrap()
            .contains("it broke")
    );
    assert!(f.lock_change("left").is_some());
    assert!(
        f.lock_change("right").is_none(),
        "nothing recorded for a failure"
    );
    assert!(!s.0.join("out/right").exists());
}

#[test]
fn without_keep_going_a_failure_starts_nothing_more_with_it_the_other_side_finishes() {
    for (keep_going, left) in [(false, StepOutcome::Skipped), (true, StepOutcome::Ran)] {
        let s = space("keep-going", FAILING);
        let (f, _) = run_once(&s.0, 1, keep_going);
        assert_eq!(f.report.steps[2].outcome, left, "keep_going: {keep_going}");
        if !keep_going {
            assert_eq!(
                f.report.steps[2].reasons,
                ["not started: the run stopped at the first failure; `--keep-going` would run it"]
            );
        }
        assert_eq!(f.report.steps[3].outcome, StepOutcome::Skipped);
    }
}

#[test]
fn an_interrupt_cancels_the_running_step_and_skips_the_rest() {
    let s = space("interrupt", DIAMOND);
    let (f, batches) = run_with(&s.0, 2, false, true);
    assert!(
        batches.is_empty(),
        "the cancelled job never ran: {batches:?}"
    );
    assert!(f.report.interrupted);
    assert_eq!(f.report.steps[0].outcome, StepOutcome::Interrupted);
    for r in &f.report.steps[1..] {
        assert_eq!(r.outcome, StepOutcome::Skipped, "{}", r.name);
        assert_eq!(r.reasons, ["run interrupted"]);
    }
    assert!(f.lock_changes.is_empty());
    let (again, _) = run_once(&s.0, 2, false);
    assert!(
        (again.report.steps.iter()).all(|r| r.outcome == StepOutcome::Ran),
        "the next run runs everything"
    );
}

/// A kind that runs a shell script; with `share`, its make shares the run's slots.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Sh {
    script: String,
    #[serde(default)]
    share: bool,
}

impl Step for Sh {
    fn output_roles(&self) -> Vec<(String, crate::OutputRole)> {
        vec![("done".into(), crate::OutputRole::Result)]
    }
    fn run(&self, ctx: &mut crate::RunContext) -> anyhow::Result<()> {
        let mut cmd = ctx.command("sh");
        cmd.args(["-c", &self.script]);
        ctx.run(cmd)?;
        std::fs::write(ctx.out_dir().join("done"), "")?;
        Ok(())
    }
    fn uses_jobserver(&self) -> bool {
        true
    }
    fn shares_run_slots(&self) -> bool {
        self.share
    }
    fn default_jobs(&self) -> usize {
        if self.share { 2 } else { 1 }
    }
    fn expected_ms(&self) -> u64 {
        if self.share { 100_000 } else { 1_000 }
    }
}

impl StepFields for Sh {
    const KIND: &'static str = "sh";
    const SCHEMA_VERSION: u32 = 1;
    fn kind_tools() -> Vec<crate::Tool> {
        Vec::new()
    }
    fn kind_needs() -> Vec<crate::HostNeed> {
        Vec::new()
    }
}

/// One apply of the workflow in `dir` on the in-process executor, `slots` wide.
fn run_local(dir: &Path, slots: usize) -> Ended {
    let mut registry = registry();
    registry.add(crate::step::KindOf::<Sh>::new());
    let options = LoadOptions {
        set: Vec::new(),
        memo_cache: None,
    };
    let wf = Workflow::load(&dir.join("workflow.yaml"), &registry, &options).unwrap();
    let mut session = Session::open(&wf, &registry, &dir.join(".qflow")).unwrap();
    let prepared = session.prepare().unwrap();
    let session = &session;
    let probe = session.cache.probe().unwrap();
    let out_links = OutLinks::open(&dir.join("out"), &session.cache.dir("trees")).unwrap();
    let (tx, rx) = mpsc::channel();
    let parts = RunParts {
        session,
        prepared: &prepared,
        probe: &probe,
        out_links: &out_links,
        in_place: Vec::new(),
        progress: Arc::new(Progress::plain()),
        events: tx.clone(),
        started: Instant::now(),
        remote: None,
        uploads: None,
    };
    let mut run = Run::new(parts, slots, false, crate::run_record::run_id());
    let n = wf.steps.len();
    let token_tx = tx.clone();
    run.share_slots(vec![true; n], slots, move || {
        let _ = token_tx.send(Event::Wake);
    })
    .unwrap();
    let registry = &registry;
    std::thread::scope(|scope| {
        let wake = crate::executor::Wake::new(move || {
            let _ = tx.send(Event::Wake);
        });
        let mut local =
            crate::executor::local::LocalExecutor::new(scope, registry, Arc::new(NoProgress), wake);
        drive(&mut run, &mut local, &rx, scope)
    })
    .unwrap();
    run.finish().ended(&wf)
}

/// `+ name nanos` / `- name nanos` lines, in time order.
fn events(path: &Path) -> Vec<(bool, String, u128)> {
    let mut ev: Vec<(bool, String, u128)> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0] == "+", f[1].to_string(), f[2].parse().unwrap())
        })
        .collect();
    ev.sort_by_key(|e| (e.2, e.0));
    ev
}

/// Apply, on two slots, `build` (a make of `recipes` recipes of `secs` seconds each,
/// sharing the run's slots) beside `steps` (YAML, indented as steps); every step must
/// run. The `+`/`-` events of the steps and recipes, in time order.
fn beside_a_make(name: &str, steps: &str, recipes: usize, secs: &str) -> Vec<(bool, String, u128)> {
    let s = space(
        name,
        &format!(
            "version: 1\nsteps:\n  build:\n    kind: sh\n    share: true\n    script: make -s -C mk\n{steps}"
        ),
    );
    let names: Vec<String> = (1..=recipes).map(|i| format!("r{i}")).collect();
    let names = names.join(" ");
    std::fs::create_dir_all(s.0.join("mk")).unwrap();
    std::fs::write(
        s.0.join("mk/Makefile"),
        format!(".PHONY: all {names}\nall: {names}\n{names}:\n\t@echo \"+ $@ $$(date +%s%N)\" >> ../events; sleep {secs}; echo \"- $@ $$(date +%s%N)\" >> ../events\n"),
    )
    .unwrap();
    let finished = run_local(&s.0, 2);
    assert!(
        (finished.report.steps.iter()).all(|r| r.outcome == StepOutcome::Ran),
        "{:?}",
        outcomes(&finished)
    );
    events(&s.0.join("events"))
}

#[test]
fn a_make_step_grows_into_idle_slots_and_gives_them_back_to_a_step_that_needs_one() {
    let ev = beside_a_make(
        "sharing",
        "  cheap:\n    kind: sh\n    script: 'echo \"+ cheap $(date +%s%N)\" >> events; sleep 0.8; echo \"- cheap $(date +%s%N)\" >> events'\n",
        5,
        "0.4",
    );
    let (mut now, mut peak, mut recipes, mut recipe_peak) = (0usize, 0, 0usize, 0);
    for (start, name, _) in &ev {
        let d = |n: &mut usize| if *start { *n += 1 } else { *n -= 1 };
        d(&mut now);
        if name.starts_with('r') {
            d(&mut recipes);
        }
        peak = peak.max(now);
        recipe_peak = recipe_peak.max(recipes);
    }
    assert!(peak <= 2, "more than the run's two slots at once: {ev:?}");
    assert_eq!(recipe_peak, 2, "make never grew into the idle slot: {ev:?}");
    let cheap_start = ev.iter().find(|e| e.1 == "cheap").unwrap().2;
    let last_recipe = (ev.iter().rev())
        .find(|e| e.0 && e.1.starts_with('r'))
        .unwrap()
        .2;
    let span = ev.last().unwrap().2 - ev[0].2;
    eprintln!(
        "make (2.0 s of recipes) and a 0.8 s step on 2 slots: {} ms",
        span / 1_000_000
    );
    assert!(
        cheap_start < last_recipe,
        "the cheap step waited for the whole make instead of taking a slot beside it: {ev:?}"
    );
}

#[test]
fn a_step_ready_when_another_ends_takes_its_slot_before_a_busy_make_can() {
    // Two slots: `build`'s make (three 1.5 s recipes, -j2) and `first` start
    // together; `then` becomes ready when `first` ends. The slot `first` frees
    // must go to `then`, not to the make that is blocked reading the jobserver.
    let ev = beside_a_make(
        "handoff",
        "  first:\n    kind: sh\n    script: 'echo \"+ first $(date +%s%N)\" >> events; sleep 0.2; echo \"- first $(date +%s%N)\" >> events'\n  then:\n    kind: sh\n    after: [first]\n    script: 'echo \"+ then $(date +%s%N)\" >> events; sleep 0.2; echo \"- then $(date +%s%N)\" >> events'\n",
        3,
        "1.5",
    );
    let mut now = 0usize;
    for (start, _, _) in &ev {
        if *start {
            now += 1
        } else {
            now -= 1
        }
        assert!(now <= 2, "more than the run's two slots at once: {ev:?}");
    }
    let then_start = ev.iter().find(|e| e.1 == "then").unwrap().2;
    let first_recipe_end = ev.iter().find(|e| !e.0 && e.1.starts_with('r')).unwrap().2;
    assert!(
        then_start < first_recipe_end,
        "`then` waited for a recipe to end: the slot `first` freed went to make: {ev:?}"
    );
}
