//! What the host offers, probed in one place: root, the nbd module, a kernel in
//! `/boot`, files from packages, and whether KVM can boot Linux.
//!
//! Apply's preflight (through the kinds' [`Step::requirements`]), `qflow doctor`
//! and `accel: auto` all ask here, so they never disagree on what the host has.
//!
//! "`/dev/kvm` exists" does not mean KVM can boot a guest: on nested hosts SeaBIOS
//! runs but a Linux kernel never prints a byte. So [`probe_kvm`] boots the host's
//! own kernel under KVM (no disk, nothing written) and waits up to
//! [`KVM_PROBE_TIMEOUT`] for its `Linux version` banner. The verdict of that probe
//! is remembered for the rest of the qflow process.
//!
//! [`Step::requirements`]: qflow_engine::Step::requirements

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qflow_engine::HostNeed;
use qflow_engine::tool_identity::which;

/// How long a kernel booted under KVM may stay silent before KVM counts as
/// unusable. A working KVM prints the banner well under a second; TCG needs about 5 s.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether qflow runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the nbd module is loaded, has devices, or can be loaded (it is in the
/// running kernel's `modules.dep`).
pub fn nbd_module() -> bool {
    if Path::new("/sys/module/nbd").exists() || Path::new("/dev/nbd0").exists() {
        return true;
    }
    std::fs::read_to_string(format!("/lib/modules/{}/modules.dep", kernel_release())).is_ok_and(
        |dep| {
            dep.lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.contains("/nbd.ko")))
        },
    )
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The newest readable `/boot/vmlinuz-*`: what libguestfs builds its appliance
/// from, and what the KVM probe boots.
pub fn host_kernel() -> Option<PathBuf> {
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

/// Whether `/dev/kvm` can be opened for reading and writing (not whether KVM works).
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether the host has `need` now, as far as a cheap check tells. KVM always
/// counts as present here: only a probe boot tells whether it works ([`probe_kvm`],
/// which `qflow doctor` runs), and a boot that needs KVM fails when QEMU starts.
pub fn has(need: &HostNeed) -> bool {
    match need {
        HostNeed::Root => is_root(),
        HostNeed::NbdModule => nbd_module(),
        HostNeed::HostKernel => host_kernel().is_some(),
        HostNeed::File { path, .. } => Path::new(path).exists(),
        HostNeed::Kvm(_) => true,
    }
}

/// What the KVM probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmVerdict {
    /// A kernel booted under KVM printed its banner after this long.
    Boots(Duration),
    /// `/dev/kvm` is absent or not writable.
    NoDevice,
    /// No kernel in `/boot` to boot.
    NoKernel,
    /// The kernel printed nothing within [`KVM_PROBE_TIMEOUT`].
    Silent,
    /// QEMU could not run or exited at once; the reason.
    Failed(String),
}

static KVM_VERDICT: Mutex<Option<KvmVerdict>> = Mutex::new(None);

/// Whether KVM can boot Linux on this host: probed once per qflow process.
pub fn probe_kvm() -> KvmVerdict {
    let mut verdict = KVM_VERDICT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = verdict.as_ref() {
        return v.clone();
    }
    let v = if !kvm_device_usable() {
        KvmVerdict::NoDevice
    } else if let Some(kernel) = host_kernel() {
        match which("qemu-system-x86_64") {
            None => KvmVerdict::Failed(
                "`qemu-system-x86_64` is not installed (apt-get install qemu-system-x86)".into(),
            ),
            Some(qemu) => {
                match probe_accel(Command::new(qemu), "kvm", &kernel, KVM_PROBE_TIMEOUT) {
                    Ok(Some(t)) => KvmVerdict::Boots(t),
                    Ok(None) => KvmVerdict::Silent,
                    Err(e) => KvmVerdict::Failed(format!("{e:#}")),
                }
            }
        }
    } else {
        KvmVerdict::NoKernel
    };
    *verdict = Some(v.clone());
    v
}

