#!/bin/sh
# keepalived `notify` script: called with TYPE (INSTANCE or GROUP), NAME, STATE (MASTER,
# BACKUP, FAULT, STOP) and PRIORITY whenever the VRRP state changes. It only logs; put
# here what else should follow the VIP (e.g. `ballast node enable` on becoming MASTER).
logger -t ballast-vrrp "$1 $2 is now $3 (priority $4)" 2>/dev/null || true
echo "vrrp: $1 $2 is now $3 (priority $4)"
