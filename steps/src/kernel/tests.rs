//! Fast tests of the kernel kind against the stand-in kernel tree in
//! `tests/fixtures/kernel` (a real `make`, real `gcc -c`, a Makefile that
//! honours `O=` like kbuild). The real kernel is the slow tier in `tests/kernel.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qflow_engine::context::{NoProgress, ProcessGroups, StepLog};
use qflow_engine::{CheckContext, RunContext, Step};

use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/kernel")
        .canonicalize()
        .unwrap()
}

/// A scratch directory standing for a workflow's directory and the step's kept state.
struct Bench {
    dir: PathBuf,
    runs: usize,
}

impl Bench {
    fn new(name: &str) -> Bench {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("qflow-kernel-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Bench { dir, runs: 0 }
    }

    /// A writable copy of the stand-in tree at `<bench>/linux`.
    fn tree(&self) -> PathBuf {
        let dest = self.dir.join("linux");
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(fixture())
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        dest
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.dir.join(rel), text).unwrap();
    }

    fn step(&self, yaml: &str) -> Kernel {
        let step: Kernel = serde_yaml::from_str(yaml).unwrap();
        step.check(&CheckContext {
            work_dir: self.dir.clone(),
        })
        .unwrap();
        step
    }

    /// Run the step once, as the engine would, with `jobs` slots and a jobserver.
    fn run(&mut self, step: &Kernel, jobs: usize) -> Outcome {
        self.runs += 1;
        let out = self.dir.join(format!("out-{}", self.runs));
        let log = self.dir.join(format!("log-{}", self.runs));
        std::fs::create_dir_all(&out).unwrap();
        let mut ctx = RunContext::new(
            "kernel",
            out.clone(),
            self.dir.clone(),
            self.dir.join("state"),
            jobs,
            Default::default(),
            BTreeMap::new(),
            StepLog::create(&log).unwrap(),
            Arc::new(NoProgress),
            ProcessGroups::new(),
            true,
        )
        .unwrap();
        let result = step.run(&mut ctx);
        Outcome {
            result,
            out,
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        }
    }

