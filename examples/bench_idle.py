#!/usr/bin/env python3
"""Memory per idle proxied connection, for examples/bench_peers.sh.

    bench_idle.py NAME PORT COUNT [PID...]

Opens COUNT connections to a Redis server at 127.0.0.1:PORT (directly or through a balancer),
sends PING on each and waits for +PONG (so the balancer has its target connection too), then
holds them idle and reads, against a baseline taken before: the resident memory of the PIDs
(the balancer's processes, VmRSS), the kernel's slab memory (/proc/meminfo SUnreclaim +
SReclaimable: socket, file and epoll objects) and the socket buffer memory of TCP
(/proc/net/sockstat "mem", pages). Prints one line of KiB per connection; kernel figures are
for the whole chain (client, balancer and server sockets), so the balancer's kernel share is
its line minus direct's.
"""
import socket
import sys
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def slab_kib():
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0])
    return values["SUnreclaim"] + values["SReclaimable"]


def sockstat_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def main():
    name, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pids = [int(p) for p in sys.argv[4:]]
    time.sleep(0.5)
    before = (rss_kib(pids), slab_kib(), sockstat_pages())
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"PING\r\n")
        conns.append(s)
    for s in conns:
        if not s.recv(16).startswith(b"+PONG"):
            sys.exit(f"{name}: no PONG through port {port}")
    time.sleep(1.0)  # let allocators and the kernel settle
    after = (rss_kib(pids), slab_kib(), sockstat_pages())
    rss, slab, pages = (a - b for a, b in zip(after, before))
    print(
        f"memory target={name} idle_conns={count} "
        f"rss_kib_per_conn={rss / count:.2f} kernel_slab_kib_per_conn={slab / count:.2f} "
        f"tcp_buffer_pages={pages}"
    )
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
