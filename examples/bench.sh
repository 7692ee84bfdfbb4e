#!/usr/bin/env bash
# Ballast vs direct on loopback, in one run: iperf3 single stream and -P 4, iperf3 UDP with
# 64-byte datagrams (packets received per second), and wrk with `Connection: close` (a new
# connection per request) and keep-alive. Each round runs direct and
# Ballast back to back so machine drift hits both alike; compare the printed ratios, never
# absolute figures across runs or machines.
#
#   cargo build --release && bash examples/bench.sh          # ROUNDS=3 SECS=4 by default
#   MODES="auto splice buffered" bash examples/bench.sh      # one Ballast per forwarding mode
#   MODES="auto/32 auto/1" bash examples/bench.sh            # ... or per mode/UDP batch size
#
# Needs iperf3, wrk, nginx (the HTTP origin), python3. For HAProxy and nginx stream side by side
# use ../shared/bench/peers/run.sh. Ports: origins 15201 (iperf3), 18080 (HTTP); Ballast
# 16003+i and 16103+i for the i-th mode. Every process started here is stopped on exit.
set -u
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-4}; MODES=${MODES:-auto}
BIN=${BALLAST_BIN:-target/release/ballast}
WORKERS=${WORKERS:-2}
. "$(dirname "$0")/bench_lib.sh"
bench_start iperf3 wrk nginx python3

origin 18080
# One Ballast per forwarding mode, mode i on ports 16003+i (iperf3) and 16103+i (HTTP).
i=0
for variant in $MODES; do
  mode=${variant%/*}; batch=32
  [ "$variant" != "$mode" ] && batch=${variant#*/}
  cat >"$dir/ballast-${variant//\//-}.yaml" <<CONF
workers: $WORKERS
listeners:
  - {name: iperf, protocol: tcp, bind: "127.0.0.1:$((16003 + i))", target_group: iperf, forwarding: $mode}
  - {name: iperf-udp, protocol: udp, bind: "127.0.0.1:$((16003 + i))", target_group: iperf, udp: {batch: $batch}}
  - {name: http, protocol: tcp, bind: "127.0.0.1:$((16103 + i))", target_group: http, forwarding: $mode}
target_groups:
  - name: iperf
    health_check: {protocol: tcp, interval: 60s, timeout: 1s}
    targets: [{address: "127.0.0.1:15201"}]
  - name: http
    health_check: {protocol: tcp, interval: 60s, timeout: 1s}
    targets: [{address: "127.0.0.1:18080"}]
CONF
  i=$((i + 1))
done

iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 & pids+=($!)
for variant in $MODES; do
  "$BIN" run --config "$dir/ballast-${variant//\//-}.yaml" --log-level warn >"$dir/ballast.log" 2>&1 & pids+=($!)
done
# iperf3 -s counts a bare connect as a failed test; connecting to it only once is harmless.
ready 18080 $(seq 16103 $((16102 + $(wc -w <<<"$MODES")))) || exit 1
sleep 0.5

measure() { # port_iperf port_http -> "i1 i4 close keepalive udp64"
  local i1 i4 cl ka u
  i1=$(iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -J 2>/dev/null | gbps)
  i4=$(iperf3 -c 127.0.0.1 -p "$1" -t "$SECS" -P 4 -J 2>/dev/null | gbps)
  u=$(iperf3 -c 127.0.0.1 -p "$1" -u -b 0 -l 64 -t "$SECS" -J 2>/dev/null | kpps)
  cl=$(wrk -t1 -c50 -d"${SECS}s" -H "Connection: close" "http://127.0.0.1:$2/" 2>/dev/null | rps)
  ka=$(wrk -t1 -c50 -d"${SECS}s" "http://127.0.0.1:$2/" 2>/dev/null | rps)
  echo "$i1 $i4 $cl $ka $u"
}
echo "modes=[$MODES] workers=$WORKERS rounds=$ROUNDS secs=$SECS"
for r in $(seq "$ROUNDS"); do
  read -r d1 d4 dc dk du <<<"$(measure 15201 18080)"
  echo "round=$r direct: iperf1_gbps=$d1 iperf4_gbps=$d4 close_rps=$dc keepalive_rps=$dk udp64_kpps=$du"
  i=0
  for mode in $MODES; do
    read -r b1 b4 bc bk bu <<<"$(measure $((16003 + i)) $((16103 + i)))"
    echo "round=$r ballast-$mode: iperf1_gbps=$b1 iperf4_gbps=$b4 close_rps=$bc keepalive_rps=$bk udp64_kpps=$bu"
    echo "round=$r ratio ballast-$mode/direct: iperf1=$(ratio "$b1" "$d1") iperf4=$(ratio "$b4" "$d4") close=$(ratio "$bc" "$dc") keepalive=$(ratio "$bk" "$dk") udp64=$(ratio "$bu" "$du")"
    i=$((i + 1))
  done
done
