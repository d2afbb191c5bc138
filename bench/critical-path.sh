#!/usr/bin/env bash
# Benchmark: a first apply of WORKFLOW against the best any scheduler could do on this machine.
#
# The goal: a first apply takes at most 1.1x max(critical path, total CPU / cores), where
#   critical path  the longest path through the DAG, each step weighted by its wall time
#                  in this same run (`duration_ms` in the run record)
#   total CPU      the sum of the steps' CPU times in this same run (`cpu_ms`: user and
#                  system time of everything a step started, from its cgroup or wait4)
#   cores          CPU slots of the apply (`nproc`, the apply's default `--jobs`)
#
# Applies WORKFLOW into an empty cache in a temporary directory (`--cache`), then reads
# that run's record (`<cache>/runs/<run>.json`) and the DAG (`qflow graph`), and prints
# the wall time, the critical path and its steps, total CPU / cores, the bound, and
# wall / bound against the goal, with every step's wall and CPU time.
#
# The user's cache is never used. While the apply runs, the workflow's lock file and its
# `out/` directory are moved aside (so the apply starts from nothing and leaves the user's
# links alone) and put back at the end, also on Ctrl-C.
#
# Usage: bench/critical-path.sh [--keep] WORKFLOW [APPLY OPTIONS]...
#   --keep  keep the temporary cache (its path is printed)
# env: QFLOW=path to a qflow binary (default: a release build of this checkout),
#      WORK=parent of the temporary cache (default: $TMPDIR, else /tmp; the quickstart
#      needs a few GB there).
# Needs: python3.
set -euo pipefail

keep=
if [ "${1:-}" = "--keep" ]; then
	keep=1
	shift
