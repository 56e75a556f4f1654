#!/usr/bin/env python3
"""Runs the benchmark scenarios against Herald, its peers and the ceiling.

Each measurement starts its server fresh (so memory readings do not inherit
an earlier run's heap), runs one `herald-bench` against it, and stops it.
Results go to bench/results/<name>.jsonl, one JSON object per measurement;
bench/report.py turns them into the table and the chart.

bench/run.sh installs what this needs and calls it; run it directly with
--help to pick scenarios and targets.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# Where the release binaries are; HERALD_BENCH_BIN overrides it (a copy kept
# aside, so that a build during a long run cannot swap the binary under it).
RELEASE = Path(os.environ.get("HERALD_BENCH_BIN",
                              Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"))
NOFILE = 20000

# Ports, all on loopback.
PORTS = {"herald": 9101, "herald-base": 9102, "herald1": 9103, "nchan1": 9201, "nchan2": 9202, "node": 9301,
         "pushpin": 9501, "pushpin_pub": 9502, "ceiling": 9401, "hook": 9601, "socketio": 9701}

TARGETS = ["herald", "herald1", "nchan1", "nchan2", "node", "pushpin", "ceiling", "socketio"]
# `--targets herald-base,...` adds the earlier Herald build.
PEERS = ["nchan1", "nchan2", "node", "pushpin"]
# Rooms (e-) need clients that publish on their own WebSocket: Herald builds only.
ROOMS = ["herald", "herald1", "herald-base"]
# Game and cursors rooms (g-): Herald beside Socket.IO 4 (bench/node/socketio-room.js,
# `io.to(room).emit` to every member, the sender included), whose clients the
# load generator drives with `--protocol socketio`. Socket.IO serves nothing else.
GAME_ROOMS = ["herald", "socketio"]
# Herald's topics in the g- scenarios (unless `--herald-arg=--config=...` names
# another file): the rooms policy of the examples' game and cursors pages,
# ephemeral, clients publishing at most 60 a second each (the scenarios send
# 25 and 30); no presence, which Socket.IO's rooms do not have either.
GAME_CONFIG = """# Written by bench/run.py for the g- scenarios (game and cursors rooms).
[[topics]]
pattern = "room/**"
history = 0
client_publish = true
publish_rate = 60
"""

# Hooks (f-): Herald with its hooks pointed at `herald-bench hook-backend`,
# which checks every signature and grants the session cookie COOKIE. Every
# f- scenario runs the same server: these flags plus bench/hooks.toml, whose
# `hook/**` topics have `publish_hook = true` and `nohook/**` topics not.
# The clients bring the cookie (asked about through the connect hook) or a
# JWT minted with JWT_SECRET (checked by Herald alone); "@JWT@" in a
# scenario's arguments stands for that token.
HOOK_SECRET = "bench-hook-secret-7f3a9c2e5b1d4086"
JWT_SECRET = "bench-jwt-secret-2c8e6a4f0b9d1357"
COOKIE = "session=bench"
HOOK_FLAGS = ["--hook-url", f"http://127.0.0.1:{PORTS['hook']}/hook", "--hook-secret", HOOK_SECRET,
              "--jwt-secret", JWT_SECRET, "--config", str(BENCH / "hooks.toml")]

# Mercure subscribers (transport `mercure`, the `herald` target only): SSE at
# `/.well-known/mercure?topic=T`. Herald runs with a Mercure key and accepts
# subscribers without a token; it has no JWT of its own (an open server on
# loopback), so what the load generator publishes on `POST /v1/publish`
# reaches them as public updates. The other rows run Herald without these,
# unless `--herald-arg` gives them (Mercure on for every row).
MERCURE_KEY = "bench-mercure-publisher-key-4e7a1c9b3d5f2086"
MERCURE_FLAGS = [["--mercure-publisher-jwt-key", MERCURE_KEY], ["--mercure-anonymous"]]


def limits():
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def wait_port(port, timeout=15.0):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class Server:
    """A started server: its process (whose tree is measured) and its addresses."""

    def __init__(self, name, procs, pid, port, pub_port=None, extra=()):
        self.name, self.procs, self.pid = name, procs, pid
        self.port, self.pub_port = port, pub_port or port
        self.extra = list(extra)  # helpers not measured (Pushpin's origin, zurl)

    def stop(self):
        for p in self.procs + self.extra:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs + self.extra:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(name, workdir, herald_args=()):
    log = open(workdir / f"{name}.log", "ab")
    common = dict(stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits)
    if name in ("herald", "herald-base", "herald1"):
        # herald-base: an earlier build kept as RELEASE/herald-base, to show
        # what a performance change did in the same run. herald1: Herald on
        # one worker thread, beside Nchan with one worker process.
        port = PORTS[name]
        binary = "herald" if name == "herald1" else name
        one = ["--workers", "1"] if name == "herald1" else []
        # The memory engine unless `--herald-arg=--engine=...` names another;
        # the embedded engine then gets a fresh folder per start.
        flags = " ".join(herald_args).replace("=", " ").split()
        engine = [] if "--engine" in flags else ["--engine", "memory"]
        if "embedded" in flags and "--data-dir" not in flags:
            engine += ["--data-dir", tempfile.mkdtemp(prefix=f"{name}-data-", dir=workdir)]
        p = subprocess.Popen([str(RELEASE / binary), "serve", "--listen", f"127.0.0.1:{port}",
                              *engine, *one, *herald_args], **common)
        srv = Server(name, [p], p.pid, port)
    elif name.startswith("nchan"):
        workers = name[-1]
        port = PORTS[name]
        d = workdir / name
        d.mkdir(exist_ok=True)
        conf = (BENCH / "nchan" / "nginx.conf.template").read_text()
        conf = conf.replace("@WORKERS@", workers).replace("@PORT@", str(port)).replace("@DIR@", str(d))
        (d / "nginx.conf").write_text(conf)
        p = subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], **common)
        srv = Server(name, [p], p.pid, port)
    elif name == "socketio":
        port = PORTS["socketio"]
        p = subprocess.Popen(["node", str(BENCH / "node" / "socketio-room.js"), str(port)], **common)
        srv = Server(name, [p], p.pid, port)
    elif name == "node":
        port = PORTS["node"]
        p = subprocess.Popen(["node", str(BENCH / "node" / "server.js"), str(port)], **common)
        srv = Server(name, [p], p.pid, port)
    elif name == "ceiling":
        port = PORTS["ceiling"]
        p = subprocess.Popen([str(RELEASE / "herald-bench-ceiling"), f"127.0.0.1:{port}"], **common)
        srv = Server(name, [p], p.pid, port)
    elif name == "pushpin":
        port, pub = PORTS["pushpin"], PORTS["pushpin_pub"]
        d = workdir / "pushpin"
        (d / "run").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(exist_ok=True)
        (d / "routes").write_text(f"* 127.0.0.1:{PORTS['node']}\n")
        conf = []
        for line in Path("/etc/pushpin/pushpin.conf").read_text().splitlines():
            key = line.split("=", 1)[0]
            repl = {
                "rundir": f"rundir={d / 'run'}", "logdir": f"logdir={d / 'log'}",
                "http_port": f"http_port=127.0.0.1:{port}", "routesfile": f"routesfile={d / 'routes'}",
                "push_in_http_port": f"push_in_http_port={pub}", "log_level": "log_level=1",
                # The defaults cap deliveries at 2,500 messages/s: lift the cap.
                "message_rate": "message_rate=100000000", "message_hwm": "message_hwm=100000000",
            }
            conf.append(repl.get(key, line))
        (d / "pushpin.conf").write_text("\n".join(conf) + "\n")
        # The origin (the Node baseline's GRIP route) and zurl, which the
        # proxy uses to reach it, are helpers and are not measured.
        Path("/var/run/zurl").mkdir(parents=True, exist_ok=True)
        zurl = subprocess.Popen(["zurl", "--config=/etc/zurl.conf"], **common)
        origin = subprocess.Popen(["node", str(BENCH / "node" / "server.js"), str(PORTS["node"])], **common)
        wait_port(PORTS["node"])
        p = subprocess.Popen(["pushpin", "--config", str(d / "pushpin.conf")], **common)
        srv = Server(name, [p], p.pid, port, pub, extra=[origin, zurl])
    else:
        raise ValueError(name)
    if not wait_port(srv.port) or not wait_port(srv.pub_port):
        srv.stop()
        raise RuntimeError(f"{name} did not start; see {workdir / (name + '.log')}")
    time.sleep(0.5)
    return srv


def bench_target(name):
    return {"nchan1": "nchan", "nchan2": "nchan", "herald-base": "herald", "herald1": "herald",
            "socketio": "herald"}.get(name, name)


def bench_protocol(name):
    """The rooms mode's `--protocol` for this server: Socket.IO's, or Herald's API."""
    return ["--protocol", "socketio"] if name == "socketio" else []


