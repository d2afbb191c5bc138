//! One step execution as a Slurm job request, and the `srun` / `sbatch` argv for it.
//!
//! Every job of one workflow on one cache carries the same job name (see
//! [`job_name`]), so one `squeue --name` call lists them all and one `scancel`
//! cancels them; the job's comment says which step execution it is. The
//! environment is `--export=NONE`: what the step needs travels in its description
//! file on the shared file system, so the submitter's environment never lands in
//! the controller's state files. Everything is argv; no shell string is built.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::resources::{ClusterSettings, Resources, memory_arg, time_arg, time_limit};

/// The job name shared by every job of the workflow at `workflow` on the cache at
/// `cache`: `qflow-` and 12 hex digits of their blake3.
pub fn job_name(cache: &Path, workflow: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cache.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(workflow.as_os_str().as_encoded_bytes());
    format!("qflow-{}", &h.finalize().to_hex()[..12])
}

/// A job comment naming one step execution: `<step> <key>`.
pub fn job_comment(step: &str, key_hex: &str) -> String {
    format!("{step} {key_hex}")
}

/// A job comment naming part `index` of one step execution (a matrix run):
/// `<step> <key>#<index>`.
pub fn part_comment(step: &str, key_hex: &str, index: usize) -> String {
    format!("{step} {key_hex}#{index}")
}

/// (step, execution) from a job comment written by [`job_comment`] or
/// [`part_comment`]: the execution is the key, or `key#index` for a part.
pub fn parse_comment(comment: &str) -> Option<(&str, &str)> {
    let (step, execution) = comment.rsplit_once(' ')?;
    let (key, part) = match execution.split_once('#') {
        Some((key, part)) => (key, Some(part)),
        None => (execution, None),
    };
    let key_ok = key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit());
    let part_ok = part.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    (key_ok && part_ok).then_some((step, execution))
}

/// Everything needed to submit one step execution.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// See [`job_name`].
    pub name: String,
    /// See [`job_comment`].
    pub comment: String,
    /// CPUs of the job: the step's `resources.cpus`, else its `jobs`.
    pub cpus: usize,
    /// What the step asks of the cluster.
    pub resources: Resources,
    /// The workflow's `slurm:` block.
    pub cluster: ClusterSettings,
    /// Where Slurm writes the job's own stdout and stderr.
    pub slurm_log: PathBuf,
    /// The job's working directory.
    pub work_dir: PathBuf,
    /// What runs on the node: an absolute program path and its arguments.
    pub command: Vec<OsString>,
}

impl JobRequest {
    /// The options `srun`, `sbatch` and `sbatch --test-only` share.
    pub fn options(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            format!("--job-name={}", self.name).into(),
            format!("--comment={}", self.comment).into(),
            "--export=NONE".into(),
            "--nodes=1".into(),
            "--ntasks=1".into(),
            format!("--cpus-per-task={}", self.cpus.max(1)).into(),
        ];
        let mut path_opt = |flag: &str, p: &Path| {
            let mut o = OsString::from(flag);
            o.push(p.as_os_str());
            a.push(o);
        };
        path_opt("--output=", &self.slurm_log);
        path_opt("--chdir=", &self.work_dir);
        let r = &self.resources;
        let c = &self.cluster;
        if let Some(p) = r.partition.as_ref().or(c.partition.as_ref()) {
            a.push(format!("--partition={p}").into());
        }
        if let Some(acct) = &c.account {
            a.push(format!("--account={acct}").into());
        }
        if let Some(q) = &c.qos {
            a.push(format!("--qos={q}").into());
        }
        if let Some(m) = r.memory.as_deref().and_then(|m| memory_arg(m).ok()) {
            a.push(format!("--mem={m}").into());
        }
        if let Some(t) = r.time.as_deref().and_then(|t| time_limit(t).ok()) {
            a.push(format!("--time={}", time_arg(t)).into());
        }
        if let Some(g) = r.gpus {
            a.push(format!("--gpus={g}").into());
        }
        if let Some(f) = &r.constraint {
            a.push(format!("--constraint={f}").into());
        }
        a.extend(c.extra_args.iter().map(OsString::from));
        a
    }

    /// `srun` arguments (attached: the job lives as long as this srun does).
    pub fn srun_args(&self) -> Vec<OsString> {
        let mut a = self.options();
        // Nothing of the job on the coordinator's terminal; it is in `--output`.
        a.push("--quiet".into());
        a.extend(self.command.iter().cloned());
        a
    }

    /// `sbatch` arguments (detached); `script` is the fixed `exec "$@"` wrapper
    /// (see [`BATCH_SCRIPT`]), so the command stays argv.
    pub fn sbatch_args(&self, script: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--parsable".into()];
        a.extend(self.options());
        a.push(script.into());
        a.extend(self.command.iter().cloned());
        a
    }

    /// `sbatch --test-only` arguments: would the cluster ever run this request?
    pub fn test_only_args(&self, script: &Path) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--test-only".into()];
        a.extend(self.options());
        a.push(script.into());
        a.push("true".into());
        a
    }
}

