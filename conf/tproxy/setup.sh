#!/bin/sh
# The routing `source: client` needs on the Ballast host (run as root; once per boot, e.g.
# from a systemd unit ordered before ballast.service).
#
# Ballast connects to a target from the client's own address (IP_TRANSPARENT). The target
# answers that address; its answers must come back through this host (the targets' route to
# the clients, usually their default route, goes via this host), and this host must hand
# them to Ballast's socket instead of forwarding them: packets of a transparent socket are
# marked, and marked packets are delivered locally.
#
#   conf/tproxy/setup.sh            # add the rules
#   conf/tproxy/setup.sh remove     # take them out
set -eu
MARK=${BALLAST_TPROXY_MARK:-0x1b}     # any mark and table number unused on the host
TABLE=${BALLAST_TPROXY_TABLE:-127}

if [ "${1:-}" = remove ]; then
  nft delete table inet ballast_tproxy 2>/dev/null || true
  ip rule del fwmark "$MARK" lookup "$TABLE" 2>/dev/null || true
  ip -6 rule del fwmark "$MARK" lookup "$TABLE" 2>/dev/null || true
  ip route flush table "$TABLE" 2>/dev/null || true
  ip -6 route flush table "$TABLE" 2>/dev/null || true
  exit 0
fi

# Packets that belong to a transparent socket (Ballast's connections from clients'
# addresses) get the mark...
nft -f - <<NFT
table inet ballast_tproxy {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp socket transparent 1 meta mark set $MARK
  }
}
NFT
# ...and marked packets are delivered to this host, whatever their destination.
ip rule add fwmark "$MARK" lookup "$TABLE"
ip route add local 0.0.0.0/0 dev lo table "$TABLE"
ip -6 rule add fwmark "$MARK" lookup "$TABLE" 2>/dev/null || true
ip -6 route add local ::/0 dev lo table "$TABLE" 2>/dev/null || true
