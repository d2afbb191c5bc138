//! Sharing results through a remote cache: two machines (two workspaces with separate
//! caches) and one real server, Debian's nginx started by `scripts/remote-cache-start.sh`
//! on free loopback ports. The server tests are slow-tier: they need root, and the script
//! installs nginx when the host lacks it.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Space;

/// Small steps of every shape a result takes: plain and executable files in a directory,
/// an empty qcow2 image and an overlay whose backing file is that image (named inside the
/// overlay's header), an ext4 disk, and a step reading another's output.
const WORKFLOW: &str = r##"
version: 1
steps:
  gen:
    kind: command
    run: [sh, -c, 'head -c 3000000 /dev/urandom > "$QFLOW_OUT/blob" && cp data.txt "$QFLOW_OUT/" && mkdir "$QFLOW_OUT/bin" && printf "#!/bin/sh\necho hi\n" > "$QFLOW_OUT/bin/hi" && chmod +x "$QFLOW_OUT/bin/hi"']
    inputs: [data.txt]
    outputs: [blob, data.txt, bin/hi]
  base:
    kind: image
    size: 16M
  work:
    kind: image
    from: base
    size: 32M
  data:
    kind: disk
    size: 16M
    contents: ./workload
  use:
    kind: command
    run: [sh, -c, 'wc -c < ${{ steps.gen.blob }} > "$QFLOW_OUT/n"']
    outputs: [n]
"##;

const STEPS: [&str; 5] = ["base", "data", "gen", "use", "work"];