/// The one batch script qflow submits: it runs its arguments, so the step's command
/// reaches the node as argv and no script is generated from user values.
pub const BATCH_SCRIPT: &str =
    "#!/bin/sh\n# Written by qflow: run the arguments sbatch passed.\nexec \"$@\"\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JobRequest {
        JobRequest {
            name: "qflow-0123456789ab".into(),
            comment: job_comment("boot", &"ab".repeat(32)),
            cpus: 2,
            resources: Resources::default(),
            cluster: ClusterSettings::default(),
            slurm_log: "/c/logs/r/boot.slurm.log".into(),
            work_dir: "/w".into(),
            command: vec!["/bin/qflow".into(), "__run-step".into(), "/c/d.json".into()],
        }
    }

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn a_plain_step_exports_nothing_and_asks_for_its_jobs_as_cpus() {
        let a = strings(request().srun_args());
        assert_eq!(
            a,
            [
                "--job-name=qflow-0123456789ab",
                &format!("--comment=boot {}", "ab".repeat(32)),
                "--export=NONE",
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=2",
                "--output=/c/logs/r/boot.slurm.log",
                "--chdir=/w",
                "--quiet",
                "/bin/qflow",
                "__run-step",
                "/c/d.json",
            ]
        );
    }

    #[test]
    fn resources_and_cluster_settings_map_to_one_option_each() {
        let mut r = request();
        r.resources = Resources {
            cpus: Some(4),
            memory: Some("4 GB".into()),
            time: Some("90m".into()),
            gpus: Some(1),
            constraint: Some("avx512".into()),
            partition: Some("fast".into()),
        };
        r.cluster = ClusterSettings {
            partition: Some("main".into()),
            account: Some("lab".into()),
            qos: Some("long".into()),
            extra_args: vec!["--reservation".into(), "paper deadline".into()],
        };
        let a = strings(r.sbatch_args(Path::new("/c/batch.sh")));
        assert_eq!(a[0], "--parsable");
        for want in [
            "--partition=fast",
            "--account=lab",
            "--qos=long",
            "--mem=4G",
            "--time=01:30:00",
            "--gpus=1",
            "--constraint=avx512",
        ] {
            assert!(a.contains(&want.to_string()), "{want} missing from {a:?}");
        }
        assert!(
            !a.iter().any(|x| x == "--partition=main"),
            "step partition wins"
        );
        // extra_args stay separate arguments, after qflow's own options, before the script.
        let script = a.iter().position(|x| x == "/c/batch.sh").unwrap();
        assert_eq!(a[script - 2..script], ["--reservation", "paper deadline"]);
        assert_eq!(a[script + 1..], ["/bin/qflow", "__run-step", "/c/d.json"]);
    }

    #[test]
    fn test_only_submits_nothing_and_runs_nothing() {
        let a = strings(request().test_only_args(Path::new("/c/batch.sh")));
        assert_eq!(a[0], "--test-only");
        assert_eq!(a[a.len() - 2..], ["/c/batch.sh", "true"]);
    }

    #[test]
    fn one_name_per_workflow_and_cache_and_comments_name_the_step() {
        let a = job_name(Path::new("/c"), Path::new("/w/workflow.yaml"));
        assert_eq!(a, job_name(Path::new("/c"), Path::new("/w/workflow.yaml")));
        assert_ne!(a, job_name(Path::new("/d"), Path::new("/w/workflow.yaml")));
        assert_eq!(a.len(), "qflow-".len() + 12);
        let key = "0f".repeat(32);
        let c = job_comment("my step", &key);
        assert_eq!(parse_comment(&c), Some(("my step", key.as_str())));
        assert_eq!(parse_comment("someone else's job"), None);
        let p = part_comment("runs", &key, 3);
        assert_eq!(
            parse_comment(&p),
            Some(("runs", format!("{key}#3").as_str()))
        );
        assert_eq!(parse_comment(&format!("runs {key}#")), None);
    }
}
