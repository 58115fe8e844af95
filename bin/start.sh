#!/usr/bin/env bash
# Starts the daemon in the background, as the Go version's start.sh did:
#   bin/start.sh KEY [CONFIG]        (CONFIG defaults to ./config.json)
# The key is handed over in the environment, not on the command line, so it
# does not show in the process list. Output goes to logs/daemon.out; the pid
# to m2pool-payment.pid. Stop it with: kill "$(cat m2pool-payment.pid)".
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bin/start.sh KEY [CONFIG]" >&2
    exit 2
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${M2POOL_BIN:-$here/dist/m2pool-payment}"
[ -x "$bin" ] || bin="$here/target/release/m2pool-payment"
[ -x "$bin" ] || { "$here/bin/build.sh" >&2; bin="$here/dist/m2pool-payment"; }
config="${2:-./config.json}"
"$bin" check-config --config "$config" >/dev/null
mkdir -p logs
M2POOL_PAYMENT_KEY="$1" nohup "$bin" --config "$config" >>logs/daemon.out 2>&1 &
echo $! > m2pool-payment.pid
echo "m2pool-payment started (pid $(cat m2pool-payment.pid)); output in logs/daemon.out"
