#!/usr/bin/env bash
# The whole test suite: unit, integration (real servers on loopback), doctests, examples.
# Installs what the tests need when it is missing, so a fresh machine passes with nothing done by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# The shared rate-limit tests start a real redis-server on an ephemeral loopback port.
if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (Debian package) for the shared rate-limit tests"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
    # The package starts a system instance on 6379; the tests use their own, so stop it.
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

cargo test --locked --all-features "$@"
