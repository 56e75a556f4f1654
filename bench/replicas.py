#!/usr/bin/env python3
"""What waiting for a replica costs: acknowledged publishes per second and
publish latency on the Redis engine, `--redis-replica-acks 1` (the default:
a 200 only once a replica holds the write, Redis `WAIT`) beside
`--redis-replica-acks 0` (a 200 once the master has it).

Starts its own Redis master and one replica (`appendonly yes`,
`appendfsync everysec`) on free loopback ports, then for each number of
publishers runs one `herald serve --engine redis` node per setting, one after
the other, each measured by `herald-bench` (one SSE subscriber, publishing as
fast as acknowledged and delivered). Master, replica, node and load generator
share this machine's cores.

Usage: bench/replicas.py [--publishers 1,16,64] [--duration 6]
Writes bench/results/replicas.md and prints it.
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


def redis(port, folder, *extra):
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--dir", folder, *extra],
        stdout=subprocess.DEVNULL)


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=10).stdout


def start_node(redis_url, prefix, acks):
    p = subprocess.Popen(
        [str(RELEASE / "herald"), "serve", "--listen", "127.0.0.1:0", "--engine", "redis",
         "--redis-url", redis_url, "--redis-prefix", prefix, "--redis-replica-acks", str(acks),
         "--max-connections-per-ip", "100000"],
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


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--publishers", default="1,16,64")
    ap.add_argument("--duration", type=float, default=6.0)
    args = ap.parse_args()
    publishers = [int(x) for x in args.publishers.split(",")]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "herald", "-p", "herald-bench"],
                   cwd=ROOT, check=True)
    mport, rport = free_port(), free_port()
    master = redis(mport, tempfile.mkdtemp(prefix="herald-replicas-master-"))
    replica = redis(rport, tempfile.mkdtemp(prefix="herald-replicas-replica-"),
                    "--replicaof", "127.0.0.1", str(mport))
    rows = []
    try:
        end = time.time() + 20
        while "state=online" not in redis_cli(mport, "INFO", "replication"):
            if time.time() > end:
                raise RuntimeError("the replica never came online")
            time.sleep(0.1)
        redis_url = f"redis://127.0.0.1:{mport}"
        for n in publishers:
            for acks in (0, 1):
                node, url = start_node(redis_url, f"b{n}a{acks}:", acks)
                try:
                    # The node reads its master's replicas every second.
                    time.sleep(1.5)
                    addr = url[len("http://"):]
                    cmd = [str(RELEASE / "herald-bench"), "--target", "herald", "--transport", "sse",
                           "--addr", addr, "--subs", "1", "--rate", "0", "--window", str(max(n, 1)),
                           "--publishers", str(n), "--size", "100", "--duration", str(args.duration),
                           "--label", f"replicas-{n}-acks{acks}"]
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                    if out.returncode != 0:
                        raise RuntimeError(out.stderr[-2000:])
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append((n, acks, r))
                    print(f"{n} publishers, acks {acks}: {r['publishes_per_s']:.0f}/s, p50 "
                          f"{r['publish_p50_ms']:.2f} ms, p99 {r['publish_p99_ms']:.2f} ms, "
                          f"lost {r['lost']}, errors {r['publish_errors']}", file=sys.stderr)
                finally:
                    stop(node)
    finally:
        stop(replica)
        stop(master)
    cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu} cores: one Redis master "
        f"and one replica (AOF, fsync every second), one Herald node, one SSE subscriber, 100-byte "
        f"events published as fast as acknowledged ({args.duration:g} s per row).",
        "",
        "| publishers | acks | publishes/s | ÷ acks 0 | publish p50 ms | publish p99 ms | lost | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {n: r["publishes_per_s"] for n, acks, r in rows if acks == 0}
    for n, acks, r in rows:
        ratio = r["publishes_per_s"] / base[n] if base.get(n) else float("nan")
        lines.append(f"| {n} | {acks} | {r['publishes_per_s']:,.0f} | {ratio:.2f}× | "
                     f"{r['publish_p50_ms']:.2f} | {r['publish_p99_ms']:.2f} | {r['lost']} | "
                     f"{r['publish_errors']} |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "replicas.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
