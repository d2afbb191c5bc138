#!/usr/bin/env bash
# Benchmark: pulling a workflow's results from a remote cache on loopback into an empty
# cache, against curl fetching the very same objects, and against building them.
#
# A private nginx (scripts/remote-cache-start.sh, on free ports, stopped at the end) is
# the server. Phases:
#   build   machine A applies the workflow with --remote-cache-upload (its own cache):
#           with a cold cache this is the time to build; with a warm one only the upload
#   pull    machine B, an empty cache, applies with --remote-cache naming every step (a
#           named step is downloaded whole): every step a remote hit, every object
#           downloaded, verified (sha256 + blake3), committed, fsynced. A plan runs first
#           (timed on its own): it hashes B's inputs (for the quickstart, a kernel source
#           tree of 78,000 files, seconds with a cold page cache), which is not transfer
#   lazy    machine B, an empty cache, applies as a user does (no step named): every step a
#           remote hit, only what must be here downloaded (images whose dependents are all
#           hits stay on the server); the all-remote-hits apply the goal is about
#   curl    the same objects (every file under the server's cas/), 4 at a time as qflow
#           does, `curl -o` into a directory on the same file system (no verification),
#           then again with each file fsynced (qflow makes every object durable)
# Pull, lazy and curl take turns ROUNDS times (default 3) and the medians are reported.
# Prints the figures and the ratios (goals: pull throughput >= 0.8x curl's; an all-remote-
# hits apply of the quickstart in under 10 s).
#
# Usage: bench/remote-cache.sh [WORKFLOW]    (env: QFLOW=path, QFLOW_CACHE=A's cache)
#   no WORKFLOW: a generated one (two 256 MiB random images, a qcow2 overlay, 300 small
#   files) in target/bench-remote-cache/. With WORKFLOW (e.g. workflows/quickstart.yaml)
#   machine A is its own cache (QFLOW_CACHE or .qflow beside it, warm or not); B's apply runs
#   beside it with a cache of its own, and A's out/ links are put back at the end.
# Needs root (nginx). Removes the server, B's cache and the curl copies when done.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=$repo/target/bench-remote-cache
if [ -z "${QFLOW:-}" ]; then
	(cd "$repo" && cargo build --release --quiet)
	QFLOW=$repo/target/release/qflow
fi
command -v curl >/dev/null || { echo "needs curl: apt-get install curl" >&2; exit 2; }
rm -rf "$work"
mkdir -p "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export QFLOW_REMOTE_CACHE_SRV=/tmp/qflow-bench-remote-srv
export QFLOW_REMOTE_CACHE_SRV_READ=127.0.0.1:$(free_port)
export QFLOW_REMOTE_CACHE_SRV_WRITE=127.0.0.1:$(free_port)
"$repo/scripts/remote-cache-stop.sh"
rm -rf "$QFLOW_REMOTE_CACHE_SRV"
"$repo/scripts/remote-cache-start.sh"
# Everything the bench made (hundreds of MB) goes at the end; A's cache only if generated.
cleanup() {
	"$repo/scripts/remote-cache-stop.sh"
	rm -rf "$QFLOW_REMOTE_CACHE_SRV" "$work"
}
trap cleanup EXIT
read_url=http://$QFLOW_REMOTE_CACHE_SRV_READ
write_url=http://$QFLOW_REMOTE_CACHE_SRV_WRITE

if [ $# -ge 1 ]; then
	workflow=$(realpath "$1")
	dir=$(dirname "$workflow")
	a_cache=${QFLOW_CACHE:-$dir/.qflow}
else
	dir=$work/ws
	workflow=$dir/workflow.yaml
	a_cache=$work/a
	mkdir -p "$dir/small"
	for i in $(seq 300); do echo "small file $i $RANDOM" >"$dir/small/f$i"; done
	cat >"$workflow" <<'EOF'
version: 1
steps:
  disk1:
    kind: command
    run: [sh, -c, 'head -c 268435456 /dev/urandom > "$QFLOW_OUT/image.raw"']
    outputs: [image.raw]
  disk2:
    kind: command
    run: [sh, -c, 'head -c 268435456 /dev/urandom > "$QFLOW_OUT/image.raw"']
    outputs: [image.raw]
    env: { WHICH: "2" }
  base:
    kind: image
    size: 1G
  work:
    kind: image
    from: base
  small:
    kind: command
    run: [sh, -c, 'cp -r small "$QFLOW_OUT/"']
    inputs: [small]
    outputs: [small]
EOF
fi
b_cache=$work/b

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }

echo "== build (machine A: $a_cache), uploading" >&2
t0=$(now)
"$QFLOW" apply "$workflow" --cache "$a_cache" --remote-cache "$read_url" \
	--remote-cache-write "$write_url" --remote-cache-upload
t1=$(now)
build=$(secs "$t0" "$t1")

