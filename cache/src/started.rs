//! Started marks: which steps began and have not ended, kept so that a `kill -9`
//! of qflow mid-step is seen by the next run.
//!
//! A mark is written before a step runs and cleared when it ends; one that
//! survives means the run was killed while the step ran: the next run does not
//! trust a record or lock entry for that key, runs the step again, and stops
//! the processes the note names (the engine's `leftovers.rs`).
//!
//! The marks are not one file per step: creating and deleting a file per step
//! costs most of a run of small steps on a filesystem where each create steps
//! past every inode deleted lately (ext4 without a journal). Each `Cache` keeps
//! one append-only journal, `tmp/started/j-<nanos>-<pid>`, created at its first
//! mark, with one line per event: `<nanos> + <step key> <note>` when a step
//! starts, `<nanos> - <step key>` when it ends. Each line is one `write` of an
//! `O_APPEND` file, not fsynced: the marks matter only while this machine keeps
//! running (a power cut leaves no process behind, and the record a step writes
//! is durable before its mark is cleared). The open marks are the replay of
//! every journal's lines in time order; a line cut short by a kill is ignored
//! (a missing end keeps its step marked: it runs again). With the workspace
//! lock held, [`Cache::compact_started`] folds the journals of ended runs into
//! one holding only the open marks, or removes them all when none is open, so
//! a run that ends normally leaves nothing behind. A file named by a bare step
//! key is a mark written by an older qflow, read the same way.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;

use crate::{Cache, Hash};

/// This cache handle's own journal, opened at its first mark.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    file: Option<(PathBuf, std::fs::File)>,
    /// Keys this handle saw open (started here, or found open on disk before
    /// it cleared one): only those need an end line.
    open: Option<std::collections::HashSet<Hash>>,
}

/// The last event of one key: when (ns), and `Some(note)` for a start, `None`
/// for an end. Kept small: a compaction after 10,000 steps folds 10,000 keys,
/// at the end of an apply.
type Last = (u64, Option<Box<str>>);

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// One journal line, parsed: (nanos, step key, `Some(note)` for a start, `None` for an end).
fn parse_line(line: &str) -> Option<(u128, &str, Option<&str>)> {
    let mut parts = line.splitn(4, ' ');
    let nanos = parts.next()?.parse().ok()?;
    let sign = parts.next()?;
    let key = parts.next()?;
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let start = match sign {
        "+" => Some(parts.next().unwrap_or("")),
        "-" => None,
        _ => return None,
    };
    Some((nanos, key, start))
}

/// Folds the whole lines of one journal into each key's last event (the latest
/// nanos; of equal nanos, the later line). `None` when the file is not UTF-8.
fn fold_journal(file: std::fs::File, last: &mut HashMap<Hash, Last>) -> Option<()> {
    // Folded apart first: a file found not UTF-8 part way counts for nothing.
    // A step writes two lines of about 100 bytes: room for its key at once.
    let size = file.metadata().map_or(0, |m| m.len());
    let mut own: HashMap<Hash, Last> = HashMap::with_capacity((size / 200) as usize);
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            break;
        }
        let text = std::str::from_utf8(&line).ok()?;
        // Only whole lines count: a last line without its newline was cut short.
        let Some((nanos, key, start)) = text.strip_suffix('\n').and_then(parse_line) else {
            continue;
        };
        let Ok(key) = key.parse::<Hash>() else {
            continue;
        };
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        match own.get_mut(&key) {
            Some(seen) if seen.0 > nanos => {}
            Some(seen) => *seen = (nanos, start.map(Box::from)),
            None => {
                own.insert(key, (nanos, start.map(Box::from)));
            }
        }
    }
    if last.is_empty() {
        *last = own;
        return Some(());
    }
    for (key, event) in own {
        match last.get_mut(&key) {
            Some(seen) if seen.0 > event.0 => {}
            Some(seen) => *seen = event,
            None => {
                last.insert(key, event);
            }
        }
    }
    Some(())
}

impl Cache {
    fn started_dir(&self) -> PathBuf {
        self.dir("tmp").join("started")
    }

