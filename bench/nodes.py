#!/usr/bin/env python3
"""Fan-out of 1, 2 and 3 Herald nodes sharing one Redis (`--engine redis`).

Starts its own redis-server on a free loopback port, then for k = 1, 2, 3
starts k `herald serve --engine redis` nodes, spreads the subscribers of one
topic over them (SSE, round-robin), publishes on node 1 as fast as the nodes
deliver (4 publishers, at most 64 messages in flight), and reports
deliveries per second, loss and latency. All nodes, Redis and the load
generator share this machine's two cores, so more nodes add work on the same
CPUs: the figures show what the Redis fan-out costs, not how a real cluster
of separate machines scales.

Usage: bench/nodes.py [--subs 3000] [--duration 8]
Writes bench/results/nodes.md and prints it.
"""
import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


def start_node(redis_url, prefix):
    p = subprocess.Popen(
        [str(RELEASE / "herald"), "serve", "--listen", "127.0.0.1:0", "--engine", "redis",
         "--redis-url", redis_url, "--redis-prefix", prefix, "--max-connections-per-ip", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"HERALD_LOG": "warn", "PATH": "/usr/bin:/bin"},
    )
    line = p.stdout.readline().strip()
    if not line.startswith("herald listening on http://"):
        p.kill()
        raise RuntimeError(f"unexpected first line: {line!r}")
    url = line.split(" ")[-1]
    wait_ready(url)
    return p, url


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subs", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=8.0)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "herald", "-p", "herald-bench"], cwd=ROOT, check=True)
    rport = free_port()
    rdir = tempfile.mkdtemp(prefix="herald-nodes-redis-")
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", rdir], stdout=subprocess.DEVNULL)
    rows = []
    try:
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{rport}"
        for k in (1, 2, 3):
            nodes = [start_node(redis_url, f"bench{k}:") for _ in range(k)]
            try:
                addrs = [u[len("http://"):] for _, u in nodes]
                cmd = [str(RELEASE / "herald-bench"), "--target", "herald", "--transport", "sse",
                       "--addr", addrs[0], "--pub-addr", addrs[0], "--subs", str(args.subs),
                       "--rate", "0", "--window", "64", "--publishers", "4", "--size", "100",
                       "--duration", str(args.duration), "--sources", "20", "--label", f"nodes-{k}"]
                if k > 1:
                    cmd += ["--more-addrs", ",".join(addrs[1:])]
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    raise RuntimeError(out.stderr[-2000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((k, r))
                print(f"{k} node(s): {r['deliveries_per_s']/1000:.1f}k deliveries/s, lost {r['lost']}, "
                      f"p99 {r['p99_ms']:.1f} ms", file=sys.stderr)
            finally:
                for p, _ in nodes:
                    p.terminate()
                for p, _ in nodes:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
    cpu = subprocess.run(["sh", "-c", "nproc"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu} cores: one topic, "
        f"{args.subs} SSE subscribers spread over the nodes, publishing on node 1 as fast as delivered "
        f"(4 publishers, 64 in flight, 100-byte messages, {args.duration:g} s), one Redis.",
        "",
        "| nodes | deliveries/s | ÷ 1 node | lost | duplicates | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    base = rows[0][1]["deliveries_per_s"] if rows else 1
    for k, r in rows:
        lines.append(f"| {k} | {r['deliveries_per_s']/1000:.1f}k | {r['deliveries_per_s']/base:.2f}× | {r['lost']} | "
                     f"{r['duplicates']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "nodes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
