//! `qflow.lock`: what the last apply used and produced, per step.
//!
//! It sits beside the workflow and is what a paper's artifact appendix cites:
//! per step its key, the digests of its inputs, its upstream outputs, the
//! identities of its tools, its fields, the hashes of its outputs, and the
//! facts a kind noted (a resolved download checksum, installed package
//! versions). Everything is sorted, so an apply that changes nothing rewrites
//! it byte-identical. Secrets never enter it: `${{ env.X }}` values and a kind's
//! extra key material appear only as blake3 digests.
//!
//! A run that changes a few steps of a large lock neither parses nor
//! re-serializes the rest: [`LockText`] finds each step's entry in the bytes
//! qflow wrote (one entry per line block at a fixed indentation), parses only
//! the entries asked for, and writes the new lock by splicing the changed
//! entries' text between the unchanged bytes: the same bytes the full writer
//! makes. A lock not laid out as qflow writes it (edited by hand) is parsed
//! and written in full.
//!
//! Imports `lock_spill` (where a run keeps its new entries' text).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use qflow_cache::Hash;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use crate::lock_source::LockSource;
use crate::lock_spill::Spill;

/// The lock file's format version.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LockFile {
    /// [`LOCK_VERSION`] when written.
    pub version: u32,
    /// The workflow's name.
    pub workflow: String,
    /// Each step as last completed, by name.
    pub steps: BTreeMap<String, LockedStep>,
}

/// One step as last completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LockedStep {
    /// The step's `kind:`.
    pub kind: String,
    /// The kind's schema version.
    pub schema_version: u32,
    /// The step key (hex).
    pub key: String,
    /// The interpolated fields.
    pub fields: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Vars the step reads, with their values.
    pub vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// `env:` values, as digests (they may hold secrets).
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Input label → digest (hex).
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Upstream step → output (hex).
    pub upstream: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Tool → identity.
    pub tools: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The digest of extra key material, if any.
    pub extra: Option<String>,
    /// The output tree (hex).
    pub output: String,
    #[serde(default)]
    /// Output file → content hash (hex).
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Facts the step noted (resolved checksums, package versions).
    pub notes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// The step's metric values: `metric` for a step that runs once,
    /// `run/metric` for each run of a matrix (`qflow verify` compares them).
    pub metrics: BTreeMap<String, f64>,
}

impl LockFile {
    /// Read `path`; a missing or unreadable lock is empty.
    pub fn read(path: &Path) -> LockFile {
        std::fs::read(path)
            .ok()
            .map(|b| LockFile::parse(&b))
            .unwrap_or_default()
    }

    /// Parse the bytes of a lock file; an invalid one is empty.
    pub fn parse(bytes: &[u8]) -> LockFile {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// Write `path` atomically, only if its bytes change.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        if std::fs::read(path).ok().as_deref() == Some(text.as_bytes()) {
            return Ok(());
        }
        qflow_cache::write_atomic(path, text.as_bytes())
    }
}

/// A lock file's bytes as qflow wrote them, with where each step's entry is.
///
/// Made and asked without an allocation per step (a lock of 10,000 steps is
/// megabytes): the names are kept in one string and found by binary search,
/// since qflow writes them sorted.
#[derive(Debug, Clone)]
pub struct LockText {
    /// Where the lock's text is: held text is checked as UTF-8 when split, text in
    /// the file one entry at a time as it is read.
    text: TextSource,
    /// The step names, one after the other, each as its entry's name says.
    names: String,
    /// Per step, in the file's (sorted) order: where its name is in `names`
    /// and the byte range of its entry, from the indentation before its quoted
    /// name to its closing brace.
    entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

/// Indentation of a step's name in a lock qflow wrote.
const ENTRY_INDENT: &str = "    ";

/// What ends a step's entry in a lock qflow wrote: its closing brace on a line of
/// its own at the name's indentation (what the entry holds is indented deeper).
const ENTRY_CLOSE: &str = "\n    }";

impl LockText {
    /// Find the step entries of `bytes` if they are laid out as [`LockFile::write`]
    /// writes them and name exactly the steps of `index` (the bytes' index, so
    /// known to parse); the bytes back otherwise. An apply splits the lock it read
    /// from its file ([`LockText::split_in`]); this held text is what that is
    /// checked against.
    #[cfg(test)]
    pub fn split(bytes: Vec<u8>, index: &LockIndex) -> Result<LockText, Vec<u8>> {
        let text = String::from_utf8(bytes).map_err(|e| e.into_bytes())?;
        match Self::locate(text.as_bytes(), index) {
            Some((names, entries)) => Ok(LockText {
                text: TextSource::Held(text),
                names,
                entries,
            }),
            None => Err(text.into_bytes()),
        }
    }

    /// The step entries of the lock in `source`, as [`LockText::split`] finds them,
    /// read a piece at a time: the file is never held whole, entries are read from
    /// it when asked. Only the names are checked as UTF-8 here; an entry is when it
    /// is read.
    pub fn split_from(source: Arc<LockSource>, index: &LockIndex) -> Option<LockText> {
        let reader = std::io::BufReader::with_capacity(64 << 10, source.reader());
        let (names, entries) = Self::locate(reader, index)?;
        source.unchanged().ok()?;
        Some(LockText {
            text: TextSource::File(source),
            names,
            entries,
        })
    }

    /// The step names and entry ranges of [`LockText::split`], found line by line:
    /// the head [`LockText::head`] writes, then each entry (`    "name": {` up to
    /// the first line that starts with `    }`, then `,` for another entry), then
    /// `  }` and `}`.
    #[allow(clippy::type_complexity)]
    fn locate(
        mut text: impl std::io::BufRead,
        index: &LockIndex,
    ) -> Option<(
        String,
        Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    )> {
        let head = Self::head(index.version, &index.workflow);
        let mut line = Vec::new();
        // The next line, with its newline; none at the end or on an error.
        let mut next = |line: &mut Vec<u8>| {
            line.clear();
            text.read_until(b'\n', line).ok().filter(|&n| n > 0)
        };
        let mut at = 0;
        while at < head.len() {
            let n = next(&mut line)?;
            if !head.as_bytes()[at..].starts_with(&line) {
                return None;
            }
            at += n;
        }
        let mut names = String::new();
        let mut entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
            Vec::with_capacity(index.steps.len());
        let close = &ENTRY_CLOSE.as_bytes()[1..];
        loop {
            // `    "name": {`
            let start = at;
            at += next(&mut line)?;
            let first = std::str::from_utf8(line.strip_suffix(b"\n")?).ok()?;
            let name = Self::entry_name(first, &mut names, &entries, index)?;
            // What the entry holds is indented deeper: it ends at `    }`.
            loop {
                let n = next(&mut line)?;
                if line.starts_with(close) {
                    entries.push((name, start..at + close.len()));
                    at += n;
                    break;
                }
                at += n;
            }
            match &line[close.len()..] {
                b",\n" => continue,
                b"\n" => break,
                _ => return None,
            }
        }
        // `  }` and `}`, and nothing after.
        for end in [&b"  }\n"[..], b"}\n"] {
            next(&mut line)?;
            if line != end {
                return None;
            }
        }
        if next(&mut line).is_some() || entries.len() != index.steps.len() {
            return None;
        }
        Some((names, entries))
    }