    /// The files of `tmp/started` and the open marks they hold: (step key in hex, note),
    /// sorted by key.
    ///
    /// The journals are folded line by line into each key's last event, in the
    /// order of their times: a run's journal of 20,000 lines is never held whole.
    fn read_started(&self) -> (Vec<PathBuf>, BTreeMap<String, String>) {
        let mut files = Vec::new();
        let mut last = HashMap::new();
        let mut open = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(self.started_dir()) else {
            return (files, open);
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with("j-") {
                let Ok(file) = std::fs::File::open(&path) else {
                    continue;
                };
                if fold_journal(file, &mut last).is_none() {
                    continue;
                }
            } else if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                // An older qflow's mark: "pid .. at ..\n<note>\n".
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let note = text.lines().nth(1).unwrap_or("").to_string();
                open.insert(name, note);
            } else {
                // Some other program's file, or a compaction cut short: not ours to judge.
                if !name.starts_with(crate::atomic::TMP_PREFIX) {
                    continue;
                }
                // Read as before: one that cannot be read is left alone.
                if std::fs::read_to_string(&path).is_err() {
                    continue;
                }
            }
            files.push(path);
        }
        // A key's last event decides it, over an older qflow's mark too.
        for (key, (_, start)) in last {
            let key = key.to_hex();
            match start {
                Some(note) => {
                    open.insert(key, note.into());
                }
                None => {
                    open.remove(&key);
                }
            }
        }
        (files, open)
    }

    /// Appends one line to this handle's journal, creating it at the first line.
    fn append_started(&self, journal: &mut Journal, line: &str) -> anyhow::Result<()> {
        if journal.file.is_none() {
            let dir = self.started_dir();
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            let path = dir.join(format!("j-{:020}-{}", now_nanos(), std::process::id()));
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .with_context(|| format!("cannot create `{}`", path.display()))?;
            journal.file = Some((path, file));
        }
        let (path, file) = journal.file.as_mut().expect("journal open");
        // One `write` per line: a kill leaves whole lines, or a last one cut short.
        file.write_all(line.as_bytes())
            .with_context(|| format!("cannot write `{}`", path.display()))
    }

    /// Marks step `key` as started; until `clear_started`, `was_interrupted` is true.
    /// `note` is one line the caller reads back with [`Cache::started_marks`]
    /// (the engine keeps the token that finds the run's processes there).
    pub fn mark_started(&self, key: &Hash, note: &str) -> anyhow::Result<()> {
        let note = note.replace('\n', " ");
        let mut journal = self.started.lock().unwrap();
        let line = format!("{} + {} {note}\n", now_nanos(), key.to_hex());
        self.append_started(&mut journal, &line)?;
        journal
            .open
            .get_or_insert_with(Default::default)
            .insert(*key);
        Ok(())
    }

    /// The started marks present: (step key in hex, the caller's note).
    pub fn started_marks(&self) -> Vec<(String, String)> {
        self.read_started().1.into_iter().collect()
    }

    /// The step keys (hex) marked started and not ended.
    pub fn started_keys(&self) -> std::collections::HashSet<String> {
        self.read_started().1.into_keys().collect()
    }

    /// Clears the started mark of step `key` (nothing is written when it has none).
    pub fn clear_started(&self, key: &Hash) -> anyhow::Result<()> {
        let mut journal = self.started.lock().unwrap();
        if journal.open.is_none() {
            let on_disk = self.read_started().1;
            journal.open = Some(
                on_disk
                    .keys()
                    .filter_map(|k| k.parse::<Hash>().ok())
                    .collect(),
            );
        }
        if !journal.open.as_mut().expect("loaded").remove(key) {
            return Ok(());
        }
        let line = format!("{} - {}\n", now_nanos(), key.to_hex());
        self.append_started(&mut journal, &line)
    }

    /// Whether step `key` started and never finished (qflow was killed mid-step).
    pub fn was_interrupted(&self, key: &Hash) -> bool {
        self.read_started().1.contains_key(&key.to_hex())
    }

    /// Folds the started journals into one holding only the open marks, or removes
    /// them all when none is open. Call only with the workspace lock held, when no
    /// other handle of this process writes marks: the journals read are then all of
    /// runs that ended (or of this handle, whose marks stay the same).
    pub fn compact_started(&self) -> anyhow::Result<()> {
        let mut journal = self.started.lock().unwrap();
        let (files, open) = self.read_started();
        if files.is_empty() {
            return Ok(());
        }
        if !open.is_empty() {
            let nanos = now_nanos();
            let text: String = open
                .iter()
                .map(|(key, note)| format!("{nanos} + {key} {note}\n"))
                .collect();
            let path = self
                .started_dir()
                .join(format!("j-{nanos:020}-{}", std::process::id()));
            crate::atomic::write_replace(&path, text.as_bytes())?;
        }
        for f in &files {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove `{}`", f.display()));
                }
                _ => {}
            }
        }
        // This handle's journal is gone: its next line starts a new one.
        journal.file = None;
        journal.open = Some(open.keys().filter_map(|k| k.parse::<Hash>().ok()).collect());
        Ok(())
    }
}

