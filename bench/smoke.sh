#!/usr/bin/env bash
# The benchmark harness in miniature, for CI: Herald only, 200 connections per
# transport (Mercure subscribers included, against a second Herald started with
# a Mercure key as bench/run.py starts it for those rows), a few seconds each,
# 20 WebSocket clients publishing in 2 rooms, and a game row (4 rooms of 8
# players, 25 updates/s each) against Herald and, when Node.js is installed,
# against Socket.IO 4 (bench/node/socketio-room.js; `npm ci` in bench/node if its
# packages are missing).
# Fails on any connection error, drop or loss, so the load generator and the
# scenarios never rot. Timings are printed, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

# A debug build by default: it checks the harness, not the speed, and reuses
# what `cargo test --workspace` already compiled. SMOKE_PROFILE=release for speed.
profile="${SMOKE_PROFILE:-debug}"
if [ "$profile" = release ]; then
    cargo build --release -q -p herald -p herald-bench
else
    cargo build -q -p herald -p herald-bench
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"
log="$(mktemp)"
"$bin/herald" serve --listen 127.0.0.1:0 --engine memory >"$log" 2>&1 &
pid=$!
# The Mercure rows' Herald: a Mercure key, subscribers without a token, and no
# JWT of its own, so publishes on POST /v1/publish are public Mercure updates.
mercure_log="$(mktemp)"
"$bin/herald" serve --listen 127.0.0.1:0 --engine memory \
    --mercure-publisher-jwt-key bench-mercure-publisher-key-4e7a1c9b3d5f2086 \
    --mercure-anonymous >"$mercure_log" 2>&1 &
mercure_pid=$!
sio_pid=""
sio_log="$(mktemp)"
cleanup() {
    for p in "$pid" "$mercure_pid" "$sio_pid"; do
        [ -n "$p" ] || continue
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -f "$log" "$mercure_log" "$sio_log"
}
trap cleanup EXIT
# listening LOG: the address the Herald writing LOG listens on, once it does.
listening() {
    local at=""
    for _ in $(seq 1 100); do
        at="$(sed -n 's#^herald listening on http://##p' "$1" | head -n1)"
        [ -n "$at" ] && break
        sleep 0.1
    done
    echo "$at"
}
addr="$(listening "$log")"
[ -n "$addr" ] || { echo "herald did not start:"; cat "$log"; exit 1; }
mercure_addr="$(listening "$mercure_log")"
[ -n "$mercure_addr" ] || { echo "herald (Mercure) did not start:"; cat "$mercure_log"; exit 1; }

fail=0
# run_at ADDR PID NAME ARGS...: one herald-bench run against the server at ADDR.
run_at() {
    local at="$1" server="$2" name="$3"; shift 3
    local out
    if ! out="$(timeout 60 "$bin/herald-bench" --addr "$at" --server-pid "$server" --sources 4 --settle 0.5 --drain 5 "$@")"; then
        echo "smoke $name: herald-bench failed"; fail=1; return
    fi
    python3 - "$name" "$out" <<'PY' || fail=1
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
bad = {k: r[k] for k in ("connect_errors", "dropped", "lost", "duplicates", "publish_errors",
                         "publish_unanswered") if r.get(k)}
if r["connected"] != r["subs"]:
    bad["connected"] = f'{r["connected"]}/{r["subs"]}'
if r.get("mode") == "rooms" and r["messages"] != r["messages_planned"]:
    bad["sent"] = f'{r["messages"]}/{r["messages_planned"]}'
print(f'smoke {name}: {r["connected"]} connected, {r["received"]}/{r["expected"]} delivered, '
      f'{r["deliveries_per_s"]:.0f}/s, p99 {r["p99_ms"]:.1f} ms, {r["bytes_per_conn"] / 1024:.1f} KiB/conn'
      + (f"  FAILED {bad}" if bad else ""))
sys.exit(1 if bad or r["expected"] == 0 and r["messages"] > 0 else 0)
PY
}
run() { run_at "$addr" "$pid" "$@"; }
for tr in sse ws poll; do
    run "$tr fan-out" --transport "$tr" --subs 200 --rate 100 --duration 3
done
run "sse max" --transport sse --subs 200 --rate 0 --window 32 --publishers 2 --duration 2
# Mercure subscribers (GET /.well-known/mercure?topic=T), published to on POST /v1/publish.
run_at "$mercure_addr" "$mercure_pid" "mercure fan-out" --transport mercure --subs 200 --rate 100 --duration 3
run_at "$mercure_addr" "$mercure_pid" "mercure max" --transport mercure --subs 200 --rate 0 --window 32 \
    --publishers 2 --duration 2
run "sse own+shared" --transport sse --subs 200 --topics own-shared --rate 200 --shared-every 20 --duration 2
run "publish x16" --transport sse --subs 16 --topics per-publisher --publishers 16 --rate 0 --window 0 --duration 2
# Rooms: 20 WebSocket clients in 2 rooms, each publishing 5 msg/s to its room on its own socket.
run "ws rooms" --mode rooms --clients 20 --rooms 2 --rate 5 --duration 2
# Game rooms (bench/run.sh --only g-, in small): 4 rooms x 8 players x 25 updates/s,
# Herald's WebSocket API, then the same against Socket.IO 4.
game=(--mode rooms --clients 32 --rooms 4 --rate 25 --duration 2 --payload 100)
run "game herald" "${game[@]}"
if ! command -v node >/dev/null; then
    echo "smoke game socketio: skipped (no Node.js)"
else
    if [ ! -d bench/node/node_modules/socket.io ]; then
        (cd bench/node && npm ci --no-audit --no-fund --silent) || { echo "smoke game socketio: npm ci failed"; fail=1; }
    fi
    if [ -d bench/node/node_modules/socket.io ]; then
        node bench/node/socketio-room.js 0 >"$sio_log" 2>&1 &
        sio_pid=$!
        sio_addr=""
        for _ in $(seq 1 100); do
            sio_addr="$(sed -n 's#^socket.io .* listening on http://##p' "$sio_log" | head -n1)"
            [ -n "$sio_addr" ] && break
            sleep 0.1
        done
        if [ -z "$sio_addr" ]; then
            echo "smoke game socketio: the Socket.IO server did not start:"; cat "$sio_log"; fail=1
        else
            run_at "$sio_addr" "$sio_pid" "game socketio" "${game[@]}" --protocol socketio
        fi
    fi
fi
exit "$fail"
