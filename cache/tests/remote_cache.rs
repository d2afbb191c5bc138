//! The remote cache client against real servers on loopback.
//!
//! Tests marked slow start a private Debian nginx (through `scripts/remote-cache-start.sh`,
//! which needs root and installs nginx when missing) on free ports, as a write-once store.
//! The others need no nginx: a closed port, a listener that accepts and never answers, and a
//! few lines of HTTP over a `TcpListener` that answer 503 or drop a body halfway, the faults
//! nginx cannot be made to show on demand.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qflow_cache::remote::{
    Credentials, RemoteCache, RemoteConfig, Secret, Timeouts, UploadOutcome,
};
use qflow_cache::{Cache, Hash, Record};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory under /tmp (nginx's workers, as www-data, must reach the server's
/// state directory), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "qflow-remote-test-{what}-{}-{n}",
            std::process::id()
        ));
        let _ = qflow_cache::remove_dir_force(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = qflow_cache::remove_dir_force(&self.0);
    }
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
        .join("../scripts")
        .join(name)
}

/// A private nginx started by the project's script; stopped (by the other script) on drop.
struct Nginx {
    state: Scratch,
    read: String,
    write: String,
}

impl Nginx {
    fn start(auth: &[(&str, &str)]) -> Nginx {
        let state = Scratch::new("srv");
        let read = format!("127.0.0.1:{}", free_port());
        let write = format!("127.0.0.1:{}", free_port());
        let server = Nginx { state, read, write };
        let mut cmd = Command::new(script("remote-cache-start.sh"));
        server.env(&mut cmd);
        for (k, v) in auth {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "remote-cache-start.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    fn env(&self, cmd: &mut Command) {
        cmd.env("QFLOW_REMOTE_CACHE_SRV", &self.state.0)
            .env("QFLOW_REMOTE_CACHE_SRV_READ", &self.read)
            .env("QFLOW_REMOTE_CACHE_SRV_WRITE", &self.write);
    }

    fn stop(&self) {
        let mut cmd = Command::new(script("remote-cache-stop.sh"));
        self.env(&mut cmd);
        assert!(cmd.status().unwrap().success());
    }

    fn read_url(&self) -> String {
        format!("http://{}", self.read)
    }

    fn write_url(&self) -> String {
        format!("http://{}", self.write)
    }

    fn data(&self) -> PathBuf {
        self.state.0.join("data")
    }

    /// A client reading and writing this server, with no credentials unless given.
    fn client(&self, credentials: Credentials) -> (RemoteCache, Arc<Mutex<Vec<String>>>) {
        let mut config = RemoteConfig::new(&self.read_url());
        config.write_url = Some(self.write_url());
        config.upload = true;
        config.credentials = Some(credentials);
        client(config)
    }

    /// Every file the server stores, with its bytes.
    fn files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        walk(&self.data())
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A client for `config` whose warnings are collected.
fn client(mut config: RemoteConfig) -> (RemoteCache, Arc<Mutex<Vec<String>>>) {
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    config.on_warning = Some(Arc::new(move |w: &str| {
        sink.lock().unwrap().push(w.to_string())
    }));
    (RemoteCache::from_config(config).unwrap(), heard)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Files (not directories) below `dir`, relative, with their bytes; symlinks as their target.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let bytes = if meta.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .display()
                    .to_string()
                    .into_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            (rel, bytes)
        })
        .collect()
}

