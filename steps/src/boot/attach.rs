//! A running boot's console, open to a person: the hand recipe's "switch between
//! automated input and stdin", without a patched QEMU.
//!
//! While a run goes on, qflow listens on a unix socket and links it from the step's
//! state directory as `console.sock` (`console-<run>.sock` for a matrix run), where
//! [`running_consoles`] finds it and [`attach_terminal`] connects the user's
//! terminal (the client side of `qflow attach STEP`; `socat` works too). Everything
//! the guest prints is mirrored to every attached client, and what a client types
//! goes to the guest's serial console, interleaved with qflow's own framed commands
//! at line boundaries of the person's choosing; QEMU's Ctrl-A escapes reach
//! QEMU's multiplexer as usual. The socket itself lives in the run's short private
//! directory (a unix socket path holds 108 bytes), so the link is read with
//! `readlink`. A slow client is dropped rather than allowed to stall the run.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The clients that receive the console's output.
pub type Mirrors = Arc<Mutex<Vec<UnixStream>>>;

/// The attach socket of one run; closed and unlinked when dropped.
pub struct AttachPoint {
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    link: PathBuf,
}

impl AttachPoint {
    /// Serve `listener` (linked from `link`) until dropped: mirror the console to
    /// clients through `mirrors`, and send their input to `console_input`.
    pub fn open(
        listener: UnixListener,
        socket: &Path,
        link: &Path,
        console_input: File,
        mirrors: Mirrors,
    ) -> anyhow::Result<AttachPoint> {
        listener.set_nonblocking(true)?;
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(socket, link)?;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(listener, console_input, mirrors, stop))
        };
        Ok(AttachPoint {
            stop,
            acceptor: Some(acceptor),
            link: link.to_path_buf(),
        })
    }

    pub fn link(&self) -> &Path {
        &self.link
    }
}

impl Drop for AttachPoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.link);
    }
}

fn serve(listener: UnixListener, console_input: File, mirrors: Mirrors, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let _ = client.set_write_timeout(Some(Duration::from_millis(200)));
                let mut greeting = client.try_clone();
                if let Ok(g) = greeting.as_mut() {
                    let _ = g.write_all(b"\r\n[qflow: attached to the guest console; what you type goes to the guest]\r\n");
                }
                if let Ok(mirror) = client.try_clone() {
                    mirrors.lock().unwrap().push(mirror);
                }
                if let Ok(input) = console_input.try_clone() {
                    let stop = stop.clone();
                    // Ends when the client hangs up or the console closes.
                    std::thread::spawn(move || forward(client, input, stop));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Hang up on every client when the run ends.
    for m in mirrors.lock().unwrap().drain(..) {
        let _ = m.shutdown(std::net::Shutdown::Both);
    }
}

fn forward(mut client: UnixStream, mut console: File, stop: Arc<AtomicBool>) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if console.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
}

/// Send a chunk of console output to every client; drop those that cannot keep up.
pub fn mirror(mirrors: &Mirrors, bytes: &[u8]) {
    let mut clients = mirrors.lock().unwrap();
    if clients.is_empty() {
        return;
    }
    clients.retain_mut(|c| c.write_all(bytes).is_ok());
}

/// The byte that ends an attach session on the user's side (Ctrl-], as telnet).
pub const DETACH_KEY: u8 = 0x1d;

/// The attach sockets of a boot step's running runs, from its state directory:
/// `console.sock`, or `console-<run>.sock` for each matrix run, resolved to the
/// socket they link to.
pub fn running_consoles(state_dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let run = match name.strip_suffix(".sock") {
            Some("console") => String::new(),
            Some(rest) => match rest.strip_prefix("console-") {
                Some(run) => run.to_string(),
                None => continue,
            },
            None => continue,
        };
        if let Ok(target) = std::fs::read_link(entry.path()) {
            found.push((run, target));
        }
    }
    found.sort();
    found
}

