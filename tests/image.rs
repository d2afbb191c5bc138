//! A user derives images from a base with the `image` kind: overlays that cost
//! only their delta and never write the cached base, a chain of them, a flattened
//! copy to publish, a qcow2 v2 copy for an old QEMU, a cache moved elsewhere, and
//! `qflow gc` that must keep every base a kept overlay needs. All real qemu-img.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Space;

fn lock(s: &Space) -> serde_json::Value {
    serde_json::from_str(&s.read("qflow.lock")).unwrap()
}

/// The image file of `step` after an apply, from `qflow.lock`.
fn image_of(s: &Space, cache: &Path, step: &str) -> PathBuf {
    let l = lock(s);
    let hash = l["steps"][step]["output"]
        .as_str()
        .unwrap_or_else(|| panic!("no output for {step}"));
    let dir = cache.join("trees").join(hash);
    let mut images: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("image.")
        })
        .collect();
    assert_eq!(images.len(), 1, "{step} must hold one image: {images:?}");
    images.remove(0)
}

fn qemu_img_info(image: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Bytes the guest sees at `offset..offset+len` of `image` (backing chain followed).
fn guest_bytes(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let tmp = common::scratch_file("readback.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&tmp).unwrap();
    let _ = std::fs::remove_file(&tmp);
    bytes[offset as usize..offset as usize + len].to_vec()
}

fn bytes_of(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A base made of real data: a `disk` step with a file, so every layer has
/// something to read through.
const CHAIN: &str = r#"
version: 1
steps:
  base:
    kind: disk
    size: 32M
    contents: ./workload
  a:
    kind: image
    from: base
    size: 64M
  b:
    kind: image
    from: a
"#;

#[test]
fn an_overlay_chain_reads_the_base_data_and_never_writes_the_base() {
    let s = Space::new();
    s.workflow(CHAIN)
        .write("workload/hello.txt", "hello from the base\n");
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["a", "b", "base"]);
    let cache = s.join(".qflow");
    let (base, a, b) = (
        image_of(&s, &cache, "base"),
        image_of(&s, &cache, "a"),
        image_of(&s, &cache, "b"),
    );
    let base_before = bytes_of(&base);

    let info_b = qemu_img_info(&b);
    let a_tree = a
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        info_b["backing-filename"],
        format!("../{a_tree}/image.qcow2")
    );
    assert_eq!(info_b["backing-filename-format"], "qcow2");
    assert_eq!(
        info_b["virtual-size"],
        64u64 << 20,
        "b inherits a's grown size"
    );
    assert!(
        qemu_img_info(&a)["backing-filename"]
            .as_str()
            .unwrap()
            .starts_with("../")
    );

    // Every derived image costs only its delta.
    let base_len = std::fs::metadata(&base).unwrap().len();
    for overlay in [&a, &b] {
        assert!(
            std::fs::metadata(overlay).unwrap().len() < base_len / 2,
            "{} is not a thin overlay",
            overlay.display()
        );
    }
    // b reads the base's filesystem through two backing files.
    assert_eq!(
        guest_bytes(&b, 0, 32 << 20),
        guest_bytes(&base, 0, 32 << 20)
    );
    assert!(bytes_of(&base) == base_before, "deriving wrote the base");
    assert_eq!(s.apply().cached().len(), 3);
}

#[test]
fn moving_the_cache_directory_keeps_overlays_readable_and_cached() {
    let s = Space::new();
    let first = s.join("cache-here");
    let s = s.with_cache(&first);
    s.workflow(CHAIN).write("workload/hello.txt", "hello\n");
    s.apply();
    let moved = s.join("cache-moved");
    std::fs::rename(&first, &moved).unwrap();
    let s = s.with_cache(&moved);
    let b = image_of(&s, &moved, "b");
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        guest_bytes(&b, 0, 1 << 20),
        guest_bytes(&image_of(&s, &moved, "base"), 0, 1 << 20)
    );
    assert_eq!(s.apply().cached().len(), 3);
}

#[test]
fn gc_after_an_apply_keeps_the_base_of_a_kept_overlay() {
    let s = Space::new();
    s.workflow(CHAIN).write("workload/hello.txt", "hello\n");
    s.apply();
    let cache = s.join(".qflow");
    let base = image_of(&s, &cache, "base");
    let b = image_of(&s, &cache, "b");
    // Forget the base and the middle layer: only b's record is left to say that
    // their trees are still needed.
    s.qflow(&["clean", "--step", "base"]).success();
    s.qflow(&["clean", "--step", "a"]).success();
    s.qflow(&["gc", "--keep-runs", "0"]).success();
    assert!(base.exists(), "gc deleted the base of a kept overlay");
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gc broke the chain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flatten_publishes_a_standalone_image_with_the_same_data() {
    let s = Space::new();
    s.workflow(&format!(
        "{CHAIN}  publish:\n    kind: image\n    from: b\n    flatten: true\n"
    ))
    .write("workload/hello.txt", "hello\n");
    s.apply();
    let cache = s.join(".qflow");
    let publish = image_of(&s, &cache, "publish");
    let info = qemu_img_info(&publish);
    assert!(
        info.get("backing-filename").is_none(),
        "flattened image has a backing file: {info}"
    );
    assert_eq!(
        guest_bytes(&publish, 0, 32 << 20),
        guest_bytes(&image_of(&s, &cache, "base"), 0, 32 << 20)
    );
}

#[test]
fn compat_0_10_downgrades_a_copy_and_leaves_the_upstream_at_v3() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: image\n    size: 16M\n  old:\n    kind: image\n    from: base\n    compat: \"0.10\"\n",
    );
    s.apply();
    let cache = s.join(".qflow");
    let old = qemu_img_info(&image_of(&s, &cache, "old"));
    assert_eq!(old["format-specific"]["data"]["compat"], "0.10");
    let base = qemu_img_info(&image_of(&s, &cache, "base"));
    assert_eq!(base["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(lock(&s)["steps"]["old"]["notes"]["compat"], "0.10");
}

#[test]
fn a_raw_conversion_is_named_image_raw() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: image\n    size: 8M\n  raw:\n    kind: image\n    from: base\n    format: raw\n",
    );
    s.apply();
    let raw = image_of(&s, &s.join(".qflow"), "raw");
    assert_eq!(raw.file_name().unwrap(), "image.raw");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 8 << 20);
}

#[test]
fn plan_shows_the_qemu_img_command_lines() {
    let s = Space::new();
    s.workflow(
        "version: 1\nsteps:\n  base:\n    kind: image\n    size: 10G\n  old:\n    kind: image\n    from: base\n    compat: \"0.10\"\n",
    );
    let run = s.qflow(&["plan"]).success();
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(text.contains("qemu-img create -f qcow2"), "{text}");
    assert!(text.contains("10737418240"), "{text}");
    assert!(
        text.contains("qemu-img amend -f qcow2 -o compat=0.10"),
        "{text}"
    );
}

#[test]
fn bad_image_fields_name_the_field_and_nothing_runs() {
    let s = Space::new();
    for (fields, needle) in [
        ("size: 10X", "k, M, G, T, P, E"),
        ("size: 1G\n    compat: \"0.9\"", "compat"),
        ("size: 1G\n    flatten: true", "flatten"),
    ] {
        s.workflow(&format!(
            "version: 1\nsteps:\n  img:\n    kind: image\n    {fields}\n"
        ));
        let run = s.qflow(&["apply"]).failure(2);
        assert!(
            run.stderr_contains("workflow.yaml:") && run.stderr_contains(needle),
            "{}",
            run.stderr
        );
    }
}
