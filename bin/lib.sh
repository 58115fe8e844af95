#!/usr/bin/env bash
# Shared helpers for bin/*.sh: find or install the things the daemon and its
# tests talk to. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
ANVIL_PKG="@foundry-rs/anvil-linux-amd64@1.7.1"
ANVIL_BIN="$TOOLS/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
SOLC_PKG="solc@0.8.26"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Root, or sudo where there is one.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root for: $*" >&2; return 1; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
    local i
    for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
    echo "$3 did not open port $1 within $2 s" >&2
    return 1
}

apt_install() {
    say "installing $* from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null
    # Packages may try to start services through init scripts; in a container
    # without an init that fails harmlessly, and we start them ourselves below.
    as_root apt-get install -y -qq "$@" >/dev/null || as_root apt-get install -y -qq --fix-broken >/dev/null
}

ensure_node() {
    command -v npm >/dev/null && return 0
    apt_install nodejs npm
}

# anvil, pinned, into .tools/ (never system-wide).
ensure_anvil() {
    if [ -x "$ANVIL_BIN" ] && "$ANVIL_BIN" --version 2>/dev/null | grep -q '1\.7\.1'; then
        export ANVIL_BIN; return 0
    fi
    ensure_node
    say "installing $ANVIL_PKG into .tools/"
    mkdir -p "$TOOLS"
    npm install --silent --no-save --no-audit --no-fund --prefix "$TOOLS" "$ANVIL_PKG" >/dev/null
    [ -x "$ANVIL_BIN" ] || { echo "anvil did not install at $ANVIL_BIN" >&2; return 1; }
    export ANVIL_BIN
}

ensure_solc() {
    SOLCJS="$TOOLS/node_modules/.bin/solcjs"
    [ -x "$SOLCJS" ] && return 0
    ensure_node
    # Both at once: npm removes from the prefix what one install does not name.
    npm install --silent --no-save --no-audit --no-fund --prefix "$TOOLS" "$ANVIL_PKG" "$SOLC_PKG" >/dev/null
}

# Toolchains of the signing snippets' test (docs/sign): Go and a JDK.
ensure_snippet_toolchains() {
    command -v go >/dev/null || apt_install golang-go
    command -v javac >/dev/null || apt_install default-jdk-headless
    command -v python3 >/dev/null || apt_install python3
}

# promtool, to check deploy/prometheus (tests/dashboards.rs): Debian ships it
# in the prometheus package; its server is not wanted, so where an init system
# started it on install, it is stopped and disabled again.
ensure_promtool() {
    command -v promtool >/dev/null && return 0
    apt_install --no-install-recommends prometheus
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/prometheus ]; then
        as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null || { echo "promtool did not install" >&2; return 1; }
}

# Headless Chromium and its WebDriver, for the console's browser test
# (tests/console.rs), and a Chinese font so its screenshots of the Chinese
# pages are readable.
ensure_chromium() {
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        apt_install --no-install-recommends chromium chromium-driver
    fi
    [ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || apt_install --no-install-recommends fonts-wqy-zenhei
}

ensure_rabbitmq() {
    if port_open 5672; then return 0; fi
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    say "starting RabbitMQ"
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 120 RabbitMQ
    as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_mariadb() {
    if port_open 3306; then return 0; fi
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
    say "starting MariaDB"
    if [ -x /etc/init.d/mariadb ]; then as_root /etc/init.d/mariadb start >/dev/null 2>&1 || true; fi
    port_open 3306 || as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql >/dev/null 2>&1 || true
    wait_port 3306 120 MariaDB
    # Tests connect as root over TCP with no password (the machine's MariaDB as installed).
    if ! mariadb -uroot -h127.0.0.1 -e 'SELECT 1' >/dev/null 2>&1; then
        as_root mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" \
            || echo "warning: cannot log in to MariaDB as root without a password" >&2
    fi
}
