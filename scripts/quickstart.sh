#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what the host lacks, build
# qflow, and apply the offline quickstart workflow (results in workflows/out/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-host-deps.sh
cargo build --release --locked
exec target/release/qflow apply workflows/quickstart.yaml "$@"
