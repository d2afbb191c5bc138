//! The identity of external tools (`qemu-img --version`), which enters step keys.
//!
//! Running every tool's `--version` on each apply would cost tens of
//! milliseconds per tool, so identities are cached by the resolved binary's
//! path, size, mtime and inode: an upgrade changes those and the version is
//! asked again.
//!
//! Imports `step` (for [`Tool`]).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::step::Tool;

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Known {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    identity: String,
}

/// Tool identities, cached in a JSON file of the cache directory.
pub struct ToolIdentities {
    path: PathBuf,
    known: BTreeMap<String, Known>,
    dirty: bool,
}

impl ToolIdentities {
    /// The identities remembered at `path` (none if unreadable).
    pub fn load(path: &Path) -> Self {
        let known = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        ToolIdentities {
            path: path.to_path_buf(),
            known,
            dirty: false,
        }
    }

    /// The identity of `tool`, or an error naming the package to install.
    pub fn identify(&mut self, tool: &Tool) -> anyhow::Result<String> {
        let Some(bin) = which(&tool.program) else {
            bail!(
                "`{}` is not installed or not on PATH; install the Debian package `{}` (apt-get install {})",
                tool.program,
                tool.package,
                tool.package
            );
        };
        let meta = std::fs::metadata(&bin)?;
        let key = format!("{}\0{}", bin.display(), tool.version_args.join(" "));
        let stamp = (
            meta.size(),
            meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            meta.ino(),
        );
        if let Some(k) = self.known.get(&key)
            && (k.size, k.mtime_ns, k.ino) == stamp
        {
            return Ok(k.identity.clone());
        }
        let identity = ask_version(&bin, &tool.version_args)
            .with_context(|| format!("cannot ask `{}` for its version", tool.program))?;
        self.known.insert(
            key,
            Known {
                size: stamp.0,
                mtime_ns: stamp.1,
                ino: stamp.2,
                identity: identity.clone(),
            },
        );
        self.dirty = true;
        Ok(identity)
    }

    /// Write the identities back if any changed.
    pub fn save(&mut self) -> anyhow::Result<()> {
        if self.dirty {
            qflow_cache::write_atomic(&self.path, &serde_json::to_vec_pretty(&self.known)?)?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// First non-empty line of the program's version output (stdout, else stderr).
fn ask_version(bin: &Path, args: &[String]) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{} {}` did not answer within 20 s",
                bin.display(),
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = String::new();
    let mut err = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out)?;
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    let text = if out.trim().is_empty() { err } else { out };
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown version")
        .to_string())
}

/// Find `program` on PATH (or as given when it contains a slash).
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}
