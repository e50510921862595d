#!/usr/bin/env bash
# A syscall-heavy workload: dd copies single bytes from /dev/zero to
# /dev/null (a read(2) and a write(2) per byte), again and again for SECS
# seconds. Its rate shows what a program that attaches to every syscall
# (a syscall tracepoint) costs every process on the node.
#
#   bench/ddloop.sh SECS
#
# Prints "bytes N seconds S rate R", as bench/overhead.sh reads it.
set -euo pipefail
secs=${1:?usage: ddloop.sh SECS}
chunk=200000
bytes=0
start=$EPOCHREALTIME
while :; do
  dd if=/dev/zero of=/dev/null bs=1 count="$chunk" status=none
  bytes=$((bytes + chunk))
  if awk -v s="$start" -v n="$EPOCHREALTIME" -v d="$secs" 'BEGIN {exit !(n - s >= d)}'; then break; fi
done
awk -v s="$start" -v n="$EPOCHREALTIME" -v b="$bytes" 'BEGIN {printf "bytes %d seconds %.3f rate %.0f\n", b, n - s, b / (n - s)}'