/// Commits a tree of `files` (path, bytes, executable) and its record under `key` in `cache`.
fn commit(cache: &Cache, key: &Hash, files: &[(&str, Vec<u8>, bool)], retains: &[Hash]) -> Record {
    use std::os::unix::fs::PermissionsExt;
    let t = cache.new_tree().unwrap();
    for (path, bytes, executable) in files {
        let p = t.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        if *executable {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let manifest = cache.commit_tree(t).unwrap();
    let record = Record {
        key: *key,
        output: manifest.hash,
        manifest,
        retains: retains.to_vec(),
        created_unix: 1,
        duration_ms: 2,
        meta: Default::default(),
    };
    cache.put_record(key, &record).unwrap();
    record
}

/// Bytes that do not compress or repeat: `len` of them, from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A "base image" step and an "overlay" step that retains it, committed in `cache`.
/// Returns (base record, overlay record).
fn two_steps(cache: &Cache) -> (Record, Record) {
    let base = commit(
        cache,
        &Hash::of_bytes(b"base step"),
        &[
            ("image.qcow2", noise(5 << 20, 1), false),
            ("tools/run", b"#!/bin/sh\necho hi\n".to_vec(), true),
            ("tools/same-as-run", b"#!/bin/sh\necho hi\n".to_vec(), false),
        ],
        &[],
    );
    let overlay = commit(
        cache,
        &Hash::of_bytes(b"overlay step"),
        &[
            ("image.qcow2", noise(300 << 10, 2), false),
            ("empty", Vec::new(), false),
            ("nested/dir/notes.txt", b"overlay on base\n".to_vec(), false),
        ],
        &[base.output],
    );
    // The overlay names its base by a relative path, as a qcow2 backing file does.
    (base, overlay)
}

fn cache_in(scratch: &Scratch, name: &str) -> Cache {
    Cache::open(&scratch.0.join(name)).unwrap()
}

/// Object files and trees (temporary ones included) in `cache`.
fn stored(cache: &Cache) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let trees = std::fs::read_dir(cache.dir("trees"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    (walk(&cache.dir("objects")), trees)
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_result_uploaded_from_one_cache_is_fetched_byte_identical_into_an_empty_one() {
    let server = Nginx::start(&[]);
    let scratch = Scratch::new("two-machines");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (_base, overlay) = two_steps(&a);

    let (remote_a, warnings_a) = server.client(Credentials::none());
    let outcome = remote_a.upload(&overlay, &a);
    let UploadOutcome::Uploaded { objects, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(objects, 5, "5 distinct contents (one of them in two modes)");
    assert_eq!(remote_a.upload(&overlay, &a), UploadOutcome::AlreadyThere);
    assert!(warnings_a.lock().unwrap().is_empty());

    // nginx logs a request after it answered it: give the last line a moment to appear.
    let puts_logged = || {
        let log = std::fs::read_to_string(server.state.0.join("logs/access.log")).unwrap();
        let puts = log.lines().filter(|l| l.contains("\"PUT /")).count();
        (puts, log)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while puts_logged().0 < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (puts, log) = puts_logged();
    assert_eq!(puts, 6, "5 objects and the entry: {log}");

    let (remote_b, warnings_b) = server.client(Credentials::none());
    remote_b.check().unwrap();
    assert!(remote_b.lookup(&Hash::of_bytes(b"never built")).is_none());
    let entry = remote_b.lookup(&overlay.key).expect("a remote hit");
    assert_eq!(
        b.get_record(&overlay.key).unwrap(),
        None,
        "lookup downloads nothing"
    );
    let output = remote_b.fetch_tree(&entry, &b).unwrap();
    assert_eq!(output, overlay.output);
    assert_eq!(b.get_record(&overlay.key).unwrap(), Some(overlay.clone()));
    assert!(b.has_tree(&overlay.output));
    for tree in [overlay.output, overlay.retains[0]] {
        assert_eq!(
            snapshot(&b.tree_path(&tree)),
            snapshot(&a.tree_path(&tree)),
            "tree {tree}"
        );
    }
    assert_eq!(
        b.tree_retains(&overlay.output),
        a.tree_retains(&overlay.output)
    );
    let stats = remote_b.stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert!(stats.bytes_down > (5 << 20) + (300 << 10), "{stats:?}");
    assert!(warnings_b.lock().unwrap().is_empty());

    // A second fetch into the same cache moves only the entry.
    let again = remote_b.lookup(&overlay.key).unwrap();
    let before = remote_b.stats().objects_down;
    remote_b.fetch_tree(&again, &b).unwrap();
    assert_eq!(remote_b.stats().objects_down, before);
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn wrong_bytes_planted_under_a_valid_name_are_a_miss_with_one_warning_and_nothing_enters_the_cache()
{
    let server = Nginx::start(&[]);
    let scratch = Scratch::new("planted");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (_base, overlay) = two_steps(&a);

    // Someone PUTs other bytes under the sha256 name of the overlay's image first; the
    // write-once server keeps them, and the upload finds the name taken.
    let real = noise(300 << 10, 2);
    let name = sha256_hex(&real);
    let mut planted = real.clone();
    planted[1000] ^= 1;
    let agent = ureq::Agent::new_with_defaults();
    agent
        .put(format!("{}/cas/{name}", server.write_url()))
        .send(&planted[..])
        .unwrap();
    let (remote_a, _) = server.client(Credentials::none());
    assert!(matches!(
        remote_a.upload(&overlay, &a),
        UploadOutcome::Uploaded { .. }
    ));

    let (remote_b, warnings) = server.client(Credentials::none());
    let entry = remote_b
        .lookup(&overlay.key)
        .expect("the entry itself is sound");
    let err = remote_b.fetch_tree(&entry, &b).unwrap_err().to_string();
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("`image.qcow2`") && warnings[0].contains(&name),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("wrong bytes"), "{}", warnings[0]);
    assert!(err.contains("wrong bytes"), "{err}");
    assert_eq!(b.get_record(&overlay.key).unwrap(), None);
    assert_eq!(
        stored(&b),
        (vec![], vec![]),
        "no object, no tree, no staging left"
    );
    let stats = remote_b.stats();
    assert_eq!((stats.hits, stats.misses), (0, 1));
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn an_object_missing_on_the_server_is_a_miss_naming_the_object() {
    let server = Nginx::start(&[]);
    let scratch = Scratch::new("missing");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (_base, overlay) = two_steps(&a);
    let (remote_a, _) = server.client(Credentials::none());
    remote_a.upload(&overlay, &a);
    let name = sha256_hex(b"overlay on base\n");
    let shard = server.data().join("cas").join(&name);
    std::fs::remove_file(&shard).unwrap();

    let (remote_b, warnings) = server.client(Credentials::none());
    let entry = remote_b.lookup(&overlay.key).unwrap();
    assert!(remote_b.fetch_tree(&entry, &b).is_err());
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("`nested/dir/notes.txt`") && warnings[0].contains("missing"),
        "{}",
        warnings[0]
    );
    assert_eq!(stored(&b), (vec![], vec![]));
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_server_stopped_mid_run_is_a_miss_with_one_warning_not_an_error() {
    let server = Nginx::start(&[]);
    let scratch = Scratch::new("stopped");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (base, overlay) = two_steps(&a);
    let (remote_a, _) = server.client(Credentials::none());
    remote_a.upload(&overlay, &a);

    let (remote_b, warnings) = server.client(Credentials::none());
    let entry = remote_b.lookup(&overlay.key).unwrap();
    server.stop();
    let started = Instant::now();
    assert!(remote_b.fetch_tree(&entry, &b).is_err());
    assert!(remote_b.lookup(&base.key).is_none());
    assert!(remote_b.lookup(&overlay.key).is_none());
    assert!(remote_b.lookup(&overlay.key).is_none());
    // Uploading to a stopped server is no error either.
    assert!(matches!(
        remote_b.upload(&base, &a),
        UploadOutcome::Skipped(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    let read_warnings: Vec<String> = warnings
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(&server.read))
        .cloned()
        .collect();
    assert_eq!(read_warnings.len(), 1, "{read_warnings:?}");
    assert!(
        read_warnings[0].contains("cannot connect"),
        "{}",
        read_warnings[0]
    );
    assert_eq!(stored(&b), (vec![], vec![]));
    assert_eq!(remote_b.stats().hits, 0);
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_server_that_demands_credentials_refuses_without_them_and_works_with_them() {
    let password = "corr3ct horse:battery";
    let server = Nginx::start(&[
        ("QFLOW_REMOTE_CACHE_SRV_AUTH", "basic"),
        ("QFLOW_REMOTE_CACHE_SRV_USER", "ci"),
        ("QFLOW_REMOTE_CACHE_SRV_PASSWORD", password),
    ]);
    let scratch = Scratch::new("credentials");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (_base, overlay) = two_steps(&a);

    // Without credentials: a clear error before anything runs.
    let (anonymous, _) = server.client(Credentials::none());
    let err = anonymous.check().unwrap_err().to_string();
    assert!(err.contains("HTTP 401") && err.contains(".netrc"), "{err}");
    assert!(err.contains(&server.read_url()), "{err}");

    // A wrong password: the message says where the refused credentials came from.
    let netrc = scratch.0.join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login ci password wrong\n").unwrap();
    let (_, wrong) = Credentials::resolve(&server.read_url(), None, None, Some(&netrc)).unwrap();
    let (refused, _) = server.client(wrong);
    let err = refused.check().unwrap_err().to_string();
    assert!(
        err.contains("refused") && err.contains(&netrc.display().to_string()),
        "{err}"
    );
    assert!(!err.contains("wrong"), "{err}");

    // From netrc: upload and fetch work.
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1\n  login ci\n  password \"{password}\"\n"),
    )
    .unwrap();
    let (_, good) = Credentials::resolve(&server.read_url(), None, None, Some(&netrc)).unwrap();
    let (remote_a, warnings_a) = server.client(good.clone());
    remote_a.check().unwrap();
    assert!(matches!(
        remote_a.upload(&overlay, &a),
        UploadOutcome::Uploaded { .. }
    ));
    let (remote_b, warnings_b) = server.client(good.clone());
    let entry = remote_b.lookup(&overlay.key).unwrap();
    remote_b.fetch_tree(&entry, &b).unwrap();
    assert!(b.has_tree(&overlay.output));

    // The password shows nowhere: not in messages, warnings, debug output, or the server's
    // stored files and logs.
    let mut texts = vec![
        format!("{good:?}"),
        format!("{remote_a:?}"),
        format!("{:?}", remote_a.stats()),
    ];
    texts.extend(warnings_a.lock().unwrap().iter().cloned());
    texts.extend(warnings_b.lock().unwrap().iter().cloned());
    for t in &texts {
        assert!(!t.contains(password) && !t.contains("horse"), "{t}");
    }
    for (path, bytes) in server.files() {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("horse"),
            "{}",
            path.display()
        );
    }
    let logs = std::fs::read_to_string(server.state.0.join("logs/access.log")).unwrap();
    assert!(!logs.contains("horse"));

    // An uploader without credentials gets one warning about credentials, and no error.
    let (anonymous, warnings) = server.client(Credentials::none());
    let (_, other) = two_steps(&cache_in(&scratch, "c"));
    assert!(matches!(
        anonymous.upload(&other, &a),
        UploadOutcome::Skipped(_)
    ));
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("credentials"), "{}", warnings[0]);
}

#[test]
#[ignore = "slow: starts a private nginx (needs root; installs Debian's nginx when missing)"]
fn a_bearer_token_opens_a_server_that_demands_one() {
    let server = Nginx::start(&[
        ("QFLOW_REMOTE_CACHE_SRV_AUTH", "bearer"),
        ("QFLOW_REMOTE_CACHE_SRV_TOKEN", "t0ken.for-ci"),
    ]);
    let (anonymous, _) = server.client(Credentials::none());
    assert!(anonymous.check().is_err());
    let (_, token) = Credentials::resolve(
        &server.read_url(),
        None,
        Some(Secret::new("t0ken.for-ci")),
        None,
    )
    .unwrap();
    let (with_token, _) = server.client(token);
    with_token.check().unwrap();
}

#[test]
fn a_closed_port_is_a_miss_with_one_warning() {
    let port = free_port();
    let (remote, warnings) = client(RemoteConfig::new(&format!("http://127.0.0.1:{port}")));
    remote.check().unwrap();
    for i in 0..5u8 {
        assert!(remote.lookup(&Hash::of_bytes(&[i])).is_none());
    }
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("cannot connect"), "{}", warnings[0]);
    assert_eq!(remote.stats().misses, 5);
}

#[test]
fn a_listener_that_accepts_and_never_answers_costs_one_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn); // accepted, never read, never answered
        }
    });
    let mut config = RemoteConfig::new(&format!("http://127.0.0.1:{port}"));
    config.timeouts = Timeouts {
        connect: Duration::from_secs(1),
        idle: Duration::from_secs(1),
    };
    let (remote, warnings) = client(config);
    let started = Instant::now();
    remote.check().unwrap();
    for i in 0..10u8 {
        assert!(remote.lookup(&Hash::of_bytes(&[i])).is_none());
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no answer in time"), "{}", warnings[0]);
    assert_eq!(held.lock().unwrap().len(), 1, "asked once, then left alone");
}

/// A loopback HTTP server answering every request with `respond(request line, body, conn)`;
/// counts requests. One request per connection.
fn tiny_server(
    respond: impl Fn(&str, &[u8], &mut std::net::TcpStream) + Send + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            seen.fetch_add(1, Ordering::SeqCst);
            let head = String::from_utf8_lossy(&head).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = conn.read_exact(&mut body);
            let request_line = head.lines().next().unwrap_or("").to_string();
            respond(&request_line, &body, &mut conn);
            let _ = conn.flush();
        }
    });
    (url, count)
}

