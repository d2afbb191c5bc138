//! `qflow doctor`: does this host have what the workflow needs, and if not, what to install.
//!
//! With a workflow it asks each step the same questions `qflow apply`'s preflight
//! asks before anything runs — its tools ([`Step::tools`], found on `PATH` and asked
//! for their version by the engine's [`ToolIdentities`]), its host requirements
//! ([`Step::requirements`]: root, the nbd module, a kernel for libguestfs, libelf
//! headers) and its secrets ([`Step::extra_key`]: a password file that must exist)
//! — so doctor and apply never disagree on what is missing. Without a workflow
//! (no file given, no `workflow.yaml` here) a step's tools are unknown, since they
//! depend on its fields, so doctor checks a built-in list of everything qflow's
//! kinds can run.
//!
//! "`/dev/kvm` exists" does not mean KVM can boot a guest (on nested hosts Linux
//! hangs before its first line), so when a boot could use KVM doctor boots the
//! host's own kernel under KVM and waits up to [`KVM_PROBE_TIMEOUT`] for its
//! `Linux version` banner. KVM is never required (boots fall back to TCG), so its
//! verdict is a note, not a failure, unless a step asks for `accel: kvm`.
//!
//! [`Step::tools`]: qflow_engine::Step::tools
//! [`Step::requirements`]: qflow_engine::Step::requirements
//! [`Step::extra_key`]: qflow_engine::Step::extra_key

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qflow_engine::tool_identity::{ToolIdentities, which};
use qflow_engine::workflow::Workflow;
use qflow_engine::{CheckContext, Tool};

