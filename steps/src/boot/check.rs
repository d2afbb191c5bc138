//! A boot's field checks: contradictions and bad values refused before anything
//! runs, each naming the field and saying what to write instead.

use std::collections::BTreeMap;

use qflow_engine::{CheckContext, FieldError};

use super::command_line::DISK_OPTIONS;
use super::fields::{AccelChoice, Collect, PluginArgs};
use super::guest_run::collected_name;
use super::{Boot, matrix};
use crate::secret::Secret;

/// A command travels base64-encoded on one tty line, which holds 4095 bytes.
const MAX_COMMAND_BYTES: usize = 2900;

impl Boot {
    /// Every `{{ matrix.NAME }}` names a parameter of this step's matrix.
    fn check_matrix_references(&self) -> Result<(), FieldError> {
        let mut texts: Vec<(String, &str)> = Vec::new();
        let mut owned: Vec<(String, String)> = Vec::new();
        for (i, p) in self.plugins.iter().enumerate() {
            texts.push((format!("plugins[{i}].path"), &p.path));
            for (field, text) in p.args.texts() {
                owned.push((format!("plugins[{i}].{field}"), text));
            }
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            texts.push((format!("extra_args[{i}]"), a));
        }
        for (i, c) in self.commands.iter().enumerate() {
            texts.push((format!("commands[{i}]"), c));
        }
        texts.extend(owned.iter().map(|(f, t)| (f.clone(), t.as_str())));
        matrix::check(&self.matrix, &texts)
    }

    /// `repeat` and `metrics`.
    fn check_results(&self) -> Result<(), FieldError> {
        if let Some(n) = self.repeat {
            if !(1..=1000).contains(&n) {
                return Err(FieldError::new(
                    "repeat",
                    format!("`repeat: {n}`: give 1 to 1000 runs per matrix point"),
                ));
            }
            if self.checkpoint && n > 1 {
                return Err(FieldError::new(
                    "repeat",
                    "a checkpoint is one guest; put `repeat` on the runs from it",
                ));
            }
            if n > 1 && self.matrix.contains_key(matrix::REPEAT) {
                return Err(FieldError::new(
                    format!("matrix.{}", matrix::REPEAT),
                    "`repeat` numbers the repeats of each run; rename this matrix variable",
                ));
            }
        }
        qflow_engine::results::check_metrics(&self.metrics)?;
        qflow_engine::results::check_metrics_read(
            &self.metrics,
            &self.run_outputs(),
            "collect it (`collect: [/guest/path/FILE]`) or read `console.log`",
        )
    }

