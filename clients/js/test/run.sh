#!/usr/bin/env bash
# Browser tests of the JS client: headless Chromium (Debian's package) driven
# by playwright-core, against the real `herald` binary (target/debug/herald,
# built by `cargo test`; HERALD_BIN overrides). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd ../.. && pwd)

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "installing Debian's chromium"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

npm ci --no-audit --no-fund --loglevel=error
# The examples gallery's third-party libraries (Yjs, uPlot), from npm,
# bundled into examples/web/vendor/ by its postinstall step.
npm ci --prefix "$root/examples/web" --no-audit --no-fund --loglevel=error

export HERALD_BIN="${HERALD_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/herald}"
if [ ! -x "$HERALD_BIN" ]; then
  echo "no herald binary at $HERALD_BIN: run cargo build (or cargo test) first" >&2
  exit 1
fi

# Bounded: the suite takes about five minutes (the token-lifetime sessions
# of tokens.test.mjs last 20 s each, the examples' pages a few seconds
# each); ten is a hang.
exec timeout --kill-after=10 600 node --test test/*.test.mjs
