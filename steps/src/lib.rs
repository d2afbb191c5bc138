//! qflow's step kinds, one file per kind. Each kind is a typed fields struct that
//! implements [`qflow_engine::Step`]; [`registry`] lists them all.

pub mod boot;
pub mod command;
pub mod customize;
pub mod debootstrap;
pub mod disk;
pub mod download;
pub mod fetch;
pub mod figure;
pub mod host;
pub mod image;
pub mod image_diff;
pub mod image_file;
pub mod kernel;
pub mod metrics;
pub mod package_name;
pub mod qemu_img;
pub mod root_tree;
pub mod secret;

use qflow_engine::{KindOf, Registry};

/// Every step kind qflow knows.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.add(KindOf::<command::Command>::new());
    r.add(KindOf::<boot::Boot>::new());
    r.add(KindOf::<customize::Customize>::new());
    r.add(KindOf::<debootstrap::Debootstrap>::new());
    r.add(KindOf::<image::Image>::new());
    r.add(KindOf::<disk::Disk>::new());
    r.add(KindOf::<download::Download>::new());
    r.add(KindOf::<kernel::Kernel>::new());
    r.add(KindOf::<figure::Figures>::new());
    r
}

#[cfg(test)]
mod tests {
    //! The kinds' contract as the binary trusts it: what a configured step runs or
    //! needs is among what its kind declares, the host install script provides
    //! every package of it, and secrets are declared by the kinds that read them.

    use std::path::Path;

    use qflow_engine::{HostNeed, SecretSource, SecretUse, Step, Tool};

    use super::*;

