//! Test support for the `disk` kind's unit tests: a scratch directory with a
//! `RunContext`, a workload tree, and reading an ext image back with debugfs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::Arc;

use qflow_engine::RunContext;

use super::{Disk, OUT};

pub fn parse(yaml: &str) -> Disk {
    serde_yaml::from_str(yaml).unwrap()
}

pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let root = std::env::temp_dir().join(format!("qflow-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Scratch { root }
    }

    pub fn write(&self, rel: &str, content: &[u8]) {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn ctx(&self, run: &str, env: BTreeMap<String, String>) -> RunContext {
        self.ctx_in(run, env, qflow_engine::context::ProcessGroups::new())
    }

    /// A context whose processes are in `groups`, which a test can cancel (Ctrl-C).
    pub fn ctx_in(
        &self,
        run: &str,
        env: BTreeMap<String, String>,
        groups: qflow_engine::context::ProcessGroups,
    ) -> RunContext {
        let out = self.root.join(run).join("out");
        let state = self.root.join(run).join("state");
        for d in [&out, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        RunContext::new(
            run,
            out,
            self.root.clone(),
            state,
            1,
            Default::default(),
            env,
            qflow_engine::context::StepLog::create(&self.root.join(run).join("log")).unwrap(),
            Arc::new(qflow_engine::context::NoProgress),
            groups,
            false,
        )
        .unwrap()
    }

    /// Convert a run's qcow2 back to raw for debugfs.
    pub fn raw_of(&self, run: &str) -> PathBuf {
        let raw = self.root.join(run).join("readback.raw");
        let st = Proc::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(self.root.join(run).join("out").join(OUT))
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        raw
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// (uid, gid, content) of `path` on an ext image, read with debugfs.
pub fn read_back(raw: &Path, path: &str) -> (u32, u32, Vec<u8>) {
    let stat = Proc::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(raw)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stat.stdout).into_owned();
    let field = |name: &str| -> u32 {
        let rest = text
            .split(name)
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} for {path}: {text}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let cat = Proc::new("debugfs")
        .arg("-R")
        .arg(format!("cat \"{path}\""))
        .arg(raw)
        .output()
        .unwrap();
    (field("User:"), field("Group:"), cat.stdout)
}

pub fn workload(s: &Scratch, dir: &str) {
    s.write(&format!("{dir}/run.sh"), b"#!/bin/sh\necho run\n");
    s.write(&format!("{dir}/data/input one.txt"), b"first input\n");
    s.write(
        &format!("{dir}/data/deep/blob.bin"),
        &(0..=255u8).cycle().take(70_000).collect::<Vec<_>>(),
    );
    std::fs::set_permissions(
        s.root.join(dir).join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

pub fn assert_workload_on(raw: &Path, uid: u32, gid: u32) {
    let expect: [(&str, Vec<u8>); 3] = [
        ("/run.sh", b"#!/bin/sh\necho run\n".to_vec()),
        ("/data/input one.txt", b"first input\n".to_vec()),
        (
            "/data/deep/blob.bin",
            (0..=255u8).cycle().take(70_000).collect(),
        ),
    ];
    for (path, content) in expect {
        let (u, g, bytes) = read_back(raw, path);
        assert_eq!((u, g), (uid, gid), "owner of {path}");
        assert!(
            bytes == content,
            "content of {path} differs ({} bytes read)",
            bytes.len()
        );
    }
    for dir in ["/", "/data", "/data/deep"] {
        let (u, g, _) = read_back(raw, dir);
        assert_eq!((u, g), (uid, gid), "owner of {dir}");
    }
}
