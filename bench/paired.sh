#!/usr/bin/env bash
# Measures what callscope's kernel programs cost a workload, in pairs of
# short runs that differ only in whether the programs see the workload.
#
#   sudo [MODE=bulk] bench/paired.sh [BIN] [PAIRS] [SECS]
#
# MODE is the workload, as in bench/overhead.sh: connect (the default,
# bench/connectloop) or bulk (bench/bulk, loopback TCP throughput).
#
# One agent runs throughout, attached to a cgroup of its own (--cgroup-root)
# and started with --syscall-errors=false, so that all it attaches is scoped
# to that cgroup. Each pair runs the workload (pinned to CPU $CPU) for
# SECS seconds in that cgroup ("on": every connect is an event) and for SECS
# seconds in a sibling cgroup ("off": the programs never run), in an order
# that alternates from pair to pair. Both runs share the machine with the
# same agent, so what differs is the programs' work on the workload's CPU; the
# agent's own CPU is reported apart. Short runs close together keep a
# drift in the machine's load out of the ratios, and many pairs narrow
# their median: on a shared machine whose throughput moves by 15 % from one
# run to the next, this resolves a few percent where whole-run comparisons
# (bench/overhead.sh) cannot.
#
# The syscall-exit tracepoint that --syscall-errors (on by default) adds is
# not cgroup-scoped: it puts every syscall on the node on the kernel's
# slower path, "off" runs included, so pairs cannot measure it. The perf
# profile (bench/profile.sh) and docs/benchmarks.md give its cost. Set
# SYSCALL_ERRORS=1 to run the agent with it anyway (both sides pay it), as
# an agent from before the flag does.
#
# Prints each pair, then the median, quartiles and mean of the per-pair
# throughput ratios (on/off), the agent's CPU per event, and checks
# that every connect of the "on" runs gave one event and no loss event was
# written. BIN defaults to bin/callscope, PAIRS to 40, SECS to 1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() { echo "usage: [MODE=connect|bulk] $0 [BIN] [PAIRS] [SECS]" >&2; exit 2; }
bin=${1:-bin/callscope}
pairs=${2:-40}
secs=${3:-1}
cpu=${CPU:-0}
mode=${MODE:-connect}
[[ $mode == connect || $mode == bulk ]] || usage
[[ $pairs =~ ^[1-9][0-9]*$ && $secs =~ ^[0-9.]+$ ]] || usage

die() { echo "paired: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root: the agent loads BPF programs"
[[ -x $bin ]] || die "$bin: no such executable (make build)"
cgroot=$(cgroup2_root)
[[ -n $cgroot ]] || die "no cgroup2 mount"

work=$(mktemp -d)
on=$cgroot/callscope-bench-on-$$
off=$cgroot/callscope-bench-off-$$
agent=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [[ -n $agent ]]; then kill -INT "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
  rmdir "$on" "$off" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$on" "$off"
build_workload "$mode" "$work/load"
if [[ $mode == connect ]]; then unit=connects/s; else unit=B/s; fi

addr=127.0.0.1:$(free_port)
flags=(--cgroup-root "$on" --metrics-addr "$addr")
# An agent from before --syscall-errors keeps its syscall tracepoint, which
# slows both sides alike.
help=$("$bin" run --help 2>&1 || true)
if [[ -n ${SYSCALL_ERRORS:-} ]]; then :; elif [[ $help == *-syscall-errors* ]]; then flags+=(--syscall-errors=false); else
  echo "paired: $bin has no --syscall-errors flag: its syscall tracepoint slows on and off runs alike" >&2
fi
"$bin" run "${flags[@]}" >"$work/events" 2>"$work/log" &
agent=$!
wait_ready "$addr" "$agent" "$work/log"
sleep 1

tck=$(getconf CLK_TCK)

# run CGROUP: runs the workload in CGROUP and prints "rate pid connects".
# The child moves itself into the cgroup before it execs the workload, so
# that its every connect is made from there.
run() {
  local pid
  sh -c 'echo $$ >"$1/cgroup.procs" && exec taskset -c "$2" "$3" "$4"' sh "$1" "$cpu" "$work/load" "$secs" >"$work/out" &
  pid=$!
  wait "$pid" || die "the workload failed: $(cat "$work/out")"
  # connectloop: "connects N seconds S rate R"
  # bulk:        "bytes N seconds S rate R connections C cpu U"
  awk -v pid="$pid" -v m="$mode" '{print $6, pid, (m == "bulk" ? $8 : $2)}' "$work/out"
}

agent_before=$(cputicks "$agent")
printf 'pair  %18s  %18s   ratio\n' "on: $unit" "off: $unit"
: >"$work/pairs"
on_connects=0
on_pids=()
for ((p = 1; p <= pairs; p++)); do
  if ((p % 2)); then order=(on off); else order=(off on); fi
  for side in "${order[@]}"; do
    if [[ $side == on ]]; then
      read -r rate_on pid n < <(run "$on")
      on_pids+=("$pid")
      on_connects=$((on_connects + n))
    else
      read -r rate_off _ _ < <(run "$off")
    fi
  done
  ratio=$(awk -v a="$rate_on" -v b="$rate_off" 'BEGIN {printf "%.4f", a / b}')
  printf '%-4d  %18s  %18s   %s\n' "$p" "$rate_on" "$rate_off" "$ratio"
  echo "$rate_on $rate_off $ratio" >>"$work/pairs"
done
agent_used=$(($(cputicks "$agent") - agent_before))

kill -INT "$agent"
wait "$agent" || die "the agent exited with status $?: $(tail -5 "$work/log")"
agent=

events=0
for pid in "${on_pids[@]}"; do
  n=$(grep -c "\"kind\":\"connect\".*\"process\":{\"pid\":$pid," "$work/events" || true)
  events=$((events + n))
done
losses=$(grep -c '"kind":"loss"' "$work/events" || true)

echo
echo "$(date -u +%FT%TZ) $mode: $pairs pairs of $secs s, workload on CPU $cpu; kernel $(uname -r), $(nproc) CPUs"
echo "agent: $("$bin" version 2>/dev/null | head -1), ${flags[*]}"
sort -g -k3 "$work/pairs" | awk -v unit="$unit" '{r[NR] = $3; s += $3; on += $1; off += $2}
  END {
    n = NR
    printf "ratio on/off per pair: median %.4f, quartiles %.4f-%.4f, mean %.4f, min %.4f, max %.4f\n",
      r[int((n + 1) / 2)], r[int((n + 3) / 4)], r[int((3 * n + 1) / 4)], s / n, r[1], r[n]
    printf "mean %s: on %.0f, off %.0f\n", unit, on / n, off / n
  }'
echo "events: $events of $on_connects connects in the on runs; loss events: $losses"
awk -v t="$agent_used" -v h="$tck" -v n="$events" -v m="$mode" 'BEGIN {
  printf "agent CPU: %.2f s", t / h
  if (m == "connect" && n > 0) printf ", %.2f µs per event", t / h * 1e6 / n
  printf "\n"
}'
[[ $events == "$on_connects" && $losses == 0 ]] || die "events and connects differ, or events were lost"
