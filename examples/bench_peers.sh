#!/usr/bin/env bash
# Ballast beside HAProxy (tcp mode) and nginx (stream) and direct, in one run, on loopback:
# the README's "Performance" table and curve. Every round runs every target in turn, so machine
# drift hits all alike; the summary gives, per row, the median over rounds of each round's
# ratio to direct (rates) or the median latency. Compare ratios from one run, never absolute
# figures across runs.
#
#   cargo build --release && bash examples/bench_peers.sh      # ROUNDS=5 SECS=4 by default
#   ROWS="keepalive close" CURVE= bash examples/bench_peers.sh  # some rows, no curve
#   OUT=/tmp/b bash examples/bench_peers.sh                     # where results go (bench-out)
#   BASELINE_BIN=/tmp/old/ballast bash examples/bench_peers.sh  # + an older Ballast, for before/after
#   BASELINE_BIN=target/release/ballast BASELINE_EXTRA=", forwarding: buffered" \
#     ROWS=iperf4 bash examples/bench_peers.sh                  # + the same with other listener keys
#   BALLAST_EXTRA=", forwarding: sockmap" bash examples/bench_peers.sh  # keys for Ballast's listeners
#
# Rows (ROWS): iperf1 (iperf3 single stream) and iperf4 (-P 4), each with the balancer's CPU
# time per GB moved (user + system, from /proc: a steadier measure than the rate on a machine
# whose cores the clients, servers and balancer share), udp64 (iperf3 UDP, 64-byte
# datagrams, packets received/s; HAProxy has no UDP), keepalive (wrk, 50 connections, rps and
# p99), close (wrk, a new connection per request), redis (redis-benchmark SET and GET, 50
# clients), pgbench (pgbench -S, 10 clients, against a throwaway PostgreSQL cluster).
# Curve (CURVE, connection counts): keep-alive rps and p99 against concurrent connections,
# drawn to $OUT/curve.png with gnuplot. Memory (MEMORY=1): RSS and kernel memory per idle
# proxied connection (2,000 idle connections held open through each balancer).
#
# Needs: iperf3 wrk nginx libnginx-mod-stream haproxy redis-server redis-tools postgresql
# gnuplot-nox python3 (Debian packages). Balancers: 2 workers / threads each, HAProxy with
# splice-auto. Ports 25201 28080 26379 25432 (origins), 21xxx HAProxy, 22xxx nginx, 23xxx
# Ballast, 24xxx the baseline Ballast; admin APIs 29100 and 29101. Every process started here
# is stopped on exit.
set -u
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-4}
ROWS=${ROWS:-"iperf1 iperf4 udp64 keepalive close redis pgbench"}
CURVE=${CURVE-"1 10 100 1000 5000"}; CURVE_SECS=${CURVE_SECS:-3}
MEMORY=${MEMORY:-1}
BIN=${BALLAST_BIN:-target/release/ballast}
OUT=${OUT:-bench-out}
. "$(dirname "$0")/bench_lib.sh"
bench_start iperf3 wrk nginx haproxy redis-server redis-benchmark pgbench gnuplot python3
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PG/initdb" ] || { echo "bench: no PostgreSQL server (apt-get install postgresql)"; exit 2; }
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "bench: apt-get install libnginx-mod-stream"; exit 2; }

# --- origins -------------------------------------------------------------------------------
origin 28080
iperf3 -s -B 127.0.0.1 -p 25201 >/dev/null 2>&1 & pids+=($!)
redis-server --port 26379 --bind 127.0.0.1 --save '' --appendonly no --maxclients 10000 >/dev/null 2>&1 & pids+=($!)
# PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
# exec: the server, started in the background, is then the process whose pid is kept (a
# subshell, or runuser's fork, would be stopped and leave the server running).
as_pg() { if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else exec "$@"; fi; }
mkdir -p "$dir/pg" && chmod 755 "$dir" && { [ "$(id -u)" != 0 ] || chown postgres "$dir/pg"; }
(as_pg "$PG/initdb" -A trust -U postgres -D "$dir/pg/data" >/dev/null) || exit 1
as_pg "$PG/postgres" -D "$dir/pg/data" -k "$dir/pg" -c listen_addresses=127.0.0.1 -p 25432 \
  -c max_connections=200 -c fsync=off >"$dir/pg.log" 2>&1 & pids+=($!)

