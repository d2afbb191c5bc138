//! `qflow doctor`: does this host have what the workflow needs, and if not, what to install.
//!
//! With a workflow it asks each step the same questions `qflow apply`'s preflight
//! asks before anything runs — its tools ([`Step::tools`], found on `PATH` and asked
//! for their version by the engine's [`ToolIdentities`]), its host requirements
//! ([`Step::requirements`]: root, the nbd module, a kernel for libguestfs, libelf
//! headers, KVM) and its secrets ([`Step::extra_key`]: a password file that must
//! exist) — so doctor and apply never disagree on what is missing. Without a
//! workflow (no file given, no `workflow.yaml` here) a step's tools are unknown,
//! since they depend on its fields, so doctor checks everything each registered
//! kind may run or need ([`StepKind::tools`], [`StepKind::needs`]).
//!
//! KVM is never required by apply's preflight (a boot falls back to TCG), so
//! doctor answers it with the host's probe boot ([`host::probe_kvm`]): a note,
//! not a failure, unless a step requires KVM (`accel: kvm`).
//!
//! [`Step::tools`]: qflow_engine::Step::tools
//! [`Step::requirements`]: qflow_engine::Step::requirements
//! [`Step::extra_key`]: qflow_engine::Step::extra_key
//! [`StepKind::tools`]: qflow_engine::StepKind::tools
//! [`StepKind::needs`]: qflow_engine::StepKind::needs

use std::path::{Path, PathBuf};

use qflow_engine::slurm::placement::ExecutorChoice;
use qflow_engine::tool_identity::ToolIdentities;
use qflow_engine::workflow::Workflow;
use qflow_engine::{CheckContext, HostNeed, KvmUse, Registry, Tool};
use qflow_steps::host::{self, KvmVerdict};

use crate::cli::Located;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// Something a step needs is absent: `apply` would stop (exit 2).
    Missing,
    /// Worth knowing, not needed (KVM unusable: boots run under TCG).
    Note,
}

/// One line of the report.
#[derive(Debug)]
struct Finding {
    status: Status,
    what: String,
    detail: String,
    /// The steps (or kinds) that need it.
    needed_by: Vec<String>,
}

impl Finding {
    fn print(&self) {
        let word = match self.status {
            Status::Ok => "ok",
            Status::Missing => "MISSING",
            Status::Note => "note",
        };
        let by = if self.needed_by.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.needed_by.join(", "))
        };
        println!("{word:<8} {}{by}: {}", self.what, self.detail);
    }
}

/// Check the host for the workflow `file` (default `workflow.yaml` when present)
/// or, with none, for everything the kinds may use; exit code 0 when nothing
/// needed is missing, 1 otherwise.
pub fn run(
    registry: &Registry,
    file: Option<PathBuf>,
    set: Vec<String>,
    probe_kvm: bool,
    executor: Option<ExecutorChoice>,
    cache: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let (code, wf) = host_report(registry, file, set, probe_kvm)?;
    if executor == Some(ExecutorChoice::Slurm) {
        let slurm = crate::slurm_plan::doctor(wf.as_ref(), cache.as_deref())?;
        return Ok(code.max(slurm));
    }
    Ok(code)
}

/// The host checks; the workflow they were made for, if any.
fn host_report(
    registry: &Registry,
    file: Option<PathBuf>,
    set: Vec<String>,
    probe_kvm: bool,
) -> anyhow::Result<(i32, Option<Workflow>)> {
    let file = file.or_else(|| {
        let default = PathBuf::from("workflow.yaml");
        default.exists().then_some(default)
    });
    let mut loaded = None;
    let findings = match file {
        Some(file) => {
            let args = Located {
                file,
                targets: vec![],
                force: vec![],
                cache: None,
                set,
            };
            let wf = super::load(&args, registry)?;
            println!(
                "qflow doctor: checking the host for {} ({} steps)",
                wf.path.display(),
                wf.steps.len()
            );
            let findings = workflow_findings(&wf, probe_kvm);
            loaded = Some(wf);
            findings
        }
        None => {
            println!(
                "qflow doctor: no workflow given (and no workflow.yaml here): checking every tool qflow's kinds can use"
            );
            kind_findings(registry, probe_kvm)
        }
    };
    for f in &findings {
        f.print();
    }
    let missing: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.status == Status::Missing)
        .collect();
    if missing.is_empty() {
        println!("qflow doctor: the host has everything checked");
        return Ok((0, loaded));
    }
    let mut packages: Vec<String> = missing
        .iter()
        .filter_map(|f| package_in(&f.detail))
        .collect();
    packages.sort();
    packages.dedup();
    println!("qflow doctor: {} missing", missing.len());
    if !packages.is_empty() {
        println!(
            "  install with: apt-get install -y --no-install-recommends {}",
            packages.join(" ")
        );
    }
    Ok((1, loaded))
}

