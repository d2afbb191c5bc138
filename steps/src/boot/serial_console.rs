//! The guest's serial console, driven over FIFOs ([`ConsolePipe`]) instead of a terminal.
//!
//! Input typed before a shell is ready is lost or mangled (the serial line has no
//! flow control before the getty), and output interleaves with the echo of what
//! was typed, so no exchange trusts a prompt to tell where its output is.
//! Every exchange is framed the way the NixOS test driver frames its commands: the
//! guest prints a marker that is unique per command (a per-run tag plus a counter;
//! the tag derives from the run's identity, [`SerialConsole::with_marker_seed`], so
//! the same run prints the same transcript)
//! and that never appears in the echo of the line that prints it (`echo qf''low-b-ID`
//! echoes with the quotes, prints without them). A command travels base64-encoded
//! and runs through `eval` in the login shell itself (so `cd`, `export` and `stty`
//! act as if typed), so quotes or newlines in it cannot break the framing; its
//! output is what lies between the begin marker and the end marker, which also
//! carries `$?`. The next command is typed only after the previous one ended.
//!
//! When qflow types is paced by the guest, so that a deterministic guest under
//! `icount` prints the same console every time: input reaches the guest at a
//! moment of the host's choosing, and whatever the guest is doing then (booting,
//! printing its prompt, echoing) takes it in at another instruction each run. So
//! the first probe waits until the guest has printed something that ends like a
//! shell prompt (`# `, `$ `) and then fell silent ([`SerialConsole::wait_for_shell`]),
//! and it turns the terminal's echo off (`stty -echo; echo qf''low-r-ID`): from
//! then on nothing qflow types is echoed, so the console holds only what the guest
//! prints, in the order it prints it. Only when no prompt is recognized does qflow
//! probe on a timer (after 1.5 s of silence; under `icount`, after a minute, so
//! a slow boot is never interrupted).
//!
//! Everything received goes, line by line, to a transcript sink (the step log and
//! `console.log`) with every registered secret masked, and from the first probe on
//! to a session sink (`session.log`); the last lines are kept for failure messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use regex::bytes::Regex;

use super::console_pipe::ConsolePipe;

/// How many console lines a failure quotes.
pub const LAST_LINES: usize = 25;

/// How long one "are you there" probe waits before typing another (without `icount`).
const READY_PROBE: Duration = Duration::from_millis(1500);

/// Under `icount`: how long a probe typed at a prompt waits for its answer before
/// another is typed.
const PACED_PROBE: Duration = Duration::from_secs(20);

/// Under `icount`: how long the guest must be silent, with no prompt recognized,
/// before qflow probes anyway.
const PACED_SILENCE: Duration = Duration::from_secs(60);

/// How long a guest that printed no prompt after its last command must be silent
/// before its checkpoint is saved.
const SETTLE_SILENCE: Duration = Duration::from_secs(3);

/// How long nothing more may arrive after a prompt before qflow types at it.
const PROMPT_QUIET: Duration = Duration::from_millis(300);

/// Where transcript lines go.
pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// What one framed command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub output: String,
    pub status: i32,
}

/// A serial console connection with its transcript.
pub struct SerialConsole {
    stream: ConsolePipe,
    /// Received bytes not yet consumed by a wait.
    pending: Vec<u8>,
    /// The incomplete last line of the transcript.
    partial: Vec<u8>,
    recent: VecDeque<String>,
    transcript: LineSink,
    secrets: Vec<String>,
    tag: String,
    counter: u64,
    muted: bool,
    mirrors: Option<super::attach::Mirrors>,
    /// When the guest last printed anything.
    last_heard: Instant,
    /// Type only when the guest waits for input ([`SerialConsole::paced_by_the_guest`]).
    paced: bool,
    /// Receives the transcript from the first probe on ([`SerialConsole::with_session_sink`]).
    session: Option<LineSink>,
    in_session: bool,
}

impl SerialConsole {
    /// Derive the markers' tag from `seed` (what identifies the run: its step, its
    /// upstream outputs, its matrix values) instead of drawing it at random: the
    /// transcript of a deterministic run is then the same every time. Two runs that
    /// can meet (a checkpoint's transcript and a run restored from it) have different
    /// seeds, so a stale marker never matches.
    pub fn with_marker_seed(mut self, seed: &str) -> Self {
        self.tag = marker_tag(seed);
        self
    }

    /// Under `icount`: never type on a timer while a prompt may still come (see
    /// the module's documentation), so the transcript is the same every run.
    pub fn paced_by_the_guest(mut self, paced: bool) -> Self {
        self.paced = paced;
        self
    }