    /// The one kept build tree.
    fn build_tree(&self) -> PathBuf {
        let builds: Vec<PathBuf> = std::fs::read_dir(self.dir.join("state"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("build-")
            })
            .collect();
        assert_eq!(builds.len(), 1, "{builds:?}");
        builds[0].clone()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Outcome {
    result: anyhow::Result<()>,
    out: PathBuf,
    log: String,
}

impl Outcome {
    fn ok(self) -> Outcome {
        if let Err(e) = &self.result {
            panic!("kernel step failed: {e:#}\nlog:\n{}", self.log);
        }
        self
    }

    /// The objects make compiled (`  CC      x.o` lines).
    fn compiled(&self) -> Vec<String> {
        self.log
            .lines()
            .filter_map(progress::action)
            .filter(|(v, _)| *v == "CC")
            .map(|(_, t)| t.to_string())
            .collect()
    }

    fn bzimage(&self) -> Vec<u8> {
        std::fs::read(self.out.join("bzImage")).unwrap()
    }
}

fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e.path().to_path_buf(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

fn tiny_step(source: &Path) -> String {
    format!("source: {}\nconfig: tinyconfig\n", source.display())
}

#[test]
fn a_build_produces_the_four_outputs_and_leaves_the_source_tree_untouched() {
    let mut b = Bench::new("outputs");
    let before = listing(&fixture());
    let o = b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    for name in ["bzImage", "vmlinux", "System.map", "config"] {
        assert!(o.out.join(name).is_file(), "missing output {name}");
    }
    assert_eq!(
        listing(&fixture()),
        before,
        "the source tree must not be written"
    );
    assert!(
        b.build_tree().join("kernel/reboot.o").is_file(),
        "objects live in the kept build tree"
    );
    assert_eq!(
        std::fs::read_to_string(o.out.join("config")).unwrap(),
        std::fs::read_to_string(b.build_tree().join(".config")).unwrap()
    );
}

#[test]
fn make_gets_the_jobserver_and_never_a_job_count() {
    let mut b = Bench::new("jobserver");
    let o = b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    let make_lines: Vec<&str> = o.log.lines().filter(|l| l.starts_with("$ make")).collect();
    assert!(
        make_lines.len() >= 3,
        "tinyconfig, olddefconfig, bzImage: {make_lines:?}"
    );
    for l in &make_lines {
        assert!(
            !l.split(' ')
                .any(|a| a.starts_with("-j") || a.starts_with("--jobs")),
            "make got a job count: {l}"
        );
        assert!(l.contains(" O="), "make runs out of tree: {l}");
    }
    let invocations = std::fs::read_to_string(b.build_tree().join("invocations.log")).unwrap();
    let build = invocations
        .lines()
        .find(|l| l.starts_with("recipe=bzImage"))
        .unwrap();
    assert!(build.contains("--jobserver-auth="), "{build}");
    assert!(
        build.contains(" -j2 ") && !build.contains(" -j "),
        "MAKEFLAGS as make writes them: {build}"
    );
    // kbuild's tools/ sub-make keeps the jobserver (a bare `-j` made it drop it).
    assert!(o.log.contains("HOSTCC  tools/objtool"), "{}", o.log);
    assert!(
        !o.log.contains("jobserver mode") && !o.log.contains("jobserver unavailable"),
        "{}",
        o.log
    );

    // At most `jobs` compiles at once, and the jobserver really let two run together.
    let conc = std::fs::read_to_string(b.build_tree().join("concurrency.log")).unwrap();
    let (mut now, mut max) = (0i32, 0i32);
    for l in conc.lines() {
        now += if l.starts_with('+') { 1 } else { -1 };
        max = max.max(now);
    }
    assert_eq!(max, 2, "compiles running at once with 2 slots:\n{conc}");
}

#[test]
fn one_slot_means_one_compile_at_a_time() {
    let mut b = Bench::new("one-slot");
    b.run(&b.step(&tiny_step(&fixture())), 1).ok();
    let conc = std::fs::read_to_string(b.build_tree().join("concurrency.log")).unwrap();
    let (mut now, mut max) = (0i32, 0i32);
    for l in conc.lines() {
        now += if l.starts_with('+') { 1 } else { -1 };
        max = max.max(now);
    }
    assert_eq!(max, 1, "{conc}");
}

#[test]
fn the_build_identity_is_pinned_to_a_fixed_timestamp_user_and_host() {
    let mut b = Bench::new("pins");
    let o = b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    let image = String::from_utf8_lossy(&o.bzimage()).into_owned();
    assert!(
        image.ends_with(&format!("#1 qflow@qflow {FIXED_TIMESTAMP}\n")),
        "{image}"
    );
}

#[test]
fn a_git_tree_is_stamped_with_its_commit_time() {
    let b = Bench::new("git");
    let tree = b.tree();
    let git = |args: &[&str]| {
        let st = std::process::Command::new("git")
            .arg("-C")
            .arg(&tree)
            .args(args)
            .env("GIT_AUTHOR_DATE", "2024-02-03T04:05:06Z")
            .env("GIT_COMMITTER_DATE", "2024-02-03T04:05:06Z")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "stand-in"]);
    let step = b.step(&tiny_step(&tree));
    let key = step
        .extra_key(&CheckContext {
            work_dir: b.dir.clone(),
        })
        .unwrap();
    assert_eq!(
        key[0].0, "source.git_head",
        "the commit enters the key: {key:?}"
    );
    let mut b = b;
    let o = b.run(&step, 2).ok();
    let image = String::from_utf8_lossy(&o.bzimage()).into_owned();
    assert!(
        image.ends_with("#1 qflow@qflow Sat Feb  3 04:05:06 UTC 2024\n"),
        "{image}"
    );
}

#[test]
fn fragments_and_options_are_merged_in_order_with_options_last() {
    let mut b = Bench::new("merge");
    b.write(
        "guest.config",
        "CONFIG_64BIT=y\nCONFIG_VIRTIO=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_CMDLINE=\"x\"\n",
    );
    let yaml = format!(
        "{}fragments: [guest.config]\noptions: {{ PRINTK: y, CMDLINE: console=ttyS0 }}\n",
        tiny_step(&fixture())
    );
    let o = b.run(&b.step(&yaml), 2).ok();
    let config = std::fs::read_to_string(o.out.join("config")).unwrap();
    for line in [
        "CONFIG_64BIT=y",
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_PRINTK=y",
        "CONFIG_CMDLINE=\"console=ttyS0\"",
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line} missing from:\n{config}"
        );
    }
}

#[test]
fn an_option_whose_dependency_is_off_fails_naming_it() {
    let mut b = Bench::new("dropped");
    let yaml = format!("{}options: {{ VIRTIO_BLK: y }}\n", tiny_step(&fixture()));
    let o = b.run(&b.step(&yaml), 2);
    let err = format!("{:#}", o.result.unwrap_err());
    assert!(
        err.contains("`CONFIG_VIRTIO_BLK=y` (from options.VIRTIO_BLK) is not set"),
        "{err}"
    );
    assert!(!o.out.join("bzImage").exists());
}

