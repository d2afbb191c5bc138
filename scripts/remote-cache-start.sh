#!/usr/bin/env bash
# Start a remote cache server for qflow on loopback: Debian's nginx as a write-once store
# speaking Bazel's HTTP remote-cache protocol, idempotently and in well under a second once
# nginx is installed (the first run installs it).
#
#   GET/HEAD /ac/<64 hex> and /cas/<64 hex>   on $QFLOW_REMOTE_CACHE_SRV_READ (read-only)
#   PUT, GET/HEAD the same names              on $QFLOW_REMOTE_CACHE_SRV_WRITE; write-once:
#                                             a PUT of a name that exists answers 409 Conflict
#                                             and the stored bytes stay
#
# Environment (all optional):
#   QFLOW_REMOTE_CACHE_SRV        state directory (default /var/tmp/qflow-remote-cache):
#                                 data/ (the objects), tmp/ (request bodies being received, on
#                                 the same file system so a finished PUT is one rename(2) and a
#                                 reader never sees a partial object), logs/, nginx.conf, nginx.pid
#   QFLOW_REMOTE_CACHE_SRV_READ   listen address for reads  (default 127.0.0.1:8088)
#   QFLOW_REMOTE_CACHE_SRV_WRITE  listen address for writes (default 127.0.0.1:8089)
#   QFLOW_REMOTE_CACHE_SRV_AUTH   demand credentials on both ports: `basic` (user and password
#                                 read from QFLOW_REMOTE_CACHE_SRV_USER and
#                                 QFLOW_REMOTE_CACHE_SRV_PASSWORD) or `bearer` (token read from
#                                 QFLOW_REMOTE_CACHE_SRV_TOKEN); unset: no credentials.
#                                 Secrets are read from the environment, never from argv, and
#                                 land only in nginx.conf (mode 0600, as the Authorization value).
#
# nginx checks nothing about the bytes: wrong bytes under a valid name are accepted, so the
# client verifies everything it downloads. Stop with scripts/remote-cache-stop.sh.
set -euo pipefail
SRV=${QFLOW_REMOTE_CACHE_SRV:-/var/tmp/qflow-remote-cache}
READ=${QFLOW_REMOTE_CACHE_SRV_READ:-127.0.0.1:8088}
WRITE=${QFLOW_REMOTE_CACHE_SRV_WRITE:-127.0.0.1:8089}
AUTH=${QFLOW_REMOTE_CACHE_SRV_AUTH:-}
log() { printf 'remote-cache-start: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root (nginx is installed with apt-get and runs its workers as www-data)"; exit 2; }
for addr in "$READ" "$WRITE"; do
  [[ $addr =~ ^[0-9.]+:[0-9]+$|^\[[0-9a-fA-F:]+\]:[0-9]+$ ]] \
    || { log "\`$addr\` is not an address like 127.0.0.1:8088; fix QFLOW_REMOTE_CACHE_SRV_READ/WRITE"; exit 2; }
done

if ! command -v nginx >/dev/null; then
  log "installing nginx (Debian's; its dav module does PUT)"
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Keep dpkg from starting the packaged nginx service on port 80.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx >/dev/null
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

mkdir -p "$SRV"/{data,tmp,logs}
chown www-data: "$SRV/data" "$SRV/tmp"

# The credentials check is a map on the Authorization header, tested in nginx's rewrite phase
# before the write-once check, so a request without credentials learns nothing (not even
# whether a name exists).
auth_map='map $http_authorization $qflow_auth_ok { default 1; }'
case "$AUTH" in
  "") ;;
  basic)
    : "${QFLOW_REMOTE_CACHE_SRV_USER:?set QFLOW_REMOTE_CACHE_SRV_USER for basic auth}"
    : "${QFLOW_REMOTE_CACHE_SRV_PASSWORD:?set QFLOW_REMOTE_CACHE_SRV_PASSWORD for basic auth}"
    expected="Basic $(printf '%s:%s' "$QFLOW_REMOTE_CACHE_SRV_USER" "$QFLOW_REMOTE_CACHE_SRV_PASSWORD" | base64 -w0)"
    auth_map="map \$http_authorization \$qflow_auth_ok { default 0; \"$expected\" 1; }"
    ;;
  bearer)
    : "${QFLOW_REMOTE_CACHE_SRV_TOKEN:?set QFLOW_REMOTE_CACHE_SRV_TOKEN for bearer auth}"
    [[ $QFLOW_REMOTE_CACHE_SRV_TOKEN =~ ^[A-Za-z0-9._~+/=-]+$ ]] \
      || { log "QFLOW_REMOTE_CACHE_SRV_TOKEN must be a token68 (letters, digits, ._~+/=-)"; exit 2; }
    auth_map="map \$http_authorization \$qflow_auth_ok { default 0; \"Bearer $QFLOW_REMOTE_CACHE_SRV_TOKEN\" 1; }"
    ;;
  *) log "QFLOW_REMOTE_CACHE_SRV_AUTH is \`$AUTH\`; use \`basic\`, \`bearer\` or leave it unset"; exit 2 ;;
