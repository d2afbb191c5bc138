//! While progress lines are drawn, the terminal does not echo Ctrl-C as `^C`.
//!
//! indicatif pads every line it draws to the terminal's width, so the cursor
//! waits at the right edge; the terminal's own `^C` echo then wraps to a new
//! row before qflow hears of the signal, and clearing the progress lines
//! (which counts rows up from the cursor) misses the top one: a stale line is
//! left behind. With `ECHOCTL` off the terminal echoes the control character
//! raw, which moves no cursor, and the lines clear exactly. The setting is
//! restored when the lines are gone (end of the run, or exit on a second
//! signal); qflow's own `interrupted:` line is the feedback instead of `^C`.
//!
//! Imports nothing of the engine.

use std::sync::Mutex;

/// The terminal settings before [`quiet`], to put back.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Stop the terminal on stderr from echoing control characters as `^X`.
pub fn quiet() {
    let mut saved = SAVED.lock().unwrap();
    if saved.is_some() {
        return;
    }
    // SAFETY: tcgetattr/tcsetattr on fd 2 with a termios owned here.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(2, &mut t) != 0 || t.c_lflag & libc::ECHOCTL == 0 {
            return;
        }
        let original = t;
        t.c_lflag &= !libc::ECHOCTL;
        if libc::tcsetattr(2, libc::TCSANOW, &t) == 0 {
            *saved = Some(original);
        }
    }
}

/// Put the terminal's echo back as it was before [`quiet`].
pub fn restore() {
    if let Some(original) = SAVED.lock().unwrap().take() {
        // SAFETY: tcsetattr on fd 2 with the settings read from it.
        unsafe {
            libc::tcsetattr(2, libc::TCSANOW, &original);
        }
    }
}