#[test]
fn a_second_run_skips_configuration_and_compiles_nothing_then_an_edit_compiles_one_file() {
    let mut b = Bench::new("incremental");
    let tree = b.tree();
    let step = b.step(&format!("{}options: {{ 64BIT: y }}\n", tiny_step(&tree)));
    let first = b.run(&step, 2).ok();
    assert_eq!(first.compiled().len(), 6, "{}", first.log);

    let second = b.run(&step, 2).ok();
    assert!(
        second.log.contains("configuration inputs unchanged"),
        "{}",
        second.log
    );
    assert!(!second.log.contains("tinyconfig"), "{}", second.log);
    assert_eq!(second.compiled(), Vec::<String>::new());
    assert_eq!(second.bzimage(), first.bzimage());

    std::fs::write(
        tree.join("kernel/reboot.c"),
        "int reboot_init(void) { return 7; }\n",
    )
    .unwrap();
    let third = b.run(&step, 2).ok();
    assert_eq!(third.compiled(), vec!["kernel/reboot.o".to_string()]);
    assert!(
        third
            .log
            .contains("make compiled 1 file(s): kernel/reboot.o"),
        "{}",
        third.log
    );
    assert_ne!(third.bzimage(), first.bzimage());
}

#[test]
fn a_config_change_reconfigures_the_same_build_tree() {
    let mut b = Bench::new("reconfig");
    b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    let tree = b.build_tree();
    let o = b
        .run(
            &b.step(&format!(
                "{}options: {{ PRINTK: y }}\n",
                tiny_step(&fixture())
            )),
            2,
        )
        .ok();
    assert_eq!(b.build_tree(), tree, "a config change keeps the build tree");
    assert!(o.log.contains("tinyconfig"), "{}", o.log);
    assert!(
        std::fs::read_to_string(o.out.join("config"))
            .unwrap()
            .contains("CONFIG_PRINTK=y")
    );
}

#[test]
fn a_new_fragment_that_changes_nothing_recompiles_nothing() {
    let mut b = Bench::new("same-config");
    b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    // tinyconfig already leaves PRINTK unset: the configuration is re-made, identical.
    b.write("same.config", "# CONFIG_PRINTK is not set\n");
    let o = b
        .run(
            &b.step(&format!(
                "{}fragments: [same.config]\n",
                tiny_step(&fixture())
            )),
            2,
        )
        .ok();
    assert!(
        o.log.contains("Merging"),
        "the configuration was re-made: {}",
        o.log
    );
    assert!(
        o.log.contains("configuration re-made and unchanged"),
        "{}",
        o.log
    );
    assert_eq!(o.compiled(), Vec::<String>::new());
}

#[test]
fn another_source_gets_a_fresh_build_tree_and_the_old_one_is_removed() {
    let mut b = Bench::new("other-source");
    b.run(&b.step(&tiny_step(&fixture())), 2).ok();
    let first = b.build_tree();
    let tree = b.tree();
    let o = b.run(&b.step(&tiny_step(&tree)), 2).ok();
    assert_ne!(b.build_tree(), first);
    assert!(!first.exists());
    assert_eq!(o.compiled().len(), 6);
}

#[test]
fn clean_true_rebuilds_everything() {
    let mut b = Bench::new("clean");
    let step = b.step(&format!("{}clean: true\n", tiny_step(&fixture())));
    b.run(&step, 2).ok();
    let o = b.run(&step, 2).ok();
    assert!(o.log.contains("mrproper"), "{}", o.log);
    assert_eq!(o.compiled().len(), 6);
}

#[test]
fn a_compile_error_shows_the_compiler_lines() {
    let mut b = Bench::new("error");
    let tree = b.tree();
    std::fs::write(
        tree.join("kernel/reboot.c"),
        "int reboot_init(void)\n{\n\treturn 6\n}\n",
    )
    .unwrap();
    let o = b.run(&b.step(&tiny_step(&tree)), 2);
    let err = format!("{:#}", o.result.unwrap_err());
    assert!(
        err.starts_with("the kernel does not compile:\n    kernel/reboot.c:3:"),
        "{err}"
    );
    assert!(err.contains("error: expected ';'"), "{err}");
}

