#!/usr/bin/env bash
# Benchmark: restoring a checkpoint against booting, same guest.
#
# The guest is the boot tests' one: the tinyconfig + qemu-guest.config kernel, the
# busybox root file system on a partitioned raw image (-hda) and a data disk (-hdb),
# 128 MiB, TCG. Phases, each its own `qflow apply` on one shared cache:
#   cold      boot to a shell once                           (time to ready)
#   ready     boot, mount the data disk, save a checkpoint   (its cost, once)
#   restore   restore the checkpoint to a shell once         (time to ready)
#   boots8    eight cold boots one after the other (jobs: 1), each mounts the data
#             disk and runs the workload
#   restores8 eight restores of the checkpoint (jobs: 1, then jobs: 2), each runs
#             the workload
# "ready" is from QEMU's start to the guest shell answering a framed command, as the
# boot kind logs it (`qflow: guest ready after Xs`). "disk written" is the bytes the
# whole `qflow apply` process tree wrote to files (GNU time's %O, 512-byte units),
# QEMU's -snapshot scratch files and qflow's cache objects included.
# Prints the figures and the ratios (target: restore to ready >= 5x faster than boot).
#
# Usage: bench/boot-checkpoint.sh [WORK_DIR]   (env: QFLOW=path, QFLOW_CACHE=dir)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$repo/target/bench-boot}
guest=$repo/bench/guest
quickstart=$repo/workflows/quickstart
# The boot tests' shared cache: a kernel built there by the tests is reused.
export QFLOW_CACHE=${QFLOW_CACHE:-$repo/target/tmp/shared-cache}

if [ -z "${QFLOW:-}" ]; then
	(cd "$repo" && cargo build --release --quiet)
	QFLOW=$repo/target/release/qflow
fi
[ -f /usr/src/linux-source-6.1.tar.xz ] || { echo "needs linux-source-6.1: apt-get install linux-source-6.1" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }
mkdir -p "$work" "$QFLOW_CACHE"
cd "$work"
rm -rf out qflow.lock
nonce=$(date +%s%N)

base() {
	cat <<EOF
version: 1
name: boot-bench
vars:
  nonce: none
steps:
  kernel:
    kind: kernel
    source: { tarball: /usr/src/linux-source-6.1.tar.xz }
    config: tinyconfig
    fragments: [$quickstart/qemu-guest.config]
  system:
    kind: command
    run: [sh, $guest/make-rootfs.sh, system]
    inputs: [$guest/make-rootfs.sh]
    outputs: [image.raw]
  data:
    kind: command
    run: [sh, $guest/make-rootfs.sh, data, $guest/run.sh]
    inputs: [$guest/make-rootfs.sh, $guest/run.sh]
    outputs: [image.raw]
EOF
}
ready_step="  ready:
    kind: boot
    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    accel: tcg
    checkpoint: true
    commands: ['mount /dev/sdb /mnt']
    extra_args: [-name, 'bench-\${{ nonce }}']"
with_ready() { base; echo "$ready_step"; }
machine='    system: system
    disks: [data]
    kernel: kernel
    memory: 128M
    accel: tcg'
eight='[1, 2, 3, 4, 5, 6, 7, 8]'

{ base; cat <<EOF
  cold:
    kind: boot
$machine
    commands: ['true']
    extra_args: [-name, 'bench-\${{ nonce }}']
EOF
} > cold.yaml
with_ready > ready.yaml
{ with_ready; cat <<EOF
  restore:
    kind: boot
    from_checkpoint: ready
    commands: ['true']
    extra_args: [-name, 'bench-\${{ nonce }}']
EOF
} > restore.yaml
{ base; cat <<EOF
  boots8:
    kind: boot
$machine
    jobs: 1
    matrix: { n: $eight }
    commands: ['mount /dev/sdb /mnt', 'sh /mnt/run.sh']
    extra_args: [-name, 'bench-\${{ nonce }}']
EOF
} > boots8.yaml
for j in 1 2; do
	{ with_ready; cat <<EOF
  restores8_j$j:
    kind: boot
    from_checkpoint: ready
    jobs: $j
    matrix: { n: $eight }
    commands: ['sh /mnt/run.sh']
    extra_args: [-name, 'bench-\${{ nonce }}-j$j']
EOF
	} > "restores8_j$j.yaml"
done

# Build (or find cached) the kernel and images first, untimed.
"$QFLOW" apply --set nonce=warm cold.yaml >/dev/null 2>&1 || "$QFLOW" apply --set nonce=warm cold.yaml

declare -A wall written
phase() { # NAME STEP: apply NAME.yaml with a fresh nonce; record wall time and bytes written
	local name=$1 step=$2 out
	out=$(/usr/bin/time -f 'TIME %e %O' "$QFLOW" apply --jobs 2 --set "nonce=$nonce" "$name.yaml" 2>&1) || { echo "$out" >&2; exit 1; }
	echo "$out" | grep -q "qflow: ok $step" || { echo "$name: step $step did not run:" >&2; echo "$out" >&2; exit 1; }
	wall[$name]=$(echo "$out" | awk '/^TIME/ {print $2}')
	written[$name]=$(echo "$out" | awk '/^TIME/ {printf "%.1f", $3 * 512 / 1048576}')
}
newest_log() { ls -t "$QFLOW_CACHE"/logs/*/"$1.log" | head -1; }
ready_times() { grep -o 'guest ready after [0-9.]*' "$(newest_log "$1")" | awk '{print $4}'; }
mean() { awk '{s += $1; n++} END {printf "%.2f", s / n}'; }

phase cold cold
phase ready ready
phase restore restore
phase boots8 boots8
phase restores8_j1 restores8_j1
phase restores8_j2 restores8_j2

cold_ready=$(ready_times cold | mean)
restore_ready=$(ready_times restore | mean)
boots8_ready=$(ready_times boots8 | mean)
restores8_ready=$(ready_times restores8_j1 | mean)
ckpt_size=$(du -sLm --apparent-size out/ready | awk '{print $1}')

printf '\n%-44s %10s %12s\n' "phase" "wall (s)" "written (MiB)"
for p in cold ready restore boots8 restores8_j1 restores8_j2; do
	printf '%-44s %10s %12s\n' "$p" "${wall[$p]}" "${written[$p]}"
done
printf '\ncheckpoint output (memory.snapshot + overlays): %s MiB\n' "$ckpt_size"
printf 'cold boot to ready:             %ss (one), %ss (mean of eight)\n' "$cold_ready" "$boots8_ready"
printf 'restore to ready:               %ss (one), %ss (mean of eight)\n' "$restore_ready" "$restores8_ready"
printf 'ratio boot/restore to ready:    %.1fx (target >= 5x)\n' "$(echo "$cold_ready / $restore_ready" | bc -l)"
printf 'eight runs wall, boots (jobs 1) / restores (jobs 1): %.1fx\n' "$(echo "${wall[boots8]} / ${wall[restores8_j1]}" | bc -l)"
printf 'eight runs wall, boots (jobs 1) / restores (jobs 2): %.1fx\n' "$(echo "${wall[boots8]} / ${wall[restores8_j2]}" | bc -l)"
printf 'eight runs disk written, boots / restores (jobs 2):  %s MiB / %s MiB\n' "${written[boots8]}" "${written[restores8_j2]}"