    /// Also send the session, the transcript from qflow's first probe on (the
    /// guest's shell waiting at its prompt, its boot over), to `sink`. Under
    /// `icount` it repeats even when the boot before it does not (a boot that
    /// reads a disk waits for the host's reads, which the instruction count does
    /// not pace).
    pub fn with_session_sink(mut self, sink: LineSink) -> Self {
        self.session = Some(sink);
        self
    }

    /// Wrap a connected console; `transcript` receives every line, masked.
    pub fn new(stream: ConsolePipe, transcript: Box<dyn FnMut(&str) + Send>) -> Self {
        SerialConsole {
            stream,
            pending: Vec::new(),
            partial: Vec::new(),
            recent: VecDeque::new(),
            transcript,
            secrets: Vec::new(),
            tag: unique_tag(),
            counter: 0,
            muted: false,
            mirrors: None,
            last_heard: Instant::now(),
            paced: false,
            session: None,
            in_session: false,
        }
    }

    /// Never show `secret` in the transcript.
    pub fn add_secret(&mut self, secret: &str) {
        if !secret.is_empty() {
            self.secrets.push(secret.to_string());
        }
    }

    /// The last lines the guest printed (masked), for failure messages.
    pub fn last_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.recent.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(self.mask(&String::from_utf8_lossy(&self.partial)));
        }
        lines
    }

    /// Wait for `pattern`; consume everything up to the end of the match and
    /// return the bytes before it and the capture groups.
    pub fn wait_for(
        &mut self,
        pattern: &Regex,
        deadline: Instant,
        what: &str,
    ) -> anyhow::Result<Match> {
        let mut scanned = 0usize;
        loop {
            // Re-scan a little overlap so a match split across reads is found.
            let from = scanned.saturating_sub(256);
            if let Some(caps) = pattern.captures(&self.pending[from..]) {
                let whole = caps.get(0).expect("group 0");
                let (start, end) = (from + whole.start(), from + whole.end());
                let groups = caps
                    .iter()
                    .skip(1)
                    .map(|g| g.map(|g| g.as_bytes().to_vec()).unwrap_or_default())
                    .collect();
                let before = self.pending[..start].to_vec();
                self.pending.drain(..end);
                return Ok(Match { before, groups });
            }
            scanned = self.pending.len();
            if !self.fill(deadline)? {
                bail!("timed out waiting for {what}");
            }
        }
    }

    /// Log in on a getty: user name, then the password (masked everywhere). The
    /// name is typed once the getty has printed its prompt and fallen silent.
    pub fn login(&mut self, user: &str, password: &str, deadline: Instant) -> anyhow::Result<()> {
        self.add_secret(password);
        self.wait_for(
            &Regex::new(r"login: ?").unwrap(),
            deadline,
            "the login prompt",
        )?;
        self.wait_for_quiet(deadline)?;
        self.send_line(user)?;
        // The password goes at once: `login` gives up after a minute of the guest's
        // time, which runs ahead while the guest idles under `icount` (`sleep=off`).
        self.wait_for(
            &Regex::new(r"[Pp]assword: ?").unwrap(),
            deadline,
            "the password prompt",
        )?;
        self.note("********");
        self.stream
            .write_all(format!("{password}\n").as_bytes())
            .context("cannot write to the console")?;
        Ok(())
    }

    /// Wait until a shell runs what is typed. The first probe (`stty -echo; echo
    /// qf''low-r-ID`) is typed at the guest's prompt once the guest has fallen silent,
    /// or at once when `at_prompt` (a restored checkpoint sits at its prompt); another
    /// is typed when a new prompt shows without the answer, or on a timer (see the
    /// module's documentation). Then a framed no-op runs, so every queued probe has
    /// been consumed.
    pub fn wait_for_shell(&mut self, deadline: Instant, at_prompt: bool) -> anyhow::Result<()> {
        // A login refusal or a kernel panic (a wrong `root=`) ends the wait at once.
        // The answer counts with its line end, so its line is in the transcript
        // before anything qflow notes next.
        let answer = Regex::new(&format!(
            r"qflow-r-{}\d+\r?\n|(Login incorrect)|(Kernel panic - not syncing[^\r\n]*)\r?\n",
            self.tag
        ))
        .unwrap();
        let (silence, retry) = if self.paced {
            (PACED_SILENCE, PACED_PROBE)
        } else {
            (READY_PROBE, READY_PROBE)
        };
        // When the last probe was typed, and how much the guest had printed by then.
        let mut probed: Option<(Instant, usize)> = None;
        let mut scanned = 0usize;
        let mut type_now = at_prompt;
        loop {
            let from = scanned.saturating_sub(256);
            if let Some(caps) = answer.captures(&self.pending[from..]) {
                let end = from + caps.get(0).expect("group 0").end();
                if caps.get(1).is_some() {
                    bail!("the guest refused the login: `Login incorrect`")
                }
                if let Some(m) = caps.get(2) {
                    bail!(
                        "the guest kernel panicked: `{}`",
                        String::from_utf8_lossy(m.as_bytes())
                    );
                }
                self.pending.drain(..end);
                break;
            }
            scanned = self.pending.len();
            let now = Instant::now();
            let quiet = now.saturating_duration_since(self.last_heard);
            let at_a_prompt = ends_like_a_prompt(&self.pending) && quiet >= PROMPT_QUIET;
            let due = type_now
                || match probed {
                    None => at_a_prompt || quiet >= silence,
                    Some((at, seen)) => {
                        (at_a_prompt && self.pending.len() > seen) || now >= at + retry
                    }
                };
            if due {
                type_now = false;
                self.in_session = true;
                self.counter += 1;
                self.send_line(&format!(
                    "stty -echo; echo qf''low-r-{}{}",
                    self.tag, self.counter
                ))?;
                probed = Some((Instant::now(), self.pending.len()));
                continue;
            }
            if now >= deadline {
                bail!("no shell answered on the console: timed out waiting for a shell");
            }
            self.fill(deadline.min(now + Duration::from_millis(100)))
                .context("no shell answered on the console")?;
        }
        let sync = self.run("true", deadline)?;
        if sync.status != 0 {
            bail!("the guest shell cannot run `true` (exit {})", sync.status);
        }
        Ok(())
    }

    /// Wait until the guest has printed its prompt after the last command and fell
    /// silent (or, with no prompt recognized, has been silent for a few seconds):
    /// a checkpoint saved then restores to a guest that has nothing left to print.
    pub fn settle_at_prompt(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            let quiet = now.saturating_duration_since(self.last_heard);
            if (ends_like_a_prompt(&self.pending) && quiet >= PROMPT_QUIET)
                || quiet >= SETTLE_SILENCE
            {
                return Ok(());
            }
            if now >= deadline {
                bail!("timed out waiting for the guest's prompt after the last command");
            }
            self.fill(deadline.min(now + Duration::from_millis(100)))?;
        }
    }

    /// Wait until the guest has printed nothing for a moment: what it prints after
    /// a prompt (a boot's last messages) comes before what qflow types.
    fn wait_for_quiet(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let now = Instant::now();
            let quiet_at = self.last_heard + PROMPT_QUIET;
            if now >= quiet_at {
                return Ok(());
            }
            if now >= deadline {
                bail!("timed out waiting for the guest to fall silent");
            }
            self.fill(deadline.min(quiet_at))?;
        }
    }

    /// Run one shell command line in the guest and capture its output and status.
    pub fn run(&mut self, command: &str, deadline: Instant) -> anyhow::Result<CommandOutcome> {
        self.counter += 1;
        let id = format!("{}{}", self.tag, self.counter);
        let encoded = base64_encode(command.as_bytes());
        self.note(&format!("$ {command}"));
        let line = format!(
            "echo qf''low-b-{id}; eval \"$(echo {encoded} | base64 -d)\"; echo qf''low-e-{id}-$?"
        );
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .context("cannot write to the console")?;
        let what = format!("`{command}` to finish");
        self.wait_for(
            &Regex::new(&format!(r"qflow-b-{id}\r?\n")).unwrap(),
            deadline,
            &what,
        )?;
        let end = self.wait_for(
            &Regex::new(&format!(r"qflow-e-{id}-(\d+)\r?\n")).unwrap(),
            deadline,
            &what,
        )?;
        let status = String::from_utf8_lossy(&end.groups[0])
            .parse()
            .unwrap_or(-1);
        let output = String::from_utf8_lossy(&end.before).replace("\r\n", "\n");
        Ok(CommandOutcome { output, status })
    }

    /// Type a line (shown in the transcript as `qflow> LINE`).
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        self.note(line);
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .context("cannot write to the console")
    }

    /// Send raw bytes (QEMU's Ctrl-A escapes: `[0x01, b'x']`).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(bytes)
            .context("cannot write to the console")
    }

    /// Also send everything received to these attached clients.
    pub fn set_mirrors(&mut self, mirrors: super::attach::Mirrors) {
        self.mirrors = Some(mirrors);
    }

    /// Keep received lines out of the transcript (a collected file's base64) or not.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Write a line of qflow's own into the transcript (`qflow> TEXT`).
    pub fn note(&mut self, text: &str) {
        let line = format!("qflow> {}", self.mask(text));
        self.write_line(&line);
    }

    /// One line to the transcript, and to the session once it has begun.
    fn write_line(&mut self, line: &str) {
        (self.transcript)(line);
        if self.in_session
            && let Some(session) = self.session.as_mut()
        {
            session(line);
        }
    }

    /// Read what is available, waiting until `deadline`; false on timeout.
    fn fill(&mut self, deadline: Instant) -> anyhow::Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let wait = (deadline - now)
            .min(Duration::from_millis(200))
            .max(Duration::from_millis(1));
        let mut chunk = [0u8; 16384];
        match self
            .stream
            .read_timeout(&mut chunk, wait)
            .context("cannot read the console")?
        {
            Some(0) => {
                self.flush_transcript();
                bail!("the console closed: QEMU exited")
            }
            Some(n) => {
                if let Some(m) = &self.mirrors {
                    super::attach::mirror(m, &chunk[..n]);
                }
                self.last_heard = Instant::now();
                self.pending.extend_from_slice(&chunk[..n]);
                self.record(&chunk[..n]);
                Ok(true)
            }
            None => Ok(Instant::now() < deadline),
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial)
                    .trim_end_matches('\r')
                    .to_string();
                self.partial.clear();
                self.emit(line);
            } else {
                self.partial.push(b);
            }
        }
    }

    /// Send the incomplete last line to the transcript (at the end of a failed
    /// run: the guest's last words). A run that ended well leaves it out: it is
    /// the guest's prompt after the last command, which may or may not have
    /// arrived before QEMU ended.
    pub fn flush_transcript(&mut self) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial)
                .trim_end_matches('\r')
                .to_string();
            self.partial.clear();
            self.emit(line);
        }
    }

    fn emit(&mut self, line: String) {
        if self.muted {
            return;
        }
        let line = self.mask(&line);
        if self.recent.len() == LAST_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.clone());
        self.write_line(&line);
    }

    fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "********");
        }
        out
    }
}