#[test]
fn a_tarball_source_is_unpacked_once_and_built() {
    let mut b = Bench::new("tarball");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(fixture().parent().unwrap())
        .args(["-cJf"])
        .arg(b.dir.join("linux.tar.xz"))
        .arg("kernel")
        .status()
        .unwrap();
    assert!(st.success());
    let step = b.step("source: { tarball: linux.tar.xz }\nconfig: tinyconfig\n");
    assert_eq!(step.inputs()[0].path, "linux.tar.xz");
    assert!(step.tools().iter().any(|t| t.program == "xz"));
    let o = b.run(&step, 2).ok();
    assert_eq!(o.compiled().len(), 6);
    let o = b.run(&step, 2).ok();
    assert!(!o.log.contains("unpacked"), "unpacked only once: {}", o.log);
    assert_eq!(o.compiled(), Vec::<String>::new());
}

#[test]
fn jobs_default_to_a_memory_aware_cap() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let jobs = safe_jobs();
    assert!(jobs >= 1 && jobs <= cores, "{jobs} of {cores}");
    let step: Kernel = serde_yaml::from_str("source: .\n").unwrap();
    assert_eq!(step.default_jobs(), jobs);
    assert!(step.uses_jobserver());
}

fn check_err(yaml: &str, work: &Path) -> FieldError {
    match serde_yaml::from_str::<Kernel>(yaml) {
        Ok(step) => step
            .check(&CheckContext {
                work_dir: work.to_path_buf(),
            })
            .unwrap_err(),
        Err(e) => FieldError::new("", e.to_string()),
    }
}

#[test]
fn bad_fields_are_refused_before_anything_runs() {
    let b = Bench::new("check");
    let src = fixture().display().to_string();
    let cases = [
        (
            format!("source: {src}\ntargets: [bzImage, -j8]\n"),
            "targets[1]",
            "not a make target",
        ),
        (
            format!("source: {src}\ntargets: [bzImage, O=/tmp]\n"),
            "targets[1]",
            "not a make target",
        ),
        (
            format!("source: {src}\ntargets: [menuconfig, bzImage]\n"),
            "targets[0]",
            "use the `config` field",
        ),
        (
            format!("source: {src}\ntargets: [vmlinux]\n"),
            "targets",
            "must include `bzImage`",
        ),
        (
            format!("source: {src}\noptions: {{ 'EXT4 FS': y }}\n"),
            "options.EXT4 FS",
            "not a kconfig option name",
        ),
        (
            format!("source: {src}\nfragments: [missing.config]\n"),
            "fragments[0]",
            "cannot read fragment",
        ),
        (
            format!("source: {src}\nconfig: {{ file: nope.config }}\n"),
            "config.file",
            "does not exist",
        ),
        (
            "source: ./nowhere\n".to_string(),
            "source",
            "not a directory",
        ),
        (
            "source: { tarball: linux.tar.xz }\n".to_string(),
            "source.tarball",
            "does not exist",
        ),
        (
            "source: { url: 'https://x/linux.tar.xz', sha256: abc }\n".to_string(),
            "source.sha256",
            "64 hex digits",
        ),
    ];
    for (yaml, field, needle) in cases {
        let e = check_err(&yaml, &b.dir);
        assert_eq!(e.field, field, "{yaml}: {e}");
        assert!(e.message.contains(needle), "{yaml}: {e}");
    }
    b.write("bad.config", "CONFIG_A=y\nEXT4=y\n");
    let e = check_err(&format!("source: {src}\nfragments: [bad.config]\n"), &b.dir);
    assert!(e.message.contains("line 2: `EXT4=y`"), "{e}");
}

#[test]
fn serde_errors_name_the_wrong_field() {
    let e = check_err("source: { tarbal: x.tar.xz }\n", Path::new("/"));
    assert!(e.message.contains("unknown field `tarbal`"), "{e}");
    let e = check_err("source: { url: 'https://x/l.tar.xz' }\n", Path::new("/"));
    assert!(e.message.contains("`url` needs `sha256`"), "{e}");
    let e = check_err("source: .\nconfig: defconfg\n", Path::new("/"));
    assert!(e.message.contains("unknown variant `defconfg`"), "{e}");
}

#[test]
fn a_tree_built_in_place_is_refused_with_what_to_do() {
    let b = Bench::new("dirty");
    let tree = b.tree();
    std::fs::write(tree.join(".config"), "CONFIG_64BIT=y\n").unwrap();
    let e = check_err(&tiny_step(&tree), &b.dir);
    assert_eq!(e.field, "source");
    assert!(e.message.contains("mrproper"), "{e}");
}

