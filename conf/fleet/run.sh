#!/usr/bin/env bash
# Try a fleet on one host: a throwaway etcd (Debian's etcd-server) and three Ballast nodes
# running conf/fleet/ballast.yaml, each with its own node id, admin port and listener port.
# Stops them all on Ctrl-C (or when one of them exits).
#
#   bash conf/fleet/run.sh
#   ballast drain web 127.0.0.1:9001 --admin 127.0.0.1:7391   # node 1 … all three drain it
#   ballast fleet status --admin 127.0.0.1:7393
#
# Ports: ETCD_PORT (2379), ETCD_PEER_PORT (2380), ADMIN_BASE (7390: nodes on 7391-7393),
# PORT_BASE (8080: nodes on 8081-8083), TARGET_A_PORT, TARGET_B_PORT (9001, 9002: nothing
# listens there unless you start it; the targets are then unhealthy, which changes nothing
# here). BALLAST: the binary (default: ballast on the PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ballast=${BALLAST:-ballast}
etcd_port=${ETCD_PORT:-2379}
peer_port=${ETCD_PEER_PORT:-2380}
admin_base=${ADMIN_BASE:-7390}
port_base=${PORT_BASE:-8080}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "demo=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$etcd_port") 2>/dev/null && break
  sleep 0.1
done

for i in 1 2 3; do
  BALLAST_NODE_ID="node$i" ETCD_ENDPOINT="127.0.0.1:$etcd_port" \
    BALLAST_ADMIN_PORT=$((admin_base + i)) BALLAST_PORT=$((port_base + i)) \
    "$ballast" run --config "$here/ballast.yaml" 2>"$work/node$i.log" &
done
echo "etcd on 127.0.0.1:$etcd_port; nodes node1-node3: admin 127.0.0.1:$((admin_base + 1))-$((admin_base + 3)), listener web on 127.0.0.1:$((port_base + 1))-$((port_base + 3)); logs in $work"
wait -n
