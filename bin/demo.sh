#!/usr/bin/env bash
# Shows every flow in a minute against the dev environment of bin/dev.sh
# (run that first, in another terminal): a signed topup, a deposit on the dev
# chain, mined blocks, a withdrawal and a batch payment, printing each
# notification as it arrives.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-target/dev/config.json}"
if [ ! -f "$config" ]; then
    echo "no $config: start bin/dev.sh first (in another terminal)" >&2
    exit 1
fi
exec cargo run --quiet --example demo -- "$config"
