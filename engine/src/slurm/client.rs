//! The Slurm commands qflow calls: `srun`, `sbatch`, `squeue`, `scancel`,
//! `scontrol ping` and `sinfo`, each as argv with a time limit.
//!
//! The controller is shared by everyone on the cluster, so qflow asks it little:
//! one `squeue` lists every job of a workflow (they share one job name) whatever
//! their number, one `scancel` cancels a batch, and [`super::queue::Queue`] keeps
//! `squeue` to at most one call a second.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::job_request::JobRequest;
use super::job_state::JobState;
use crate::tool_identity::which;

/// How long one call of a Slurm command may take before qflow gives up on it.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// One job as `squeue` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The job's id.
    pub id: String,
    /// Its state as `squeue` reports it.
    pub state: JobState,
    /// Why it waits (`Resources`, `PartitionConfig`) or `None`.
    pub reason: String,
    /// The job's comment (qflow's step key).
    pub comment: String,
}

/// The Slurm commands, found on PATH.
#[derive(Debug, Clone)]
pub struct SlurmClient {
    srun: PathBuf,
    sbatch: PathBuf,
    squeue: PathBuf,
    scancel: PathBuf,
    scontrol: PathBuf,
    sinfo: PathBuf,
}

/// The Slurm client commands qflow needs.
pub const COMMANDS: &[&str] = &["srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo"];

impl SlurmClient {
    /// Find the Slurm commands on PATH; the error names each missing one.
    pub fn find() -> anyhow::Result<SlurmClient> {
        let missing: Vec<&str> = COMMANDS
            .iter()
            .copied()
            .filter(|c| which(c).is_none())
            .collect();
        if !missing.is_empty() {
            bail!(
                "`{}` not found on PATH; run qflow on a login node of the cluster, or install \
                 Slurm's client commands (Debian package `slurm-client`)",
                missing.join("`, `")
            );
        }
        let at = |c: &str| which(c).expect("checked above");
        Ok(SlurmClient {
            srun: at("srun"),
            sbatch: at("sbatch"),
            squeue: at("squeue"),
            scancel: at("scancel"),
            scontrol: at("scontrol"),
            sinfo: at("sinfo"),
        })
    }

    /// `scontrol ping`: whether the controller answers.
    pub fn ping(&self) -> anyhow::Result<()> {
        let out = call(&self.scontrol, ["ping"])?;
        if out.ok && out.stdout.contains("is UP") {
            Ok(())
        } else {
            bail!(
                "the Slurm controller does not answer (`scontrol ping`: {}); check that slurmctld \
                 runs and that this host's slurm.conf names it",
                out.text().trim()
            )
        }
    }

    /// The cluster's partitions; the default one is marked in `sinfo` with `*` (removed here).
    pub fn partitions(&self) -> anyhow::Result<Vec<String>> {
        let out = call(&self.sinfo, ["-h", "-o", "%P"])?;
        if !out.ok {
            bail!("`sinfo` failed: {}", out.text().trim());
        }
        let mut parts: Vec<String> = out
            .stdout
            .lines()
            .map(|l| l.trim().trim_end_matches('*').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        parts.dedup();
        Ok(parts)
    }

    /// Every job of this user named `name`, finished ones included while Slurm
    /// still lists them (MinJobAge). One call whatever the number of jobs.
    pub fn list(&self, name: &str) -> anyhow::Result<Vec<QueuedJob>> {
        // SAFETY: getuid(2) cannot fail and touches no memory.
        let uid = unsafe { libc::getuid() };
        let out = call(
            &self.squeue,
            [
                "--noheader".to_string(),
                "--states=all".to_string(),
                format!("--user={uid}"),
                format!("--name={name}"),
                "--format=%i|%T|%r|%k".to_string(),
            ],
        )?;
        if !out.ok {
            bail!("`squeue` failed: {}", out.text().trim());
        }
        Ok(parse_squeue(&out.stdout))
    }

    /// Cancel `ids` with one `scancel`. Jobs that already ended are not an error.
    pub fn cancel(&self, ids: &[String]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let out = call(&self.scancel, ids)?;
        if !out.ok && !out.stderr.contains("already completing or completed") {
            bail!("`scancel {}` failed: {}", ids.join(" "), out.text().trim());
        }
        Ok(())
    }

    /// Submit a batch job (detached mode); returns its id.
    pub fn submit_batch(&self, req: &JobRequest, script: &Path) -> anyhow::Result<String> {
        let out = call(&self.sbatch, req.sbatch_args(script))?;
        if !out.ok {
            bail!("`sbatch` refused the job: {}", out.text().trim());
        }
        // `--parsable` prints `<id>` or `<id>;<cluster>`.
        let id = out
            .stdout
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            bail!("`sbatch` printed no job id: {}", out.text().trim());
        }
        Ok(id)
    }

