#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this Debian host (as root), idempotently.
#
#   packages (slurmctld slurmd slurm-client munge) -> munge key -> /etc/slurm/slurm.conf
#   -> munged, slurmctld, slurmd -> node idle -> `srun hostname`
#
# The slow test tier and `bench/slurm.sh` call it; a second call while everything runs only
# re-checks (a fraction of a second). The daemons run in the foreground of their own session;
# their pids go to $QFLOW_SLURM_STATE/NAME.pid (default /run/qflow-slurm), which
# scripts/slurm-stop.sh reads. A changed slurm.conf restarts slurmctld and slurmd.
#
# How this cluster differs from a production one (and what qflow does about it):
# - no cgroups (proctrack/linuxproc, task/none): `nproc` inside a job shows every core of the
#   node, so a job sizes its jobserver from SLURM_CPUS_PER_TASK; memory limits are not enforced.
# - no slurmdbd: plain `sacct` fails ("accounting storage is disabled"); `sacct -c` reads the
#   job-completion log. qflow needs neither: it asks `squeue -t all`, which keeps finished jobs
#   for MinJobAge (300 s).
# - batch_sched_delay=0 starts queued batch jobs at once instead of on Slurm's ~3 s cadence
#   (QFLOW_SLURM_SCHED="" keeps Slurm's defaults, as on a production cluster).
# - the time limit is checked about every 30 s: a job over its limit ends TIMEOUT up to ~90 s late.
set -euo pipefail

STATE=${QFLOW_SLURM_STATE:-/run/qflow-slurm}
CONF=/etc/slurm/slurm.conf
PARTITION=${QFLOW_SLURM_PARTITION:-main}
SCHED=${QFLOW_SLURM_SCHED-batch_sched_delay=0}
LOGDIR=/var/log/slurm
here=$(cd "$(dirname "$0")" && pwd)

log() { printf 'slurm-start: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

# --- packages ---------------------------------------------------------------------------------
missing=
for bin in slurmctld slurmd sbatch srun squeue scancel munged; do
  command -v "$bin" >/dev/null || missing=1
done
if [ -n "$missing" ]; then
  log "installing slurmctld slurmd slurm-client munge"
  # dpkg must not start the packaged services: this script runs its own daemons.
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Lists already present make this ~3 s faster; fetch them only when the install fails.
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
           slurmctld slurmd slurm-client munge >/dev/null; }
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
mkdir -p "$STATE"

# --- munge key --------------------------------------------------------------------------------
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# --- slurm.conf: one node, this host ----------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc --all)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
if [ "$mem_mb" -gt 1024 ]; then mem_mb=$((mem_mb - 512)); fi   # leave the OS a little
install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld /var/lib/slurm/slurmd "$LOGDIR"
conf_new=$(cat <<CONF
# Written by qflow's scripts/slurm-start.sh: one node, this host.
ClusterName=qflow
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
SlurmctldPidFile=$STATE/slurmctld.daemon.pid
SlurmdPidFile=$STATE/slurmd.daemon.pid
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
${SCHED:+SchedulerParameters=$SCHED}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
KillWait=5
MinJobAge=300
DefMemPerCPU=1024
MailProg=/bin/true
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
)
conf_changed=
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$conf_new" ]; then
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$conf_new" >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
  conf_changed=1
  log "wrote $CONF ($host: $cpus CPUs, $mem_mb MB, partition $PARTITION)"
fi
touch "$LOGDIR/jobcomp.log"
chown slurm:slurm "$LOGDIR/jobcomp.log"

# --- daemons ----------------------------------------------------------------------------------
# alive NAME: the pid in $STATE/NAME.pid runs and is still NAME (a reused pid is not ours).
alive() {
  local f="$STATE/$1.pid" pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
# launch NAME CMD...: run CMD in the foreground of a new session and record its pid.
launch() {
  local name=$1 pid i
  shift
  setsid "$@" >>"$STATE/$name.out" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$STATE/$name.pid"
  for ((i = 0; i < 50; i++)); do alive "$name" && break; sleep 0.1; done
  alive "$name" || die "$name did not start (see $STATE/$name.out)"
  log "started $name (pid $pid)"
}
# wait_for SECONDS WHAT CMD...: retry CMD every 0.1 s.
wait_for() {
  local t=$1 what=$2 i
  shift 2
  for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "timed out after ${t}s waiting for $what (see $STATE/*.out and $LOGDIR/*.log)"
}

if [ -n "$conf_changed" ] && { alive slurmctld || alive slurmd; }; then
  log "slurm.conf changed: restarting slurmctld and slurmd"
  "$here/slurm-stop.sh" --keep-munge
fi

if ! alive munged; then
  # setpriv execs without forking: the recorded pid is munged's own.
  launch munged setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground
fi
wait_for 10 "munged" sh -c 'munge -n | unmunge'

if ! alive slurmctld; then launch slurmctld /usr/sbin/slurmctld -D -i; fi
wait_for 30 "slurmctld" scontrol ping

if ! alive slurmd; then launch slurmd /usr/sbin/slurmd -D; fi
node_ok() {
  case "$(sinfo -h -n "$host" -o %T 2>/dev/null)" in
    idle* | mixed* | allocated* | completing*) return 0 ;;
  esac
  return 1
}
for ((i = 0; i < 300; i++)); do
  node_ok && break
  case "$(sinfo -h -n "$host" -o %T 2>/dev/null || true)" in
    down* | drain* | fail*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.1
done
node_ok || die "node $host is not idle (state: $(sinfo -h -n "$host" -o %T))"

# --- smoke test -------------------------------------------------------------------------------
out=$(timeout 60 srun -N1 -n1 -t 1 hostname) || die "\`srun hostname\` failed"
log "ready: srun hostname -> $out; partition $PARTITION; state in $STATE"
