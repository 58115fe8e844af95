#!/usr/bin/env bash
# Local dev environment in one command: an anvil chain with a test USDT, a dev
# config with embedded SQLite stores, and the daemon in the foreground.
#
#   bin/dev.sh            # Ctrl-C stops the daemon and the chain
#
# Environment (all optional; the defaults are what a newcomer wants):
#   DEV_PORT            anvil's port (8545)
#   DEV_HTTP_PORT       the daemon's /healthz and /metrics (9100)
#   DEV_DIR             config, stores and logs (target/dev)
#   DEV_AMQP            RabbitMQ URI (amqp://guest:guest@127.0.0.1:5672/%2f)
#   DEV_QUEUE_PREFIX    first word of every queue and exchange name (pay)
#   DEV_KEY             communication key (dev-secret)
#   DEV_WALLET_KEY      wallet key-encryption key (dev-wallet-key)
#   DEV_CONFIRM_HEIGHT  blocks until final (20)
#   DEV_BLOCK_TIME      seconds per block (1; 0 = mine on every transaction)
#   DEV_CHAINS          networks to run (ETH; ETH,BSC adds a BSC-like dev chain:
#                       chain id 56, native BNB, legacy gas price, USDT with 18
#                       decimals, on DEV_PORT + 1)
#   DEV_BIN             a built m2pool-payment to run instead of building one
#   RUST_LOG            the daemon's log filter
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PORT="${DEV_PORT:-8545}"
HTTP_PORT="${DEV_HTTP_PORT:-9100}"
KEY="${DEV_KEY:-dev-secret}"
CONFIRM="${DEV_CONFIRM_HEIGHT:-20}"
BLOCK_TIME="${DEV_BLOCK_TIME:-1}"
DEV="${DEV_DIR:-$ROOT/target/dev}"
AMQP="${DEV_AMQP:-amqp://guest:guest@127.0.0.1:5672/%2f}"
P="${DEV_QUEUE_PREFIX:-pay}"
RPC="http://127.0.0.1:$PORT"
CHAINS="$(echo "${DEV_CHAINS:-ETH}" | tr 'a-z' 'A-Z' | tr -d ' ')"
case ",$CHAINS," in
    ,ETH,) BSC_PORT= ;;
    ,ETH,BSC,) BSC_PORT=$((PORT + 1)) ;;
    *) echo "DEV_CHAINS: ETH or ETH,BSC (not $CHAINS)" >&2; exit 1 ;;
esac
# anvil's well-known dev accounts (mnemonic "test test ... junk").
DEPLOYER=0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266
USER_ADDR=0x70997970c51812dc3a010c7d01b50e0d17dc79c8
USER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d

ensure_anvil
ensure_rabbitmq
for p in "$PORT:DEV_PORT" "$HTTP_PORT:DEV_HTTP_PORT" ${BSC_PORT:+"$BSC_PORT:DEV_PORT"}; do
    if port_open "${p%%:*}"; then
        echo "port ${p%%:*} is taken: stop what runs there or set ${p#*:}" >&2
        exit 1
    fi
done

if [ -n "${DEV_BIN:-}" ]; then
    BIN="$DEV_BIN"
else
    say "building m2pool-payment"
    (cd "$ROOT" && cargo build --quiet --bin m2pool-payment)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/m2pool-payment"
fi

mkdir -p "$DEV"
rm -f "$DEV"/msg.db* "$DEV"/wallet.db*
mining=(); [ "$BLOCK_TIME" != 0 ] && mining=(--block-time "$BLOCK_TIME")
say "starting anvil on $RPC"
"$ANVIL_BIN" --port "$PORT" "${mining[@]}" >"$DEV/anvil.log" 2>&1 &
ANVIL_PID=$!
BSC_PID=
if [ -n "$BSC_PORT" ]; then
    say "starting the BSC-like dev chain on http://127.0.0.1:$BSC_PORT"
    "$ANVIL_BIN" --port "$BSC_PORT" --chain-id 56 "${mining[@]}" >"$DEV/anvil-bsc.log" 2>&1 &
    BSC_PID=$!
