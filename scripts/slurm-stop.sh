#!/usr/bin/env bash
# Stop the single-node Slurm cluster that scripts/slurm-start.sh started, and only it:
# each pid comes from $QFLOW_SLURM_STATE/NAME.pid and is signalled only while
# /proc/PID/comm still names that daemon. The cluster's queued and running jobs are
# cancelled first. Idempotent: with nothing running it does nothing.
#   --keep-munge   leave munged running (slurm-start.sh uses it after a slurm.conf change)
set -uo pipefail
STATE=${QFLOW_SLURM_STATE:-/run/qflow-slurm}
keep_munge=
if [ "${1:-}" = --keep-munge ]; then keep_munge=1; fi
log() { printf 'slurm-stop: %s\n' "$*" >&2; }

alive() {
  local f="$STATE/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
# signal NAME: TERM the daemon if it is ours and alive; print its pid.
signal() {
  local pid
  if ! alive "$1"; then
    rm -f "$STATE/$1.pid"
    return 0
  fi
  pid=$(cat "$STATE/$1.pid")
  kill -TERM "$pid" 2>/dev/null
  echo "$pid"
}
# reap NAME PID: wait up to 15 s for it to exit (about 2 s each), then KILL.
reap() {
  local name=$1 pid=$2 i
  [ -n "$pid" ] || return 0
  for ((i = 0; i < 150; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then
    log "$name ($pid) ignored TERM: KILL"
    kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$STATE/$name.pid"
  log "stopped $name ($pid)"
}

if alive slurmctld && [ -z "$keep_munge" ]; then
  mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
  if [ ${#jobs[@]} -gt 0 ]; then
    log "cancelling jobs: ${jobs[*]}"
    scancel "${jobs[@]}" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
fi
names=(slurmd slurmctld)
if [ -z "$keep_munge" ]; then names+=(munged); fi
declare -A pids
# Signal all first, then wait: about 2 s in all instead of about 6 s one after another.
for n in "${names[@]}"; do pids[$n]=$(signal "$n"); done
for n in "${names[@]}"; do reap "$n" "${pids[$n]}"; done
exit 0
