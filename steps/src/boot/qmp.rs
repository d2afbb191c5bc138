//! A QMP client: QEMU's JSON control protocol on a unix socket.
//!
//! Used for what the hand recipe does in the human monitor: quit, power down, `savevm`/
//! `loadvm` (through `human-monitor-command`), and the memory snapshot by migration.
//! The hand recipe migrates to `exec: cat > mem_snapshot`, which makes QEMU run a shell
//! string; here qflow opens the snapshot file itself and hands QEMU the open file
//! descriptor over the socket (`getfd` with `SCM_RIGHTS`), then migrates to
//! `fd:NAME`. No path is ever parsed by a shell.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// A connected, negotiated QMP session.
pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// How long one command may take to answer.
    pub reply_timeout: Duration,
}

impl Qmp {
    /// Read the greeting and leave capabilities negotiation mode.
    pub fn new(stream: UnixStream) -> anyhow::Result<Qmp> {
        let reader = BufReader::new(stream.try_clone().context("cannot clone the QMP socket")?);
        let mut qmp = Qmp {
            stream,
            reader,
            reply_timeout: Duration::from_secs(30),
        };
        let greeting = qmp.read_message(Instant::now() + qmp.reply_timeout)?;
        if greeting.get("QMP").is_none() {
            bail!("QEMU's QMP socket did not greet: {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Run a QMP command and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        self.stream
            .write_all(format!("{msg}\n").as_bytes())
            .with_context(|| format!("cannot send QMP `{command}`"))?;
        self.reply(command)
    }

    fn reply(&mut self, command: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + self.reply_timeout;
        loop {
            let msg = self
                .read_message(deadline)
                .with_context(|| format!("no answer to QMP `{command}`"))?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(|d| d.as_str())
                    .unwrap_or("unknown error");
                bail!("QMP `{command}` failed: {desc}");
            }
            // An asynchronous event (STOP, RESUME, MIGRATION...): not our answer.
        }
    }

    fn read_message(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        let mut line = String::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out reading QMP");
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
            match self.reader.read_line(&mut line) {
                Ok(0) => bail!("QEMU closed the QMP socket"),
                Ok(_) if line.ends_with('\n') => {
                    return serde_json::from_str(line.trim())
                        .with_context(|| format!("bad QMP message: {line}"));
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("cannot read QMP"),
            }
        }
    }

    /// A human monitor command (`savevm NAME`, `loadvm NAME`, `info status`); its text output.
    pub fn human(&mut self, command_line: &str) -> anyhow::Result<String> {
        let ret = self.execute(
            "human-monitor-command",
            json!({ "command-line": command_line }),
        )?;
        Ok(ret.as_str().unwrap_or_default().to_string())
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub fn status(&mut self) -> anyhow::Result<String> {
        let ret = self.execute("query-status", json!({}))?;
        Ok(ret
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string())
    }

    /// Pause the guest's CPUs.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.execute("stop", json!({})).map(|_| ())
    }

    /// Resume the guest's CPUs.
    pub fn cont(&mut self) -> anyhow::Result<()> {
        self.execute("cont", json!({})).map(|_| ())
    }

    /// End QEMU now (the monitor's `quit`, QEMU's Ctrl-A x on the console).
    pub fn quit(&mut self) -> anyhow::Result<()> {
        match self.execute("quit", json!({})) {
            Ok(_) => Ok(()),
            // QEMU may close the socket before its answer arrives.
            Err(e) if e.to_string().contains("closed") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Ask the guest to power down (ACPI; tinyconfig kernels ignore it).
    pub fn system_powerdown(&mut self) -> anyhow::Result<()> {
        self.execute("system_powerdown", json!({})).map(|_| ())
    }

    /// Save the VM's memory and device state to `path` by migration (the recipe's
    /// memory snapshot), waiting at most until `deadline`. The guest is paused
    /// first so the stream is written in one pass; QEMU stays paused afterwards.
    pub fn save_memory_snapshot(&mut self, path: &Path, deadline: Instant) -> anyhow::Result<u64> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        self.stop()?;
        // The default 32 MiB/s migration bandwidth cap is for networks, not files.
        self.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 1u64 << 40 }),
        )?;
        let msg = json!({ "execute": "getfd", "arguments": { "fdname": "qflow-snapshot" } });
        send_with_fd(
            &self.stream,
            format!("{msg}\n").as_bytes(),
            file.as_raw_fd(),
        )
        .context("cannot pass the snapshot file to QEMU")?;
        self.reply("getfd")?;
        drop(file);
        self.execute("migrate", json!({ "uri": "fd:qflow-snapshot" }))?;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    let why = info
                        .get("error-desc")
                        .and_then(|d| d.as_str())
                        .unwrap_or("no reason given");
                    bail!("saving the memory snapshot failed: {why}");
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!("timed out saving the memory snapshot");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let size = std::fs::metadata(path)?.len();
        Ok(size)
    }

    /// Wait until an `-incoming` restore has finished loading, then resume the
    /// guest if the snapshot was taken while paused.
    pub fn finish_restore(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            match self.status()?.as_str() {
                "inmigrate" => {}
                "running" => return Ok(()),
                "paused" | "postmigrate" | "prelaunch" => return self.cont(),
                other => bail!("restoring the checkpoint left QEMU in state `{other}`"),
            }
            if Instant::now() >= deadline {
                bail!("timed out restoring the checkpoint");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `sendmsg` with one file descriptor as `SCM_RIGHTS` ancillary data.
fn send_with_fd(stream: &UnixStream, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    let fd_size = std::mem::size_of::<RawFd>() as u32;
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: the msghdr points at `data` and `control`, both alive for the call;
    // CMSG_* only compute offsets inside `control`, which is large enough for one fd.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(fd_size) as usize;
        assert!(space <= std::mem::size_of_val(&control));
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_size) as _;
        std::ptr::copy_nonoverlapping(
            (&fd as *const RawFd).cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            fd_size as usize,
        );
        libc::sendmsg(stream.as_raw_fd(), &msg, 0)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sent = sent as usize;
    if sent < data.len() {
        (&*stream).write_all(&data[sent..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Real QEMU with no kernel (SeaBIOS finds nothing to boot and waits): enough to
    //! exercise the monitor, the console escapes and migration in about a second.

    use std::time::{Duration, Instant};

    use qflow_engine::RunContext;

    use super::Qmp;
    use crate::boot::command_line::{AccelName, Incoming, QemuCommandLine};
    use crate::boot::machine::{Machine, SocketDir};
    use crate::boot::serial_console::SerialConsole;

    fn bios_only(disks: Vec<String>) -> QemuCommandLine {
        QemuCommandLine {
            smp: 1,
            memory: "64".into(),
            disks,
            kernel: None,
            initrd: None,
            append: None,
            icount: None,
            snapshot: false,
            plugins: Vec::new(),
            accel: Some(AccelName::Tcg),
            cpu: None,
            control: None,
            incoming: None,
            extra_args: Vec::new(),
        }
    }

    fn context(dir: &SocketDir) -> RunContext {
        let d = dir.path();
        RunContext::standalone(
            "qmp-test",
            &d.join("out"),
            d,
            &d.join("state"),
            &d.join("step.log"),
        )
        .unwrap()
    }

    #[test]
    fn the_ctrl_a_x_escape_still_ends_qemu_on_the_console() {
        let dir = SocketDir::new().unwrap();
        let mut ctx = context(&dir);
        let mut machine = Machine::start(
            &mut ctx,
            &bios_only(Vec::new()),
            None,
            &dir.path().join("qemu.log"),
        )
        .unwrap();
        let (console, _qmp) = machine.connect(Duration::from_secs(20)).unwrap();
        let mut console = SerialConsole::new(console, Box::new(|_| {}));
        console.send_bytes(&[0x01, b'x']).unwrap();
        let status = machine.child.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.is_some(), "Ctrl-A x did not end QEMU");
    }

    #[test]
    fn savevm_and_loadvm_through_qmp_keep_the_snapshot_in_the_system_disk() {
        let dir = SocketDir::new().unwrap();
        let mut ctx = context(&dir);
        let disk = dir.path().join("disk.qcow2");
        let mut cmd = ctx.command("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("16M");
        ctx.run(cmd).unwrap();
        let line = bios_only(vec![disk.to_string_lossy().into_owned()]);
        let mut machine =
            Machine::start(&mut ctx, &line, None, &dir.path().join("qemu.log")).unwrap();
        let (_console, qmp) = machine.connect(Duration::from_secs(20)).unwrap();
        let mut qmp = Qmp::new(qmp).unwrap();
        assert_eq!(qmp.human("savevm ready").unwrap().trim(), "");
        assert!(qmp.human("info snapshots").unwrap().contains("ready"));
        assert_eq!(qmp.human("loadvm ready").unwrap().trim(), "");
        assert!(
            qmp.human("loadvm missing").unwrap().contains("missing"),
            "an error comes back as text"
        );
        qmp.quit().unwrap();
        machine.wait_exit(Duration::from_secs(10)).unwrap();
        let mut cmd = ctx.command("qemu-img");
        cmd.args(["snapshot", "-l"]).arg(&disk);
        assert!(ctx.run_capture(cmd).unwrap().contains("ready"));
    }

    #[test]
    fn a_memory_snapshot_saved_by_migration_restores_from_stdin() {
        let dir = SocketDir::new().unwrap();
        let mut ctx = context(&dir);
        let snapshot = dir.path().join("memory.snapshot");
        let mut first = Machine::start(
            &mut ctx,
            &bios_only(Vec::new()),
            None,
            &dir.path().join("a.log"),
        )
        .unwrap();
        let (_c1, q1) = first.connect(Duration::from_secs(20)).unwrap();
        let mut q1 = Qmp::new(q1).unwrap();
        let size = q1
            .save_memory_snapshot(&snapshot, Instant::now() + Duration::from_secs(60))
            .unwrap();
        assert!(size > 0);
        assert_eq!(q1.status().unwrap(), "postmigrate");
        q1.quit().unwrap();
        first.wait_exit(Duration::from_secs(10)).unwrap();

        let mut line = bios_only(Vec::new());
        line.incoming = Some(Incoming::Stdin);
        let stdin = std::fs::File::open(&snapshot).unwrap();
        let mut second =
            Machine::start(&mut ctx, &line, Some(stdin), &dir.path().join("b.log")).unwrap();
        let (_c2, q2) = second.connect(Duration::from_secs(20)).unwrap();
        let mut q2 = Qmp::new(q2).unwrap();
        q2.finish_restore(Instant::now() + Duration::from_secs(60))
            .unwrap();
        assert_eq!(q2.status().unwrap(), "running");
        q2.quit().unwrap();
        second.wait_exit(Duration::from_secs(10)).unwrap();
    }
}