    pub(super) fn check_fields(&self, ctx: &CheckContext) -> Result<(), FieldError> {
        self.timeout()?;
        if let Some(cp) = &self.from_checkpoint {
            let machine_fields: [(&str, bool); 11] = [
                ("system", self.system.is_some()),
                ("disks", !self.disks.is_empty()),
                ("kernel", self.kernel.is_some()),
                ("initrd", self.initrd.is_some()),
                ("append", self.append.is_some()),
                ("smp", self.smp.is_some()),
                ("memory", self.memory.is_some()),
                ("icount", self.icount.is_some()),
                ("accel", self.accel.is_some()),
                ("cpu", self.cpu.is_some()),
                ("login", self.login.is_some()),
            ];
            for (field, set) in machine_fields {
                if set {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "`{field}` comes from the checkpoint `{cp}` (the restored machine must be the saved one); remove it here"
                        ),
                    ));
                }
            }
            if self.snapshot == Some(false) {
                return Err(FieldError::new(
                    "snapshot",
                    "a run from a checkpoint always discards its disk writes; remove `snapshot: false`",
                ));
            }
            if self.checkpoint {
                return Err(FieldError::new(
                    "checkpoint",
                    "a run from a checkpoint cannot save another checkpoint; boot a new one instead",
                ));
            }
            if cp.is_empty() || cp.contains('/') {
                return Err(FieldError::new(
                    "from_checkpoint",
                    "`from_checkpoint` names a boot step with `checkpoint: true`",
                ));
            }
        } else if self.system.is_none() && self.kernel.is_none() {
            return Err(FieldError::new(
                "system",
                "a boot needs a `system` image or a `kernel` (or `from_checkpoint`)",
            ));
        }
        if self.disks.len() > DISK_OPTIONS.len() - 1 {
            return Err(FieldError::new(
                "disks",
                format!(
                    "at most {} data disks (`-hdb` to `-hdd`)",
                    DISK_OPTIONS.len() - 1
                ),
            ));
        }
        if self.append.is_some() && self.kernel.is_none() {
            return Err(FieldError::new(
                "append",
                "`append` needs a `kernel` (QEMU passes it to `-kernel` only)",
            ));
        }
        if self.initrd.is_some() && self.kernel.is_none() {
            return Err(FieldError::new("initrd", "`initrd` needs a `kernel`"));
        }
        if let Some(m) = &self.memory {
            let m = m.to_string();
            let digits = m.trim_end_matches(['M', 'G', 'm', 'g']);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || m.len() - digits.len() > 1
            {
                return Err(FieldError::new(
                    "memory",
                    format!("`{m}` is not a memory size: write `512`, `512M` or `2G`"),
                ));
            }
        }
        if let Some(cpu) = &self.cpu
            && (cpu.is_empty() || cpu.contains(char::is_whitespace))
        {
            return Err(FieldError::new(
                "cpu",
                format!(
                    "`{cpu}` is not a QEMU CPU model: e.g. `max`, `host`, `Skylake-Server` (`qemu-system-x86_64 -cpu help` lists them)"
                ),
            ));
        }
        if self.smp == Some(0) {
            return Err(FieldError::new("smp", "`smp` must be at least 1"));
        }
        if let Some(shift) = self.icount
            && shift > 10
        {
            return Err(FieldError::new(
                "icount",
                format!("`icount: {shift}`: QEMU accepts shifts 0 to 10"),
            ));
        }
        if self.accel == Some(AccelChoice::Kvm)
            && let Some(field) = self.needs_tcg()
        {
            return Err(FieldError::new(
                "accel",
                format!("`{field}` works only under TCG; use `accel: tcg` or `auto`"),
            ));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            if p.path.is_empty() {
                return Err(FieldError::new(
                    format!("plugins[{i}].path"),
                    "a plugin needs the path of its `.so`",
                ));
            }
            if let PluginArgs::Named(m) = &p.args {
                for name in m.keys() {
                    if name.is_empty() || name.contains([',', '=']) || name == "file" {
                        return Err(FieldError::new(
                            format!("plugins[{i}].args.{name}"),
                            format!(
                                "`{name}` cannot be a plugin argument's name: use letters, digits and `_`"
                            ),
                        ));
                    }
                }
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            if c.trim().is_empty() {
                return Err(FieldError::new(
                    format!("commands[{i}]"),
                    "an empty command",
                ));
            }
            if c.len() > MAX_COMMAND_BYTES {
                return Err(FieldError::new(
                    format!("commands[{i}]"),
                    format!(
                        "a command may hold {MAX_COMMAND_BYTES} bytes (one tty line); put longer ones in a script on a disk"
                    ),
                ));
            }
        }
        let mut names = BTreeMap::new();
        for (i, entry) in self.collect.iter().enumerate() {
            let field = format!("collect[{i}]");
            let c = entry.path();
            if let Collect::Disk(d) = entry {
                if !self.disks.contains(&d.disk) {
                    return Err(FieldError::new(
                        format!("{field}.disk"),
                        format!("`{}` is not one of this step's `disks`", d.disk),
                    ));
                }
                if !self.writes_kept() {
                    return Err(FieldError::new(
                        field,
                        "collecting from a disk needs `snapshot: false` (with `-snapshot` QEMU discards \
                         the writes); or collect the guest path over the console",
                    ));
                }
                if c.contains(|ch: char| ch.is_whitespace() || ch == '"' || ch == '\'') {
                    return Err(FieldError::new(
                        format!("{field}.path"),
                        format!("`{c}`: debugfs reads paths without spaces or quotes"),
                    ));
                }
            }
            if !c.starts_with('/') {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` must be an absolute guest path"),
                ));
            }
            let name = collected_name(c);
            if name.is_empty()
                || name == "."
                || name == ".."
                || self.run_outputs()[..3].contains(&name)
            {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` cannot be collected under the name `{name}`"),
                ));
            }
            if let Some(other) = names.insert(name.clone(), c.to_string()) {
                return Err(FieldError::new(
                    field,
                    format!("`{c}` and `{other}` would both be collected as `{name}`"),
                ));
            }
        }
        if let Some(login) = &self.login {
            login.password.check("login.password", ctx)?;
            if matches!(login.password, Secret::Locked | Secret::Random) {
                return Err(FieldError::new(
                    "login.password",
                    "a login password is `{ file: PATH }` or `{ env: NAME }`",
                ));
            }
            if login.user.is_empty() || login.user.contains(char::is_whitespace) {
                return Err(FieldError::new(
                    "login.user",
                    format!("`{}` is not a user name", login.user),
                ));
            }
        }
        if let Some(t) = self.terminal
            && (t.rows == 0 || t.cols == 0)
        {
            return Err(FieldError::new(
                "terminal",
                "`rows` and `cols` must be positive",
            ));
        }
        self.check_matrix_references()?;
        self.check_results()?;
        if !self.matrix.is_empty() && self.checkpoint {
            return Err(FieldError::new(
                "matrix",
                "a checkpoint is one guest; put the `matrix` on the runs from it",
            ));
        }
        Ok(())
    }
}
