//! The `image` kind: make a disk image with `qemu-img` — create an empty one,
//! derive one from an upstream step's image, convert, grow, downgrade, and prune
//! internal snapshots (the recipe's "Data Disk" and "Converting Image" recipes).
//!
//! Deriving is a qcow2 overlay by default: the new image names the upstream
//! image as its backing file (`-b`, with `-F` giving the format so qemu never
//! probes), so it costs only its own writes and the cached base is never written.
//! The backing reference is the relative path `../<upstream tree>/image.<ext>`:
//! the engine builds a step's output in `<cache>/trees/.tmp-XXX/` and renames it
//! to `<cache>/trees/<hash>/`, both siblings of the upstream's tree, so the path
//! resolves while the step runs, after the rename and after the whole cache moves.
//! The engine records the upstream tree in the run's `retains`, so `qflow gc`
//! keeps every base a kept overlay needs.
//!
//! Everything else produces a standalone image:
//! - `flatten: true` or `format: raw`: `qemu-img convert` (drops internal snapshots);
//! - `compat:`: `qemu-img convert` of the whole chain (an old QEMU must read every
//!   layer), then `qemu-img amend -o compat=...` on the new file; internal
//!   snapshots of the upstream are dropped, as by any convert. Always a convert,
//!   whatever the upstream turns out to be, so `qflow plan` shows what runs;
//! - `snapshots.delete` on its own: a sparse copy of the upstream file, then
//!   `qemu-img snapshot -d` on the copy, because it rewrites the file in place
//!   and the cached upstream must stay untouched.
//!
//! [`Image::commands`] turns the fields into argv lists; `plan()` and `run()`
//! both use it, so `qflow plan` shows exactly what runs.

use anyhow::{Context as _, bail};
use qflow_engine::context::quote_arg;
use qflow_engine::{
    CheckContext, FieldError, HostNeed, OutputRole, RunContext, Step, StepFields, StepRef, Tool,
};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::image_file;
use crate::qemu_img::{self, ImageFormat, ImageInfo, Size};

/// A disk image made or derived with qemu-img.
///
/// ```yaml
/// scratch: { kind: image, size: 8G }                     # empty qcow2
/// work:    { kind: image, from: base, size: 20G }        # overlay on base, grown
/// publish: { kind: image, from: work, flatten: true }    # standalone copy
/// oldqemu: { kind: image, from: work, compat: "0.10" }   # qcow2 v2 for an old QEMU
/// ```
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// The step whose image this one derives from. Without `flatten` or a format
    /// change the result is a qcow2 overlay that stores only its own writes.
    #[serde(default)]
    pub from: Option<String>,
    /// Size in qemu-img units (`512M`, `10G`, `1T`): the size of a new image, or
    /// the size to grow a derived one to. qflow never shrinks an image.
    #[serde(default)]
    pub size: Option<String>,
    /// Output format (default `qcow2`). `raw` from an upstream converts.
    #[serde(default)]
    pub format: Option<OutputFormat>,
    /// Write a standalone image with no backing file (for publishing an artifact).
    #[serde(default)]
    pub flatten: bool,
    /// qcow2 compatibility level: `"0.10"` (qcow2 v2, for old QEMUs that say
    /// "QCOW version 3 ... not supported") or `"1.1"`. An unquoted `0.10`, which
    /// YAML reads as the number 0.1, is taken to mean `"0.10"`.
    #[serde(default, deserialize_with = "compat_level")]
    #[schemars(with = "Option<String>")]
    pub compat: Option<String>,
    /// Internal snapshots to delete (`qemu-img snapshot -d`). The remaining
    /// snapshots are listed in `qflow.lock`.
    #[serde(default)]
    pub snapshots: Option<Snapshots>,
}

/// The `snapshots:` field of an `image` step.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshots {
    /// Names of internal snapshots to delete from the image.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// The formats an `image` step writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Qcow2,
    Raw,
}

impl OutputFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            OutputFormat::Qcow2 => ImageFormat::Qcow2,
            OutputFormat::Raw => ImageFormat::Raw,
        }
    }
}

/// `compat:` as a string, or as the number YAML makes of an unquoted `0.10` / `1.1`.
fn compat_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Level {
        Text(String),
        Number(f64),
    }
    Ok(match Option::<Level>::deserialize(d)? {
        None => None,
        Some(Level::Text(t)) => Some(t),
        Some(Level::Number(n)) => Some(if n == 0.1 {
            "0.10".to_string()
        } else {
            n.to_string()
        }),
    })
}

