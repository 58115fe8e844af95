#!/usr/bin/env bash
# The performance benchmark (README, "Performance"): every figure of the daemon next to the raw limit
# measured in the same run; a table on stdout, JSON in target/bench/report.json.
#
#   bin/bench.sh           # full sizes, release build (a few minutes)
#   bin/bench.sh --quick   # small sizes, dev build: CI runs it so it cannot rot
#
# It starts its own anvil nodes and uses the local RabbitMQ (installed and
# started if absent) and fresh SQLite stores.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
ensure_anvil
ensure_rabbitmq
export ANVIL_BIN
cd "$ROOT"
if [ "${1:-}" = "--quick" ]; then
    cargo bench --profile dev --bench gateway -- --quick
else
    cargo bench --bench gateway
fi
