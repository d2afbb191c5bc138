//! A user customizes a Debian base image the way one does it by hand (root
//! password, packages, no unattended upgrades, files, guest commands) and reads the
//! result back out of the image; an artifact evaluator builds base and customization
//! again from nothing (a second, clean cache) and gets the same bytes. The base image
//! comes from the `debootstrap` kind, built once per test run in the shared cache.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::guest_disk::{GuestDisk, crypt_verifies, dpkg_installed, sha256};
use common::{Space, shared_cache};

const BASE_STEP: &str = include_str!("fixtures/customize/base-step.yaml");

fn fixture(rel: &str) -> String {
    format!(
        "{}/tests/fixtures/customize/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn base_only() -> String {
    format!("version: 1\nname: customize-test\nsteps:\n{BASE_STEP}")
}

/// A step using every field, plus a step that depends on the result.
fn full_workflow(install: &str) -> String {
    format!(
        r#"{base}
  sys:
    kind: customize
    image: base
    root_password: {{ file: secrets/root-password }}
    install: [{install}]
    uninstall: [less]
    purge_unattended_upgrades: true
    copy_in: [{{ from: {bench}, to: /opt }}]
    write: [{{ path: /etc/motd, content: "sim image: built by qflow\n" }}, {{ path: /etc/qflow/new.conf, content: "a: b\nc\n" }}]
    commands: ["echo built-by-qflow > /root/marker"]
  listing:
    kind: command
    run: [sh, -c, 'ls ${{{{ steps.sys }}}} > "$QFLOW_OUT/ls.txt"']
    outputs: [ls.txt]
"#,
        base = base_only(),
        bench = fixture("bench"),
    )
}

/// Watches every process's argv while a run goes on.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl ArgvWatch {
    /// Start scanning `/proc/*/cmdline` for `needle`.
    fn start(needle: &str) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let needle = needle.as_bytes().to_vec();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut hits = Vec::new();
            let mut customize_seen = 0;
            while !flag.load(Ordering::SeqCst) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    if cmdline
                        .windows(needle.len())
                        .any(|w| w == needle.as_slice())
                    {
                        hits.push(format!("pid {}", entry.file_name().to_string_lossy()));
                    }
                    if cmdline.starts_with(b"virt-customize\0") {
                        customize_seen += 1;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (hits, customize_seen)
        });
        ArgvWatch { stop, thread }
    }

    /// Stop; the processes whose argv held the needle, and how often virt-customize was seen.
    fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Files under `dirs` that contain `needle` (grep, the needle passed in a file). The
/// shared cache's other users may remove a file while grep walks it (a run prunes old
/// logs): a file gone meanwhile held nothing to find; any other grep error fails.
fn files_containing(needle: &str, dirs: &[&Path]) -> Vec<String> {
    let pattern = common::scratch_file("needle");
    std::fs::write(&pattern, needle).unwrap();
    let out = std::process::Command::new("grep")
        .args(["-rlaF", "-f"])
        .arg(&pattern)
        .args(dirs)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&pattern);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(2)
            || errors
                .lines()
                .all(|l| l.ends_with(": No such file or directory")),
        "grep failed: {errors}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The version of `package` that a dpkg status file lists as installed.
fn dpkg_version(status: &str, package: &str) -> Option<String> {
    status
        .split("\n\n")
        .filter(|p| p.lines().any(|l| l == format!("Package: {package}")))
        .find_map(|p| p.lines().find_map(|l| l.strip_prefix("Version: ")))
        .map(str::to_string)
}

/// The facts the last apply noted in `qflow.lock` for `step`.
fn lock_notes(s: &Space, step: &str) -> serde_json::Value {
    let lock: serde_json::Value = serde_json::from_str(&s.read("qflow.lock")).unwrap();
    lock["steps"][step]["notes"].clone()
}

fn image_of(s: &Space, step: &str) -> PathBuf {
    std::fs::canonicalize(s.join(&format!("out/{step}/image.qcow2"))).unwrap()
}