/// The compat levels qemu-img's qcow2 driver knows.
const COMPAT_LEVELS: [&str; 2] = ["0.10", "1.1"];

/// What the upstream image is, as far as the commands need to know.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The path `qemu-img convert`/`cp` read.
    pub path: String,
    /// The path written into an overlay: relative to the output directory.
    pub backing: String,
    pub format: ImageFormat,
    pub has_backing_file: bool,
    /// The upstream's virtual size; `None` at plan time (grow is then assumed).
    pub virtual_size: Option<u64>,
}

/// How the image is made, before the in-place operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Create,
    Overlay,
    Copy,
    Convert,
}

impl Image {
    fn out_format(&self) -> ImageFormat {
        self.format.unwrap_or(OutputFormat::Qcow2).image_format()
    }

    fn size(&self) -> Option<Size> {
        self.size.as_deref().and_then(|s| Size::parse(s).ok())
    }

    fn snapshots_to_delete(&self) -> &[String] {
        self.snapshots
            .as_ref()
            .map(|s| s.delete.as_slice())
            .unwrap_or(&[])
    }

    fn base(&self, upstream: Option<&Upstream>) -> Base {
        let Some(_) = upstream else {
            return Base::Create;
        };
        // `compat:` always converts: an old QEMU must read the whole chain, and
        // whether the upstream is a chain is known only when the step runs, while
        // `qflow plan` must show what will run.
        if self.flatten || self.out_format() != ImageFormat::Qcow2 || self.compat.is_some() {
            Base::Convert
        } else if !self.snapshots_to_delete().is_empty() {
            Base::Copy
        } else {
            Base::Overlay
        }
    }

    /// The argv lists that make the image at `out` (a path relative to the
    /// output directory or absolute), given what the upstream image is.
    pub fn commands(
        &self,
        upstream: Option<&Upstream>,
        out: &str,
    ) -> anyhow::Result<Vec<Vec<String>>> {
        let fmt = self.out_format();
        let size = self.size();
        let s = |x: &str| x.to_string();
        let mut cmds = Vec::new();
        let base = self.base(upstream);
        let current_size = match (base, upstream) {
            (Base::Create, _) => {
                let size = size.context("a new image needs `size`")?;
                let mut c = vec![s("qemu-img"), s("create"), s("-f"), s(fmt.name())];
                if let Some(compat) = &self.compat {
                    c.extend([s("-o"), format!("compat={compat}")]);
                }
                c.extend([s(out), size.arg()]);
                cmds.push(c);
                Some(size.bytes())
            }
            (Base::Overlay, Some(up)) => {
                if let (Some(want), Some(have)) = (size, up.virtual_size) {
                    check_no_shrink(want, have)?;
                }
                cmds.push(qemu_img::overlay_argv(
                    &up.backing,
                    up.format.name(),
                    out,
                    size,
                ));
                size.map(|size| size.bytes()).or(up.virtual_size)
            }
            (Base::Copy, Some(up)) => {
                cmds.push(vec![
                    s("cp"),
                    s("--sparse=always"),
                    s("--reflink=auto"),
                    up.path.clone(),
                    s(out),
                ]);
                up.virtual_size
            }
            (Base::Convert, Some(up)) => {
                cmds.push(vec![
                    s("qemu-img"),
                    s("convert"),
                    s("-f"),
                    s(up.format.name()),
                    s("-O"),
                    s(fmt.name()),
                    up.path.clone(),
                    s(out),
                ]);
                up.virtual_size
            }
            (_, None) => unreachable!("only Create has no upstream"),
        };
        if matches!(base, Base::Copy | Base::Convert)
            && let Some(want) = size
        {
            let grow = match current_size {
                Some(have) => check_no_shrink(want, have)? && want.bytes() > have,
                None => true,
            };
            if grow {
                cmds.push(vec![
                    s("qemu-img"),
                    s("resize"),
                    s("-f"),
                    s(fmt.name()),
                    s(out),
                    want.arg(),
                ]);
            }
        }
        for name in self.snapshots_to_delete() {
            cmds.push(vec![
                s("qemu-img"),
                s("snapshot"),
                s("-d"),
                name.clone(),
                s(out),
            ]);
        }
        if let Some(compat) = &self.compat
            && base != Base::Create
        {
            cmds.push(vec![
                s("qemu-img"),
                s("amend"),
                s("-f"),
                s("qcow2"),
                s("-o"),
                format!("compat={compat}"),
                s(out),
            ]);
        }
        Ok(cmds)
    }
}

