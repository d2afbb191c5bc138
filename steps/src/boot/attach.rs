//! A running boot's console, open to a person: the seed's "switch between
//! automated input and stdin", without a patched QEMU.
//!
//! While a run goes on, qflow listens on a unix socket and links it from the step's
//! state directory as `console.sock` (`console-<run>.sock` for a matrix run), where
//! `qflow attach STEP` (or `socat - UNIX-CONNECT:$(readlink ...)`) finds it. Everything
//! the guest prints is mirrored to every attached client, and what a client types
//! goes to the guest's serial console, interleaved with qflow's own framed commands
//! at line boundaries of the person's choosing; the seed's Ctrl-A escapes reach
//! QEMU's multiplexer as usual. The socket itself lives in the run's short private
//! directory (a unix socket path holds 108 bytes), so the link is read with
//! `readlink`. A slow client is dropped rather than allowed to stall the run.

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
        console_input: UnixStream,
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

fn serve(
    listener: UnixListener,
    console_input: UnixStream,
    mirrors: Mirrors,
    stop: Arc<AtomicBool>,
) {
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

fn forward(mut client: UnixStream, mut console: UnixStream, stop: Arc<AtomicBool>) {
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
