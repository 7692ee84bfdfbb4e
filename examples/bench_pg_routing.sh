#!/usr/bin/env bash
# What PostgreSQL routing costs: pgbench against a throwaway cluster, direct, through a plain
# Ballast listener, and through one with `postgres:` routes (the StartupMessage read and
# routed, the server's first messages watched for the cancel key, buffered forwarding), in
# one run, each round running all three in turn. Prints each round, then the medians of each
# round's ratio to direct.
#
#   cargo build --release && bash examples/bench_pg_routing.sh     # ROUNDS=5 SECS=5
#   MODE=connect bash examples/bench_pg_routing.sh                 # -C: a connection per transaction
#
# Needs: postgresql (server, pgbench), python3. Ports 25532 (PostgreSQL), 23101-23102
# (Ballast), 29102 (its admin API). Every process started here is stopped on exit.
set -u
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-5}; MODE=${MODE:-select}
BIN=${BALLAST_BIN:-target/release/ballast}
. "$(dirname "$0")/bench_lib.sh"
bench_start pgbench python3
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PG/initdb" ] || { echo "bench: no PostgreSQL server (apt-get install postgresql)"; exit 2; }
# exec: the server, started in the background, is then the process whose pid is kept (a
# subshell, or runuser's fork, would be stopped and leave the server running).
as_pg() { if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else exec "$@"; fi; }
mkdir -p "$dir/pg" && chmod 755 "$dir" && { [ "$(id -u)" != 0 ] || chown postgres "$dir/pg"; }
(as_pg "$PG/initdb" -A trust -U postgres -D "$dir/pg/data" >/dev/null) || exit 1
as_pg "$PG/postgres" -D "$dir/pg/data" -k "$dir/pg" -c listen_addresses=127.0.0.1 -p 25532 \
  -c max_connections=200 -c fsync=off >"$dir/pg.log" 2>&1 & pids+=($!)
cat >"$dir/ballast.yaml" <<CONF
workers: 2
admin: {bind: "127.0.0.1:29102"}
listeners:
  - {name: plain, protocol: tcp, bind: "127.0.0.1:23101", target_group: pg}
  - name: routed
    protocol: tcp
    bind: "127.0.0.1:23102"
    target_group: other
    postgres: {routes: [{database: postgres, target_group: pg}]}
target_groups:
  - {name: pg, health_check: {protocol: tcp, interval: 60s, timeout: 1s}, targets: [{address: "127.0.0.1:25532"}]}
  - {name: other, health_check: {protocol: tcp, interval: 60s, timeout: 1s}, targets: [{address: "127.0.0.1:9"}]}
CONF
"$BIN" run --config "$dir/ballast.yaml" --log-level warn >"$dir/ballast.log" 2>&1 & pids+=($!)
ready 25532 23101 23102 || exit 1
pgbench -i -s 1 -q -h 127.0.0.1 -p 25532 -U postgres postgres >/dev/null 2>&1 || { echo "bench: pgbench -i failed"; exit 1; }
case $MODE in
  select) flags="-S -n -c 10 -j 2" ;;
  connect) flags="-S -n -C -c 10 -j 2" ;;
  *) echo "MODE is select or connect"; exit 2 ;;
esac
tps() { pgbench $flags -T "$SECS" -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null | awk '/^tps/{print $3; exit}'; }
echo "pgbench $flags, $SECS s a run, $ROUNDS rounds (tps: direct plain routed)"
: >"$dir/rounds"
for r in $(seq "$ROUNDS"); do
  d=$(tps 25532); p=$(tps 23101); q=$(tps 23102)
  echo "round $r: $d $p $q"
  echo "$d $p $q" >>"$dir/rounds"
done
python3 - "$dir/rounds" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
plain = statistics.median(p / d for d, p, q in rows)
routed = statistics.median(q / d for d, p, q in rows)
same = statistics.median(q / p for d, p, q in rows)
print(f"median of {len(rows)} rounds: plain {plain:.2f}x direct, routed {routed:.2f}x direct, "
      f"routed {same:.3f}x plain")
PY
