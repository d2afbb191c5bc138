//! What a run in progress knows of each step, as its record will say it.
//!
//! Every step has a brief: its outcome, key and output (72 bytes; the output is
//! what a downstream step's key is made of). Only a step with more to say (it is
//! running, ran, failed or was skipped, or has a reason, an error, a log or
//! unmet metrics) has the rest of its record entry, aside. The step's name is
//! the workflow's, not copied. A run of 10,000 steps held a whole
//! [`StepReport`] for each from its start (264 bytes with its name): a no-op's
//! steps now take 0.7 MB, not 2.6 MB. The record is written from here line by
//! line ([`RunReport::write_lines`]); whole reports are made for a step's
//! progress line and once the run has ended.

use qflow_cache::Hash;

use crate::run_record::{Line, Reason, RunReport, StepOutcome, StepReport, StepView};

/// Each step's outcome, key and output, and the rest of its entry for the
/// steps that have more to say.
pub(crate) struct Ledger {
    briefs: Vec<Brief>,
    more: Vec<More>,
}

#[derive(Clone, Copy)]
struct Brief {
    key: Option<Hash>,
    output: Option<Hash>,
    outcome: StepOutcome,
    /// Its place in [`Ledger::more`], or [`NO_MORE`].
    more: u32,
}

const NO_MORE: u32 = u32::MAX;

/// The fields of a step's record entry besides its name, outcome, key and output.
#[derive(Default, Clone)]
pub(crate) struct More {
    pub duration_ms: u64,
    pub start_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub reasons: Vec<Reason>,
    pub error: Option<String>,
    pub log: Option<String>,
    pub logged: bool,
    pub unmet: Vec<String>,
}

impl More {
    fn is_empty(&self) -> bool {
        self.duration_ms == 0
            && self.start_ms.is_none()
            && self.cpu_ms.is_none()
            && self.reasons.is_empty()
            && self.error.is_none()
            && self.log.is_none()
            && !self.logged
            && self.unmet.is_empty()
    }
}

impl Ledger {
    /// `n` steps, each pending.
    pub fn new(n: usize) -> Ledger {
        let pending = Brief {
            key: None,
            output: None,
            outcome: StepOutcome::Pending,
            more: NO_MORE,
        };
        Ledger {
            briefs: vec![pending; n],
            more: Vec::new(),
        }
    }

    /// How many steps.
    pub fn len(&self) -> usize {
        self.briefs.len()
    }

    /// Step `i`'s outcome so far.
    pub fn outcome(&self, i: usize) -> StepOutcome {
        self.briefs[i].outcome
    }

    /// Step `i`'s output, once it is done.
    pub fn output(&self, i: usize) -> Option<Hash> {
        self.briefs[i].output
    }

    /// Step `i` was taken from the cache with `key` and `output`, nothing else to say.
    pub fn cached(&mut self, i: usize, key: Hash, output: Hash) {
        self.set(
            i,
            StepReport {
                key: Some(key),
                output: Some(output),
                ..StepReport::new("", StepOutcome::Cached)
            },
        );
    }

    /// Step `i`'s entry is `report` (its name is not kept).
    pub fn set(&mut self, i: usize, report: StepReport) {
        let more = More {
            duration_ms: report.duration_ms,
            start_ms: report.start_ms,
            cpu_ms: report.cpu_ms,
            reasons: report.reasons,
            error: report.error,
            log: report.log,
            logged: report.logged,
            unmet: report.unmet,
        };
        let brief = &mut self.briefs[i];
        brief.outcome = report.outcome;
        brief.key = report.key;
        brief.output = report.output;
        match (brief.more, more.is_empty()) {
            (NO_MORE, true) => {}
            (NO_MORE, false) => {
                brief.more = u32::try_from(self.more.len()).expect("fewer than 2^32 steps");
                self.more.push(more);
            }
            (at, _) => self.more[at as usize] = more,
        }
    }

