//! One running QEMU, the console FIFOs and the QMP socket qflow controls it through.
//!
//! qflow makes the console's FIFOs ([`ConsolePipe`]) and listens on the QMP socket
//! before QEMU starts, and QEMU opens and connects to them, so no console byte is
//! lost between QEMU's start and qflow's connect, and a QEMU that dies on a bad
//! option is noticed at once instead of leaving qflow waiting. They live in a short
//! private directory under the system temp dir, because a unix socket path is
//! limited to 108 bytes and cache paths are long. QEMU's own stdout and stderr (its
//! warnings, a plugin's output) go to `qemu.log`.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;
use qflow_engine::context::{RunningChild, describe_status};

use super::command_line::{ControlSockets, QEMU, QemuCommandLine};
use super::console_pipe::ConsolePipe;

/// A private directory removed with everything in it when dropped.
pub struct SocketDir {
    path: PathBuf,
}

impl SocketDir {
    pub fn new() -> anyhow::Result<SocketDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!(
            "qflow-boot-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(SocketDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A started QEMU, not yet connected.
pub struct Machine {
    pub child: RunningChild,
    /// When QEMU was started, for "ready after" figures.
    pub started: Instant,
    console: Option<ConsolePipe>,
    qmp: UnixListener,
    attach: Option<(UnixListener, PathBuf)>,
    log: PathBuf,
    _sockets: SocketDir,
}

impl Machine {
    /// Start QEMU with `line` plus qflow's control sockets. `stdin` feeds an
    /// `-incoming fd:0` restore; QEMU's output goes to `log`.
    pub fn start(
        ctx: &mut RunContext,
        line: &QemuCommandLine,
        stdin: Option<File>,
        log: &Path,
    ) -> anyhow::Result<Machine> {
        let sockets = SocketDir::new()?;
        let (console, console_path) = ConsolePipe::create(sockets.path())?;
        let control = ControlSockets {
            console: console_path,
            qmp: sockets.path().join("qmp"),
        };
        let qmp = UnixListener::bind(&control.qmp).context("cannot listen on the QMP socket")?;
        qmp.set_nonblocking(true)?;
        let attach_socket = sockets.path().join("attach");
        let attach =
            UnixListener::bind(&attach_socket).context("cannot listen on the attach socket")?;
        let mut line = line.clone();
        line.control = Some(control);
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = ctx.command(QEMU);
        cmd.args(line.args());
        cmd.stdout(out.try_clone()?).stderr(out);
        match stdin {
            Some(f) => cmd.stdin(f),
            None => cmd.stdin(std::process::Stdio::null()),
        };
        let child = ctx.spawn(cmd)?;
        Ok(Machine {
            child,
            started: Instant::now(),
            console: Some(console),
            qmp,
            attach: Some((attach, attach_socket)),
            log: log.to_path_buf(),
            _sockets: sockets,
        })
    }

    /// Accept QEMU's QMP connection, waiting at most `timeout`; the console is
    /// open by then (QEMU opens its chardevs in command-line order, the console's
    /// before QMP's).
    pub fn connect(&mut self, timeout: Duration) -> anyhow::Result<(ConsolePipe, UnixStream)> {
        let deadline = Instant::now() + timeout;
        let qmp = loop {
            if let Some(qmp) = accept(&self.qmp)? {
                break qmp;
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(self.exit_message(status));
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU did not connect to its QMP socket within {}s",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let console = self
            .console
            .take()
            .context("the console is connected once")?;
        Ok((console, qmp))
    }

    /// The listener (and its path) a person attaches to the console through.
    pub fn take_attach(&mut self) -> Option<(UnixListener, PathBuf)> {
        self.attach.take()
    }

    /// Wait for QEMU to exit by itself; kill it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.child.wait_timeout(timeout)?.is_none() {
            self.child.kill();
            bail!(
                "QEMU did not exit within {}s after `quit`; killed",
                timeout.as_secs()
            );
        }
        Ok(())
    }

    /// Why QEMU ended by itself, when it did within `wait`: its own error line
    /// first, then what else it printed. `None` while QEMU still runs.
    pub fn exit_reason(&mut self, wait: Duration) -> Option<String> {
        let status = self.child.wait_timeout(wait).ok()??;
        Some(self.exit_message(status))
    }

    fn exit_message(&self, status: std::process::ExitStatus) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        exit_message(&describe_status(status), &text)
    }

    /// The last lines QEMU printed, joined for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
        if tail.is_empty() {
            "it printed nothing".to_string()
        } else {
            format!("it printed:\n    {tail}")
        }
    }
}

/// "QEMU exited (exit 1): qemu: invalid kernel header": QEMU's own last error
/// line is the headline (not the socket qflow saw close), followed by a fix qflow
/// knows for it and QEMU's other lines.
pub fn exit_message(status: &str, log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let is_error =
        |l: &&&str| (l.starts_with("qemu") || l.starts_with(QEMU)) && !l.contains("warning:");
    let headline = lines.iter().rev().find(is_error).or(lines.last()).copied();
    let mut msg = match headline {
        Some(h) => format!("QEMU exited ({status}): {h}"),
        None => format!("QEMU exited ({status}) and printed nothing"),
    };
    if let Some(hint) = lines
        .iter()
        .find_map(|l| crate::qemu_img::hint_for_qemu_error(l))
    {
        msg.push_str("\n  hint: ");
        msg.push_str(&hint);
    }
    let others: Vec<&&str> = lines.iter().filter(|l| Some(**l) != headline).collect();
    if !others.is_empty() {
        msg.push_str("\nQEMU also printed:");
        for l in &others[others.len().saturating_sub(10)..] {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
    }
    msg
}

fn accept(listener: &UnixListener) -> anyhow::Result<Option<UnixStream>> {
    match listener.accept() {
        Ok((stream, _)) => {
            stream.set_nonblocking(false)?;
            Ok(Some(stream))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e).context("cannot accept QEMU's connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_own_error_line_is_the_headline_and_a_known_fix_follows() {
        let log = "qemu-system-x86_64: warning: host doesn't support requested feature\n\
                   qemu-system-x86_64: -hda /c/image.qcow2: 'ide0-hd0' uses a qcow2 feature which is \
                   not supported by this qemu version: QCOW version 3\n";
        let msg = exit_message("exit 1", log);
        assert!(
            msg.starts_with("QEMU exited (exit 1): qemu-system-x86_64: -hda /c/image.qcow2:"),
            "{msg}"
        );
        assert!(msg.contains("compat: \"0.10\""), "{msg}");
        assert!(
            msg.contains("QEMU also printed:\n    qemu-system-x86_64: warning"),
            "{msg}"
        );
        assert_eq!(
            exit_message("exit 1", ""),
            "QEMU exited (exit 1) and printed nothing"
        );
    }
}