/// A private nginx started and stopped by the project's scripts.
struct Server {
    state: PathBuf,
    read: String,
    write: String,
    stopped: std::cell::Cell<bool>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

impl Server {
    fn start(auth: &[(&str, &str)]) -> Server {
        // Under /tmp: nginx's workers (www-data) must reach the data directory.
        let state = std::env::temp_dir().join(format!(
            "qflow-remote-e2e-{}-{}",
            std::process::id(),
            free_port()
        ));
        let server = Server {
            state,
            read: format!("127.0.0.1:{}", free_port()),
            write: format!("127.0.0.1:{}", free_port()),
            stopped: false.into(),
        };
        let mut cmd = Command::new(script("remote-cache-start.sh"));
        server.env(&mut cmd);
        for (k, v) in auth {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("QFLOW_REMOTE_CACHE_SRV", &self.state)
            .env("QFLOW_REMOTE_CACHE_SRV_READ", &self.read)
            .env("QFLOW_REMOTE_CACHE_SRV_WRITE", &self.write);
    }

    fn stop(&self) {
        let mut cmd = Command::new(script("remote-cache-stop.sh"));
        self.env(&mut cmd);
        assert!(cmd.status().unwrap().success());
        self.stopped.set(true);
    }

    fn read_url(&self) -> String {
        format!("http://{}", self.read)
    }

    fn write_url(&self) -> String {
        format!("http://{}", self.write)
    }

    /// Every file the server stores.
    fn files(&self) -> Vec<PathBuf> {
        files_below(&self.state.join("data"))
    }

    fn requests(&self) -> usize {
        self.log_lines().len()
    }

    /// The access log's lines, one per request answered.
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("logs/access.log"))
            .map(|l| l.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped.get() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A workspace ("a machine") with the workflow, its inputs and a cache of its own.
fn machine() -> Space {
    let s = Space::new();
    s.workflow(WORKFLOW)
        .write("data.txt", "the same input on every machine\n")
        .write("workload/run.sh", "#!/bin/sh\necho workload\n");
    s
}

fn upload(s: &Space, server: &Server) -> common::Run {
    s.qflow(&[
        "apply",
        "--remote-cache",
        &server.read_url(),
        "--remote-cache-write",
        &server.write_url(),
        "--remote-cache-upload",
    ])
    .success()
}

fn pull(s: &Space, server: &Server) -> common::Run {
    s.qflow(&["apply", "--remote-cache", &server.read_url()])
}

/// Steps announced as `qflow: remote hit STEP` (downloaded or not), sorted.
fn remote_hits(run: &common::Run) -> Vec<String> {
    let mut v: Vec<String> = (run.stderr.lines())
        .filter_map(|l| l.strip_prefix("qflow: remote hit "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Steps announced as remote hits left on the server (not downloaded), sorted.
fn left_on_server(run: &common::Run) -> Vec<String> {
    let mut v: Vec<String> = (run.stderr.lines())
        .filter_map(|l| l.strip_prefix("qflow: remote hit "))
        .filter(|rest| rest.contains("(left on the server"))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The output tree `out/<step>` points at (its name is the hash of its manifest: the
/// same name on two machines means the same bytes), or `None` when there is no link.
fn out_tree(s: &Space, dir: &str, step: &str) -> Option<String> {
    let link = std::fs::read_link(s.join(dir).join(step)).ok()?;
    assert!(s.join(dir).join(step).is_dir(), "out link {step} dangles");
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Bytes of every regular file below `dir`.
fn bytes_below(dir: &Path) -> u64 {
    files_below(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn warnings(run: &common::Run) -> Vec<String> {
    (run.stderr.lines())
        .filter(|l| l.starts_with("qflow: warning:"))
        .map(str::to_string)
        .collect()
}

/// Every file below `out/<step>` (through the link), relative, with its bytes.
fn out_contents(s: &Space, step: &str) -> Vec<(String, Vec<u8>)> {
    let root = s.join("out").join(step);
    let root = std::fs::canonicalize(&root).unwrap();
    files_below(&root)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_second_machine_runs_nothing_every_step_a_remote_hit_with_identical_outputs() {
    let server = Server::start(&[]);
    let a = machine();
    let first = upload(&a, &server);
    assert_eq!(first.ran_sorted(), STEPS);
    assert!(
        first.stderr_contains("uploaded 5 results"),
        "{}",
        first.stderr
    );

    // A third machine plans: every step a remote hit, nothing downloaded.
    let c = machine();
    let plan = c
        .qflow(&["plan", "--remote-cache", &server.read_url()])
        .success();
    for step in STEPS {
        assert!(
            plan.stdout.contains(&format!("remote hit {step} (")),
            "{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout.contains("0 to run, 0 cached, 5 remote hits"),
        "{}",
        plan.stdout
    );
    assert!(files_below(&c.join(".qflow/objects")).is_empty());

    let b = machine();
    let started = Instant::now();
    let second = pull(&b, &server).success();
    let took = started.elapsed();
    assert!(second.ran().is_empty(), "{}", second.stderr);
    assert_eq!(remote_hits(&second), STEPS, "{}", second.stderr);
    assert!(warnings(&second).is_empty(), "{}", second.stderr);
    for step in STEPS {
        assert_eq!(out_contents(&b, step), out_contents(&a, step), "out/{step}");
    }
    assert_eq!(b.read("qflow.lock"), a.read("qflow.lock"));
    // The overlay's backing image came along: the chain opens on the second machine.
    let chain = Command::new("qemu-img")
        .args(["info", "--backing-chain"])
        .arg(b.join("out/work/image.qcow2"))
        .output()
        .unwrap();
    assert!(
        chain.status.success(),
        "{}",
        String::from_utf8_lossy(&chain.stderr)
    );
    eprintln!("all remote hits: {took:?}");

    // The run's counters are in the run record, for `qflow status`.
    let status = b.qflow(&["status"]).success();
    assert!(
        status.stdout.contains("remote cache: 5 hits, 0 misses"),
        "{}",
        status.stdout
    );
    // Applying again is a local no-op that asks the server nothing.
    let before = server.requests();
    let again = pull(&b, &server).success();
    assert_eq!(again.cached().len(), 5, "{}", again.stderr);
    assert!(
        server.requests() <= before + 1,
        "at most the access check, which a no-op apply does not wait for"
    );

    // Every step named: all five are fetched at once, the overlay's step bringing the
    // image it backs onto while that image's own step fetches it. Each object comes
    // down once.
    let d = machine();
    let before = server.requests();
    let url = server.read_url();
    let mut args = vec!["apply", "--remote-cache", url.as_str()];
    args.extend(STEPS);
    let named = d.qflow(&args).success();
    assert_eq!(remote_hits(&named), STEPS, "{}", named.stderr);
    assert_eq!(out_contents(&d, "work"), out_contents(&a, "work"));
    let gets: Vec<String> = (server.log_lines().into_iter().skip(before))
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(3);
            (words.next() == Some("\"GET")).then(|| words.next().map(str::to_string))?
        })
        .filter(|path| path.starts_with("/cas/"))
        .collect();
    let distinct: std::collections::BTreeSet<&String> = gets.iter().collect();
    assert!(!gets.is_empty());
    assert_eq!(
        gets.len(),
        distinct.len(),
        "an object fetched twice: {gets:?}"
    );
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn wrong_bytes_on_the_server_are_detected_warned_and_rebuilt() {
    let server = Server::start(&[]);
    let a = machine();
    upload(&a, &server);
    // Replace the bytes behind gen's blob on the server's disk, name unchanged.
    let blob = std::fs::read(a.join("out/gen/blob")).unwrap();
    let planted = server
        .files()
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|b| b == blob))
        .expect("the blob is on the server");
    let mut wrong = blob.clone();
    wrong[12345] ^= 0xff;
    std::fs::write(&planted, &wrong).unwrap();

    let b = machine();
    let run = pull(&b, &server).success();
    let w = warnings(&run);
    assert_eq!(w.len(), 1, "{}", run.stderr);
    assert!(
        w[0].contains("wrong bytes") && w[0].contains("`blob`"),
        "{}",
        w[0]
    );
    // gen was built locally (a new random blob), and `use` with it; the rest came down.
    assert_eq!(run.ran_sorted(), ["gen", "use"], "{}", run.stderr);
    assert_eq!(remote_hits(&run), ["base", "data", "work"]);
    let local = std::fs::read(b.join("out/gen/blob")).unwrap();
    assert_ne!(local, wrong);
    assert_eq!(
        b.read("out/use/n").trim(),
        local.len().to_string(),
        "use saw the local blob"
    );
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_server_stopped_mid_apply_costs_one_warning_and_the_apply_completes_locally() {
    let server = Server::start(&[]);
    let a = machine();
    upload(&a, &server);
    // On the second machine `base` and `work` come from the server, then a new step (not
    // on the server) stops it; the steps after that find no server.
    let b = machine();
    let stop = format!(
        "  stop:\n    kind: command\n    after: [base]\n    run: [{}]\n    env: {{ QFLOW_REMOTE_CACHE_SRV: '{}', QFLOW_REMOTE_CACHE_SRV_READ: '{}', QFLOW_REMOTE_CACHE_SRV_WRITE: '{}' }}\n    outputs: []\n",
        script("remote-cache-stop.sh").display(),
        server.state.display(),
        server.read,
        server.write
    );
    let yaml = WORKFLOW
        .replace(
            "  gen:\n    kind: command\n",
            "  gen:\n    kind: command\n    after: [stop]\n",
        )
        .replace(
            "  data:\n    kind: disk\n",
            "  data:\n    kind: disk\n    after: [stop]\n",
        );
    b.workflow(&format!("{yaml}{stop}"));
    server.stopped.set(true);
    let started = Instant::now();
    let run = pull(&b, &server).success();
    let w = warnings(&run);
    assert_eq!(w.len(), 1, "{}", run.stderr);
    assert!(w[0].contains("cannot connect"), "{}", w[0]);
    assert_eq!(remote_hits(&run), ["base", "work"], "{}", run.stderr);
    assert_eq!(run.ran_sorted(), ["data", "gen", "stop", "use"]);
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_listener_that_never_answers_costs_one_warning_and_bounded_time_and_a_no_op_never_waits_for_it()
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn); // accepted, never answered
        }
    });
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  one:\n    kind: command\n    run: [sh, -c, 'echo 1 > \"$QFLOW_OUT/x\"']\n    outputs: [x]\n  two:\n    kind: command\n    run: [sh, -c, 'cat ${{ steps.one.x }} > \"$QFLOW_OUT/y\"']\n    outputs: [y]\n",
    );
    let started = Instant::now();
    let run = s.qflow(&["apply", "--remote-cache", &url]).success();
    let took = started.elapsed();
    assert_eq!(run.ran_sorted(), ["one", "two"]);
    let w = warnings(&run);
    assert_eq!(w.len(), 1, "{}", run.stderr);
    assert!(w[0].contains("no answer in time"), "{}", w[0]);
    // One timeout (15 s without an answer), then the server is left alone.
    assert!(took < Duration::from_secs(25), "{took:?}");

    // A no-op apply needs nothing from the server and does not wait for it.
    let started = Instant::now();
    let again = s.qflow(&["apply", "--remote-cache", &url]).success();
    assert_eq!(again.cached().len(), 2, "{}", again.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An image, an overlay of it, and a small report about the overlay: the report is the
/// result, the images are machine state.
const IMAGES_AND_A_REPORT: &str = r##"
version: 1
steps:
  base:
    kind: image
    size: 16M
  work:
    kind: image
    from: base
    size: 32M
  report:
    kind: command
    run: [sh, -c, 'qemu-img info --backing-chain "${{ steps.work }}/image.qcow2" | grep -c "^image:" > "$QFLOW_OUT/chain" && cat note.txt >> "$QFLOW_OUT/chain"']
    inputs: [note.txt]
    outputs: [chain]
"##;

fn report_machine() -> Space {
    let s = Space::new();
    s.workflow(IMAGES_AND_A_REPORT).write("note.txt", "first\n");
    s
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn images_whose_dependents_are_all_hits_stay_on_the_server_until_a_step_that_runs_needs_them() {
    let server = Server::start(&[]);
    let a = report_machine();
    upload(&a, &server);
    assert_eq!(a.read("out/report/chain"), "2\nfirst\n");

    // The second machine gets the report; both images stay on the server, unlinked.
    let b = report_machine();
    let pulled = pull(&b, &server).success();
    assert!(pulled.ran().is_empty(), "{}", pulled.stderr);
    assert_eq!(remote_hits(&pulled), ["base", "report", "work"]);
    assert_eq!(
        left_on_server(&pulled),
        ["base", "work"],
        "{}",
        pulled.stderr
    );
    assert_eq!(b.read("out/report/chain"), a.read("out/report/chain"));
    for image in ["base", "work"] {
        assert!(!b.join("out").join(image).exists(), "out/{image}");
    }
    assert!(
        bytes_below(&b.join(".qflow/objects")) < 4096,
        "only the report came down"
    );
    assert_eq!(b.read("qflow.lock"), a.read("qflow.lock"));
    let status = b.qflow(&["status"]).success();
    for image in ["base", "work"] {
        assert!(
            status
                .stdout
                .contains(&format!("fresh (on the remote cache only) {image}")),
            "{}",
            status.stdout
        );
    }

    // Applying again asks the server nothing and downloads nothing.
    let before = server.requests();
    let again = pull(&b, &server).success();
    assert!(again.ran().is_empty(), "{}", again.stderr);
    assert!(server.requests() <= before + 1, "at most the access check");

    // A step that must run needs `work`: it comes down then, with the base its overlay
    // names, and both are linked.
    b.write("note.txt", "second\n");
    let edited = pull(&b, &server).success();
    assert_eq!(edited.ran_sorted(), ["report"], "{}", edited.stderr);
    assert!(
        edited.stderr_contains("downloaded work (`report` needs it)"),
        "{}",
        edited.stderr
    );
    assert_eq!(b.read("out/report/chain"), "2\nsecond\n");
    for image in ["base", "work"] {
        assert_eq!(out_tree(&b, "out", image), out_tree(&a, "out", image));
    }

    // Without a remote cache, a result left on the server is no result: it is built.
    let c = report_machine();
    pull(&c, &server).success();
    let alone = c.qflow(&["apply"]).success();
    let ran = alone.ran_sorted();
    assert!(
        ran.contains(&"base".to_string()) && ran.contains(&"work".to_string()),
        "{}",
        alone.stderr
    );

    // Naming a step downloads it (and what its image backs onto).
    let d = report_machine();
    let named = d
        .qflow(&[
            "apply",
            "--remote-cache",
            &server.read_url(),
            "workflow.yaml",
            "work",
        ])
        .success();
    assert!(named.ran().is_empty(), "{}", named.stderr);
    assert!(
        named.stderr_contains("downloaded base (an image downloaded with it backs onto it)"),
        "{}",
        named.stderr
    );
    assert_eq!(out_tree(&d, "out", "work"), out_tree(&a, "out", "work"));
    assert_eq!(out_tree(&d, "out", "base"), out_tree(&a, "out", "base"));
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_server_that_demands_credentials_refuses_a_clear_error_and_works_with_a_token() {
    let token = "s3cr3t-t0ken-for-ci";
    let server = Server::start(&[
        ("QFLOW_REMOTE_CACHE_SRV_AUTH", "bearer"),
        ("QFLOW_REMOTE_CACHE_SRV_TOKEN", token),
    ]);
    let a = machine();
    let refused = pull(&a, &server).failure(2);
    assert!(
        refused.stderr_contains("HTTP 401") && refused.stderr_contains("credentials"),
        "{}",
        refused.stderr
    );
    assert!(refused.ran().is_empty());
    let out = std::fs::read_dir(a.join("out")).map_or(0, |d| d.count());
    assert_eq!(out, 0, "nothing ran");

    let mut cmd = a.command(&[
        "apply",
        "--remote-cache",
        &server.read_url(),
        "--remote-cache-write",
        &server.write_url(),
        "--remote-cache-upload",
    ]);
    cmd.env("QFLOW_REMOTE_CACHE_TOKEN", token);
    let pushed = common::Run::from(cmd.output().unwrap()).success();
    assert!(
        pushed.stderr_contains("uploaded 5 results"),
        "{}",
        pushed.stderr
    );

    let b = machine();
    let mut cmd = b.command(&["apply", "--remote-cache", &server.read_url()]);
    cmd.env("QFLOW_REMOTE_CACHE_TOKEN", token);
    let pulled = common::Run::from(cmd.output().unwrap()).success();
    assert_eq!(remote_hits(&pulled), STEPS, "{}", pulled.stderr);
    for run in [&refused, &pushed, &pulled] {
        assert!(!run.stderr.contains(token) && !run.stdout.contains(token));
    }
    for dir in [a.join(".qflow"), b.join(".qflow")] {
        for f in files_below(&dir) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(token),
                "{}",
                f.display()
            );
        }
    }
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn pull_and_false_steps_and_what_depends_on_them_are_never_uploaded_and_gc_leaves_the_server_alone()
{
    let server = Server::start(&[]);
    let a = machine();
    a.workflow(
        &WORKFLOW
            .replace(
                "  gen:\n    kind: command\n",
                "  gen:\n    kind: command\n    remote_cache: pull\n",
            )
            .replace(
                "  data:\n    kind: disk\n",
                "  data:\n    kind: disk\n    remote_cache: false\n",
            ),
    );
    let pushed = upload(&a, &server);
    assert!(
        pushed.stderr_contains("uploaded 2 results"),
        "{}",
        pushed.stderr
    );
    let b = machine();
    let run = pull(&b, &server).success();
    assert_eq!(remote_hits(&run), ["base", "work"], "{}", run.stderr);
    assert_eq!(run.ran_sorted(), ["data", "gen", "use"]);

    let stored = server.files();
    let requests = server.requests();
    let mut gc = a.command(&["gc", "--keep-runs", "0"]);
    gc.env("QFLOW_REMOTE_CACHE", server.read_url())
        .env("QFLOW_REMOTE_CACHE_UPLOAD", "1");
    common::Run::from(gc.output().unwrap()).success();
    assert_eq!(server.files(), stored);
    assert_eq!(server.requests(), requests);
}

#[test]
fn a_bad_remote_cache_field_or_an_upload_without_a_url_is_refused_before_anything_runs() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  one:\n    kind: command\n    run: [\"true\"]\n    outputs: []\n    remote_cache: sometimes\n",
    );
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr_contains("workflow.yaml:7")
            && run.stderr_contains("`remote_cache` is true, false or pull"),
        "{}",
        run.stderr
    );
    s.workflow(
        "version: 1\nsteps:\n  one:\n    kind: command\n    run: [\"true\"]\n    outputs: []\n",
    );
    let run = s.qflow(&["apply", "--remote-cache-upload"]).failure(2);
    assert!(run.stderr_contains("--remote-cache URL"), "{}", run.stderr);
    assert!(run.ran().is_empty());
}

/// The quickstart as a user's checkout has it (the workflow, its files, the kernel tree
/// unpacked from Debian's tarball, the test password), at the same relative places on
/// every machine, so the step keys agree with the slow tier's quickstart test.
fn quickstart_checkout() -> Space {
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), &dest).unwrap();
            }
        }
    }
    let s = Space::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(s.join("workflows")).unwrap();
    std::fs::copy(
        repo.join("workflows/quickstart.yaml"),
        s.join("workflows/quickstart.yaml"),
    )
    .unwrap();
    copy_tree(
        &repo.join("workflows/quickstart"),
        &s.join("workflows/quickstart"),
    );
    s.write("workflows/secrets/root-password", "quickstart-test-pw\n");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(s.join("workflows"))
        .args(["-xf", "/usr/src/linux-source-6.1.tar.xz"])
        .status()
        .unwrap();
    assert!(tar.success());
    s
}

const QUICKSTART: &str = "workflows/quickstart.yaml";

/// Files on the server holding `needle`.
fn server_files_holding(server: &Server, needle: &str) -> String {
    let out = Command::new("grep")
        .args(["-rlaF", needle])
        .arg(server.state.join("data"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the server holds the bytes of any file below `dir` (by their sha256 name).
fn server_holds_any_file_of(server: &Server, dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let names: Vec<String> = server
        .files()
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    files_below(&dir)
        .into_iter()
        .filter(|f| std::fs::symlink_metadata(f).is_ok_and(|m| m.is_file()))
        .filter(|f| {
            let out = Command::new("sha256sum").arg(f).output().unwrap();
            let sum = String::from_utf8_lossy(&out.stdout);
            let sum = sum
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            names.contains(&sum)
        })
        .collect()
}

#[test]
#[ignore = "slow: the quickstart (on the slow tier's shared cache, built once), a private nginx, then on a second machine the boots"]
fn a_group_shares_the_quickstart_a_second_machine_runs_nothing_and_reruns_only_what_its_edit_touches()
 {
    let server = Server::start(&[]);
    let url = server.read_url();
    let push = |s: &Space| {
        s.qflow(&[
            "apply",
            "--remote-cache",
            &url,
            "--remote-cache-write",
            &server.write_url(),
            "--remote-cache-upload",
            QUICKSTART,
        ])
        .success()
    };

    // Machine A: the slow tier's shared cache, which holds the quickstart already (or
    // builds it once for every slow test). Without the opt-in, the steps that read the
    // root password, and everything after them, stay home.
    let a = quickstart_checkout().with_cache(&common::shared_cache());
    let shared_yaml = a.read(QUICKSTART);
    let private_yaml: String = (shared_yaml.lines())
        .filter(|l| !l.trim_start().starts_with("remote_cache: true"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(private_yaml, shared_yaml);
    a.write(QUICKSTART, &private_yaml);
    let private = push(&a);
    assert!(
        private.stderr_contains("uploaded 3 results"),
        "base, kernel, data: {}",
        private.stderr
    );
    assert_eq!(server_files_holding(&server, "quickstart-test-pw"), "");
    let system_files = server_holds_any_file_of(&server, &a.join("workflows/out/system"));
    assert!(system_files.is_empty(), "{system_files:?}");

    // With the quickstart's own `remote_cache: true`, the rest goes up; nothing runs.
    a.write(QUICKSTART, &shared_yaml);
    let shared = push(&a);
    assert!(shared.ran().is_empty(), "{}", shared.stderr);
    assert!(
        shared.stderr_contains("uploaded 5 results"),
        "system, experiment, quick, runs, figures: {}",
        shared.stderr
    );
    assert_eq!(server_files_holding(&server, "quickstart-test-pw"), "");

    // Machine B, an empty cache: every step a remote hit, nothing runs. The results come
    // down (kernel, runs, quick, figures); the images and the checkpoint stay on the server.
    let b = quickstart_checkout();
    let started = Instant::now();
    let pulled = b
        .qflow(&["apply", "--remote-cache", &url, QUICKSTART])
        .success();
    let all_hits = started.elapsed();
    eprintln!("quickstart on a second machine, every step a remote hit: {all_hits:.2?}");
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("remote-quickstart-timings.txt"),
        format!("all remote hits: {:.2} s\n", all_hits.as_secs_f64()),
    );
    assert!(pulled.ran().is_empty(), "{}", pulled.stderr);
    assert_eq!(
        remote_hits(&pulled),
        [
            "base",
            "data",
            "experiment",
            "figures",
            "kernel",
            "quick",
            "runs",
            "system"
        ],
        "{}",
        pulled.stderr
    );
    assert_eq!(
        left_on_server(&pulled),
        ["base", "data", "experiment", "system"]
    );
    for step in ["kernel", "runs", "quick", "figures"] {
        let tree = out_tree(&b, "workflows/out", step);
        assert!(tree.is_some(), "out/{step}");
        assert_eq!(tree, out_tree(&a, "workflows/out", step), "out/{step}");
    }
    for step in ["base", "data", "experiment", "system"] {
        assert_eq!(out_tree(&b, "workflows/out", step), None, "out/{step}");
    }
    assert_eq!(
        b.read("workflows/quickstart.lock"),
        a.read("workflows/quickstart.lock")
    );
    let table = b
        .qflow(&["results", QUICKSTART, "--format", "csv"])
        .success();
    assert_eq!(
        table.stdout,
        "step,run,iterations,checksum\nruns,iterations=1000,1000,729977\nruns,iterations=5000,5000,479161\n"
    );

    // On B, one line of the kernel: the plan says the kernel would build its tree here
    // (a hit brings no build tree). The edit is taken back: the slow tier builds one
    // kernel per run, and that build is machine A's.
    let reboot_c = b.join("workflows/linux-source-6.1/kernel/reboot.c");
    let original = std::fs::read_to_string(&reboot_c).unwrap();
    std::fs::write(&reboot_c, format!("{original}int qflow_group_edit = 1;\n")).unwrap();
    let plan = b
        .qflow(&["plan", "--remote-cache", &url, QUICKSTART])
        .success();
    assert!(
        plan.stdout.contains("no local build tree: full build"),
        "{}",
        plan.stdout
    );
    std::fs::write(&reboot_c, original).unwrap();

    // On B, the workload's iteration count: the boots run again; the kernel, base,
    // system and data come from the server, the images only because a boot needs them.
    let yaml = b.read(QUICKSTART);
    assert!(yaml.contains("iterations: \"3000\""), "{yaml}");
    b.write(
        QUICKSTART,
        yaml.replace("iterations: \"3000\"", "iterations: \"4000\""),
    );
    let started = Instant::now();
    let edit = b
        .qflow(&["apply", "--remote-cache", &url, QUICKSTART])
        .success();
    eprintln!(
        "second machine, a new iteration count: {:.0?}",
        started.elapsed()
    );
    let ran: Vec<String> = (edit.ran_sorted().into_iter())
        .filter(|s| s != "figures")
        .collect();
    assert_eq!(ran, ["experiment", "quick", "runs"], "{}", edit.stderr);
    assert!(
        !edit.stderr_contains("full build"),
        "the kernel is a remote hit: {}",
        edit.stderr
    );
    // Downloaded for whichever boot (`experiment` or `quick`) starts first.
    for needed in ["system", "data"] {
        assert!(
            edit.stderr_contains(&format!("downloaded {needed} (`experiment` needs it)"))
                || edit.stderr_contains(&format!("downloaded {needed} (`quick` needs it)")),
            "{}",
            edit.stderr
        );
    }
    for step in ["base", "system", "data", "kernel"] {
        let tree = out_tree(&b, "workflows/out", step);
        assert!(tree.is_some(), "out/{step}");
        assert_eq!(tree, out_tree(&a, "workflows/out", step), "out/{step}");
    }
    let results = b.read("workflows/out/experiment/results.txt");
    assert!(results.contains("iterations=4000"), "{results}");
    for dir in [b.join("workflows/.qflow/logs"), b.join("workflows/out")] {
        let out = Command::new("grep")
            .args(["-rlI", "quickstart-test-pw"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