    /// [`LockText::locate`] on the bytes whole, as it was written first: what the
    /// line by line reading is checked against.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    fn locate_whole(
        text: &[u8],
        index: &LockIndex,
    ) -> Option<(
        String,
        Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    )> {
        let head = Self::head(index.version, &index.workflow);
        let body = text.strip_prefix(head.as_bytes())?;
        let body = body.strip_suffix(b"\n  }\n}\n")?;
        let base = head.len();
        let mut names = String::new();
        let mut entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
            Vec::with_capacity(index.steps.len());
        // One searcher for every entry's end (a lock of 10,000 steps is 6 MB).
        let close = memchr::memmem::Finder::new(ENTRY_CLOSE);
        let mut at = 0;
        while at < body.len() {
            // `    "name": {` ... `    }` then `,\n` or the end.
            let line_end = memchr::memchr(b'\n', &body[at..]).map_or(body.len(), |e| at + e);
            let line = std::str::from_utf8(&body[at..line_end]).ok()?;
            let name = Self::entry_name(line, &mut names, &entries, index)?;
            let end = close.find(&body[line_end..])? + line_end + ENTRY_CLOSE.len();
            entries.push((name, base + at..base + end));
            at = match body[end..].strip_prefix(b",\n") {
                Some(_) => end + 2,
                None if end == body.len() => end,
                None => return None,
            };
        }
        if entries.len() != index.steps.len() {
            return None;
        }
        Some((names, entries))
    }

    /// The name an entry's first line (`    "name": {`) gives, appended to `names`:
    /// its range there, when it is a step of `index` and comes after the entries
    /// found before it (a lock names its steps sorted, each once).
    fn entry_name(
        line: &str,
        names: &mut String,
        entries: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
        index: &LockIndex,
    ) -> Option<std::ops::Range<usize>> {
        let quoted = line.strip_prefix(ENTRY_INDENT)?.strip_suffix(": {")?;
        let from = names.len();
        match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
            // A name JSON writes as it is (no escapes, no control characters).
            Some(plain) if !plain.contains(['\\', '"']) && !plain.contains(char::is_control) => {
                names.push_str(plain)
            }
            _ => names.push_str(&serde_json::from_str::<String>(quoted).ok()?),
        }
        let name = from..names.len();
        if !index.steps.contains_key(&names[name.clone()]) {
            return None;
        }
        if let Some((last, _)) = entries.last()
            && names[last.clone()] >= names[name.clone()]
        {
            return None;
        }
        Some(name)
    }

    fn head(version: u32, workflow: &str) -> String {
        let workflow = serde_json::to_string(workflow).unwrap_or_default();
        format!("{{\n  \"version\": {version},\n  \"workflow\": {workflow},\n  \"steps\": {{\n")
    }

    fn name(&self, i: usize) -> &str {
        &self.names[self.entries[i].0.clone()]
    }

    /// The text of entry `i`, from its indentation to its closing brace.
    fn entry_text(&self, i: usize) -> Option<Cow<'_, str>> {
        let range = self.entries[i].1.clone();
        match &self.text {
            TextSource::Held(text) => Some(Cow::Borrowed(&text[range])),
            TextSource::File(source) => {
                source.unchanged().ok()?;
                String::from_utf8(source.read_range(range).ok()?)
                    .ok()
                    .map(Cow::Owned)
            }
        }
    }

    /// Whether step `name`'s entry is written exactly as `entry` would be: both
    /// texts hashed a piece at a time, neither parsed nor held (the entry of a
    /// step below 10,000 others is 0.8 MB of text, 2 MB parsed). `None` when the
    /// lock has no entry for it or cannot be read again. An entry that means the
    /// same but is written otherwise (edited by hand) counts as changed, and is
    /// written again in the lock's own form.
    pub fn entry_written_as(&self, name: &str, entry: &EntryView<'_>) -> Option<bool> {
        let i = (self.entries).partition_point(|(n, _)| &self.names[n.clone()] < name);
        if i == self.entries.len() || self.name(i) != name {
            return None;
        }
        let range = self.entries[i].1.clone();
        let mut old = blake3::Hasher::new();
        if let TextSource::File(source) = &self.text {
            source.unchanged().ok()?;
        }
        self.copy(range, &mut old).ok()?;
        Some(Hash(*old.finalize().as_bytes()) == entry.text_digest(name))
    }

    /// Step `name`'s entry, parsed alone.
    pub fn entry(&self, name: &str) -> Option<LockedStep> {
        let i = (self.entries).partition_point(|(n, _)| &self.names[n.clone()] < name);
        if i == self.entries.len() || self.name(i) != name {
            return None;
        }
        let text = self.entry_text(i)?;
        let (_, value) = text.split_once(": ")?;
        serde_json::from_str(value).ok()
    }

    /// Copy the old text in `range` to `out`.
    fn copy(
        &self,
        range: std::ops::Range<usize>,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        match &self.text {
            TextSource::Held(text) => out.write_all(&text.as_bytes()[range]),
            TextSource::File(source) => source.copy_range(range, out),
        }
    }

    /// The text [`LockFile::write`] would write for this lock with the steps
    /// `keep` rejects removed and `changes` put in, made of the unchanged
    /// entries' bytes and the changed ones' text; `None` when no step is left
    /// (the full writer handles that).
    pub fn splice(
        &self,
        version: u32,
        workflow: &str,
        keep: impl Fn(&str) -> bool,
        changes: &[(&str, &NewEntry)],
    ) -> anyhow::Result<Option<String>> {
        if !self.splice_has_steps(&keep, changes) {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.splice_into(version, workflow, keep, changes, &mut out)?;
        Ok(Some(String::from_utf8(out)?))
    }

    /// Whether [`LockText::splice`] would write any step: `None` from it otherwise.
    pub fn splice_has_steps(
        &self,
        keep: impl Fn(&str) -> bool,
        changes: &[(&str, &NewEntry)],
    ) -> bool {
        !changes.is_empty() || (0..self.entries.len()).any(|i| keep(self.name(i)))
    }

    /// [`LockText::splice`] written straight to `out`, so the new lock of a large
    /// workflow is never held whole in memory (6 MB at 10,000 steps). Call it
    /// when [`LockText::splice_has_steps`].
    pub fn splice_into(
        &self,
        version: u32,
        workflow: &str,
        keep: impl Fn(&str) -> bool,
        changes: &[(&str, &NewEntry)],
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        // The unchanged entries are copied from the old file: it must still be what
        // was read (qflow replaces a lock by a rename; this file stays as it was).
        if let TextSource::File(source) = &self.text {
            source.unchanged()?;
        }
        out.write_all(Self::head(version, workflow).as_bytes())?;
        let mut first = true;
        let mut put = |out: &mut dyn std::io::Write, text: Piece<'_>| {
            if !std::mem::take(&mut first) {
                out.write_all(b",\n")?;
            }
            match text {
                Piece::New(text) => out.write_all(text.as_bytes()),
                Piece::Old(range) => self.copy(range, out),
            }
        };
        // Unchanged entries next to each other are copied in one piece: in the
        // old text they are already joined by `,\n`, as the writer joins them.
        let mut run: Option<std::ops::Range<usize>> = None;
        let flush =
            |out: &mut dyn std::io::Write,
             run: &mut Option<std::ops::Range<usize>>,
             put: &mut dyn FnMut(&mut dyn std::io::Write, Piece<'_>) -> std::io::Result<()>|
             -> std::io::Result<()> {
                match run.take() {
                    Some(r) => put(out, Piece::Old(r)),
                    None => Ok(()),
                }
            };
        // Both are sorted by name: merged, a changed entry in place of the old one.
        let mut changed = changes.iter().peekable();
        for i in 0..self.entries.len() {
            let name = self.name(i);
            while let Some((_, entry)) = changed.next_if(|(n, _)| *n <= name) {
                flush(out, &mut run, &mut put)?;
                put(out, Piece::New(&entry.text()?))?;
            }
            if keep(name) && !is_changed(changes, name) {
                let bytes = self.entries[i].1.clone();
                run = Some(match run {
                    Some(r) => r.start..bytes.end,
                    None => bytes,
                });
            } else {
                flush(out, &mut run, &mut put)?;
            }
        }
        flush(out, &mut run, &mut put)?;
        for (_, entry) in changed {
            put(out, Piece::New(&entry.text()?))?;
        }
        out.write_all(b"\n  }\n}\n")
    }
}

