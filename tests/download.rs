//! A user downloads a guest image: it is checked against its checksum before it
//! enters the cache, its format is detected rather than guessed from the name, a
//! second apply makes no request at all, a dropped connection resumes with a Range
//! request, and a 404, a TLS failure or wrong bytes fail plainly and keep nothing.
//!
//! The server is a real HTTP/1.1 server on loopback, written here so a test can
//! make it drop the connection partway, answer 404 or serve wrong bytes, and count
//! the requests it got.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::Space;

/// What the server does with the next responses.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Serve,
    /// Send at most `cut` body bytes, then close, for the next `times` responses.
    Drop {
        cut: usize,
        times: usize,
    },
    /// Serve every file with its bytes changed.
    WrongBytes,
    /// Answer `status` with no body, for the next `times` requests.
    Status {
        status: u16,
        times: usize,
    },
    /// Send the body in 64 KiB pieces, 50 ms apart.
    Slow,
}

/// One request the server received: its path and `Range` header.
#[derive(Clone, Debug)]
struct Request {
    path: String,
    range: Option<String>,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, Vec<u8>>,
    requests: Vec<Request>,
    behaviour: Option<Behaviour>,
}

struct Server {
    port: u16,
    state: Arc<Mutex<ServerState>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ServerState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || handle(stream, &state));
            }
        });
        Server { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn serve(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), bytes);
    }

    fn set(&self, b: Behaviour) {
        self.state.lock().unwrap().behaviour = Some(b);
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn handle(mut stream: TcpStream, state: &Mutex<ServerState>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
        if head.len() > 16 << 10 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let range = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("range:")
            .map(|v| v.trim().to_string())
    });
    let (file, behaviour) = {
        let mut s = state.lock().unwrap();
        s.requests.push(Request {
            path: path.clone(),
            range: range.clone(),
        });
        let behaviour = s.behaviour.unwrap_or(Behaviour::Serve);
        // Drop and Status apply to a number of responses, then the server serves.
        s.behaviour = Some(match behaviour {
            Behaviour::Drop { cut, times } if times > 1 => Behaviour::Drop {
                cut,
                times: times - 1,
            },
            Behaviour::Status { status, times } if times > 1 => Behaviour::Status {
                status,
                times: times - 1,
            },
            Behaviour::Drop { .. } | Behaviour::Status { .. } => Behaviour::Serve,
            other => other,
        });
        (s.files.get(&path).cloned(), behaviour)
    };
    if let Behaviour::Status { status, .. } = behaviour {
        let _ = stream.write_all(
            format!("HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        return;
    }
    let Some(mut body) = file else {
        let _ = stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
        );
        return;
    };
    if let Behaviour::WrongBytes = behaviour {
        for b in body.iter_mut().step_by(4096) {
            *b ^= 0xff;
        }
    }
    let total = body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let header = match start {
        Some(s) if s >= total => {
            let _ = stream.write_all(
                format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            return;
        }
        Some(s) => {
            body.drain(..s);
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                total - 1,
                body.len()
            )
        }
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"),
    };
    if stream.write_all(header.as_bytes()).is_err() {
        return;
    }
    let send = match behaviour {
        Behaviour::Drop { cut, .. } => cut.min(body.len()),
        _ => body.len(),
    };
    if let Behaviour::Slow = behaviour {
        for piece in body.chunks(64 << 10) {
            if stream.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    } else {
        let _ = stream.write_all(&body[..send]);
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn sha256_of(bytes: &[u8]) -> String {
    let dir = common::scratch_file("sha256-input");
    std::fs::write(&dir, bytes).unwrap();
    let out = Command::new("sha256sum").arg(&dir).output().unwrap();
    let _ = std::fs::remove_file(&dir);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A real qcow2 image of about 2 MiB (a 2 MiB pattern written into it).
fn qcow2_image() -> Vec<u8> {
    let p = common::scratch_file("image.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg("16M")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 2M"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(st.status.success());
    let bytes = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(&p);
    assert!(bytes.len() > 2 << 20);
    bytes
}

fn lock(s: &Space) -> serde_json::Value {
    serde_json::from_str(&s.read("qflow.lock")).unwrap()
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn download_workflow(url: &str, checksum: &str) -> String {
    format!("version: 1\nsteps:\n  base:\n    kind: download\n    url: {url}\n    {checksum}\n")
}

fn downloaded(s: &Space) -> PathBuf {
    let l = lock(s);
    let tree = s
        .join(".qflow/trees")
        .join(l["steps"]["base"]["output"].as_str().unwrap());
    let files = files_under(&tree);
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_download_is_checked_detected_as_qcow2_and_cached_without_a_request() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/cloud/ubuntu-server-cloudimg-amd64.img", image.clone());
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/cloud/ubuntu-server-cloudimg-amd64.img"),
        &format!("sha256: {}", sha256_of(&image)),
    ));
    assert_eq!(s.apply().ran(), ["base"]);
    let out = downloaded(&s);
    assert_eq!(
        out.file_name().unwrap(),
        "image.qcow2",
        "a qcow2 named .img is stored as qcow2"
    );
    assert!(std::fs::read(&out).unwrap() == image);
    assert_eq!(lock(&s)["steps"]["base"]["notes"]["format"], "qcow2");
    assert_eq!(server.requests().len(), 1);

    assert_eq!(s.apply().cached(), ["base"]);
    assert_eq!(
        server.requests().len(),
        1,
        "a cached download made a request"
    );
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/img", image.clone());
    server.set(Behaviour::Drop {
        cut: 1 << 20,
        times: 1,
    });
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/img"),
        &format!("sha256: {}", sha256_of(&image)),
    ));
    s.apply();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    let resumed_at: usize = reqs[1]
        .range
        .as_deref()
        .unwrap()
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(
        resumed_at > 0 && resumed_at <= 1 << 20,
        "resumed at {resumed_at}"
    );
    assert!(std::fs::read(downloaded(&s)).unwrap() == image);
}

#[test]
fn an_interrupted_download_resumes_on_the_next_apply() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/img", image.clone());
    // Every attempt of the first apply gets 256 KiB, then the connection drops.
    server.set(Behaviour::Drop {
        cut: 256 << 10,
        times: 5,
    });
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/img"),
        &format!("sha256: {}", sha256_of(&image)),
    ));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr_contains("the next apply resumes it"),
        "{}",
        run.stderr
    );
    assert_eq!(server.requests().len(), 5);

    s.apply();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(
        reqs[5].range.as_deref(),
        Some(format!("bytes={}-", 5 * (256 << 10)).as_str())
    );
    assert!(std::fs::read(downloaded(&s)).unwrap() == image);
}

