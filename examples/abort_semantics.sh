#!/usr/bin/env bash
# What each end sees when the other aborts, through Ballast, HAProxy and nginx (stream), side
# by side (see examples/abort_semantics.rs). Each proxy listens on 127.0.0.1:7311 (to the test
# target on 7301) and 127.0.0.1:7312 (to 7302, where nothing listens).
#   apt-get install haproxy nginx libnginx-mod-stream   # for the peers; missing ones are skipped
#   examples/abort_semantics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin ballast --example abort_semantics
run=target/release/examples/abort_semantics
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; }

cat >"$dir/ballast.yaml" <<YAML
admin: {bind: '127.0.0.1:0'}
access_log: off
listeners:
  - {name: live, protocol: tcp, bind: '127.0.0.1:7311', target_group: live}
  - {name: dead, protocol: tcp, bind: '127.0.0.1:7312', target_group: dead}
target_groups:
  - {name: live, targets: [{address: '127.0.0.1:7301'}], health_check: {protocol: tcp, interval: 60s}}
  - {name: dead, targets: [{address: '127.0.0.1:7302'}], health_check: {protocol: tcp, interval: 60s}}
YAML
cat >"$dir/haproxy.cfg" <<CFG
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
listen live
    bind 127.0.0.1:7311
    server s 127.0.0.1:7301
listen dead
    bind 127.0.0.1:7312
    server s 127.0.0.1:7302
CFG
cat >"$dir/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx.err warn;
events {}
stream {
    server { listen 127.0.0.1:7311; proxy_pass 127.0.0.1:7301; }
    server { listen 127.0.0.1:7312; proxy_pass 127.0.0.1:7302; }
}
CFG

side() {
  local name=$1; shift
  if ! command -v "$1" >/dev/null && [ ! -x "$1" ]; then echo "== $name: not installed"; return; fi
  "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  wait_port 7311
  echo "== $name"
  "$run" 127.0.0.1:7311 127.0.0.1:7312 || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
side ballast target/release/ballast run --config "$dir/ballast.yaml"
side haproxy haproxy -f "$dir/haproxy.cfg"
side nginx nginx -c "$dir/nginx.conf"