/// Where a lock's text is: held, or in the file it was read from (`lock_source.rs`).
#[derive(Debug, Clone)]
enum TextSource {
    Held(String),
    File(Arc<LockSource>),
}

/// A piece of a spliced lock: a changed entry's text, or old text by its range.
enum Piece<'a> {
    New(&'a str),
    Old(std::ops::Range<usize>),
}

/// Whether step `name` is among `changes` (sorted by name).
pub fn is_changed(changes: &[(&str, &NewEntry)], name: &str) -> bool {
    changes.binary_search_by(|(n, _)| (*n).cmp(name)).is_ok()
}

/// A run's new lock entries, by step index: a first apply of 50,000 steps
/// keeps one per step until it writes the lock, and a name beside each in a
/// sorted map cost 140 bytes a step. Sorted by name only to be written.
#[derive(Debug, Default)]
pub struct LockChanges {
    by_step: Vec<Option<NewEntry>>,
    len: usize,
}

impl LockChanges {
    /// Step `i` (of `n` steps) gets the new entry `entry`, or none (its entry is
    /// the lock's already).
    pub fn set(&mut self, i: usize, n: usize, entry: Option<NewEntry>) {
        if entry.is_none() && self.by_step.is_empty() {
            return;
        }
        if self.by_step.is_empty() {
            self.by_step.resize_with(n, || None);
        }
        let had = std::mem::replace(&mut self.by_step[i], entry);
        self.len = self.len + usize::from(self.by_step[i].is_some()) - usize::from(had.is_some());
    }

    /// Step `i`'s new entry, if it has one.
    pub fn get(&self, i: usize) -> Option<&NewEntry> {
        self.by_step.get(i)?.as_ref()
    }

    /// How many steps have a new entry.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no step has one.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The new entries with their steps' names (`name(i)` of step `i`), sorted
    /// by name, as [`LockText::splice`] takes them.
    pub fn sorted<'a>(&'a self, name: impl Fn(usize) -> &'a str) -> Vec<(&'a str, &'a NewEntry)> {
        let mut sorted: Vec<(&str, &NewEntry)> = (self.by_step.iter().enumerate())
            .filter_map(|(i, e)| Some((name(i), e.as_ref()?)))
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted
    }
}

/// A step's new lock entry, kept as the text the lock file will hold: a run
/// keeps one per step that ran until it writes the lock, and the text takes a
/// third of the memory of the parsed entry (10,000 of them were 20 MB). Its key
/// and output are read from the text, not kept beside it. A run puts the text in
/// its spill file (`lock_spill.rs`) and keeps only where it is.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// `    "name": {…}` as [`LockFile::write`] writes it inside the lock.
    text: EntryText,
    /// Where the entry's value starts in the text.
    value_at: u32,
    /// Where its key and its output are in the text.
    key_at: std::ops::Range<u32>,
    output_at: std::ops::Range<u32>,
}

/// Where a [`NewEntry`]'s text is.
#[derive(Debug, Clone)]
enum EntryText {
    Held(String),
    /// Put in a run's spill file (`lock_spill.rs`) until the lock is written.
    Spilled {
        spill: std::sync::Arc<Spill>,
        at: u64,
        len: u32,
    },
}

/// Writes what it is given to an entry's text, each new line indented as a lock
/// entry's.
struct Indenting<W>(W);

impl<W: std::io::Write> std::io::Write for Indenting<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut lines = bytes.split(|&b| b == b'\n');
        if let Some(first) = lines.next() {
            self.0.write_all(first)?;
        }
        for line in lines {
            self.0.write_all(b"\n")?;
            self.0.write_all(ENTRY_INDENT.as_bytes())?;
            self.0.write_all(line)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `name` written as a JSON string.
fn json_len(name: &str) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, name).expect("a name is a JSON string");
    count.0
}

/// An entry's text bigger than this goes to the run's spill as it is made.
const HELD_UP_TO: usize = 256 << 10;

/// Where an entry's text goes as it is made: held, until it outgrows
/// [`HELD_UP_TO`] while a spill is at hand; then appended to the spill. The entry
/// of a step below 50,000 others is 5 MB of text, made at the end of the run.
struct EntrySink<'s> {
    held: Vec<u8>,
    spill: Option<&'s std::sync::Arc<Spill>>,
    appending: Option<crate::lock_spill::Appending<'s>>,
}

impl std::io::Write for EntrySink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.push(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl EntrySink<'_> {
    fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.held.extend_from_slice(bytes);
        if self.held.len() > HELD_UP_TO
            && let Some(spill) = self.spill
        {
            let appending = self.appending.get_or_insert_with(|| spill.append());
            appending.write(&self.held)?;
            self.held.clear();
        }
        Ok(())
    }
}

/// A lock entry as it is written, borrowing what it holds: [`LockedStep`] but for
/// `inputs` and `upstream`, which may be the step key's material itself. The
/// last step of a fan-in below 10,000 steps names each with its output: made
/// into a [`LockedStep`] first, those names and hex digests were 1.1 MB more,
/// at the end of the run.
#[derive(Serialize)]
pub struct EntryView<'a> {
    kind: &'a str,
    schema_version: u32,
    key: &'a str,
    fields: &'a serde_json::Value,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    vars: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Digests::is_empty")]
    inputs: Digests<'a>,
    #[serde(skip_serializing_if = "Digests::is_empty")]
    upstream: Digests<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tools: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra: Option<&'a str>,
    output: &'a str,
    outputs: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    notes: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metrics: &'a BTreeMap<String, f64>,
}

/// Name → digest pairs of an entry, written as a JSON object of hex strings.
#[derive(Clone, Copy)]
enum Digests<'a> {
    /// As a [`LockedStep`] holds them.
    Hex(&'a BTreeMap<String, String>),
    /// Sorted by name, each name once (a step key's material).
    Hashes(&'a [(String, Hash)]),
    /// The same, names borrowed.
    Named(&'a [(&'a str, Hash)]),
}

impl Digests<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Digests::Hex(m) => m.is_empty(),
            Digests::Hashes(v) => v.is_empty(),
            Digests::Named(v) => v.is_empty(),
        }
    }

    /// Whether `hex` holds the same pairs.
    fn same_as(&self, hex: &BTreeMap<String, String>) -> bool {
        match self {
            Digests::Hex(m) => *m == hex,
            Digests::Hashes(v) => same_pairs(v.iter().map(|(n, h)| (n.as_str(), h)), hex),
            Digests::Named(v) => same_pairs(v.iter().map(|(n, h)| (*n, h)), hex),
        }
    }
}

impl Serialize for Digests<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Digests::Hex(m) => m.serialize(s),
            Digests::Hashes(v) => s.collect_map(v.iter().map(|(n, h)| (n, h.to_hex()))),
            Digests::Named(v) => s.collect_map(v.iter().map(|(n, h)| (n, h.to_hex()))),
        }
    }
}

