//! A secret field (a root or login password): where qflow reads it, never what it is.
//!
//! In a workflow a secret is one of
//! `{ file: PATH }` (the first line of a host file, relative to the workflow),
//! `{ env: NAME }` (an environment variable of the `qflow` process),
//! `locked` (no password: the account cannot log in with one) or
//! `random` (a fresh password, kept 0600 in a file the step chooses).
//!
//! The secret's text never reaches argv, a log, the step key or `qflow.lock`:
//! programs get it through a 0600 file on a memory file system ([`SecretFile`],
//! removed when dropped, also on error or panic), and the key gets its blake3
//! ([`Secret::key_material`]) so that changing the password re-runs the step.
//! [`SecretValue`] prints as `<secret>` in `Debug` and is zeroed when dropped.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use qflow_engine::{CheckContext, FieldError, SecretSource, SecretUse};
use schemars::JsonSchema;
use serde::Deserialize;

/// Where a secret comes from. Deserialized by hand: serde's enum forms are YAML tags
/// (`!file PATH`) in qflow's YAML library, and a workflow writes `{ file: PATH }`.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Secret {
    /// The first line of this host file (relative to the workflow's directory).
    File(String),
    /// The value of this environment variable of the `qflow` process.
    Env(String),
    /// No password at all: password login is impossible.
    Locked,
    /// A fresh random password, kept in a 0600 file the step names.
    Random,
}