#[test]
#[ignore = "slow: debootstrap and virt-customize on the shared cache, then both again from a clean cache (about 10 minutes)"]
fn customizing_applies_every_field_leaves_the_base_unchanged_and_a_clean_rebuild_is_bit_identical()
{
    let cache = shared_cache();
    let s = Space::new().with_cache(&cache);
    // A password with the characters most likely to be mangled on the way.
    let password = format!(
        "qflow pw:{}!'\"$x",
        std::process::id() as u128 * 1_000_003 + nanos() % 1_000_000
    );
    s.write("secrets/root-password", format!("{password}\n"));
    // An artifact evaluator builds it all again from nothing (a second, clean cache),
    // meanwhile: it holds no lock the shared cache's users wait for.
    let second_cache = common::scratch_file("second-cache");
    let second = Space::new().with_cache(&second_cache);
    second.write("secrets/root-password", format!("{password}\n"));
    second.workflow(&full_workflow("numactl, bc"));
    let evaluator = std::thread::spawn(move || {
        let run = second.apply();
        (second, run)
    });

    s.workflow(&base_only());
    s.apply();
    let base_image = image_of(&s, "base");
    let base_sum = sha256(&base_image);

    s.workflow(&full_workflow("numactl, bc"));
    let watch = ArgvWatch::start(&password);
    let started = std::time::Instant::now();
    let run = s.apply();
    let wall = started.elapsed();
    let (argv_hits, customize_seen) = watch.finish();
    eprintln!("customize + listing wall time: {:.1} s", wall.as_secs_f64());
    assert_eq!(run.ran_sorted(), ["listing", "sys"], "{}", run.stderr);
    assert!(
        customize_seen > 0,
        "the argv scan never saw virt-customize run"
    );
    assert!(
        argv_hits.is_empty(),
        "the password appeared in the argv of {argv_hits:?}"
    );

    let disk = GuestDisk::open(&image_of(&s, "sys"), &s.join("scratch"));
    let shadow = disk.cat("/etc/shadow").expect("/etc/shadow");
    let root_hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    assert!(
        crypt_verifies(root_hash, &password),
        "root's hash {root_hash} does not verify the password"
    );
    assert!(!crypt_verifies(root_hash, "not the password"));

    let status = disk.cat("/var/lib/dpkg/status").unwrap();
    assert!(
        dpkg_installed(&status, "numactl") && dpkg_installed(&status, "bc"),
        "numactl or bc is not installed"
    );
    assert!(!dpkg_installed(&status, "less"), "less is still installed");
    assert!(
        !status.contains("Package: unattended-upgrades\n"),
        "unattended-upgrades was not purged"
    );
    for file in [
        "/etc/apt/apt.conf.d/10periodic",
        "/etc/apt/apt.conf.d/20auto-upgrades",
    ] {
        let text = disk.cat(file).unwrap_or_else(|| panic!("{file} missing"));
        assert!(
            text.contains("APT::Periodic::Update-Package-Lists \"0\";"),
            "{file}: {text}"
        );
        assert!(
            text.contains("APT::Periodic::Unattended-Upgrade \"0\";"),
            "{file}: {text}"
        );
    }
    assert_eq!(
        disk.cat("/opt/bench/run.sh").unwrap(),
        "#!/bin/sh\necho \"benchmark ran\"\n"
    );
    assert_eq!(
        disk.cat("/opt/bench/data.txt").unwrap(),
        "input data: 1 2 3\n"
    );
    assert_eq!(
        disk.cat("/etc/motd").unwrap(),
        "sim image: built by qflow\n"
    );
    assert_eq!(disk.cat("/etc/qflow/new.conf").unwrap(), "a: b\nc\n");
    assert_eq!(disk.cat("/root/marker").unwrap(), "built-by-qflow\n");
    // systemd makes a fresh machine id on first boot (minbase without systemd has none),
    // and no cache of the build machine's is left behind.
    let machine_id = disk.cat("/etc/machine-id");
    assert!(
        matches!(machine_id.as_deref(), None | Some("")),
        "{machine_id:?}"
    );
    assert!(disk.stat("/var/cache/ldconfig/aux-cache").is_none());
    drop(disk);

    // The upstream image is untouched, and the result is an overlay on it by a relative path.
    assert_eq!(sha256(&base_image), base_sum, "the base image changed");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image_of(&s, "sys"))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let backing = info["backing-filename"].as_str().unwrap();
    assert!(
        backing.starts_with("../") && backing.ends_with("/image.qcow2"),
        "backing file {backing}"
    );

    // The password is nowhere on disk: not in the lock, a log, the cache, /dev/shm.
    let leaks = files_containing(
        &password,
        &[&cache, &s.join("qflow.lock"), Path::new("/dev/shm")],
    );
    assert!(leaks.is_empty(), "the password is in {leaks:?}");
    let lock = s.read("qflow.lock");
    assert!(lock.contains("\"sys\""), "{lock}");

    // The lock records the installed version of what `install:` asked for, and every
    // package the customized image holds (what numactl pulled in included).
    let numactl = dpkg_version(&status, "numactl").expect("numactl's version");
    let bc = dpkg_version(&status, "bc").expect("bc's version");
    let notes = lock_notes(&s, "sys");
    assert_eq!(
        notes["installed"],
        format!("numactl={numactl}\nbc={bc}"),
        "{notes}"
    );
    let packages = notes["packages"].as_str().unwrap();
    assert!(
        packages.lines().any(|l| l == format!("numactl={numactl}")),
        "{packages}"
    );
    assert!(
        !packages.lines().any(|l| l.starts_with("less=")),
        "{packages}"
    );

    // Apply again: nothing runs.
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);

    // Change the package list: the plan runs only the customization and what depends
    // on it again.
    s.workflow(&full_workflow("numactl"));
    let actions = plan_actions(&s);
    assert_eq!(actions["sys"], "run", "{actions:?}");
    assert_eq!(actions["listing"], "run", "{actions:?}");
    assert_eq!(actions["base"], "cached", "{actions:?}");
    s.workflow(&full_workflow("numactl, bc"));

    // A new password changes the key (through its hash): the plan runs the step again,
    // and shows no password.
    let new_password = format!("{password}-2");
    s.write("secrets/root-password", format!("{new_password}\n"));
    for args in [&["plan"][..], &["plan", "--json"]] {
        let plan = s.qflow(args).success();
        assert!(!plan.stdout.contains(&new_password) && !plan.stderr.contains(&new_password));
    }
    let actions = plan_actions(&s);
    assert_eq!(actions["sys"], "run", "{actions:?}");
    assert_eq!(actions["base"], "cached", "{actions:?}");
    s.write("secrets/root-password", format!("{password}\n"));

    // The evaluator's images come out byte for byte the same, and record the same
    // SOURCE_DATE_EPOCH, the base's file system time.
    let (second, rebuilt) = evaluator.join().unwrap();
    assert_eq!(
        rebuilt.ran_sorted(),
        ["base", "listing", "sys"],
        "{}",
        rebuilt.stderr
    );
    for step in ["base", "sys"] {
        let (a, b) = (image_of(&s, step), image_of(&second, step));
        assert_eq!(
            first_difference(&a, &b),
            None,
            "the two builds of `{step}` differ: {} and {}",
            a.display(),
            b.display()
        );
    }
    let epoch = |s: &Space, step: &str| {
        lock_notes(s, step)["source_date_epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no source_date_epoch for `{step}`"))
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(epoch(&s, "base"), epoch(&second, "base"));
    assert_eq!(epoch(&s, "sys"), epoch(&s, "base"));
    drop(second);
    let _ = common::make_writable_and_remove(&second_cache);
}

