//! One function per subcommand: load the workflow, open its session, act.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use qflow_engine::plan::plan;
use qflow_engine::progress::Progress;
use qflow_engine::scheduler::{ApplyOptions, StepOutcome, apply};
use qflow_engine::session::{Session, cache_dir, cache_dir_beside};
use qflow_engine::workflow::{LoadOptions, Workflow};

use crate::cli::{Cli, Command, UsageError, WorkflowArgs};

fn load(args: &WorkflowArgs, registry: &qflow_engine::Registry) -> anyhow::Result<Workflow> {
    let mut set = Vec::new();
    for s in &args.set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(UsageError(format!("--set `{s}`: write --set VAR=VALUE")).into());
        };
        set.push((k.to_string(), v.to_string()));
    }
    // The cache that may hold a memo of this load: where the session will open it.
    let path = std::path::absolute(&args.file).unwrap_or_else(|_| args.file.clone());
    let memo_cache = path
        .parent()
        .map(|dir| cache_dir_beside(dir, args.cache.as_deref()));
    Workflow::load(&args.file, registry, &LoadOptions { set, memo_cache })
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let registry = qflow_steps::registry();
    match cli.command {
        Command::Apply {
            workflow,
            jobs,
            keep_going,
            no_wait,
            detach,
        } => {
            qflow_engine::timings::mark("start");
            let wf = load(&workflow, &registry)?;
            qflow_engine::timings::mark("load workflow");
            if detach {
                return crate::detach::detach(&cache_dir(&wf, workflow.cache.as_deref()));
            }
            let mut session =
                Session::open(&wf, &registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
            qflow_engine::timings::mark("open session");
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
            if jobs == 0 {
                return Err(UsageError("--jobs must be at least 1".into()).into());
            }
            let options = ApplyOptions {
                jobs,
                keep_going,
                no_wait,
                out_dir: None,
            };
            let run = apply(&mut session, &options, Arc::new(Progress::new()))?;
            // The process exits next; the kernel frees the workflow and the
            // session's maps at once, where dropping them piece by piece cost
            // a tenth of a no-op apply of 1,000 steps. Nothing in them has a
            // side effect on drop (the cache lock was released by `apply`).
            std::mem::forget(session);
            std::mem::forget(wf);
            Ok(if run.interrupted {
                130
            } else if run.count(StepOutcome::Failed) > 0 {
                1
            } else {
                0
            })
        }
        Command::Plan { workflow, json } => {
            let wf = load(&workflow, &registry)?;
            let mut session =
                Session::open(&wf, &registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
            let steps = plan(&mut session)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "steps": steps }))?
                );
            } else {
                for s in &steps {
                    println!("{:<7} {} ({})", s.action, s.name, s.kind);
                    for r in &s.reasons {
                        println!("          because {r}");
                    }
                    if s.action == "run" {
                        for c in &s.commands {
                            println!("          $ {c}");
                        }
                    }
                }
                let runs = steps.iter().filter(|s| s.action == "run").count();
                println!("{} to run, {} cached", runs, steps.len() - runs);
            }
            Ok(0)
        }
        Command::Graph { workflow, format } => {
            let wf = load(&workflow, &registry)?;
            let mut session =
                Session::open(&wf, &registry, &cache_dir(&wf, workflow.cache.as_deref()))?;
            let steps = plan(&mut session)?;
            let dot = graph_dot(&wf, &steps);
            match format.as_str() {
                "dot" => print!("{dot}"),
                "svg" => {
                    use std::io::Write;
                    let mut child = std::process::Command::new("dot")
                        .arg("-Tsvg")
                        .stdin(std::process::Stdio::piped())
                        .spawn()
                        .context("cannot run Graphviz `dot`; install it (apt-get install graphviz) or use --format dot")?;
                    child.stdin.take().unwrap().write_all(dot.as_bytes())?;
                    let status = child.wait()?;
                    if !status.success() {
                        anyhow::bail!("`dot -Tsvg` failed");
                    }
                }
                other => {
                    return Err(
                        UsageError(format!("--format `{other}`: use `dot` or `svg`")).into(),
                    );
                }
            }
            Ok(0)
        }
        Command::Attach {
            step,
            run,
            workflow,
        } => {
            let wf = load(&workflow, &registry)?;
            if wf.step(&step).is_none() {
                return Err(
                    UsageError(format!("no step named `{step}` in {}", wf.path.display())).into(),
                );
            }
            let state = cache_dir(&wf, workflow.cache.as_deref())
                .join("state")
                .join(&wf.name)
                .join(&step);
            let consoles = qflow_steps::boot::attach::running_consoles(&state);
            let chosen = match (&run, consoles.len()) {
                (_, 0) => {
                    return Err(UsageError(format!(
                        "step `{step}` has no running console; attach while `qflow apply` runs it"
                    ))
                    .into());
                }
                (None, 1) => consoles[0].1.clone(),
                (None, _) => {
                    let runs: Vec<&str> = consoles.iter().map(|(r, _)| r.as_str()).collect();
                    return Err(UsageError(format!(
                        "step `{step}` runs several guests; pick one with --run: {}",
                        runs.join(", ")
                    ))
                    .into());
                }
                (Some(r), _) => match consoles.iter().find(|(name, _)| name == r) {
                    Some((_, sock)) => sock.clone(),
                    None => {
                        return Err(
                            UsageError(format!("step `{step}` has no running run `{r}`")).into(),
                        );
                    }
                },
            };
            qflow_steps::boot::attach::attach_terminal(&chosen)?;
            Ok(0)
        }
        Command::Status { workflow } => {
            let wf = load(&workflow, &registry)?;
            let dir = cache_dir(&wf, workflow.cache.as_deref());
            let mut session = Session::open(&wf, &registry, &dir)?;
            let busy = session.cache.lock(qflow_cache::LockWait::NoWait).is_err();
            println!("workflow: {} ({})", wf.name, wf.path.display());
            println!("cache:    {}", dir.display());
            if busy {
                println!("a qflow run is in progress on this cache");
            }
            if let Some(last) = last_run(
                &session.cache.dir("runs"),
                &wf.path.display().to_string(),
                busy,
            ) {
                println!("last run: {}", last);
            }
            let steps = plan(&mut session)?;
            for s in steps {
                println!(
                    "  {:<7} {}",
                    if s.action == "run" { "stale" } else { "fresh" },
                    s.name
                );
            }
            Ok(0)
        }
        Command::Gc {
            workflow,
            keep_runs,
        } => {
            let wf = load(&workflow, &registry)?;
            let dir = cache_dir(&wf, workflow.cache.as_deref());
            let session = Session::open(&wf, &registry, &dir)?;
            let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
            let keep = recent_keys(&session, keep_runs);
            let stats = session.cache.gc(&keep.into_iter().collect::<Vec<_>>())?;
            eprintln!(
                "qflow: gc removed {} records, {} trees, {} objects ({} bytes)",
                stats.records, stats.trees, stats.objects, stats.bytes
            );
            Ok(0)
        }
        Command::Clean { workflow, step } => {
            let wf = load(&workflow, &registry)?;
            if let Some(s) = &step
                && wf.step(s).is_none()
            {
                return Err(
                    UsageError(format!("no step named `{s}` in {}", wf.path.display())).into(),
                );
            }
            let dir = cache_dir(&wf, workflow.cache.as_deref());
            let mut session = Session::open(&wf, &registry, &dir)?;
            let _lock = session.cache.lock(qflow_cache::LockWait::NoWait)?;
            let names: Vec<String> = match &step {
                Some(s) => vec![s.clone()],
                None => wf.steps.iter().map(|s| s.name.clone()).collect(),
            };
            let mut lock = session.lock().clone();
            for n in &names {
                if let Some(entry) = lock.steps.remove(n)
                    && let Ok(key) = entry.key.parse()
                {
                    session.cache.remove_record(&key)?;
                }
                let _ = std::fs::remove_file(wf.dir.join("out").join(n));
                let state = session.cache.dir("state").join(&wf.name).join(n);
                if state.exists() {
                    std::fs::remove_dir_all(&state)
                        .with_context(|| format!("cannot remove {}", state.display()))?;
                }
                eprintln!("qflow: cleaned {n}");
            }
            lock.write(&session.lock_path)?;
            session.set_lock(lock);
            Ok(0)
        }
        Command::Doctor {
            file,
            set,
            no_kvm_probe,
        } => {
            let file = file.or_else(|| {
                let default = std::path::PathBuf::from("workflow.yaml");
                default.exists().then_some(default)
            });
            let wf = match file {
                Some(file) => Some(load(
                    &WorkflowArgs {
                        file,
                        cache: None,
                        set,
                    },
                    &registry,
                )?),
                None => None,
            };
            crate::doctor::run(wf.as_ref(), !no_kvm_probe)
        }
        Command::Verify {
            file,
            set,
            jobs,
            work_dir,
            steps,
            keep,
            cache,
        } => {
            let args = WorkflowArgs { file, cache, set };
            let wf = load(&args, &registry)?;
            let options = crate::verify::VerifyOptions {
                jobs,
                work_dir,
                steps,
                keep,
                original_cache: cache_dir(&wf, args.cache.as_deref()),
            };
            crate::verify::run(wf, &registry, &options)
        }
        Command::Results {
            workflow,
            step,
            format,
            summary,
        } => {
            let format = format.parse().map_err(UsageError)?;
            let wf = load(&workflow, &registry)?;
            let options = crate::results::ResultsOptions {
                step,
                format,
                summary,
            };
            crate::results::run(wf, &registry, workflow.cache.as_deref(), &options)
        }
        Command::Bundle { workflow, output } => {
            let wf = load(&workflow, &registry)?;
            let cache = cache_dir(&wf, workflow.cache.as_deref());
            crate::bundle::run(&wf, &registry, &cache, output.as_deref())
        }
        Command::Schema => crate::schema::run(&registry),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "qflow", &mut std::io::stdout());
            Ok(0)
        }
    }
}

