//! The serial console's wire: two FIFOs QEMU opens as `-chardev pipe`, not a socket.
//!
//! QEMU's serial port sends the guest's output one byte per write, and a write
//! that would block is retried later, at a moment of the host's choosing, while
//! the guest polls the port: the guest then runs another number of instructions,
//! and under `icount` a deterministic boot would print other times and take its
//! input at other instructions. A unix socket holds only a few hundred such
//! one-byte writes (each is a buffer of its own) before it blocks, so any pause of
//! qflow's reader (a loaded host) showed in the guest. A FIFO packs bytes into
//! pages: it holds 64 KiB, raised here to 1 MiB (`F_SETPIPE_SZ`, no privilege
//! needed up to `/proc/sys/fs/pipe-max-size`), more than a boot prints, so QEMU's
//! writes never wait for qflow.
//!
//! qflow makes `console.in` and `console.out` before QEMU starts and opens them
//! without blocking (the output for reading, non-blocking, so a read ends at EOF
//! once QEMU has exited; the input read-write, so opening it needs no reader
//! yet); QEMU opens both read-write.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

/// How much guest output the FIFO holds before QEMU's writes would wait.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// qflow's ends of the console: what the guest prints, and what it is typed.
pub struct ConsolePipe {
    output: File,
    input: File,
}

impl ConsolePipe {
    /// Make `BASE.in` and `BASE.out` in `dir` and open qflow's ends; the path
    /// QEMU's `-chardev pipe,path=` takes is returned beside them.
    pub fn create(dir: &Path) -> anyhow::Result<(ConsolePipe, PathBuf)> {
        let base = dir.join("console");
        let (fifo_in, fifo_out) = (base.with_extension("in"), base.with_extension("out"));
        for fifo in [&fifo_in, &fifo_out] {
            let c = CString::new(fifo.as_os_str().as_bytes())?;
            // SAFETY: `c` is a valid NUL-terminated path for the call.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot make the FIFO {}", fifo.display()));
            }
        }
        let output = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo_out)
            .with_context(|| format!("cannot open {}", fifo_out.display()))?;
        let input = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo_in)
            .with_context(|| format!("cannot open {}", fifo_in.display()))?;
        // SAFETY: F_SETPIPE_SZ on a FIFO this process owns; failure leaves 64 KiB.
        unsafe {
            libc::fcntl(output.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        Ok((ConsolePipe { output, input }, base))
    }

    /// Read what the guest printed, waiting at most `wait`: `Ok(None)` when
    /// nothing came, `Ok(Some(0))` when QEMU has closed the console (it exited).
    pub fn read_timeout(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> std::io::Result<Option<usize>> {
        let mut pfd = libc::pollfd {
            fd: self.output.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            return Ok(None);
        }
        match self.output.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Type `bytes` to the guest.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.input.write_all(bytes)
    }

    /// Another handle on the guest's input (for attached clients).
    pub fn input(&self) -> std::io::Result<File> {
        self.input.try_clone()
    }

    /// A console wired to plain pipes, with the guest's ends: what qflow types
    /// comes out of the first file, what is written to the second is what the
    /// guest printed. For tests that play the guest.
    pub fn pair() -> std::io::Result<(ConsolePipe, File, File)> {
        let (typed_read, typed_write) = os_pipe()?;
        let (printed_read, printed_write) = os_pipe()?;
        // SAFETY: setting O_NONBLOCK on a pipe end this process owns.
        unsafe {
            libc::fcntl(printed_read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        Ok((
            ConsolePipe {
                output: printed_read,
                input: typed_write,
            },
            typed_read,
            printed_write,
        ))
    }
}

/// A pipe's (read, write) ends.
fn os_pipe() -> std::io::Result<(File, File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_holds_far_more_single_byte_writes_than_a_boot_prints() {
        let dir = crate::boot::machine::SocketDir::new().unwrap();
        let (mut console, base) = ConsolePipe::create(dir.path()).unwrap();
        // QEMU's side: the output FIFO opened read-write, written one byte at a time.
        let mut qemu = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(base.with_extension("out"))
            .unwrap();
        for _ in 0..200_000 {
            qemu.write_all(b"x").expect("the FIFO filled before 200 KB");
        }
        let mut buf = [0u8; 65536];
        let n = console
            .read_timeout(&mut buf, Duration::from_secs(1))
            .unwrap();
        assert!(matches!(n, Some(k) if k > 0), "{n:?}");
        drop(qemu);
        let mut total = n.unwrap();
        while let Some(k) = console
            .read_timeout(&mut buf, Duration::from_secs(1))
            .unwrap()
        {
            if k == 0 {
                break;
            }
            total += k;
        }
        assert_eq!(total, 200_000, "every byte, then EOF once QEMU closed it");
    }
}