/// Whether `pairs` (sorted by name) are the pairs of `hex`.
fn same_pairs<'p>(
    pairs: impl ExactSizeIterator<Item = (&'p str, &'p Hash)>,
    hex: &BTreeMap<String, String>,
) -> bool {
    pairs.len() == hex.len() && (pairs.zip(hex)).all(|((n, h), (hn, hh))| n == hn && h.is_hex(hh))
}

impl<'a> EntryView<'a> {
    /// `entry` as written.
    pub fn of(entry: &'a LockedStep) -> EntryView<'a> {
        EntryView {
            kind: &entry.kind,
            schema_version: entry.schema_version,
            key: &entry.key,
            fields: &entry.fields,
            vars: &entry.vars,
            env: &entry.env,
            inputs: Digests::Hex(&entry.inputs),
            upstream: Digests::Hex(&entry.upstream),
            tools: &entry.tools,
            extra: entry.extra.as_deref(),
            output: &entry.output,
            outputs: &entry.outputs,
            notes: &entry.notes,
            metrics: &entry.metrics,
        }
    }

    /// `entry` (its `inputs` and `upstream` left empty) with these input and
    /// upstream digests, each sorted by name.
    pub fn with_digests(
        entry: &'a LockedStep,
        inputs: &'a [(String, Hash)],
        upstream: &'a [(&'a str, Hash)],
    ) -> EntryView<'a> {
        debug_assert!(entry.inputs.is_empty() && entry.upstream.is_empty());
        EntryView {
            inputs: Digests::Hashes(inputs),
            upstream: Digests::Named(upstream),
            ..EntryView::of(entry)
        }
    }

    /// This entry's text in the lock, as step `name`'s: `    "name": {` to its
    /// closing `    }`, written to `out` as it is made (indented as it is written:
    /// making the text, then an indented copy, then the entry's text was three of
    /// them at once).
    fn write_text(&self, name: &str, mut out: impl std::io::Write) -> std::io::Result<()> {
        out.write_all(ENTRY_INDENT.as_bytes())?;
        // Strings, string-keyed maps and numbers: nothing here JSON cannot write.
        serde_json::to_writer(&mut out, name).expect("a name is a JSON string");
        out.write_all(b": ")?;
        serde_json::to_writer_pretty(Indenting(out), self).map_err(|e| {
            assert!(e.is_io(), "a lock entry is plain JSON: {e}");
            std::io::Error::other(e)
        })
    }

    /// The blake3 of [`EntryView::write_text`] as step `name`'s.
    fn text_digest(&self, name: &str) -> Hash {
        let mut hasher = blake3::Hasher::new();
        self.write_text(name, &mut hasher)
            .expect("hashing cannot fail");
        Hash(*hasher.finalize().as_bytes())
    }

    /// Whether `old` is this entry.
    pub fn same_as(&self, old: &LockedStep) -> bool {
        self.kind == old.kind
            && self.schema_version == old.schema_version
            && self.key == old.key
            && *self.fields == old.fields
            && *self.vars == old.vars
            && *self.env == old.env
            && self.inputs.same_as(&old.inputs)
            && self.upstream.same_as(&old.upstream)
            && *self.tools == old.tools
            && self.extra == old.extra.as_deref()
            && self.output == old.output
            && *self.outputs == old.outputs
            && *self.notes == old.notes
            && *self.metrics == old.metrics
    }
}

impl NewEntry {
    /// Step `name`'s entry `entry`, as the lock will hold it.
    pub fn of(name: &str, entry: &LockedStep) -> NewEntry {
        NewEntry::of_view(name, &EntryView::of(entry))
    }

    /// Step `name`'s entry `entry`, as the lock will hold it.
    pub fn of_view(name: &str, entry: &EntryView<'_>) -> NewEntry {
        NewEntry::made(name, entry, None).expect("nothing to write but memory")
    }

    /// [`NewEntry::of_view`], its text put in `spill`: appended as it is made
    /// when it is big, else afterwards ([`NewEntry::spilled`]).
    pub fn of_view_in(
        name: &str,
        entry: &EntryView<'_>,
        spill: &std::sync::Arc<Spill>,
    ) -> NewEntry {
        match NewEntry::made(name, entry, Some(spill)) {
            Ok(new) => new.spilled(spill),
            // The spill could not be written: held whole instead.
            Err(_) => NewEntry::of_view(name, entry),
        }
    }

    fn made(
        name: &str,
        entry: &EntryView<'_>,
        spill: Option<&std::sync::Arc<Spill>>,
    ) -> std::io::Result<NewEntry> {
        let mut sink = EntrySink {
            held: Vec::new(),
            spill,
            appending: None,
        };
        let value_at = (ENTRY_INDENT.len() + json_len(name) + 2) as u32;
        entry.write_text(name, &mut sink)?;
        let (Some(spill), Some(mut appending)) = (spill, sink.appending) else {
            let text = String::from_utf8(sink.held).expect("JSON and spaces are UTF-8");
            let key_at = field_at(&text, "key", entry.key);
            let output_at = field_at(&text, "output", entry.output);
            return Ok(NewEntry {
                text: EntryText::Held(text),
                value_at,
                key_at,
                output_at,
            });
        };
        appending.write(&sink.held)?;
        let (at, len) = appending.finish();
        let field_at = |field: &str, value: &str| -> std::io::Result<std::ops::Range<u32>> {
            let needle = format!("\n{ENTRY_INDENT}  \"{field}\": \"");
            let found = spill.find(at, len, needle.as_bytes())?;
            let start = found.expect("a lock entry has its key and output") + needle.len() as u64;
            assert_eq!(
                spill.read(at + start, value.len())?,
                value,
                "a lock entry's `{field}` is plain hex"
            );
            Ok(start as u32..(start as usize + value.len()) as u32)
        };
        Ok(NewEntry {
            key_at: field_at("key", entry.key)?,
            output_at: field_at("output", entry.output)?,
            text: EntryText::Spilled {
                spill: spill.clone(),
                at,
                len: len as u32,
            },
            value_at,
        })
    }

    /// The same entry with its text put in `spill`; held as it was when it cannot be.
    pub fn spilled(self, spill: &std::sync::Arc<Spill>) -> NewEntry {
        let EntryText::Held(text) = &self.text else {
            return self;
        };
        match spill.put(text) {
            Ok(at) => NewEntry {
                text: EntryText::Spilled {
                    spill: spill.clone(),
                    at,
                    len: text.len() as u32,
                },
                ..self
            },
            Err(_) => self,
        }
    }

    /// The entry's text, `    "name": {…}`.
    pub fn text(&self) -> std::io::Result<Cow<'_, str>> {
        self.slice(0..u32::MAX)
    }

    /// The bytes `range` of the text (to its end at most).
    fn slice(&self, range: std::ops::Range<u32>) -> std::io::Result<Cow<'_, str>> {
        match &self.text {
            EntryText::Held(text) => {
                let end = (range.end as usize).min(text.len());
                Ok(Cow::Borrowed(&text[range.start as usize..end]))
            }
            EntryText::Spilled { spill, at, len } => {
                let end = range.end.min(*len);
                let text = spill.read(at + range.start as u64, (end - range.start) as usize)?;
                Ok(Cow::Owned(text))
            }
        }
    }

    /// The step key (hex).
    pub fn key(&self) -> std::io::Result<Cow<'_, str>> {
        self.slice(self.key_at.clone())
    }

    /// The output tree (hex).
    pub fn output(&self) -> std::io::Result<Cow<'_, str>> {
        self.slice(self.output_at.clone())
    }

    /// The entry, parsed back.
    pub fn parsed(&self) -> anyhow::Result<LockedStep> {
        Ok(serde_json::from_str(&self.slice(self.value_at..u32::MAX)?)?)
    }
}

