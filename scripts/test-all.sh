#!/usr/bin/env bash
# Every test, the slow end-to-end tier included, after installing what the
# host lacks. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-host-deps.sh
cargo build --locked --all-targets
cargo clippy --locked --all-targets -- -D warnings
cargo fmt --check
exec cargo test --locked --workspace --no-fail-fast -- --include-ignored "$@"
