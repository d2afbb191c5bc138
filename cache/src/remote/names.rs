//! Names on the server: `/ac/<sha256>` for action entries and `/cas/<sha256>` for content,
//! as Bazel's HTTP remote-cache protocol has them, and the local blake3 → sha256 map.
//!
//! - A content name is the sha256 of the bytes, so any server of that protocol (and any tool
//!   reading it) agrees on it.
//! - An action name is sha256 over `"qflow-action-v1\0"` followed by the step key's 64 hex
//!   digits. Bazel names its actions by the sha256 of a protobuf `Action`, which never starts
//!   with that prefix, so qflow entries cannot collide with a build tool's own in a shared
//!   server; the `v1` moves qflow to new names if the entry format ever changes.
//! - The local cache names content by blake3. Uploading needs each object's sha256; hashing
//!   a multi-GiB image again on every upload would cost seconds, so the pair is kept in
//!   `<cache>/remote/sha256/<ab>/<blake3 hex>` (64 hex digits inside). The map is a pure
//!   function of content, so an entry outliving its object (after `qflow gc`) is never wrong;
//!   it is written when qflow hashes an object for an upload and when a download is verified.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest;

use crate::atomic::{parent_of, write_replace};
use crate::{Cache, Hash};

/// The prefix that puts qflow's action names in a namespace of their own.
const ACTION_NAMESPACE: &[u8] = b"qflow-action-v1\0";

/// A sha256 digest: the name of an object or an action entry on the server.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The sha256 of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        // Same text form as a blake3 `Hash`.
        Hash(self.0).to_hex()
    }

    /// The sha256 of a file's bytes, read in 1 MiB pieces (constant memory).
    pub fn of_file(path: &Path) -> anyhow::Result<Sha256> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open `{}`", path.display()))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Sha256(hasher.finalize().into()))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl FromStr for Sha256 {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Sha256> {
        match s.parse::<Hash>() {
            Ok(h) => Ok(Sha256(h.0)),
            Err(_) => bail!("`{s}` is not a sha256: expected 64 lowercase hex digits"),
        }
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sha256, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The server name of the action entry for step key `key`.
pub fn action_name(key: &Hash) -> Sha256 {
    let mut h = sha2::Sha256::new();
    h.update(ACTION_NAMESPACE);
    h.update(key.to_hex().as_bytes());
    Sha256(h.finalize().into())
}

/// The local blake3 → sha256 map of one cache.
pub(crate) struct Sha256Map<'a> {
    cache: &'a Cache,
}

impl<'a> Sha256Map<'a> {
    pub(crate) fn new(cache: &'a Cache) -> Sha256Map<'a> {
        Sha256Map { cache }
    }

    fn path(&self, blake3: &Hash) -> PathBuf {
        self.cache.sharded("remote/sha256", blake3, "")
    }

    /// The sha256 noted for content `blake3`, if any.
    pub(crate) fn get(&self, blake3: &Hash) -> Option<Sha256> {
        let text = std::fs::read_to_string(self.path(blake3)).ok()?;
        text.trim().parse().ok()
    }

    /// Notes that content `blake3` has sha256 `sha256`.
    pub(crate) fn put(&self, blake3: &Hash, sha256: &Sha256) -> anyhow::Result<()> {
        if self.get(blake3) == Some(*sha256) {
            return Ok(());
        }
        let path = self.path(blake3);
        let dir = parent_of(&path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        // Not fsynced: a note lost to a power cut is only computed again from the bytes.
        write_replace(&path, format!("{sha256}\n").as_bytes())
    }

    /// The sha256 of the local object `blake3` (either variant): from the map, else hashed
    /// from the object's bytes and noted.
    pub(crate) fn of_object(&self, blake3: &Hash) -> anyhow::Result<Sha256> {
        if let Some(s) = self.get(blake3) {
            return Ok(s);
        }
        let plain = self.cache.object_file(blake3, false);
        let file = if plain.is_file() {
            plain
        } else {
            self.cache.object_file(blake3, true)
        };
        let sha = Sha256::of_file(&file)?;
        self.put(blake3, &sha)?;
        Ok(sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_names_match_the_standard_digest() {
        assert_eq!(
            Sha256::of_bytes(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let s = Sha256::of_bytes(b"abc");
        assert_eq!(s.to_string().parse::<Sha256>().unwrap(), s);
        assert!("ABC".parse::<Sha256>().is_err());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), s);
    }

    #[test]
    fn action_names_are_namespaced_and_differ_from_the_plain_digest_of_the_key() {
        let key = Hash::of_bytes(b"a step");
        let name = action_name(&key);
        assert_eq!(name, action_name(&key));
        assert_ne!(name, Sha256::of_bytes(key.to_hex().as_bytes()));
        assert_ne!(name, Sha256(key.0));
        assert_ne!(name, action_name(&Hash::of_bytes(b"another step")));
        let mut expected = b"qflow-action-v1\0".to_vec();
        expected.extend_from_slice(key.to_hex().as_bytes());
        assert_eq!(name, Sha256::of_bytes(&expected));
    }

    #[test]
    fn the_map_remembers_the_sha256_of_an_object_and_hashes_a_file_once() {
        let (_dir, c) = crate::test_cache("sha256_map");
        let key = Hash::of_bytes(b"k");
        let r = crate::record::tests::record_for(&c, &key, &[("f", b"content")], &[]);
        let crate::EntryKind::File { hash, .. } = r.manifest.get("f").unwrap().kind else {
            panic!()
        };
        let map = Sha256Map::new(&c);
        assert_eq!(map.get(&hash), None);
        let sha = map.of_object(&hash).unwrap();
        assert_eq!(sha, Sha256::of_bytes(b"content"));
        assert_eq!(map.get(&hash), Some(sha));
        assert_eq!(Sha256::of_file(&c.object_path(&hash)).unwrap(), sha);
    }
}
