#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what the host lacks, build
# qflow, and apply the offline quickstart workflow (results in workflows/out/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-host-deps.sh
cargo build --release --locked
# The guest's root password: generated once, kept out of git, argv, logs and the lock.
if [ ! -f workflows/secrets/root-password ]; then
  mkdir -p workflows/secrets
  (umask 077 && head -c 12 /dev/urandom | base64 > workflows/secrets/root-password)
  echo "quickstart: the guest's root password is in workflows/secrets/root-password"
fi
exec target/release/qflow apply workflows/quickstart.yaml "$@"
