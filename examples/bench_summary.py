#!/usr/bin/env python3
"""Summary of an examples/bench_peers.sh run: bench_summary.py OUT_DIR.

Reads OUT_DIR/rows.txt ("round=R target=T key=value ..."), curve.txt and memory.txt; prints a
Markdown table (per row, the median over rounds of each round's ratio to direct, or the median
latency in ms; and Ballast over HAProxy, the median of the per-round quotients) and writes
OUT_DIR/curve.dat for bench_curve.gp (medians per connection count).
"""
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "haproxy", "nginx", "ballast"]
# An older Ballast run beside (BASELINE_BIN): a column of its own, and Ballast over it.
BASELINE = "baseline"
ROWS = [
    ("iperf1", "iperf3 single stream", "rate"),
    ("iperf1_cpu", "iperf3 single stream: balancer CPU ms per GB", "latency"),
    ("iperf4", "iperf3 `-P 4`", "rate"),
    ("iperf4_cpu", "iperf3 `-P 4`: balancer CPU ms per GB", "latency"),
    ("udp64", "iperf3 UDP 64 B, packets received/s", "rate"),
    ("keepalive", "HTTP keep-alive rps (wrk, 50 conns)", "rate"),
    ("keepalive_p99_ms", "keep-alive p99 (ms)", "latency"),
    ("close", "new connection per request (wrk, 50 conns)", "rate"),
    ("close_p99_ms", "new connection p99 (ms)", "latency"),
    ("redis_set", "redis-benchmark SET (50 clients)", "rate"),
    ("redis_get", "redis-benchmark GET (50 clients)", "rate"),
    ("pgbench_s", "pgbench -S (10 clients)", "rate"),
]


def parse(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                rows.append(fields)
    except FileNotFoundError:
        pass
    return rows


def number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, unit):
    if value is None:
        return "—"
    return f"{value:.2f}×" if unit == "×" else f"{value:.2f}"


def main():
    out = sys.argv[1]
    by_round = defaultdict(dict)  # round -> target -> fields
    for fields in parse(f"{out}/rows.txt"):
        by_round[fields["round"]][fields["target"]] = fields
    rounds = sorted(by_round, key=int)
    baseline = any(BASELINE in by_round[r] for r in rounds)
    targets = TARGETS + ([BASELINE] if baseline else [])
    print(f"Medians of {len(rounds)} rounds (per-round ratio to direct; latency in ms; CPU in ms per GB).\n")
    extra = " Ballast before | Ballast ÷ before |" if baseline else ""
    print("| row | direct | Ballast | HAProxy | nginx | Ballast ÷ HAProxy |" + extra)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if baseline else ""))
    for key, label, kind in ROWS:
        per = defaultdict(list)
        quotient, over_baseline = [], []
        for r in rounds:
            got = {t: number(by_round[r].get(t, {}).get(key)) for t in targets}
            d = got["direct"]
            for t in targets:
                v = got[t]
                if kind == "latency" or t == "direct":
                    per[t].append(v)
                elif v is not None and d:
                    per[t].append(v / d)
            b, h = got["ballast"], got["haproxy"]
            if b is not None and h:
                # Lower is better for latency: the quotient says how many times HAProxy's.
                quotient.append(b / h)
            old = got.get(BASELINE)
            if b is not None and old:
                over_baseline.append(b / old)
        if all(v is None for t in TARGETS for v in per[t]):
            continue  # a row not measured in this run
        unit = "" if kind == "latency" else "×"
        cells = [fmt(median(per["direct"]), "")]
        cells += [fmt(median(per[t]), unit) for t in ("ballast", "haproxy", "nginx")]
        cells.append(fmt(median(quotient), "×"))
        if baseline:
            cells += [fmt(median(per[BASELINE]), unit), fmt(median(over_baseline), "×")]
        print(f"| {label} | " + " | ".join(cells) + " |")

    curve = defaultdict(lambda: defaultdict(lambda: ([], [])))
    for fields in parse(f"{out}/curve.txt"):
        rps, p99 = curve[int(fields["conns"])][fields["target"]]
        rps.append(number(fields.get("rps")))
        p99.append(number(fields.get("p99_ms")))
    if curve:
        with open(f"{out}/curve.dat", "w") as f:
            f.write("# conns " + " ".join(f"{t}_rps" for t in TARGETS) + " "
                    + " ".join(f"{t}_p99_ms" for t in TARGETS) + "\n")
            for conns in sorted(curve):
                rps = [median(curve[conns][t][0]) for t in TARGETS]
                p99 = [median(curve[conns][t][1]) for t in TARGETS]
                f.write(f"{conns} " + " ".join("NaN" if v is None else f"{v:.2f}" for v in rps + p99) + "\n")
        print("\nKeep-alive curve, medians (rps / p99 ms):\n")
        print("| connections | " + " | ".join(targets) + " |")
        print("|---:|" + "---:|" * len(targets))
        for conns in sorted(curve):
            cells = []
            for t in targets:
                r, p = median(curve[conns][t][0]), median(curve[conns][t][1])
                cells.append("—" if r is None else f"{r:,.0f} / {p:.2f}" if p is not None else f"{r:,.0f}")
            print(f"| {conns:,} | " + " | ".join(cells) + " |")

    memory = parse(f"{out}/memory.txt")
    if memory:
        print("\nIdle connections (KiB per connection):\n")
        print("| target | balancer RSS | kernel slab, whole chain | TCP buffer pages |")
        print("|---|---:|---:|---:|")
        for m in memory:
            print(f"| {m['target']} | {m['rss_kib_per_conn']} | {m['kernel_slab_kib_per_conn']} | {m['tcp_buffer_pages']} |")


if __name__ == "__main__":
    main()
