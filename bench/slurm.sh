#!/usr/bin/env bash
# Slurm benchmark on the single-node cluster of scripts/slurm-start.sh, measured in this one run:
#  1. N independent one-second command steps (default 200):
#     `qflow apply --executor slurm` vs `qflow apply` (local, --jobs = the node's CPUs): the ratio;
#     qflow's overhead per step over a bare `srun` of the same command, run as many at once as
#     the node has CPUs (goal: at most 0.2 s), and over the same sruns all submitted at once
#     (as qflow submits them: what remains is qflow's own);
#  2. a boot matrix of R runs (default 100) restoring one checkpoint (the host's kernel and a
#     busybox initramfs under TCG): each run one Slurm job vs the runs as local threads;
#  3. controller calls per minute during each Slurm apply (`squeue`, `srun`, `sbatch`,
#     `scancel`, `scontrol`, counted by PATH wrappers around the real commands; goal: at most
#     one `squeue` a second whatever the number of jobs).
# Usage (as root): bench/slurm.sh [N] [R]   (PROFILE=debug to skip the release build)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-200}
runs=${2:-100}
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
# The cache must be on a file system the nodes see: on this single-node cluster, any.
work=$(mktemp -d "${TMPDIR:-/tmp}/qflow-bench-slurm.XXXXXX")
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
calc() { echo "$*" | bc -l; }

# Controller calls counted: a wrapper first on PATH appends the command's name, then runs it.
mkdir -p "$work/wrap"
for cmd in squeue srun sbatch scancel scontrol; do
  real=$(command -v "$cmd")
  printf '#!/bin/sh\necho %s >> %s\nexec %s "$@"\n' "$cmd" "$work/calls" "$real" >"$work/wrap/$cmd"
  chmod +x "$work/wrap/$cmd"
done
calls_line() {  # calls_line SECONDS: the counted calls, per minute
  local s=$1 total squeue
  total=$(wc -l <"$work/calls")
  squeue=$(grep -c '^squeue$' "$work/calls" || true)
  printf '%d calls in %.1f s = %.1f per minute (squeue %d = %.1f per minute; srun %d, sbatch %d, scancel %d, scontrol %d)' \
    "$total" "$s" "$(calc "$total * 60 / $s")" "$squeue" "$(calc "$squeue * 60 / $s")" \
    "$(grep -c '^srun$' "$work/calls" || true)" "$(grep -c '^sbatch$' "$work/calls" || true)" \
    "$(grep -c '^scancel$' "$work/calls" || true)" "$(grep -c '^scontrol$' "$work/calls" || true)"
}
slurm_apply() {  # slurm_apply DIR: apply on Slurm with counted calls; prints seconds
  : >"$work/calls"
  local t0 t1
  t0=$(now)
  (cd "$1" && PATH="$work/wrap:$PATH" "$qflow" apply --executor slurm >"$1/apply.log" 2>&1) \
    || { cat "$1/apply.log" >&2; exit 1; }
  t1=$(now)
  calc "$t1 - $t0"
}
local_apply() {  # local_apply DIR: prints seconds
  local t0 t1
  t0=$(now)
  (cd "$1" && "$qflow" apply --jobs "$cpus" >"$1/apply.log" 2>&1) || { cat "$1/apply.log" >&2; exit 1; }
  t1=$(now)
  calc "$t1 - $t0"
}

# --- 1. N one-second command steps -------------------------------------------------------------
commands() {  # commands DIR
  mkdir -p "$1"
  {
    printf 'version: 1\nname: bench-slurm\nsteps:\n'
    for i in $(seq "$n"); do
      printf '  s%s:\n    kind: command\n    run: [sh, -c, %s]\n    outputs: [done]\n' \
        "$i" "'sleep 1; echo $i > \"\$QFLOW_OUT/done\"'"
    done
  } >"$1/workflow.yaml"
}
commands "$work/local"
local_s=$(local_apply "$work/local")
commands "$work/slurm"
slurm_s=$(slurm_apply "$work/slurm")
slurm_calls=$(calls_line "$slurm_s")
t0=$(now)
seq "$n" | xargs -P "$cpus" -I{} srun --quiet -c1 --export=NONE /bin/sh -c 'sleep 1' >/dev/null
t1=$(now)
bare_s=$(calc "$t1 - $t0")
# The same sruns all submitted at once, as qflow submits them: the difference is Slurm's
# own time to start a queued job when a CPU frees, which no submitter avoids.
t0=$(now)
for i in $(seq "$n"); do srun --quiet -c1 --export=NONE /bin/sh -c 'sleep 1' >/dev/null & done
wait
t1=$(now)
queued_s=$(calc "$t1 - $t0")

# --- 2. a boot matrix of R runs from one checkpoint ---------------------------------------------
kernel=$(ls /boot/vmlinuz-* | sort | tail -1)
mkdir -p "$work/initrd"
QFLOW_OUT="$work/initrd" sh "$here/tests/fixtures/boot/make-initramfs.sh"
matrix() {  # matrix DIR
  mkdir -p "$1"
  cat >"$1/workflow.yaml" <<EOF
version: 1
name: bench-slurm-matrix
steps:
  ready:
    kind: boot
    kernel: $kernel
    initrd: $work/initrd/initrd.img
    append: console=ttyS0 quiet panic=-1
    memory: 256M
    accel: tcg
    checkpoint: true
    commands: [echo booted]
  runs:
    kind: boot
    from_checkpoint: ready
    jobs: $cpus
    matrix: { n: [$(seq -s, "$runs")] }
    commands: ['echo "run \$n" > /tmp/out.txt']
    collect: [/tmp/out.txt]
EOF
  # The checkpoint first, here: what is measured is the runs.
  (cd "$1" && "$qflow" apply ready >/dev/null 2>&1)
}
matrix "$work/mlocal"
mlocal_s=$(local_apply "$work/mlocal")
matrix "$work/mslurm"
mslurm_s=$(slurm_apply "$work/mslurm")
matrix_calls=$(calls_line "$mslurm_s")

left=$(squeue -h | wc -l)
printf 'node                       %d CPUs, load average %s; %s build\n' "$cpus" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$profile"
printf '%d x `sleep 1`:\n' "$n"
printf '  local apply              %.1f s\n' "$local_s"
printf '  slurm apply              %.1f s  (%.2fx local)\n' "$slurm_s" "$(calc "$slurm_s / $local_s")"
printf '  bare srun, %d at once     %.1f s\n' "$cpus" "$bare_s"
printf '  bare srun, all at once   %.1f s\n' "$queued_s"
printf '  qflow overhead per step  %.3f s over bare srun %d at once (goal <= 0.2); %.3f s over all at once\n' \
  "$(calc "($slurm_s - $bare_s) / $n")" "$cpus" "$(calc "($slurm_s - $queued_s) / $n")"
printf '  controller               %s\n' "$slurm_calls"
printf 'boot matrix of %d runs from one checkpoint:\n' "$runs"
printf '  local apply (jobs: %d)    %.1f s\n' "$cpus" "$mlocal_s"
printf '  slurm apply (%d jobs)    %.1f s  (%.2fx local; %.3f s per run)\n' "$runs" "$mslurm_s" \
  "$(calc "$mslurm_s / $mlocal_s")" "$(calc "$mslurm_s / $runs")"
printf '  controller               %s\n' "$matrix_calls"
printf 'jobs left in the queue     %d\n' "$left"
