#!/bin/sh
# Keeps BIRD's announcement of the VIP in step with Ballast's readiness: enables the static
# protocol `vip` (bird-node.conf) while `ballast health` passes and disables it otherwise, so
# the router stops sending new flows here within about a second of Ballast failing, draining
# (`ballast node drain`) or stopping (SIGTERM with shutdown_grace).
#
# Usage: route-check.sh [BIRD_CONTROL_SOCKET]   (default /run/bird/bird.ctl)
# Environment: BALLAST (the binary, default /usr/local/bin/ballast), BALLAST_ADMIN (the
# admin API URL, default http://127.0.0.1:7390), PROTOCOL (default vip), INTERVAL (seconds
# between checks, default 0.5). Run it under systemd beside bird (Restart=always).
BALLAST=${BALLAST:-/usr/local/bin/ballast}
ADMIN=${BALLAST_ADMIN:-http://127.0.0.1:7390}
SOCKET=${1:-/run/bird/bird.ctl}
PROTOCOL=${PROTOCOL:-vip}
INTERVAL=${INTERVAL:-0.5}
announced=unknown
while :; do
    if "$BALLAST" health --quiet --timeout 1s --admin "$ADMIN" >/dev/null 2>&1; then
        want=enable
    else
        want=disable
    fi
    if [ "$want" != "$announced" ] && birdc -s "$SOCKET" "$want" "$PROTOCOL" >/dev/null; then
        echo "route-check: $want $PROTOCOL"
        announced=$want
    fi
    sleep "$INTERVAL"
done
