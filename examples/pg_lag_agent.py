#!/usr/bin/env python3
"""A Ballast (and HAProxy) agent for a PostgreSQL replica: reports its replication lag.

Run it on each replica's host, and point the read group's `agent_check` at its port:

    target_groups:
      - name: reads
        algorithm: least_connections   # weighs (round_robin ignores an agent's `N%`)
        agent_check: {port: 5480, interval: 2s, timeout: 1s}
        targets: [{address: 10.0.2.10:5432}, {address: 10.0.2.11:5432}]

    pg_lag_agent.py --port 5480 --dsn "host=/var/run/postgresql user=postgres" \\
        --full-below 5 --drain-above 30

Each connection gets one line, from the lag (seconds, from pg_last_xact_replay_timestamp();
0 while everything received is replayed, so an idle primary does not look like lag):
  - lag under --full-below:           `up ready 100%`
  - lag between the two:              `up ready N%`, falling linearly to 10%
  - lag over --drain-above:           `up drain # lag 42s`  (no new reads; open ones go on)
  - not a replica (a primary):        `up drain # not a replica` (reads stay off the primary)
  - the server cannot be asked:       `down # <why>`
Standard library and the `psql` client only.
"""

import argparse
import socketserver
import subprocess

QUERY = (
    "select pg_is_in_recovery(), "
    "case when pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() then 0 "
    "else coalesce(extract(epoch from now() - pg_last_xact_replay_timestamp()), 0) end"
)


def line(args):
    """The agent's answer now."""
    try:
        out = subprocess.run(
            ["psql", args.dsn, "-tAXc", QUERY, "-F", " "],
            capture_output=True, text=True, timeout=args.timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"down # psql: {e}"
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["psql failed"])[-1]
        return f"down # {why}"
    fields = out.stdout.split()
    if len(fields) != 2:
        return f"down # unexpected answer {out.stdout.strip()!r}"
    in_recovery, lag = fields[0] == "t", float(fields[1])
    if not in_recovery:
        return "up drain # not a replica"
    if lag > args.drain_above:
        return f"up drain # lag {lag:.0f}s"
    if lag <= args.full_below:
        return "up ready 100%"
    span = args.drain_above - args.full_below
    percent = max(10, round(100 - 90 * (lag - args.full_below) / span))
    return f"up ready {percent}% # lag {lag:.0f}s"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5480)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--dsn", default="host=/var/run/postgresql user=postgres dbname=postgres")
    p.add_argument("--full-below", type=float, default=5.0, help="seconds of lag at full weight")
    p.add_argument("--drain-above", type=float, default=30.0, help="seconds of lag that drain")
    p.add_argument("--timeout", type=float, default=0.8, help="seconds for psql to answer")
    args = p.parse_args()
    if args.drain_above <= args.full_below:
        p.error("--drain-above must exceed --full-below")

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall((line(args) + "\n").encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer((args.bind, args.port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
