//! The guest's serial console, driven over a unix socket instead of a terminal.
//!
//! Input typed before a shell is ready is lost or mangled (the serial line has no flow control before the getty), and output
//! interleaves with the echo of what was typed, so nothing here trusts a prompt.
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
//! Everything received goes, line by line, to a transcript sink (the step log and
//! `console.log`) with every registered secret masked; the last lines are kept for
//! failure messages.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use regex::bytes::Regex;

/// How many console lines a failure quotes.
pub const LAST_LINES: usize = 25;

/// How long one "are you there" probe waits before typing another.
const READY_PROBE: Duration = Duration::from_millis(1500);

/// What one framed command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub output: String,
    pub status: i32,
}

/// A serial console connection with its transcript.
pub struct SerialConsole {
    stream: UnixStream,
    /// Received bytes not yet consumed by a wait.
    pending: Vec<u8>,
    /// The incomplete last line of the transcript.
    partial: Vec<u8>,
    recent: VecDeque<String>,
    transcript: Box<dyn FnMut(&str) + Send>,
    secrets: Vec<String>,
    tag: String,
    counter: u64,
    muted: bool,
    mirrors: Option<super::attach::Mirrors>,
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

    /// Wrap a connected console socket; `transcript` receives every line, masked.
    pub fn new(stream: UnixStream, transcript: Box<dyn FnMut(&str) + Send>) -> Self {
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

    /// Log in on a getty: user name, then the password (masked everywhere).
    pub fn login(&mut self, user: &str, password: &str, deadline: Instant) -> anyhow::Result<()> {
        self.add_secret(password);
        self.wait_for(
            &Regex::new(r"login: ?").unwrap(),
            deadline,
            "the login prompt",
        )?;
        self.send_line(user)?;
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

    /// Wait until a shell runs what is typed: type a probe every 1.5 s until one
    /// answers, then run a framed no-op so every queued probe has been consumed.
    pub fn wait_for_shell(&mut self, deadline: Instant) -> anyhow::Result<()> {
        // A login refusal or a kernel panic (a wrong `root=`) ends the wait at once.
        let answer = Regex::new(&format!(
            r"qflow-r-{}\d+|(Login incorrect)|(Kernel panic - not syncing[^\r\n]*)\r?\n",
            self.tag
        ))
        .unwrap();
        loop {
            self.counter += 1;
            self.send_line(&format!("echo qf''low-r-{}{}", self.tag, self.counter))?;
            let probe_deadline = deadline.min(Instant::now() + READY_PROBE);
            match self.wait_for(&answer, probe_deadline, "a shell") {
                Ok(m) if !m.groups[0].is_empty() => {
                    bail!("the guest refused the login: `Login incorrect`")
                }
                Ok(m) if !m.groups[1].is_empty() => {
                    bail!(
                        "the guest kernel panicked: `{}`",
                        String::from_utf8_lossy(&m.groups[1])
                    )
                }
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline || !e.to_string().starts_with("timed out") => {
                    return Err(e.context("no shell answered on the console"));
                }
                Err(_) => continue,
            }
        }
        let sync = self.run("true", deadline)?;
        if sync.status != 0 {
            bail!("the guest shell cannot run `true` (exit {})", sync.status);
        }
        Ok(())
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
        (self.transcript)(&line);
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
        self.stream.set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.flush_transcript();
                bail!("the console closed: QEMU exited")
            }
            Ok(n) => {
                if let Some(m) = &self.mirrors {
                    super::attach::mirror(m, &chunk[..n]);
                }
                self.pending.extend_from_slice(&chunk[..n]);
                self.record(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(Instant::now() < deadline)
            }
            Err(e) => Err(e).context("cannot read the console"),
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

    /// Send the incomplete last line to the transcript (at the end of a run).
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
        (self.transcript)(&line);
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
        let (ours, mut guest) = UnixStream::pair().unwrap();
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
                guest.read_exact(&mut byte).unwrap();
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
        let (ours, _guest) = UnixStream::pair().unwrap();
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
