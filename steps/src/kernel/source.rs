//! Where a kernel step's source tree comes from: the user's own tree, a tarball,
//! or a URL with its sha256.
//!
//! The user's tree is built in place (read-only: the build goes to `O=`). A
//! tarball (downloaded or local) is unpacked once into the step's kept state
//! directory, under a name derived from its content, and reused by later runs.
//! Unpacking refuses entries that would land outside that directory (absolute
//! paths, `..`, symlinks pointing out, device files) instead of skipping them
//! silently: an archive that tries is not a kernel tree anyone should build.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, anyhow, bail};
use qflow_engine::{CheckContext, FieldError, Input, RunContext, Tool};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::fetch;

/// The `source:` field: a path to a kernel tree, or `{ tarball: PATH }`, or
/// `{ url: URL, sha256: HEX }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A kernel tree on the host (the common case: the user's own checkout).
    Tree(String),
    /// A kernel tarball on the host (`.tar.xz`, `.tar.gz`, `.tar.bz2`, `.tar.zst`, `.tar`).
    Tarball(String),
    /// A kernel tarball to download, checked against its sha256.
    Url { url: String, sha256: String },
}

/// The mapping form of `source:`, parsed strictly so a typo names the field.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ArchiveFields {
    /// A kernel tarball on the host.
    tarball: Option<String>,
    /// A kernel tarball to download (needs `sha256`).
    url: Option<String>,
    /// The sha256 of the tarball at `url`, in hex.
    sha256: Option<String>,
}

/// The JSON Schema of `source:`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SourceSchema {
    /// A kernel source tree (relative to the workflow's directory unless absolute).
    Tree(String),
    Archive(ArchiveFields),
}