/// What `qflow plan --json` would do with each step (`run`, `cached`, ...).
fn plan_actions(s: &Space) -> std::collections::BTreeMap<String, String> {
    let plan = s.qflow(&["plan", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The first byte offset at which two files differ, if they do.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    use std::io::Read as _;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = a.read(&mut x).unwrap();
        let mut m = 0;
        while m < n {
            let k = b.read(&mut y[m..n]).unwrap();
            if k == 0 {
                return Some(offset + m as u64);
            }
            m += k;
        }
        if n == 0 {
            return (b.read(&mut y[..1]).unwrap() != 0).then_some(offset);
        }
        if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
            return Some(offset + i as u64);
        }
        offset += n as u64;
    }
}

#[test]
#[ignore = "slow: needs the shared Debian base image (built by debootstrap in about a minute)"]
fn an_appliance_that_cannot_start_is_explained_and_leaves_no_output() {
    let s = Space::new().with_cache(&shared_cache());
    s.workflow(&format!(
        "{}\n  sys:\n    kind: customize\n    image: base\n    commands: ['true']\n    env: {{ LIBGUESTFS_HV: /nonexistent/qemu-system-x86_64 }}\n",
        base_only()
    ));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["sys"], "{}", run.stderr);
    assert!(
        run.stderr_contains("/nonexistent/qemu-system-x86_64: No such file"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr_contains("LIBGUESTFS_"),
        "no hint in: {}",
        run.stderr
    );
    assert!(!s.join("out/sys").exists());
}

