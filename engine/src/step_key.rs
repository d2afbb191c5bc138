//! Step keys: blake3 over a canonical, versioned encoding of everything a step's
//! result depends on.
//!
//! In order: the encoding version; the kind and its schema version; the kind's
//! fields after interpolating vars and `${{ env.X }}` (as canonical JSON, keys
//! sorted; `${{ steps.X }}` stays as written, because the upstream output enters
//! as a hash below, not as a path, so moving the cache invalidates nothing); the
//! step's `env:`; the digest of every declared input (files, trees, globs); the
//! output hash of every upstream step (by name); the identity of every external
//! tool the kind runs; the kind's extra key material (e.g. a password's blake3).
//! Each item is length-prefixed, so no two different materials encode alike.
//! Not in the key: `jobs` (parallelism does not change results), `cache`, and
//! `after` ordering beyond the upstream outputs it adds.
//!
//! Imports nothing of the engine.

use qflow_cache::Hash;

/// Bump when the encoding below changes: every key changes with it.
pub const KEY_VERSION: &str = "qflow-step-key 1";

/// Everything that enters one step's key, kept so `qflow plan` can diff it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyMaterial {
    /// The step's `kind:`.
    pub kind: String,
    /// The kind's schema version.
    pub schema_version: u32,
    /// Canonical JSON of the interpolated fields.
    pub fields: String,
    /// `env:` values and the `${{ env.X }}` values read.
    pub env: Sorted<String>,
    /// Input label → digest.
    pub inputs: Sorted<Hash>,
    /// Upstream step name → output hash.
    pub upstream: Sorted<Hash>,
    /// Program → identity (first line of its version output).
    pub tools: Sorted<String>,
    /// Extra material (never a secret itself).
    pub extra: Sorted<String>,
}

/// Name → value pairs sorted by name, each name once: what a `BTreeMap` holds, in
/// a vector of exactly its length (a map of one pair allocates a node of eleven,
/// and a run keeps a material per ready step).
pub type Sorted<V> = Vec<(String, V)>;

/// `pairs` sorted by name; of pairs with the same name the last stands, as in a map.
pub fn sorted<V>(pairs: impl IntoIterator<Item = (String, V)>) -> Sorted<V> {
    let mut v: Sorted<V> = pairs.into_iter().collect();
    v.reverse();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|later, kept| later.0 == kept.0);
    v.shrink_to_fit();
    v
}

/// Feed one tagged item to `h`, both length-prefixed, so no two different
/// sequences of items hash the same bytes.
pub fn put_tagged(h: &mut blake3::Hasher, tag: &str, value: &[u8]) {
    h.update(&(tag.len() as u64).to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&(value.len() as u64).to_le_bytes());
    h.update(value);
}

impl KeyMaterial {
    /// The step key: the blake3 of all of it, versioned.
    pub fn key(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        let mut put = |tag: &str, value: &[u8]| put_tagged(&mut h, tag, value);
        put("version", KEY_VERSION.as_bytes());
        put("kind", self.kind.as_bytes());
        put("schema", &self.schema_version.to_le_bytes());
        put("fields", self.fields.as_bytes());
        for (k, v) in &self.env {
            put("env", k.as_bytes());
            put("env-value", v.as_bytes());
        }
        for (k, v) in &self.inputs {
            put("input", k.as_bytes());
            put("input-digest", &v.0);
        }
        for (k, v) in &self.upstream {
            put("upstream", k.as_bytes());
            put("upstream-output", &v.0);
        }
        for (k, v) in &self.tools {
            put("tool", k.as_bytes());
            put("tool-identity", v.as_bytes());
        }
        for (k, v) in &self.extra {
            put("extra", k.as_bytes());
            put("extra-value", v.as_bytes());
        }
        Hash(*h.finalize().as_bytes())
    }

    /// One digest of the extra material, safe to show and store.
    pub fn extra_digest(&self) -> Option<Hash> {
        if self.extra.is_empty() {
            return None;
        }
        let mut h = blake3::Hasher::new();
        for (k, v) in &self.extra {
            h.update(k.as_bytes());
            h.update(b"\0");
            h.update(v.as_bytes());
            h.update(b"\0");
        }
        Some(Hash(*h.finalize().as_bytes()))
    }
}

/// Canonical JSON of a YAML value: mapping keys sorted, no whitespace.
pub fn canonical_json(v: &serde_yaml::Value) -> String {
    let json: serde_json::Value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    let mut text = serde_json::to_string(&json).unwrap_or_default();
    // A workflow keeps this for each of its steps: without the writer's spare room
    // (it starts at 128 bytes), 10,000 small steps keep 1 MB less.
    text.shrink_to_fit();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_of_material_changes_the_key() {
        let base = KeyMaterial {
            kind: "command".into(),
            schema_version: 1,
            fields: "{}".into(),
            ..Default::default()
        };
        let k = base.key();
        let mut m = base.clone();
        m.fields = "{\"a\":1}".into();
        assert_ne!(m.key(), k);
        let mut m = base.clone();
        m.tools.push(("qemu-img".into(), "7.2".into()));
        assert_ne!(m.key(), k);
        let mut m = base.clone();
        m.upstream.push(("a".into(), Hash([1; 32])));
        assert_ne!(m.key(), k);
        assert_eq!(base.key(), k);
    }

    #[test]
    fn sorted_pairs_hold_what_a_map_would() {
        let pairs =
            [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)].map(|(k, v)| (k.to_string(), v));
        let map: std::collections::BTreeMap<String, i32> = pairs.clone().into_iter().collect();
        let v = sorted(pairs);
        assert_eq!(v, map.into_iter().collect::<Vec<_>>());
        assert_eq!(v.capacity(), 3);
    }
}
