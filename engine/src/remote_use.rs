//! Which steps a remote cache is read and written for (`remote_cache:` per step).
//!
//! Read: every step that may be cached (`cache:` not false) unless it says
//! `remote_cache: false`. Written (with `--remote-cache-upload`): a step whose own setting
//! allows it (`true`, or not written and the step consumes no secret; never `pull` or
//! `false`) and whose upstream steps are all written too. The second half matters: an
//! upload carries every tree the step retains (a qcow2 overlay names its backing image, the
//! upstream's output, inside its header), so a step downstream of a customized image with a
//! root password would publish that image, which holds the password's hash.
//!
//! Downloaded: a remote hit's bytes come down only where they must exist locally. Always
//! ([`downloaded`]): the steps named on the command line, the run's final steps (nothing
//! after them uses them), steps with `metrics:` (`qflow results` reads them) and every
//! step with no machine state among its outputs (results, logs, build artifacts: what a
//! person reads, small). The rest (a step holding a disk image or a memory snapshot whose
//! dependents are all hits) stays on the server until a step that runs needs it; the run
//! loop fetches it then (`run.rs`).

use crate::dag::{Dag, StepId};
use crate::workflow::{RemoteUse, Workflow};

/// Per step (file order): whether a remote cache is asked for its result.
pub fn readable(workflow: &Workflow) -> Vec<bool> {
    (workflow.steps.iter())
        .map(|s| s.cache && s.remote_cache != RemoteUse::Off)
        .collect()
}

/// Per step (file order): whether a remote hit for it is downloaded whatever the steps
/// after it do (see the module header); the others come down only for a step that runs.
pub fn downloaded(workflow: &Workflow, dag: &Dag) -> Vec<bool> {
    let targets = &workflow.selection.targets;
    (workflow.steps.iter().enumerate())
        .map(|(i, s)| {
            targets.contains(&s.name)
                || dag.downstream(StepId(i)).is_empty()
                || !s.step.metrics().is_empty()
                || !(s.step.output_roles().iter()).any(|(_, role)| role.is_machine_state())
        })
        .collect()
}

/// Per step (file order): whether its result may be uploaded.
pub fn uploadable(workflow: &Workflow, dag: &Dag) -> Vec<bool> {
    let mut ok = vec![false; workflow.steps.len()];
    for id in dag.order() {
        let s = &workflow.steps[id.index()];
        let own = s.cache
            && match s.remote_cache {
                RemoteUse::On => true,
                RemoteUse::Default => !s.step.consumes_secret(),
                RemoteUse::Pull | RemoteUse::Off => false,
            };
        ok[id.index()] = own && s.upstream_ids().all(|j| ok[j]);
    }
    ok
}

#[cfg(test)]
mod tests {
    use crate::step::{Registry, Step, StepFields};
    use crate::workflow::{LoadOptions, Workflow};