# Pull, lazy and curl take turns, $ROUNDS times (default 3); the medians are reported.
rounds=${ROUNDS:-3}
steps=$("$QFLOW" plan --json "$workflow" --cache "$a_cache" | python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)["steps"]))')
# The last run record of B's cache: bytes down, hits, misses, steps that ran.
b_record() {
	python3 - "$b_cache/runs" <<'EOF'
import json, os, sys
runs = sorted((os.path.join(sys.argv[1], f) for f in os.listdir(sys.argv[1]) if f.endswith(".json")), key=os.path.getmtime)
r = json.load(open(runs[-1]))
print(r["remote"]["bytes_down"], r["remote"]["hits"], r["remote"]["misses"],
      sum(1 for s in r["steps"] if s["outcome"] == "ran"))
EOF
}
names=$(find "$QFLOW_REMOTE_CACHE_SRV/data/cas" -type f -printf '%f\n')
: >"$work/times"
for r in $(seq "$rounds"); do
	echo "== round $r: pull (machine B: empty cache $b_cache)" >&2
	rm -rf "$b_cache"
	# B's inputs hashed first (a plan, which downloads nothing), so the pull's time is the
	# transfer's: looking up, downloading, verifying, committing. Reported on its own.
	t0=$(now)
	"$QFLOW" plan "$workflow" --cache "$b_cache" --remote-cache "$read_url" >/dev/null
	t1=$(now)
	plan_s=$(secs "$t0" "$t1")
	t0=$(now)
	# shellcheck disable=SC2086 # one argument per step name
	"$QFLOW" apply "$workflow" --cache "$b_cache" --remote-cache "$read_url" $steps
	t1=$(now)
	pull=$(secs "$t0" "$t1")
	pulled=$(b_record)
	echo "== round $r: lazy (machine B: empty cache, no step named)" >&2
	rm -rf "$b_cache"
	t0=$(now)
	"$QFLOW" apply "$workflow" --cache "$b_cache" --remote-cache "$read_url"
	t1=$(now)
	lazy=$(secs "$t0" "$t1")
	lazy_record=$(b_record)
	echo "== round $r: curl of the same objects, then the same with fsync of each file" >&2
	for durable in no yes; do
		rm -rf "$work/curl"
		mkdir -p "$work/curl"
		t0=$(now)
		printf '%s\n' $names | xargs -P4 -I{} curl -sf -o "$work/curl/{}" "$read_url/cas/{}"
		if [ $durable = yes ]; then sync "$work/curl"/*; fi
		t1=$(now)
		if [ $durable = no ]; then curl_s=$(secs "$t0" "$t1"); else curl_sync_s=$(secs "$t0" "$t1"); fi
	done
	echo "$pull $curl_s $curl_sync_s $lazy $plan_s" >>"$work/times"
done
curl_bytes=$(du -sb "$work/curl" | cut -f1)
read -r bytes hits misses ran <<<"$pulled"
read -r lazy_bytes lazy_hits _ lazy_ran <<<"$lazy_record"

if [ $# -ge 1 ]; then
	# Put A's out/ links back.
	"$QFLOW" apply "$workflow" --cache "$a_cache" >/dev/null 2>&1 || true
fi

python3 - "$build" "$bytes" "$curl_bytes" "$hits" "$misses" "$ran" "$work/times" \
	"$lazy_bytes" "$lazy_hits" "$lazy_ran" <<'EOF'
import statistics, sys
build, nbytes, curl_bytes, hits, misses, ran, times, lazy_bytes, lazy_hits, lazy_ran = sys.argv[1:]
build, nbytes, curl_bytes = float(build), int(nbytes), int(curl_bytes)
rows = [list(map(float, l.split())) for l in open(times)]
pull, curl_s, curl_sync, lazy, plan_s = (statistics.median(c) for c in zip(*rows))
q = nbytes / pull / 1e6
c = curl_bytes / curl_s / 1e6
cs = curl_bytes / curl_sync / 1e6
print(f"medians of {len(rows)} rounds")
print(f"build (machine A, with upload)       {build:8.2f} s")
print(f"plan on B's empty cache (hashes B's inputs, downloads nothing) {plan_s:.2f} s")
print(f"pull: apply with every step remote    {pull:8.2f} s  ({hits} hits, {misses} misses, {ran} ran), {nbytes/1e6:.1f} MB, {q:.0f} MB/s")
print(f"curl of the same objects, 4 at once   {curl_s:8.2f} s  {curl_bytes/1e6:.1f} MB, {c:.0f} MB/s")
print(f"  the same, each file fsynced         {curl_sync:8.2f} s  {cs:.0f} MB/s")
print(f"pull throughput / curl throughput     {q / c:8.2f}x  (goal >= 0.8x); / curl + fsync {q / cs:.2f}x")
print(f"build / pull                          {build / pull:8.1f}x")
print(f"lazy: apply as a user does            {lazy:8.2f} s  ({lazy_hits} hits, {lazy_ran} ran), {int(lazy_bytes)/1e6:.1f} MB down (goal < 10 s)")
EOF
