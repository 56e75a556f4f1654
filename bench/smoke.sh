#!/usr/bin/env bash
# The benchmark harness in miniature, for CI: Herald only, 200 connections per
# transport, a few seconds each, and 20 WebSocket clients publishing in 2 rooms.
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
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 1 100); do
    addr="$(sed -n 's#^herald listening on http://##p' "$log" | head -n1)"
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "herald did not start:"; cat "$log"; exit 1; }

fail=0
run() {
    local name="$1"; shift
    local out
    if ! out="$(timeout 60 "$bin/herald-bench" --addr "$addr" --server-pid "$pid" --sources 4 --settle 0.5 --drain 5 "$@")"; then
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
for tr in sse ws poll; do
    run "$tr fan-out" --transport "$tr" --subs 200 --rate 100 --duration 3
done
run "sse max" --transport sse --subs 200 --rate 0 --window 32 --publishers 2 --duration 2
run "sse own+shared" --transport sse --subs 200 --topics own-shared --rate 200 --shared-every 20 --duration 2
run "publish x16" --transport sse --subs 16 --topics per-publisher --publishers 16 --rate 0 --window 0 --duration 2
# Rooms: 20 WebSocket clients in 2 rooms, each publishing 5 msg/s to its room on its own socket.
run "ws rooms" --mode rooms --clients 20 --rooms 2 --rate 5 --duration 2
exit "$fail"