    /// A kind that may read a password, like `customize` with a `root_password`.
    #[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Secretive {
        #[serde(default)]
        password: bool,
        #[serde(default)]
        from: Option<String>,
        /// Its output is a disk image (machine state).
        #[serde(default)]
        image: bool,
    }

    impl Step for Secretive {
        fn references(&self) -> Vec<crate::StepRef> {
            self.from
                .iter()
                .map(|f| crate::StepRef::new("from", f))
                .collect()
        }
        fn output_roles(&self) -> Vec<(String, crate::OutputRole)> {
            let role = if self.image {
                crate::OutputRole::Image
            } else {
                crate::OutputRole::Artifact
            };
            vec![("out".to_string(), role)]
        }
        fn consumes_secret(&self) -> bool {
            self.password
        }
        fn run(&self, _ctx: &mut crate::RunContext) -> anyhow::Result<()> {
            Ok(())
        }
    }

    impl StepFields for Secretive {
        const KIND: &'static str = "secretive";
        const SCHEMA_VERSION: u32 = 1;
        fn kind_tools() -> Vec<crate::Tool> {
            Vec::new()
        }
        fn kind_needs() -> Vec<crate::HostNeed> {
            Vec::new()
        }
    }

    fn load(yaml: &str, targets: &[&str]) -> Workflow {
        // Tests run in parallel threads of one process: the run id alone (time and
        // pid) can name the same directory twice.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "qflow-remote-use-{}-{n}",
            crate::run_record::run_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("workflow.yaml"), yaml).unwrap();
        let mut registry = Registry::new();
        registry.add(crate::step::KindOf::<Secretive>::new());
        let options = LoadOptions {
            set: Vec::new(),
            memo_cache: None,
        };
        let mut wf = Workflow::load(&dir.join("workflow.yaml"), &registry, &options).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        crate::selection::select(&mut wf, &targets, &[]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        wf
    }

    /// Per step: whether a remote hit for it is downloaded whatever follows.
    fn downloaded(yaml: &str, targets: &[&str]) -> Vec<(String, bool)> {
        let wf = load(yaml, targets);
        let got = super::downloaded(&wf, &wf.dag());
        (wf.steps.iter().zip(got))
            .map(|(s, d)| (s.name.clone(), d))
            .collect()
    }

    #[test]
    fn images_under_other_steps_stay_on_the_server_and_results_finals_and_targets_come_down() {
        let yaml = "version: 1\nsteps:\n  base: { kind: secretive, image: true }\n  \
                    system: { kind: secretive, image: true, from: base }\n  \
                    kernel: { kind: secretive }\n  \
                    boot: { kind: secretive, from: system }\n  \
                    disk: { kind: secretive, image: true, from: kernel }\n";
        let row = |n: &str, d: bool| (n.to_string(), d);
        assert_eq!(
            downloaded(yaml, &[]),
            [
                row("base", false),
                row("system", false),
                row("kernel", true),
                row("boot", true),
                row("disk", true),
            ]
        );
        assert_eq!(
            downloaded(yaml, &["system", "boot"]),
            [row("base", false), row("system", true), row("boot", true)]
        );
    }

    fn policy(yaml: &str) -> Vec<(String, bool, bool)> {
        let wf = load(yaml, &[]);
        let dag = wf.dag();
        let (reads, writes) = (super::readable(&wf), super::uploadable(&wf, &dag));
        (wf.steps.iter().enumerate())
            .map(|(i, s)| (s.name.clone(), reads[i], writes[i]))
            .collect()
    }

    fn row(name: &str, read: bool, write: bool) -> (String, bool, bool) {
        (name.to_string(), read, write)
    }

    #[test]
    fn a_step_reading_a_password_and_everything_downstream_stay_off_the_server() {
        let steps = policy(
            "version: 1\nsteps:\n  base: { kind: secretive }\n  \
             system: { kind: secretive, from: base, password: true }\n  \
             boot: { kind: secretive, from: system }\n  \
             other: { kind: secretive, from: base }\n",
        );
        assert_eq!(
            steps,
            [
                row("base", true, true),
                row("system", true, false),
                row("boot", true, false),
                row("other", true, true),
            ]
        );
    }

    #[test]
    fn remote_cache_true_opts_a_secret_step_in_and_pull_or_false_keep_it_out() {
        let steps = policy(
            "version: 1\nsteps:\n  base: { kind: secretive, remote_cache: pull }\n  \
             system: { kind: secretive, password: true, remote_cache: true }\n  \
             boot: { kind: secretive, from: system }\n  \
             off: { kind: secretive, remote_cache: false }\n  \
             uncached: { kind: secretive, cache: false }\n  \
             below_pull: { kind: secretive, from: base, remote_cache: true }\n",
        );
        assert_eq!(
            steps,
            [
                row("base", true, false),
                row("system", true, true),
                row("boot", true, true),
                row("off", false, false),
                row("uncached", false, false),
                row("below_pull", true, false),
            ]
        );
    }
}
