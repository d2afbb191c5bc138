#!/usr/bin/env bash
# Regenerate scripts/hot-symbols.txt: the functions qflow runs when it applies, re-applies
# and plans a workflow, which the linker places side by side at the start of the code
# (build.rs passes the file to lld as its symbol ordering file).
#
# Why: the kernel maps a program's code in 64 KiB windows around each page it touches
# (fault-around), so a few hundred functions spread over 10 MB of code made 5.7 MB of
# qflow's code resident in every run, two thirds of a small apply's memory. Side by side
# they take about 2 MB.
#
# The names are the release build's symbols (Rust's mangled names, stable across edits of
# a function's body; a new toolchain or new dependencies change many of them). A name the
# linker does not find is skipped without a warning, so a stale list only places fewer
# functions; `scripts/hot-symbols.sh --check [BINARY]` prints how many of the listed
# names BINARY (default: this checkout's release build) still has. Run this after
# upgrading Rust or the dependencies.
#
# Needs valgrind (callgrind lists every function a run executed), nm and python3.
# Takes about 2 minutes on 2 cores, after the release build.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
list=$repo/scripts/hot-symbols.txt
qflow=${2:-}
if [ -z "$qflow" ]; then
	cargo build --release --locked --quiet --manifest-path "$repo/Cargo.toml"
	qflow=$repo/target/release/qflow
fi

if [ "${1:-}" = "--check" ]; then
	have=$(nm --defined-only "$qflow" | awk '{print $3}' | sort -u | comm -12 - <(sort -u "$list") | wc -l)
	echo "hot functions placed side by side: $have of the $(wc -l <"$list") listed are in $qflow (the rest are the shared C libraries'; scripts/hot-symbols.sh regenerates the list)"
	exit 0
fi
command -v valgrind >/dev/null || { echo "hot-symbols: valgrind is missing: apt-get install valgrind" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export NO_COLOR=1
unset QFLOW_CACHE
# profile NAME CMD...: run CMD under callgrind, its profile in $work/NAME.cg.
profile() {
	local name=$1
	shift
	valgrind --tool=callgrind --demangle=no --callgrind-out-file="$work/$name.cg" "$@" >/dev/null 2>&1
}
# A small workflow, and one large enough (over 256 KiB) to be parsed in pieces, with a
# lock and a stat cache large enough to be spilled and streamed.
for n in 200 4000; do
	d=$work/tree$n
	python3 "$repo/bench/dag.py" tree "$n" "$d"
	cd "$d"
	profile "first$n" "$qflow" apply -j2 -q workflow.yaml
	profile "noop$n" "$qflow" apply -j2 -q workflow.yaml
	echo changed >>src/f7
	profile "changed$n" "$qflow" apply -j2 workflow.yaml
	profile "plan$n" "$qflow" plan workflow.yaml
	profile "status$n" "$qflow" status workflow.yaml
done
# Callgrind names a function once per profile (`fn=(id) name`, `cfn=(id) name`), and
# marks recursion depth with a `'N` suffix. The C libraries' names are kept too: the
# linker skips what it does not define, and C and assembly code linked into qflow
# (BLAKE3's, libyaml's) is placed with the rest.
# Plus what callgrind does not see: the entry points, BLAKE3's SIMD code for every
# instruction set (the host's CPU picks one; valgrind's emulated CPU may pick another),
# and the code a step's program runs between its clone and its exec (`child_main`: it
# shares qflow's memory, valgrind runs it as a fork it does not follow).
{
	cat "$work"/*.cg
	nm --defined-only "$qflow" | awk '$3 ~ /^_?blake3_/ || $3 ~ /5spawn10child_main/ || $3 == "_start" || $3 == "_init" {print "fn=(0) " $3}'
} |
	sed -nE "s/^c?fn=\([0-9]+\) //p" |
	sed -E "s/'[0-9]+$//" |
	grep -vE '^(0x[0-9a-f]+|\(below main\))$' |
	LC_ALL=C sort -u >"$list.new"
mv "$list.new" "$list"
echo "hot-symbols: $(wc -l <"$list") functions in $list"
