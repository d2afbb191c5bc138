//! `DirHandle`: an open directory whose entries are looked up relative to it.
//!
//! A no-op apply asks three questions per step (is the record there, is the
//! output tree there, does `out/<step>` point at it). Asked by absolute path,
//! most of each syscall is the kernel walking the same six directories again;
//! asked relative to an open directory (`fstatat`, `readlinkat`), it walks one
//! or two. The answers are the same as `Path::is_file`, `Path::is_dir` and
//! `fs::read_link`, which is what the tests below check.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// An open directory (`O_PATH`: no read permission needed, nothing is read).
#[derive(Debug)]
pub struct DirHandle {
    fd: OwnedFd,
}

impl DirHandle {
    /// Open the directory at `path`.
    pub fn open(path: &Path) -> std::io::Result<DirHandle> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: `c` is a valid NUL-terminated path; the fd returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(DirHandle {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The mode of `rel` (following symlinks), as `stat` gives it.
    fn mode(&self, rel: &Path) -> Option<libc::mode_t> {
        let c = CString::new(rel.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid fd, valid C string, `st` is written by the kernel on success.
        let r = unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), 0) };
        // SAFETY: `fstatat` returned 0, so `st` is initialised.
        (r == 0).then(|| unsafe { st.assume_init() }.st_mode & libc::S_IFMT)
    }

    /// The directory's own (dev, inode, mtime ns, ctime ns): adding, removing
    /// or replacing an entry changes the times.
    pub fn change_stamp(&self) -> Option<(u64, u64, i64, i64)> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid fd; `st` is written by the kernel on success.
        let r = unsafe { libc::fstat(self.fd.as_raw_fd(), st.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        // SAFETY: `fstat` returned 0, so `st` is initialised.
        let st = unsafe { st.assume_init() };
        Some((
            st.st_dev,
            st.st_ino,
            st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        ))
    }

    /// `dir.join(rel).is_file()`.
    pub fn is_file(&self, rel: &Path) -> bool {
        self.mode(rel) == Some(libc::S_IFREG)
    }

    /// `dir.join(rel).is_dir()`.
    pub fn is_dir(&self, rel: &Path) -> bool {
        self.mode(rel) == Some(libc::S_IFDIR)
    }

    /// `fs::read_link(dir.join(rel)).ok()`.
    pub fn read_link(&self, rel: &Path) -> Option<PathBuf> {
        let c = CString::new(rel.as_os_str().as_bytes()).ok()?;
        let mut buf = [0u8; libc::PATH_MAX as usize];
        // SAFETY: valid fd, valid C string, `buf` is writable for its whole length.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        // A target that fills the buffer may be cut short: treat it as unknown.
        if n < 0 || n as usize >= buf.len() {
            return None;
        }
        Some(PathBuf::from(OsStr::from_bytes(&buf[..n as usize])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_the_path_functions_do() {
        let d = std::env::temp_dir().join(format!("qflow-dirhandle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/file"), "x").unwrap();
        std::os::unix::fs::symlink("sub", d.join("link")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        let h = DirHandle::open(&d).unwrap();
        for rel in [
            "sub",
            "sub/file",
            "link",
            "link/file",
            "dangling",
            "missing",
        ] {
            let p = d.join(rel);
            let rel = Path::new(rel);
            assert_eq!(h.is_file(rel), p.is_file(), "{rel:?}");
            assert_eq!(h.is_dir(rel), p.is_dir(), "{rel:?}");
            assert_eq!(h.read_link(rel), std::fs::read_link(&p).ok(), "{rel:?}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