    /// The rest of step `i`'s entry, to change.
    pub fn more_mut(&mut self, i: usize) -> &mut More {
        let brief = &mut self.briefs[i];
        if brief.more == NO_MORE {
            brief.more = u32::try_from(self.more.len()).expect("fewer than 2^32 steps");
            self.more.push(More::default());
        }
        &mut self.more[brief.more as usize]
    }

    /// Step `i`'s whole entry, named `name`.
    pub fn report(&self, i: usize, name: &str) -> StepReport {
        let brief = &self.briefs[i];
        whole(name, brief, self.more.get(brief.more as usize).cloned())
    }

    /// Every step's whole entry, by `name(i)`, in order; the ledger goes with them.
    pub fn into_reports<'n>(self, name: impl Fn(usize) -> &'n str) -> Vec<StepReport> {
        let mut more: Vec<Option<More>> = self.more.into_iter().map(Some).collect();
        (self.briefs.iter().enumerate())
            .map(|(i, brief)| {
                let rest = more.get_mut(brief.more as usize).and_then(Option::take);
                whole(name(i), brief, rest)
            })
            .collect()
    }

    /// Step `i`, named `name`, as the record writes it; a log not held is under `logs`.
    pub fn line<'a>(&'a self, i: usize, name: &'a str, logs: Option<&str>) -> Line<'a> {
        let brief = &self.briefs[i];
        let Some(more) = self.more.get(brief.more as usize) else {
            match (brief.outcome, &brief.key) {
                (StepOutcome::Cached, Some(key)) => return Line::Cached(name, key),
                (StepOutcome::Pending, None) => return Line::Pending(name),
                _ => {}
            }
            return Line::Full(self.view(brief, &EMPTY, name, None));
        };
        Line::Full(self.view(brief, more, name, logs))
    }

    fn view<'a>(
        &self,
        brief: &'a Brief,
        more: &'a More,
        name: &'a str,
        logs: Option<&str>,
    ) -> StepView<'a> {
        let log = crate::run_record::log_path(more.log.as_deref(), more.logged, logs, name);
        StepView {
            name,
            outcome: brief.outcome,
            key: brief.key.as_ref(),
            output: brief.output.as_ref(),
            duration_ms: more.duration_ms,
            start_ms: more.start_ms,
            cpu_ms: more.cpu_ms,
            reasons: &more.reasons,
            error: more.error.as_deref(),
            log,
            unmet: &more.unmet,
        }
    }

    /// Write the record of `meta` (its own steps are not read) with these steps,
    /// step `i` named `name(i)`, into `runs`.
    pub fn write<'n>(
        &self,
        meta: &RunReport,
        name: impl Fn(usize) -> &'n str,
        runs: &std::path::Path,
    ) -> anyhow::Result<()> {
        let logs = meta.logs.as_deref();
        meta.write_lines(runs, || {
            (0..self.len()).map(|i| self.line(i, name(i), logs))
        })
    }
}

/// The entry of step `name` from its brief and the rest, if it has more.
fn whole(name: &str, brief: &Brief, more: Option<More>) -> StepReport {
    let more = more.unwrap_or_default();
    StepReport {
        name: name.to_string(),
        outcome: brief.outcome,
        key: brief.key,
        output: brief.output,
        duration_ms: more.duration_ms,
        start_ms: more.start_ms,
        cpu_ms: more.cpu_ms,
        reasons: more.reasons,
        error: more.error,
        log: more.log,
        logged: more.logged,
        unmet: more.unmet,
    }
}

