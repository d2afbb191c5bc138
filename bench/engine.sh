#!/usr/bin/env bash
# Engine benchmarks: each prints a ratio measured in this one run.
#  1. no-op `qflow apply` over the unpacked linux-source-6.1 tree (78k files) vs `git status`
#  2. first, cold-cache hash of that tree (qflow's first apply) vs `b3sum` over the same files
#  3. a 1,000-step no-op DAG: qflow vs ninja on an equivalent build.ninja
# Needs: linux-source-6.1, git, hyperfine, ninja-build (apt-get install linux-source-6.1 hyperfine
# ninja-build) and b3sum (cargo install b3sum). Usage: bench/engine.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/qflow-bench}
mkdir -p "$work"
export PATH="$HOME/.cargo/bin:$PATH" NO_COLOR=1
for tool in git hyperfine ninja b3sum; do
  command -v "$tool" >/dev/null || { echo "bench: \`$tool\` is missing (see the header of $0)" >&2; exit 2; }
done
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
qflow="$here/target/release/qflow"

tree="$work/linux-source-6.1"
if [ ! -d "$tree" ]; then
  echo "bench: unpacking /usr/src/linux-source-6.1.tar.xz into $work" >&2
  tar -C "$work" -xf /usr/src/linux-source-6.1.tar.xz
fi
# git's own directory lives beside the tree, so both tools see exactly the same files.
git() { command git --git-dir="$work/linux.git" --work-tree="$tree" "$@"; }
if [ ! -d "$work/linux.git" ]; then
  # The tarball's .gitignore ignores everything (`/*`): force-add to build the index.
  command git init -q --bare "$work/linux.git" && git add -f -A
fi
files=$(git ls-files | wc -l)

cat > "$work/tree.yaml" <<YAML
version: 1
name: tree-bench
steps:
  scan:
    kind: command
    run: ["true"]
    inputs: [linux-source-6.1/]
YAML

ratio() { python3 -c "import json,sys; a=json.load(open('$1'))['results']; print(f'{a[0][\"mean\"]*1000:.1f} ms vs {a[1][\"mean\"]*1000:.1f} ms: ratio {a[0][\"mean\"]/a[1][\"mean\"]:.2f}')"; }

echo "== 2. first hash of $files files: qflow (empty cache) vs b3sum, page cache warm"
# b3sum gets the tree's regular files (symlinks are hashed by target, not content, by qflow).
(cd "$tree" && find . -type f -print0 | xargs -0 b3sum > /dev/null)   # warm the page cache
gitargs="--git-dir=$work/linux.git --work-tree=$tree"
hyperfine -N --warmup 1 --runs 5 --export-json "$work/hash.json" \
  --prepare "rm -rf $work/.qflow" \
  "$qflow apply $work/tree.yaml" \
  "sh -c 'cd $tree && find . -type f -print0 | xargs -0 b3sum > /dev/null'" >/dev/null
echo "   qflow first apply vs b3sum: $(ratio "$work/hash.json")   (target: within 1.3)"

echo "== 1. no-op: qflow apply vs git status on the same tree"
"$qflow" apply "$work/tree.yaml" 2>/dev/null
git status --porcelain >/dev/null
sleep 1.2 && "$qflow" apply "$work/tree.yaml" 2>/dev/null
hyperfine -N --warmup 3 --runs 20 --export-json "$work/noop.json" \
  "$qflow apply $work/tree.yaml" \
  "git $gitargs status --porcelain" >/dev/null
echo "   no-op qflow apply vs git status: $(ratio "$work/noop.json")   (target: at most 1.0)"

echo "== 3. 1,000-step no-op DAG: qflow vs ninja"
dag="$work/dag"
rm -rf "$dag" && mkdir -p "$dag/src"
python3 - "$dag" <<'PY'
import sys, os
d = sys.argv[1]
n = 1000
wf = ["version: 1", "name: dag-bench", "steps:"]
nj = ["rule cp", "  command = cp $in $out", ""]
for i in range(n):
    open(f"{d}/src/f{i}", "w").write(f"{i}\n")
    wf += [f"  s{i}:", "    kind: command", f"    run: [sh, -c, 'cp src/f{i} \"$QFLOW_OUT/f{i}\"']",
           f"    inputs: [src/f{i}]", f"    outputs: [f{i}]"]
    dep = f" | out/f{(i - 1) // 2}" if i else ""
    if i:
        wf.append(f"    after: [s{(i - 1) // 2}]")
    nj.append(f"build out/f{i}: cp src/f{i}{dep}")
open(f"{d}/workflow.yaml", "w").write("\n".join(wf) + "\n")
open(f"{d}/build.ninja", "w").write("\n".join(nj) + "\n")
PY
(cd "$dag" && "$qflow" apply -j2 2>/dev/null >/dev/null && ninja -j2 >/dev/null)
# Like git's racily-clean index entries, what changed within the last second is
# checked in full until it is older: measure the steady no-op a user sees.
sleep 1.2 && "$qflow" apply "$dag/workflow.yaml" 2>/dev/null
hyperfine -N --warmup 3 --runs 20 --export-json "$work/dag.json" \
  "$qflow apply $dag/workflow.yaml" \
  "ninja -C $dag -j2" >/dev/null
echo "   1,000-step no-op qflow vs ninja: $(ratio "$work/dag.json")   (target: within 3.0)"
