//! The stat cache: git's index idea for input files.
//!
//! `(path, dev, inode, size, mtime_ns, ctime_ns, mode) → blake3`. A file is read
//! again only when one of those changed, or when its entry is "racily clean":
//! the file was modified within [`RACY_WINDOW_NS`] of the moment it was hashed,
//! so a later edit in the same timestamp tick could leave every stat field
//! unchanged (git's racy-git problem). Such entries are re-hashed on the next
//! run, and trusted once they are older than the window.
//!
//! It holds single-file and glob inputs; directory inputs have their own tree
//! index (`tree_index.rs`). The file is a small binary format, read on first
//! use and written atomically at the end of a run only when something changed.
//!
//! Imports nothing of the engine.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use qflow_cache::Hash;

const MAGIC: &[u8] = b"qflow-stat-cache 1\n";
/// Modifications this close to hashing time make an entry racy (covers
/// filesystems with 1 s timestamps and the kernel's coarse clock).
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// What `lstat` says of a file; any change means the content must be read again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (ns).
    pub mtime_ns: i64,
    /// Change time (ns).
    pub ctime_ns: i64,
    /// Mode bits.
    pub mode: u32,
}

impl FileStat {
    /// The stat of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        FileStat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            mode: meta.mode(),
        }
    }
}

/// A directory held open, so files below it are stat'ed by a path relative to it:
/// the kernel walks `src/f1`, not every component of `/home/me/paper/src/f1`
/// (10,000 inputs are 10,000 stats on a no-op).
pub struct DirFd(std::fs::File);

impl DirFd {
    /// Open `dir` (for lookups only: `O_PATH`).
    pub fn open(dir: &Path) -> std::io::Result<DirFd> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .map(DirFd)
    }

    /// `stat` (symlinks followed) of `rel`, relative to the directory.
    pub fn stat(&self, rel: &Path) -> std::io::Result<FileStat> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a zeroed `stat` is a valid value for fstatat to fill in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open for the life of `self`, `name` is a
        // NUL-terminated string and `st` a valid buffer.
        let r = unsafe { libc::fstatat(self.0.as_raw_fd(), name.as_ptr(), &mut st, 0) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(crate::tree_walk::file_stat(&st))
    }
}

impl FileStat {
    /// Bytes in the on-disk form written by [`FileStat::put`].
    pub(crate) const ENCODED_LEN: usize = 8 * 5 + 4;