#[test]
fn the_plan_shows_the_make_command_lines() {
    let b = Bench::new("plan");
    b.write("guest.config", "CONFIG_64BIT=y\n");
    let step = b.step(&format!(
        "{}fragments: [guest.config]\noptions: {{ PRINTK: y }}\n",
        tiny_step(&fixture())
    ));
    let plan = step.plan(&CheckContext {
        work_dir: b.dir.clone(),
    });
    let src = fixture().display().to_string();
    assert_eq!(
        plan[0],
        format!("make -C {src} O=$QFLOW_STATE/build-<source> tinyconfig")
    );
    assert!(
        plan[1].contains("merge_config.sh -m -O") && plan[1].ends_with("qflow-options.config"),
        "{plan:?}"
    );
    assert_eq!(
        plan.last().unwrap(),
        &format!("make -C {src} O=$QFLOW_STATE/build-<source> bzImage")
    );

    b.write("linux.tar.xz", "");
    let step: Kernel =
        serde_yaml::from_str("source: { tarball: linux.tar.xz }\nconfig: defconfig\n").unwrap();
    let plan = step.plan(&CheckContext {
        work_dir: b.dir.clone(),
    });
    assert_eq!(
        plan[0],
        "make -C $QFLOW_STATE/sources/<tarball-hash> O=$QFLOW_STATE/build-<source> defconfig"
    );
}

#[test]
fn the_schema_describes_every_field_and_both_forms_of_source_and_config() {
    use qflow_engine::{KindOf, StepKind};
    let kind = KindOf::<Kernel>::new();
    let mut names = kind.field_names();
    names.sort();
    assert_eq!(
        names,
        [
            "clean",
            "config",
            "fragments",
            "options",
            "source",
            "targets"
        ]
    );
    let schema = serde_json::to_string(&kind.schema()).unwrap();
    for needle in ["tarball", "sha256", "oldconfig", "tinyconfig", "defconfig"] {
        assert!(schema.contains(needle), "{needle} missing from {schema}");
    }
}

/// Serve `body` over real HTTP on loopback for every request; returns the base URL.
fn serve(body: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn stand_in_tarball(b: &Bench) -> Vec<u8> {
    let path = b.dir.join("linux.tar.xz");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(fixture().parent().unwrap())
        .arg("-cJf")
        .arg(&path)
        .arg("kernel")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(path).unwrap()
}

#[test]
fn a_url_source_is_downloaded_checked_and_built() {
    let mut b = Bench::new("url");
    let tarball = stand_in_tarball(&b);
    let url = format!("{}/linux-9.9.tar.xz", serve(tarball.clone()));
    let step = b.step(&format!(
        "source: {{ url: '{url}', sha256: {} }}\nconfig: tinyconfig\n",
        sha256_hex(&tarball)
    ));
    let o = b.run(&step, 2).ok();
    assert_eq!(o.compiled().len(), 6);
    let downloads: Vec<_> = std::fs::read_dir(b.dir.join("state/downloads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert!(
        downloads[0]
            .to_string_lossy()
            .ends_with("-linux-9.9.tar.xz"),
        "{downloads:?}"
    );
}

#[test]
fn a_url_whose_content_does_not_match_its_sha256_is_refused_and_not_kept() {
    let mut b = Bench::new("url-bad");
    let tarball = stand_in_tarball(&b);
    let url = format!("{}/linux-9.9.tar.xz", serve(tarball));
    let step = b.step(&format!(
        "source: {{ url: '{url}', sha256: {} }}\nconfig: tinyconfig\n",
        "0".repeat(64)
    ));
    let o = b.run(&step, 2);
    let err = format!("{:#}", o.result.unwrap_err());
    assert!(err.contains("but `sha256` says 0000"), "{err}");
    assert_eq!(
        std::fs::read_dir(b.dir.join("state/downloads"))
            .unwrap()
            .count(),
        0,
        "nothing kept"
    );
}

#[test]
fn a_url_with_credentials_never_shows_them_in_errors_or_notes() {
    let mut b = Bench::new("url-secret");
    let tarball = stand_in_tarball(&b);
    let base = serve(tarball);
    let url = format!(
        "{}/linux-9.9.tar.xz",
        base.replace("http://", "http://reader:hunter2@")
    );
    let step = b.step(&format!(
        "source: {{ url: '{url}', sha256: {} }}\nconfig: tinyconfig\n",
        "0".repeat(64)
    ));
    let o = b.run(&step, 2);
    let err = format!("{:#}", o.result.unwrap_err());
    assert!(err.contains("but `sha256` says 0000"), "{err}");
    assert!(o.log.contains("downloading http://127.0.0.1"), "{}", o.log);
    for text in [&err, &o.log] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}