fn graph_dot(wf: &Workflow, steps: &[qflow_engine::plan::PlannedStep]) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=filled];\n",
        wf.name
    );
    for s in steps {
        let color = if s.action == "cached" {
            "palegreen"
        } else {
            "orange"
        };
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} ({})\", fillcolor={color}];\n",
            s.name, s.name, s.kind, s.action
        ));
    }
    for s in &wf.steps {
        for (u, _) in &s.upstream {
            out.push_str(&format!("  \"{u}\" -> \"{}\";\n", s.name));
        }
    }
    out.push_str("}\n");
    out
}

fn run_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    v
}

fn last_run(dir: &std::path::Path, workflow: &str, busy: bool) -> Option<String> {
    for p in run_files(dir).into_iter().rev() {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        if v["workflow"] != workflow {
            continue;
        }
        let steps = v["steps"].as_array()?;
        let named = |o: &str| -> Vec<&str> {
            steps
                .iter()
                .filter(|s| s["outcome"] == o)
                .filter_map(|s| s["name"].as_str())
                .collect()
        };
        let count = |o: &str| named(o).len();
        let id = v["id"].as_str().unwrap_or("");
        if v["finished"] == false {
            let started = v["started_unix"].as_u64().unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let state = if busy {
                "in progress"
            } else {
                "did not finish (qflow was killed?)"
            };
            return Some(format!(
                "{id} — {state}, started {}s ago: running: {}; {} ran, {} cached, {} failed, {} pending",
                now.saturating_sub(started),
                if named("running").is_empty() {
                    "none".to_string()
                } else {
                    named("running").join(", ")
                },
                count("ran"),
                count("cached"),
                count("failed"),
                count("pending")
            ));
        }
        return Some(format!(
            "{id} — {} ran, {} cached, {} failed{}",
            count("ran"),
            count("cached"),
            count("failed"),
            if v["interrupted"] == true {
                ", interrupted"
            } else {
                ""
            }
        ));
    }
    None
}

/// Step keys used by the `n` most recent runs (of any workflow on this cache),
/// plus the current lock file's.
fn recent_keys(session: &Session, n: usize) -> BTreeSet<qflow_cache::Hash> {
    let mut keep = BTreeSet::new();
    for p in run_files(&session.cache.dir("runs"))
        .into_iter()
        .rev()
        .take(n)
    {
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        for s in v["steps"].as_array().into_iter().flatten() {
            if let Some(k) = s["key"].as_str().and_then(|k| k.parse().ok()) {
                keep.insert(k);
            }
        }
    }
    for s in session.lock().steps.values() {
        if let Ok(k) = s.key.parse() {
            keep.insert(k);
        }
    }
    keep
}