#[test]
fn a_server_error_is_retried_with_backoff() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/img", image.clone());
    server.set(Behaviour::Status {
        status: 503,
        times: 2,
    });
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/img"),
        &format!("sha256: {}", sha256_of(&image)),
    ));
    s.apply();
    assert_eq!(server.requests().len(), 3);
    assert!(std::fs::read(downloaded(&s)).unwrap() == image);
}

#[test]
fn ctrl_c_keeps_the_partial_download_and_the_next_apply_resumes_it() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/img", image.clone());
    server.set(Behaviour::Slow);
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/img"),
        &format!("sha256: {}", sha256_of(&image)),
    ));
    let mut child = s
        .command(&["apply"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until part of the body has arrived in the step's state directory.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let partial = files_under(&s.join(".qflow/state"))
            .into_iter()
            .find(|p| p.file_name().unwrap() == "partial")
            .map(|p| std::fs::metadata(p).unwrap().len())
            .unwrap_or(0);
        if partial >= 256 << 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));

    server.set(Behaviour::Serve);
    s.apply();
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let resumed_at: usize = reqs[1]
        .range
        .as_deref()
        .unwrap()
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at >= 256 << 10, "resumed at {resumed_at}");
    assert!(std::fs::read(downloaded(&s)).unwrap() == image);
}

