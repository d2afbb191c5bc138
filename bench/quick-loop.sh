#!/usr/bin/env bash
# Benchmark: the quickstart's edit-compile-boot loop, against its goal of 20 s.
#
# One `pr_notice` line added to `start_kernel` in init/main.c of the quickstart's
# kernel tree, then `qflow apply quickstart.yaml quick`: the kernel's incremental
# build in its kept build tree and the `init: minimal` boot of the workload.
# Each round adds a line unique to the run (so no cached kernel matches it) and
# puts init/main.c back afterwards; the file is put back on exit and on Ctrl-C too.
#
# Prints per round, then the median and the best round: the total, the kernel step,
# the boot, the rest (qflow itself), the steps' CPU seconds, make's own time, the
# boot's time to the root shell, and that the boot's console shows the new line.
#
# Usage: bench/quick-loop.sh [WORKFLOWS_DIR]
#   WORKFLOWS_DIR  the directory holding quickstart.yaml and linux-source-6.1/ (default:
#                  the repository's workflows/, set up by scripts/quickstart.sh)
#   env QFLOW      the qflow binary (default: target/release/qflow, built first)
#   env CACHE      a qflow cache (`--cache`); default the workflow's own
#   env ROUNDS     rounds to time (default 3)
# When the kernel step has no kept build tree yet (a first run, or a cache whose
# kernel came from elsewhere), a warm-up round builds the whole kernel first,
# untimed: the loop being measured is the one after a kernel edit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(cd "${1:-$repo/workflows}" && pwd)
rounds=${ROUNDS:-3}
goal=20
file=$dir/linux-source-6.1/init/main.c

if [ -z "${QFLOW:-}" ]; then
	(cd "$repo" && cargo build --release --quiet)
	QFLOW=$repo/target/release/qflow
fi
[ -f "$dir/quickstart.yaml" ] || { echo "no quickstart.yaml in $dir" >&2; exit 2; }
[ -f "$file" ] || { echo "no $file: run scripts/quickstart.sh once (it unpacks the kernel tree)" >&2; exit 2; }
cache=${CACHE:-$dir/.qflow}
cache_args=()
[ -n "${CACHE:-}" ] && cache_args=(--cache "$CACHE")

saved=$(mktemp)
log=$(mktemp)
cp -p "$file" "$saved"
restore() { cp -p "$saved" "$file"; }
trap 'restore; rm -f "$saved" "$log"' EXIT
trap 'exit 130' INT TERM

# Add `pr_notice("qflow quick loop TOKEN")` after the stack-end magic in start_kernel.
edit() {
	python3 - "$file" "$1" <<'PY'
import sys
path, token = sys.argv[1], sys.argv[2]
text = open(path).read()
at = text.index("start_kernel(void)")
at = text.index("set_task_stack_end_magic(&init_task);\n", at)
at = text.index("\n", at) + 1
text = text[:at] + f'\tpr_notice("qflow quick loop {token}\\n");\n' + text[at:]
open(path, "w").write(text)
PY
}

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
minimum() { printf '%s\n' "$@" | sort -g | head -1; }

# One apply of `quick` after an edit. Sets total, kernel, kcpu, boot, bcpu, start,
# make, ready and shown.
round() {
	local token=$1 t record klog blog
	restore
	edit "$token"
	t=$(now)
	"$QFLOW" apply "$dir/quickstart.yaml" quick "${cache_args[@]}" 2> "$log" ||
		{ cat "$log" >&2; exit 1; }
	total=$(echo "$(now) - $t" | bc -l)
	restore
	record=$(ls -t "$cache"/runs/*.json | head -1)
	# The run record: each step's wall and CPU time, when the kernel started, the logs.
	read -r kernel kcpu boot bcpu start klog blog < <(python3 - "$record" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
steps = {s["name"]: s for s in run["steps"]}
def get(name, field, default):
    return steps[name].get(field, default) if name in steps else default
print(get("kernel", "duration_ms", 0) / 1000, get("kernel", "cpu_ms", 0) / 1000,
      get("quick", "duration_ms", 0) / 1000, get("quick", "cpu_ms", 0) / 1000,
      get("kernel", "start_ms", 0) / 1000, get("kernel", "log", "-"), get("quick", "log", "-"))
PY
	)
	make=$(grep -o 'make took [0-9.]*[a-z]*' "$klog" 2>/dev/null | tail -1 | awk '{print $3}')
	ready=$(grep -o 'guest ready after [0-9.]*s' "$blog" 2>/dev/null | awk '{print $4}')
	if grep -q "qflow quick loop $token" "$blog" 2>/dev/null; then shown=yes; else shown=NO; fi
}

build_tree() { ls -d "$cache"/state/quickstart/kernel/build-*/vmlinux 2>/dev/null | head -1; }

token=$(date +%s%N)
if [ -z "$(build_tree)" ]; then
	echo "no kept kernel build tree in $cache: a warm-up round builds the whole kernel (minutes)"
	round "${token}w"
	printf 'warm-up: %.1f s (kernel %.1f s)\n' "$total" "$kernel"
fi

totals=() kernels=() boots=() rests=() kcpus=() bcpus=()
printf '%-6s %6s %6s %6s %6s  %8s %8s  %-7s %-6s %-5s %s\n' round total kernel boot rest \
	kern-cpu boot-cpu make ready start printk
for i in $(seq "$rounds"); do
	round "${token}r$i"
	rest=$(echo "$total - $kernel - $boot" | bc -l)
	totals+=("$total") kernels+=("$kernel") boots+=("$boot") rests+=("$rest")
	kcpus+=("$kcpu") bcpus+=("$bcpu")
	printf '%-6s %6.1f %6.1f %6.1f %6.1f  %8.1f %8.1f  %-7s %-6s %-5.1f %s\n' "$i" "$total" \
		"$kernel" "$boot" "$rest" "$kcpu" "$bcpu" "${make:-?}" "${ready:-?}" "$start" "$shown"
done
for stat in median minimum; do
	label=$stat
	[ "$stat" = minimum ] && label=best
	printf '%-6s %6.1f %6.1f %6.1f %6.1f  %8.1f %8.1f\n' "$label" "$($stat "${totals[@]}")" \
		"$($stat "${kernels[@]}")" "$($stat "${boots[@]}")" "$($stat "${rests[@]}")" \
		"$($stat "${kcpus[@]}")" "$($stat "${bcpus[@]}")"
done
echo "  total: wall time of \`qflow apply quickstart.yaml quick\` after the edit; kernel, boot:"
echo "  the steps' wall time; rest: qflow itself (hashing the kernel tree, keys, recording);"
echo "  kern-cpu, boot-cpu: CPU seconds of the steps with their children (less sensitive to"
echo "  other load than wall time); make: make's own time; ready: the boot's time to the root"
echo "  shell; start: when the kernel step started; printk: the new line is on the console."
t=$(median "${totals[@]}")
if [ "$(echo "$t <= $goal" | bc -l)" = 1 ]; then verdict=met; else verdict="NOT met"; fi
printf 'edit to result (median): %.1f s, goal %d s: %s\n' "$t" "$goal" "$verdict"
printf 'load average at the end: %s; %s cores\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)"