esac
challenge=
[ "$AUTH" = basic ] && challenge='add_header WWW-Authenticate "Basic realm=\"qflow\"" always;'
[ "$AUTH" = bearer ] && challenge='add_header WWW-Authenticate "Bearer realm=\"qflow\"" always;'

conf_new=$(cat <<CONF
user www-data;
worker_processes 2;
pid $SRV/nginx.pid;
error_log $SRV/logs/error.log warn;
daemon off;
events { worker_connections 512; }
http {
  # The last two fields give each request's start: \$msec (when logged) - \$request_time.
  log_format qflow '\$remote_addr [\$time_local] "\$request" \$status \$body_bytes_sent \$request_time \$msec';
  access_log $SRV/logs/access.log qflow;
  sendfile on; tcp_nopush on;
  client_max_body_size 0;
  client_body_temp_path $SRV/tmp;
  $auth_map
  server {
    listen $READ;
    root $SRV/data;
    $challenge
    if (\$qflow_auth_ok = 0) { return 401; }
    location ~ "^/(ac|cas)/[0-9a-f]{64}\$" { limit_except GET { deny all; } }
    location / { return 404; }
  }
  server {
    listen $WRITE;
    root $SRV/data;
    $challenge
    if (\$qflow_auth_ok = 0) { return 401; }
    set \$put_state "";
    if (-f \$request_filename) { set \$put_state "E"; }
    if (\$request_method = PUT) { set \$put_state "\${put_state}P"; }
    if (\$put_state = "EP") { return 409; }
    location ~ "^/(ac|cas)/[0-9a-f]{64}\$" {
      limit_except GET PUT { deny all; }
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }
    location / { return 404; }
  }
}
CONF
)
changed=
if [ ! -f "$SRV/nginx.conf" ] || [ "$(cat "$SRV/nginx.conf")" != "$conf_new" ]; then
  (umask 077; printf '%s\n' "$conf_new" > "$SRV/nginx.conf.new")
  mv "$SRV/nginx.conf.new" "$SRV/nginx.conf"
  changed=1
fi
nginx -t -q -c "$SRV/nginx.conf" -p "$SRV" 2>>"$SRV/logs/nginx.out" \
  || { log "nginx rejected $SRV/nginx.conf (see $SRV/logs/nginx.out)"; exit 1; }

alive() {
  [ -s "$SRV/nginx.pid" ] && [ "$(cat "/proc/$(cat "$SRV/nginx.pid")/comm" 2>/dev/null)" = nginx ]
}
if alive; then
  if [ -n "$changed" ]; then
    kill -HUP "$(cat "$SRV/nginx.pid")"
    log "reloaded the configuration"
  fi
else
  rm -f "$SRV/nginx.pid"
  setsid nginx -c "$SRV/nginx.conf" -p "$SRV" >>"$SRV/logs/nginx.out" 2>&1 </dev/null &
  for _ in $(seq 50); do alive && break; sleep 0.1; done
  alive || { log "nginx did not start (see $SRV/logs/nginx.out and $SRV/logs/error.log)"; exit 1; }
  log "started nginx (pid $(cat "$SRV/nginx.pid"))"
fi

# Ready when the read port answers (any HTTP status: 404 for a name nobody stored, 401 when
# credentials are demanded).
probe="http://$READ/cas/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
for _ in $(seq 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -I "$probe" || true)
  [ "$code" != 000 ] && break
  sleep 0.1
done
[ "$code" != 000 ] || { log "nginx does not answer on $READ (see $SRV/logs/error.log)"; exit 1; }
log "ready: read http://$READ  write http://$WRITE  data $SRV/data"
