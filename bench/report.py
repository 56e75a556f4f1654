#!/usr/bin/env python3
"""Turns bench/results/NAME.jsonl into a Markdown table (printed, and written
beside it as NAME.md) and, when matplotlib is installed, a PNG chart.

usage: report.py RESULTS.jsonl [MORE.jsonl ...] [--chart docs/bench.png]

With several files, their measurements are taken together and a scenario
measured in a later file replaces that scenario's every cell from earlier
files (a re-run of some scenarios over a full run: cells of one scenario
always come from one run); the tables are written beside the last file.
"""

import json
import sys
from pathlib import Path

PEERS = ["nchan1", "nchan2", "node", "pushpin"]
COLS = ["herald", "herald1", "herald-base", "nchan1", "nchan2", "node", "pushpin", "ceiling"]
NAMES = {"herald": "Herald", "herald1": "Herald ×1", "herald-base": "Herald before", "nchan1": "Nchan ×1", "nchan2": "Nchan ×2", "node": "Node",
         "pushpin": "Pushpin", "ceiling": "ceiling"}


def load(path):
    machine, rows = {}, []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if "machine" in r:
            machine = r
        else:
            rows.append(r)
    return machine, rows


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "bytes":
        return f"{v / 1024:.1f} KiB"
    if kind == "rate":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if kind == "ms":
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return str(v)


def ok(r):
    """A measurement that is usable for a comparison."""
    return r and "error" not in r


def clean(r):
    return ok(r) and r.get("connect_errors", 0) == 0 and r.get("dropped", 0) == 0 and r.get("lost", 0) == 0


def metric(r, key):
    return r.get(key) if ok(r) else None


def ratio(herald, peers, lower_is_better):
    vals = [v for v in peers if v]
    if herald is None or not vals:
        return "–", None
    best = min(vals) if lower_is_better else max(vals)
    if best == 0:
        return "–", None
    x = herald / best
    return f"**{x:.2f}×**", x


def table(rows, scenarios, key, kind, lower, title, note=""):
    by = {}
    for r in rows:
        by[(r["scenario"], r.get("transport") or r["args"].split()[1], r["server"])] = r
    keys = sorted({(s, t) for (s, t, _) in by if any(s.startswith(p) for p in scenarios)})
    if not keys:
        return None
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    out.append("| scenario | transport | " + " | ".join(NAMES[c] for c in COLS) + " | Herald ÷ best peer | Herald ÷ ceiling |")
    out.append("|---|---|" + "---|" * len(COLS) + "---|---|")
    for (s, t) in keys:
        cells = []
        for c in COLS:
            r = by.get((s, t, c))
            if r is None:
                cells.append("")
            elif not ok(r):
                cells.append("error")
            else:
                v = fmt(metric(r, key), kind)
                flags = []
                if r.get("connect_errors") or r.get("dropped"):
                    held = r.get("connected", 0) - r.get("dropped", 0)
                    flags.append(f"{max(0, held)}/{r.get('subs')} held")
                if r.get("lost"):
                    flags.append(f"lost {r['lost'] / max(1, r['expected']):.1%}")
                cells.append(v + (f" ({', '.join(flags)})" if flags else ""))
        h = by.get((s, t, "herald"))
        hv = metric(h, key) if h else None
        peers = [metric(by[(s, t, p)], key) if (s, t, p) in by and clean(by[(s, t, p)]) else None for p in PEERS]
        rtxt, _ = ratio(hv, peers, lower)
        c = by.get((s, t, "ceiling"))
        cv = metric(c, key) if c else None
        ctxt = f"{hv / cv:.2f}×" if hv and cv else "–"
        out.append(f"| {s} | {t} | " + " | ".join(cells) + f" | {rtxt} | {ctxt} |")
    return "\n".join(out) + "\n"