/// `Ok(true)` when `want` is not smaller than `have`; an error naming both otherwise.
fn check_no_shrink(want: Size, have: u64) -> anyhow::Result<bool> {
    if want.bytes() < have {
        bail!(
            "`size: {want}` is smaller than the upstream image ({}); qflow grows images but never shrinks them \
             (shrinking cuts off the guest's filesystem): raise `size` or leave it out",
            Size(have)
        );
    }
    Ok(true)
}

impl StepFields for Image {
    const KIND: &'static str = "image";
    const SCHEMA_VERSION: u32 = 1;

    fn kind_tools() -> Vec<Tool> {
        vec![qemu_img::tool(), cp()]
    }

    fn kind_needs() -> Vec<HostNeed> {
        Vec::new()
    }
}

/// `cp`, for a copy of the base image to edit in place.
fn cp() -> Tool {
    Tool::new("cp", &["--version"], "coreutils")
}

impl Step for Image {
    fn references(&self) -> Vec<StepRef> {
        self.from
            .iter()
            .map(|f| StepRef::new("from", f.clone()))
            .collect()
    }

    fn output_roles(&self) -> Vec<(String, OutputRole)> {
        vec![(self.out_format().file_name(), OutputRole::Image)]
    }

    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![qemu_img::tool()];
        if self.from.is_some() && self.compat.is_none() && !self.snapshots_to_delete().is_empty() {
            tools.push(cp());
        }
        tools
    }

    fn check(&self, _ctx: &CheckContext) -> Result<(), FieldError> {
        if let Some(from) = &self.from
            && from.trim().is_empty()
        {
            return Err(FieldError::new(
                "from",
                "`from` names no step; give the step whose image to derive from",
            ));
        }
        if let Some(size) = &self.size {
            Size::parse(size).map_err(|e| FieldError::new("size", e))?;
        } else if self.from.is_none() {
            return Err(FieldError::new(
                "size",
                "a new image needs `size` (e.g. `size: 10G`), or `from: <step>` to derive it from another step's image",
            ));
        }
        if let Some(compat) = &self.compat {
            if !COMPAT_LEVELS.contains(&compat.as_str()) {
                return Err(FieldError::new(
                    "compat",
                    format!(
                        "unknown qcow2 compat level `{compat}`; use \"0.10\" (qcow2 v2, for old QEMUs) or \"1.1\""
                    ),
                ));
            }
            if self.out_format() != ImageFormat::Qcow2 {
                return Err(FieldError::new(
                    "compat",
                    "`compat` applies to qcow2 images only; remove it or use `format: qcow2`",
                ));
            }
        }
        if self.flatten && self.from.is_none() {
            return Err(FieldError::new(
                "flatten",
                "`flatten` needs `from: <step>`: a new image has nothing to flatten",
            ));
        }
        let delete = self.snapshots_to_delete();
        if !delete.is_empty() {
            if self.from.is_none() {
                return Err(FieldError::new(
                    "snapshots.delete",
                    "a new image has no snapshots; add `from: <step>`",
                ));
            }
            if self.flatten || self.out_format() != ImageFormat::Qcow2 || self.compat.is_some() {
                return Err(FieldError::new(
                    "snapshots.delete",
                    "`flatten`, `compat` and format conversion convert the image, which drops every internal snapshot; remove `snapshots.delete`",
                ));
            }
            if let Some(i) = delete.iter().position(|n| n.trim().is_empty()) {
                return Err(FieldError::new(
                    format!("snapshots.delete[{i}]"),
                    "empty snapshot name",
                ));
            }
        }
        Ok(())
    }

    fn plan(&self, _ctx: &CheckContext) -> Vec<String> {
        let out = format!("$QFLOW_OUT/{}", self.out_format().file_name());
        let upstream = self.from.as_ref().map(|from| Upstream {
            path: format!("${{{{ steps.{from} }}}}/image.qcow2"),
            backing: format!("../<{from} tree>/image.qcow2"),
            format: ImageFormat::Qcow2,
            has_backing_file: false,
            virtual_size: None,
        });
        match self.commands(upstream.as_ref(), &out) {
            Ok(cmds) => cmds
                .iter()
                .map(|c| c.iter().map(|a| quote_arg(a)).collect::<Vec<_>>().join(" "))
                .collect(),
            Err(e) => vec![format!("# {e}")],
        }
    }

    fn run(&self, ctx: &mut RunContext) -> anyhow::Result<()> {
        let out_name = self.out_format().file_name();
        let out_path = ctx.out_dir().join(&out_name);
        let upstream = match &self.from {
            None => None,
            Some(from) => {
                let path = image_file::upstream_image(ctx, from)?;
                let info = qemu_img::info(ctx, &path)?;
                if let ImageFormat::Other(f) = &info.format
                    && !self.flatten
                    && self.format.is_none()
                {
                    ctx.log(&format!(
                        "upstream image is {f}; the overlay records `-F {f}`"
                    ));
                }
                let backing = qemu_img::backing_reference(ctx.out_dir(), &path)?;
                Some(Upstream {
                    path: path.to_string_lossy().into_owned(),
                    backing,
                    has_backing_file: info.backing_file.is_some(),
                    format: info.format,
                    virtual_size: Some(info.virtual_size),
                })
            }
        };
        // Commands run in the output directory so the overlay's relative backing
        // path resolves the same way qemu will resolve it later.
        let cmds = self.commands(upstream.as_ref(), &out_name)?;
        for argv in &cmds {
            let mut cmd = ctx.command(&argv[0]);
            cmd.args(&argv[1..]).current_dir(ctx.out_dir());
            ctx.run(cmd)?;
            if argv[0] == "cp" {
                // Cached upstream files are read-only; the copy is ours to amend.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&out_path, std::fs::Permissions::from_mode(0o644))?;
            }
        }
        let info: ImageInfo = qemu_img::info(ctx, &out_path)?;
        ctx.note("format", info.format.name());
        ctx.note("virtual_size", &info.virtual_size.to_string());
        if let Some(b) = &info.backing_file {
            ctx.note("backing_file", b);
        }
        if let Some(c) = &info.compat {
            ctx.note("compat", c);
        }
        if !info.snapshots.is_empty() {
            ctx.note("snapshots", &info.snapshot_names());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command as Proc;

    fn parse(yaml: &str) -> Image {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn check(yaml: &str) -> Result<(), FieldError> {
        parse(yaml).check(&CheckContext {
            work_dir: PathBuf::from("/"),
        })
    }

    /// A scratch cache laid out like the engine's: `trees/<name>/` outputs.
    struct Trees {
        root: PathBuf,
    }

    impl Trees {
        fn new(name: &str) -> Trees {
            let root =
                std::env::temp_dir().join(format!("qflow-image-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("trees")).unwrap();
            Trees { root }
        }

        fn tree(&self, name: &str) -> PathBuf {
            self.root.join("trees").join(name)
        }

        /// Run `step` as the engine would: in `trees/.tmp-NAME`, renamed to `trees/NAME`.
        fn run(&self, name: &str, step: &Image, upstream: &[&str]) -> anyhow::Result<RunContext> {
            let tmp = self.tree(&format!(".tmp-{name}"));
            let mut ctx = RunContext::standalone(
                name,
                &tmp,
                &self.root,
                &self.root.join("state").join(name),
                &self.root.join("logs").join(format!("{name}.log")),
            )?;
            for up in upstream {
                ctx = ctx.with_upstream(up, self.tree(up));
            }
            step.run(&mut ctx)?;
            std::fs::rename(&tmp, self.tree(name))?;
            Ok(ctx)
        }

        fn qemu_io(&self, image: &Path, cmds: &[&str]) -> String {
            let mut c = Proc::new("qemu-io");
            for cmd in cmds {
                c.args(["-c", cmd]);
            }
            let out = c.arg(image).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "qemu-io failed: {text}");
            text
        }
    }

    impl Drop for Trees {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.root);
            }
        }
    }

    fn blake3_of(path: &Path) -> String {
        blake3::hash(&std::fs::read(path).unwrap())
            .to_hex()
            .to_string()
    }

    #[test]
    fn overlay_chain_leaves_the_base_unchanged_and_reads_every_layer() {
        let t = Trees::new("chain");
        t.run("base", &parse("size: 64M"), &[]).unwrap();
        let base = t.tree("base").join("image.qcow2");
        t.qemu_io(&base, &["write -P 0xab 0 1M"]);
        let base_hash = blake3_of(&base);

        let ctx = t.run("a", &parse("from: base"), &["base"]).unwrap();
        assert_eq!(ctx.notes()["backing_file"], "../base/image.qcow2");
        let a = t.tree("a").join("image.qcow2");
        t.qemu_io(&a, &["write -P 0xcd 1M 1M"]);
        t.run("b", &parse("from: a\nsize: 128M"), &["a"]).unwrap();
        let b = t.tree("b").join("image.qcow2");
        t.qemu_io(&b, &["write -P 0xef 2M 1M"]);

        let read = t.qemu_io(
            &b,
            &[
                "read -P 0xab 0 1M",
                "read -P 0xcd 1M 1M",
                "read -P 0xef 2M 1M",
            ],
        );
        assert!(!read.contains("Pattern verification failed"), "{read}");
        assert_eq!(blake3_of(&base), base_hash, "the base image was written");
        let a_read = t.qemu_io(&a, &["read -P 0 2M 1M"]);
        assert!(
            !a_read.contains("Pattern verification failed"),
            "b's write leaked into a: {a_read}"
        );
        let info = Proc::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&b)
            .output()
            .unwrap();
        let info = ImageInfo::parse(&String::from_utf8_lossy(&info.stdout)).unwrap();
        assert_eq!(info.virtual_size, 128 << 20);
        assert_eq!(info.backing_file.as_deref(), Some("../a/image.qcow2"));
        assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    }

    #[test]
    fn the_backing_reference_survives_moving_the_cache() {
        let t = Trees::new("move");
        t.run("base", &parse("size: 16M"), &[]).unwrap();
        t.qemu_io(
            &t.tree("base").join("image.qcow2"),
            &["write -P 0x5a 0 64k"],
        );
        t.run("a", &parse("from: base"), &["base"]).unwrap();
        let moved = t.root.with_extension("moved");
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&t.root, &moved).unwrap();
        let a = moved.join("trees/a/image.qcow2");
        let out = Proc::new("qemu-io")
            .args(["-r", "-c", "read -P 0x5a 0 64k"])
            .arg(&a)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        std::fs::rename(&moved, &t.root).unwrap();
        assert!(
            out.status.success() && !text.contains("verification failed"),
            "{text}"
        );
    }

    #[test]
    fn compat_downgrades_a_converted_copy_to_qcow2_v2_as_the_plan_says() {
        let t = Trees::new("compat");
        t.run("base", &parse("size: 16M"), &[]).unwrap();
        let base_hash = blake3_of(&t.tree("base").join("image.qcow2"));
        let ctx = t
            .run("old", &parse("from: base\ncompat: \"0.10\""), &["base"])
            .unwrap();
        assert_eq!(ctx.notes()["compat"], "0.10");
        assert!(
            !ctx.notes().contains_key("backing_file"),
            "a downgraded image must stand alone"
        );
        let out = Proc::new("qemu-img")
            .args(["info"])
            .arg(t.tree("old").join("image.qcow2"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("compat: 0.10"), "{text}");
        assert_eq!(blake3_of(&t.tree("base").join("image.qcow2")), base_hash);
        // From an overlay too: what runs is what `qflow plan` shows.
        let step = parse("from: mid\ncompat: \"0.10\"");
        t.run("mid", &parse("from: base"), &["base"]).unwrap();
        let ctx = t.run("old2", &step, &["mid"]).unwrap();
        let log = std::fs::read_to_string(ctx.log_path()).unwrap();
        let plan = step.plan(&CheckContext {
            work_dir: PathBuf::from("/"),
        });
        for (planned, program) in plan.iter().zip(["qemu-img convert", "qemu-img amend"]) {
            assert!(planned.starts_with(program), "{plan:?}");
            assert!(log.contains(program), "{log}");
        }
        assert!(!log.contains("cp --sparse"), "{log}");
    }

    #[test]
    fn deleting_a_snapshot_keeps_the_others_and_lists_them() {
        let t = Trees::new("snap");
        t.run("base", &parse("size: 16M"), &[]).unwrap();
        let base = t.tree("base").join("image.qcow2");
        for name in ["clean", "booted"] {
            assert!(
                Proc::new("qemu-img")
                    .args(["snapshot", "-c", name])
                    .arg(&base)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let ctx = t
            .run(
                "pruned",
                &parse("from: base\nsnapshots: { delete: [booted] }"),
                &["base"],
            )
            .unwrap();
        assert_eq!(ctx.notes()["snapshots"], "clean");
        let out = Proc::new("qemu-img")
            .args(["snapshot", "-l"])
            .arg(&base)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("booted"),
            "the upstream lost its snapshot"
        );
    }

    #[test]
    fn flatten_and_raw_give_standalone_images_with_the_same_data() {
        let t = Trees::new("flatten");
        t.run("base", &parse("size: 16M"), &[]).unwrap();
        t.qemu_io(
            &t.tree("base").join("image.qcow2"),
            &["write -P 0x11 0 64k"],
        );
        t.run("a", &parse("from: base"), &["base"]).unwrap();
        t.qemu_io(&t.tree("a").join("image.qcow2"), &["write -P 0x22 64k 64k"]);
        let ctx = t
            .run("flat", &parse("from: a\nflatten: true\nsize: 32M"), &["a"])
            .unwrap();
        assert!(!ctx.notes().contains_key("backing_file"));
        assert_eq!(ctx.notes()["virtual_size"], (32u64 << 20).to_string());
        let raw = t
            .run("raw", &parse("from: a\nformat: raw"), &["a"])
            .unwrap();
        assert_eq!(raw.notes()["format"], "raw");
        let bytes = std::fs::read(t.tree("raw").join("image.raw")).unwrap();
        assert!(
            bytes[..65536].iter().all(|b| *b == 0x11)
                && bytes[65536..131072].iter().all(|b| *b == 0x22)
        );
        let read = t.qemu_io(
            &t.tree("flat").join("image.qcow2"),
            &["read -P 0x11 0 64k", "read -P 0x22 64k 64k"],
        );
        assert!(!read.contains("verification failed"), "{read}");
    }

    #[test]
    fn shrinking_is_refused_naming_both_sizes() {
        let t = Trees::new("shrink");
        t.run("base", &parse("size: 64M"), &[]).unwrap();
        let err = t
            .run("small", &parse("from: base\nsize: 32M"), &["base"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`size: 32M` is smaller than the upstream image (64M)"),
            "{err}"
        );
    }

    #[test]
    fn bad_fields_are_refused_before_anything_runs() {
        let e = check("size: 10X").unwrap_err();
        assert_eq!(e.field, "size");
        assert!(e.message.contains("k, M, G, T, P, E"), "{e}");
        assert_eq!(check("format: raw").unwrap_err().field, "size");
        assert_eq!(
            check("from: a\ncompat: \"0.9\"").unwrap_err().field,
            "compat"
        );
        assert_eq!(
            check("from: a\nformat: raw\ncompat: \"0.10\"")
                .unwrap_err()
                .field,
            "compat"
        );
        assert_eq!(
            check("size: 1G\nflatten: true").unwrap_err().field,
            "flatten"
        );
        assert_eq!(
            check("from: a\nflatten: true\nsnapshots: { delete: [x] }")
                .unwrap_err()
                .field,
            "snapshots.delete"
        );
        assert!(serde_yaml::from_str::<Image>("size: 1G\nfromm: a").is_err());
        check("from: a\nsize: 20G\ncompat: \"0.10\"").unwrap();
        assert_eq!(
            check("from: a\ncompat: \"0.10\"\nsnapshots: { delete: [x] }")
                .unwrap_err()
                .field,
            "snapshots.delete"
        );
        assert_eq!(
            parse("from: a\ncompat: 0.10").compat.as_deref(),
            Some("0.10")
        );
        assert_eq!(parse("from: a\ncompat: 1.1").compat.as_deref(), Some("1.1"));
        assert_eq!(check("from: a\ncompat: 0.2").unwrap_err().field, "compat");
    }

    #[test]
    fn plan_shows_the_qemu_img_command_lines() {
        let ctx = CheckContext {
            work_dir: PathBuf::from("/"),
        };
        assert_eq!(
            parse("size: 10G").plan(&ctx),
            vec!["qemu-img create -f qcow2 '$QFLOW_OUT/image.qcow2' 10737418240"]
        );
        let plan = parse("from: base\ncompat: \"0.10\"").plan(&ctx);
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(
            plan[0].starts_with("qemu-img convert -f qcow2 -O qcow2"),
            "{plan:?}"
        );
        assert_eq!(
            plan[1],
            "qemu-img amend -f qcow2 -o compat=0.10 '$QFLOW_OUT/image.qcow2'"
        );
        let plan = parse("from: base").plan(&ctx);
        assert!(
            plan[0]
                .starts_with("qemu-img create -f qcow2 -b '../<base tree>/image.qcow2' -F qcow2"),
            "{plan:?}"
        );
    }
}