fi
DAEMON_PID=
cleanup() {
    kill $DAEMON_PID $ANVIL_PID $BSC_PID 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port "$PORT" 30 anvil
[ -z "$BSC_PORT" ] || wait_port "$BSC_PORT" 30 "the BSC-like anvil"

rpc() { # method params-json [url] -> result (raw JSON)
    curl -sf -H 'content-type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":$2}" "${3:-$RPC}" |
        sed -e 's/.*"result":\(.*\)}$/\1/'
}
receipt() { # tx hash [url] -> receipt JSON, waiting for it
    local r
    for _ in $(seq 1 100); do
        r="$(rpc eth_getTransactionReceipt "[$1]" "${2:-$RPC}")"
        [ "$r" != null ] && { echo "$r"; return 0; }
        sleep 0.1
    done
    echo "no receipt for $1" >&2; return 1
}
pad() { printf '%064s' "$1" | tr ' ' 0; }

deploy_token() { # url hex-units-to-mint -> token address
    local tx token
    tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"data\":\"0x$(cat "$ROOT/tests/contracts/TestUSDT.bin")\"}]" "$1")"
    token="$(receipt "$tx" "$1" | sed -e 's/.*"contractAddress":"\(0x[0-9a-fA-F]*\)".*/\1/')"
    # mint(address,uint256) to the test user
    tx="$(rpc eth_sendTransaction "[{\"from\":\"$DEPLOYER\",\"to\":\"$token\",\"data\":\"0x40c10f19$(pad "${USER_ADDR#0x}")$(pad "$2")\"}]" "$1")"
    receipt "$tx" "$1" >/dev/null
    echo "$token"
}
say "deploying the test USDT"
# 1,000,000 USDT of 6 decimals
TOKEN="$(deploy_token "$RPC" "$(printf '%x' 1000000000000)")"
BSC_SECTION=
if [ -n "$BSC_PORT" ]; then
    say "deploying the test USDT on the BSC-like chain"
    # 1,000,000 USDT of 18 decimals
    BSC_TOKEN="$(deploy_token "http://127.0.0.1:$BSC_PORT" d3c21bcecceda1000000)"
    BSC_SECTION=",
  \"bsc_config\": {
    \"rpc_url\": \"http://127.0.0.1:$BSC_PORT\",
    \"ws_url\": \"ws://127.0.0.1:$BSC_PORT\",
    \"confirm_height\": $CONFIRM,
    \"chain_id\": 56,
    \"native_symbol\": \"BNB\",
    \"fee_model\": \"legacy\",
    \"block_time_ms\": 1000,
    \"tokens\": [ { \"symbol\": \"USDT\", \"address\": \"$BSC_TOKEN\", \"decimals\": 18 } ]
  }"
fi
NETS="\"$(echo "$CHAINS" | sed -e 's/,/", "/g')\""

# The operator console, with a dev token (DEV_CONSOLE_TOKEN to choose one).
CONSOLE_TOKEN="${DEV_CONSOLE_TOKEN:-dev-console-token-0123}"
printf '%s\n' "$CONSOLE_TOKEN" >"$DEV/console-token"

cat >"$DEV/config.json" <<JSON
{
  "net": [$NETS],
  "rmq_config": {
    "sub_addr": "$AMQP",
    "pay":           { "queue": "$P.auto.queue",            "exchange": "$P.exchange", "routing": ["$P.auto.routing.key"] },
    "topup":         { "queue": "$P.recharge.queue",        "exchange": "$P.exchange", "routing": ["$P.recharge.routing.key"] },
    "withdraw":      { "queue": "$P.withdraw.queue",        "exchange": "$P.exchange", "routing": ["$P.withdraw.routing.key"] },
    "remove":        { "queue": "$P.remove.queue",          "exchange": "$P.exchange", "routing": ["$P.remove.routing.key"] },
    "pay_resp":      { "queue": "$P.auto.return.queue",     "exchange": "$P.exchange", "routing": ["$P.auto.return.routing.key"] },
    "topup_resp":    { "queue": "$P.recharge.return.queue", "exchange": "$P.exchange", "routing": ["$P.recharge.return.routing.key"] },
    "withdraw_resp": { "queue": "$P.withdraw.return.queue", "exchange": "$P.exchange", "routing": ["$P.withdraw.return.routing.key"] },
    "remove_resp":   { "queue": "$P.remove.return.queue",   "exchange": "$P.exchange", "routing": ["$P.remove.return.routing.key"] }
  },
  "msg_config": { "sqlite_path": "$DEV/msg.db" },
  "log_config": { "dir": "$DEV/logs" },
  "eth_config": {
    "rpc_url": "$RPC",
    "ws_url": "ws://127.0.0.1:$PORT",
    "confirm_height": $CONFIRM,
    "sqlite_path": "$DEV/wallet.db",
    "chain_id": 31337,
    "tokens": [ { "symbol": "USDT", "address": "$TOKEN", "decimals": 6 } ]
  },
  "http_config": { "listen": "127.0.0.1:$HTTP_PORT", "console_token_file": "$DEV/console-token" }$BSC_SECTION
}
JSON

# The test account is a hot wallet of the gateway, and anvil's account 2 the
# collection wallet, so withdrawals and payments work at once.
export M2POOL_WALLET_KEY="${DEV_WALLET_KEY:-dev-wallet-key}"
echo "$USER_KEY" | "$BIN" --config "$DEV/config.json" wallet import >/dev/null
echo "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a" |
    "$BIN" --config "$DEV/config.json" wallet import --collection >/dev/null
if [ -n "$BSC_PORT" ]; then
    "$BIN" --config "$DEV/config.json" wallet enable --address "$USER_ADDR" --chain BSC >/dev/null
    "$BIN" --config "$DEV/config.json" wallet enable --collection --chain BSC \
        --address 0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc >/dev/null
fi

cat <<INFO

  dev chain     $RPC  (ws://127.0.0.1:$PORT, chain id 31337, ${BLOCK_TIME}s blocks)
  test USDT     $TOKEN  (6 decimals)
  test account  $USER_ADDR
                private key $USER_KEY
                10000 ETH and 1,000,000 USDT; a hot wallet of the gateway
  collection    0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc (anvil account 2)
${BSC_PORT:+  BSC-like chain http://127.0.0.1:$BSC_PORT  (chain id 56, native BNB, legacy fees; test USDT $BSC_TOKEN, 18 decimals)
}  config        $DEV/config.json
  key           $KEY   (sign messages: $BIN sign --key $KEY FILE)
  RabbitMQ      ${AMQP%%/%2f}, queues $P.*
  health        http://127.0.0.1:$HTTP_PORT/healthz   metrics http://127.0.0.1:$HTTP_PORT/metrics
  console       http://127.0.0.1:$HTTP_PORT/console   token $CONSOLE_TOKEN
  demo          bin/demo.sh   (in another terminal: every flow in a minute)

INFO

say "running the daemon (Ctrl-C to stop)"
M2POOL_PAYMENT_KEY="$KEY" "$BIN" --config "$DEV/config.json" &
DAEMON_PID=$!
wait $DAEMON_PID
