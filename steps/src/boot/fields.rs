//! The value types of a boot's fields: what `collect`, `memory`, `accel`,
//! `plugins`, `login` and `terminal` hold, as the user writes them in YAML.

use anyhow::{Context as _, bail};
use qflow_engine::RunContext;
use schemars::JsonSchema;
use serde::Deserialize;

use super::guest_run::GuestLogin;
use crate::secret::Secret;

/// One `collect` entry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Collect {
    /// A guest path, read over the console.
    Console(String),
    /// A file on a data disk's ext4 file system, read after QEMU ends.
    Disk(DiskFile),
}

/// A file on one of the `disks`, by that entry and the path inside its file system.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// The `disks` entry holding it.
    pub disk: String,
    /// Its absolute path in the disk's (unpartitioned ext4) file system.
    pub path: String,
}

impl Collect {
    pub(super) fn path(&self) -> &str {
        match self {
            Collect::Console(p) => p,
            Collect::Disk(d) => &d.path,
        }
    }
}

/// A YAML scalar taken as text (`512`, `2G`, `true`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// A TCG plugin and the arguments its `qemu_plugin_install` receives.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub path: String,
    /// `{ inline: on, filter: 42 }`: the plugin's `argv` holds `filter=42`,
    /// `inline=on` (by name). A list (`[inline=on]`) is passed as QEMU's deprecated
    /// `arg=` form, which QEMU 7.2 reads as an option: `inline=on` arrives intact,
    /// but a bare `42` arrives as `42=on`.
    #[serde(default)]
    pub args: PluginArgs,
}

/// A plugin's arguments: `NAME: value` pairs, or a list of `NAME=value` texts.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PluginArgs {
    Named(std::collections::BTreeMap<String, Scalar>),
    List(Vec<Scalar>),
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs::List(Vec::new())
    }
}

impl PluginArgs {
    /// The texts QEMU passes on, as `(field, text)`: `name=value` for a mapping,
    /// the value itself for a list entry.
    pub fn texts(&self) -> Vec<(String, String)> {
        match self {
            PluginArgs::Named(m) => m
                .iter()
                .map(|(k, v)| (format!("args.{k}"), format!("{k}={v}")))
                .collect(),
            PluginArgs::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("args[{i}]"), v.to_string()))
                .collect(),
        }
    }

    /// List entries without `=`: QEMU hands each to the plugin as `VALUE=on`.
    pub fn bare_values(&self) -> Vec<String> {
        match self {
            PluginArgs::Named(_) => Vec::new(),
            PluginArgs::List(l) => l
                .iter()
                .map(|v| v.to_string())
                .filter(|v| !v.contains('='))
                .collect(),
        }
    }
}

/// Serial console login.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[serde(default = "root")]
    pub user: String,
    /// `{ file: PATH }` or `{ env: NAME }`; never in argv, logs or the lock.
    pub password: Secret,
}

fn root() -> String {
    "root".to_string()
}

/// Guest terminal size.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    pub rows: u16,
    pub cols: u16,
}

impl Login {
    /// The user and the password read at run time, ready to type at the prompt.
    pub(super) fn guest_login(&self, ctx: &RunContext) -> anyhow::Result<GuestLogin> {
        let Some(secret) = self.password.read(ctx.work_dir())? else {
            bail!(
                "`login.password` must be `{{ file: PATH }}` or `{{ env: NAME }}`: qflow types it at the prompt"
            );
        };
        let password = String::from_utf8(secret.expose().to_vec())
            .context("the login password is not UTF-8")?;
        Ok(GuestLogin {
            user: self.user.clone(),
            password,
        })
    }
}
