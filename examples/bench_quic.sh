#!/usr/bin/env bash
# What QUIC connection-ID routing costs: iperf3 UDP with 64-byte datagrams, direct, through a
# plain UDP listener and through one with `quic:` (block_cipher), in one run, each round
# running all three in turn. Prints each round, then the medians of each round's ratio.
#
# iperf3's datagrams start with the time in seconds, big-endian: to QUIC a short header whose
# connection ID's first octet is the time's second octet. `config_rotation` is set to that
# octet's codepoint, so every datagram is decoded as QUIC-LB would decode a real one (three
# or four AES passes), finds no server and is routed by 5-tuple: the full per-datagram cost,
# counted in ballast_listener_quic_unknown_server_id_total (printed at the end).
#
#   cargo build --release && bash examples/bench_quic.sh     # ROUNDS=5 SECS=5
#
# Needs: iperf3, python3. Ports 25201 (iperf3), 23201-23202 (Ballast), 29103 (admin API).
set -u
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-5}
BIN=${BALLAST_BIN:-target/release/ballast}
. "$(dirname "$0")/bench_lib.sh"
bench_start iperf3 python3 curl
iperf3 -s -p 25201 >/dev/null 2>&1 & pids+=($!)
now=$(date +%s)
cr=$(( ((now >> 16) & 255) >> 5 ))
[ "$cr" = 7 ] && { echo "bench: today's iperf3 timestamps carry codepoint 7 (unroutable); try tomorrow"; exit 2; }
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/quic.key" && chmod 600 "$dir/quic.key"
cat >"$dir/ballast.yaml" <<CONF
workers: 2
admin: {bind: "127.0.0.1:29103"}
listeners:
  - {name: tp, protocol: tcp, bind: "127.0.0.1:23201", target_group: i}
  - {name: up, protocol: udp, bind: "127.0.0.1:23201", target_group: i}
  - {name: tq, protocol: tcp, bind: "127.0.0.1:23202", target_group: i}
  - name: uq
    protocol: udp
    bind: "127.0.0.1:23202"
    target_group: i
    quic: {server_id_length: 2, algorithm: block_cipher, key_file: quic.key, config_rotation: $cr}
target_groups:
  - {name: i, health_check: {protocol: tcp, interval: 60s, timeout: 1s}, targets: [{address: "127.0.0.1:25201", server_id: 1}]}
CONF
"$BIN" run --config "$dir/ballast.yaml" --log-level warn >"$dir/ballast.log" 2>&1 & pids+=($!)
ready 25201 23201 23202 || exit 1
kp() { iperf3 -c 127.0.0.1 -p "$1" -u -b 0 -l 64 -t "$SECS" -J 2>/dev/null | kpps; }
echo "iperf3 -u -l 64 -b 0, $SECS s a run, $ROUNDS rounds (thousand datagrams/s received: direct plain quic)"
: >"$dir/rounds"
for r in $(seq "$ROUNDS"); do
  d=$(kp 25201); p=$(kp 23201); q=$(kp 23202)
  echo "round $r: $d $p $q"
  echo "$d $p $q" >>"$dir/rounds"
done
python3 - "$dir/rounds" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip() and "NA" not in l]
if not rows:
    sys.exit("no complete round")
plain = statistics.median(p / d for d, p, q in rows)
quic = statistics.median(q / d for d, p, q in rows)
same = statistics.median(q / p for d, p, q in rows)
print(f"median of {len(rows)} rounds: plain {plain:.2f}x direct, quic {quic:.2f}x direct, "
      f"quic {same:.3f}x plain")
PY
curl -s 127.0.0.1:29103/metrics | grep -E '^ballast_listener_quic_(unknown_server_id|datagrams)_total' | sed 's/^/  /'