def supports(name, transport):
    if transport == "mercure":
        return name == "herald"
    if name == "pushpin":
        return transport == "sse"
    if name == "socketio":
        return transport == "ws"
    if name in ("node", "ceiling"):
        return transport != "poll"
    return True


def start_hook_backend(workdir):
    """`herald-bench hook-backend` on PORTS["hook"], fresh counters."""
    log = open(workdir / "hook-backend.log", "ab")
    p = subprocess.Popen([str(RELEASE / "herald-bench"), "hook-backend", "--listen",
                          f"127.0.0.1:{PORTS['hook']}", "--secret", HOOK_SECRET],
                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits)
    if not wait_port(PORTS["hook"]):
        p.kill()
        raise RuntimeError(f"the hook backend did not start; see {workdir / 'hook-backend.log'}")
    return p


def hook_stats():
    """The hook backend's counters (GET /stats)."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['hook']}/stats", timeout=5) as r:
        return json.loads(r.read())


_jwt = None


def jwt():
    """A JWT for the f- scenarios: user `bench`, every topic, valid an hour."""
    global _jwt
    if _jwt is None:
        _jwt = subprocess.run([str(RELEASE / "herald"), "token", "--jwt-secret", JWT_SECRET, "--sub", "bench",
                               "--subscribe", "**", "--publish", "**", "--ttl", "1h"],
                              capture_output=True, text=True, check=True).stdout.strip()
    return _jwt


def measure(name, workdir, out, args, scenario, herald_args=(), transport=None):
    hooks = scenario.startswith("f-")
    backend = start_hook_backend(workdir) if hooks else None
    server_args = [*herald_args, *HOOK_FLAGS] if hooks else list(herald_args)
    if transport == "mercure":
        given = " ".join(herald_args)
        for flag in MERCURE_FLAGS:
            if flag[0] not in given:
                server_args += flag
    if scenario.startswith("g-") and not any(a.startswith("--config") for a in herald_args):
        conf = workdir / "game-rooms.toml"
        conf.write_text(GAME_CONFIG)
        server_args += ["--config", str(conf)]
    try:
        srv = start(name, workdir, server_args)
    except Exception:
        if backend:
            backend.kill()
            backend.wait()
        raise
    if backend:
        srv.extra.append(backend)
    try:
        run_args = [jwt() if a == "@JWT@" else a for a in args]
        cmd = [str(RELEASE / "herald-bench"), "--target", bench_target(name),
               "--addr", f"127.0.0.1:{srv.port}", "--pub-addr", f"127.0.0.1:{srv.pub_port}",
               "--server-pid", str(srv.pid), *(["--backend-pid", str(backend.pid)] if backend else []),
               *(bench_protocol(name) if scenario.startswith("g-") else []), *run_args]
        t0 = time.time()
        load0 = os.getloadavg()[0]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if r.returncode != 0 or not line:
            rec = {"error": (r.stderr or r.stdout)[-2000:].strip()}
        else:
            rec = json.loads(line)
        if backend:
            rec["hook"] = hook_stats()
    finally:
        srv.stop()
    rec.update({"server": name, "scenario": scenario, "wall_s": round(time.time() - t0, 1),
                "args": " ".join(args),
                # The machine's 1-minute load average before and after: is anything else running?
                "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)]})
    out.write(json.dumps(rec) + "\n")
    out.flush()
    keys = ["connected", "dropped", "lost", "deliveries_per_s", "p99_ms", "sched_p99_ms", "bytes_per_conn",
            "publishes_per_s"]
    if rec.get("mode") == "rooms":
        keys += ["duplicates", "p50_ms", "p999_ms", "publish_errors", "publish_unanswered"]
    if hooks:
        keys = ["connected", "dropped", "lost", "publishes_per_s", "publish_p99_ms", "publish_errors",
                "server_cpu_pct", "backend_cpu_pct", "hook"]
    if rec.get("mode") == "connects":
        keys = ["attempts", "accepted", "refused", "failed", "connects_per_s", "p50_ms", "p99_ms",
                "server_cpu_pct", "loadgen_cpu_pct", "backend_cpu_pct", "hook"]
    summary = {k: rec.get(k) for k in keys}
    if "error" in rec:
        summary = {"error": rec["error"].splitlines()[0] if rec["error"] else "?"}
    print(f"  {scenario:<28} {name:<8} {' '.join(args[:4]):<36} {summary}", flush=True)
    time.sleep(1.0)  # let TIME_WAIT sockets and the CPU settle
    return rec


def scenarios(quick):
    """(scenario, transports, extra args) in run order."""
    dur = "4" if quick else "8"
    sizes = [2000] if quick else [2000, 10000, 19000]
    out = []
    for n in sizes:
        # 19k: held past one 15 s keepalive (SSE comment, WebSocket ping).
        hold = "17" if n >= 19000 else "5"
        # `mercure`: Herald's Mercure subscribers, measured right after its /v1/sse.
        for tr in ("sse", "mercure", "ws", "poll"):
            out.append((f"a-idle-{n}", tr, ["--transport", tr, "--subs", str(n), "--duration", "0",
                                           "--hold", hold, "--sources", str(max(2, n // 1000))]))
    fan = [1000] if quick else [1000, 10000]
    for n in fan:
        for tr in ("sse", "mercure", "ws"):
            out.append((f"b-fanout-{n}-100", tr, ["--transport", tr, "--subs", str(n), "--rate", "100",
                                                 "--duration", dur, "--sources", "10"]))
            if n >= 10000 and not quick:
                # Rates for latency at equal load at 10k subscribers: 5/s, which every
                # server sustains; 13/s, about what Nchan x1 accepted when offered
                # 100/s; 9/s, what it accepts of those 13 since round seven.
                for rate in ("5", "9", "13"):
                    out.append((f"b-fanout-{n}-{rate}", tr, ["--transport", tr, "--subs", str(n),
                                                            "--rate", rate, "--duration", dur,
                                                            "--sources", "10"]))
            out.append((f"b-fanout-{n}-max", tr, ["--transport", tr, "--subs", str(n), "--rate", "0",
                                                 "--window", "64", "--publishers", "4",
                                                 "--duration", dur, "--sources", "10"]))
    n = 1000 if quick else 10000
    out.append((f"c-topics-{n}", "sse", ["--transport", "sse", "--subs", str(n), "--topics", "own-shared",
                                         "--rate", "1000", "--shared-every", "500",
                                         "--duration", dur, "--sources", "10"]))
    for p in (1, 16, 256):
        out.append((f"d-publish-{p}", "sse", ["--transport", "sse", "--subs", str(p),
                                              "--topics", "per-publisher", "--publishers", str(p),
                                              "--rate", "0", "--window", "0", "--duration", dur]))
    # (e) rooms: every client is a WebSocket member of one room and publishes
    # to it on its own socket; every message reaches every member, sender
    # included. 200 x 20 msg/s = 4,000 publishes and 800,000 deliveries a
    # second; 200 x 5 msg/s = 200,000 deliveries a second.
    rooms = [(50, 1, 10, "4")] if quick else [(200, 1, 20, "10"), (200, 1, 5, "10")]
    for clients, n_rooms, rate, secs in rooms:
        out.append((f"e-room-{clients}-{rate}", "ws", ["--mode", "rooms", "--clients", str(clients),
                                                       "--rooms", str(n_rooms), "--rate", str(rate),
                                                       "--duration", secs, "--payload", "100",
                                                       "--sources", "4", "--drain", "30"]))
    # (g) game and cursors rooms, Herald beside Socket.IO: every client a
    # member of its room, publishing updates to it on its own WebSocket, every
    # update to every member (sender included). g-game-R-N-U: R rooms of N
    # players, U updates/s each (20 x 8 x 25: 160 clients, 4,000 updates and
    # 32,000 deliveries a second); g-cursors-N-U: one room of N visitors (50 x
    # 30: 1,500 in, 75,000 deliveries a second, about what one Node process
    # carries here; 25 x 30: 750 in, 18,750 deliveries a second, a load both
    # carry, for latency at equal load).
    games = ([("game", 4, 4, 10, 64, "4"), ("cursors", 1, 10, 10, 48, "4")] if quick else
             [("game", 20, 8, 25, 100, "10"), ("cursors", 1, 50, 30, 64, "10"), ("cursors", 1, 25, 30, 64, "10")])
    for kind, n_rooms, per_room, rate, size, secs in games:
        name = f"g-game-{n_rooms}-{per_room}-{rate}" if kind == "game" else f"g-cursors-{per_room}-{rate}"
        out.append((name, "ws", ["--mode", "rooms", "--clients", str(n_rooms * per_room), "--rooms", str(n_rooms),
                                 "--rate", str(rate), "--duration", secs, "--payload", str(size),
                                 "--sources", "4", "--drain", "30"]))
    # (f) hooks, Herald only, one server setup for all (HOOK_FLAGS): 1 and
    # 16 keep-alive publishers (one SSE subscriber per topic), all with the
    # session cookie, so that each request asks the connect hook: to
    # `hook/` topics (each publish also asks the publish hook) and to
    # `nohook/` topics; then the same with a JWT (no hook asked at all).
    for p in (1, 16):
        for kind, prefix, cred in (("hook", "hook/", ["--cookie", COOKIE]),
                                   ("nohook", "nohook/", ["--cookie", COOKIE]),
                                   ("jwt", "nohook/", ["--bearer", "@JWT@"])):
            out.append((f"f-{kind}-publish-{p}", "sse", ["--transport", "sse", "--subs", str(p),
                                                        "--topics", "per-publisher", "--publishers", str(p),
                                                        "--rate", "0", "--window", "0", "--duration", dur,
                                                        "--topic-prefix", prefix, *cred]))
    # New connections, each opened, answered and closed by one of 64
    # connectors: with the cookie (one connect hook request each) against a
    # JWT; as fast as answered (`-max`), and 2,000 a second (latency at
    # equal load). SSE: accepted once the stream's preamble arrived; poll:
    # `timeout=0`, one whole answer.
    for tr in ("sse", "poll"):
        for rate in ("max", "2000"):
            for kind, cred in (("hook", ["--cookie", COOKIE]), ("jwt", ["--bearer", "@JWT@"])):
                out.append((f"f-{kind}-connect-{tr}-{rate}", tr,
                            ["--mode", "connects", "--transport", tr, "--clients", "64",
                             "--rate", "0" if rate == "max" else rate, "--duration", dur,
                             "--sources", "16", "--topic-prefix", "nohook/", *cred]))
    return out


GAME_NAMES = {"herald": "Herald", "socketio": "Socket.IO 4"}


def game_table(path):
    """(g) game and cursors rooms: one row per measurement, in the order run,
    Herald's n-th measurement of a scenario beside Socket.IO's n-th (its
    round), with the ratio of their p99s. Markdown, or None without g- rows."""
    rows, starts = [], []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if r.get("scenario", "").startswith("g-"):
            rows.append(r)
        elif "started" in r:
            starts.append(r["started"])
    if not rows:
        return None
    rounds = {}
    for r in rows:
        seen = rounds.setdefault((r["scenario"], r["server"]), [])
        r["round"] = len(seen) + 1
        seen.append(r)

    def ms(v):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    def ratio(r, key):
        other = rounds.get((r["scenario"], "socketio"), [])
        o = other[r["round"] - 1] if r["round"] <= len(other) else None
        if r["server"] != "herald" or not o or "error" in o or "error" in r or not o.get(key):
            return "–"
        return f"**{r[key] / o[key]:.3g}×**"

    out = [GAME_HEADING, "",
           "Every client is a member of one room and sends updates to it on its own WebSocket at a fixed rate; "
           "every update should reach every member of its room, the sender included (Herald: a topic each "
           "member subscribed to and publishes to; Socket.IO: `io.to(room).emit('msg', data)`). A Herald client "
           "waits for the answer to its publish before the next; Socket.IO answers no event, so its clients "
           "send on the schedule alone. Latency from the moment an update was sent, and p99 from the moment it "
           "was due. Load average: the machine's (1 minute) before and after the measurement, for what else ran. "
           "Ratio: Herald's p99 over Socket.IO's in the same round (below 1: Herald is faster).", "",
           f"Runs (rounds, with `--append`) started {', '.join(starts)}.", "",
           "| scenario | round | server | clients × updates/s, rooms | updates/s in (offered) "
           "| deliveries/s (expected) | delivered / expected | lost | duplicates | p50 ms | p99 ms | max ms "
           "| p99 from due, ms | server CPU | load generator CPU | load average | p99 ÷ Socket.IO "
           "| p99 from due ÷ Socket.IO |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r["scenario"], i)
    for r in sorted(rows, key=lambda r: (first[r["scenario"]], r["round"], r["server"] != "herald")):
        who = GAME_NAMES.get(r["server"], r["server"])
        if "error" in r:
            out.append(f"| {r['scenario']} | {r['round']} | {who} | error: "
                       f"{r['error'].splitlines()[0][:120] if r['error'] else '?'} |" + " |" * 14)
            continue
        offered = r["subs"] * r["rate"]
        fanout = offered * r["subs"] / max(1, r["rooms"])
        held = "" if r["connected"] == r["subs"] and not r["dropped"] else \
            f" ({max(0, r['connected'] - r['dropped'])}/{r['subs']} held)"
        lost = f"{r['lost']:,} ({r['lost'] / max(1, r['expected']):.1%})" if r["lost"] else "0"
        refused = f", {r['publish_errors']} refused" if r.get("publish_errors") else ""
        load = "–" if "loadavg" not in r else f"{r['loadavg'][0]:.1f} → {r['loadavg'][1]:.1f}"
        out.append(f"| {r['scenario']} | {r['round']} | {who} | {r['subs']} × {r['rate']:g}, {r['rooms']}{held} | "
                   f"{r['publishes_per_s']:,.0f} ({offered:,.0f}){refused} | "
                   f"{r['deliveries_per_s']:,.0f} ({fanout:,.0f}) | {r['received']:,} / {r['expected']:,} | "
                   f"{lost} | {r['duplicates']} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r['max_ms'])} | "
                   f"{ms(r['sched_p99_ms'])} | {r['server_cpu_pct']:.0f}% | {r['loadgen_cpu_pct']:.0f}% | "
                   f"{load} | {ratio(r, 'p99_ms')} | {ratio(r, 'sched_p99_ms')} |")
    return "\n".join(out) + "\n"


GAME_HEADING = "### (g) Game and cursors rooms: Herald beside Socket.IO 4"


def game_tables(path):
    """Puts the (g) table at the end of PATH.md, which bench/report.py wrote
    (it has no (g) table of its own), in place of one put there before, and
    prints it."""
    text = game_table(path)
    if text:
        md = Path(path).with_suffix(".md")
        before = md.read_text().split("\n" + GAME_HEADING)[0].rstrip("\n") + "\n" if md.exists() else ""
        md.write_text(before + "\n" + text)
        print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and short runs (a few minutes)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: " + ",".join(TARGETS))
    ap.add_argument("--only", default="", help="run only scenarios whose name starts with one of these (comma-separated)")
    ap.add_argument("--name", default="latest", help="results file bench/results/NAME.jsonl")
    ap.add_argument("--append", action="store_true", help="append to the results file")
    ap.add_argument("--herald-arg", action="append", default=[], help="extra `herald serve` flag")
    ap.add_argument("--game-table", metavar="JSONL",
                    help="measure nothing: append the (g) rooms table of JSONL to its .md (bench/report.py has none)")
    a = ap.parse_args()
    if a.game_table:
        game_tables(a.game_table)
        return
    targets = [t for t in a.targets.split(",") if t]
    only = [o for o in a.only.split(",") if o]
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{a.name}.jsonl"
    workdir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    print(f"results: {path}\nserver logs: {workdir}", flush=True)
    with open(path, "a" if a.append else "w") as out:
        out.write(json.dumps({"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                              "quick": a.quick}) + "\n")
        for scenario, tr, args in scenarios(a.quick):
            if only and not any(scenario.startswith(o) for o in only):
                continue
            for t in targets:
                if not supports(t, tr):
                    continue
                if scenario.startswith(("c-", "d-")) and t == "ceiling":
                    continue  # the ceiling serves one topic
                if t == "herald-base" and "10000" not in scenario and not scenario.startswith(("d-", "e-")):
                    continue  # the earlier build: at 10k connections, publishes and rooms only
                if t == "herald1" and not scenario.startswith("b-"):
                    continue  # one thread: fan-out and latency only
                if scenario.startswith("e-") and t not in ROOMS:
                    continue  # no client publishes over WebSocket
                if scenario.startswith("g-") and t not in GAME_ROOMS:
                    continue  # Herald beside Socket.IO only
                if t == "socketio" and not scenario.startswith("g-"):
                    continue  # Socket.IO serves the g- rooms only
                if scenario.startswith("f-") and t != "herald":
                    continue  # hooks: Herald's own feature, measured on the current build
                try:
                    measure(t, workdir, out, args, scenario, a.herald_arg, tr)
                except Exception as e:  # a peer that fails to start is reported, not fatal
                    rec = {"server": t, "scenario": scenario, "args": " ".join(args), "error": str(e)}
                    out.write(json.dumps(rec) + "\n")
                    print(f"  {scenario:<28} {t:<8} ERROR {e}", flush=True)
    subprocess.run([sys.executable, str(BENCH / "report.py"), str(path)], check=False)
    game_tables(path)


def machine():
    info = {"cores": os.cpu_count(), "kernel": os.uname().release}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 1024 / 1024, 1)
    except OSError:
        pass
    info["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return info


if __name__ == "__main__":
    main()