/// Connect to the attach socket `socket` and copy bytes both ways between it and
/// `input`/`output` until the run ends, `input` ends, or the user types
/// [`DETACH_KEY`]. The client side of `qflow attach STEP`.
pub fn bridge(
    socket: &Path,
    mut input: impl Read + Send,
    mut output: impl Write,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot attach to {}", socket.display()))?;
    let mut to_guest = stream.try_clone()?;
    let mut from_guest = stream;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let end = chunk.iter().position(|&b| b == DETACH_KEY);
                if to_guest.write_all(&chunk[..end.unwrap_or(n)]).is_err() || end.is_some() {
                    break;
                }
            }
            // Hanging up ends the copy the other way too.
            let _ = to_guest.shutdown(std::net::Shutdown::Both);
        });
        let mut buf = [0u8; 4096];
        loop {
            match from_guest.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if output
                        .write_all(&buf[..n])
                        .and_then(|_| output.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = from_guest.shutdown(std::net::Shutdown::Both);
    });
    Ok(())
}

/// [`bridge`] the user's terminal to `socket`, in raw mode while attached (so the
/// guest's line editing and QEMU's Ctrl-A escapes work), restored afterwards.
pub fn attach_terminal(socket: &Path) -> anyhow::Result<()> {
    let _raw = RawTerminal::enter();
    eprint!(
        "[qflow: attached to {}; Ctrl-] detaches]\r\n",
        socket.display()
    );
    let result = bridge(socket, std::io::stdin(), std::io::stdout());
    eprint!("\r\n[qflow: detached]\r\n");
    result
}

/// Standard input in raw mode until dropped (nothing if it is not a terminal).
struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        // SAFETY: termios calls on fd 0 with a zeroed, then kernel-filled struct.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) != 1 || libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal { saved: Some(saved) }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attached_client_sees_the_console_and_types_into_it_until_it_detaches() {
        let dir = crate::boot::machine::SocketDir::new().unwrap();
        let listener = UnixListener::bind(dir.path().join("attach")).unwrap();
        let (console_qflow, mut console_guest, _printed) =
            crate::boot::console_pipe::ConsolePipe::pair().unwrap();
        let mirrors: Mirrors = Default::default();
        let link = dir.path().join("console.sock");
        let point = AttachPoint::open(
            listener,
            &dir.path().join("attach"),
            &link,
            console_qflow.input().unwrap(),
            mirrors.clone(),
        )
        .unwrap();
        assert_eq!(
            running_consoles(dir.path()),
            [(String::new(), dir.path().join("attach"))]
        );

        // The guest prints once the client is there; the client types a line, then Ctrl-].
        let guest = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while mirrors.lock().unwrap().is_empty() {
                assert!(std::time::Instant::now() < deadline, "no client attached");
                std::thread::sleep(Duration::from_millis(10));
            }
            mirror(&mirrors, b"guest says hi\r\n");
            let mut typed = [0u8; 6];
            console_guest.read_exact(&mut typed).unwrap();
            typed
        });
        let mut seen = Vec::new();
        let target = std::fs::read_link(&link).unwrap();
        let typing = std::io::Cursor::new(b"ls -l\n\x1dnot sent".to_vec());
        // The typing thread detaches at once; wait for the guest's line before that matters.
        let slow_typing = SlowReader {
            inner: typing,
            delay: Duration::from_millis(300),
        };
        bridge(&target, slow_typing, &mut seen).unwrap();
        assert_eq!(&guest.join().unwrap(), b"ls -l\n");
        assert!(
            String::from_utf8_lossy(&seen).contains("guest says hi"),
            "{}",
            String::from_utf8_lossy(&seen)
        );
        drop(point);
        assert!(
            std::fs::symlink_metadata(&link).is_err(),
            "the link is removed with the run"
        );
    }

    struct SlowReader<R> {
        inner: R,
        delay: Duration,
    }

    impl<R: Read> Read for SlowReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(self.delay);
            self.inner.read(buf)
        }
    }
}
