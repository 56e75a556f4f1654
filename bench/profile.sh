#!/usr/bin/env bash
# Profiles Herald under scenario (d), acknowledged publishes on
# `POST /v1/publish` (memory engine, one SSE subscriber per publisher's
# topic), and draws a flamegraph of where the server's CPU goes.
#
#   bench/profile.sh                                  # 16 publishers
#   bench/profile.sh --publishers 1 --out bench/flamegraphs/publish-1.svg
#   bench/profile.sh --bin target/release/herald-base # an earlier build kept aside
#
# It installs what it needs (Debian `linux-perf`; `inferno` from crates.io into
# target/profile-tools), builds Herald and the load generator in release mode
# (debug line tables are on in the release profile), starts Herald on a free
# loopback port, runs the load generator for --seconds plus a warm-up,
# samples the server with `perf record --call-graph dwarf` once it is warm,
# and writes the flamegraph (SVG) and, beside it, a summary (.txt): the share
# of samples in the kernel, in each crate, and in the parts of a publish.
# Frames under 0.1 % of the samples are left out of the picture.
set -euo pipefail
cd "$(dirname "$0")/.."

publishers=16
seconds=6
out=bench/flamegraphs/publish-16.svg
bin=target/release/herald
while [ $# -gt 0 ]; do
    case "$1" in
        --publishers) publishers="$2"; shift 2 ;;
        --seconds) seconds="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if ! command -v perf >/dev/null; then
    echo "==> apt-get install linux-perf"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf
fi
tools=target/profile-tools
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "==> cargo install inferno (into $tools)"
    cargo install -q --locked inferno --root "$tools"
fi
echo "==> cargo build --release -p herald -p herald-bench"
cargo build --release -q -p herald -p herald-bench

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --engine memory >"$work/herald.log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

warmup=2
target/release/herald-bench --target herald --addr "127.0.0.1:$port" --pub-addr "127.0.0.1:$port" \
    --server-pid "$server" --transport sse --subs "$publishers" --topics per-publisher \
    --publishers "$publishers" --rate 0 --window 0 --duration $((seconds + warmup + 2)) \
    >"$work/bench.json" 2>"$work/bench.err" &
loadgen=$!
sleep $((warmup + 1))
echo "==> perf record, $seconds s"
perf record -q -F 499 --call-graph dwarf,16384 -p "$server" -o "$work/perf.data" -- sleep "$seconds" 2>/dev/null
wait "$loadgen"

echo "==> perf script | inferno (symbolizing takes a minute or two)"
perf script -i "$work/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" --all >"$work/folded.txt"
mkdir -p "$(dirname "$out")"
"$tools/bin/inferno-flamegraph" --minwidth 0.1 \
    --title "Herald, POST /v1/publish, $publishers keep-alive publishers (memory engine)" \
    <"$work/folded.txt" >"$out"
python3 - "$work/folded.txt" "$work/bench.json" "$publishers" >"${out%.svg}.txt" <<'EOF'
import collections, json, re, sys

folded, bench, publishers = sys.argv[1], sys.argv[2], sys.argv[3]
total = 0
crates = collections.Counter()
parts = collections.Counter()
# The parts of a publish, by the frames that run them (a sample counts once
# per part, wherever the frame is on its stack).
PARTS = {
    "socket writes (responses and SSE events; the kernel delivers to the peer inline)": "tcp_sendmsg",
    "socket reads (requests)": "tcp_recvmsg",
    "hyper: HTTP/1.1 parse": "Buffered<T,B>::parse",
    "axum: routing, layers and the handler": "RouteFuture",
    "handler: POST /v1/publish": "herald_http::publish::publish",
    "handler: authenticate": "herald_http::auth::authenticate",
    "handler: read the body": "read_limited_within",
    "handler: parse the body": "parse_publish_body",
    "hub: validate, store, fan out": "Hub::publish_inner",
    "SSE stream writes": "http1_push::stream",
    "malloc / free (libc)": ("malloc", "cfree", "_int_free", "libc_free"),
}
LIBC = re.compile(r"^(__|_int_|tcache|malloc|cfree|free|memcpy|memmove|memset)")
for line in open(folded):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    frames = stack.split(";")
    leaf = frames[-1]
    if leaf.endswith("_[k]"):
        crates["kernel"] += n
    else:
        name = re.sub(r"^[<&]+", "", leaf)
        crates["libc" if LIBC.match(name) else (re.split(r"::|<| |\(", name)[0] or leaf)] += n
    joined = ";".join(frames)
    for label, needles in PARTS.items():
        if any(n_ in joined for n_ in ((needles,) if isinstance(needles, str) else needles)):
            parts[label] += n
report = json.loads(open(bench).read().strip().splitlines()[-1])
print(f"publishers: {publishers}")
print(f"publishes/s while sampled: {report['publishes_per_s']:.0f}; "
      f"server CPU {report['server_cpu_pct']:.0f}%, load generator CPU {report['loadgen_cpu_pct']:.0f}% "
      "(perf's own cost lowers both)")
print("\nself time by where the sampled frame is (kernel, or the crate of the function):")
for k, v in crates.most_common(20):
    print(f"  {100 * v / total:5.1f}%  {k}")
print("\nsamples with these on the stack:")
for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"  {100 * v / total:5.1f}%  {k}")
EOF
echo "flamegraph: $out"
echo "summary:    ${out%.svg}.txt"
cat "${out%.svg}.txt"