#[test]
fn a_shell_command_in_the_package_list_is_refused_before_anything_runs() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: command\n    run: ['false']\n  sys:\n    kind: customize\n    image: base\n    install: [numactl, 'foo; rm -rf /']\n",
    );
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr_contains("install[1]"), "{}", run.stderr);
    assert!(run.stderr_contains("workflow.yaml:9"), "{}", run.stderr);
    assert!(
        run.ran().is_empty() && run.failed().is_empty(),
        "{}",
        run.stderr
    );
}

#[test]
fn a_password_written_inline_is_refused_without_being_echoed() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: command\n    run: ['false']\n  sys:\n    kind: customize\n    image: base\n    root_password: Tr0ub4dor-3-horse\n",
    );
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr_contains("root_password"), "{}", run.stderr);
    assert!(run.stderr_contains("{ file: PATH }"), "{}", run.stderr);
    let message: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert!(
        !message.iter().any(|l| l.contains("Tr0ub4dor")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_password_file_that_is_missing_is_named_before_anything_runs() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: command\n    run: ['false']\n  sys:\n    kind: customize\n    image: base\n    root_password: { file: secrets/none }\n",
    );
    let run = s.qflow(&["apply"]).failure(2);
    assert!(run.stderr_contains("secrets/none"), "{}", run.stderr);
    assert!(
        run.ran().is_empty() && run.failed().is_empty(),
        "{}",
        run.stderr
    );
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Processes whose argv contains `needle`: (pid, argv joined by spaces).
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if argv.contains(needle) && pid != std::process::id() {
            found.push((pid, argv));
        }
    }
    found
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last `)`.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A child process killed if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: SIGINT to our own child, so qflow cleans up as on Ctrl-C.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
            let _ = self.0.wait();
        }
    }
}

