#!/usr/bin/env bash
# Benchmark: what `qflow apply` adds to make's own incremental kernel build.
#
# On one kernel tree (Debian's linux-source-6.1, tinyconfig + the QEMU guest
# fragment) and one kept build directory:
#   1. a clean build through `qflow apply` (timed once);
#   2. ROUNDS times: append one line to kernel/reboot.c, `qflow apply`; then
#      append another, bare `make -jJOBS O=<the same build dir> bzImage` with
#      the same KBUILD_BUILD_* pins. Both do exactly one compile and a relink.
# Prints the medians and the ratios (target: qflow adds at most 15%).
#
# Also times a no-op `qflow apply` (qflow's fixed cost on a 78k-file tree).
#
# Usage: bench/kernel-incremental.sh [WORK_DIR]   (env: JOBS=2 ROUNDS=5 QFLOW=path CLEAN=1)
# WORK_DIR (default target/bench-kernel) keeps the unpacked tree; the qflow
# cache inside it is wiped at the start so step 1 is a clean build. CLEAN=0
# keeps the cache of a previous run and skips the clean build.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$repo/target/bench-kernel}
jobs=${JOBS:-2}
rounds=${ROUNDS:-5}
clean_build=${CLEAN:-1}
tarball=/usr/src/linux-source-6.1.tar.xz
fragment=$repo/workflows/quickstart/qemu-guest.config

if [ -z "${QFLOW:-}" ]; then
	(cd "$repo" && cargo build --release --quiet)
	QFLOW=$repo/target/release/qflow
fi
[ -f "$tarball" ] || { echo "needs $tarball: apt-get install linux-source-6.1" >&2; exit 2; }

mkdir -p "$work"
tree=$work/linux
if [ ! -f "$tree/.bench-complete" ]; then
	rm -rf "$tree" "$tree.tmp"
	mkdir -p "$tree.tmp"
	tar -xf "$tarball" --strip-components=1 -C "$tree.tmp"
	cp "$tree.tmp/kernel/reboot.c" "$work/reboot.c.orig"
	touch "$tree.tmp/.bench-complete"
	mv "$tree.tmp" "$tree"
fi
cp "$work/reboot.c.orig" "$tree/kernel/reboot.c"

if [ "$clean_build" = 1 ] || [ ! -d "$work/.qflow" ]; then
	clean_build=1
	rm -rf "$work/.qflow" "$work/out" "$work/qflow.lock"
fi
cat > "$work/workflow.yaml" <<EOF
version: 1
name: bench
steps:
  kernel:
    kind: kernel
    source: ./linux
    config: tinyconfig
    fragments: [$fragment]
    jobs: $jobs
EOF

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

cd "$work"
t=$(now)
"$QFLOW" apply --jobs "$jobs" 2> "$work/clean.log" || { cat "$work/clean.log" >&2; exit 1; }
clean=$(elapsed "$t")
[ "$clean_build" = 1 ] || clean=
t=$(now)
"$QFLOW" apply --jobs "$jobs" 2> /dev/null
noop=$(elapsed "$t")

build=$(echo "$work"/.qflow/state/*/kernel/build-*)
[ -d "$build" ] || { echo "cannot find the kept build tree under $work/.qflow/state" >&2; exit 1; }

# A token unique to this run, so no edit matches a result already in a kept cache.
token=$(date +%s%N)
qflow_times=()
make_times=()
for i in $(seq "$rounds"); do
	echo "int qflow_bench_q${i}_$token = $i;" >> "$tree/kernel/reboot.c"
	t=$(now)
	"$QFLOW" apply --jobs "$jobs" 2>> "$work/incremental.log"
	qflow_times+=("$(elapsed "$t")")

	echo "int qflow_bench_m${i}_$token = $i;" >> "$tree/kernel/reboot.c"
	t=$(now)
	KBUILD_BUILD_TIMESTAMP='Thu Jan  1 00:00:00 UTC 1970' KBUILD_BUILD_USER=qflow KBUILD_BUILD_HOST=qflow \
		KBUILD_BUILD_VERSION=1 LC_ALL=C \
		make -j"$jobs" -C "$tree" O="$build" bzImage > /dev/null
	make_times+=("$(elapsed "$t")")
done
cp "$work/reboot.c.orig" "$tree/kernel/reboot.c"

q=$(median "${qflow_times[@]}")
m=$(median "${make_times[@]}")
printf 'kernel: linux-source-6.1 tinyconfig + qemu-guest.config, %s jobs, %s rounds\n' "$jobs" "$rounds"
if [ -n "$clean" ]; then
	printf 'clean build (qflow apply):            %8.2f s\n' "$clean"
fi
printf 'no-op qflow apply:                    %8.2f s\n' "$noop"
printf 'one-line edit, qflow apply (median):  %8.2f s   [%s]\n' "$q" "${qflow_times[*]}"
printf 'one-line edit, bare make (median):    %8.2f s   [%s]\n' "$m" "${make_times[*]}"
printf 'qflow / make:                         %8.3f   (target <= 1.15)\n' "$(echo "$q / $m" | bc -l)"
if [ -n "$clean" ]; then
	printf 'clean / incremental (qflow):          %8.1f\n' "$(echo "$clean / $q" | bc -l)"
fi
printf 'load average at the end:              %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