static EMPTY: More = More {
    duration_ms: 0,
    start_ms: None,
    cpu_ms: None,
    reasons: Vec::new(),
    error: None,
    log: None,
    logged: false,
    unmet: Vec::new(),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of each kind a run reports.
    fn reports() -> Vec<StepReport> {
        let h = |b: u8| Hash([b; 32]);
        let mut cached = StepReport::new("base", StepOutcome::Cached);
        (cached.key, cached.output) = (Some(h(1)), Some(h(2)));
        let mut remote = StepReport::new("system", StepOutcome::Cached);
        (remote.key, remote.output) = (Some(h(3)), Some(h(4)));
        remote.reasons = vec!["remote hit".into()];
        let mut ran = StepReport::new("kernel", StepOutcome::Ran)
            .because(vec!["never ran (no entry in the lock file)".into()]);
        (ran.key, ran.output) = (Some(h(5)), Some(h(6)));
        (ran.duration_ms, ran.start_ms, ran.cpu_ms) = (1500, Some(20), Some(2900));
        ran.logged = true;
        ran.unmet = vec!["boot: ipc 0.1 below 0.5".into()];
        let mut failed = StepReport::new("boot", StepOutcome::Failed);
        failed.key = Some(h(7));
        failed.duration_ms = 7;
        failed.log = Some("/elsewhere/boot.log".into());
        failed.error = Some("exit 3".into());
        let running =
            StepReport::new("runs", StepOutcome::Running).because(vec!["input changed".into()]);
        let skipped = StepReport::new("figures", StepOutcome::Skipped)
            .because(vec!["upstream `boot` failed".into()]);
        let pending = StepReport::new("table", StepOutcome::Pending);
        vec![cached, remote, ran, failed, running, skipped, pending]
    }

    fn meta(steps: Vec<StepReport>) -> RunReport {
        RunReport {
            id: "1-000-1".into(),
            workflow: "w.yaml".into(),
            started_unix: 1,
            duration_ms: 2,
            steps,
            interrupted: false,
            finished: false,
            remote: None,
            logs: Some("/c/logs/1-000-1".into()),
        }
    }

    fn json(steps: &[StepReport]) -> Vec<String> {
        steps
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect()
    }

    #[test]
    fn a_run_in_progress_writes_the_record_whole_reports_would_write() {
        let whole = reports();
        let names: Vec<String> = whole.iter().map(|s| s.name.clone()).collect();
        let mut ledger = Ledger::new(whole.len());
        for (i, r) in whole.iter().enumerate() {
            ledger.set(i, r.clone());
        }
        let dir =
            std::env::temp_dir().join(format!("qflow-ledger-{}", crate::run_record::run_id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        meta(whole.clone()).write(&a).unwrap();
        ledger.write(&meta(Vec::new()), |i| &names[i], &b).unwrap();
        let (from_reports, from_ledger) = (
            std::fs::read_to_string(a.join("1-000-1.json")).unwrap(),
            std::fs::read_to_string(b.join("1-000-1.json")).unwrap(),
        );
        assert_eq!(from_ledger, from_reports);
        assert!(
            from_ledger.contains(r#""pending":["table"]"#),
            "{from_ledger}"
        );
        assert!(
            from_ledger.contains(r#""log":"/c/logs/1-000-1/kernel.log""#),
            "{from_ledger}"
        );
        let back = ledger.into_reports(|i| &names[i]);
        assert_eq!(json(&back), json(&whole));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cached_step_is_kept_small_until_there_is_more_to_say() {
        let h = |b: u8| Hash([b; 32]);
        let mut ledger = Ledger::new(2);
        ledger.cached(0, h(1), h(2));
        assert_eq!(ledger.output(0), Some(h(2)));
        assert_eq!(ledger.outcome(1), StepOutcome::Pending);
        assert!(matches!(ledger.line(0, "base", None), Line::Cached("base", k) if *k == h(1)));
        assert!(matches!(
            ledger.line(1, "boot", None),
            Line::Pending("boot")
        ));
        assert!(
            ledger.more.is_empty(),
            "nothing aside for a plain cached or pending step"
        );
        ledger.more_mut(0).reasons = vec!["remote hit".into()];
        let Line::Full(view) = ledger.line(0, "base", None) else {
            panic!("a cached step with a reason is written in full");
        };
        assert_eq!(view.reasons, ["remote hit"]);
        assert_eq!(view.output, Some(&h(2)));
        let report = ledger.report(0, "base");
        assert_eq!(
            (report.outcome, report.key),
            (StepOutcome::Cached, Some(h(1)))
        );
    }
}
