//! Choosing the accelerator for `accel: auto`.
//!
//! "`/dev/kvm` exists" does not mean "KVM can boot Linux": on these machines SeaBIOS
//! runs under nested KVM but a kernel never prints a byte. So `auto`
//! boots the same machine under KVM, with disk writes discarded, and waits a short
//! while for the guest itself to speak: the kernel's `Linux version` banner or a
//! login prompt. SeaBIOS's own lines on the serial port do not count, since SeaBIOS
//! runs where Linux hangs. Silence means KVM is unusable and the boot runs under
//! TCG. A guest booted with `quiet` and a slow userland may miss the window and run
//! under TCG: slower, never hung. The verdict is remembered for the rest of the qflow process
//! and always said in the step log and `qflow.lock`.

use std::sync::Mutex;
use std::time::Duration;

use qflow_engine::RunContext;

use super::command_line::{AccelName, QemuCommandLine};
use super::machine::Machine;
use super::serial_console::SerialConsole;

/// How long a KVM boot may stay silent before qflow falls back to TCG. A working
/// KVM prints the kernel's first line well under a second.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

static VERDICT: Mutex<Option<(AccelName, String)>> = Mutex::new(None);

/// The accelerator to run and why, for `accel: auto`. `needs_tcg` names a field
/// that only TCG supports (icount, plugins), if any.
pub fn choose(
    ctx: &mut RunContext,
    line: &QemuCommandLine,
    needs_tcg: Option<&str>,
) -> (AccelName, String) {
    if let Some(field) = needs_tcg {
        return (AccelName::Tcg, format!("tcg: `{field}` needs TCG"));
    }
    if !kvm_device_usable() {
        return (
            AccelName::Tcg,
            "tcg: /dev/kvm is absent or not writable".to_string(),
        );
    }
    let mut verdict = VERDICT.lock().unwrap();
    if let Some(v) = verdict.as_ref() {
        return v.clone();
    }
    let v = match probe(ctx, line) {
        Ok(true) => (
            AccelName::Kvm,
            "kvm: a probe boot under KVM printed the guest's first line".to_string(),
        ),
        Ok(false) => (
            AccelName::Tcg,
            format!(
                "tcg: /dev/kvm exists but a probe boot under KVM printed nothing in {}s",
                PROBE_TIMEOUT.as_secs()
            ),
        ),
        Err(e) => (AccelName::Tcg, format!("tcg: the KVM probe failed: {e:#}")),
    };
    *verdict = Some(v.clone());
    v
}

fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Boot `line` under KVM with writes discarded; true if the guest printed its first line.
fn probe(ctx: &mut RunContext, line: &QemuCommandLine) -> anyhow::Result<bool> {
    let mut probe_line = line.clone();
    probe_line.accel = Some(AccelName::Kvm);
    probe_line.snapshot = true;
    probe_line.incoming = None;
    probe_line.plugins.clear();
    let dir = super::machine::SocketDir::new()?;
    let log = dir.path().join("probe.log");
    ctx.log(&format!(
        "qflow: probing KVM ({}s for a first console byte)",
        PROBE_TIMEOUT.as_secs()
    ));
    let mut machine = Machine::start(ctx, &probe_line, None, &log)?;
    let (console, _qmp) = machine.connect(Duration::from_secs(10))?;
    let mut console = SerialConsole::new(console, Box::new(|_| {}));
    let guest_spoke = regex::bytes::Regex::new(r"Linux version|[Ll]ogin:").unwrap();
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    let spoke = console
        .wait_for(&guest_spoke, deadline, "the guest's first line")
        .is_ok();
    machine.child.kill();
    Ok(spoke)
}