/// Where top-level field `field` of the entry `text` (as [`NewEntry::of`] lays
/// it out: one field a line, indented once more than the entry) holds the
/// string `value`, written without escapes (a hex digest).
fn field_at(text: &str, field: &str, value: &str) -> std::ops::Range<u32> {
    let line = format!("\n{ENTRY_INDENT}  \"{field}\": \"");
    let start = text
        .find(&line)
        .expect("a lock entry has its key and output")
        + line.len();
    let end = start + value.len();
    assert_eq!(
        text.get(start..end),
        Some(value),
        "a lock entry's `{field}` is plain hex"
    );
    start as u32..end as u32
}

impl LockText {
    /// The text of a lock without steps (none to keep: splicing into it writes
    /// the changes alone, as the full writer would).
    pub fn empty() -> LockText {
        LockText {
            text: TextSource::Held(String::new()),
            names: String::new(),
            entries: Vec::new(),
        }
    }
}

/// What a no-op apply needs of the lock: per step, its key and output.
///
/// Parsing the whole lock of 1,000 steps (fields, inputs, outputs) cost more
/// than the rest of a no-op; this reads the same bytes without building any
/// of it. It accepts exactly the files [`LockFile::parse`] accepts (the same
/// fields, required and defaulted alike, of the same JSON types): a lock the
/// full parse rejects as empty is empty here too.
const MEMO_MAGIC: &str = "qflow-lock-index 1";

#[derive(Debug, Clone, Default, PartialEq)]
/// Each step's key and output in a lock file, read without parsing the rest.
pub struct LockIndex {
    /// The lock's format version.
    pub version: u32,
    /// The workflow's name.
    pub workflow: String,
    /// Step name → its [`LockedIds`].
    pub steps: LockSteps,
}

/// Step name → its [`LockedIds`], sorted by name and found by binary search: a
/// map keeps room for up to twice its steps (1.9 MB at 10,000 steps, this 1.2 MB).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockSteps(Vec<(Box<str>, LockedIds)>);

impl LockSteps {
    /// Step `name`'s ids, if it has an entry.
    pub fn get(&self, name: &str) -> Option<&LockedIds> {
        let i = (self.0.binary_search_by(|(n, _)| (**n).cmp(name))).ok()?;
        Some(&self.0[i].1)
    }

    /// Whether step `name` has an entry.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How many steps have an entry.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no step has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each step's name and ids, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LockedIds)> {
        self.0.iter().map(|(n, ids)| (&**n, ids))
    }

    /// Set step `name`'s ids.
    pub fn insert(&mut self, name: String, ids: LockedIds) {
        match self.0.binary_search_by(|(n, _)| (**n).cmp(&name)) {
            Ok(i) => self.0[i].1 = ids,
            Err(i) => self.0.insert(i, (name.into(), ids)),
        }
    }

    /// The steps of `all`, each name once (a name given twice keeps one of its ids:
    /// a lock's JSON object and the memo name each step once).
    fn of(mut all: Vec<(Box<str>, LockedIds)>) -> LockSteps {
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|a, b| a.0 == b.0);
        all.shrink_to_fit();
        LockSteps(all)
    }
}

impl FromIterator<(String, LockedIds)> for LockSteps {
    fn from_iter<I: IntoIterator<Item = (String, LockedIds)>>(all: I) -> LockSteps {
        LockSteps::of(all.into_iter().map(|(n, ids)| (n.into(), ids)).collect())
    }
}

impl std::ops::Index<&str> for LockSteps {
    type Output = LockedIds;
    fn index(&self, name: &str) -> &LockedIds {
        self.get(name).expect("a step of the index")
    }
}

/// A step's key and output as its lock entry names them, or `None` when either is
/// not a hash (an entry edited by hand): such an entry never matches a key.
pub type LockedIds = Option<(Hash, Hash)>;

/// The [`LockedIds`] of an entry's `key` and `output` as written.
pub fn locked_ids(key: &str, output: &str) -> LockedIds {
    Some((key.parse().ok()?, output.parse().ok()?))
}

/// How the memo writes an entry whose key or output is not a hash.
const NOT_A_HASH: &str = "-";

impl LockIndex {
    /// Index the bytes of a lock file; an invalid one is empty.
    pub fn parse(bytes: &[u8]) -> LockIndex {
        let mut json = serde_json::Deserializer::from_slice(bytes);
        Self::parse_with(&mut json)
    }

    /// Index a lock file read from `lock` as it is parsed: neither its bytes nor
    /// its entries are held, only each step's name and ids (a clone's first apply
    /// of a 10,000-step workflow read its 6 MB lock whole and held every entry's
    /// fields in a table beside it). An invalid lock is empty.
    pub fn parse_from(lock: impl std::io::Read) -> LockIndex {
        let mut json = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(
            64 << 10,
            lock,
        ));
        Self::parse_with(&mut json)
    }

    fn parse_with<'de, R: serde_json::de::Read<'de>>(
        json: &mut serde_json::Deserializer<R>,
    ) -> LockIndex {
        let Ok(file) = IndexedFile::deserialize(&mut *json).and_then(|f| json.end().map(|()| f))
        else {
            return LockIndex::default();
        };
        LockIndex {
            version: file.version,
            workflow: file.workflow.into_owned(),
            steps: LockSteps::of(file.steps.0),
        }
    }

    /// The index as a line per step, for a lock file with blake3 `digest`
    /// (see [`LockIndex::from_memo`]); `None` when a name could not be
    /// written that way.
    #[cfg(test)]
    pub fn to_memo(&self, digest: &Hash) -> Option<String> {
        let mut out = Vec::new();
        self.write_memo_to(digest, &mut out).ok()?;
        String::from_utf8(out).ok()
    }

    /// [`LockIndex::to_memo`], written to `out`.
    pub fn write_memo_to(
        &self,
        digest: &Hash,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let steps = (self.steps.iter()).map(|(n, ids)| Ok((n, *ids)));
        Self::write_memo(digest, self.version, &self.workflow, steps, out)
    }

    /// [`LockIndex::to_memo`] of the index with this version, workflow and
    /// steps (name, key and output), written to `out` line by line without
    /// building the index or holding the memo (at 50,000 steps it is 8 MB).
    /// Fails, having written part of it, on a step that fails or on a name
    /// that cannot be memoized (a tab or a newline in it).
    pub fn write_memo<'a>(
        digest: &Hash,
        version: u32,
        workflow: &str,
        steps: impl Iterator<Item = anyhow::Result<(&'a str, LockedIds)>>,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let plain = |s: &str| memchr::memchr2(b'\t', b'\n', s.as_bytes()).is_none();
        let odd = || std::io::Error::other("a name with a tab or a newline is not memoized");
        if !plain(workflow) {
            return Err(odd());
        }
        let mut line = format!("{MEMO_MAGIC}\n{}\n{version}\n{workflow}\n", digest.to_hex());
        for step in steps {
            let (name, ids) = step.map_err(std::io::Error::other)?;
            if !plain(name) {
                return Err(odd());
            }
            line.push_str(name);
            match ids {
                Some((key, output)) => {
                    for hash in [key, output] {
                        line.push('\t');
                        hash.push_hex(&mut line);
                    }
                }
                None => {
                    for _ in 0..2 {
                        line.push('\t');
                        line.push_str(NOT_A_HASH);
                    }
                }
            }
            line.push('\n');
            out.write_all(line.as_bytes())?;
            line.clear();
        }
        out.write_all(line.as_bytes())
    }

    /// The index kept by [`LockIndex::to_memo`], if it was made from a lock
    /// file with blake3 `digest`: the same bytes give the same index, so the
    /// lock need not be parsed again.
    #[cfg(test)]
    pub fn from_memo(text: &str, digest: &Hash) -> Option<LockIndex> {
        Self::read_memo(text.as_bytes(), text.len(), digest)
    }

    /// [`LockIndex::from_memo`] read line by line from `memo`, `len` bytes long (the
    /// memo of a 10,000-step lock is 1.4 MB, and is never held whole).
    pub fn read_memo(
        mut memo: impl std::io::BufRead,
        len: usize,
        digest: &Hash,
    ) -> Option<LockIndex> {
        let mut text = String::new();
        let mut next = |text: &mut String| {
            text.clear();
            memo.read_line(text).ok().filter(|&n| n > 0)?;
            let line: &str = text;
            Some(line.strip_suffix('\n').unwrap_or(line).to_string())
        };
        if next(&mut text)? != MEMO_MAGIC || next(&mut text)? != digest.to_hex() {
            return None;
        }
        let version = next(&mut text)?.parse().ok()?;
        let workflow = next(&mut text)?;
        // A line per step, each at least a name and two hashes long: sized once.
        let mut steps = Vec::with_capacity(len / (2 * 64 + 3));
        loop {
            text.clear();
            if memo.read_line(&mut text).ok()? == 0 {
                break;
            }
            let line = text.strip_suffix('\n').unwrap_or(&text);
            if line.is_empty() {
                continue;
            }
            let mut f = line.split('\t');
            let (name, key, output) = (f.next()?, f.next()?, f.next()?);
            let ids = match (key, output) {
                (NOT_A_HASH, NOT_A_HASH) => None,
                _ => Some((key.parse().ok()?, output.parse().ok()?)),
            };
            steps.push((name.into(), ids));
        }
        let steps = LockSteps::of(steps);
        Some(LockIndex {
            version,
            workflow,
            steps,
        })
    }

    /// The index of a lock already parsed.
    pub fn of(lock: &LockFile) -> LockIndex {
        LockIndex {
            version: lock.version,
            workflow: lock.workflow.clone(),
            steps: lock
                .steps
                .iter()
                .map(|(name, s)| (name.clone(), locked_ids(&s.key, &s.output)))
                .collect(),
        }
    }
}