const EXPECTED: &str = "`locked`, `random`, `{ file: PATH }` or `{ env: NAME }`";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                match v {
                    "locked" => Ok(Secret::Locked),
                    "random" => Ok(Secret::Random),
                    // Never echo the value: it may be a password written in by mistake.
                    _ => Err(E::custom(format!(
                        "a secret is {EXPECTED}, never the password itself (the value given is not shown)"
                    ))),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Secret, A::Error> {
                use serde::de::Error as _;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(format!(
                        "an empty mapping; a secret is {EXPECTED}"
                    )));
                };
                let secret = match key.as_str() {
                    "file" => Secret::File(map.next_value()?),
                    "env" => Secret::Env(map.next_value()?),
                    other => {
                        return Err(A::Error::custom(format!(
                            "unknown key `{other}`; a secret is {EXPECTED}"
                        )));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(format!(
                        "a secret has exactly one key: {EXPECTED}"
                    )));
                }
                Ok(secret)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The text of a secret. Never printed; zeroed on drop.
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// The secret's bytes, for the rare caller that must type it (a serial login).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The blake3 of the secret, hex: key material that reveals nothing usable in a log.
    pub fn blake3_hex(&self) -> String {
        blake3::hash(&self.0).to_hex().to_string()
    }

    /// Write the secret into a fresh 0600 file in a private place (`/dev/shm` when it
    /// exists, so it never reaches a disk); the file is removed when the guard drops.
    pub fn to_temp_file(&self) -> anyhow::Result<SecretFile> {
        SecretFile::create(&secret_dir(), &self.0)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the compiler keeps the wipe of memory about to be freed.
            // SAFETY: `b` is a valid, exclusive reference into our own buffer.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// A 0600 file holding a secret, removed when dropped.
#[derive(Debug)]
pub struct SecretFile {
    path: PathBuf,
}

impl SecretFile {
    fn create(dir: &Path, content: &[u8]) -> anyhow::Result<SecretFile> {
        for _ in 0..16 {
            let path = dir.join(format!("qflow-secret-{}", random_hex(8)?));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            match file {
                Ok(mut f) => {
                    // The guard exists before the write, so a failed write removes the file too.
                    let guard = SecretFile { path };
                    f.write_all(content)
                        .with_context(|| format!("cannot write {}", guard.path.display()))?;
                    return Ok(guard);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create a secret file in {}", dir.display())
                    });
                }
            }
        }
        bail!("cannot create a unique secret file in {}", dir.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `/dev/shm` (memory only) when it is a writable directory, else the temp directory.
fn secret_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir() && {
        let c = std::ffi::CString::new("/dev/shm").expect("no NUL");
        // SAFETY: access(2) on a valid NUL-terminated path.
        unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
    };
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random password of 24 letters and digits (143 bits).
fn random_password() -> anyhow::Result<SecretValue> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut raw = [0u8; 96];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("cannot read /dev/urandom")?;
    // Rejection sampling keeps every letter equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let pw: Vec<u8> = raw
        .iter()
        .filter(|&&b| (b as usize) < limit)
        .map(|&b| ALPHABET[b as usize % ALPHABET.len()])
        .take(24)
        .collect();
    if pw.len() < 24 {
        bail!("not enough random bytes for a password");
    }
    Ok(SecretValue(pw))
}

impl Secret {
    /// Whether the account gets a password (`locked`: none; `random` makes one).
    pub fn is_read(&self) -> bool {
        !matches!(self, Secret::Locked)
    }

    /// Where the step that holds this secret in `field` reads it, for the step
    /// contract ([`qflow_engine::Step::secrets`]); `None` for `locked` and `random`,
    /// which read nothing from the host.
    pub fn used_as(&self, field: &str) -> Option<SecretUse> {
        let source = match self {
            Secret::File(path) => SecretSource::File(path.clone()),
            Secret::Env(name) => SecretSource::Env(name.clone()),
            Secret::Locked | Secret::Random => return None,
        };
        Some(SecretUse {
            field: field.to_string(),
            source,
        })
    }

    /// Check, before anything runs, that the secret can be read. `field` names the field
    /// (`root_password`) in the error.
    pub fn check(&self, field: &str, ctx: &CheckContext) -> Result<(), FieldError> {
        match self {
            Secret::File(path) if path.is_empty() => Err(FieldError::new(
                format!("{field}.file"),
                "`file` needs a path to a file holding the password on its first line",
            )),
            Secret::Env(name) if name.is_empty() || name.contains('=') || name.contains('\0') => {
                Err(FieldError::new(
                    format!("{field}.env"),
                    format!("`{name}` is not an environment variable name"),
                ))
            }
            Secret::File(_) | Secret::Env(_) => self
                .read(&ctx.work_dir)
                .map(drop)
                .map_err(|e| FieldError::new(self.field_path(field), format!("{e:#}"))),
            Secret::Locked | Secret::Random => Ok(()),
        }
    }

    fn field_path(&self, field: &str) -> String {
        match self {
            Secret::File(_) => format!("{field}.file"),
            Secret::Env(_) => format!("{field}.env"),
            _ => field.to_string(),
        }
    }

    /// Read a `file` or `env` secret (`None` for `locked` and `random`). A file's single
    /// trailing newline is dropped; a secret must be one non-empty line.
    pub fn read(&self, work_dir: &Path) -> anyhow::Result<Option<SecretValue>> {
        let mut bytes = match self {
            Secret::File(path) => {
                let p = qflow_engine::step::resolve_in(work_dir, path);
                std::fs::read(&p)
                    .with_context(|| format!("cannot read the password file `{}`", p.display()))?
            }
            Secret::Env(name) => match std::env::var_os(name) {
                Some(v) => std::os::unix::ffi::OsStringExt::into_vec(v),
                None => bail!(
                    "environment variable `{name}` is not set; export it before running qflow"
                ),
            },
            Secret::Locked | Secret::Random => return Ok(None),
        };
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        let value = SecretValue(bytes);
        if value.0.is_empty() {
            bail!("the password is empty; write it on the first line (or use `locked`)");
        }
        if value.0.contains(&b'\n') || value.0.contains(&0) {
            bail!("the password must be a single line without NUL bytes");
        }
        Ok(Some(value))
    }

    /// The secret to use in a run: a `file`/`env` secret's text, or for `random` the
    /// password kept at `random_store` (created 0600 on first use, then reused so a
    /// re-run keeps it). `None` for `locked`.
    pub fn value(
        &self,
        work_dir: &Path,
        random_store: &Path,
    ) -> anyhow::Result<Option<SecretValue>> {
        match self {
            Secret::Random => {
                if let Ok(stored) = std::fs::read(random_store)
                    && !stored.is_empty()
                {
                    return Ok(Some(SecretValue(stored)));
                }
                let pw = random_password()?;
                if let Some(dir) = random_store.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let _ = std::fs::remove_file(random_store);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(random_store)
                    .with_context(|| format!("cannot create {}", random_store.display()))?;
                f.write_all(&pw.0)
                    .with_context(|| format!("cannot write {}", random_store.display()))?;
                Ok(Some(pw))
            }
            _ => self.read(work_dir),
        }
    }

    /// Key material for [`qflow_engine::Step::extra_key`]: `(name, blake3 hex)` of a
    /// `file`/`env` secret, nothing for `locked` and `random` (their variant is in the fields).
    pub fn key_material(
        &self,
        name: &str,
        work_dir: &Path,
    ) -> anyhow::Result<Vec<(String, String)>> {
        Ok(match self.read(work_dir)? {
            Some(v) => vec![(format!("{name}.blake3"), v.blake3_hex())],
            None => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Secret, String> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        serde_yaml::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn every_form_of_the_field_parses() {
        assert_eq!(
            parse("{ file: secrets/pw }").unwrap(),
            Secret::File("secrets/pw".into())
        );
        assert_eq!(
            parse("{ env: ROOT_PW }").unwrap(),
            Secret::Env("ROOT_PW".into())
        );
        assert_eq!(parse("locked").unwrap(), Secret::Locked);
        assert_eq!(parse("random").unwrap(), Secret::Random);
        assert!(parse("hunter2").is_err());
        assert!(parse("{ password: hunter2 }").is_err());
    }

    #[test]
    fn a_file_secret_drops_one_trailing_newline_and_hides_in_debug() {
        let dir = std::env::temp_dir().join(format!("qflow-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "s3cret:with colon\n").unwrap();
        let v = Secret::File("pw".into()).read(&dir).unwrap().unwrap();
        assert_eq!(v.expose(), b"s3cret:with colon");
        assert_eq!(format!("{v:?}"), "<secret>");
        std::fs::write(dir.join("two"), "a\nb\n").unwrap();
        assert!(Secret::File("two".into()).read(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_temp_file_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt as _;
        let v = SecretValue(b"hunter2".to_vec());
        let f = v.to_temp_file().unwrap();
        let path = f.path().to_path_buf();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"hunter2");
        drop(f);
        assert!(!path.exists());
    }

    #[test]
    fn the_key_holds_the_hash_never_the_secret() {
        let name = format!("QFLOW_TEST_SECRET_{}", std::process::id());
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var(&name, "hunter2") };
        let key = Secret::Env(name.clone())
            .key_material("root_password", Path::new("/"))
            .unwrap();
        assert_eq!(
            key,
            vec![(
                "root_password.blake3".to_string(),
                blake3::hash(b"hunter2").to_hex().to_string()
            )]
        );
        assert!(!format!("{key:?}").contains("hunter2"));
        assert!(
            Secret::Locked
                .key_material("root_password", Path::new("/"))
                .unwrap()
                .is_empty()
        );
        unsafe { std::env::remove_var(&name) };
        assert!(Secret::Env(name).read(Path::new("/")).is_err());
    }

    #[test]
    fn a_random_password_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("qflow-random-test-{}", std::process::id()));
        let store = dir.join("root-password");
        let a = Secret::Random.value(&dir, &store).unwrap().unwrap();
        let b = Secret::Random.value(&dir, &store).unwrap().unwrap();
        assert_eq!(a.expose().len(), 24);
        assert_eq!(a.expose(), b.expose());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
