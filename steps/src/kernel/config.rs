//! The kernel configuration: a base (`defconfig`, `tinyconfig`, an old config or
//! a config file), kconfig fragments merged onto it with the tree's own
//! `scripts/kconfig/merge_config.sh`, then `options` on top, then `olddefconfig`.
//!
//! Two things make this cheap and safe on an incremental run:
//! - a stamp in the build tree fingerprints everything the configuration came
//!   from (the fields, the files they name, the tree's Kconfig files, the
//!   compiler); when it matches, the configuration phase is skipped (it costs
//!   ~8 s on a real tree, more than make's own incremental build);
//! - when it runs and yields the same `.config` as before, the old mtime is put
//!   back, so make does not re-run `syncconfig` and recompiles nothing.
//!
//! After the merge, every requested value is checked against the final
//! `.config`: Kconfig silently drops an option whose dependencies are off, and a
//! kernel that lacks what the user asked for fails much later, at boot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qflow_engine::{CheckContext, FieldError};
use schemars::JsonSchema;
use serde::Deserialize;

/// The `config:` field: where the configuration starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Config {
    /// The architecture's default configuration (`make defconfig`).
    #[default]
    Defconfig,
    /// The smallest configuration (`make tinyconfig`); add what a guest needs
    /// with `fragments` or `options`.
    Tinyconfig,
    /// An existing configuration, brought up to this tree with `make olddefconfig`
    /// (new options take their defaults; nothing prompts).
    Oldconfig { from: String },
    /// A complete `.config` file, used as is (then `olddefconfig`).
    File(String),
}

/// The mapping forms of `config:`, parsed strictly so a typo names the field.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ConfigFields {
    /// An existing configuration (e.g. `/boot/config-6.1.0-13-amd64`), brought up
    /// to this tree with `make olddefconfig`: new options take their defaults.
    oldconfig: Option<OldConfigFields>,
    /// A complete `.config` file, used as is (then `make olddefconfig`).
    file: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OldConfigFields {
    /// The configuration to start from.
    from: String,
}

/// A kernel configuration target.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ConfigName {
    /// `make defconfig`: the architecture's default configuration.
    Defconfig,
    /// `make tinyconfig`: the smallest configuration.
    Tinyconfig,
}

/// The JSON Schema of `config:`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ConfigSchema {
    Named(ConfigName),
    Map(ConfigFields),
}

impl JsonSchema for Config {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KernelConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        ConfigSchema::json_schema(generator)
    }
}

