#!/bin/sh
# pktgen between two bare-metal hosts: run this on the GENERATOR host (root). It sends 64-byte
# UDP packets to the VIP through DEVICE, addressed to the edge's NIC, from random sources and
# ports (many flows, spread over the edge's RX queues), one pktgen thread per CPU, and prints
# the packets/s it offered. On the EDGE host, foobar balances them; compare with its counters:
#
#   edge#  foobar stats --json > before.json; (run this script); foobar stats --json > after.json
#          # forwarded = "transmitted" (+ "redirected") after - before, over the seconds printed
#
# With EDGE_SSH=root@edge set, the script reads the edge's counters itself and prints both rates.
#
# usage: pktgen-two-hosts.sh DEVICE EDGE_MAC VIP PORT [PACKETS_PER_THREAD]
set -eu
dev=$1 edge_mac=$2 vip=$3 port=$4 count=${5:-10000000}
threads=$(nproc)
modprobe pktgen
pg() { echo "$2" > "/proc/net/pktgen/$1"; }
counter() { ssh "$EDGE_SSH" foobar stats --json | tr -d ' \n' | sed 's/.*\["transmitted",\([0-9]*\)\].*/\1/'; }
for t in $(seq 0 $((threads - 1))); do
    pg "kpktgend_$t" rem_device_all
    pg "kpktgend_$t" "add_device $dev@$t"
    f="$dev@$t"
    pg "$f" "count $count"
    pg "$f" "pkt_size 64"
    pg "$f" "delay 0"
    pg "$f" "clone_skb 1000"
    pg "$f" "queue_map_min $t"
    pg "$f" "queue_map_max $t"
    pg "$f" "dst $vip"
    pg "$f" "dst_mac $edge_mac"
    pg "$f" "src_min 198.51.100.1"
    pg "$f" "src_max 198.51.100.254"
    pg "$f" "udp_src_min 1024"
    pg "$f" "udp_src_max 65000"
    pg "$f" "udp_dst_min $port"
    pg "$f" "udp_dst_max $port"
    pg "$f" "flag IPSRC_RND"
    pg "$f" "flag UDPSRC_RND"
done
before=${EDGE_SSH:+$(counter)}
start=$(date +%s.%N)
pg pgctrl start
end=$(date +%s.%N)
seconds=$(echo "$end - $start" | bc)
sent=0
for t in $(seq 0 $((threads - 1))); do
    n=$(sed -n 's/.*Result: OK: [0-9]*([^)]*) usec, \([0-9]*\) .*/\1/p' "/proc/net/pktgen/$dev@$t")
    sent=$((sent + ${n:-0}))
done
echo "offered: $sent packets in $seconds s = $(echo "$sent / $seconds" | bc) packets/s ($threads threads)"
if [ -n "${EDGE_SSH:-}" ]; then
    forwarded=$(( $(counter) - before ))
    echo "forwarded by foobar: $forwarded packets = $(echo "$forwarded / $seconds" | bc) packets/s"
fi
