#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what the host lacks, build
# qflow, and apply the offline quickstart workflow (results in workflows/out/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-host-deps.sh
cargo build --release --locked
scripts/install-host-deps.sh --man-page target/release/qflow
# The guest's root password: generated once, kept out of git, argv, logs and the lock.
if [ ! -f workflows/secrets/root-password ]; then
  mkdir -p workflows/secrets
  (umask 077 && head -c 12 /dev/urandom | base64 > workflows/secrets/root-password)
  echo "quickstart: the guest's root password is in workflows/secrets/root-password"
fi
# The kernel tree the quickstart builds (and you may edit): Debian's linux-source-6.1.
if [ ! -d workflows/linux-source-6.1 ]; then
  echo "quickstart: unpacking /usr/src/linux-source-6.1.tar.xz into workflows/"
  tar -C workflows -xf /usr/src/linux-source-6.1.tar.xz
fi
exec target/release/qflow apply workflows/quickstart.yaml "$@"
