#!/usr/bin/env bash
# Measures what the agent costs a connect-heavy workload: bench/connectloop
# runs bare and under `callscope run` (events to a file), alternated for
# ROUNDS rounds of SECS seconds, pinned to CPU 0. Prints each round, then
# the medians and their ratio, and checks that every connect gave an event.
#
#   sudo bench/connect-overhead.sh [BIN] [ROUNDS] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-bin/callscope}
rounds=${2:-8}
secs=${3:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cc -O2 -Wall -o "$work/connectloop" bench/connectloop.c
addr=127.0.0.1:9479
rate() { taskset -c 0 "$work/connectloop" "$secs" | awk '{print $6, $2}'; }

printf 'round bare agent ratio events connects\n'
for i in $(seq "$rounds"); do
  read -r bare _ < <(rate)
  "$bin" run --metrics-addr "$addr" >"$work/events" 2>"$work/log" &
  agent=$!
  until curl -sf "http://$addr/readyz" >/dev/null; do sleep 0.1; done
  read -r with connects < <(rate)
  kill -INT "$agent"
  wait "$agent"
  events=$(grep -c '"comm":"connectloop"' "$work/events" || true)
  losses=$(grep -c '"kind":"loss"' "$work/events" || true)
  printf '%d %s %s %s %s %s\n' "$i" "$bare" "$with" "$(awk -v a="$with" -v b="$bare" 'BEGIN{printf "%.3f", a/b}')" "$events" "$connects"
  if [[ $events != "$connects" || $losses != 0 ]]; then
    echo "round $i: $events events for $connects connects, $losses loss events" >&2
  fi
  echo "$bare $with" >>"$work/rates"
done
median() { sort -n | awk '{v[NR]=$1} END{print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
b=$(cut -d' ' -f1 "$work/rates" | median)
a=$(cut -d' ' -f2 "$work/rates" | median)
printf 'median bare %.0f/s, with agent %.0f/s, ratio %.3f\n' "$b" "$a" "$(awk -v a="$a" -v b="$b" 'BEGIN{print a/b}')"
