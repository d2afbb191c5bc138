#!/usr/bin/env bash
# Slurm benchmark: N independent one-second command steps (default 200) on the single-node
# cluster of scripts/slurm-start.sh, measured in this one run:
#  1. `qflow apply --executor slurm` vs `qflow apply` (local) on the same host: the ratio;
#  2. qflow's overhead per step over a bare `srun` of the same command, run as many at once as
#     the node has CPUs (goal: at most 0.2 s);
#  3. `squeue` calls per minute during the Slurm apply, counted by a PATH wrapper around the real
#     squeue (goal: at most 60, whatever N).
# Usage (as root): bench/slurm.sh [N]   (PROFILE=debug to skip the release build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-200}
profile=${PROFILE:-release}
export NO_COLOR=1
"$here/scripts/slurm-start.sh"
if [ "$profile" = release ]; then
  cargo build --release --quiet --manifest-path "$here/Cargo.toml"
else
  cargo build --quiet --manifest-path "$here/Cargo.toml"
fi
qflow="$here/target/$profile/qflow"
cpus=$(sinfo -h -o %c | head -1)
work=$(mktemp -d "${TMPDIR:-/tmp}/qflow-bench-slurm.XXXXXX")
trap 'rm -rf "$work"' EXIT

workflow() {  # workflow DIR: N one-second steps
  mkdir -p "$1"
  {
    printf 'version: 1\nname: bench-slurm\nsteps:\n'
    for i in $(seq "$n"); do
      printf '  s%s:\n    kind: command\n    run: [sh, -c, %s]\n    outputs: [done]\n' \
        "$i" "'sleep 1; echo $i > \"\$QFLOW_OUT/done\"'"
    done
  } >"$1/workflow.yaml"
}
now() { date +%s.%N; }

# squeue counted: a wrapper first on PATH appends a line per call, then runs the real one.
real_squeue=$(command -v squeue)
mkdir -p "$work/wrap"
printf '#!/bin/sh\necho call >> %s\nexec %s "$@"\n' "$work/squeue.calls" "$real_squeue" >"$work/wrap/squeue"
chmod +x "$work/wrap/squeue"

workflow "$work/local"
t0=$(now); (cd "$work/local" && "$qflow" apply --jobs "$cpus" >/dev/null 2>&1); t1=$(now)
local_s=$(echo "$t1 - $t0" | bc)

workflow "$work/slurm"
: >"$work/squeue.calls"
t0=$(now)
(cd "$work/slurm" && PATH="$work/wrap:$PATH" "$qflow" apply --executor slurm >"$work/slurm.log" 2>&1) \
  || { cat "$work/slurm.log" >&2; exit 1; }
t1=$(now)
slurm_s=$(echo "$t1 - $t0" | bc)
calls=$(wc -l <"$work/squeue.calls")

t0=$(now)
seq "$n" | xargs -P "$cpus" -I{} srun --quiet -c1 --export=NONE /bin/sh -c 'sleep 1' >/dev/null
t1=$(now)
bare_s=$(echo "$t1 - $t0" | bc)

left=$(squeue -h | wc -l)
printf 'steps                      %d x `sleep 1`, %d CPUs\n' "$n" "$cpus"
printf 'local apply                %.1f s\n' "$local_s"
printf 'slurm apply                %.1f s  (%.2fx local)\n' "$slurm_s" "$(echo "$slurm_s / $local_s" | bc -l)"
printf 'bare srun, %d at once       %.1f s\n' "$cpus" "$bare_s"
printf 'qflow overhead per step    %.3f s over bare srun (goal <= 0.2)\n' "$(echo "($slurm_s - $bare_s) / $n" | bc -l)"
printf 'squeue calls               %d in %.1f s = %.1f per minute (goal <= 60)\n' \
  "$calls" "$slurm_s" "$(echo "$calls * 60 / $slurm_s" | bc -l)"
printf 'jobs left in the queue     %d\n' "$left"
