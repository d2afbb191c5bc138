//! `qflow.lock`: what the last apply used and produced, per step.
//!
//! It sits beside the workflow and is what a paper's artifact appendix cites:
//! per step its key, the digests of its inputs, its upstream outputs, the
//! identities of its tools, its fields, the hashes of its outputs, and the
//! facts a kind noted (a resolved download checksum, installed package
//! versions). Everything is sorted, so an apply that changes nothing rewrites
//! it byte-identical. Secrets never enter it: `${{ env.X }}` values and a kind's
//! extra key material appear only as blake3 digests.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const LOCK_VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LockFile {
    pub version: u32,
    pub workflow: String,
    pub steps: BTreeMap<String, LockedStep>,
}

/// One step as last completed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LockedStep {
    pub kind: String,
    pub schema_version: u32,
    pub key: String,
    pub fields: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
    pub output: String,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

impl LockFile {
    /// Read `path`; a missing or unreadable lock is empty.
    pub fn read(path: &Path) -> LockFile {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
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
