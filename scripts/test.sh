#!/usr/bin/env bash
# Installs what the tests need, then runs every check CI runs:
# formatting, clippy with warnings as errors, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-shot run gains nothing from incremental compilation, whose caches
# would double target/ (1.8 GiB of 4.2 GiB); set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "test dependencies: redis-server (the Redis engine's tests start their own on free ports)"
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

step "test dependencies: redis-cli and ip (the Redis Cluster tests create their cluster with redis-cli; the network-fault tests make namespaces with ip)"
if ! command -v redis-cli >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools iproute2 >/dev/null
fi

step "test dependencies: nginx and caddy (the deploy/nginx.conf and deploy/Caddyfile tests start their own on free loopback ports)"
if { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; } || ! command -v caddy >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx caddy >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "test dependencies: the openai Python SDK (for the OpenAI-compatible endpoint test)"
if ! python3 -c 'import openai' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'openai>=1.40'
fi

step "cargo test"
cargo test --workspace

step "browser client tests (headless Chromium)"
clients/js/test/run.sh

step "benchmark harness smoke (200 connections per transport, rooms, and a game room beside Socket.IO 4; fails on errors or loss)"
bench/smoke.sh
