#!/usr/bin/env bash
# The whole test suite: unit, integration (real servers on loopback), doctests, examples.
# Installs what the tests need when it is missing, so a fresh machine passes with nothing done by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked --all-features "$@"
