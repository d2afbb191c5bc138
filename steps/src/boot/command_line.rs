//! The QEMU command line of a boot, built from typed fields in the hand recipe's order.
//!
//! The hand recipe writes `qemu-system-x86_64 -smp 1 -m 512 -nographic -hda SYS -hdb DATA
//! -kernel bzImage -append "root=/dev/sda1 console=ttyS0 nokaslr"`; that prefix is
//! kept verbatim so a reader can match `qflow plan` against the recipe. After it
//! come the recipe's other options (`-icount shift=N`, `sleep=off` without disks, with the
//! guest's clock pinned by `-rtc base=...,clock=vm`; `-snapshot`; `-plugin path,arg=...`), the
//! accelerator, then qflow's own control plumbing: the serial
//! console and the human monitor multiplexed on one pair of FIFOs (so QEMU's
//! Ctrl-A escapes still work on it; FIFOs, not a socket: see `console_pipe`), QMP on
//! a unix socket, `-no-reboot` so that a guest
//! `reboot -f` ends the run, and `-incoming` when restoring a checkpoint. The user's
//! `extra_args` come last so they can override anything.

use std::path::PathBuf;

/// Where the guest's clock starts under `icount`. The real-time clock otherwise
/// starts at the host's time, which the guest prints and its programs read: a
/// deterministic workload would not give the same console log twice. With
/// `clock=vm` the clock then advances with the instruction counter.
pub const ICOUNT_RTC_BASE: &str = "2024-01-01T00:00:00";

/// What `icount` adds after `shift=N` for a guest with no disk. With QEMU's
/// default `sleep=on` the guest's clock runs at the host's pace while the guest
/// idles (the BIOS's boot menu waits, the kernel's `hlt`), so two boots diverge in
/// their first second; `sleep=off` jumps to the next timer instead, and a boot
/// without input runs the same instructions every time. Not with a disk: a read
/// completes when the host's I/O thread is done, and while the guest waits for it
/// `sleep=off` jumps from timer to timer up to the driver's own (ATA's 30 s), so a
/// slow host makes the guest see lost interrupts and I/O errors.
pub const ICOUNT_SLEEP: &str = "sleep=off";

/// The QEMU program the boot kind runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// An accelerator QEMU is told to use (`auto` is resolved before a command line exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelName {
    Kvm,
    Tcg,
}

impl AccelName {
    pub fn as_str(self) -> &'static str {
        match self {
            AccelName::Kvm => "kvm",
            AccelName::Tcg => "tcg",
        }
    }

    pub fn parse(s: &str) -> Option<AccelName> {
        match s {
            "kvm" => Some(AccelName::Kvm),
            "tcg" => Some(AccelName::Tcg),
            _ => None,
        }
    }
}

/// One `-plugin` option: the shared object and the arguments it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArg {
    pub path: String,
    /// Passed as `arg=TEXT` (QEMU 7.2: deprecated; `TEXT` without `=` becomes `TEXT=on`).
    pub args: Vec<String>,
    /// Passed as `NAME=VALUE`, which the plugin's `argv` holds as written.
    pub named: Vec<(String, String)>,
}

/// Where the incoming migration stream (a checkpoint's memory snapshot) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// QEMU reads the stream from its standard input, which qflow opens on the
    /// snapshot file: no shell, no path in a `exec:` string.
    Stdin,
}

/// The control sockets qflow talks to QEMU through (QEMU connects to them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSockets {
    /// The console's FIFOs without their `.in`/`.out` (QEMU's `-chardev pipe,path=`).
    pub console: PathBuf,
    pub qmp: PathBuf,
}

/// Everything that decides a boot's QEMU argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommandLine {
    pub smp: u32,
    pub memory: String,
    /// `-hda`, `-hdb`, ...: the system image first, then the data disks.
    pub disks: Vec<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub append: Option<String>,
    pub icount: Option<u32>,
    pub snapshot: bool,
    pub plugins: Vec<PluginArg>,
    pub accel: Option<AccelName>,
    /// `-cpu MODEL` (`max`: every instruction set the accelerator offers).
    pub cpu: Option<String>,
    pub control: Option<ControlSockets>,
    pub incoming: Option<Incoming>,
    pub extra_args: Vec<String>,
}

/// The IDE disk options in order; QEMU's pc machine has four.
pub const DISK_OPTIONS: [&str; 4] = ["-hda", "-hdb", "-hdc", "-hdd"];

