#!/usr/bin/env bash
# TLS termination, Ballast beside HAProxy, in one run: both terminate the same TLS in front of
# the same plain HTTP origin (nginx), with an ECDSA P-256 and an RSA 2048 certificate.
#   - new TLS connection per request: wrk over HTTPS with `Connection: close` (wrk resumes
#     sessions, so most are abbreviated handshakes; Ballast's resumed share is printed);
#   - keep-alive HTTPS requests: wrk, 50 connections;
#   - single-stream throughput after the handshake: curl downloading 1 GiB over HTTPS.
#   - full handshakes per second: openssl s_time -new (one client, no resumption: the
#     certificate's signature and the key exchange every time);
# Each round runs direct (plain HTTP to the origin), Ballast and HAProxy back to back; the
# ratios are to direct, so compare them, never absolute figures across runs or machines.
#
#   cargo build --release && bash examples/bench_tls.sh      # ROUNDS=5 SECS=4 by default
#
# Needs wrk, nginx, haproxy, curl, openssl, python3. Ports: origin 18080; Ballast 16443
# (ECDSA) and 16444 (RSA); HAProxy 16543 and 16544. Every process started here is stopped on
# exit.
set -u
ROUNDS=${ROUNDS:-5}; SECS=${SECS:-4}
BIN=${BALLAST_BIN:-target/release/ballast}
WORKERS=${WORKERS:-2}
export PATH="$PATH:/usr/sbin"
. "$(dirname "$0")/bench_lib.sh"
bench_start wrk nginx haproxy curl openssl python3

# Certificates for bench.test from a throwaway CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca.key" \
  -out "$dir/ca.pem" -days 2 -subj "/CN=bench CA" 2>/dev/null
for kind in ecdsa rsa; do
  if [ "$kind" = ecdsa ]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else newkey=(-newkey rsa:2048); fi
  openssl req -new "${newkey[@]}" -nodes -keyout "$dir/$kind.key" -out "$dir/$kind.csr" \
    -subj "/CN=bench.test" 2>/dev/null
  printf 'subjectAltName=DNS:bench.test\n' >"$dir/san.ext"
  openssl x509 -req -in "$dir/$kind.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/san.ext" -out "$dir/$kind.pem" 2>/dev/null
  cat "$dir/$kind.pem" "$dir/$kind.key" >"$dir/$kind.haproxy.pem"   # HAProxy: chain + key in one file
done
head -c $((1 << 30)) /dev/zero >"$dir/big"
chmod 755 "$dir"; chmod 644 "$dir/big"   # nginx workers run unprivileged

origin 18080 "location = /big { alias $dir/big; }"
cat >"$dir/ballast.yaml" <<CONF
workers: $WORKERS
access_log: "off"
listeners:
  - name: ecdsa
    protocol: tls
    bind: 127.0.0.1:16443
    target_group: http
    tls: {certificates: [{cert: $dir/ecdsa.pem, key: $dir/ecdsa.key}]}
  - name: rsa
    protocol: tls
    bind: 127.0.0.1:16444
    target_group: http
    tls: {certificates: [{cert: $dir/rsa.pem, key: $dir/rsa.key}]}
target_groups:
  - name: http
    health_check: {protocol: tcp, interval: 60s, timeout: 1s}
    targets: [{address: "127.0.0.1:18080"}]
CONF
cat >"$dir/haproxy.cfg" <<CONF
global
    maxconn 4000
    nbthread $WORKERS
    log stderr format short local0 notice
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe_ecdsa
    bind 127.0.0.1:16543 ssl crt $dir/ecdsa.haproxy.pem
    default_backend be_http
frontend fe_rsa
    bind 127.0.0.1:16544 ssl crt $dir/rsa.haproxy.pem
    default_backend be_http
backend be_http
    server h1 127.0.0.1:18080
CONF

"$BIN" run --config "$dir/ballast.yaml" --log-level warn >"$dir/ballast.log" 2>&1 & pids+=($!)
haproxy -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 & pids+=($!)
ready 18080 16443 16444 16543 16544 || { for f in "$dir"/*.log "$dir/origin.err"; do echo "== $f"; tail -n 5 "$f"; done; exit 1; }
sleep 0.5

# wrk does not verify certificates (its SNI is the address: both balancers serve their only
# certificate); curl verifies bench.test against the throwaway CA.
url() { if [ "$1" = 18080 ]; then echo "http://127.0.0.1:18080$2"; else echo "https://127.0.0.1:$1$2"; fi; }
close_rps() { wrk -t1 -c50 -d"${SECS}s" -H "Connection: close" "$(url "$1" /)" 2>/dev/null | rps; }
keepalive_rps() { wrk -t1 -c50 -d"${SECS}s" "$(url "$1" /)" 2>/dev/null | rps; }
stream_gbps() {
  local u
  if [ "$1" = 18080 ]; then u="http://127.0.0.1:18080/big"; else u="https://bench.test:$1/big"; fi
  curl -s --cacert "$dir/ca.pem" --resolve "bench.test:$1:127.0.0.1" -o /dev/null \
    -w '%{speed_download}' "$u" |
    python3 -c 'import sys; print(round(float(sys.stdin.read() or 0)*8/1e9, 2))'
}
handshakes() {
  timeout $((SECS + 10)) openssl s_time -connect "127.0.0.1:$1" -new -time "$SECS" 2>/dev/null |
    awk '/connections in .* real seconds/ {split($0, a, " "); print a[1] / a[4]; exit}'
}
resumed() { curl -s "http://127.0.0.1:7390/metrics" | awk -v l="$1" '$1 ~ "tls_resumed_handshakes_total\\{listener=\""l"\"" {r=$2} $1 ~ "tls_handshakes_total\\{listener=\""l"\"" {h=$2} END {printf "%s/%s", r+0, h+0}'; }

echo "workers=$WORKERS rounds=$ROUNDS secs=$SECS (ratios to direct plain HTTP)"
for r in $(seq "$ROUNDS"); do
  dc=$(close_rps 18080); dk=$(keepalive_rps 18080); ds=$(stream_gbps 18080)
  echo "round=$r direct: close_rps=$dc keepalive_rps=$dk stream_gbps=$ds"
  for kind in ecdsa rsa; do
    if [ "$kind" = ecdsa ]; then b=16443; h=16543; else b=16444; h=16544; fi
    bc=$(close_rps $b); hc=$(close_rps $h)
    echo "round=$r $kind new-connection: ballast_rps=$bc haproxy_rps=$hc ratio ballast=$(ratio "$bc" "$dc") haproxy=$(ratio "$hc" "$dc")"
    bh=$(handshakes $b); hh=$(handshakes $h)
    echo "round=$r $kind full-handshakes: ballast_per_s=$bh haproxy_per_s=$hh ballast/haproxy=$(ratio "$bh" "$hh")"
  done
  bk=$(keepalive_rps 16443); hk=$(keepalive_rps 16543)
  bs=$(stream_gbps 16443); hs=$(stream_gbps 16543)
  echo "round=$r ecdsa keep-alive: ballast_rps=$bk haproxy_rps=$hk ratio ballast=$(ratio "$bk" "$dk") haproxy=$(ratio "$hk" "$dk")"
  echo "round=$r ecdsa stream: ballast_gbps=$bs haproxy_gbps=$hs ratio ballast=$(ratio "$bs" "$ds") haproxy=$(ratio "$hs" "$ds")"
done
echo "ballast resumed/handshakes: ecdsa $(resumed ecdsa), rsa $(resumed rsa)"