/// [`LockFile`], field for field, validating without keeping.
#[derive(Deserialize)]
struct IndexedFile<'a> {
    version: u32,
    #[serde(borrow)]
    workflow: Cow<'a, str>,
    steps: IndexedSteps,
}

/// Each step's name and ids, in the file's order, as its entry is read.
struct IndexedSteps(Vec<(Box<str>, LockedIds)>);

impl<'de> Deserialize<'de> for IndexedSteps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IndexedSteps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of lock entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<IndexedSteps, A::Error> {
                let mut steps = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(name) = m.next_key::<Cow<'de, str>>()? {
                    let s: IndexedStep<'de> = m.next_value()?;
                    steps.push((name.into(), locked_ids(&s.key, &s.output)));
                }
                Ok(IndexedSteps(steps))
            }
        }
        d.deserialize_map(V)
    }
}

/// [`LockedStep`], field for field, validating without keeping.
#[derive(Deserialize)]
#[allow(dead_code)]
struct IndexedStep<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    schema_version: u32,
    #[serde(borrow)]
    key: Cow<'a, str>,
    fields: IgnoredAny,
    #[serde(default)]
    vars: Strings,
    #[serde(default)]
    env: Strings,
    #[serde(default)]
    inputs: Strings,
    #[serde(default)]
    upstream: Strings,
    #[serde(default)]
    tools: Strings,
    #[serde(default, borrow)]
    extra: Option<Cow<'a, str>>,
    #[serde(borrow)]
    output: Cow<'a, str>,
    #[serde(default)]
    outputs: Strings,
    #[serde(default)]
    notes: Strings,
}

