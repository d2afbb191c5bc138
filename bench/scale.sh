#!/usr/bin/env bash
# Benchmark: qflow at scale against ninja on the same DAG, -j2, ratios from this one run.
#
# Generates workflows of trivial `command` steps (`run: [true]`, one input file each) in three
# shapes and the equivalent build.ninja (`touch $out`, the input file as its input, the upstream
# outputs as implicit dependencies):
#   fan    one root, N-2 steps below it, one step below all of them (fan-out, fan-in)
#   tree   a binary tree: step i is below step (i-1)/2
#   chains N/100 independent chains of 100 steps
# and prints, qflow (release build) vs ninja:
#   - first apply of each shape at each size (empty cache, empty build dir)      target <= 3x
#   - 1,000 independent `true` steps vs ninja and `xargs -P2`, and qflow's
#     overhead per step that runs (wall time over xargs' per step)             target <= 2 ms
#   - no-op at each size (tree shape)                                          target <= 2x
#   - one changed input among 10,000 steps (and the largest tree)  target <= no-op + 50 ms
#     (rounds of a no-op then a changed input, 1.1 s after the last change: bench/changed_input.py)
#   - `qflow plan` vs `ninja -n` on the largest tree (nothing to do)            target <= 2x
#   - peak RSS per step of the first apply (GNU time's maximum resident size)  target <= 2 KB
#     whole, and beyond a 2-step apply's peak (qflow's own size, paid once); ninja's whole
#     beside it; and what each step adds from one size to the next (the peak's growth
#     over the steps added), qflow's and ninja's: the cost of a step at any size
#   - peak RSS of a no-op of each shape at 10,000 steps and more (the largest of three runs),
#     per step                                                                  target <= 2 KB
#   - peak RSS of a no-op and of a first apply that has a lock but an empty cache (largest
#     tree), per step                                                          target <= 2 KB
#   - `.qflow` bytes per step after the first apply and after 10 more applies   target <= 4 KB
#     that each run one step
#
# Usage: bench/scale.sh [--big] [WORK_DIR]
#   --big  adds 50,000 steps to the sizes (default 1,000 and 10,000: a few minutes on 2 cores)
# The work dir's filesystem is printed: on ext4 without a journal, creating a file or directory
# skips every inode deleted within the last minute (six while its inode table block is dirty),
# one by one, so there each shape pays for what the shapes before it (and any other program on
# that filesystem) deleted; a work dir on tmpfs (/dev/shm/qflow-scale) measures without that.
# Needs: ninja-build, hyperfine, GNU time (scripts/install-host-deps.sh installs them), python3.
# env: QFLOW=path to a qflow binary (default: a release build of this checkout).
set -euo pipefail

sizes="1000 10000"
if [ "${1:-}" = "--big" ]; then
	sizes="1000 10000 50000"
	shift
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-${TMPDIR:-/tmp}/qflow-scale}
for tool in ninja hyperfine python3; do
	command -v "$tool" >/dev/null || { echo "bench: \`$tool\` is missing: run scripts/install-host-deps.sh" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "bench: GNU time is missing: apt-get install time" >&2; exit 2; }
if [ -z "${QFLOW:-}" ]; then
	cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
	QFLOW=$repo/target/release/qflow
fi
export NO_COLOR=1
unset QFLOW_CACHE
mkdir -p "$work"
work=$(cd "$work" && pwd)

# gen SHAPE N DIR: DIR/workflow.yaml, DIR/build.ninja, DIR/src/f<i>.
gen() { python3 "$repo/bench/dag.py" "$@"; }

# timed OUT CMD...: run CMD, write "seconds maxrss_kb" to OUT.
timed() {
	local out=$1
	shift
	/usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>&1
}
secs() { cut -d' ' -f1 "$1"; }
rss() { cut -d' ' -f2 "$1"; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b>0 else 'inf')" "$1" "$2"; }
# mean_ms JSON INDEX: a hyperfine result's mean in ms.
mean_ms() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['results'][int(sys.argv[2])]['mean']*1000,1))" "$1" "$2"; }

fs=$(findmnt -n -o FSTYPE -T "$work" 2>/dev/null | head -1)
echo "qflow $("$QFLOW" --version | cut -d' ' -f2), $(ninja --version | sed 's/^/ninja /'), -j2, work dir $work ($fs), load $(cut -d' ' -f1-3 /proc/loadavg)"
# The functions an apply runs are placed side by side (scripts/hot-symbols.txt); a list
# gone stale after a toolchain or dependency upgrade places fewer and costs memory.
if command -v nm >/dev/null; then
	"$repo/scripts/hot-symbols.sh" --check "$QFLOW"
