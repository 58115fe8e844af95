#!/usr/bin/env bash
# Shows every flow in a minute against the dev environment of bin/dev.sh
# (run that first, in another terminal): a signed topup and a forged one
# (refused, status 3), a deposit on the dev chain, mined blocks, a withdrawal
# and a batch payment, printing each notification as it arrives.
#
#   bin/demo.sh [CONFIG]    # default: the config bin/dev.sh wrote
#
# Environment: DEV_DIR (where bin/dev.sh put its config, target/dev), DEV_KEY
# (the communication key, dev-secret).
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-${DEV_DIR:-target/dev}/config.json}"
if [ ! -f "$config" ]; then
    echo "no $config: start bin/dev.sh first (in another terminal)" >&2
    exit 1
fi
exec cargo run --quiet --example demo -- "$config"
