#!/usr/bin/env python3
"""dag.py SHAPE N DIR: a workflow of N trivial `command` steps and the equivalent build.ninja.

Writes DIR/workflow.yaml, DIR/build.ninja and DIR/src/f<i> (one input file per step).
Shapes: fan (one root, N-2 steps below it, one step below all of them), tree (a binary
tree: step i is below step (i-1)/2), chains (N/100 independent chains of 100 steps),
flat (no edges). Used by bench/scale.sh and scripts/hot-symbols.sh.
"""
import os, sys
shape, n, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(f"{d}/src", exist_ok=True)
def ups(i):
    if shape == "fan":
        return [] if i == 0 else [0] if i < n - 1 else list(range(1, n - 1))
    if shape == "tree":
        return [] if i == 0 else [(i - 1) // 2]
    if shape == "chains":
        return [] if i % 100 == 0 else [i - 1]
    if shape == "flat":
        return []
    raise SystemExit(f"unknown shape {shape}")
wf = ["version: 1", f"name: {shape}{n}", "steps:"]
nj = ["rule touch", "  command = touch $out", ""]
for i in range(n):
    with open(f"{d}/src/f{i}", "w") as f:
        f.write(f"{i}\n")
    u = ups(i)
    wf += [f"  s{i}:", "    kind: command", "    run: ['true']", f"    inputs: [src/f{i}]"]
    if u:
        wf.append("    after: [" + ", ".join(f"s{j}" for j in u) + "]")
    dep = (" | " + " ".join(f"b/s{j}" for j in u)) if u else ""
    nj.append(f"build b/s{i}: touch src/f{i}{dep}")
open(f"{d}/workflow.yaml", "w").write("\n".join(wf) + "\n")
open(f"{d}/build.ninja", "w").write("\n".join(nj) + "\n")