    /// Steps of every kind in most of their forms: each `via:`, each archive
    /// compression, kept writes and collected disks, checkpoints, secrets.
    const SAMPLES: &[(&str, &str)] = &[
        ("command", "run: [make]\noutputs: [table.csv, disk.img]"),
        ("disk", "size: 16M"),
        ("disk", "size: 16M\nfs: xfs"),
        ("disk", "size: 16M\nvia: loop"),
        ("disk", "size: 16M\nfs: xfs\nvia: nbd"),
        ("image", "size: 1G"),
        ("image", "from: base\ncompat: '0.10'"),
        (
            "download",
            "url: http://example.org/x.qcow2\nsha256: 0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("debootstrap", "suite: bookworm\nsize: 2G\nkernel: true"),
        (
            "customize",
            "image: base\nroot_password: { file: secrets/root-password }",
        ),
        (
            "kernel",
            "source: /usr/src/linux.tar.xz\nconfig: tinyconfig",
        ),
        (
            "kernel",
            "source: /usr/src/linux.tar.zst\nconfig: tinyconfig",
        ),
        (
            "kernel",
            "source: /usr/src/linux.tar.bz2\nconfig: tinyconfig",
        ),
        ("kernel", "source: /usr/src/linux.tar.gz\nconfig: defconfig"),
        ("kernel", "source: ./linux\nconfig: defconfig"),
        (
            "boot",
            "system: base\ndisks: [data]\nsnapshot: false\ncheckpoint: true\ncollect: [{ disk: data, path: /out.csv }]\nlogin: { user: root, password: { env: ROOT_PW } }",
        ),
        ("boot", "kernel: k\naccel: kvm"),
        ("boot", "kernel: k\nicount: 1"),
    ];

    fn parse(kind: &str, yaml: &str) -> Box<dyn Step> {
        let registry = registry();
        let fields: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        registry
            .get(kind)
            .unwrap_or_else(|| panic!("no kind `{kind}`"))
            .parse(&fields)
            .unwrap_or_else(|e| panic!("{kind}: {yaml}: {e}"))
    }

    /// Every step of the example workflows and of [`SAMPLES`], with its kind.
    fn configured_steps() -> Vec<(String, Box<dyn Step>)> {
        configured_fields()
            .into_iter()
            .map(|(kind, yaml)| {
                let step = parse(&kind, &yaml);
                (kind, step)
            })
            .collect()
    }

    /// The kind and fields (YAML) of every step of the example workflows and of [`SAMPLES`].
    fn configured_fields() -> Vec<(String, String)> {
        let mut steps: Vec<(String, String)> = SAMPLES
            .iter()
            .map(|(kind, yaml)| (kind.to_string(), yaml.to_string()))
            .collect();
        let workflows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows");
        for e in std::fs::read_dir(&workflows).unwrap().flatten() {
            if e.path().extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap();
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            for (_, step) in doc["steps"].as_mapping().unwrap() {
                let mut fields = step.as_mapping().unwrap().clone();
                let kind = fields.remove("kind").unwrap();
                for common in qflow_engine::workflow::COMMON_FIELDS {
                    fields.remove(*common);
                }
                let kind = kind.as_str().unwrap();
                let yaml = serde_yaml::to_string(&fields).unwrap();
                steps.push((kind.to_string(), yaml));
            }
        }
        steps
    }

    /// A loaded workflow's memo keeps each step's fields as canonical JSON and
    /// parses them from it: every kind must read them back as the same step.
    #[test]
    fn every_kind_parses_the_same_step_from_its_canonical_json() {
        let registry = registry();
        for (kind, yaml) in configured_fields() {
            let fields: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
            let json = qflow_engine::step_key::canonical_json(&fields);
            let from_json = (registry.get(&kind).unwrap().parse_json(&json))
                .unwrap_or_else(|e| panic!("{kind}: {json}: {e}"));
            assert_eq!(
                format!("{from_json:?}"),
                format!("{:?}", parse(&kind, &yaml)),
                "{kind}: {yaml}"
            );
        }
    }

    fn kind_tools(kind: &str) -> Vec<Tool> {
        registry().get(kind).unwrap().tools()
    }

    #[test]
    fn a_configured_step_runs_and_needs_only_what_its_kind_declares() {
        let ctx = qflow_engine::CheckContext {
            work_dir: std::env::temp_dir(),
        };
        let registry = registry();
        for (kind, step) in configured_steps() {
            let declared = kind_tools(&kind);
            for tool in step.tools() {
                assert!(
                    declared.contains(&tool),
                    "a `{kind}` step runs `{}`, which its kind does not declare",
                    tool.program
                );
            }
            let needs = registry.get(&kind).unwrap().needs();
            for r in step.requirements(&ctx) {
                assert!(
                    needs.contains(&r.need),
                    "a `{kind}` step needs {:?}, which its kind does not declare",
                    r.need
                );
            }
        }
    }

    /// The packages of `scripts/install-host-deps.sh`: its `packages=( ... )` list
    /// and the QEMU pair it installs together.
    fn script_packages() -> Vec<String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-host-deps.sh");
        let text = std::fs::read_to_string(&script).unwrap();
        let start = text.find("packages=(").expect("a packages=( list") + "packages=(".len();
        let end = start + text[start..].find("\n)").expect("the list's closing )");
        let mut packages: Vec<String> = text[start..end]
            .lines()
            .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace())
            .map(str::to_string)
            .collect();
        for pair in ["qemu-system-x86", "qemu-utils"] {
            assert!(
                text.contains(&format!("\"{pair}=${{version}}\"")),
                "the script installs `{pair}` with its QEMU"
            );
            packages.push(pair.to_string());
        }
        packages
    }

    #[test]
    fn the_host_install_script_provides_every_package_a_kind_may_need() {
        let packages = script_packages();
        for kind in registry().kinds() {
            for tool in kind.tools() {
                assert!(
                    packages.contains(&tool.package),
                    "kind `{}` may run `{}` from package `{}`, which scripts/install-host-deps.sh does not install",
                    kind.name(),
                    tool.program,
                    tool.package
                );
            }
            for need in kind.needs() {
                let package = match need {
                    HostNeed::File { package, .. } => package,
                    HostNeed::HostKernel => "linux-image-amd64".to_string(),
                    HostNeed::Root | HostNeed::NbdModule | HostNeed::Kvm(_) => continue,
                };
                assert!(
                    packages.contains(&package),
                    "kind `{}` may need package `{package}`, which scripts/install-host-deps.sh does not install",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn the_kinds_that_read_a_password_declare_it_and_no_other_field_is_a_secret() {
        assert_eq!(
            parse(
                "customize",
                "image: base\nroot_password: { file: rootpw.txt }"
            )
            .secrets(),
            vec![SecretUse {
                field: "root_password".into(),
                source: SecretSource::File("rootpw.txt".into()),
            }]
        );
        assert!(
            parse("customize", "image: base\nroot_password: random")
                .secrets()
                .is_empty(),
            "a random password is read from no host file"
        );
        assert_eq!(
            parse(
                "boot",
                "kernel: k\nlogin: { user: root, password: { env: ROOT_PW } }"
            )
            .secrets(),
            vec![SecretUse {
                field: "login.password".into(),
                source: SecretSource::Env("ROOT_PW".into()),
            }]
        );
        let kernel = parse(
            "kernel",
            "source: /usr/src/linux.tar.xz\nconfig: { file: guest.config }",
        );
        assert!(kernel.secrets().is_empty(), "a kernel config is no secret");
    }

    #[test]
    fn metrics_and_matrix_variables_are_told_through_the_contract() {
        let boot = parse(
            "boot",
            "kernel: k\nmatrix: { size: [16, 64], mode: [a, b] }\nrepeat: 2\n\
             metrics: { ops: { from: console.log, regex: 'ops=([0-9]+)', tolerance: 0.1 } }",
        );
        assert_eq!(boot.matrix_axes(), ["mode", "size"]);
        let metrics = boot.metrics();
        assert_eq!(metrics.keys().collect::<Vec<_>>(), ["ops"]);
        assert_eq!(metrics["ops"].tolerance, Some(0.1));
        assert_eq!(
            boot.output_role("metrics.json"),
            qflow_engine::OutputRole::Result
        );
        let command = parse(
            "command",
            "run: [make]\noutputs: [run.txt]\nmetrics: { t: { from: run.txt, csv: t } }",
        );
        assert!(command.matrix_axes().is_empty(), "a command runs once");
        assert_eq!(command.metrics().keys().collect::<Vec<_>>(), ["t"]);
        assert!(
            parse("kernel", "source: ./linux\nconfig: defconfig")
                .metrics()
                .is_empty()
        );
    }

    #[test]
    fn outputs_carry_the_role_bundle_and_verify_act_on() {
        use qflow_engine::OutputRole::*;
        let boot = parse(
            "boot",
            "system: base\nsnapshot: false\ncheckpoint: true\ncollect: [/root/out.csv]",
        );
        assert_eq!(boot.output_role("console.log"), MachineState, "no icount");
        assert_eq!(boot.output_role("out.csv"), Result);
        assert_eq!(
            boot.output_role("image.qcow2"),
            MachineState,
            "the guest wrote it"
        );
        assert_eq!(boot.output_role("memory.snapshot"), MachineState);
        let timed = parse("boot", "system: base\nicount: 1\naccel: tcg");
        assert_eq!(timed.output_role("session.log"), Log);
        assert_eq!(
            timed.output_role("console.log"),
            MachineState,
            "reads a disk"
        );
        let diskless = parse("boot", "kernel: k\ninitrd: i\nicount: 1\naccel: tcg");
        assert_eq!(diskless.output_role("console.log"), Log);
        let restored = parse("boot", "from_checkpoint: ready");
        assert_eq!(restored.output_role("console.log"), Log, "no boot in it");
        let download = parse(
            "download",
            "url: http://example.org/x\nsha256: 0000000000000000000000000000000000000000000000000000000000000000",
        );
        assert_eq!(
            download.output_role("image.raw"),
            Image,
            "named only when it runs"
        );
        let command = parse("command", "run: [make]\noutputs: [table.csv, disk.img]");
        assert_eq!(command.output_role("table.csv"), Artifact);
        assert_eq!(command.output_role("disk.img"), Image);
        let kernel = parse("kernel", "source: ./linux\nconfig: defconfig");
        assert_eq!(kernel.output_role("bzImage"), Artifact);
    }
}
