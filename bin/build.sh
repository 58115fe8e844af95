#!/usr/bin/env bash
# Builds the release binary into dist/ (as the Go version's build.sh did).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin m2pool-payment
mkdir -p dist
cp target/release/m2pool-payment dist/
echo "built dist/m2pool-payment ($(dist/m2pool-payment --version))"
