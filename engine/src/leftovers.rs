//! Processes a killed qflow left behind, found and stopped by the next apply.
//!
//! Ctrl-C kills each step's whole process group and cgroup. But after `kill -9`
//! of qflow, or a power cut of its terminal, the programs its steps started and
//! their own children (a compiler under make, QEMU under a shell, a guest tool
//! under virt-customize) live on, still writing into a build tree or holding an
//! image. So every process a step starts carries
//! [`TOKEN_VAR`] in its environment, a value unique to that run of that step,
//! also written in the step's started mark. The next apply on the cache, once
//! it holds the cache lock (so no live run owns a mark), reads the marks, finds
//! the processes whose environment holds one of their tokens, and kills them
//! before anything runs. The environment is inherited through fork, exec, new
//! sessions and process groups, which is what a process group or a parent pid
//! cannot follow; a process started with `env -i` drops it, which is why,
//! where the host allows it, each step run also has a cgroup (`cgroup.rs`),
//! killed here first.
//!
//! Imports `cgroup`.

use qflow_cache::Hash;

/// The environment variable holding a step run's token.
pub const TOKEN_VAR: &str = "QFLOW_RUN_TOKEN";

/// A token for one run of step `key` by this qflow process.
pub fn token_for(key: &Hash) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{nanos}", key.short(), std::process::id())
}

/// The note a started mark keeps: the step's name and its run token.
pub fn mark_note(step: &str, token: &str) -> String {
    format!("token={token} step={step}")
}

/// (token, step) from a started mark's note.
pub fn parse_note(note: &str) -> Option<(&str, &str)> {
    let rest = note.strip_prefix("token=")?;
    let (token, step) = rest.split_once(" step=")?;
    (!token.is_empty()).then_some((token, step))
}

/// Kill every process of the step runs `tokens`: first everything in their
/// cgroups (`cgroup.rs`, which also catches a `setsid` child started with
/// `env -i`), then every process whose environment holds one of the tokens.
/// Returns (pid, program name) of each one killed. Scans `/proc` again until a
/// scan finds none, so a process forked during a scan is caught by the next one.
pub fn kill_holders(tokens: &[&str]) -> Vec<(i32, String)> {
    let mut killed: Vec<(i32, String)> = tokens
        .iter()
        .flat_map(|t| crate::cgroup::kill_leftover(t))
        .collect();
    for _ in 0..5 {
        let found = signal_matching(tokens, libc::SIGKILL);
        if found.is_empty() {
            break;
        }
        killed.extend(found);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

/// Send `signal` (0: only look) to every live process whose environment holds
/// one of `tokens`. Returns (pid, program name) of each one signalled.
pub fn signal_matching(tokens: &[&str], signal: i32) -> Vec<(i32, String)> {
    // A blank token would match every process that has the variable at all.
    let needles: Vec<Vec<u8>> = tokens
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| format!("{TOKEN_VAR}={t}").into_bytes())
        .collect();
    let me = std::process::id() as i32;
    let mut hit = Vec::new();
    if needles.is_empty() {
        return hit;
    }
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return hit;
    };
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A zombie's environment reads empty: it never matches.
        let matches = std::fs::read(entry.path().join("environ")).is_ok_and(|environ| {
            environ
                .split(|b| *b == 0)
                .any(|var| needles.iter().any(|n| var == n.as_slice()))
        });
        if matches {
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            // SAFETY: plain kill(2) on a pid we just read.
            if unsafe { libc::kill(pid, signal) } == 0 {
                hit.push((pid, name));
            }
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grandchild_carrying_the_token_is_killed_and_others_are_not() {
        let key = Hash::of_bytes(b"leftovers test");
        let token = token_for(&key);
        let other = format!("{token}-other");
        let start = |t: &str| {
            std::process::Command::new("sh")
                .args(["-c", "sleep 300 & wait"])
                .env(TOKEN_VAR, t)
                .spawn()
                .unwrap()
        };
        let mut ours = start(&token);
        let mut theirs = start(&other);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let killed = kill_holders(&[&token]);
        let names: Vec<&str> = killed.iter().map(|(_, n)| n.as_str()).collect();
        assert!(names.contains(&"sleep"), "{killed:?}");
        assert!(names.contains(&"sh"), "{killed:?}");
        assert!(ours.wait().is_ok());
        assert_eq!(
            theirs.try_wait().unwrap(),
            None,
            "another token's process died"
        );
        kill_holders(&[&other]);
        theirs.wait().unwrap();
        assert_eq!(
            parse_note(&mark_note("kernel", &token)),
            Some((token.as_str(), "kernel"))
        );
        assert_eq!(parse_note("pid 1 at 2"), None);
    }
}
