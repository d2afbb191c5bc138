//! A newcomer copies the README's first workflow and expects what the README says:
//! it must load, run and leave the files the README names under `out/`.

mod common;

use common::Space;

fn readme() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .unwrap()
}

#[test]
fn the_readme_starts_with_the_two_commands() {
    let text = readme();
    let after_title = text
        .strip_prefix("# qflow\n\n")
        .expect("the title comes first");
    let block = after_title
        .strip_prefix("```sh\n")
        .expect("then the commands");
    let block = block.split("```").next().unwrap();
    assert!(block.contains("\nscripts/quickstart.sh\n"), "{block}");
    assert!(block.contains("\nscripts/test-all.sh\n"), "{block}");
}

#[test]
fn the_readmes_first_workflow_runs_and_leaves_what_the_readme_says() {
    let text = readme();
    let section = text
        .split("## Your first workflow")
        .nth(1)
        .expect("a first-workflow section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let s = Space::new();
    s.workflow(yaml).write("notes.txt", "one\ntwo\n");
    let run = s.apply();
    assert_eq!(run.ran_sorted(), ["count", "disk"], "{}", run.stderr);
    assert_eq!(s.read("out/count/lines.txt").trim(), "2");
    assert!(s.join("out/disk/image.qcow2").is_file());
    assert!(s.join("qflow.lock").is_file(), "the lock to commit");
    for named in ["out/count/lines.txt", "out/disk/image.qcow2", "qflow.lock"] {
        assert!(section.contains(named), "the README names `{named}`");
    }
    let again = s.apply();
    assert!(again.ran().is_empty(), "{}", again.stderr);
}