#[test]
fn wrong_bytes_fail_the_checksum_and_keep_nothing() {
    let server = Server::start();
    let image = qcow2_image();
    server.serve("/img", image.clone());
    server.set(Behaviour::WrongBytes);
    let mut wrong = image.clone();
    for b in wrong.iter_mut().step_by(4096) {
        *b ^= 0xff;
    }
    let s = Space::new();
    let expected = sha256_of(&image);
    s.workflow(&download_workflow(
        &server.url("/img"),
        &format!("sha256: {expected}"),
    ));
    let run = s.qflow(&["apply"]).failure(1);
    assert_eq!(run.failed(), ["base"]);
    assert!(run.stderr_contains("checksum mismatch"), "{}", run.stderr);
    assert!(
        run.stderr_contains(&expected) && run.stderr_contains(&sha256_of(&wrong)),
        "{}",
        run.stderr
    );
    let left: Vec<_> = files_under(&s.join(".qflow"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("image.")
                || name.starts_with("partial")
                || std::fs::metadata(p).unwrap().len() > 1 << 20
        })
        .collect();
    assert!(left.is_empty(), "a failed download left {left:?}");
}

#[test]
fn a_missing_file_says_404_plainly_without_retrying() {
    let server = Server::start();
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/nope.img"),
        &format!("sha256: {}", "0".repeat(64)),
    ));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(
        run.stderr_contains("was not found (HTTP 404)"),
        "{}",
        run.stderr
    );
    assert_eq!(server.requests().len(), 1);
}

/// A server that answers anything, a TLS ClientHello included, with plain HTTP.
fn plain_http_only_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

#[test]
fn a_tls_failure_says_so_plainly_without_retrying() {
    let port = plain_http_only_server();
    let s = Space::new();
    let url = format!("https://127.0.0.1:{port}/img");
    s.workflow(&download_workflow(
        &url,
        &format!("sha256: {}", "0".repeat(64)),
    ));
    let run = s.qflow(&["apply"]).failure(1);
    assert!(run.stderr_contains("TLS failed"), "{}", run.stderr);
    assert!(!run.stderr_contains("retrying"), "{}", run.stderr);
}

#[test]
fn checksum_url_pins_the_resolved_hash_in_the_lock() {
    let server = Server::start();
    let image = qcow2_image();
    let hash = sha256_of(&image);
    server.serve("/rel/jammy-server-cloudimg-amd64.img", image.clone());
    server.serve(
        "/rel/SHA256SUMS",
        format!(
            "{} *jammy-server-cloudimg-amd64.vmdk\n{hash} *jammy-server-cloudimg-amd64.img\n",
            "1".repeat(64)
        )
        .into_bytes(),
    );
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/rel/jammy-server-cloudimg-amd64.img"),
        &format!("checksum_url: {}", server.url("/rel/SHA256SUMS")),
    ));
    s.apply();
    assert_eq!(lock(&s)["steps"]["base"]["notes"]["sha256"], hash.as_str());
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/rel/SHA256SUMS", "/rel/jammy-server-cloudimg-amd64.img"]
    );
    let n = server.requests().len();
    assert_eq!(s.apply().cached(), ["base"]);
    assert_eq!(
        server.requests().len(),
        n,
        "a cached download made a request"
    );
}

#[test]
fn a_raw_image_named_qcow2_is_stored_as_raw() {
    let server = Server::start();
    let raw: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    server.serve("/disk.qcow2", raw.clone());
    let s = Space::new();
    s.workflow(&download_workflow(
        &server.url("/disk.qcow2"),
        &format!("sha256: {}", sha256_of(&raw)),
    ));
    s.apply();
    assert_eq!(downloaded(&s).file_name().unwrap(), "image.raw");
    assert_eq!(lock(&s)["steps"]["base"]["notes"]["format"], "raw");
}

#[test]
fn a_file_url_is_copied_and_checked_with_blake3() {
    let s = Space::new();
    let image = qcow2_image();
    s.write("images/local.img", &image);
    let b3 = blake3::hash(&image).to_hex().to_string();
    s.workflow(&download_workflow(
        &format!("file://{}", s.join("images/local.img").display()),
        &format!("blake3: {b3}"),
    ));
    s.apply();
    assert!(std::fs::read(downloaded(&s)).unwrap() == image);
}

#[test]
fn a_download_without_a_checksum_is_refused_before_anything_runs() {
    let server = Server::start();
    let s = Space::new();
    s.workflow(&format!(
        "version: 1\nsteps:\n  base:\n    kind: download\n    url: {}\n",
        server.url("/img")
    ));
    let run = s.qflow(&["apply"]).failure(2);
    assert!(
        run.stderr_contains("workflow.yaml:") && run.stderr_contains("needs a checksum"),
        "{}",
        run.stderr
    );
    assert!(server.requests().is_empty());
}