/// The package of the first `apt-get install PKG` in a fix text (kinds and the
/// engine phrase their fixes that way).
fn package_in(fix: &str) -> Option<String> {
    let rest = fix.split("apt-get install ").nth(1)?;
    let word = rest.split_whitespace().next()?;
    let word = word.trim_matches([')', '(', '`', '.', ',', ';']);
    (!word.is_empty()).then(|| word.to_string())
}

/// The checks `apply`'s preflight makes, for every step of `wf`, plus the KVM probe.
fn workflow_findings(wf: &Workflow, probe_kvm: bool) -> Vec<Finding> {
    let ctx = CheckContext {
        work_dir: wf.dir.clone(),
    };
    let mut findings: Vec<Finding> = Vec::new();
    // Tools, once per program, naming every step that runs it.
    let mut tools: Vec<(Tool, Vec<String>)> = Vec::new();
    for s in &wf.steps {
        for t in s.step.tools() {
            match tools.iter_mut().find(|(k, _)| k.program == t.program) {
                Some((_, steps)) => steps.push(s.name.clone()),
                None => tools.push((t, vec![s.name.clone()])),
            }
        }
    }
    findings.extend(
        tools
            .into_iter()
            .map(|(tool, steps)| tool_finding(&tool, steps)),
    );
    // Requirements, once per kind of need; KVM is answered by the probe below.
    let mut kvm_users: Vec<(String, KvmUse)> = Vec::new();
    for s in &wf.steps {
        for r in s.step.requirements(&ctx) {
            if let HostNeed::Kvm(kvm) = r.need {
                kvm_users.push((s.name.clone(), kvm));
                continue;
            }
            if let Some(f) = findings.iter_mut().find(|f| f.what == r.what) {
                f.needed_by.push(s.name.clone());
                continue;
            }
            findings.push(Finding {
                status: if r.present {
                    Status::Ok
                } else {
                    Status::Missing
                },
                what: r.what,
                detail: if r.present {
                    "present".to_string()
                } else {
                    r.fix
                },
                needed_by: vec![s.name.clone()],
            });
        }
        if let Err(e) = s.step.extra_key(&ctx) {
            findings.push(Finding {
                status: Status::Missing,
                what: format!("step `{}`'s key material", s.name),
                detail: format!("{e:#}"),
                needed_by: vec![s.name.clone()],
            });
        }
    }
    if !kvm_users.is_empty() {
        let required: Vec<&str> = kvm_users
            .iter()
            .filter(|(_, kvm)| *kvm == KvmUse::Required)
            .map(|(name, _)| name.as_str())
            .collect();
        let mut f = kvm_finding(probe_kvm);
        f.needed_by = kvm_users.iter().map(|(name, _)| name.clone()).collect();
        if !required.is_empty() && f.status != Status::Ok {
            f.status = Status::Missing;
            f.detail = format!(
                "{}; step(s) `{}` set `accel: kvm`: use `accel: auto` or `tcg` on this host",
                f.detail,
                required.join("`, `")
            );
        }
        findings.push(f);
    }
    findings
}

/// A tool on PATH, asked for its version the way the engine keys it.
fn tool_finding(tool: &Tool, needed_by: Vec<String>) -> Finding {
    // A throwaway identity cache: doctor must not write into any qflow cache.
    let mut ids = ToolIdentities::load(Path::new("/nonexistent/qflow-doctor/tools.json"));
    match ids.identify(tool) {
        Ok(version) => Finding {
            status: Status::Ok,
            what: tool.program.clone(),
            detail: version,
            needed_by,
        },
        Err(e) => Finding {
            status: Status::Missing,
            what: tool.program.clone(),
            detail: format!("{e:#}"),
            needed_by,
        },
    }
}

/// Everything the registered kinds may run or need, for a host without a workflow yet.
fn kind_findings(registry: &Registry, probe_kvm: bool) -> Vec<Finding> {
    let mut tools: Vec<(Tool, Vec<String>)> = Vec::new();
    let mut needs: Vec<(HostNeed, Vec<String>)> = Vec::new();
    for kind in registry.kinds() {
        let name = kind.name().to_string();
        for t in kind.tools() {
            match tools.iter_mut().find(|(k, _)| k.program == t.program) {
                Some((_, kinds)) if kinds.contains(&name) => {}
                Some((_, kinds)) => kinds.push(name.clone()),
                None => tools.push((t, vec![name.clone()])),
            }
        }
        for n in kind.needs() {
            // KVM is one question whatever the use.
            let n = match n {
                HostNeed::Kvm(_) => HostNeed::Kvm(KvmUse::Preferred),
                other => other,
            };
            match needs.iter_mut().find(|(k, _)| *k == n) {
                Some((_, kinds)) if kinds.contains(&name) => {}
                Some((_, kinds)) => kinds.push(name.clone()),
                None => needs.push((n, vec![name.clone()])),
            }
        }
    }
    // Files, the kernel, root, nbd, KVM: in the kinds' order within each.
    needs.sort_by_key(|(n, _)| match n {
        HostNeed::File { .. } => 0,
        HostNeed::HostKernel => 1,
        HostNeed::Root => 2,
        HostNeed::NbdModule => 3,
        HostNeed::Kvm(_) => 4,
    });
    let mut findings: Vec<Finding> = tools
        .iter()
        .map(|(tool, kinds)| tool_finding(tool, kinds.clone()))
        .collect();
    findings.extend(
        needs
            .into_iter()
            .map(|(need, kinds)| need_finding(&need, kinds, probe_kvm)),
    );
    findings
}