# --- balancers: port base+1 iperf3 (TCP, and UDP for nginx and Ballast), +2 HTTP, +3 Redis,
# +4 PostgreSQL ------------------------------------------------------------------------------
origins=(0 25201 28080 26379 25432)
cat >"$dir/haproxy.cfg" <<CONF
global
    maxconn 7000
    nbthread 2
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-auto
CONF
for k in 1 2 3 4; do
  printf 'listen l%s\n    bind 127.0.0.1:%s\n    server s 127.0.0.1:%s\n' "$k" $((21000 + k)) "${origins[$k]}" >>"$dir/haproxy.cfg"
done
{
  echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
  echo "worker_processes 2; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err warn;"
  echo "worker_rlimit_nofile 20000; events { worker_connections 16000; }"
  echo "stream {"
  for k in 1 2 3 4; do
    echo "  server { listen 127.0.0.1:$((22000 + k)) reuseport; proxy_pass 127.0.0.1:${origins[$k]}; }"
  done
  echo "  server { listen 127.0.0.1:22001 udp reuseport; proxy_pass 127.0.0.1:25201; proxy_timeout 10s; }"
  echo "}"
} >"$dir/nginx.conf"
ballast_config() { # base admin_port [more TCP listener keys, e.g. ", forwarding: buffered"]
  echo "workers: 2"
  echo "admin: {bind: \"127.0.0.1:$2\"}"
  echo "listeners:"
  for k in 1 2 3 4; do
    echo "  - {name: l$k, protocol: tcp, bind: \"127.0.0.1:$(($1 + k))\", target_group: g$k, max_connections: 7000${3:-}}"
  done
  echo "  - {name: u1, protocol: udp, bind: \"127.0.0.1:$(($1 + 1))\", target_group: g1}"
  echo "target_groups:"
  for k in 1 2 3 4; do
    echo "  - {name: g$k, health_check: {protocol: tcp, interval: 60s, timeout: 1s}, targets: [{address: \"127.0.0.1:${origins[$k]}\"}]}"
  done
}
ballast_config 23000 29100 "${BALLAST_EXTRA:-}" >"$dir/ballast.yaml"
haproxy -f "$dir/haproxy.cfg" -db >"$dir/haproxy.log" 2>&1 & pids+=($!); haproxy_pid=$!
nginx -c "$dir/nginx.conf" >/dev/null 2>&1 & pids+=($!); nginx_pid=$!
"$BIN" run --config "$dir/ballast.yaml" --log-level warn >"$dir/ballast.log" 2>&1 & pids+=($!); ballast_pid=$!
targets="direct:0 haproxy:21000 nginx:22000 ballast:23000"
if [ -n "${BASELINE_BIN:-}" ]; then
  ballast_config 24000 29101 "${BASELINE_EXTRA:-}" >"$dir/baseline.yaml"
  "$BASELINE_BIN" run --config "$dir/baseline.yaml" --log-level warn >"$dir/baseline.log" 2>&1 & pids+=($!); baseline_pid=$!
  targets="$targets baseline:24000"
  ready 24002 24003 24004 || exit 1
fi
ready 28080 26379 25432 21002 22002 23002 21003 22003 23003 21004 22004 23004 || exit 1
pgbench -i -s 1 -q -h 127.0.0.1 -p 25432 -U postgres postgres >/dev/null 2>&1 || { echo "bench: pgbench -i failed"; exit 1; }
sleep 0.5

port() { if [ "$1" = 0 ]; then echo "${origins[$2]}"; else echo $(($1 + $2)); fi; }
wrk_rps_p99() { awk '/Requests\/sec/{r=$2} / 99%/{p=$2} END{ if (p ~ /us$/) p = p / 1000; else if (p ~ /ms$/) p = p + 0; else if (p ~ /s$/) p = p * 1000; print (r ? r : "NA"), (p ? p : "NA") }'; }
redis_rps() { # test name -> rps from redis-benchmark --csv
  awk -F, -v t="\"$1\"" '$1==t {gsub(/"/,"",$2); print $2}'; }

balancer_pids() { # name -> the balancer's processes (none for direct)
  case $1 in
    haproxy) echo "$haproxy_pid" ;; ballast) echo "$ballast_pid" ;; baseline) echo "${baseline_pid:-}" ;;
    nginx) echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" ;;
  esac
}
cpu_ticks() { # pids -> their user + system CPU, in clock ticks
  local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo "$t"; }