impl QemuCommandLine {
    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&[
            "-smp",
            &self.smp.to_string(),
            "-m",
            &self.memory,
            "-nographic",
        ]);
        for (option, disk) in DISK_OPTIONS.iter().zip(&self.disks) {
            push(&[option, disk]);
        }
        if let Some(kernel) = &self.kernel {
            push(&["-kernel", kernel]);
        }
        if let Some(initrd) = &self.initrd {
            push(&["-initrd", initrd]);
        }
        if let Some(append) = &self.append {
            push(&["-append", append]);
        }
        if let Some(shift) = self.icount {
            if self.disks.is_empty() {
                push(&["-icount", &format!("shift={shift},{ICOUNT_SLEEP}")]);
            } else {
                push(&["-icount", &format!("shift={shift}")]);
            }
            push(&["-rtc", &format!("base={ICOUNT_RTC_BASE},clock=vm")]);
        }
        if self.snapshot {
            push(&["-snapshot"]);
        }
        for plugin in &self.plugins {
            push(&["-plugin", &plugin_option(plugin)]);
        }
        if let Some(accel) = self.accel {
            push(&["-accel", accel.as_str()]);
        }
        if let Some(cpu) = &self.cpu {
            push(&["-cpu", cpu]);
        }
        if let Some(control) = &self.control {
            let console = format!(
                "pipe,id=console,path={},mux=on",
                escape_option(&control.console.to_string_lossy())
            );
            push(&[
                "-chardev",
                &console,
                "-serial",
                "chardev:console",
                "-mon",
                "chardev=console,mode=readline",
            ]);
            push(&[
                "-qmp",
                &format!("unix:{}", escape_option(&control.qmp.to_string_lossy())),
            ]);
            push(&["-no-reboot"]);
        }
        if let Some(Incoming::Stdin) = &self.incoming {
            push(&["-incoming", "fd:0"]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The command line for logs and `qflow plan`: argv quoted for display only.
    pub fn display(&self) -> String {
        let mut parts = vec![QEMU.to_string()];
        parts.extend(
            self.args()
                .iter()
                .map(|a| qflow_engine::context::quote_arg(a)),
        );
        parts.join(" ")
    }
}

/// `-plugin path,arg=a,arg=b`: QEMU's option parser splits on commas, so a comma
/// inside a value is doubled (QemuOpts' escape).
pub fn plugin_option(plugin: &PluginArg) -> String {
    let mut s = escape_option(&plugin.path);
    for arg in &plugin.args {
        s.push_str(",arg=");
        s.push_str(&escape_option(arg));
    }
    for (name, value) in &plugin.named {
        s.push(',');
        s.push_str(&escape_option(name));
        s.push('=');
        s.push_str(&escape_option(value));
    }
    s
}

fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe_line() -> QemuCommandLine {
        QemuCommandLine {
            smp: 1,
            memory: "512".to_string(),
            disks: vec!["sys.img".to_string(), "data.img".to_string()],
            kernel: Some("bzImage".to_string()),
            initrd: None,
            append: Some("root=/dev/sda1 console=ttyS0 nokaslr".to_string()),
            icount: None,
            snapshot: false,
            plugins: Vec::new(),
            accel: None,
            cpu: None,
            control: None,
            incoming: None,
            extra_args: Vec::new(),
        }
    }

    #[test]
    fn the_command_line_is_the_hand_recipes_own() {
        // The recipe's complete command line, every option in its order.
        assert_eq!(
            recipe_line().display(),
            "qemu-system-x86_64 -smp 1 -m 512 -nographic -hda sys.img -hdb data.img -kernel bzImage \
             -append 'root=/dev/sda1 console=ttyS0 nokaslr'"
        );
    }

    #[test]
    fn icount_jumps_idle_time_only_for_a_guest_without_disks() {
        let mut line = recipe_line();
        line.icount = Some(1);
        assert!(
            line.args().contains(&"shift=1".to_string()),
            "a disk: sleep=on"
        );
        line.disks.clear();
        assert!(line.args().contains(&"shift=1,sleep=off".to_string()));
    }

    #[test]
    fn icount_snapshot_plugins_and_control_follow_the_recipe_prefix() {
        let mut line = recipe_line();
        line.icount = Some(1);
        line.snapshot = true;
        line.plugins = vec![PluginArg {
            path: "/p/libinsn.so".into(),
            args: vec!["inline=on".into(), "a,b".into()],
            named: vec![("filter".into(), "4,2".into())],
        }];
        line.accel = Some(AccelName::Tcg);
        line.cpu = Some("max".into());
        line.control = Some(ControlSockets {
            console: "/t/console".into(),
            qmp: "/t/qmp".into(),
        });
        line.incoming = Some(Incoming::Stdin);
        line.extra_args = vec!["-cpu".into(), "qemu64".into()];
        let args = line.args();
        let tail: Vec<&str> = args[13..].iter().map(|s| s.as_str()).collect();
        assert_eq!(
            tail,
            [
                "-icount",
                "shift=1",
                "-rtc",
                "base=2024-01-01T00:00:00,clock=vm",
                "-snapshot",
                "-plugin",
                "/p/libinsn.so,arg=inline=on,arg=a,,b,filter=4,,2",
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-chardev",
                "pipe,id=console,path=/t/console,mux=on",
                "-serial",
                "chardev:console",
                "-mon",
                "chardev=console,mode=readline",
                "-qmp",
                "unix:/t/qmp",
                "-no-reboot",
                "-incoming",
                "fd:0",
                "-cpu",
                "qemu64"
            ]
        );
    }
}