/// The journal a `Cache` handle shares with its clones.
pub(crate) type SharedJournal = std::sync::Arc<Mutex<Journal>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn files(c: &Cache) -> usize {
        std::fs::read_dir(c.started_dir()).unwrap().count()
    }

    #[test]
    fn a_started_mark_survives_until_cleared() {
        let (_dir, c) = crate::test_cache("started");
        let key = Hash::of_bytes(b"k");
        assert!(!c.was_interrupted(&key));
        c.mark_started(&key, "token=t1").unwrap();
        assert_eq!(c.started_marks(), [(key.to_hex(), "token=t1".to_string())]);
        // A new process opening the cache (after a kill -9) sees the mark.
        let again = Cache::open(c.root()).unwrap();
        assert!(again.was_interrupted(&key));
        again.clear_started(&key).unwrap();
        assert!(!c.was_interrupted(&key));
        c.clear_started(&key).unwrap();
        assert!(!again.was_interrupted(&key));
    }

    #[test]
    fn a_thousand_steps_share_one_journal_file_removed_once_all_ended() {
        let (_dir, c) = crate::test_cache("journal");
        for i in 0..1000u32 {
            let key = Hash::of_bytes(&i.to_le_bytes());
            c.mark_started(&key, &format!("token=t{i} step=s{i}"))
                .unwrap();
            c.clear_started(&key).unwrap();
        }
        assert_eq!(files(&c), 1, "one journal for the whole run");
        assert!(c.started_marks().is_empty());
        c.compact_started().unwrap();
        assert_eq!(files(&c), 0, "a run whose steps all ended leaves nothing");
    }

    #[test]
    fn the_marks_of_killed_runs_are_folded_into_one_file_and_kept_until_their_step_ends() {
        let (_dir, c) = crate::test_cache("fold");
        let (a, b) = (Hash::of_bytes(b"a"), Hash::of_bytes(b"b"));
        // Two runs killed mid-step, each leaving its journal.
        for key in [a, b] {
            let killed = Cache::open(c.root()).unwrap();
            killed.mark_started(&key, "token=x step=s").unwrap();
        }
        // A line cut short by the kill counts for nothing.
        let cut = c.started_dir().join(format!("j-{:020}-1", now_nanos()));
        std::fs::write(&cut, format!("1 - {}", a.to_hex())).unwrap();
        let next = Cache::open(c.root()).unwrap();
        next.compact_started().unwrap();
        assert_eq!(files(&c), 1);
        assert!(next.was_interrupted(&a) && next.was_interrupted(&b));
        next.clear_started(&a).unwrap();
        next.compact_started().unwrap();
        assert!(!next.was_interrupted(&a) && next.was_interrupted(&b));
        assert_eq!(files(&c), 1);
        next.clear_started(&b).unwrap();
        next.compact_started().unwrap();
        assert_eq!(files(&c), 0);
    }

    #[test]
    fn an_older_qflows_mark_file_still_counts() {
        let (_dir, c) = crate::test_cache("old_mark");
        let key = Hash::of_bytes(b"old");
        std::fs::write(
            c.started_dir().join(key.to_hex()),
            "pid 1 at 2\ntoken=t step=s\n",
        )
        .unwrap();
        assert_eq!(c.started_marks(), [(key.to_hex(), "token=t step=s".into())]);
        c.clear_started(&key).unwrap();
        c.compact_started().unwrap();
        assert!(!c.was_interrupted(&key));
        assert_eq!(files(&c), 0);
    }
}