/// The bytes before a match and its capture groups.
#[derive(Debug)]
pub struct Match {
    pub before: Vec<u8>,
    pub groups: Vec<Vec<u8>>,
}

/// Whether the guest's last output line ends like a shell's prompt (`# `, `$ `),
/// terminal escapes (bash's bracketed paste) aside.
fn ends_like_a_prompt(received: &[u8]) -> bool {
    let line = match received.iter().rposition(|&b| b == b'\n') {
        Some(i) => &received[i + 1..],
        None => received,
    };
    static PROMPT: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"[#$] (?:\x1b\[[0-9;?]*[A-Za-z])*\z").expect("a valid pattern")
    });
    line.len() <= 512 && PROMPT.is_match(line)
}

/// The tag of a run with identity `seed`.
fn marker_tag(seed: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"qflow console markers\0");
    h.update(seed.as_bytes());
    h.finalize().to_hex()[..8].to_string() + "x"
}

/// A short tag that differs between runs, so a marker from an earlier run (or from
/// the checkpoint's own transcript) never matches.
fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    );
    blake3::hash(seed.as_bytes()).to_hex()[..8].to_string() + "x"
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode base64, ignoring whitespace and line breaks (as `base64` wraps at 76).
pub fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => bail!("not base64: byte {c:#04x}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Read one line qflow typed.
    fn typed_line(from: &mut std::fs::File) -> String {
        let mut typed = Vec::new();
        let mut byte = [0u8; 1];
        while !typed.ends_with(b"\n") {
            from.read_exact(&mut byte).unwrap();
            typed.push(byte[0]);
        }
        String::from_utf8(typed).unwrap()
    }

    #[test]
    fn under_icount_nothing_is_typed_until_the_guest_prints_its_prompt() {
        let (ours, mut typed, mut guest) = ConsolePipe::pair().unwrap();
        let mut console = SerialConsole::new(ours, Box::new(|_| {}))
            .with_marker_seed("a boot")
            .paced_by_the_guest(true);
        let tag = marker_tag("a boot");
        let guest_tag = tag.clone();
        let guest_side = std::thread::spawn(move || {
            let tag = guest_tag;
            guest.write_all(b"Booting the kernel...\r\n").unwrap();
            // Longer than the probe period without icount: still nothing typed.
            std::thread::sleep(READY_PROBE + Duration::from_millis(700));
            let mut nothing = [0u8; 64];
            // SAFETY: O_NONBLOCK on a pipe end this test owns.
            unsafe {
                use std::os::fd::AsRawFd;
                libc::fcntl(typed.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            }
            let early = typed.read(&mut nothing);
            assert!(
                matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "typed before the prompt: {early:?}"
            );
            unsafe {
                use std::os::fd::AsRawFd;
                libc::fcntl(typed.as_raw_fd(), libc::F_SETFL, 0);
            }
            guest.write_all(b"\x1b[?2004hroot@guest:~# ").unwrap();
            let probe = typed_line(&mut typed);
            guest
                .write_all(
                    format!("{}\r\nqflow-r-{tag}1\r\nroot@guest:~# ", probe.trim_end()).as_bytes(),
                )
                .unwrap();
            let sync = typed_line(&mut typed);
            let id = sync
                .split("qf''low-b-")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            guest
                .write_all(format!("qflow-b-{id}\r\nqflow-e-{id}-0\r\nroot@guest:~# ").as_bytes())
                .unwrap();
            probe
        });
        console
            .wait_for_shell(Instant::now() + Duration::from_secs(20), false)
            .unwrap();
        let probe = guest_side.join().unwrap();
        assert_eq!(
            probe,
            format!("stty -echo; echo qf''low-r-{tag}1\n"),
            "one probe, echo off first"
        );
    }

    #[test]
    fn a_prompt_is_told_from_a_line_of_boot_messages() {
        assert!(ends_like_a_prompt(b"boot\r\nroot@guest:~# "));
        assert!(ends_like_a_prompt(b"~ $ \x1b[?2004h"));
        assert!(ends_like_a_prompt(b"/ # "));
        assert!(!ends_like_a_prompt(b"root@guest:~# \r\n[  OK  ] Started"));
        assert!(!ends_like_a_prompt(b"guest login: "));
    }

    #[test]
    fn markers_follow_the_runs_identity_not_the_clock() {
        assert_eq!(marker_tag("step a"), marker_tag("step a"));
        assert_ne!(marker_tag("step a"), marker_tag("step b"));
        assert_ne!(unique_tag(), unique_tag());
    }

    #[test]
    fn base64_round_trips_every_length() {
        for n in 0..70u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            let text = base64_encode(&data);
            assert_eq!(base64_decode(&text).unwrap(), data, "length {n}");
        }
        assert_eq!(base64_encode(b"echo hi"), "ZWNobyBoaQ==");
        assert_eq!(base64_decode("aGVs\nbG8=\n").unwrap(), b"hello");
    }

    #[test]
    fn a_framed_command_is_parsed_from_interleaved_console_output() {
        let (ours, mut typed_by_qflow, mut guest) = ConsolePipe::pair().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let mut console = SerialConsole::new(
            ours,
            Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
        );
        console.add_secret("hunter2");
        let guest_side = std::thread::spawn(move || {
            let mut typed = Vec::new();
            let mut byte = [0u8; 1];
            while !typed.ends_with(b"\n") {
                typed_by_qflow.read_exact(&mut byte).unwrap();
                typed.push(byte[0]);
            }
            let typed = String::from_utf8(typed).unwrap();
            let id = typed
                .split("qf''low-b-")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string();
            // The echo of the typed line must not count as the markers.
            guest
                .write_all(typed.replace('\n', "\r\n").as_bytes())
                .unwrap();
            let reply = format!("qflow-b-{id}\r\nhello hunter2\r\nqflow-e-{id}-3\r\n# ");
            guest.write_all(reply.as_bytes()).unwrap();
            typed
        });
        let outcome = console
            .run(
                "echo hello; exit 3",
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        let typed = guest_side.join().unwrap();
        assert_eq!(
            outcome,
            CommandOutcome {
                output: "hello hunter2\n".into(),
                status: 3
            }
        );
        assert!(
            typed.contains(&base64_encode(b"echo hello; exit 3")),
            "{typed}"
        );
        let transcript = lines.lock().unwrap().join("\n");
        assert!(transcript.contains("hello ********"), "{transcript}");
        assert!(!transcript.contains("hunter2"), "{transcript}");
    }

    #[test]
    fn waiting_for_silence_times_out() {
        let (ours, _typed, _guest) = ConsolePipe::pair().unwrap();
        let mut console = SerialConsole::new(ours, Box::new(|_| {}));
        let start = Instant::now();
        let err = console.wait_for(
            &Regex::new("never").unwrap(),
            start + Duration::from_millis(300),
            "a marker",
        );
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("timed out waiting for a marker")
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