iperf() { # key name base [iperf3 flags] -> " key=Gbit/s key_cpu=ms of balancer CPU per GB moved"
  local key=$1 name=$2 base=$3 json c0 c1; shift 3
  local pids; pids=$(balancer_pids "$name")
  c0=$(cpu_ticks $pids)
  json=$(iperf3 -c 127.0.0.1 -p "$(port "$base" 1)" -t "$SECS" -J "$@" 2>/dev/null)
  c1=$(cpu_ticks $pids)
  echo -n " $key=$(gbps <<<"$json")"
  [ -n "$pids" ] && echo -n " ${key}_cpu=$(python3 -c 'import json,sys; b=json.loads(sys.argv[1])["end"]["sum_received"]["bytes"]; print(round((int(sys.argv[2])*1000/int(sys.argv[3]))/(b/1e9),1))' "$json" "$((c1 - c0))" "$(getconf CLK_TCK)" 2>/dev/null || echo NA)"
  echo
}

row() { # name base -> "key=value ..." for the chosen rows
  local name=$1 base=$2 out="" r
  for row in $ROWS; do
    case $row in
      iperf1) out+=$(iperf iperf1 "$name" "$base") ;;
      iperf4) out+=$(iperf iperf4 "$name" "$base" -P 4) ;;
      udp64) r=NA; [ "$name" != haproxy ] && r=$(iperf3 -c 127.0.0.1 -p "$(port "$base" 1)" -u -b 0 -l 64 -t "$SECS" -J 2>/dev/null | kpps); out+=" udp64=$r" ;;
      keepalive) read -r a b <<<"$(wrk -t1 -c50 -d"${SECS}s" --latency "http://127.0.0.1:$(port "$base" 2)/" 2>/dev/null | wrk_rps_p99)"
        out+=" keepalive=$a keepalive_p99_ms=$b" ;;
      close) read -r a b <<<"$(wrk -t1 -c50 -d"${SECS}s" --latency -H 'Connection: close' "http://127.0.0.1:$(port "$base" 2)/" 2>/dev/null | wrk_rps_p99)"
        out+=" close=$a close_p99_ms=$b" ;;
      redis) r=$(redis-benchmark -h 127.0.0.1 -p "$(port "$base" 3)" -t set,get -c 50 -n $((SECS * 40000)) --csv 2>/dev/null)
        out+=" redis_set=$(redis_rps SET <<<"$r") redis_get=$(redis_rps GET <<<"$r")" ;;
      pgbench) r=$(pgbench -S -n -c 10 -j 2 -T "$SECS" -h 127.0.0.1 -p "$(port "$base" 4)" -U postgres postgres 2>/dev/null \
          | awk '/^tps/{print $3; exit}'); out+=" pgbench_s=${r:-NA}" ;;
    esac
  done
  echo "$out"
}

# Memory first, while every balancer is fresh (later rows grow their heaps, and a process
# that already has the memory shows no growth).
: >"$OUT/memory.txt"
if [ "$MEMORY" = 1 ]; then
  for t in $targets; do
    IFS=: read -r name base <<<"$t"
    case $name in
      direct) mpids="" ;; haproxy) mpids=$haproxy_pid ;; ballast) mpids=$ballast_pid ;; baseline) mpids=$baseline_pid ;;
      nginx) mpids="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" ;;
    esac
    python3 "$(dirname "$0")/bench_idle.py" "$name" "$(port "$base" 3)" 2000 $mpids | tee -a "$OUT/memory.txt"
  done
fi

: >"$OUT/rows.txt"
echo "rounds=$ROUNDS secs=$SECS rows=[$ROWS] $(date -u +%FT%TZ)" | tee "$OUT/run.txt"
for r in $(seq "$ROUNDS"); do
  for t in $targets; do
    IFS=: read -r name base <<<"$t"
    echo "round=$r target=$name$(row "$name" "$base")" | tee -a "$OUT/rows.txt"
  done
done

: >"$OUT/curve.txt"
for r in $(seq "$ROUNDS"); do
  for c in $CURVE; do
    for t in $targets; do
      IFS=: read -r name base <<<"$t"
      threads=2; [ "$c" -lt 2 ] && threads=1
      read -r a b <<<"$(wrk -t"$threads" -c"$c" -d"${CURVE_SECS}s" --latency --timeout 5s "http://127.0.0.1:$(port "$base" 2)/" 2>/dev/null | wrk_rps_p99)"
      echo "round=$r target=$name conns=$c rps=$a p99_ms=$b" | tee -a "$OUT/curve.txt"
    done
  done
done

python3 "$(dirname "$0")/bench_summary.py" "$OUT" | tee "$OUT/summary.md"
if [ -s "$OUT/curve.txt" ]; then
  gnuplot -e "data='$OUT/curve.dat'; out='$OUT/curve.png'" "$(dirname "$0")/bench_curve.gp" && echo "curve: $OUT/curve.png"
fi