    /// Start `srun` for the job (attached mode). srun runs in its own process
    /// group, so a Ctrl-C at the terminal reaches qflow, which cancels all of its
    /// jobs at once; and it gets SIGKILL when qflow dies, which makes Slurm cancel
    /// the job at once. srun's own messages go to `messages`.
    pub fn spawn_srun(&self, req: &JobRequest, messages: &Path) -> anyhow::Result<Child> {
        let err = std::fs::File::create(messages)
            .with_context(|| format!("cannot create `{}`", messages.display()))?;
        let mut cmd = Command::new(&self.srun);
        cmd.args(req.srun_args())
            .stdin(Stdio::null())
            .stdout(err.try_clone()?)
            .stderr(err)
            .process_group(0);
        die_with_parent(&mut cmd);
        cmd.spawn().context("cannot run `srun`")
    }

    /// `sbatch --test-only`: `Err` with Slurm's reason when the cluster can never
    /// run the request (a job that asks more than any node has queues forever).
    pub fn test_only(&self, req: &JobRequest, script: &Path) -> anyhow::Result<Result<(), String>> {
        let out = call(&self.sbatch, req.test_only_args(script))?;
        if out.ok {
            return Ok(Ok(()));
        }
        let reason = out
            .text()
            .lines()
            .map(|l| l.trim().trim_start_matches("sbatch: error: "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Err(reason))
    }

    /// Run a job to its end with `srun` and return whether it succeeded and what it printed.
    pub fn run_job(&self, req: &JobRequest, limit: Duration) -> anyhow::Result<(bool, String)> {
        let out = call_within(&self.srun, req.srun_args(), limit)?;
        Ok((out.ok, out.text()))
    }
}

/// Parse `squeue --format=%i|%T|%r|%k` lines.
pub fn parse_squeue(text: &str) -> Vec<QueuedJob> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().splitn(4, '|');
            let id = f.next()?.trim().to_string();
            let state = JobState::parse(f.next()?);
            let reason = f.next().unwrap_or("").to_string();
            let comment = f.next().unwrap_or("").to_string();
            (!id.is_empty()).then_some(QueuedJob {
                id,
                state,
                reason,
                comment,
            })
        })
        .collect()
}

/// What a finished Slurm command printed.
struct CallOutput {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl CallOutput {
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn call<I, S>(program: &Path, args: I) -> anyhow::Result<CallOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    call_within(program, args, CALL_LIMIT)
}

/// Run `program args` to its end, at most `limit`; its output is read through files
/// so that a chatty command cannot block on a full pipe.
fn call_within<I, S>(program: &Path, args: I, limit: Duration) -> anyhow::Result<CallOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out_f = tempfile_for(&name, "out")?;
    let mut err_f = tempfile_for(&name, "err")?;
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(out_f.0.try_clone()?)
        .stderr(err_f.0.try_clone()?)
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", program.display()))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!(
                "`{name}` did not answer within {} s; is the Slurm controller overloaded or down?",
                limit.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::io::{Read, Seek};
    let read = |f: &mut std::fs::File| -> anyhow::Result<String> {
        let mut s = String::new();
        f.seek(std::io::SeekFrom::Start(0))?;
        f.read_to_string(&mut s)?;
        Ok(s)
    };
    Ok(CallOutput {
        ok: status.success(),
        stdout: read(&mut out_f.0)?,
        stderr: read(&mut err_f.0)?,
    })
}

/// An anonymous temporary file (unlinked at once): output capture without pipes.
struct AnonFile(std::fs::File);

fn tempfile_for(name: &str, what: &str) -> anyhow::Result<AnonFile> {
    let dir = std::env::temp_dir();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".qflow-{name}-{what}-{}-{n}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(AnonFile(f))
}

/// The child gets SIGKILL when qflow dies, so a killed coordinator leaves no srun behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_jobs_with_states_and_comments() {
        let key = "ab".repeat(32);
        let text = format!(
            "12|RUNNING|None|kernel {key}\n13|PENDING|Resources|boot {key}\n14|TIMEOUT|TimeLimit|\n\n"
        );
        let jobs = parse_squeue(&text);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].id, "12");
        assert_eq!(jobs[0].state, JobState::Active("RUNNING".into()));
        assert_eq!(jobs[0].comment, format!("kernel {key}"));
        assert_eq!(jobs[1].reason, "Resources");
        assert_eq!(jobs[2].state, JobState::Timeout);
        assert_eq!(jobs[2].comment, "");
    }
}