    /// Append the little-endian on-disk form (the stat cache and the tree index).
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        for v in [self.dev, self.ino, self.size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.mtime_ns, self.ctime_ns] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.mode.to_le_bytes());
    }

    /// Read back what [`FileStat::put`] wrote.
    pub(crate) fn take(r: &mut &[u8]) -> Option<FileStat> {
        let b = take(r, Self::ENCODED_LEN)?;
        let u = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Some(FileStat {
            dev: u(0),
            ino: u(1),
            size: u(2),
            mtime_ns: u(3) as i64,
            ctime_ns: u(4) as i64,
            mode: u32::from_le_bytes(b[40..44].try_into().unwrap()),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    stat: FileStat,
    hash: Hash,
    racy: bool,
}

/// Path → (stat, hash), persisted between runs.
pub struct StatCache {
    path: PathBuf,
    // Keyed by the path's bytes: hashing a `Path` walks its components, which
    // dominated a no-op over 78k files.
    // Read on first use: a run whose inputs are all proven by tree indexes
    // never reads it.
    entries: std::sync::OnceLock<Entries>,
    dirty: bool,
    /// Saved and trimmed to the entries worth keeping ([`StatCache::save_and_trim`]):
    /// what is learnt afterwards is not kept.
    trimmed: bool,
    /// Small files first learnt in this process, kept out of memory (see [`Journal`]).
    journal: Option<Journal>,
    /// No journal could be made or written: every entry is held in memory.
    without_journal: bool,
}

/// The entries of small files (under [`KEPT_AFTER_TRIM`] bytes) learnt since the
/// cache was read, encoded as in the cache file into an unnamed file beside it
/// (`O_TMPFILE`: nothing is left behind if qflow is killed) and copied into the
/// cache when it is saved. They are not looked up again before then: reading a
/// small file again costs about what looking it up does, and a first apply of
/// 10,000 one-file steps held 2.3 MB of them in memory. Each path is written
/// once (a later sighting, such as the check after the step ran, is dropped:
/// a stale entry only makes the next run read the file).
struct Journal {
    file: std::io::BufWriter<std::fs::File>,
    count: u64,
    seen: std::collections::HashSet<u64>,
}

impl Journal {
    /// An unnamed file in `dir`, or none where the filesystem cannot make one.
    fn create(dir: &Path) -> Option<Journal> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
            .ok()?;
        Some(Journal {
            file: std::io::BufWriter::with_capacity(1 << 16, file),
            count: 0,
            seen: std::collections::HashSet::new(),
        })
    }

    /// Note `entry` of `path`, unless this path was noted before.
    fn note(&mut self, path: &std::ffi::OsStr, entry: &Entry) -> std::io::Result<()> {
        use std::hash::BuildHasher;
        if !self
            .seen
            .insert(BuildPathHasher.hash_one(path.as_encoded_bytes()))
        {
            return Ok(());
        }
        let mut one = Vec::with_capacity(128);
        encode_one(path, entry, &mut one);
        std::io::Write::write_all(&mut self.file, &one)?;
        self.count += 1;
        Ok(())
    }

    /// Copy every noted entry to `out`, then start empty.
    fn drain_into(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        self.file.flush()?;
        let f = self.file.get_mut();
        f.seek(std::io::SeekFrom::Start(0))?;
        std::io::copy(&mut std::io::Read::take(&mut *f, u64::MAX), out)?;
        f.set_len(0)?;
        f.seek(std::io::SeekFrom::Start(0))?;
        self.count = 0;
        self.seen = std::collections::HashSet::new();
        Ok(())
    }
}

/// Files this big or bigger keep their entry in memory once a run's inputs are
/// hashed ([`StatCache::save_and_trim`]): reading a smaller file again costs
/// about what looking it up does.
pub const KEPT_AFTER_TRIM: u64 = 64 * 1024;

/// Path → entry: those read from the file sorted by path and found by binary
/// search (a map keeps room for up to twice its entries: 2.2 MB at 10,000 files,
/// this 1.4 MB), and those learnt since in a map.
#[derive(Default)]
struct Entries {
    read: Vec<(Box<[u8]>, Entry)>,
    learnt: HashMap<OsString, Entry, BuildPathHasher>,
}

impl Entries {
    fn position(&self, path: &std::ffi::OsStr) -> Result<usize, usize> {
        let path = path.as_encoded_bytes();
        self.read.binary_search_by(|(p, _)| (**p).cmp(path))
    }

    fn get(&self, path: &std::ffi::OsStr) -> Option<&Entry> {
        match self.position(path) {
            Ok(i) => Some(&self.read[i].1),
            Err(_) => self.learnt.get(path),
        }
    }

    fn contains_key(&self, path: &std::ffi::OsStr) -> bool {
        self.get(path).is_some()
    }

    fn insert(&mut self, path: OsString, entry: Entry) {
        match self.position(&path) {
            Ok(i) => self.read[i].1 = entry,
            Err(_) => {
                self.learnt.insert(path, entry);
            }
        }
    }

    fn len(&self) -> usize {
        self.read.len() + self.learnt.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn iter(&self) -> impl Iterator<Item = (&std::ffi::OsStr, &Entry)> {
        use std::os::unix::ffi::OsStrExt;
        let read = (self.read.iter()).map(|(p, e)| (std::ffi::OsStr::from_bytes(p), e));
        read.chain(self.learnt.iter().map(|(p, e)| (p.as_os_str(), e)))
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) {
        self.read.retain(|(_, e)| keep(e));
        self.read.shrink_to_fit();
        self.learnt.retain(|_, e| keep(e));
        self.learnt.shrink_to_fit();
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl StatCache {
    /// The cache at `path`, read on first use; a missing or unreadable file
    /// gives an empty cache.
    pub fn load(path: &Path) -> StatCache {
        StatCache {
            path: path.to_path_buf(),
            entries: std::sync::OnceLock::new(),
            dirty: false,
            trimmed: false,
            journal: None,
            without_journal: false,
        }
    }

    fn entries(&self) -> &Entries {
        self.entries.get_or_init(|| {
            std::fs::read(&self.path)
                .ok()
                .and_then(|b| decode(&b))
                .unwrap_or_default()
        })
    }

    /// How many files are remembered.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The known hash of `path` if its stat is unchanged and the entry is not racy.
    pub fn lookup(&self, path: &Path, stat: &FileStat) -> Option<Hash> {
        let e = self.entries().get(path.as_os_str())?;
        (e.stat == *stat && !e.racy).then_some(e.hash)
    }

    /// Record a freshly computed hash; `hashed_at_ns` is when reading started.
    pub fn insert(&mut self, path: PathBuf, stat: FileStat, hash: Hash, hashed_at_ns: i64) {
        if self.trimmed {
            return;
        }
        let racy = stat.mtime_ns >= hashed_at_ns - RACY_WINDOW_NS
            || stat.ctime_ns >= hashed_at_ns - RACY_WINDOW_NS;
        self.entries();
        let entries = self.entries.get_mut().expect("loaded above");
        let entry = Entry { stat, hash, racy };
        if stat.size < KEPT_AFTER_TRIM
            && !self.without_journal
            && !entries.contains_key(path.as_os_str())
        {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            if self.journal.is_none() {
                self.journal = Journal::create(dir);
            }
            if let Some(journal) = &mut self.journal
                && journal.note(path.as_os_str(), &entry).is_ok()
            {
                self.dirty = true;
                return;
            }
            // Without a journal (a failed write, a filesystem without
            // `O_TMPFILE`) entries are held in memory from here on.
            self.journal = None;
            self.without_journal = true;
        }
        entries.insert(path.into_os_string(), entry);
        self.dirty = true;
    }

    /// Hash `files` (path, stat), reading only those the cache cannot vouch for;
    /// reads run in parallel. Returns the hashes in the same order.
    pub fn hash_all(&mut self, files: &[(PathBuf, FileStat)]) -> anyhow::Result<Vec<Hash>> {
        use rayon::prelude::*;
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let started = now_ns();
        let results: Vec<anyhow::Result<(Hash, bool)>> = files
            .par_iter()
            .map(|(p, st)| match self.lookup(p, st) {
                Some(h) => Ok((h, false)),
                None => qflow_cache::hash_file(p).map(|h| (h, true)),
            })
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for ((p, st), r) in files.iter().zip(results) {
            let (h, fresh) = r?;
            if fresh {
                self.insert(p.clone(), *st, h, started);
            }
            out.push(h);
        }
        Ok(out)
    }

    /// [`StatCache::hash_all`] on a cache shared with other threads: it is locked
    /// only to look up and to note what was read, not while files are read. Once
    /// `stop` is set, files not yet read fail with an error.
    pub fn hash_all_shared(
        cache: &std::sync::Mutex<StatCache>,
        files: &[(PathBuf, FileStat)],
        stop: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<Vec<Hash>> {
        use rayon::prelude::*;
        use std::sync::atomic::Ordering;
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let known: Vec<Option<Hash>> = {
            let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            files.iter().map(|(p, st)| cache.lookup(p, st)).collect()
        };
        let started = now_ns();
        let read: Vec<anyhow::Result<Option<Hash>>> = (files.par_iter().zip(&known))
            .map(|((p, _), k)| match k {
                Some(_) => Ok(None),
                None if stop.load(Ordering::Relaxed) => anyhow::bail!("hashing stopped"),
                None => qflow_cache::hash_file(p).map(Some),
            })
            .collect();
        let mut out = Vec::with_capacity(files.len());
        let mut fresh = Vec::new();
        for (((p, st), k), r) in files.iter().zip(known).zip(read) {
            match (k, r?) {
                (Some(h), _) => out.push(h),
                (None, Some(h)) => {
                    fresh.push((p.clone(), *st, h));
                    out.push(h);
                }
                (None, None) => unreachable!("every unknown file was read"),
            }
        }
        if !fresh.is_empty() {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            for (p, st, h) in fresh {
                cache.insert(p, st, h, started);
            }
        }
        Ok(out)
    }

    /// Write the cache atomically if anything changed.
    pub fn save(&mut self) -> anyhow::Result<()> {
        if self.write()? {
            // What the journal held is only in the file now: read again if asked.
            self.entries = std::sync::OnceLock::new();
        }
        Ok(())
    }

    /// Write the cache if anything changed; whether entries of the journal went
    /// into it (they are not in memory).
    fn write(&mut self) -> anyhow::Result<bool> {
        if !self.dirty {
            return Ok(false);
        }
        // A cache only: lost or torn by a power cut, it reads as empty and files are
        // hashed again, so it is not fsynced.
        // Streamed: at 50,000 files the encoded cache is 6 MB, written at the
        // end of a run, when its memory is highest.
        self.entries();
        let entries = self.entries.get().expect("loaded above");
        let journal = &mut self.journal;
        let journaled = journal.as_ref().map_or(0, |j| j.count);
        qflow_cache::write_hint_with(&self.path, |out| {
            encode(entries, journaled, out)?;
            match journal {
                Some(j) => j.drain_into(out),
                None => Ok(()),
            }
        })?;
        self.dirty = false;
        Ok(journaled > 0)
    }

    /// [`StatCache::save`] once every input of a run is hashed, then keep in
    /// memory only what the rest of the run looks up with profit: the entries
    /// of files of [`KEPT_AFTER_TRIM`] bytes or more that are not racy. After
    /// a step ends its inputs are hashed again (`recorder.rs`); a small file is
    /// then read instead of looked up. A run that read the cache holds the
    /// entries of earlier runs (2.3 MB at 10,000 files) and would keep them to
    /// its end. From here on nothing new is
    /// remembered (the file on disk would lose the entries let go), so a racy
    /// file hashed again after its step is hashed once more by the next run.
    /// Nothing is trimmed if the save fails.
    pub fn save_and_trim(&mut self) -> anyhow::Result<()> {
        self.write()?;
        if let Some(entries) = self.entries.get_mut() {
            entries.retain(|e| !e.racy && e.stat.size >= KEPT_AFTER_TRIM);
        }
        self.trimmed = true;
        Ok(())
    }

    /// [`StatCache::save`], then let go of the entries: the end of an apply
    /// needs room for writing the lock, and the entries are read again from the
    /// file if anything asks for them.
    pub fn save_and_forget(&mut self) -> anyhow::Result<()> {
        self.save()?;
        self.entries = std::sync::OnceLock::new();
        Ok(())
    }
}

/// The cache file's header and `entries`; `more` entries follow (the journal's).
fn encode(entries: &Entries, more: u64, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&(entries.len() as u64 + more).to_le_bytes())?;
    let mut one = Vec::with_capacity(512);
    for (p, e) in entries.iter() {
        one.clear();
        encode_one(p, e, &mut one);
        out.write_all(&one)?;
    }
    Ok(())
}

/// One entry as the cache file holds it.
fn encode_one(path: &std::ffi::OsStr, e: &Entry, one: &mut Vec<u8>) {
    let b = path.as_encoded_bytes();
    one.extend_from_slice(&(b.len() as u32).to_le_bytes());
    one.extend_from_slice(b);
    e.stat.put(one);
    one.extend_from_slice(&e.hash.0);
    one.push(u8::from(e.racy));
}

fn decode(b: &[u8]) -> Option<Entries> {
    let mut r = b.strip_prefix(MAGIC)?;
    let n = u64::from_le_bytes(take(&mut r, 8)?.try_into().ok()?) as usize;
    // At most what the bytes can hold: a count read from a damaged file asks for
    // no more room than that.
    let mut read = Vec::with_capacity(n.min(r.len() / (4 + FileStat::ENCODED_LEN + 33)));
    for _ in 0..n {
        let len = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
        let p: Box<[u8]> = take(&mut r, len)?.into();
        let stat = FileStat::take(&mut r)?;
        let hash = Hash(take(&mut r, 32)?.try_into().ok()?);
        let racy = take(&mut r, 1)?[0] != 0;
        read.push((p, Entry { stat, hash, racy }));
    }
    // A path written twice (qflow writes each once) keeps one of its entries: a
    // stale one only makes its file be read again.
    read.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    read.dedup_by(|a, b| a.0 == b.0);
    Some(Entries {
        read,
        learnt: HashMap::default(),
    })
}

/// FNV-1a over the path bytes, then mixed: paths are not attacker-chosen here,
/// and SipHash over 78k long paths cost more than the lookups themselves. FNV
/// alone leaves its top 7 bits the same for names that differ at their end
/// (`s1000` to `s1009`), and the hash table tells entries apart by those before
/// it compares names: 10,000 step names cost a name comparison per entry probed.
#[derive(Default, Clone, Copy)]
pub struct BuildPathHasher;

/// The hasher [`BuildPathHasher`] builds.
pub struct PathHasher(u64);

impl std::hash::BuildHasher for BuildPathHasher {
    type Hasher = PathHasher;
    fn build_hasher(&self) -> PathHasher {
        PathHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for PathHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // MurmurHash3's finalizer: every input bit reaches every output bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// The next `n` bytes of `r`, or `None` when it is shorter (a truncated file).
pub(crate) fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_stated_relative_to_its_directory_has_the_stat_of_its_full_path() {
        let dir = std::env::temp_dir().join(format!("qflow-dirfd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/a.c"), "int a;").unwrap();
        std::os::unix::fs::symlink("a.c", dir.join("src/link.c")).unwrap();
        let fd = DirFd::open(&dir).unwrap();
        for rel in ["src/a.c", "src/link.c", "src"] {
            let meta = std::fs::metadata(dir.join(rel)).unwrap();
            assert_eq!(
                fd.stat(Path::new(rel)).unwrap(),
                FileStat::of(&meta),
                "{rel}"
            );
        }
        assert!(fd.stat(Path::new("src/missing.c")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_freshly_written_file_is_racy_and_an_old_one_is_trusted() {
        let dir = std::env::temp_dir().join(format!("qflow-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a");
        std::fs::write(&f, "x").unwrap();
        let st = FileStat::of(&std::fs::symlink_metadata(&f).unwrap());
        let mut c = StatCache::load(&dir.join("cache"));
        let h = c.hash_all(&[(f.clone(), st)]).unwrap()[0];
        assert_eq!(c.lookup(&f, &st), None, "just-written file must be racy");
        c.save().unwrap();
        c.insert(f.clone(), st, h, st.mtime_ns + 2 * RACY_WINDOW_NS);
        c.save().unwrap();
        assert_eq!(c.lookup(&f, &st), Some(h));
        let c2 = StatCache::load(&dir.join("cache"));
        assert_eq!(c2.lookup(&f, &st), Some(h));
        let mut st2 = st;
        st2.size += 1;
        assert_eq!(c2.lookup(&f, &st2), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file of `size` bytes in `dir`, old enough not to be racy, and its stat.
    fn old_file(dir: &Path, name: &str, size: usize) -> (PathBuf, FileStat) {
        let f = dir.join(name);
        std::fs::write(&f, vec![b'x'; size]).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut st = FileStat::of(&std::fs::symlink_metadata(&f).unwrap());
        // The change time cannot be set back: hashed "later" instead.
        st.ctime_ns = st.mtime_ns;
        (f, st)
    }

    /// A fresh directory with an old small file and an old big one.
    fn small_and_big(test: &str) -> (PathBuf, (PathBuf, FileStat), (PathBuf, FileStat)) {
        let dir = std::env::temp_dir().join(format!("qflow-stat-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let small = old_file(&dir, "small", 10);
        let big = old_file(&dir, "big", KEPT_AFTER_TRIM as usize);
        (dir, small, big)
    }

    #[test]
    fn small_files_learnt_in_a_run_are_kept_on_disk_and_found_by_the_next_run() {
        let (dir, (small, small_st), (big, big_st)) = small_and_big("journal");
        let mut c = StatCache::load(&dir.join("cache"));
        let now = now_ns();
        c.insert(small.clone(), small_st, Hash([1; 32]), now);
        c.insert(big.clone(), big_st, Hash([2; 32]), now);
        // The small file's entry went to the journal, not to memory; the big one is held.
        assert_eq!(c.lookup(&small, &small_st), None);
        assert_eq!(c.lookup(&big, &big_st), Some(Hash([2; 32])));
        assert_eq!(c.len(), 1);
        c.save().unwrap();
        let next = StatCache::load(&dir.join("cache"));
        assert_eq!(next.len(), 2);
        assert_eq!(next.lookup(&small, &small_st), Some(Hash([1; 32])));
        assert_eq!(next.lookup(&big, &big_st), Some(Hash([2; 32])));
        // Saved once more with nothing new, the journal's entries stay in the file.
        c.insert(big.clone(), big_st, Hash([3; 32]), now);
        c.save().unwrap();
        let third = StatCache::load(&dir.join("cache"));
        assert_eq!(third.lookup(&small, &small_st), Some(Hash([1; 32])));
        assert_eq!(third.lookup(&big, &big_st), Some(Hash([3; 32])));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trimmed_cache_keeps_only_big_files_in_memory_and_everything_on_disk() {
        let (dir, (small, small_st), (big, big_st)) = small_and_big("trim");
        let mut earlier = StatCache::load(&dir.join("cache"));
        earlier.insert(small.clone(), small_st, Hash([1; 32]), now_ns());
        earlier.insert(big.clone(), big_st, Hash([2; 32]), now_ns());
        earlier.save().unwrap();
        // A later run reads both, then trims once its inputs are hashed.
        let mut c = StatCache::load(&dir.join("cache"));
        assert_eq!(c.len(), 2);
        c.save_and_trim().unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(&small, &small_st), None);
        assert_eq!(c.lookup(&big, &big_st), Some(Hash([2; 32])));
        // What it learns afterwards is not kept, and the file keeps every entry.
        let (late, late_st) = old_file(&dir, "late", 10);
        c.insert(late.clone(), late_st, Hash([4; 32]), now_ns());
        c.save_and_forget().unwrap();
        let next = StatCache::load(&dir.join("cache"));
        assert_eq!(next.len(), 2);
        assert_eq!(next.lookup(&small, &small_st), Some(Hash([1; 32])));
        assert_eq!(next.lookup(&late, &late_st), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