impl JsonSchema for Source {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KernelSource".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        SourceSchema::json_schema(generator)
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Source;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a path to a kernel tree, `{ tarball: PATH }` or `{ url: URL, sha256: HEX }`",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Source, E> {
                Ok(Source::Tree(v.to_string()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Source, A::Error> {
                use serde::de::Error as _;
                let f =
                    ArchiveFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match (f.tarball, f.url, f.sha256) {
                    (Some(t), None, None) => Ok(Source::Tarball(t)),
                    (None, Some(url), Some(sha256)) => Ok(Source::Url { url, sha256 }),
                    (None, Some(_), None) => Err(A::Error::custom(
                        "`url` needs `sha256`: the checksum of the tarball, e.g. from kernel.org's sha256sums.asc",
                    )),
                    (Some(_), Some(_), _) => {
                        Err(A::Error::custom("give either `tarball` or `url`, not both"))
                    }
                    (Some(_), None, Some(_)) => Err(A::Error::custom(
                        "`sha256` goes with `url`; a local `tarball` is keyed by its content",
                    )),
                    (None, None, _) => Err(A::Error::custom(
                        "`source` needs `tarball: PATH` or `url: URL` with `sha256: HEX`",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Source {
    /// Validation before anything runs.
    pub fn check(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        match self {
            Source::Tree(path) => {
                let dir = ctx.resolve(path);
                if !dir.is_dir() {
                    return Err(FieldError::new(
                        "source",
                        format!(
                            "`{path}` is not a directory: give the path of a kernel source tree"
                        ),
                    ));
                }
                if !dir.join("Makefile").is_file() || !dir.join("Kconfig").is_file() {
                    return Err(FieldError::new(
                        "source",
                        format!(
                            "`{path}` is not a kernel source tree (no `Makefile` and `Kconfig` at its top)"
                        ),
                    ));
                }
                if dir.join(".config").exists() || dir.join("include/config").exists() {
                    return Err(FieldError::new(
                        "source",
                        format!(
                            "`{path}` has been built in place (it has a `.config`); qflow builds out of tree and leaves \
                             your tree alone, so clean it first: `make -C {path} mrproper` (save your `.config` first and \
                             give it as `config: {{ file: ... }}`)"
                        ),
                    ));
                }
            }
            Source::Tarball(path) => {
                if !ctx.resolve(path).is_file() {
                    return Err(FieldError::new(
                        "source.tarball",
                        format!("`{path}` does not exist: give the path of a kernel tarball"),
                    ));
                }
                if Decompressor::from_name(path).is_none() {
                    return Err(FieldError::new(
                        "source.tarball",
                        format!(
                            "`{path}` is not a tarball qflow can unpack: expected .tar, .tar.xz, .tar.gz, .tar.bz2 or .tar.zst"
                        ),
                    ));
                }
            }
            Source::Url { url, sha256 } => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(FieldError::new(
                        "source.url",
                        format!("`{url}` is not an http(s) URL"),
                    ));
                }
                if Decompressor::from_name(url).is_none() {
                    return Err(FieldError::new(
                        "source.url",
                        format!(
                            "`{url}` does not name a tarball qflow can unpack: expected .tar, .tar.xz, .tar.gz, .tar.bz2 or .tar.zst"
                        ),
                    ));
                }
                if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(FieldError::new(
                        "source.sha256",
                        "`sha256` must be 64 hex digits",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The host files whose content enters the key. A tree is read through the
    /// engine's stat cache; its `.git` and a `.qflow` cache inside it are skipped.
    pub fn inputs(&self) -> Vec<Input> {
        match self {
            Source::Tree(path) => {
                vec![Input::new("source", path.clone()).excluding(&[".git", ".qflow"])]
            }
            Source::Tarball(path) => vec![Input::new("source.tarball", path.clone())],
            Source::Url { .. } => Vec::new(),
        }
    }

    /// The programs that unpack an archive source.
    pub fn tools(&self) -> Vec<Tool> {
        let name = match self {
            Source::Tree(_) => return Vec::new(),
            Source::Tarball(p) => p,
            Source::Url { url, .. } => url,
        };
        Decompressor::from_name(name)
            .and_then(Decompressor::tool)
            .into_iter()
            .collect()
    }

    /// Every program a source of any form may run: each archive's decompressor,
    /// and `git` for a checkout's commit time.
    pub fn all_tools() -> Vec<Tool> {
        let mut tools: Vec<Tool> = [
            Decompressor::Xz,
            Decompressor::Gzip,
            Decompressor::Bzip2,
            Decompressor::Zstd,
        ]
        .into_iter()
        .filter_map(Decompressor::tool)
        .collect();
        tools.push(Tool::new("git", &["--version"], "git"));
        tools
    }

    /// Key material the fields and inputs miss: the commit a git tree is at,
    /// because it sets `KBUILD_BUILD_TIMESTAMP` (and kbuild's `+` version suffix).
    pub fn extra_key(&self, ctx: &CheckContext) -> Vec<(String, String)> {
        match self {
            Source::Tree(path) => match git_head(&ctx.resolve(path)) {
                Some(commit) => vec![("source.git_head".to_string(), commit)],
                None => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// How `qflow plan` names the source directory.
    pub fn plan_dir(&self, ctx: &CheckContext) -> String {
        match self {
            Source::Tree(path) => ctx
                .resolve(path)
                .components()
                .filter(|c| *c != Component::CurDir)
                .collect::<PathBuf>()
                .display()
                .to_string(),
            _ => "$QFLOW_STATE/sources/<tarball-hash>".to_string(),
        }
    }

    /// The kernel tree to build, unpacking or downloading when needed, with an
    /// identity string that names it (for the kept build directory's name).
    pub fn prepare(&self, ctx: &mut RunContext) -> anyhow::Result<PreparedSource> {
        match self {
            Source::Tree(path) => {
                let dir = ctx.resolve(path);
                let dir = dir
                    .canonicalize()
                    .with_context(|| format!("cannot open kernel tree `{}`", dir.display()))?;
                let timestamp = git_timestamp(ctx, &dir)?;
                Ok(PreparedSource {
                    identity: format!("tree:{}", dir.display()),
                    dir,
                    timestamp,
                })
            }
            Source::Tarball(path) => {
                let tarball = ctx.resolve(path);
                ctx.progress("hashing the kernel tarball");
                let id = hash_file(&tarball)?;
                let dir = unpack_once(ctx, &tarball, &id)?;
                Ok(PreparedSource {
                    identity: format!("tarball:{id}"),
                    dir,
                    timestamp: None,
                })
            }
            Source::Url { url, sha256 } => {
                let sha256 = sha256.to_ascii_lowercase();
                let tarball = download(ctx, url, &sha256)?;
                let dir = unpack_once(ctx, &tarball, &sha256)?;
                ctx.note("source.url", &fetch::shown_url(url));
                Ok(PreparedSource {
                    identity: format!("sha256:{sha256}"),
                    dir,
                    timestamp: None,
                })
            }
        }
    }
}

/// A kernel tree ready to build.
#[derive(Debug)]
pub struct PreparedSource {
    /// The tree's top directory (absolute).
    pub dir: PathBuf,
    /// What names this source: the tree's path, or the tarball's hash.
    pub identity: String,
    /// The git commit time, for `KBUILD_BUILD_TIMESTAMP`, when the tree is a git checkout.
    pub timestamp: Option<String>,
}

/// The commit `HEAD` points at in a git checkout at `dir`, read from files (no
/// `git` run), or `None` when `dir` is not the top of a checkout.
pub fn git_head(dir: &Path) -> Option<String> {
    let dot_git = dir.join(".git");
    let git_dir = if dot_git.is_file() {
        // A worktree or submodule: `.git` is a file `gitdir: PATH`.
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let target = text.strip_prefix("gitdir:")?.trim();
        dir.join(target)
    } else if dot_git.is_dir() {
        dot_git
    } else {
        return None;
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:") else {
        return Some(head.to_string());
    };
    let reference = reference.trim();
    // A worktree keeps HEAD locally but refs in the common dir.
    let common = std::fs::read_to_string(git_dir.join("commondir"))
        .map(|c| git_dir.join(c.trim()))
        .unwrap_or_else(|_| git_dir.clone());
    for base in [&git_dir, &common] {
        if let Ok(id) = std::fs::read_to_string(base.join(reference)) {
            return Some(id.trim().to_string());
        }
        if let Ok(packed) = std::fs::read_to_string(base.join("packed-refs")) {
            for line in packed.lines() {
                if let Some((id, name)) = line.split_once(' ')
                    && name == reference
                {
                    return Some(id.to_string());
                }
            }
        }
    }
    // An unborn branch: no commit yet.
    Some(format!("unborn:{reference}"))
}

/// `KBUILD_BUILD_TIMESTAMP` for a git checkout: its HEAD commit's time, in the
/// format kbuild itself uses (`date`'s). `None` for a tree that is not a checkout.
fn git_timestamp(ctx: &mut RunContext, dir: &Path) -> anyhow::Result<Option<String>> {
    match git_head(dir) {
        None => return Ok(None),
        Some(head) if head.starts_with("unborn:") => return Ok(None),
        Some(_) => {}
    }
    let mut cmd = ctx.command("git");
    cmd.arg("-C").arg(dir).args([
        "log",
        "-1",
        "--format=%cd",
        "--date=format-local:%a %b %e %H:%M:%S UTC %Y",
    ]);
    cmd.env("TZ", "UTC");
    let out = ctx
        .run_capture(cmd)
        .context("cannot read the commit time of the kernel tree's HEAD")?;
    let stamp = out.trim().to_string();
    Ok((!stamp.is_empty()).then_some(stamp))
}

/// blake3 of a file's content, in hex.
fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// How a tarball is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decompressor {
    None,
    Xz,
    Gzip,
    Bzip2,
    Zstd,
}

impl Decompressor {
    /// The program that unpacks this compression, if any.
    pub fn tool(self) -> Option<Tool> {
        Some(match self {
            Decompressor::Xz => Tool::new("xz", &["--version"], "xz-utils"),
            Decompressor::Gzip => Tool::new("gzip", &["--version"], "gzip"),
            Decompressor::Bzip2 => Tool::new("bzip2", &["--help"], "bzip2"),
            Decompressor::Zstd => Tool::new("zstd", &["--version"], "zstd"),
            Decompressor::None => return None,
        })
    }

    /// From a file name or URL (`.tar.xz`, `.tgz`, ...).
    pub fn from_name(name: &str) -> Option<Decompressor> {
        let name = name
            .split(['?', '#'])
            .next()
            .unwrap_or(name)
            .to_ascii_lowercase();
        let table = [
            (".tar", Decompressor::None),
            (".tar.xz", Decompressor::Xz),
            (".txz", Decompressor::Xz),
            (".tar.gz", Decompressor::Gzip),
            (".tgz", Decompressor::Gzip),
            (".tar.bz2", Decompressor::Bzip2),
            (".tbz2", Decompressor::Bzip2),
            (".tar.zst", Decompressor::Zstd),
        ];
        table
            .iter()
            .find(|(ext, _)| name.ends_with(ext))
            .map(|(_, d)| *d)
    }

    /// From the first bytes of the file, which win over its name.
    fn from_magic(head: &[u8]) -> Option<Decompressor> {
        if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Decompressor::Xz)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Decompressor::Gzip)
        } else if head.starts_with(b"BZh") {
            Some(Decompressor::Bzip2)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Decompressor::Zstd)
        } else if head.len() >= 512 {
            // Plain tar (old-style headers carry no `ustar` magic); the reader
            // rejects what is not.
            Some(Decompressor::None)
        } else {
            None
        }
    }

    fn program(self) -> Option<&'static str> {
        match self {
            Decompressor::None => None,
            Decompressor::Xz => Some("xz"),
            Decompressor::Gzip => Some("gzip"),
            Decompressor::Bzip2 => Some("bzip2"),
            Decompressor::Zstd => Some("zstd"),
        }
    }
}

/// Unpack `tarball` into `<state>/sources/<id>` unless already there, and
/// return the kernel tree inside (the single top directory, when there is one).
/// Other unpacked sources of this step are removed: one tree is 1.5 GB.
fn unpack_once(ctx: &mut RunContext, tarball: &Path, id: &str) -> anyhow::Result<PathBuf> {
    let sources = ctx.state_dir().join("sources");
    let dest = sources.join(&id[..32.min(id.len())]);
    if !dest.is_dir() {
        std::fs::create_dir_all(&sources)
            .with_context(|| format!("cannot create {}", sources.display()))?;
        remove_others(&sources, &dest);
        let tmp = sources.join(format!(".tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        ctx.progress(&format!("unpacking {}", tarball.display()));
        let started = std::time::Instant::now();
        if let Err(e) = unpack(ctx, tarball, &tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let top = single_top_dir(&tmp)?;
        // Only a complete unpack gets the final name: a killed run leaves a `.tmp-*`.
        std::fs::rename(&top, &dest)
            .with_context(|| format!("cannot move the unpacked tree to {}", dest.display()))?;
        let _ = std::fs::remove_dir_all(&tmp);
        ctx.log(&format!(
            "unpacked {} into {} in {:.1?}",
            tarball.display(),
            dest.display(),
            started.elapsed()
        ));
    }
    Ok(dest)
}

/// Remove every entry of `dir` except `keep` (stale unpacked trees, `.tmp-*` leftovers).
pub fn remove_others(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep {
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

/// The directory holding the tree: `dir`'s only entry when that is a directory.
fn single_top_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    if entries.len() == 1 && entries[0].file_type()?.is_dir() {
        return Ok(entries[0].path());
    }
    // Several top-level entries: the archive root is the tree. Move it one level
    // down so the rename above is uniform.
    let inner = dir.join(".tree");
    std::fs::create_dir(&inner)?;
    for entry in entries {
        std::fs::rename(entry.path(), inner.join(entry.file_name()))?;
    }
    Ok(inner)
}

/// Unpack `tarball` into the empty directory `dest`, refusing any entry that
/// would escape it. The decompressor runs as a child through the run context
/// (killed with the step); the tar stream is read here.
pub fn unpack(ctx: &mut RunContext, tarball: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut head = vec![0u8; 512];
    let n = File::open(tarball)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("cannot read `{}`", tarball.display()))?;
    head.truncate(n);
    let kind = Decompressor::from_magic(&head).ok_or_else(|| {
        anyhow!(
            "`{}` is not a tar archive (xz, gzip, bzip2, zstd or plain)",
            tarball.display()
        )
    })?;
    match kind.program() {
        None => {
            let file = File::open(tarball)
                .with_context(|| format!("cannot open `{}`", tarball.display()))?;
            unpack_stream(ctx, file, dest)
                .with_context(|| format!("cannot unpack `{}`", tarball.display()))
        }
        Some(program) => {
            let errors = ctx.state_dir().join("unpack.stderr");
            let mut cmd = ctx.command(program);
            cmd.arg("-dc").arg(tarball);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped());
            cmd.stderr(
                File::create(&errors)
                    .with_context(|| format!("cannot create {}", errors.display()))?,
            );
            let mut child = ctx.spawn(cmd)?;
            let mut stdout = child.child_mut().stdout.take().expect("piped stdout");
            let result = unpack_stream(ctx, &mut stdout, dest);
            // The archive's end marker comes before the stream's padding: read
            // it all, or the decompressor dies of SIGPIPE.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            drop(stdout);
            let status = child.wait_timeout(std::time::Duration::from_secs(60))?;
            let stderr = std::fs::read_to_string(&errors).unwrap_or_default();
            result.with_context(|| format!("cannot unpack `{}`", tarball.display()))?;
            match status {
                Some(s) if s.success() => Ok(()),
                Some(s) => bail!(
                    "`{program} -dc {}` failed ({}): {}",
                    tarball.display(),
                    qflow_engine::context::describe_status(s),
                    stderr.trim()
                ),
                None => bail!(
                    "`{program} -dc {}` did not exit after the archive ended",
                    tarball.display()
                ),
            }
        }
    }
}

fn unpack_stream(ctx: &RunContext, reader: impl Read, dest: &Path) -> anyhow::Result<()> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(true);
    archive.set_preserve_mtime(true);
    let mut count = 0usize;
    for entry in archive.entries()? {
        if ctx.is_cancelled() {
            bail!("interrupted");
        }
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let rel = contained(&raw).ok_or_else(|| {
            anyhow!(
                "refusing entry `{}`: it would be written outside the unpack directory",
                raw.display()
            )
        })?;
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::GNUSparse => {}
            EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("symlink `{}` has no target", raw.display()))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || contained(&parent.join(&target)).is_none() {
                    bail!(
                        "refusing symlink `{}` -> `{}`: it points outside the unpack directory",
                        raw.display(),
                        target.display()
                    );
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| anyhow!("hard link `{}` has no target", raw.display()))?;
                if contained(&target).is_none() {
                    bail!(
                        "refusing hard link `{}` -> `{}`: it points outside the unpack directory",
                        raw.display(),
                        target.display()
                    );
                }
            }
            other => bail!(
                "refusing entry `{}`: a {other:?} has no place in a kernel tree",
                raw.display()
            ),
        }
        // unpack_in also refuses to write through a symlink that leads out.
        if !entry.unpack_in(dest)? {
            bail!(
                "refusing entry `{}`: it would be written outside the unpack directory",
                raw.display()
            );
        }
        count += 1;
        if count.is_multiple_of(5000) {
            ctx.progress(&format!("unpacking: {count} files"));
        }
    }
    // A symlink chain can still lead out (`a -> b/..` where `b` is itself a
    // link); check where every symlink really resolves now that all exist.
    let root = dest.canonicalize()?;
    for entry in walkdir::WalkDir::new(dest).follow_links(false) {
        let entry = entry?;
        if entry.path_is_symlink()
            && let Ok(real) = entry.path().canonicalize()
            && !real.starts_with(&root)
        {
            bail!(
                "refusing symlink `{}`: it resolves to {} outside the unpack directory",
                entry.path().display(),
                real.display()
            );
        }
    }
    Ok(())
}

/// `path` as a relative path that stays inside its root: no root, no prefix, and
/// no `..` that climbs above the start. `None` when it would escape.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

/// Download `url` into `<state>/downloads/`, check its sha256 and return the
/// file. The bytes go to `<sha256 prefix>.partial` first, through [`crate::fetch`]
/// (retries, timeouts, Range resume, credentials masked), and become the tarball
/// only once their sha256 matches; wrong bytes are deleted, never unpacked.
fn download(ctx: &mut RunContext, url: &str, sha256: &str) -> anyhow::Result<PathBuf> {
    let dir = ctx.state_dir().join("downloads");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = Some(fetch::url_file_name(url))
        .filter(|n| !n.is_empty())
        .unwrap_or("kernel.tar");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let done = dir.join(format!("{}-{name}", &sha256[..16]));
    if done.is_file() {
        return Ok(done);
    }
    let partial = dir.join(format!("{}.partial", &sha256[..16]));
    // Other tarballs go; this one's partial bytes stay to be resumed.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path != partial {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    }
    let shown = fetch::shown_url(url);
    ctx.progress(&format!("downloading {shown}"));
    ctx.log(&format!("downloading {shown}"));
    fetch::download(ctx, url, "source.url", &partial)?;
    ctx.progress("checking sha256");
    let got = fetch::sha256_of_file(&partial)?;
    if got != sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "`{shown}` has sha256 {got}, but `sha256` says {sha256}: the file changed or the checksum is wrong; nothing was kept"
        );
    }
    std::fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), done.display()))?;
    Ok(done)
}

