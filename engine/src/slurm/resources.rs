//! What a step asks of the cluster (`resources:`) and where the workflow's jobs go
//! (the workflow-level `slurm:` block).
//!
//! Neither enters the step key: they change where a step runs, not what it computes.
//! Values are checked when the workflow loads (a `time` Slurm cannot read would
//! otherwise surface as a rejected submission halfway through a run), and each maps
//! to exactly one Slurm option, passed as argv.

use serde::{Deserialize, Serialize};

/// A step's `resources:`. Every field is optional; `cpus` defaults to the step's `jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPUs of the job (`--cpus-per-task`); the step's jobserver gets exactly these.
    pub cpus: Option<usize>,
    /// Memory of the job: a number with an optional K, M, G or T suffix (`--mem`).
    pub memory: Option<String>,
    /// Time limit: `90s`, `30m`, `2h`, `1d`, or Slurm's own `[D-]HH:MM:SS` / `MM:SS` / `MM`.
    pub time: Option<String>,
    /// GPUs (`--gpus`).
    pub gpus: Option<u32>,
    /// Node features the job needs (`--constraint`), e.g. `avx512&bigmem`.
    pub constraint: Option<String>,
    /// A partition for this step, instead of the workflow's.
    pub partition: Option<String>,
}

/// The workflow-level `slurm:` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The partition jobs go to (default: the cluster's default partition).
    pub partition: Option<String>,
    /// The account jobs are charged to (`--account`).
    pub account: Option<String>,
    /// The quality of service (`--qos`).
    pub qos: Option<String>,
    /// More options for every `srun`/`sbatch`, one argument per item (argv, never a shell string).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl Resources {
    /// Check each field; the error names the field (`time`, `memory`) and says what is accepted.
    pub fn check(&self) -> Result<(), (String, String)> {
        if self.cpus == Some(0) {
            return Err(("cpus".into(), "`cpus` must be at least 1".into()));
        }
        if let Some(m) = &self.memory {
            memory_arg(m).map_err(|e| ("memory".to_string(), e))?;
        }
        if let Some(t) = &self.time {
            time_limit(t).map_err(|e| ("time".to_string(), e))?;
        }
        for (field, v) in [
            ("constraint", &self.constraint),
            ("partition", &self.partition),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == ','))
            {
                return Err((
                    field.to_string(),
                    format!("`{field}` must be one word without spaces or commas, not `{v}`"),
                ));
            }
        }
        Ok(())
    }
}

impl ClusterSettings {
    /// Check each field; the error names the field and says what is accepted.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (field, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().any(char::is_whitespace))
            {
                return Err((
                    field.to_string(),
                    format!("`{field}` must be one word without spaces, not `{v}`"),
                ));
            }
        }
        for (i, a) in self.extra_args.iter().enumerate() {
            if a.starts_with("--export") {
                return Err((
                    format!("extra_args[{i}]"),
                    "qflow sets `--export=NONE` itself so that your environment stays out of \
                     the controller's state files; remove this argument"
                        .to_string(),
                ));
            }
        }
        Ok(())
    }
}

/// `memory` as Slurm's `--mem` value (`512M`, `4G`; a bare number is megabytes).
pub fn memory_arg(text: &str) -> Result<String, String> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit).to_string();
    if num.is_empty() || num.parse::<u64>().map_or(true, |n| n == 0) {
        return Err(format!(
            "memory `{text}` is not a size; write a number with an optional K, M, G or T suffix, e.g. `4G`"
        ));
    }
    match unit.as_str() {
        "" | "K" | "M" | "G" | "T" => Ok(format!("{num}{unit}")),
        _ => Err(format!(
            "memory `{text}` has an unknown unit `{unit}`; use K, M, G or T, e.g. `512M`"
        )),
    }
}

/// A time limit in seconds, from `90s`, `30m`, `2h`, `1d` or Slurm's own forms
/// (`MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
pub fn time_limit(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "time `{text}` is not a duration; write `90s`, `30m`, `2h`, `1d` or Slurm's `[D-]HH:MM:SS`"
        )
    };
    let t = text.trim();
    let num = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    let secs = if let Some(unit) = t.chars().last().filter(|c| "smhd".contains(*c)) {
        let n = num(&t[..t.len() - 1])?;
        n * match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86400,
        }
    } else {
        let (days, rest) = match t.split_once('-') {
            Some((d, r)) => (num(d)?, Some(r)),
            None => (0, None),
        };
        let parts: Vec<u64> = rest
            .unwrap_or(t)
            .split(':')
            .map(num)
            .collect::<Result<_, _>>()?;
        days * 86400
            + match (rest.is_some(), parts.as_slice()) {
                (false, [m]) => m * 60,
                (false, [m, s]) => m * 60 + s,
                (_, [h, m, s]) => h * 3600 + m * 60 + s,
                (true, [h]) => h * 3600,
                (true, [h, m]) => h * 3600 + m * 60,
                _ => return Err(bad()),
            }
    };
    if secs == 0 {
        return Err(format!("time `{text}` is zero; give the step some time"));
    }
    Ok(secs)
}

/// Seconds as Slurm's `--time` value: `D-HH:MM:SS`, or `HH:MM:SS` under a day.
pub fn time_arg(secs: u64) -> String {
    let (d, rest) = (secs / 86400, secs % 86400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if d > 0 { format!("{d}-{hms}") } else { hms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_in_the_users_words_and_in_slurms() {
        assert_eq!(time_limit("90s"), Ok(90));
        assert_eq!(time_limit("30m"), Ok(1800));
        assert_eq!(time_limit("2h"), Ok(7200));
        assert_eq!(time_limit("1d"), Ok(86400));
        assert_eq!(time_limit("5"), Ok(300));
        assert_eq!(time_limit("5:30"), Ok(330));
        assert_eq!(time_limit("1:00:00"), Ok(3600));
        assert_eq!(time_limit("2-1"), Ok(2 * 86400 + 3600));
        assert_eq!(time_limit("2-1:30"), Ok(2 * 86400 + 5400));
        assert_eq!(time_limit("1-00:00:10"), Ok(86410));
        for bad in ["", "x", "1w", "1:2:3:4", "-5", "0", "1.5h", "h"] {
            assert!(time_limit(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(time_arg(90), "00:01:30");
        assert_eq!(time_arg(86410), "1-00:00:10");
    }

    #[test]
    fn memory_sizes_become_slurm_mem_values() {
        assert_eq!(memory_arg("4G"), Ok("4G".into()));
        assert_eq!(memory_arg("512"), Ok("512".into()));
        assert_eq!(memory_arg("512MB"), Ok("512M".into()));
        assert_eq!(memory_arg("2 g"), Ok("2G".into()));
        for bad in ["", "G", "0", "4X", "-1G", "1.5G"] {
            assert!(memory_arg(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn export_in_extra_args_is_refused() {
        let s = ClusterSettings {
            extra_args: vec!["--export=ALL".into()],
            ..Default::default()
        };
        assert_eq!(s.check().unwrap_err().0, "extra_args[0]");
        let r = Resources {
            partition: Some("a b".into()),
            ..Default::default()
        };
        assert_eq!(r.check().unwrap_err().0, "partition");
    }
}
