//! The run's CPU slots as one GNU make jobserver, shared by the run loop and
//! every `make` that may grow into idle slots.
//!
//! A step whose kind says its make may share the run's slots
//! ([`Step::shares_run_slots`](crate::step::Step::shares_run_slots): the kernel)
//! takes one slot in the schedule, like any one-slot step, and its make joins
//! this jobserver: each further recipe takes a token from the pipe and puts it
//! back when done. The run loop takes its tokens from the same pipe: a step
//! starts only once it holds a token for each slot it takes. When it ends, its
//! tokens go first to the steps that can start then, and only the rest back
//! to the pipe: a make is always blocked reading the pipe for its next recipe,
//! so a token written there would be its, and a step that became ready when
//! another ended (`system` after `base`) would wait for make's recipes to
//! race the run loop's reader. So a kernel build alone uses every slot; a step
//! that becomes ready when another ends starts at once, and one that becomes
//! ready otherwise waits for a recipe to finish, then runs beside the make,
//! which goes on with one slot fewer. The total never exceeds the
//! run's slots: tokens in the pipe, tokens held for running steps and tokens a
//! make took always add up to them.
//!
//! The pipe's ends are inherited by every program (no close-on-exec), so make
//! finds them without a hook between fork and exec (`process.rs` starts
//! programs with `posix_spawn`); only a sharing step's programs are told about
//! them (`MAKEFLAGS`). The run loop reads through a second, non-blocking
//! description of the read end, so asking never blocks and never changes make's
//! view of the pipe; when no token is there, a helper thread waits for one in a
//! blocking read (beside make's own) and wakes the run loop. A token a killed
//! make never gave back is put back once no sharing step runs.
//!
//! Imports nothing of the engine.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

/// One run's slots as a jobserver pipe.
pub struct JobSlots {
    write: File,
    /// The read end as make sees it (blocking), named in `MAKEFLAGS`.
    read_fd: RawFd,
    /// The run loop's own non-blocking description of the read end.
    nonblocking: File,
    /// Tokens taken from the pipe and not yet given to a step.
    pool: Arc<Mutex<usize>>,
    /// A helper thread is waiting for a token.
    waiting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    requests: Sender<()>,
    /// Keeps the read end open.
    _read: Arc<OwnedFd>,
}

impl JobSlots {
    /// A pipe holding `slots` tokens; `wake` is called whenever a helper thread
    /// took a token the run loop waited for.
    pub fn new(slots: usize, wake: impl Fn() + Send + 'static) -> std::io::Result<JobSlots> {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills `fds` with two new descriptors, owned below.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let nonblocking = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", read.as_raw_fd()))?;
        (&write).write_all(&vec![b'+'; slots])?;
        let read = Arc::new(read);
        let (requests, asked) = channel::<()>();
        let pool: Arc<Mutex<usize>> = Arc::default();
        let (waiting, stop): (Arc<AtomicBool>, Arc<AtomicBool>) = Default::default();
        {
            let (pool, waiting, stop, read) = (
                Arc::clone(&pool),
                Arc::clone(&waiting),
                Arc::clone(&stop),
                Arc::clone(&read),
            );
            std::thread::spawn(move || {
                // SAFETY: a borrowed view of the read end, kept open by `read`; never closed here.
                let mut pipe =
                    std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(read.as_raw_fd()) });
                while asked.recv().is_ok() {
                    let mut byte = [0u8];
                    let got = loop {
                        match pipe.read(&mut byte) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            other => break other,
                        }
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(1) = got {
                        *pool.lock().unwrap() += 1;
                    }
                    waiting.store(false, Ordering::SeqCst);
                    wake();
                }
            });
        }
        Ok(JobSlots {
            write,
            read_fd: read.as_raw_fd(),
            nonblocking,
            pool,
            waiting,
            stop,
            requests,
            _read: read,
        })
    }

    /// Take `n` tokens for a step that starts, if they are there now; else keep
    /// what was found for the next try, have a helper wait for one more, and
    /// return `false`.
    pub fn take(&self, n: usize) -> bool {
        let mut pool = self.pool.lock().unwrap();
        while *pool < n {
            let mut byte = [0u8];
            match (&self.nonblocking).read(&mut byte) {
                Ok(1) => *pool += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        if *pool >= n {
            *pool -= n;
            return true;
        }
        drop(pool);
        if !self.waiting.swap(true, Ordering::SeqCst) {
            let _ = self.requests.send(());
        }
        false
    }

    /// Write `n` tokens to the pipe.
    pub fn give(&self, n: usize) {
        let _ = (&self.write).write_all(&vec![b'+'; n]);
    }

    /// A step that held `n` tokens ended: they are kept for the next step the
    /// run loop starts, and go back to the pipe (`release_idle`) only when none
    /// is waiting. Written to the pipe at once, they would go to a make blocked
    /// reading it before the run loop could ask.
    pub fn keep(&self, n: usize) {
        *self.pool.lock().unwrap() += n;
    }

    /// Put the tokens taken for steps that did not start back into the pipe,
    /// where a make may use them.
    pub fn release_idle(&self) {
        let n = std::mem::take(&mut *self.pool.lock().unwrap());
        if n > 0 {
            self.give(n);
        }
    }

    /// With no sharing step running, the pipe and the pool must hold `free`
    /// tokens: put back what a killed make took with it.
    pub fn top_up(&self, free: usize) {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD stores the bytes waiting in the pipe in `queued`.
        if unsafe { libc::ioctl(self.read_fd, libc::FIONREAD, &mut queued) } != 0 {
            return;
        }
        let have = queued.max(0) as usize + *self.pool.lock().unwrap();
        if have < free {
            self.give(free - have);
        }
    }

    /// `MAKEFLAGS` for a make that joins the jobserver, as make itself writes it
    /// for a sub-make (with `-jN`: kbuild hands `-j` on to its tools' sub-make).
    pub fn makeflags(&self, slots: usize) -> String {
        let (r, w) = (self.read_fd, self.write.as_raw_fd());
        format!("-j{slots} --jobserver-fds={r},{w} --jobserver-auth={r},{w}")
    }
}

impl Drop for JobSlots {
    fn drop(&mut self) {
        // A helper waiting in a read gets a token and sees it should stop.
        self.stop.store(true, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            self.give(1);
        }
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_a_make_holds_are_waited_for_and_the_waiter_is_woken() {
        let (tx, rx) = channel();
        let slots = JobSlots::new(2, move || {
            let _ = tx.send(());
        })
        .unwrap();
        assert!(slots.take(1));
        assert!(slots.take(1));
        assert!(!slots.take(1), "two slots, both held");
        // A "make" gives one back: the helper takes it and wakes the run loop.
        slots.give(1);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("woken");
        assert!(slots.take(1));
        // A make killed while holding a token: topped up once no sharing step runs.
        slots.release_idle();
        slots.top_up(2);
        assert!(slots.take(2));
        assert!(slots.makeflags(2).starts_with("-j2 --jobserver-fds="));
    }
}