/// Facts about the source for `qflow.lock`.
pub fn notes(source: &PreparedSource) -> BTreeMap<String, String> {
    let mut notes = BTreeMap::new();
    notes.insert("source.dir".to_string(), source.dir.display().to_string());
    notes.insert("source.identity".to_string(), source.identity.clone());
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(dir: &Path) -> RunContext {
        RunContext::standalone(
            "kernel",
            &dir.join("out"),
            dir,
            &dir.join("state"),
            &dir.join("log"),
        )
        .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("qflow-kernel-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A tar with one entry whose header is written by hand, so the archive can
    /// hold names that `tar::Builder` (rightly) refuses to write.
    fn raw_tar(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        let bytes = &mut header.as_old_mut().name;
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        let lbytes = &mut header.as_old_mut().linkname;
        lbytes[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn unpack_raw(name: &str, tar: Vec<u8>) -> anyhow::Result<PathBuf> {
        let d = scratch(name);
        let archive = d.join("a.tar");
        std::fs::write(&archive, tar).unwrap();
        let dest = d.join("dest");
        std::fs::create_dir(&dest).unwrap();
        let mut c = ctx(&d);
        unpack(&mut c, &archive, &dest).map(|_| dest)
    }

    #[test]
    fn unpacking_refuses_an_entry_that_climbs_out_with_dot_dot() {
        let err = unpack_raw(
            "dotdot",
            raw_tar("linux/../../evil", tar::EntryType::Regular, "", b"x"),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("refusing entry `linux/../../evil`"),
            "{err:#}"
        );
    }

    #[test]
    fn unpacking_refuses_an_absolute_entry() {
        let err = unpack_raw(
            "absolute",
            raw_tar("/tmp/qflow-evil", tar::EntryType::Regular, "", b"x"),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the unpack directory"),
            "{err:#}"
        );
        assert!(!Path::new("/tmp/qflow-evil").exists());
    }

    #[test]
    fn unpacking_refuses_a_symlink_pointing_out() {
        let err = unpack_raw(
            "symlink",
            raw_tar("linux/etc", tar::EntryType::Symlink, "../../../etc", b""),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("refusing symlink `linux/etc`"),
            "{err:#}"
        );
        let err = unpack_raw(
            "symlink-abs",
            raw_tar("linux/etc", tar::EntryType::Symlink, "/etc", b""),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("points outside"), "{err:#}");
    }

    #[test]
    fn unpacking_keeps_symlinks_that_stay_inside() {
        let dest = unpack_raw(
            "inside",
            raw_tar(
                "linux/arch/link",
                tar::EntryType::Symlink,
                "../Makefile",
                b"",
            ),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_link(dest.join("linux/arch/link")).unwrap(),
            Path::new("../Makefile")
        );
    }

    #[test]
    fn an_xz_tarball_of_a_tree_unpacks_to_its_top_directory_once() {
        let d = scratch("xz");
        let tree = d.join("linux-9.9");
        std::fs::create_dir_all(tree.join("kernel")).unwrap();
        std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
        std::fs::write(tree.join("kernel/reboot.c"), "int x;\n").unwrap();
        let st = std::process::Command::new("tar")
            .arg("-C")
            .arg(&d)
            .arg("-cJf")
            .arg(d.join("linux.tar.xz"))
            .arg("linux-9.9")
            .status()
            .unwrap();
        assert!(st.success());
        let mut c = ctx(&d);
        let dir = unpack_once(
            &mut c,
            &d.join("linux.tar.xz"),
            "0123456789abcdef0123456789abcdef01",
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("kernel/reboot.c")).unwrap(),
            "int x;\n"
        );
        std::fs::write(dir.join("marker"), "kept").unwrap();
        let again = unpack_once(
            &mut c,
            &d.join("linux.tar.xz"),
            "0123456789abcdef0123456789abcdef01",
        )
        .unwrap();
        assert_eq!(again, dir);
        assert!(
            again.join("marker").exists(),
            "a second run must reuse the unpacked tree"
        );
    }

    #[test]
    fn git_head_follows_the_branch_ref_and_packed_refs() {
        let d = scratch("git");
        std::fs::create_dir_all(d.join(".git/refs/heads")).unwrap();
        std::fs::write(d.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            d.join(".git/packed-refs"),
            "# pack-refs\nabc123 refs/heads/main\n",
        )
        .unwrap();
        assert_eq!(git_head(&d).as_deref(), Some("abc123"));
        std::fs::write(d.join(".git/refs/heads/main"), "def456\n").unwrap();
        assert_eq!(git_head(&d).as_deref(), Some("def456"));
        assert_eq!(git_head(&d.join("nowhere")), None);
    }

    #[test]
    fn contained_rejects_escapes_and_keeps_the_rest() {
        assert_eq!(
            contained(Path::new("./a/b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(contained(Path::new("a/../../b")), None);
        assert_eq!(contained(Path::new("/etc/passwd")), None);
    }
}