/// A `BTreeMap<String, String>` checked and dropped.
#[derive(Default)]
struct Strings;

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Strings, A::Error> {
                while m.next_entry::<Cow<'de, str>, Cow<'de, str>>()?.is_some() {}
                Ok(Strings)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_text() -> String {
        let mut lock = LockFile {
            version: LOCK_VERSION,
            workflow: "demo".into(),
            ..Default::default()
        };
        lock.steps.insert(
            "gen".into(),
            LockedStep {
                kind: "command".into(),
                schema_version: 1,
                key: "k1".into(),
                fields: serde_json::json!({"run": ["true"], "n": 1.5}),
                inputs: [("in \"x\"".to_string(), "d1".to_string())].into(),
                extra: Some("e".into()),
                output: "o1".into(),
                ..Default::default()
            },
        );
        serde_json::to_string_pretty(&lock).unwrap()
    }

    #[test]
    fn an_entry_written_from_its_key_material_is_the_entry_written_whole() {
        let h = |b: u8| Hash([b; 32]);
        let inputs = vec![("src".to_string(), h(1)), ("z.txt".to_string(), h(2))];
        let upstream = vec![("a", h(3)), ("b \"q\"", h(4))];
        let partial = LockedStep {
            kind: "command".into(),
            schema_version: 2,
            key: h(9).to_hex(),
            fields: serde_json::json!({"run": ["true"]}),
            vars: [("v".to_string(), "1".to_string())].into(),
            output: h(8).to_hex(),
            outputs: [("out.txt".to_string(), h(7).to_hex())].into(),
            ..Default::default()
        };
        let hex = |v: &[(&str, Hash)]| v.iter().map(|(n, h)| (n.to_string(), h.to_hex())).collect();
        let whole = LockedStep {
            inputs: (inputs.iter())
                .map(|(n, h)| (n.clone(), h.to_hex()))
                .collect(),
            upstream: hex(&upstream),
            ..partial.clone()
        };
        let view = EntryView::with_digests(&partial, &inputs, &upstream);
        let text = |e: &NewEntry| {
            (
                e.text().unwrap().into_owned(),
                e.key().unwrap().into_owned(),
            )
        };
        assert_eq!(
            text(&NewEntry::of_view("s", &view)),
            text(&NewEntry::of("s", &whole))
        );
        assert!(view.same_as(&whole));
        let mut moved = whole.clone();
        moved.upstream.insert("b \"q\"".into(), h(5).to_hex());
        assert!(
            !view.same_as(&moved),
            "another upstream output is another entry"
        );
        moved.upstream = hex(&upstream[..1]);
        assert!(!view.same_as(&moved), "one upstream fewer is another entry");
        assert!(!view.same_as(&partial));
        let none = EntryView::with_digests(&partial, &[], &[]);
        assert!(none.same_as(&partial));
        assert!(!text(&NewEntry::of_view("s", &none)).0.contains("upstream"));
    }

    #[test]
    fn a_big_entry_goes_to_the_spill_as_it_is_made_and_reads_back_the_same() {
        let h = |b: u8| Hash([b; 32]);
        let names: Vec<String> = (0..20_000).map(|i| format!("step-{i:05}")).collect();
        let upstream: Vec<(&str, Hash)> = names.iter().map(|n| (n.as_str(), h(3))).collect();
        let partial = LockedStep {
            kind: "command".into(),
            schema_version: 1,
            key: h(9).to_hex(),
            fields: serde_json::json!({"run": ["true"], "key": "not the entry's"}),
            output: h(8).to_hex(),
            ..Default::default()
        };
        let view = EntryView::with_digests(&partial, &[], &upstream);
        let dir = std::env::temp_dir().join(format!("qflow-big-entry-{}", std::process::id()));
        let spill = std::sync::Arc::new(Spill::create(&dir).unwrap());
        let small = NewEntry::of_view_in("small", &EntryView::of(&partial), &spill);
        let held = NewEntry::of_view("fan-in", &view);
        let streamed = NewEntry::of_view_in("fan-in", &view, &spill);
        assert!(
            held.text().unwrap().len() > HELD_UP_TO,
            "big enough to stream"
        );
        assert!(matches!(streamed.text, EntryText::Spilled { .. }));
        for (a, b) in [
            (&held, &streamed),
            (&NewEntry::of("small", &partial), &small),
        ] {
            assert_eq!(a.text().unwrap(), b.text().unwrap());
            assert_eq!(a.key().unwrap(), h(9).to_hex());
            assert_eq!(b.key().unwrap(), h(9).to_hex());
            assert_eq!(b.output().unwrap(), h(8).to_hex());
            assert_eq!(a.value_at, b.value_at);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_runs_changes_count_each_step_once_and_come_out_sorted_by_name() {
        let names = ["c", "a", "b"];
        let e = |k: &str| {
            let step = LockedStep {
                key: k.into(),
                output: "o".into(),
                ..Default::default()
            };
            NewEntry::of("x", &step)
        };
        let mut changes = LockChanges::default();
        changes.set(1, 3, None);
        assert!(changes.is_empty(), "an unchanged entry is no change");
        changes.set(0, 3, Some(e("k1")));
        changes.set(1, 3, Some(e("k2")));
        changes.set(0, 3, Some(e("k3")));
        assert_eq!(changes.len(), 2, "a step changed twice counts once");
        let sorted = changes.sorted(|i| names[i]);
        let got: Vec<(&str, String)> = (sorted.iter())
            .map(|(n, e)| (*n, e.key().unwrap().into_owned()))
            .collect();
        assert_eq!(got, [("a", "k2".to_string()), ("c", "k3".to_string())]);
        assert!(is_changed(&sorted, "c") && !is_changed(&sorted, "b"));
        changes.set(1, 3, None);
        assert_eq!(changes.len(), 1, "back to the lock's entry");
        assert!(changes.get(1).is_none() && changes.get(0).is_some());
    }

    fn sorted(map: &BTreeMap<String, NewEntry>) -> Vec<(&str, &NewEntry)> {
        map.iter().map(|(n, e)| (n.as_str(), e)).collect()
    }

    #[test]
    fn the_index_holds_each_steps_key_and_output() {
        let text = lock_text();
        let index = LockIndex::parse(text.as_bytes());
        assert_eq!(index, LockIndex::of(&LockFile::parse(text.as_bytes())));
        // `k1` and `o1` are not hashes: the entry never matches a key.
        assert_eq!(index.steps["gen"], None);
        assert_eq!(index.workflow, "demo");
    }

    #[test]
    fn the_index_rejects_exactly_the_locks_the_full_parse_rejects() {
        let good = lock_text();
        let variants = [
            good.clone(),
            good.replace("\"kind\": \"command\"", "\"kind\": 5"),
            good.replace("\"schema_version\": 1", "\"schema_version\": -1"),
            good.replace("\"key\": \"k1\",", ""),
            good.replace("\"output\": \"o1\",", ""),
            good.replace("\"fields\"", "\"fieldz\""),
            good.replace("\"d1\"", "7"),
            good.replace("\"extra\": \"e\"", "\"extra\": null"),
            good.replace("\"extra\": \"e\"", "\"extra\": [1]"),
            good.replace("\"version\": 1", "\"version\": \"1\""),
            good.replace("\"workflow\": \"demo\",", ""),
            good.replace("\"run\"", "\"walk\""),
            format!("{good} x"),
            good[..good.len() / 2].to_string(),
            String::new(),
        ];
        for v in variants {
            let full = LockFile::parse(v.as_bytes());
            assert_eq!(LockIndex::parse(v.as_bytes()), LockIndex::of(&full), "{v}");
            // Read as a stream, a piece at a time, it is indexed the same.
            assert_eq!(
                LockIndex::parse_from(v.as_bytes()),
                LockIndex::of(&full),
                "{v}"
            );
        }
    }

    #[test]
    fn a_spliced_lock_is_byte_for_byte_the_lock_written_in_full() {
        let entry = |key: &str, n: u32| LockedStep {
            kind: "command".into(),
            schema_version: 1,
            key: key.into(),
            fields: serde_json::json!({"run": ["sh", "-c", "echo \"}\n\""], "n": n, "o": {}, "output": "f", "key": "f"}),
            inputs: [("in \"x\"".to_string(), format!("d{n}"))].into(),
            output: format!("o{n}"),
            outputs: [("a/b".to_string(), "h".to_string())].into(),
            ..Default::default()
        };
        let mut lock = LockFile {
            version: LOCK_VERSION,
            workflow: "de\"mo".into(),
            ..Default::default()
        };
        for (i, name) in ["a", "b \"quoted\"", "c", "d"].iter().enumerate() {
            lock.steps.insert(name.to_string(), entry("k", i as u32));
        }
        let dir = std::env::temp_dir().join(format!("qflow-lock-splice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qflow.lock");
        lock.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let index = LockIndex::parse(&bytes);
        let text = LockText::split(bytes.clone(), &index).expect("qflow's own layout");
        assert_eq!(text.entry("b \"quoted\""), Some(entry("k", 1)));
        assert_eq!(text.entry("d"), Some(entry("k", 3)));
        assert_eq!(text.entry("bb"), None);
        // An entry is found the same by the digest of its text exactly when it is
        // the same field by field; a step without an entry has nothing to match.
        for (name, n) in [("a", 0), ("b \"quoted\"", 1), ("d", 3)] {
            let same = entry("k", n);
            assert_eq!(
                text.entry_written_as(name, &EntryView::of(&same)),
                Some(true)
            );
            for other in [entry("k2", n), entry("k", n + 1)] {
                assert!(!EntryView::of(&other).same_as(&same));
                assert_eq!(
                    text.entry_written_as(name, &EntryView::of(&other)),
                    Some(false)
                );
            }
        }
        assert_eq!(
            text.entry_written_as("bb", &EntryView::of(&entry("k", 1))),
            None
        );
        let changes: BTreeMap<String, LockedStep> = [
            ("c".to_string(), entry("k2", 7)),
            ("bb".to_string(), entry("k3", 8)),
            ("0 first".to_string(), entry("k4", 9)),
            ("zz last".to_string(), entry("k5", 10)),
        ]
        .into();
        let new: BTreeMap<String, NewEntry> = (changes.iter())
            .map(|(n, e)| (n.clone(), NewEntry::of(n, e)))
            .collect();
        assert_eq!(new["bb"].parsed().unwrap(), entry("k3", 8));
        assert_eq!(new["bb"].key().unwrap(), "k3");
        assert_eq!(new["bb"].output().unwrap(), "o8");
        // A first lock: the changes alone, as the full writer writes them.
        let first = LockText::empty().splice(LOCK_VERSION, "de\"mo", |_| true, &sorted(&new));
        let only = LockFile {
            version: LOCK_VERSION,
            workflow: "de\"mo".into(),
            steps: changes.clone(),
        };
        only.write(&dir.join("first.lock")).unwrap();
        let written = std::fs::read_to_string(dir.join("first.lock")).unwrap();
        assert_eq!(first.unwrap().unwrap(), written);
        // Put in a spill file, the entries read back and splice the same.
        let spill =
            std::sync::Arc::new(crate::lock_spill::Spill::create(&dir.join("tmp")).unwrap());
        let spilled: BTreeMap<String, NewEntry> = (new.iter())
            .map(|(n, e)| (n.clone(), e.clone().spilled(&spill)))
            .collect();
        assert_eq!(spilled["bb"].parsed().unwrap(), entry("k3", 8));
        assert_eq!(spilled["bb"].key().unwrap(), "k3");
        assert_eq!(spilled["bb"].output().unwrap(), "o8");
        let from_spill =
            LockText::empty().splice(LOCK_VERSION, "de\"mo", |_| true, &sorted(&spilled));
        assert_eq!(from_spill.unwrap().unwrap(), written);
        let spliced = (text.splice(LOCK_VERSION, "de\"mo", |n| n != "d", &sorted(&new)))
            .unwrap()
            .unwrap();
        // Unchanged entries are copied in runs: dropping any of them, or
        // changing one between others, still writes what the full writer writes.
        let names = ["a", "b \"quoted\"", "c", "d"];
        for dropped in names {
            for changed in [None, Some("b \"quoted\""), Some("c")] {
                let new: BTreeMap<String, NewEntry> = (changed.iter())
                    .map(|n| (n.to_string(), NewEntry::of(n, &entry("k9", 9))))
                    .collect();
                let spliced = text.splice(LOCK_VERSION, "de\"mo", |n| n != dropped, &sorted(&new));
                let mut full = lock.clone();
                full.steps.remove(dropped);
                if let Some(n) = changed {
                    full.steps.insert(n.to_string(), entry("k9", 9));
                }
                full.write(&dir.join("full.lock")).unwrap();
                let written = std::fs::read_to_string(dir.join("full.lock")).unwrap();
                assert_eq!(spliced.unwrap().unwrap(), written, "{dropped} {changed:?}");
            }
        }
        lock.steps.remove("d");
        lock.steps.extend(changes);
        lock.write(&path).unwrap();
        assert_eq!(spliced, std::fs::read_to_string(&path).unwrap());
        // Hand-edited (compact) JSON is not split: it is parsed and written in full.
        let compact = serde_json::to_vec(&lock).unwrap();
        assert!(LockText::split(compact.clone(), &LockIndex::parse(&compact)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_read_back_from_its_file_splices_as_the_held_one_until_changed_in_place() {
        let entry = |key: &str| LockedStep {
            kind: "note".into(),
            schema_version: 1,
            key: key.into(),
            output: format!("o-{key}"),
            ..Default::default()
        };
        let mut lock = LockFile {
            version: LOCK_VERSION,
            workflow: "w".into(),
            ..Default::default()
        };
        for name in ["a", "b", "c"] {
            lock.steps.insert(name.into(), entry(name));
        }
        let dir = std::env::temp_dir().join(format!("qflow-lock-in-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qflow.lock");
        lock.write(&path).unwrap();
        let (source, bytes) = LockSource::read(&path).unwrap();
        let index = LockIndex::parse(&bytes);
        let held = LockText::split(bytes, &index).unwrap();
        let in_file = LockText::split_from(Arc::new(source), &index).unwrap();
        assert_eq!(
            (&in_file.names, &in_file.entries),
            (&held.names, &held.entries)
        );
        assert_eq!(in_file.entry("b"), Some(entry("b")));
        let new: BTreeMap<String, NewEntry> =
            [("b".to_string(), NewEntry::of("b", &entry("b2")))].into();
        let splice = |text: &LockText| text.splice(LOCK_VERSION, "w", |n| n != "c", &sorted(&new));
        assert_eq!(splice(&in_file).unwrap(), splice(&held).unwrap());
        // Changed in place by something else than qflow: neither read nor copied.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut text = std::fs::read(&path).unwrap();
        text[0] = b' ';
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &text).unwrap();
        assert_eq!(in_file.entry("b"), None);
        let e = splice(&in_file).unwrap_err();
        assert!(format!("{e:#}").contains("changed on disk"), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_found_line_by_line_are_those_found_in_the_whole_text() {
        let entry = |key: &str| LockedStep {
            kind: "note".into(),
            schema_version: 1,
            key: key.into(),
            output: format!("o-{key}"),
            ..Default::default()
        };
        let mut lock = LockFile {
            version: LOCK_VERSION,
            workflow: "w \"q\"".into(),
            ..Default::default()
        };
        let mut odd = entry("b");
        odd.fields = serde_json::json!({"text": "    }\n  }\n}", "list": [1, {"a": {}}]});
        for (name, e) in [("a", entry("a")), ("b", odd), ("c\u{7f}", entry("c"))] {
            lock.steps.insert(name.into(), e);
        }
        let dir = std::env::temp_dir().join(format!("qflow-lock-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        lock.write(&dir.join("qflow.lock")).unwrap();
        let text = std::fs::read_to_string(dir.join("qflow.lock")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let index = LockIndex::parse(text.as_bytes());
        let whole = LockText::locate_whole(text.as_bytes(), &index);
        assert_eq!(whole.as_ref().map(|(_, e)| e.len()), Some(3));
        // The lock as written, and with each line break dropped, doubled, or
        // followed by a space, and cut after each line.
        let mut variants = vec![text.clone(), format!("{text}\n"), format!("{text} ")];
        for (i, _) in text.match_indices('\n') {
            let (before, after) = text.split_at(i);
            variants.push(format!("{before}{}", &after[1..]));
            variants.push(format!("{before}\n{after}"));
            variants.push(format!("{before}\n {}", &after[1..]));
            variants.push(text[..i + 1].to_string());
        }
        for v in &variants {
            assert_eq!(
                LockText::locate(v.as_bytes(), &index),
                LockText::locate_whole(v.as_bytes(), &index),
                "{v:?}"
            );
        }
    }

    #[test]
    fn the_index_memo_answers_only_for_the_same_bytes() {
        let (k, o) = (Hash::of_bytes(b"key"), Hash::of_bytes(b"output"));
        let text = format!(
            r#"{{"version":1,"workflow":"w","steps":{{"a":{{"kind":"command","schema_version":1,"key":"{}","fields":{{}},"output":"{}"}},"b":{{"kind":"command","schema_version":1,"key":"k1","fields":{{}},"output":"o1"}}}}}}"#,
            k.to_hex(),
            o.to_hex()
        );
        let index = LockIndex::parse(text.as_bytes());
        assert_eq!(index.steps["a"], Some((k, o)));
        assert_eq!(index.steps["b"], None, "not hashes");
        let digest = Hash::of_bytes(text.as_bytes());
        let memo = index.to_memo(&digest).unwrap();
        assert_eq!(LockIndex::from_memo(&memo, &digest), Some(index.clone()));
        assert_eq!(
            LockIndex::from_memo(&memo, &Hash::of_bytes(b"edited")),
            None
        );
        let mut odd = index;
        odd.steps.insert("a\tb".into(), Some((k, o)));
        assert_eq!(
            odd.to_memo(&digest),
            None,
            "a name with a tab is never memoized"
        );
    }
}
