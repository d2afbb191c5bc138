//! Putting the same bytes at a second name without copying them.
//!
//! Order of preference: a reflink (`FICLONE`: a new inode sharing the data extents, on btrfs,
//! XFS, bcachefs), then a hard link (same inode; ext4's case), then a real copy (other
//! filesystem, or the inode's link count is exhausted). A multi-GiB disk image therefore never
//! moves through memory when it enters or leaves the object store. Filesystems found not to
//! support reflinks are remembered per device, so the failed ioctl is paid once.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;

/// How `link_or_copy` placed the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A copy-on-write clone: a separate inode sharing the data.
    Reflink,
    /// A hard link: the same inode.
    Hardlink,
    /// A byte copy (the fallback).
    Copy,
}

/// Devices on which `FICLONE` failed; reflinks are not tried there again.
static NO_REFLINK: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// Makes `to` (which must not exist) hold the same bytes as the regular file `from`:
/// reflink, else hard link, else copy.
pub fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<LinkKind> {
    let meta =
        std::fs::metadata(from).with_context(|| format!("cannot stat `{}`", from.display()))?;
    if try_reflink(from, to, meta.dev())? {
        return Ok(LinkKind::Reflink);
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => return Ok(LinkKind::Hardlink),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cannot link to `{}`: it exists", to.display()));
        }
        // EXDEV, EMLINK, EPERM (filesystems without hard links): fall through to a copy.
        Err(_) => {}
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy `{}` to `{}`", from.display(), to.display()))?;
    Ok(LinkKind::Copy)
}

/// Whether reflinks already failed on the filesystem holding `path`.
pub(crate) fn reflink_unsupported(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    NO_REFLINK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&meta.dev()))
}

fn try_reflink(from: &Path, to: &Path, dev: u64) -> anyhow::Result<bool> {
    if NO_REFLINK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(&dev))
    {
        return Ok(false);
    }
    let src =
        std::fs::File::open(from).with_context(|| format!("cannot open `{}`", from.display()))?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("cannot create `{}`", to.display()))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open
    // for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        let perms = src.metadata()?.permissions();
        dst.set_permissions(perms)
            .with_context(|| format!("cannot chmod `{}`", to.display()))?;
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    drop(dst);
    let _ = std::fs::remove_file(to);
    // Unsupported here for good (not a transient failure): remember the device.
    if let Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS | libc::EXDEV) =
        err.raw_os_error()
    {
        NO_REFLINK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashSet::new)
            .insert(dev);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_or_copy_shares_bytes_and_refuses_an_existing_target() {
        let dir = crate::test_dir("link_or_copy");
        let a = dir.join("a");
        std::fs::write(&a, b"payload").unwrap();
        let kind = link_or_copy(&a, &dir.join("b")).unwrap();
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"payload");
        if kind == LinkKind::Hardlink {
            let ia = std::fs::metadata(&a).unwrap().ino();
            assert_eq!(std::fs::metadata(dir.join("b")).unwrap().ino(), ia);
        }
        assert_ne!(kind, LinkKind::Copy, "same directory: never a byte copy");
        assert!(link_or_copy(&a, &dir.join("b")).is_err());
    }
}