#[test]
fn a_server_answering_503_is_left_alone_after_three_faults_in_a_row() {
    let (url, requests) = tiny_server(|_, _, conn| {
        let _ = conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    });
    let (remote, warnings) = client(RemoteConfig::new(&url));
    for i in 0..10u8 {
        assert!(remote.lookup(&Hash::of_bytes(&[i])).is_none());
    }
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("HTTP 503"), "{}", warnings[0]);
    assert_eq!(remote.stats().faults, 3);
}

/// A store in memory behind [`tiny_server`]: keeps what is PUT, answers HEAD and GET, and
/// notes every request line in order (one request at a time, so the order is exact). With
/// `drop_objects`, every GET of an object stops after 4 KiB.
fn memory_store(drop_objects: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let kept: Mutex<std::collections::HashMap<String, Vec<u8>>> = Mutex::default();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();
    let (url, _) = tiny_server(move |line, body, conn| {
        seen.lock().unwrap().push(line.to_string());
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut kept = kept.lock().unwrap();
        let answer = |conn: &mut std::net::TcpStream, status: &str, len: usize| {
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
        };
        match line.split(' ').next().unwrap_or("") {
            "PUT" => {
                kept.insert(path, body.to_vec());
                answer(conn, "201 Created", 0);
            }
            "HEAD" => match kept.get(&path) {
                Some(b) => answer(conn, "200 OK", b.len()),
                None => answer(conn, "404 Not Found", 0),
            },
            _ => match kept.get(&path) {
                Some(b) if drop_objects && path.starts_with("/cas/") => {
                    answer(conn, "200 OK", b.len());
                    let _ = conn.write_all(&b[..4096.min(b.len())]);
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
                Some(b) => {
                    answer(conn, "200 OK", b.len());
                    let _ = conn.write_all(b);
                }
                None => answer(conn, "404 Not Found", 0),
            },
        }
    });
    (url, requests)
}

#[test]
fn an_upload_puts_every_object_before_the_entry_that_names_them() {
    let scratch = Scratch::new("order");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let (_base, overlay) = two_steps(&a);
    let (url, requests) = memory_store(false);
    let mut config = RemoteConfig::new(&url);
    config.upload = true;
    let (uploader, _) = client(config);
    assert!(matches!(
        uploader.upload(&overlay, &a),
        UploadOutcome::Uploaded { objects: 5, .. }
    ));
    let puts: Vec<String> = (requests.lock().unwrap().iter())
        .filter(|l| l.starts_with("PUT "))
        .cloned()
        .collect();
    assert_eq!(puts.len(), 6, "{puts:?}");
    assert!(
        puts[..5].iter().all(|l| l.starts_with("PUT /cas/")),
        "{puts:?}"
    );
    assert!(puts[5].starts_with("PUT /ac/"), "{puts:?}");

    // And what was put reads back whole into another cache.
    let (remote, warnings) = client(RemoteConfig::new(&url));
    let entry = remote.lookup(&overlay.key).unwrap();
    assert_eq!(remote.fetch_tree(&entry, &b).unwrap(), overlay.output);
    assert!(warnings.lock().unwrap().is_empty());
}

#[test]
fn a_transfer_dropped_halfway_is_a_miss_and_leaves_nothing_behind() {
    let scratch = Scratch::new("dropped");
    let a = cache_in(&scratch, "a");
    let b = cache_in(&scratch, "b");
    let record = commit(
        &a,
        &Hash::of_bytes(b"step"),
        &[("disk.img", noise(3 << 20, 3), false)],
        &[],
    );
    let (url, requests) = memory_store(true);
    let mut config = RemoteConfig::new(&url);
    config.upload = true;
    let (uploader, _) = client(config);
    assert!(matches!(
        uploader.upload(&record, &a),
        UploadOutcome::Uploaded { objects: 1, .. }
    ));
    assert_eq!(
        (requests.lock().unwrap().iter())
            .filter(|l| l.starts_with("PUT"))
            .count(),
        2
    );

    let (remote, warnings) = client(RemoteConfig::new(&url));
    let found = remote.lookup(&record.key).expect("the entry");
    assert!(remote.fetch_tree(&found, &b).is_err());
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("dropped"), "{}", warnings[0]);
    assert_eq!(b.get_record(&record.key).unwrap(), None);
    assert_eq!(stored(&b), (vec![], vec![]));
    assert_eq!((remote.stats().hits, remote.stats().misses), (0, 1));
}

fn sha256_hex(bytes: &[u8]) -> String {
    qflow_cache::remote::Sha256::of_bytes(bytes).to_hex()
}
