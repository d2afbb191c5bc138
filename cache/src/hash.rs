//! `Hash`: a blake3 digest, the one name for content in the cache (objects, trees, step keys).
//!
//! Printed and serialized as 64 lowercase hex digits so records and lock files stay readable
//! and diffable. `hash_file` memory-maps large files and hashes them on all cores (blake3's
//! tree mode), and reads small files plainly, where mapping costs more than it saves.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Files at least this large are memory-mapped and hashed in parallel.
pub const MMAP_THRESHOLD: u64 = 1 << 20;

/// A blake3 digest of some content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The blake3 hash of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// [`Hash::of_bytes`], on every core for a large buffer (the same digest).
    pub fn of_bytes_parallel(bytes: &[u8]) -> Hash {
        if bytes.len() < MMAP_THRESHOLD as usize {
            return Hash::of_bytes(bytes);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_rayon(bytes);
        Hash(*hasher.finalize().as_bytes())
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_string()
    }

    /// Append the 64 lowercase hex digits to `out`, without a string of their own.
    pub fn push_hex(&self, out: &mut String) {
        out.push_str(self.hex().as_str());
    }

    /// The 64 lowercase hex digits, held on the stack: what the lock, its index
    /// memo and every record write tens of thousands of times in a run.
    pub fn hex(&self) -> Hex {
        let mut digits = [0u8; 64];
        for (pair, b) in digits.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 15) as usize];
        }
        Hex(digits)
    }

    /// Whether `text` is this hash's 64 lowercase hex digits (compared without
    /// making them).
    pub fn is_hex(&self, text: &str) -> bool {
        let t = text.as_bytes();
        t.len() == 64
            && (self.0.iter().enumerate()).all(|(i, b)| {
                t[2 * i] == HEX[(b >> 4) as usize] && t[2 * i + 1] == HEX[(b & 15) as usize]
            })
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(12);
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Hash {
        Hash(*h.as_bytes())
    }
}

/// A hash's 64 lowercase hex digits ([`Hash::hex`]).
pub struct Hex([u8; 64]);

impl Hex {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.hex().as_str())
    }
}

impl FromStr for Hash {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Hash> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            bail!("`{s}` is not a hash: expected 64 lowercase hex digits");
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                bail!("`{s}` is not a hash: expected 64 lowercase hex digits");
            };
            out[i] = (hi << 4) | lo;
        }
        Ok(Hash(out))
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex().as_str())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The blake3 hash of a file's content.
///
/// Files of [`MMAP_THRESHOLD`] bytes or more are memory-mapped and hashed on all cores
/// (`blake3::Hasher::update_mmap_rayon`); smaller ones are read with one buffer.
pub fn hash_file(path: &Path) -> anyhow::Result<Hash> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot stat `{}`", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "`{}` is not a regular file (a device, FIFO or socket); give a file or a directory",
            path.display()
        );
    }
    let len = meta.len();
    let mut hasher = blake3::Hasher::new();
    if len >= MMAP_THRESHOLD {
        drop(file);
        hasher
            .update_mmap_rayon(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
    } else {
        // Streamed: constant memory even if the file grows while it is read.
        std::io::copy(&mut file, &mut hasher)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_hashed_on_every_core_has_the_same_digest() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(Hash::of_bytes_parallel(&big), Hash::of_bytes(&big));
        assert_eq!(Hash::of_bytes_parallel(b"small"), Hash::of_bytes(b"small"));
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_text() {
        let h = Hash::of_bytes(b"hello");
        assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        assert_eq!(h.short().len(), 12);
        let mut line = String::from("s1\t");
        h.push_hex(&mut line);
        assert_eq!(line, format!("s1\t{}", blake3::hash(b"hello").to_hex()));
        assert!("xyz".parse::<Hash>().is_err());
        assert!(h.to_hex().to_uppercase().parse::<Hash>().is_err());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{h}\""));
        assert_eq!(serde_json::from_str::<Hash>(&json).unwrap(), h);
    }

    #[test]
    fn small_and_large_files_hash_like_their_bytes() {
        let dir = crate::test_dir("hash_file");
        for len in [0usize, 5, (MMAP_THRESHOLD as usize) + 12345] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let p = dir.join(format!("f{len}"));
            std::fs::write(&p, &bytes).unwrap();
            assert_eq!(hash_file(&p).unwrap(), Hash::of_bytes(&bytes), "len {len}");
        }
    }
}
