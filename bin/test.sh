#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what the
# tests need where it is absent (anvil pinned to 1.7.1 from npm into .tools/;
# RabbitMQ and MariaDB from Debian packages; Go and a JDK for the signing
# snippets; promtool for the Prometheus rules in deploy/; Chromium and
# chromedriver for the console's browser test), checks formatting
# and lints, and runs every test against the real services.
#
#   bin/test.sh                 # everything
#   bin/test.sh -E 'test(remove)'   # extra arguments go to cargo nextest
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure_anvil
ensure_rabbitmq
ensure_mariadb
ensure_snippet_toolchains
ensure_promtool
ensure_chromium
export ANVIL_BIN
# tests/dashboards.rs skips promtool's checks where it is absent, not here.
export M2POOL_REQUIRE_PROMTOOL=1
# tests/console.rs likewise skips without a browser, not here.
export M2POOL_REQUIRE_BROWSER=1

cd "$ROOT"
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
say "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast --test-threads 4 "$@"
else
    cargo test --no-fail-fast "$@" -- --test-threads 4
fi
# The message store's tests, and listen's (which apply requests and blocks
# through it), once more on the MySQL/MariaDB engine (each on a database of
# its own): the same assertions, the other engine.
if [ $# -eq 0 ]; then
    say "message store and listen tests on MariaDB"
    if cargo nextest --version >/dev/null 2>&1; then
        M2POOL_TEST_STORE=mariadb cargo nextest run --no-fail-fast --lib -E 'test(/^store::/) | test(/^listen::/)'
    else
        M2POOL_TEST_STORE=mariadb cargo test --no-fail-fast --lib store:: -- --test-threads 4
        M2POOL_TEST_STORE=mariadb cargo test --no-fail-fast --lib listen:: -- --test-threads 4
    fi
fi