fi
[ $# -ge 1 ] || { echo "usage: bench/critical-path.sh [--keep] WORKFLOW [APPLY OPTIONS]..." >&2; exit 2; }
workflow=$1
shift
[ -f "$workflow" ] || { echo "bench: \`$workflow\` is not a file: name a workflow YAML" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench: \`python3\` is missing: apt-get install python3" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${QFLOW:-}" ]; then
	cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
	QFLOW=$repo/target/release/qflow
fi
unset QFLOW_CACHE QFLOW_REMOTE_CACHE QFLOW_REMOTE_CACHE_UPLOAD QFLOW_REMOTE_CACHE_WRITE

wf_dir=$(cd "$(dirname "$workflow")" && pwd)
wf_file=$wf_dir/$(basename "$workflow")
stem=$(basename "$wf_file")
stem=${stem%.*}
if [ "$stem" = workflow ]; then lock=$wf_dir/qflow.lock; else lock=$wf_dir/$stem.lock; fi
for old in "$wf_dir"/.critical-path-aside.*; do
	[ ! -e "$old" ] || { echo "bench: \`$old\` holds the lock and out/ a killed run of this script moved aside: move them back into $wf_dir, then remove it" >&2; exit 2; }
done
work=$(mktemp -d "${WORK:-${TMPDIR:-/tmp}}/qflow-critical-path.XXXXXX")
cache=$work/cache
aside=$wf_dir/.critical-path-aside.$$

# Put the user's lock and out/ back, whatever happens.
restore() {
	if [ -d "$aside" ]; then
		if [ -e "$aside/lock" ]; then mv -f "$aside/lock" "$lock"; else rm -f "$lock"; fi
		if [ -e "$aside/out" ] || [ -L "$aside/out" ]; then
			# Ours holds only links into the temporary cache.
			rm -rf "$wf_dir/out"
			mv "$aside/out" "$wf_dir/out"
		else
			rm -rf "$wf_dir/out"
		fi
		rmdir "$aside"
	fi
	if [ -z "$keep" ]; then
		rm -rf "$work"
	fi
}
trap restore EXIT
trap 'exit 130' INT TERM HUP

mkdir "$aside"
[ ! -e "$lock" ] || mv "$lock" "$aside/lock"
[ ! -e "$wf_dir/out" ] && [ ! -L "$wf_dir/out" ] || mv "$wf_dir/out" "$aside/out"

cores=$(nproc)
echo "qflow $("$QFLOW" --version | cut -d' ' -f2), $cores cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "first apply of $wf_file into an empty cache ($cache)"
start=$(date +%s.%N)
set +e
# GNU time, when there, gives the CPU of the whole apply: qflow and everything it reaped.
timer=()
[ ! -x /usr/bin/time ] || timer=(/usr/bin/time -f "%U %S" -o "$work/apply.time")
"${timer[@]}" "$QFLOW" apply --cache "$cache" --json "$@" "$wf_file" >"$work/events.json"
code=$?
set -e
end=$(date +%s.%N)
"$QFLOW" graph --cache "$cache" "$wf_file" >"$work/graph.dot" 2>/dev/null || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

python3 - "$work/events.json" "$work/graph.dot" "$cache" "$start" "$end" "$cores" "$code" "$work/apply.time" <<'PY'
import json, os, re, sys
events_file, dot_file, cache, start, end, cores, code, time_file = sys.argv[1:]
wall = float(end) - float(start)
cores = int(cores)
events = [json.loads(l) for l in open(events_file) if l.strip()]
done = [e for e in events if e.get("event") == "run_finished"]
if not done:
    sys.exit(f"bench: the apply ended without a run_finished event (exit {code}); see its messages above")
record = json.load(open(f"{cache}/runs/{done[-1]['run']}.json"))
steps = {s["name"]: s for s in record["steps"]}
for name in record.get("cached", {}):
    steps[name] = {"name": name, "outcome": "cached", "duration_ms": 0}
for name in record.get("pending", []):
    steps[name] = {"name": name, "outcome": "pending", "duration_ms": 0}

# The DAG: `"a" -> "b";` lines of `qflow graph`.
quoted = r'"((?:[^"\\]|\\.)*)"'
edge = re.compile(rf"^\s*{quoted} -> {quoted};")
unescape = lambda s: re.sub(r"\\(.)", r"\1", s)
ups = {name: [] for name in steps}
for line in open(dot_file):
    m = edge.match(line)
    if m:
        a, b = unescape(m.group(1)), unescape(m.group(2))
        if a in ups and b in ups:
            ups[b].append(a)

# Longest path, each step weighted by its wall time in this run (steps in an order
# where each comes after its upstream: Kahn's).
dur = {n: s.get("duration_ms", 0) / 1000 for n, s in steps.items()}
downs = {n: [] for n in steps}
waiting = {n: len(ups[n]) for n in steps}
for b, us in ups.items():
    for a in us:
        downs[a].append(b)
order = [n for n in steps if waiting[n] == 0]
for n in order:
    for d in downs[n]:
        waiting[d] -= 1
        if waiting[d] == 0:
            order.append(d)
finish, via = {}, {}
for n in order:
    best = max(ups[n], key=lambda u: finish[u], default=None)
    finish[n] = dur[n] + (finish[best] if best is not None else 0)
    via[n] = best
last = max(order, key=lambda n: finish[n], default=None)
path = []
while last is not None:
    path.append(last)
    last = via[last]
path.reverse()
critical = sum(dur[n] for n in path)

cpu_known = [s for s in steps.values() if s.get("cpu_ms") is not None]
ran = [s for s in steps.values() if s["outcome"] == "ran"]
total_cpu = sum(s["cpu_ms"] for s in cpu_known) / 1000
bound = max(critical, total_cpu / cores)
counts = {}
for s in steps.values():
    counts[s["outcome"]] = counts.get(s["outcome"], 0) + 1

print(f"steps:            {len(steps)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})")
print(f"wall time:        {wall:8.2f} s   (run record: {record['duration_ms'] / 1000:.2f} s)")
starts = [s["start_ms"] / 1000 for s in steps.values() if s.get("start_ms") is not None]
if starts:
    # Before it: the cache lock, tool identities, host checks; inputs are hashed beside the run.
    print(f"first step start: {min(starts):8.2f} s   after the apply started")
print(f"critical path:    {critical:8.2f} s   ({len(path)} steps: {' -> '.join(path)})")
print(f"total CPU:        {total_cpu:8.2f} s   / {cores} cores = {total_cpu / cores:.2f} s")
print(f"bound:            {bound:8.2f} s   (max of the two: {'critical path' if critical >= total_cpu / cores else 'CPU / cores'})")
ratio = wall / bound if bound > 0 else float("inf")
print(f"wall / bound:     {ratio:8.2f}x   (goal: at most 1.1x; {'met' if ratio <= 1.1 else 'not met'})")
print(f"CPU busy:         {100 * total_cpu / (wall * cores):7.0f} %   of {cores} cores over the wall time")
if os.path.exists(time_file):
    try:
        user, system = map(float, open(time_file).read().split()[-2:])
        whole = user + system
        print(f"whole apply CPU:  {whole:8.2f} s   (qflow and all it ran, GNU time; outside the steps' CPU: {whole - total_cpu:.2f} s)")
    except ValueError:
        pass
if len(cpu_known) < len(ran):
    print(f"note: {len(ran) - len(cpu_known)} steps that ran have no CPU time (run elsewhere, e.g. Slurm): total CPU is a lower bound")
if record.get("interrupted") or int(code) != 0:
    print(f"note: the apply did not succeed (exit {code}): the figures cover the steps that ran")
print()
print("  each step's start and end (s after the run's start), wall and CPU time; * on the critical path")
print(f"  {'step':<28} {'outcome':<10} {'start':>8} {'end':>8} {'wall':>8} {'cpu':>8} {'cpu/wall':>8}")
on_path = set(path)
shown = 40
def start_of(s):
    return s.get("start_ms", float("inf"))
by_start = sorted(steps.values(), key=lambda s: (start_of(s), s["name"]))
if len(by_start) > shown:
    # The longest ones, shown in start order.
    keep = {s["name"] for s in sorted(by_start, key=lambda s: -s.get("duration_ms", 0))[:shown]}
    keep |= on_path
    by_start = [s for s in by_start if s["name"] in keep]
for s in by_start:
    w, c, st = s.get("duration_ms", 0) / 1000, s.get("cpu_ms"), s.get("start_ms")
    cell = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    print(f"  {s['name']:<28} {s['outcome']:<10} {cell(st / 1000 if st is not None else None)} "
          f"{cell((st / 1000 + w) if st is not None else None)} {w:8.2f} {cell(c / 1000 if c is not None else None)} "
          f"{cell(c / 1000 / w if c is not None and w > 0 else None)}{' *' if s['name'] in on_path else ''}")
if len(by_start) < len(steps):
    print(f"  ({len(steps) - len(by_start)} shorter steps not shown)")
PY
if [ -n "$keep" ]; then
	echo
	echo "kept: $work (the cache: $cache)"
fi
exit "$code"
