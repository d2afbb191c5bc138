//! Independent steps run in parallel, never beyond `--jobs` CPU slots, and a
//! `make` inside a step shares the same budget through qflow's jobserver.

mod common;
use common::Space;

/// Each step records its start and end (ns) so the test can compute the peak overlap.
fn interval_step(name: &str, jobs: usize) -> String {
    format!(
        "  {name}:\n    kind: command\n    jobs: {jobs}\n    run: [sh, -c, 'date +%s%N >> times/{name}; sleep 0.4; date +%s%N >> times/{name}']\n    cache: false\n"
    )
}

fn peak_overlap(s: &Space, names: &[&str]) -> usize {
    let mut events = Vec::new();
    for n in names {
        let t: Vec<u128> = s
            .read(&format!("times/{n}"))
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        events.push((t[0], 1i32));
        events.push((t[1], -1i32));
    }
    events.sort();
    let (mut cur, mut peak) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        peak = peak.max(cur);
    }
    peak as usize
}

#[test]
fn jobs_2_with_four_independent_steps_never_runs_more_than_two_at_once() {
    let s = Space::new();
    let names = ["a", "b", "c", "d"];
    let mut yaml = String::from("version: 1\nsteps:\n");
    for n in names {
        yaml.push_str(&interval_step(n, 1));
    }
    s.workflow(&yaml).write("times/.keep", "");
    s.qflow(&["apply", "--jobs", "2"]).success();
    assert_eq!(
        peak_overlap(&s, &names),
        2,
        "independent steps should run two at a time"
    );
}

#[test]
fn a_step_taking_two_slots_runs_alone_under_jobs_2() {
    let s = Space::new();
    let mut yaml = String::from("version: 1\nsteps:\n");
    yaml.push_str(&interval_step("wide", 2));
    yaml.push_str(&interval_step("narrow", 1));
    s.workflow(&yaml).write("times/.keep", "");
    s.qflow(&["apply", "--jobs", "2"]).success();
    assert_eq!(peak_overlap(&s, &["wide", "narrow"]), 1);
}

#[test]
fn a_make_step_under_the_jobserver_never_runs_more_recipes_than_its_slots() {
    let s = Space::new();
    // Eight recipes that each record how many recipes run at the same moment.
    let mut mk = String::from("all: r1 r2 r3 r4 r5 r6 r7 r8\n");
    for i in 1..=8 {
        mk.push_str(&format!(
            "r{i}:\n\t@ls running | wc -l >> peak; touch running/{i}; ls running | wc -l >> peak; sleep 0.3; rm running/{i}\n"
        ));
    }
    s.write("Makefile", mk).write("running/.keep", "");
    s.workflow(
        "version: 1\nsteps:\n  build:\n    kind: command\n    jobs: 3\n    run: [sh, -c, 'rm -f peak running/[0-9]*; make; echo \"$MAKEFLAGS\" > \"$QFLOW_OUT/makeflags\"']\n    outputs: [makeflags]\n    cache: false\n",
    );
    s.qflow(&["apply", "--jobs", "3"]).success();
    let makeflags = s.read("out/build/makeflags");
    assert!(
        makeflags.contains("jobserver"),
        "make got no jobserver: {makeflags}"
    );
    // `-jN`, never a bare `-j` that kbuild's tools/ sub-make would run unlimited.
    assert!(makeflags.starts_with("-j3 "), "{makeflags}");
    let peak: usize = s
        .read("peak")
        .lines()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max()
        .unwrap();
    // `ls running` counts the .keep file too.
    let peak = peak - 1;
    assert!(peak <= 3, "make ran {peak} recipes at once with 3 slots");
    assert!(
        peak >= 2,
        "the jobserver should have let make run recipes in parallel (peak {peak})"
    );
}

#[test]
fn a_step_without_inputs_starts_while_a_large_input_tree_of_another_step_is_hashed() {
    let s = Space::new();
    // `kernel` comes first in the file and weighs the same as `base`: were every
    // input hashed before any step started, it would start first.
    s.workflow(
        "version: 1\nsteps:\n  kernel:\n    kind: command\n    inputs: [tree]\n    run: [sh, -c, 'echo kernel']\n  base:\n    kind: command\n    run: [sh, -c, 'echo base']\n",
    );
    for d in 0..100 {
        for f in 0..100 {
            s.write(&format!("tree/d{d}/f{f}.c"), format!("int f{d}_{f};\n"));
        }
    }
    let run = s.qflow(&["apply", "--json"]).success();
    let started: Vec<String> = (run.stdout.lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "started")
        .map(|e| e["step"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        started,
        ["base", "kernel"],
        "`base` waited for `kernel`'s inputs to be hashed"
    );
    // The tree is in `kernel`'s key all the same: an edit runs it again.
    s.write("tree/d7/f7.c", "int changed;\n");
    assert_eq!(s.apply().success().ran(), ["kernel"]);
}