const CONFIG_FORMS: &[&str] = &["defconfig", "tinyconfig", "oldconfig", "file"];

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Config;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`defconfig`, `tinyconfig`, `{ oldconfig: { from: PATH } }` or `{ file: PATH }`")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Config, E> {
                match v {
                    "defconfig" => Ok(Config::Defconfig),
                    "tinyconfig" => Ok(Config::Tinyconfig),
                    _ => Err(E::unknown_variant(v, CONFIG_FORMS)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Config, A::Error> {
                use serde::de::Error as _;
                let f =
                    ConfigFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match (f.oldconfig, f.file) {
                    (Some(old), None) => Ok(Config::Oldconfig { from: old.from }),
                    (None, Some(file)) => Ok(Config::File(file)),
                    (Some(_), Some(_)) => Err(A::Error::custom(
                        "give either `oldconfig` or `file`, not both",
                    )),
                    (None, None) => Err(A::Error::custom(
                        "`config` needs `oldconfig: { from: PATH }` or `file: PATH`",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A value in `options:` (`EXT4_FS: y`, `NR_CPUS: 4`, `CMDLINE: "console=ttyS0"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OptionValue {
    /// `true` is `y`, `false` is "not set".
    Bool(bool),
    Int(i64),
    /// `y`, `n`, `m`, a number, or a string (quoted in the `.config`).
    Text(String),
}

impl OptionValue {
    /// The value as it reads in a `.config` (`y`, `4`, `"console=ttyS0"`), or
    /// `None` for "not set".
    fn rendered(&self) -> Option<String> {
        match self {
            OptionValue::Bool(true) => Some("y".to_string()),
            OptionValue::Bool(false) => None,
            OptionValue::Int(i) => Some(i.to_string()),
            OptionValue::Text(t) => match t.as_str() {
                "n" => None,
                "y" | "m" => Some(t.clone()),
                _ if is_number(t) => Some(t.clone()),
                _ if t.starts_with('"') && t.ends_with('"') && t.len() >= 2 => Some(t.clone()),
                _ => Some(format!(
                    "\"{}\"",
                    t.replace('\\', "\\\\").replace('"', "\\\"")
                )),
            },
        }
    }
}

fn is_number(t: &str) -> bool {
    let t = t.strip_prefix('-').unwrap_or(t);
    if let Some(hex) = t.strip_prefix("0x") {
        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else {
        !t.is_empty() && t.chars().all(|c| c.is_ascii_digit())
    }
}

/// `EXT4_FS` or `CONFIG_EXT4_FS` → `CONFIG_EXT4_FS`, or `None` when not a symbol name.
pub fn symbol(name: &str) -> Option<String> {
    let bare = name.strip_prefix("CONFIG_").unwrap_or(name);
    let ok = !bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| format!("CONFIG_{bare}"))
}

/// One line of a `.config` or fragment: `CONFIG_X=v` or `# CONFIG_X is not set`.
/// `Some((symbol, None))` is "not set"; `None` is a comment, blank or other line.
pub fn parse_line(line: &str) -> Option<(String, Option<String>)> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("# ")
        && let Some(sym) = rest.strip_suffix(" is not set")
        && sym.starts_with("CONFIG_")
    {
        return Some((sym.to_string(), None));
    }
    let (sym, value) = line.split_once('=')?;
    sym.starts_with("CONFIG_")
        .then(|| (sym.to_string(), Some(value.to_string())))
}

/// What one requested value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub value: Option<String>,
    pub origin: String,
}

/// Every value the user asked for, later ones winning (fragments in order, then `options`).
pub fn requests(
    fragments: &[(String, String)],
    options: &BTreeMap<String, OptionValue>,
) -> BTreeMap<String, Request> {
    let mut out = BTreeMap::new();
    for (name, text) in fragments {
        for (n, line) in text.lines().enumerate() {
            if let Some((sym, value)) = parse_line(line) {
                out.insert(
                    sym,
                    Request {
                        value,
                        origin: format!("{name}:{}", n + 1),
                    },
                );
            }
        }
    }
    for (name, value) in options {
        if let Some(sym) = symbol(name) {
            out.insert(
                sym,
                Request {
                    value: value.rendered(),
                    origin: format!("options.{name}"),
                },
            );
        }
    }
    out
}

/// The `options:` map as a kconfig fragment for merge_config.sh.
pub fn options_fragment(options: &BTreeMap<String, OptionValue>) -> String {
    let mut text = String::from("# Written by qflow from the step's `options:`.\n");
    for (name, value) in options {
        let Some(sym) = symbol(name) else { continue };
        match value.rendered() {
            Some(v) => text.push_str(&format!("{sym}={v}\n")),
            None => text.push_str(&format!("# {sym} is not set\n")),
        }
    }
    text
}

/// Requested values that the final `.config` does not have, as messages.
pub fn unmet(requests: &BTreeMap<String, Request>, final_config: &str) -> Vec<String> {
    let actual: BTreeMap<String, Option<String>> =
        final_config.lines().filter_map(parse_line).collect();
    let mut problems = Vec::new();
    for (sym, req) in requests {
        let got = actual.get(sym).cloned().flatten();
        let ok = match (&req.value, &got) {
            (None, None) => true,
            // A module request is met by built-in when modules are off.
            (Some(want), Some(have)) => want == have || (want == "m" && have == "y"),
            _ => false,
        };
        if !ok {
            let want = req
                .value
                .as_deref()
                .map(|v| format!("{sym}={v}"))
                .unwrap_or(format!("{sym} unset"));
            let have = match got {
                Some(v) => format!("is {v}"),
                None if actual.contains_key(sym) => "is not set".to_string(),
                None => {
                    "is absent (not offered: a `depends on` is off, or no such option)".to_string()
                }
            };
            problems.push(format!("`{want}` (from {}) {have}", req.origin));
        }
    }
    problems
}

/// Validate `config`, `fragments` and `options` before anything runs.
pub fn check(
    config: &Config,
    fragments: &[String],
    options: &BTreeMap<String, OptionValue>,
    ctx: &CheckContext,
) -> Result<(), FieldError> {
    match config {
        Config::Oldconfig { from } if !ctx.resolve(from).is_file() => {
            return Err(FieldError::new(
                "config.oldconfig.from",
                format!("`{from}` does not exist: give a kernel `.config` file"),
            ));
        }
        Config::File(file) if !ctx.resolve(file).is_file() => {
            return Err(FieldError::new(
                "config.file",
                format!("`{file}` does not exist: give a kernel `.config` file"),
            ));
        }
        _ => {}
    }
    for (i, frag) in fragments.iter().enumerate() {
        let field = format!("fragments[{i}]");
        let text = std::fs::read_to_string(ctx.resolve(frag))
            .map_err(|e| FieldError::new(&field, format!("cannot read fragment `{frag}`: {e}")))?;
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty()
                || (t.starts_with('#') && parse_line(t).is_none())
                || parse_line(t).is_some()
            {
                continue;
            }
            return Err(FieldError::new(
                &field,
                format!(
                    "`{frag}` line {}: `{t}` is not `CONFIG_NAME=value` or `# CONFIG_NAME is not set`",
                    n + 1
                ),
            ));
        }
    }
    for (name, value) in options {
        let field = format!("options.{name}");
        if symbol(name).is_none() {
            return Err(FieldError::new(
                field,
                format!(
                    "`{name}` is not a kconfig option name (letters, digits, `_`: e.g. `EXT4_FS`)"
                ),
            ));
        }
        if let OptionValue::Text(t) = value
            && t.contains(['\n', '\r'])
        {
            return Err(FieldError::new(field, "an option value cannot span lines"));
        }
    }
    Ok(())
}

/// Files whose content shapes the configuration besides the step's own fields:
/// the Kconfig files kbuild read last time (listed in `auto.conf.cmd`), the
/// base configurations of `defconfig`/`tinyconfig`, and the merge script.
pub fn tree_files(src: &Path, build: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(cmd) = std::fs::read_to_string(build.join("include/config/auto.conf.cmd")) {
        for line in cmd.lines() {
            let t = line.trim().trim_end_matches('\\').trim();
            if t.contains("Kconfig") && !t.contains(' ') {
                files.push(src.join(t));
            }
        }
    }
    for rel in [
        "kernel/configs/tiny-base.config",
        "kernel/configs/tiny.config",
        "arch/x86/configs/tiny.config",
        "arch/x86/configs/x86_64_defconfig",
        "arch/x86/configs/i386_defconfig",
        "scripts/kconfig/merge_config.sh",
        "Kconfig",
        "Makefile",
    ] {
        files.push(src.join(rel));
    }
    files
}

/// The fingerprint of a configuration: when the stamp in the build tree holds
/// it, the `.config` there is already what these inputs produce.
pub fn fingerprint(parts: &[(&str, String)], files: &[PathBuf]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"qflow kernel config v1\n");
    for (k, v) in parts {
        h.update(format!("{k}={}\n", v.len()).as_bytes());
        h.update(v.as_bytes());
    }
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        match std::fs::read(f) {
            Ok(bytes) => {
                h.update(b"\n+");
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            Err(_) => {
                h.update(b"\n-");
            }
        }
    }
    h.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, OptionValue)]) -> BTreeMap<String, OptionValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn options_render_as_kconfig_lines() {
        let o = opts(&[
            ("EXT4_FS", OptionValue::Text("y".into())),
            ("CONFIG_DEBUG_INFO", OptionValue::Bool(false)),
            ("NR_CPUS", OptionValue::Int(4)),
            (
                "CMDLINE",
                OptionValue::Text("console=ttyS0 \"quiet\"".into()),
            ),
            ("PHYSICAL_START", OptionValue::Text("0x1000000".into())),
        ]);
        let text = options_fragment(&o);
        assert!(text.contains("CONFIG_EXT4_FS=y\n"), "{text}");
        assert!(text.contains("# CONFIG_DEBUG_INFO is not set\n"), "{text}");
        assert!(text.contains("CONFIG_NR_CPUS=4\n"), "{text}");
        assert!(
            text.contains("CONFIG_CMDLINE=\"console=ttyS0 \\\"quiet\\\"\"\n"),
            "{text}"
        );
        assert!(text.contains("CONFIG_PHYSICAL_START=0x1000000\n"), "{text}");
    }

    #[test]
    fn options_win_over_fragments_and_later_fragments_over_earlier() {
        let frags = vec![
            (
                "a.config".to_string(),
                "CONFIG_A=y\nCONFIG_B=y\n".to_string(),
            ),
            (
                "b.config".to_string(),
                "# CONFIG_B is not set\nCONFIG_C=m\n".to_string(),
            ),
        ];
        let r = requests(&frags, &opts(&[("C", OptionValue::Text("y".into()))]));
        assert_eq!(r["CONFIG_A"].value.as_deref(), Some("y"));
        assert_eq!(
            r["CONFIG_B"],
            Request {
                value: None,
                origin: "b.config:1".into()
            }
        );
        assert_eq!(
            r["CONFIG_C"],
            Request {
                value: Some("y".into()),
                origin: "options.C".into()
            }
        );
    }

    #[test]
    fn a_dropped_option_is_reported_with_where_it_was_asked() {
        let frags = vec![(
            "guest.config".to_string(),
            "CONFIG_64BIT=y\nCONFIG_VIRTIO_BLK=y\n".to_string(),
        )];
        let r = requests(&frags, &BTreeMap::new());
        let problems = unmet(&r, "CONFIG_64BIT=y\n# CONFIG_VIRTIO_BLK is not set\n");
        assert_eq!(
            problems,
            vec!["`CONFIG_VIRTIO_BLK=y` (from guest.config:2) is not set".to_string()]
        );
        assert!(unmet(&r, "CONFIG_64BIT=y\nCONFIG_VIRTIO_BLK=y\n").is_empty());
    }

    #[test]
    fn option_names_are_checked() {
        assert_eq!(symbol("EXT4_FS").as_deref(), Some("CONFIG_EXT4_FS"));
        assert_eq!(symbol("CONFIG_EXT4_FS").as_deref(), Some("CONFIG_EXT4_FS"));
        assert_eq!(symbol("EXT4 FS"), None);
        assert_eq!(symbol(""), None);
    }

    #[test]
    fn the_fingerprint_follows_file_contents() {
        let d = std::env::temp_dir().join(format!("qflow-kernel-fp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("Kconfig");
        std::fs::write(&f, "config A\n").unwrap();
        let a = fingerprint(&[("config", "tinyconfig".into())], std::slice::from_ref(&f));
        assert_eq!(
            a,
            fingerprint(&[("config", "tinyconfig".into())], std::slice::from_ref(&f))
        );
        std::fs::write(&f, "config B\n").unwrap();
        assert_ne!(
            a,
            fingerprint(&[("config", "tinyconfig".into())], std::slice::from_ref(&f))
        );
        assert_ne!(
            a,
            fingerprint(&[("config", "defconfig".into())], std::slice::from_ref(&f))
        );
    }
}