#[test]
#[ignore = "slow: needs the shared Debian base image and starts libguestfs's appliance"]
fn interrupting_a_customization_leaves_no_secret_no_output_and_no_appliance() {
    let s = Space::new().with_cache(&shared_cache());
    s.write("pw", "interrupted-password\n");
    s.workflow(&format!(
        "version: 1\nname: customize-interrupt\nsteps:\n{BASE_STEP}\n  sys:\n    kind: customize\n    image: base\n    root_password: {{ file: pw }}\n    commands: ['sleep 600']\n"
    ));
    let mut qflow = KillOnDrop(
        s.command(&["apply"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for the virt-customize that this qflow started.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    let argv = loop {
        let child = qflow.0.id();
        if let Some((_, argv)) = processes_with("virt-customize ")
            .into_iter()
            .find(|(pid, a)| a.starts_with("virt-customize ") && parent_of(*pid) == Some(child))
        {
            break argv;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "virt-customize never started"
        );
        assert!(
            qflow.0.try_wait().unwrap().is_none(),
            "qflow ended before virt-customize started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Customizing in place hands virt-customize a password file; a rebuilt image gets
    // root's hash afterwards, so its virt-customize sees no password at all.
    let secret = argv
        .split(' ')
        .find_map(|a| a.strip_prefix("file:"))
        .map(str::to_string);
    let overlay = argv
        .split(' ')
        .find(|a| a.ends_with(".qcow2"))
        .expect("-a IMAGE")
        .to_string();
    if let Some(secret) = &secret {
        assert!(
            Path::new(secret).exists(),
            "the password file {secret} is not there while virt-customize runs"
        );
    }
    // Let the appliance start, then press Ctrl-C.
    let appliance_deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !processes_with(&overlay)
        .iter()
        .any(|(_, a)| a.contains("qemu"))
    {
        assert!(
            std::time::Instant::now() < appliance_deadline,
            "the appliance never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: kill(2) on the qflow child we spawned.
    unsafe { libc::kill(qflow.0.id() as i32, libc::SIGINT) };
    let status = qflow.0.wait().unwrap();
    assert!(!status.success(), "qflow succeeded after Ctrl-C");
    std::thread::sleep(std::time::Duration::from_secs(3));
    if let Some(secret) = &secret {
        assert!(
            !Path::new(secret).exists(),
            "the password file {secret} survived the interrupt"
        );
    }
    let left: Vec<_> = processes_with(&overlay)
        .into_iter()
        .chain(secret.iter().flat_map(|s| processes_with(s)))
        .collect();
    assert!(left.is_empty(), "processes outlived qflow: {left:?}");
    assert!(
        !Path::new(&overlay).exists(),
        "the half-made overlay {overlay} is still there"
    );
    assert!(!s.join("out/sys").exists());
}

#[test]
#[ignore = "slow: needs the shared Debian base image and runs virt-customize twice"]
fn a_random_password_is_kept_for_the_user_and_locked_takes_it_away() {
    let cache = shared_cache();
    let s = Space::new().with_cache(&cache);
    s.workflow(&format!(
        "{}\n  random:\n    kind: customize\n    image: base\n    root_password: random\n    commands: ['echo {} > /root/run-id']\n  locked:\n    kind: customize\n    image: random\n    root_password: locked\n",
        base_only(),
        nanos()
    ));
    let run = s.apply();
    // `base` is shared: built here when this test is the first to need it, else cached.
    let mut ran = run.ran_sorted();
    ran.retain(|n| n != "base");
    assert_eq!(ran, ["locked", "random"], "{}", run.stderr);

    let kept = cache.join("state/customize-test/random/root-password");
    let password = std::fs::read_to_string(&kept).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let disk = GuestDisk::open(&image_of(&s, "random"), &s.join("scratch"));
    let shadow = disk.cat("/etc/shadow").unwrap();
    let hash = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(
        crypt_verifies(&hash, &password),
        "the kept random password does not log in"
    );
    drop(disk);

    // `locked` on top of it (an overlay of an overlay): no password works any more.
    let disk = GuestDisk::open(&image_of(&s, "locked"), &s.join("scratch"));
    let shadow = disk.cat("/etc/shadow").unwrap();
    let locked = shadow
        .lines()
        .find_map(|l| l.strip_prefix("root:"))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !crypt_verifies(&locked, &password),
        "root still logs in with {locked}"
    );
    assert!(
        locked.starts_with('*') || locked.starts_with('!'),
        "root's password field is {locked}"
    );
    let leaks = files_containing(
        &password,
        &[
            &cache.join("logs"),
            &cache.join("records"),
            &s.join("qflow.lock"),
        ],
    );
    assert!(leaks.is_empty(), "the random password is in {leaks:?}");
}
