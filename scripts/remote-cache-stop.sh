#!/usr/bin/env bash
# Stop the nginx that scripts/remote-cache-start.sh started for the same state directory
# ($QFLOW_REMOTE_CACHE_SRV, default /var/tmp/qflow-remote-cache). The process is found by its
# pidfile and signalled only if /proc/PID/comm still says nginx (a stale pidfile whose pid was
# reused is just removed). Graceful first (transfers in flight finish), then TERM after 10 s.
# Stopping a server that is not running succeeds.
set -euo pipefail
SRV=${QFLOW_REMOTE_CACHE_SRV:-/var/tmp/qflow-remote-cache}
f="$SRV/nginx.pid"
[ -s "$f" ] || exit 0
pid=$(cat "$f")
[[ $pid =~ ^[0-9]+$ ]] || { rm -f "$f"; exit 0; }
if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ]; then
  kill -QUIT "$pid"
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ]; then
    kill -TERM "$pid"
  fi
  printf 'remote-cache-stop: stopped nginx (%s)\n' "$pid" >&2
fi
rm -f "$f"