def rooms_table(rows):
    """(e) rooms: one row per measurement (Herald only), the figures side by side."""
    rs = [r for r in rows if r["scenario"].startswith("e-")]
    if not rs:
        return None
    out = ["### (e) Rooms: every client publishes to its room on its own WebSocket", "",
           "Each message should reach every member of its room, the sender included. Latency from the "
           "moment a message was sent, and p99 from the moment it was due at the fixed rate (coordinated "
           "omission corrected: a client waits for the answer to its publish before the next). "
           "`refused`: publishes answered with an error; `unanswered`: never answered.", "",
           "| scenario | server | clients × msg/s, rooms | publishes/s (offered) | deliveries/s | p50 ms | p99 ms "
           "| p999 ms | max ms | p99 from due, ms | lost | duplicates | refused | unanswered | server CPU |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rs, key=lambda r: (r["scenario"], r["server"])):
        if not ok(r):
            out.append(f"| {r['scenario']} | {NAMES.get(r['server'], r['server'])} | error |" + " |" * 12)
            continue
        offered = r["subs"] * r["rate"]
        lost = f"{r['lost']} ({r['lost'] / max(1, r['expected']):.1%})" if r["lost"] else "0"
        held = "" if r["connected"] == r["subs"] and not r["dropped"] else \
            f" ({max(0, r['connected'] - r['dropped'])}/{r['subs']} held)"
        out.append(f"| {r['scenario']} | {NAMES.get(r['server'], r['server'])} | "
                   f"{r['subs']} × {r['rate']:g}, {r['rooms']}{held} | "
                   f"{fmt(r['publishes_per_s'], 'rate')} ({fmt(offered, 'rate')}) | "
                   f"{fmt(r['deliveries_per_s'], 'rate')} | {fmt(r['p50_ms'], 'ms')} | {fmt(r['p99_ms'], 'ms')} | "
                   f"{fmt(r['p999_ms'], 'ms')} | {fmt(r['max_ms'], 'ms')} | {fmt(r['sched_p99_ms'], 'ms')} | "
                   f"{lost} | {r['duplicates']} | {r['publish_errors']} | {r['publish_unanswered']} | "
                   f"{r['server_cpu_pct']:.0f}% |")
    return "\n".join(out) + "\n"


def baseline_of(scenario):
    """The f- scenario `scenario` is compared with: through the publish hook
    against the same without it (`hook` -> `nohook`), the connect hook
    against a JWT (`nohook` -> `jwt` for publishes, `hook` -> `jwt` for
    connects)."""
    kind, _, rest = scenario[2:].partition("-")
    if kind == "hook":
        return [f"f-nohook-{rest}", f"f-jwt-{rest}"]
    if kind == "nohook":
        return [f"f-jwt-{rest}"]
    return []


HOOK_NOTE = ("Herald with `--hook-url` (the load generator's `herald-bench hook-backend`, which checks every "
             "signature), `--jwt-secret` and `bench/hooks.toml`, the same for every row. `cookie`: every request "
             "brings the session cookie `session=bench`, so Herald asks the connect hook who it is; `JWT`: a "
             "bearer token Herald checks alone. `hook/` topics have `publish_hook = true`, `nohook/` topics not. "
             "Hooks asked: the backend's count of connect and publish requests over the run, and of requests "
             "whose signature did not verify. The ratio divides each row's rate by the row it differs from in "
             "one thing (in the same round: the n-th row of one scenario against the n-th of the other).")


def hooks_table(rows):
    """(f) Hooks: one row per measurement (Herald only), each against its baseline."""
    rs = [r for r in rows if r["scenario"].startswith("f-")]
    if not rs:
        return None
    by = {}
    for r in rs:
        by.setdefault(r["scenario"], []).append(r)

    def cred(r):
        return "JWT" if "--bearer" in r.get("args", "") else "cookie"

    def versus(r, key):
        s = r["scenario"]
        n = by[s].index(r)
        for b in baseline_of(s):
            if b in by and n < len(by[b]) and ok(by[b][n]) and by[b][n].get(key):
                x = (r.get(key) or 0) / by[b][n][key]
                return f"**{x:.2f}×** {b}"
        return "–"

    def hooks(r):
        h = r.get("hook") or {}
        asked = f"{h.get('connect_granted', 0) + h.get('connect_unidentified', 0):,} / {h.get('publish', 0):,}"
        return asked, str(h.get("bad_signature", "–"))

    def rank(s):
        # Publishes by publisher count, connects by transport and load; then
        # hook, nohook, jwt: each row above its baseline.
        kind, _, rest = s[2:].partition("-")
        parts = [(1, int(x), "") if x.isdigit() else (0, 0, x) for x in rest.split("-")]
        return parts, ["hook", "nohook", "jwt"].index(kind) if kind in ("hook", "nohook", "jwt") else 9

    def per_op(cpu_pct, rate):
        return f"{cpu_pct / 100 / rate * 1e6:.0f}" if rate else "–"

    order = sorted(by, key=rank)
    pubs = [r for s in order if "-publish-" in s for r in by[s]]
    conns = [r for s in order if "-connect-" in s for r in by[s]]
    out = ["### (f) Hooks: publishes and connects through the application's hooks", "", HOOK_NOTE, ""]
    if pubs:
        out += ["Publishes: N keep-alive publishers, each to its own topic as fast as answered, one SSE "
                "subscriber per topic (as in (d)). Ratio: publishes/s against the baseline.", "",
                "| scenario | credential | topics | publishers | publishes/s | p50 ms | p99 ms | refused | lost "
                "| hooks asked (connect / publish) | bad signatures | server CPU | server µs per publish "
                "| backend CPU | ÷ baseline |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in pubs:
            if not ok(r):
                out.append(f"| {r['scenario']} | error |" + " |" * 13)
                continue
            asked, bad = hooks(r)
            topics = "hook/" if r["scenario"].startswith("f-hook-") else "nohook/"
            lost = f"{r['lost']} ({r['lost'] / max(1, r['expected']):.1%})" if r["lost"] else "0"
            if r.get("dropped") or r.get("connect_errors"):
                lost += f" ({r['connected'] - r.get('dropped', 0)}/{r['subs']} held)"
            out.append(f"| {r['scenario']} | {cred(r)} | {topics} | {r['publishers']} | "
                       f"{fmt(r['publishes_per_s'], 'rate')} | {fmt(r['publish_p50_ms'], 'ms')} | "
                       f"{fmt(r['publish_p99_ms'], 'ms')} | {r['publish_errors']} | {lost} | {asked} | {bad} | "
                       f"{r['server_cpu_pct']:.0f}% | {per_op(r['server_cpu_pct'], r['publishes_per_s'])} | "
                       f"{r.get('backend_cpu_pct', 0):.0f}% | {versus(r, 'publishes_per_s')} |")
        out.append("")
    if conns:
        out += ["Connects: 64 connectors, each opening a new connection, sending one request and closing it "
                "once answered; `-max` as fast as answered, `-2000` 2,000 a second in all. SSE: accepted once "
                "the stream's preamble (`retry:`, `id:`) arrived; poll: `timeout=0`, one whole `200` answer. "
                "Latency from opening the connection to that answer; p99 from due: from the moment the "
                "attempt was due at the fixed rate. Ratio: accepted connects/s against the baseline.", "",
                "| scenario | credential | transport | connects/s (offered) | p50 ms | p99 ms | p99 from due, ms "
                "| refused | failed | hooks asked (connect / publish) | bad signatures | server CPU "
                "| server µs per connect | load generator CPU | backend CPU | ÷ baseline |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in conns:
            if not ok(r):
                out.append(f"| {r['scenario']} | error |" + " |" * 14)
                continue
            asked, bad = hooks(r)
            offered = fmt(r["rate"], "rate") if r["rate"] else "max"
            refused = str(r["refused"])
            if r["refusals"]:
                refused += " (" + ", ".join(f"{k}: {v}" for k, v in r["refusals"].items()) + ")"
            out.append(f"| {r['scenario']} | {cred(r)} | {r['transport']} | "
                       f"{fmt(r['connects_per_s'], 'rate')} ({offered}) | {fmt(r['p50_ms'], 'ms')} | "
                       f"{fmt(r['p99_ms'], 'ms')} | {fmt(r['sched_p99_ms'], 'ms')} | {refused} | {r['failed']} | "
                       f"{asked} | {bad} | {r['server_cpu_pct']:.0f}% | "
                       f"{per_op(r['server_cpu_pct'], r['connects_per_s'])} | {r['loadgen_cpu_pct']:.0f}% | "
                       f"{r.get('backend_cpu_pct', 0):.0f}% | {versus(r, 'connects_per_s')} |")
    return "\n".join(out) + "\n"


def render(paths):
    parts, rows, machine = [], [], {}
    for path in paths:
        machine, more = load(path)
        rerun = {r["scenario"] for r in more}
        rows = [r for r in rows if r["scenario"] not in rerun] + more
        m = machine.get("machine", {})
        which = f"`{Path(path).name}`: " if len(paths) > 1 else ""
        parts += [f"{which}Run of {machine.get('started', '?')} on {m.get('cores', '?')} cores "
                  f"({m.get('cpu', '?')}), {m.get('mem_gib', '?')} GiB, kernel {m.get('kernel', '?')}, "
                  f"open-file limit {m.get('nofile', '?')}{' (quick run)' if machine.get('quick') else ''}"
                  f"{': ' + ', '.join(sorted({r['scenario'] for r in more})) if len(paths) > 1 else ''}.", ""]
    parts.append(table(rows, ["a-"], "bytes_per_conn", "bytes", True,
                       "(a) Memory per idle connection (server RSS growth ÷ connections; lower is better)",
                       "A cell notes `held x/N` when not every connection was established and kept."))
    parts.append(table(rows, ["b-"], "deliveries_per_s", "rate", False,
                       "(b) Fan-out deliveries per second, one topic (higher is better)",
                       "`-100`: 100 messages/s of 100 bytes; `-max`: as fast as the server delivers "
                       "(4 publishers, at most 64 messages not yet delivered to every subscriber). "
                       "Peers with loss are left out of the best-peer ratio."))
    parts.append(table(rows, ["b-"], "p99_ms", "ms", True,
                       "(b) Fan-out publish-to-deliver latency p99, ms, from the moment each message was sent (lower is better)",
                       "A server that answers publishes slowly is sent fewer messages: see `publishes/s` below. "
                       "Herald ×1 is Herald on one worker thread (`--workers 1`), beside Nchan ×1's one worker process."))
    parts.append(table(rows, ["b-"], "sched_p99_ms", "ms", True,
                       "(b) Fan-out latency p99, ms, from the moment each message was due at the fixed rate (lower is better)",
                       "Corrected for coordinated omission: at `-100` the publisher means to send a message every 10 ms; "
                       "when a server answers a publish late, the following messages go out late, and that wait "
                       "counts. Equal to the table above when every message went out on time (and at `-max`)."))
    parts.append(table(rows, ["b-"], "publishes_per_s", "rate", False,
                       "(b) Messages published per second (at `-100` the publisher offers 100/s)"))
    parts.append(table(rows, ["c-"], "deliveries_per_s", "rate", False,
                       "(c) Many topics: each subscriber on its own topic plus a shared one, deliveries/s"))
    parts.append(table(rows, ["c-"], "p99_ms", "ms", True, "(c) Many topics: latency p99, ms"))
    parts.append(table(rows, ["c-"], "bytes_per_conn", "bytes", True, "(c) Many topics: memory per connection"))
    parts.append(table(rows, ["d-"], "publishes_per_s", "rate", False,
                       "(d) Publish throughput, publishes/s with 1/16/256 concurrent publishers (higher is better)"))
    parts.append(table(rows, ["d-"], "publish_p99_ms", "ms", True, "(d) Publish round trip p99, ms"))
    parts.append(rooms_table(rows))
    parts.append(hooks_table(rows))
    return "\n".join(p for p in parts if p is not None), machine, rows


CHART_PANELS = [
    ("a-idle-10000", "bytes_per_conn", 1 / 1024, "KiB per idle connection, 10k (lower is better)"),
    ("b-fanout-10000-max", "deliveries_per_s", 1 / 1000, "fan-out k deliveries/s, 10k subs (higher is better)"),
    ("b-fanout-10000-100", "sched_p99_ms", 1 / 1000, "p99 s from due time, 10k subs, 100 msg/s (lower is better)"),
    ("b-fanout-10000-5", "p99_ms", 1, "p99 ms, 10k subs, 5 msg/s: equal load (lower is better)"),
]


def chart(rows, png):
    if not any(r["scenario"] == scen for r in rows for (scen, _, _, _) in CHART_PANELS):
        # A run of other scenarios (rooms, publish) leaves the chart as it is.
        print(f"no charted scenario in these results: {png} left as it is", file=sys.stderr)
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    panels = CHART_PANELS
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    colors = {"herald": "#d1495b", "herald1": "#a4161a", "herald-base": "#f4a3ad", "nchan1": "#00798c", "nchan2": "#30638e", "node": "#edae49",
              "pushpin": "#66a182", "ceiling": "#8d8d8d"}
    for ax, (scen, key, scale, title) in zip(axes, panels):
        transports = ["sse", "ws"]
        width = 0.8 / len(COLS)
        for i, c in enumerate(COLS):
            vals = []
            for t in transports:
                # The last measurement of a cell wins, as in the tables.
                r = next((r for r in reversed(rows) if r["scenario"] == scen and r["server"] == c
                          and r.get("transport") == t and ok(r) and key in r), None)
                if r and "p99" in key and not clean(r):
                    r = None  # a latency of the few deliveries a lossy server made means little
                vals.append((r[key] * scale) if r else 0)
            xs = [j + (i - len(COLS) / 2 + 0.5) * width for j in range(len(transports))]
            ax.bar(xs, vals, width, label=NAMES[c], color=colors[c])
        ax.set_xticks(range(len(transports)))
        ax.set_xticklabels([t.upper() for t in transports])
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Herald vs peers on one 2-core machine (same load generator; every panel from one run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"chart: {png}")


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    args = sys.argv[1:]
    chart_png = None
    if "--chart" in args:
        i = args.index("--chart")
        chart_png = args[i + 1]
        del args[i:i + 2]
    paths = [Path(a) for a in args]
    text, _, rows = render(paths)
    print(text)
    paths[-1].with_suffix(".md").write_text(text)
    if chart_png:
        chart(rows, chart_png)


if __name__ == "__main__":
    main()