fi
echo
# What a first apply of 2 steps peaks at: qflow's own size (binary, threads, allocator),
# which a large workflow pays once. The RSS column gives the peak over the steps, then
# (in brackets) what each step adds beyond that.
d=$work/tree2
rm -rf "$d"
gen tree 2 "$d"
(cd "$d" && timed "$d/q.time" "$QFLOW" apply -j2)
base_kb=$(rss "$d/q.time")
echo "== first apply (empty cache)        qflow      ninja     ratio   qflow RSS/step (beyond ${base_kb} KB)  ninja RSS/step  .qflow/step"
largest=
for n in $sizes; do
	for shape in fan tree chains; do
		d=$work/$shape$n
		rm -rf "$d"
		gen "$shape" "$n" "$d"
		(cd "$d" && timed "$d/q.time" "$QFLOW" apply -j2)
		(cd "$d" && timed "$d/n.time" ninja -j2)
		# Both must have built every step.
		[ "$(ls "$d/b" | wc -l)" -ge "$n" ] || { echo "bench: ninja did not build $d" >&2; exit 1; }
		q=$(secs "$d/q.time") nj=$(secs "$d/n.time")
		rss_step=$(python3 -c "kb=$(rss "$d/q.time"); print(f'{kb*1024/$n:.0f} B ({(kb-$base_kb)*1024/$n:.0f} B)')")
		disk_step=$(python3 -c "print(f'{$(du -sb "$d/.qflow" | cut -f1)/$n:.0f} B')")
		nj_step=$(python3 -c "print(f'{$(rss "$d/n.time")*1024/$n:.0f} B')")
		printf "   %-6s %6d steps          %7.2f s  %7.2f s  %6s   %22s  %14s  %11s\n" "$shape" "$n" "$q" "$nj" "$(ratio "$q" "$nj")" "$rss_step" "$nj_step" "$disk_step"
	done
	largest=$n
done
echo
echo "== peak RSS growth per step added, from one size to the next    qflow      ninja   target"
prev=
for n in $sizes; do
	if [ -n "$prev" ]; then
		for shape in fan tree chains; do
			grow() { python3 -c "print(f'{($(rss "$work/$shape$n/$1.time")-$(rss "$work/$shape$prev/$1.time"))*1024/($n-$prev):.0f} B')"; }
			printf "   %-6s %6d -> %-6d steps                            %7s  %9s   2 KB\n" "$shape" "$prev" "$n" "$(grow q)" "$(grow n)"
		done
	fi
	prev=$n
done

echo
echo "== peak RSS of a no-op, each shape (the largest of 3 runs; at 1,000 steps qflow's own size dominates)"
for n in $sizes; do
	[ "$n" -ge 10000 ] || continue
	for shape in fan tree chains; do
		d=$work/$shape$n
		sleep 1.1 # what changed within the last second is checked in full once more
		worst=0
		for _ in 1 2 3; do
			timed "$d/noop3.time" "$QFLOW" apply -j2 "$d/workflow.yaml"
			kb=$(rss "$d/noop3.time")
			[ "$kb" -gt "$worst" ] && worst=$kb
		done
		printf "   %-6s %6d steps   %6d KB: %s B/step   (target: at most 2 KB)\n" "$shape" "$n" "$worst" "$(python3 -c "print(f'{$worst*1024/$n:.0f}')")"
	done
done

echo
echo "== 1,000 independent \`true\` steps"
d=$work/flat1000
rm -rf "$d"
gen flat 1000 "$d"
# Between runs the previous results are moved aside, not deleted: on ext4 without a
# journal, creating a file first steps past every inode freed in the last minutes, so
# an `rm -rf` of 1,000 results just before would charge its deletes to the next run.
mkdir -p "$work/aside"
printf '#!/bin/sh\nt=$(mktemp -d %s/aside/XXXXXX)\nfor f in .qflow out b .ninja_log .ninja_deps; do [ -e %s/$f ] && mv %s/$f "$t/"; done\nexit 0\n' \
	"$work" "$d" "$d" >"$d/aside.sh"
hyperfine -N --runs 3 --export-json "$d/h.json" \
	--prepare "sh $d/aside.sh" \
	"$QFLOW apply -j2 $d/workflow.yaml" \
	"ninja -C $d -j2" >/dev/null
# The results moved aside are deleted only once everything is measured: on ext4
# without a journal their freed inodes would slow the file creations of the runs
# measured next (the changed-input runs create a few files each).
trap 'rm -rf "$work/aside"' EXIT
seq 1000 > "$d/ids"
hyperfine -N --runs 3 --export-json "$d/x.json" "xargs -P2 -n1 -a $d/ids true" >/dev/null
q=$(mean_ms "$d/h.json" 0) nj=$(mean_ms "$d/h.json" 1) x=$(mean_ms "$d/x.json" 0)
echo "   qflow $q ms, ninja $nj ms, xargs -P2 $x ms: $(ratio "$q" "$nj") ninja, $(ratio "$q" "$x") xargs"
echo "   qflow overhead per step that runs: $(python3 -c "print(f'{($q-$x)/1000:.2f} ms')")   (target: at most 2 ms)"