/// How long a kernel booted under KVM may stay silent before KVM counts as unusable.
/// A working KVM prints the banner well under a second; TCG needs about 5 s.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Check the host for `workflow` (or everything, with none); returns the exit code:
/// 0 when nothing needed is missing, 1 otherwise.
pub fn run(workflow: Option<&Workflow>, probe_kvm: bool) -> anyhow::Result<i32> {
    let findings = match workflow {
        Some(wf) => {
            println!(
                "qflow doctor: checking the host for {} ({} steps)",
                wf.path.display(),
                wf.steps.len()
            );
            workflow_findings(wf, probe_kvm)
        }
        None => {
            println!(
                "qflow doctor: no workflow given (and no workflow.yaml here): checking every tool qflow's kinds can use"
            );
            builtin_findings(probe_kvm)
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
        Ok(0)
    } else {
        let packages: Vec<String> = {
            let mut p: Vec<String> = missing
                .iter()
                .filter_map(|f| package_in(&f.detail))
                .collect();
            p.sort();
            p.dedup();
            p
        };
        println!("qflow doctor: {} missing", missing.len());
        if !packages.is_empty() {
            println!(
                "  install with: apt-get install -y --no-install-recommends {}",
                packages.join(" ")
            );
        }
        Ok(1)
    }
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
    // Requirements, once per kind of need.
    for s in &wf.steps {
        for r in s.step.requirements(&ctx) {
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
    // KVM: only boots that may choose it (see `could_use_kvm`).
    let boots: Vec<&qflow_engine::workflow::StepDecl> =
        wf.steps.iter().filter(|s| could_use_kvm(s)).collect();
    if !boots.is_empty() {
        let required: Vec<String> = boots
            .iter()
            .filter(|s| s.fields.get("accel").and_then(|a| a.as_str()) == Some("kvm"))
            .map(|s| s.name.clone())
            .collect();
        let mut f = kvm_finding(probe_kvm);
        f.needed_by = boots.iter().map(|s| s.name.clone()).collect();
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

/// Whether a step may boot under KVM: a `boot` with `accel: kvm`, or with
/// `accel: auto` (the default) and nothing that only TCG supports (`icount`,
/// `plugins`). A restore (`from_checkpoint`) runs under its checkpoint's accelerator.
fn could_use_kvm(s: &qflow_engine::workflow::StepDecl) -> bool {
    if s.kind != "boot" {
        return false;
    }
    let field = |name: &str| s.fields.get(name).filter(|v| !v.is_null());
    match field("accel").and_then(|a| a.as_str()) {
        Some("kvm") => true,
        Some("tcg") => false,
        _ => {
            field("icount").is_none()
                && field("from_checkpoint").is_none()
                && field("plugins")
                    .and_then(|p| p.as_sequence())
                    .is_none_or(|p| p.is_empty())
        }
    }
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

/// Everything qflow's kinds can use, for a host without a workflow yet.
fn builtin_findings(probe_kvm: bool) -> Vec<Finding> {
    let tools: &[(&str, &[&str], &str, &str)] = &[
        (
            "qemu-img",
            &["--version"],
            "qemu-utils",
            "image, disk, customize",
        ),
        (
            "qemu-system-x86_64",
            &["--version"],
            "qemu-system-x86",
            "boot",
        ),
        (
            "virt-customize",
            &["--version"],
            "libguestfs-tools",
            "customize",
        ),
        (
            "supermin",
            &["--version"],
            "supermin",
            "customize (libguestfs appliance)",
        ),
        ("qemu-nbd", &["--version"], "qemu-utils", "disk via: nbd"),
        ("mke2fs", &["-V"], "e2fsprogs", "disk, debootstrap"),
        ("debugfs", &["-V"], "e2fsprogs", "disk"),
        ("sfdisk", &["--version"], "fdisk", "debootstrap"),
        ("debootstrap", &["--version"], "debootstrap", "debootstrap"),
        ("make", &["--version"], "make", "kernel"),
        ("gcc", &["--version"], "gcc", "kernel"),
        ("ld", &["--version"], "binutils", "kernel"),
        ("flex", &["--version"], "flex", "kernel"),
        ("bison", &["--version"], "bison", "kernel"),
        ("bc", &["--version"], "bc", "kernel"),
        ("busybox", &[], "busybox-static", "tiny initramfs guests"),
    ];
    let mut findings: Vec<Finding> = tools
        .iter()
        .map(|(program, args, package, kinds)| {
            tool_finding(&Tool::new(program, args, package), vec![kinds.to_string()])
        })
        .collect();
    let file = |path: &str, what: &str, package: &str, kinds: &str| Finding {
        status: if Path::new(path).exists() {
            Status::Ok
        } else {
            Status::Missing
        },
        what: what.to_string(),
        detail: if Path::new(path).exists() {
            format!("`{path}` present")
        } else {
            format!(
                "`{path}` is absent; install the Debian package `{package}` (apt-get install {package})"
            )
        },
        needed_by: vec![kinds.to_string()],
    };
    findings.push(file(
        "/usr/include/gelf.h",
        "libelf headers",
        "libelf-dev",
        "kernel",
    ));
    findings.push(file(
        "/usr/include/openssl/ssl.h",
        "OpenSSL headers",
        "libssl-dev",
        "kernel configs that sign modules",
    ));
    let kernel = host_kernel();
    findings.push(Finding {
        status: if kernel.is_some() {
            Status::Ok
        } else {
            Status::Missing
        },
        what: "a Linux kernel in /boot".into(),
        detail: match &kernel {
            Some(k) => format!("`{}`", k.display()),
            None => "none; install one (apt-get install linux-image-amd64): supermin builds libguestfs's appliance from it".into(),
        },
        needed_by: vec!["customize".into()],
    });
    // Root and nbd are notes here: a workflow may not need them (`via: mkfs` needs
    // neither); with a workflow that does, its steps' requirements make them failures.
    findings.push(Finding {
        status: if is_root() { Status::Ok } else { Status::Note },
        what: "root".into(),
        detail: if is_root() {
            "running as root".into()
        } else {
            "not root: `debootstrap` and `disk` with `via: loop` or `via: nbd` need it; `disk` with `via: mkfs` does not".into()
        },
        needed_by: vec!["debootstrap, disk via: loop|nbd".into()],
    });
    findings.push(Finding {
        status: if nbd_module() { Status::Ok } else { Status::Note },
        what: "the nbd kernel module".into(),
        detail: if nbd_module() {
            "available".into()
        } else {
            "absent (no /sys/module/nbd, not in modules.dep): `via: nbd` cannot run; use `via: mkfs` or `via: loop`".into()
        },
        needed_by: vec!["disk via: nbd".into()],
    });
    let mut kvm = kvm_finding(probe_kvm);
    kvm.needed_by = vec!["boot with accel: auto|kvm".into()];
    findings.push(kvm);
    findings
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn nbd_module() -> bool {
    if Path::new("/sys/module/nbd").exists() {
        return true;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    std::fs::read_to_string(format!("/lib/modules/{}/modules.dep", release.trim())).is_ok_and(
        |dep| {
            dep.lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.contains("/nbd.ko")))
        },
    )
}

/// The newest readable `/boot/vmlinuz-*`.
fn host_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
                && std::fs::File::open(p).is_ok()
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

/// Whether KVM can boot a guest here, as a finding.
fn kvm_finding(probe: bool) -> Finding {
    let note = |detail: String| Finding {
        status: Status::Note,
        what: "KVM".into(),
        detail,
        needed_by: Vec::new(),
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return note("/dev/kvm is absent or not writable: boots run under TCG (slower)".into());
    }
    if !probe {
        return note("/dev/kvm is present; not probed (--no-kvm-probe), so whether it can boot a guest is unknown".into());
    }
    let Some(kernel) = host_kernel() else {
        return note("/dev/kvm is present; cannot probe: no kernel in /boot to boot (apt-get install linux-image-amd64)".into());
    };
    match probe_accel("kvm", &kernel, KVM_PROBE_TIMEOUT) {
        Ok(Some(t)) => Finding {
            status: Status::Ok,
            what: "KVM".into(),
            detail: format!(
                "a kernel booted under KVM printed its banner in {:.1}s",
                t.as_secs_f64()
            ),
            needed_by: Vec::new(),
        },
        Ok(None) => note(format!(
            "/dev/kvm is present but a kernel booted under KVM printed nothing in {}s (nested KVM?): boots run under TCG (slower)",
            KVM_PROBE_TIMEOUT.as_secs()
        )),
        Err(e) => note(format!(
            "/dev/kvm is present but the KVM probe failed: {e:#}: boots run under TCG (slower)"
        )),
    }
}

/// Boot `kernel` under `accel` with no disks; `Some(time)` when its `Linux version`
/// banner appeared within `timeout`, `None` when it stayed silent. The guest is
/// killed (its whole process group) either way.
fn probe_accel(accel: &str, kernel: &Path, timeout: Duration) -> anyhow::Result<Option<Duration>> {
    let qemu = which("qemu-system-x86_64").ok_or_else(|| {
        anyhow::anyhow!("`qemu-system-x86_64` is not installed (apt-get install qemu-system-x86)")
    })?;
    let start = Instant::now();
    let mut child = std::process::Command::new(qemu)
        .args([
            "-accel",
            accel,
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(kernel)
        // earlyprintk: the banner comes before the console driver would print it.
        .args([
            "-append",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let spoke = rx.recv_timeout(timeout).unwrap_or(false);
    let elapsed = start.elapsed();
    kill_group(pid);
    let status = child.wait()?;
    if spoke {
        return Ok(Some(elapsed));
    }
    if elapsed < timeout && !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        anyhow::bail!("`qemu-system-x86_64 -accel {accel}` exited early: {last}");
    }
    Ok(None)
}

/// Kill the probe's process group (QEMU and anything it started).
fn kill_group(pgid: i32) {
    // SAFETY: kill(2) has no memory preconditions; `pgid` is the group spawned above.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe is not a stub: under TCG (which works here) it sees the banner;
    /// so silence under KVM on this host is a real verdict.
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
    #[ignore = "slow: boots the host kernel under TCG (about 5 s)"]
    fn probe_sees_the_banner_of_a_kernel_under_tcg() {
        let Some(kernel) = host_kernel() else {
            panic!("this test needs a kernel in /boot (apt-get install linux-image-amd64)");
        };
        let t = probe_accel("tcg", &kernel, Duration::from_secs(60))
            .unwrap()
            .expect("a kernel under TCG prints its banner");
        assert!(t < Duration::from_secs(60));
    }
}