/// Boot `kernel` under `accel` with no disks, running `qemu`; `Some(time)` when
/// its `Linux version` banner appeared within `timeout`, `None` when it stayed
/// silent. The guest is killed (its whole process group) either way, and dies
/// with qflow if qflow is killed first.
pub fn probe_accel(
    mut qemu: Command,
    accel: &str,
    kernel: &Path,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    qemu.args(["-accel", accel, "-m", "256", "-display", "none"])
        .args(["-nodefaults", "-no-user-config", "-serial", "stdio"])
        .args(["-no-reboot", "-kernel"])
        .arg(kernel)
        // earlyprintk: the banner comes before the console driver would print it.
        .args([
            "-append",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        qemu.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = qemu.spawn()?;
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped stdout");
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
    // SAFETY: kill(2) has no memory preconditions; `pid` leads the group spawned above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let status = child.wait()?;
    if spoke {
        return Ok(Some(elapsed));
    }
    if elapsed < timeout {
        // Its output ended before the timeout: QEMU exited by itself, at once
        // (a bad option, a triple fault with `-no-reboot`), not silent.
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains("warning:"))
            .or_else(|| err.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| format!(": {l}"))
            .unwrap_or_else(|| " and printed no error".to_string());
        anyhow::bail!(
            "`qemu-system-x86_64 -accel {accel}` exited ({}) after {:.1}s, before the kernel printed its banner{last}",
            qflow_engine::context::describe_status(status),
            elapsed.as_secs_f64()
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_is_left_to_the_probe_and_a_file_need_is_checked_on_disk() {
        assert!(has(&HostNeed::Kvm(qflow_engine::KvmUse::Required)));
        assert!(has(&HostNeed::File {
            what: "the root directory".into(),
            path: "/".into(),
            package: "base-files".into(),
        }));
        assert!(!has(&HostNeed::File {
            what: "nothing".into(),
            path: "/nonexistent/qflow".into(),
            package: "none".into(),
        }));
        assert_eq!(has(&HostNeed::Root), is_root());
    }

    /// A QEMU that exits at once is reported as such, with its reason: not as a
    /// kernel that "printed nothing" for the whole timeout.
    #[test]
    fn a_qemu_that_exits_at_once_is_not_called_silent() {
        let qemu = which("qemu-system-x86_64").expect("qemu-system-x86_64 installed");
        let dir = std::env::temp_dir().join(format!("qflow-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("not-a-kernel");
        std::fs::write(&junk, "not a kernel\n").unwrap();
        let timeout = Duration::from_secs(30);
        let err = probe_accel(Command::new(&qemu), "tcg", &junk, timeout).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited (exit 1)"), "{msg}");
        assert!(msg.contains("invalid kernel header"), "{msg}");
        // Exit status 0 at once (as a triple fault under `-no-reboot` gives) too.
        let mut version_first = Command::new(&qemu);
        version_first.arg("-version");
        let err = probe_accel(version_first, "tcg", &junk, timeout).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited (exit 0)"), "{msg}");
        assert!(!msg.contains("printed nothing"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The probe is not a stub: under TCG (which works here) it sees the banner,
    /// so silence under KVM on this host is a real verdict.
    #[test]
    #[ignore = "slow: boots the host kernel under TCG (about 5 s)"]
    fn probe_sees_the_banner_of_a_kernel_under_tcg() {
        let Some(kernel) = host_kernel() else {
            panic!("this test needs a kernel in /boot (apt-get install linux-image-amd64)");
        };
        let qemu = which("qemu-system-x86_64").expect("qemu-system-x86_64 installed");
        let t = probe_accel(Command::new(qemu), "tcg", &kernel, Duration::from_secs(60))
            .unwrap()
            .expect("a kernel under TCG prints its banner");
        assert!(t < Duration::from_secs(60));
    }
}