echo
echo "== no-op (tree shape)"
for n in $sizes; do
	d=$work/tree$n
	sleep 1.1 # what changed within the last second is checked in full once more
	"$QFLOW" apply -j2 "$d/workflow.yaml" >/dev/null 2>&1
	# 30 runs: a no-op of 1,000 steps takes about 15 ms, and 10 of them
	# moved the mean by a tenth from one bench to the next.
	hyperfine -N --warmup 3 --runs 30 --export-json "$d/noop.json" \
		"$QFLOW apply -j2 $d/workflow.yaml" "ninja -C $d -j2" >/dev/null
	q=$(mean_ms "$d/noop.json" 0) nj=$(mean_ms "$d/noop.json" 1)
	printf "   %6d steps: qflow %7.1f ms, ninja %6.1f ms: %s   (target: at most 2x)\n" "$n" "$q" "$nj" "$(ratio "$q" "$nj")"
done
# The target is set at 10,000 steps; with --big the largest size is measured too.
changed_sizes=$largest
case " $sizes " in *" 10000 "*) [ "$largest" = 10000 ] || changed_sizes="10000 $largest" ;; esac
for n in $changed_sizes; do
	d=$work/tree$n
	noop=$(mean_ms "$d/noop.json" 0)
	echo
	echo "== one changed input among $n steps (tree shape, a leaf)"
	leaf=$((n - 1))
	# Rounds of a no-op then one changed input, each round 1.1 s after the last
	# change (bench/changed_input.py says why), medians of 10 rounds.
	# Captured first, so a failed round stops the bench (set -e) instead of printing blanks.
	q_rounds=$(python3 "$repo/bench/changed_input.py" "$d" "src/f$leaf" 10 -- "$QFLOW" apply -j2 workflow.yaml)
	n_rounds=$(python3 "$repo/bench/changed_input.py" "$d" "src/f$leaf" 10 -- ninja -j2)
	read -r qn qc qd <<<"$q_rounds"
	read -r nn nc nd <<<"$n_rounds"
	printf "   qflow %.1f ms, its no-op in the same rounds %.1f ms: +%.1f ms (median of the rounds' differences; over the no-op above: +%.1f ms)\n" \
		"$qc" "$qn" "$qd" "$(python3 -c "print($qc-$noop)")"
	printf "   ninja %.1f ms (no-op %.1f ms: +%.1f ms): qflow %s ninja   (target at 10,000 steps: at most no-op + 50 ms)\n" \
		"$nc" "$nn" "$nd" "$(ratio "$qc" "$nc")"
	du_after=$(du -sb "$d/.qflow" | cut -f1)
	echo "   .qflow after the 30 applies above (10 of them ran one step): $(python3 -c "print(f'{$du_after/$n:.0f}')") B/step, runs/ keeps $(ls "$d/.qflow/runs" | wc -l) records"
done
d=$work/tree$largest

echo
echo "== plan vs ninja -n, $largest steps (tree shape, nothing to do)"
sleep 1.1
"$QFLOW" apply -j2 "$d/workflow.yaml" >/dev/null 2>&1
hyperfine -N --warmup 2 --runs 10 --export-json "$d/plan.json" \
	"$QFLOW plan $d/workflow.yaml" "ninja -C $d -n" >/dev/null
q=$(mean_ms "$d/plan.json" 0) nj=$(mean_ms "$d/plan.json" 1)
printf "   qflow plan %.1f ms, ninja -n %.1f ms: %s   (target: at most 2x)\n" "$q" "$nj" "$(ratio "$q" "$nj")"

echo
echo "== peak RSS of a no-op, and of a first apply that has a lock (a clone of a shared workflow: empty cache), $largest steps (tree shape)"
timed "$d/noop.time" "$QFLOW" apply -j2 "$d/workflow.yaml"
t=$(mktemp -d "$work/aside/XXXXXX")
mv "$d/.qflow" "$d/out" "$t/"
(cd "$d" && timed "$d/withlock.time" "$QFLOW" apply -j2)
per_step() { python3 -c "print(f'{$(rss "$1")*1024/$largest:.0f} B')"; }
printf "   no-op: %s KB, %s/step; first apply with the lock: %.2f s, %s KB, %s/step   (target: at most 2 KB)\n" \
	"$(rss "$d/noop.time")" "$(per_step "$d/noop.time")" "$(secs "$d/withlock.time")" "$(rss "$d/withlock.time")" "$(per_step "$d/withlock.time")"
