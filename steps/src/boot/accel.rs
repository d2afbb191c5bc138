//! Choosing the accelerator for `accel: auto`.
//!
//! "`/dev/kvm` exists" does not mean "KVM can boot Linux": on nested hosts SeaBIOS
//! runs under KVM but a kernel never prints a byte. So `auto` asks the host's KVM
//! probe ([`host::probe_kvm`]: the host's own kernel booted under KVM, given
//! [`host::KVM_PROBE_TIMEOUT`] to print its banner), the same probe `qflow doctor`
//! runs. Silence means KVM is unusable and the boot runs under TCG: slower, never
//! hung. The verdict is remembered for the rest of the qflow process and always said
//! in the step log and `qflow.lock`.

use crate::host::{self, KvmVerdict};

use super::command_line::AccelName;

/// The accelerator to run and why, for `accel: auto`. `needs_tcg` names a field
/// that only TCG supports (icount, plugins), if any.
pub fn choose(needs_tcg: Option<&str>) -> (AccelName, String) {
    if let Some(field) = needs_tcg {
        return (AccelName::Tcg, format!("tcg: `{field}` needs TCG"));
    }
    match host::probe_kvm() {
        KvmVerdict::Boots(t) => (
            AccelName::Kvm,
            format!(
                "kvm: a probe boot under KVM printed the kernel's first line in {:.1}s",
                t.as_secs_f64()
            ),
        ),
        KvmVerdict::NoDevice => (
            AccelName::Tcg,
            "tcg: /dev/kvm is absent or not writable".to_string(),
        ),
        KvmVerdict::NoKernel => (
            AccelName::Tcg,
            "tcg: /dev/kvm exists but there is no kernel in /boot to probe it with".to_string(),
        ),
        KvmVerdict::Silent => (
            AccelName::Tcg,
            format!(
                "tcg: /dev/kvm exists but a probe boot under KVM printed nothing in {}s",
                host::KVM_PROBE_TIMEOUT.as_secs()
            ),
        ),
        KvmVerdict::Failed(e) => (AccelName::Tcg, format!("tcg: the KVM probe failed: {e}")),
    }
}
