# Shared by examples/bench.sh and examples/bench_tls.sh (sourced, not run): the checks before
# a run, a scratch directory whose processes are stopped on exit, waiting for ports, rates.
#
#   bench_start TOOL...   checks the tools and $BIN, sets $dir and $pids, traps the cleanup
#   ready PORT...         waits (bounded, 10 s) until 127.0.0.1:PORT accepts, for each
#   origin PORT [LINES]   writes $dir/origin.conf (an nginx HTTP origin on 127.0.0.1:PORT
#                         answering "hello" at /, LINES added to its server block) and starts it
#   rps                   wrk's requests per second, from its output on stdin
#   gbps / kpps           iperf3 -J on stdin: Gbit/s received / thousand datagrams received per s
#   ratio A B             A / B to 2 places, NA when either is missing or B is 0

bench_start() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed (apt-get install $tool)"; exit 2; }
  done
  [ -x "$BIN" ] || { echo "bench: $BIN not found; run cargo build --release"; exit 2; }
  dir=$(mktemp -d)
  pids=()
  # KEEP=1 keeps the scratch directory (configs and logs) for a look after the run.
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; if [ -n "${KEEP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi' EXIT
}

ready() { python3 - "$@" <<'PY'
import socket, sys, time
deadline = time.time() + 10
for port in sys.argv[1:]:
    while True:
        try:
            socket.create_connection(("127.0.0.1", int(port)), 0.2).close(); break
        except OSError:
            if time.time() > deadline: sys.exit("port %s not ready" % port)
            time.sleep(0.05)
PY
}

origin() {
  cat >"$dir/origin.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/origin.pid;
error_log $dir/origin.err warn;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    server {
        listen 127.0.0.1:$1 reuseport backlog=65535;
        keepalive_requests 10000000;
        location / { return 200 "hello\n"; }
        ${2:-}
    }
}
CONF
  nginx -c "$dir/origin.conf" >/dev/null 2>&1 & pids+=($!)
}

rps() { awk '/Requests\/sec/{print $2}'; }

gbps() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["end"]["sum_received"]["bits_per_second"]/1e9,2))' 2>/dev/null || echo NA; }
kpps() { python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["end"]["sum"]; print(round(s["packets"]*(1-s["lost_percent"]/100)/s["seconds"]/1e3,1))' 2>/dev/null || echo NA; }

ratio() { python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]; print('NA' if 'NA' in (a,b) or not a or not b or float(b)==0 else round(float(a)/float(b),2))" "$1" "$2"; }