/// One host need of the kinds, without a workflow: root and the nbd module are
/// notes (a workflow may not need them); with a workflow that does, its steps'
/// requirements make them failures.
fn need_finding(need: &HostNeed, kinds: Vec<String>, probe_kvm: bool) -> Finding {
    let present = host::has(need);
    let (what, detail, missing) = match need {
        HostNeed::File {
            what,
            path,
            package,
        } => (
            what.clone(),
            if present {
                format!("`{path}` present")
            } else {
                format!(
                    "`{path}` is absent; install the Debian package `{package}` (apt-get install {package})"
                )
            },
            Status::Missing,
        ),
        HostNeed::HostKernel => (
            "a Linux kernel in /boot".to_string(),
            match host::host_kernel() {
                Some(k) => format!("`{}`", k.display()),
                None => "none; install one (apt-get install linux-image-amd64): supermin builds libguestfs's appliance from it".into(),
            },
            Status::Missing,
        ),
        HostNeed::Root => (
            "root".to_string(),
            if present {
                "running as root".to_string()
            } else {
                format!("not root: some steps of kind {} need it", kinds_text(&kinds))
            },
            Status::Note,
        ),
        HostNeed::NbdModule => (
            "the nbd kernel module".to_string(),
            if present {
                "available".to_string()
            } else {
                format!(
                    "absent (no /sys/module/nbd, not in modules.dep): steps of kind {} that connect images with `qemu-nbd` cannot run",
                    kinds_text(&kinds)
                )
            },
            Status::Note,
        ),
        HostNeed::Kvm(_) => {
            let mut f = kvm_finding(probe_kvm);
            f.needed_by = kinds;
            return f;
        }
    };
    Finding {
        status: if present { Status::Ok } else { missing },
        what,
        detail,
        needed_by: kinds,
    }
}

fn kinds_text(kinds: &[String]) -> String {
    format!("`{}`", kinds.join("`, `"))
}

/// Whether KVM can boot a guest here, as a finding.
fn kvm_finding(probe: bool) -> Finding {
    let note = |detail: String| Finding {
        status: Status::Note,
        what: "KVM".into(),
        detail,
        needed_by: Vec::new(),
    };
    if !host::kvm_device_usable() {
        return note("/dev/kvm is absent or not writable: boots run under TCG (slower)".into());
    }
    if !probe {
        return note("/dev/kvm is present; not probed (--no-kvm-probe), so whether it can boot a guest is unknown".into());
    }
    match host::probe_kvm() {
        KvmVerdict::Boots(t) => Finding {
            status: Status::Ok,
            what: "KVM".into(),
            detail: format!(
                "a kernel booted under KVM printed its banner in {:.1}s",
                t.as_secs_f64()
            ),
            needed_by: Vec::new(),
        },
        KvmVerdict::NoDevice => {
            note("/dev/kvm is absent or not writable: boots run under TCG (slower)".into())
        }
        KvmVerdict::NoKernel => note("/dev/kvm is present; cannot probe: no kernel in /boot to boot (apt-get install linux-image-amd64)".into()),
        KvmVerdict::Silent => note(format!(
            "/dev/kvm is present but a kernel booted under KVM printed nothing in {}s (nested KVM?): boots run under TCG (slower)",
            host::KVM_PROBE_TIMEOUT.as_secs()
        )),
        KvmVerdict::Failed(e) => note(format!(
            "/dev/kvm is present but the KVM probe failed: {e}: boots run under TCG (slower)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_to_install_is_read_from_a_fix_text() {
        assert_eq!(
            package_in("install one: `apt-get install linux-image-amd64` (supermin builds it)"),
            Some("linux-image-amd64".to_string())
        );
        assert_eq!(
            package_in(
                "`qemu-img` is not installed; install `qemu-utils` (apt-get install qemu-utils)"
            ),
            Some("qemu-utils".to_string())
        );
        assert_eq!(package_in("run qflow as root"), None);
    }

    #[test]
    fn without_a_workflow_every_kinds_tools_and_needs_are_checked_once() {
        let registry = qflow_steps::registry();
        let findings = kind_findings(&registry, false);
        for kind in registry.kinds() {
            for tool in kind.tools() {
                let lines: Vec<&Finding> =
                    findings.iter().filter(|f| f.what == tool.program).collect();
                assert_eq!(lines.len(), 1, "one line for `{}`", tool.program);
                assert!(
                    lines[0].needed_by.iter().any(|k| k == kind.name()),
                    "`{}` names kind `{}`",
                    tool.program,
                    kind.name()
                );
            }
        }
        assert_eq!(findings.iter().filter(|f| f.what == "KVM").count(), 1);
        assert!(findings.iter().any(|f| f.what == "libelf headers"));
    }
}
