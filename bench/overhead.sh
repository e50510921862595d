#!/usr/bin/env bash
# Measures what callscope costs a workload, against the same workload bare
# and under a bpftrace one-liner that prints one line per connect(2).
#
#   sudo bench/overhead.sh MODE [BIN] [ROUNDS] [SECS]
#
# MODE is the workload, pinned with taskset to CPU $CPU (default 0):
#   connect  bench/connectloop: connect to 127.0.0.1 and close, in a loop;
#            the rate is connects per second.
#   bulk     bench/bulk: 128 KiB writes over established 127.0.0.1
#            connections, a new one every second; the rate is bytes per
#            second. Every packet runs callscope's cgroup_skb programs.
#   syscalls bench/ddloop.sh: dd of single bytes from /dev/zero to
#            /dev/null, two syscalls per byte; the rate is bytes per
#            second. It makes no connect: what it shows is a tax on every
#            syscall, such as a syscall tracepoint's.
# BIN is the agent (default bin/callscope), ROUNDS the rounds (default 8),
# SECS the seconds of each run (default 3).
#
# A round runs each variant once:
#   bare               the workload alone;
#   callscope          under `BIN run` (events to a file, metrics on a free
#                      port), measured once /readyz answers;
#   callscope-sys      the same with --syscall-errors: with the syscall-exit
#                      tracepoint, which puts every syscall of every process
#                      on the kernel's slower path;
#   callscope-stats    the same with --bpf-stats: with the kernel's
#                      per-program run-time accounting (two clock reads per
#                      program run), which gives the ns per program run;
#   bpftrace           under a bpftrace one-liner on sys_exit_connect.
# The order rotates from round to round, so that a drift in the machine's
# load is spread over every variant rather than charged to one. The agent
# and bpftrace are not pinned: their user-space work runs beside the
# workload, as on a node, and their CPU time is reported on its own.
#
# Prints each run, then per variant the median, its range, the ratio of
# medians to bare, and the median and range of the per-round ratios (each
# against the bare run of the same round), twice: for throughput, and for
# work per CPU second the workload used, which time taken by other
# processes on its CPU does not lower. For callscope it checks that every
# connect of the workload gave one event and that no loss event was
# written, and prints the kernel's ns per program run (from the agent's
# metrics). Exits 1 if a check fails.
#
# Environment:
#   VARIANTS  the variants to run (default: all five for connect; bare,
#             callscope and callscope-stats for bulk; bare, callscope and
#             callscope-sys for syscalls)
#   CPU       the CPU the workload is pinned to (default 0)
#   TOOL_CPUS if set, the CPUs the agent and bpftrace are pinned to (say 1):
#             their user-space work then stays off the workload's CPU,
#             which is left with the cost of the kernel programs
#   KEEP      a directory that keeps each run's events, logs and metrics
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() { echo "usage: $0 connect|bulk|syscalls [BIN] [ROUNDS] [SECS]" >&2; exit 2; }
mode=${1:-}
bin=${2:-bin/callscope}
rounds=${3:-8}
secs=${4:-3}
cpu=${CPU:-0}
# Runs the agent and bpftrace, pinned to TOOL_CPUS when it is set.
pin=()
if [[ -n ${TOOL_CPUS:-} ]]; then pin=(taskset -c "$TOOL_CPUS"); fi
case $mode in
  connect) default_variants="bare callscope callscope-sys callscope-stats bpftrace" ;;
  bulk) default_variants="bare callscope callscope-stats" ;;
  syscalls) default_variants="bare callscope callscope-sys" ;;
  *) usage ;;
esac
read -r -a variants <<<"${VARIANTS:-$default_variants}"
[[ $rounds =~ ^[1-9][0-9]*$ && $secs =~ ^[0-9.]+$ ]] || usage

die() { echo "overhead: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root: the agent and bpftrace load BPF programs"
[[ -x $bin ]] || die "$bin: no such executable (make build)"

work=$(mktemp -d)
bgpids=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  # Stop what this script started and is still running, by its pid.
  local p
  for p in "${bgpids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${bgpids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Drop the variants this machine or this build cannot run, and say so,
# rather than fail after minutes of measuring. The agent's flags, for the
# probes: not a pipe into grep -q, whose early exit would fail under pipefail.
help=$("$bin" run --help 2>&1 || true)
keep=()
for v in "${variants[@]}"; do
  case $v in
    bare | callscope) keep+=("$v") ;;
    callscope-stats)
      if [[ $help == *-bpf-stats* ]]; then keep+=("$v"); else
        echo "overhead: $bin has no --bpf-stats flag: skipping $v" >&2
      fi ;;
    callscope-sys)
      if [[ $help == *-syscall-errors* ]]; then keep+=("$v"); else
        echo "overhead: $bin has no --syscall-errors flag: skipping $v" >&2
      fi ;;
    bpftrace)
      if command -v bpftrace >/dev/null && command -v bpftool >/dev/null; then keep+=("$v"); else
        echo "overhead: bpftrace or bpftool not installed: skipping $v" >&2
      fi ;;
    *) die "unknown variant $v" ;;
  esac
done
((${#keep[@]} > 0)) || die "no variant left to run: of \"${VARIANTS:-$default_variants}\", none can run here"
variants=("${keep[@]}")
[[ ${variants[0]} == bare ]] || die "the first variant must be bare: ratios are taken against it"

build_workload "$mode" "$work/load"
case $mode in
  connect) unit=connects/s what=connects ;;
  bulk) unit=B/s what=connections ;;
  syscalls) unit=B/s what=connects ;;
esac

# Programs that someone else attached at the cgroup root run in every
# variant, bare included, and would blur the comparison.
cgroot=$(cgroup2_root)
if [[ -n $cgroot ]] && command -v bpftool >/dev/null && [[ -n $(bpftool cgroup show "$cgroot" 2>/dev/null | tail -n +2) ]]; then
  echo "overhead: BPF programs are already attached at $cgroot; they run in every variant:" >&2
  bpftool cgroup show "$cgroot" >&2
fi

tck=$(getconf CLK_TCK)

# workload runs the pinned workload and sets rate (per second), count (of
# connects), percpu (units of work per CPU second the workload used) and
# wpid (its pid, which names its events: taskset execs the program).
# The CPU time is the shell's, for its reaped children: user and system,
# which on loopback includes the softirq work done in the workload's
# context, but not the time other processes take from its CPU. `times`
# runs in this shell, not in a $(...) subshell, whose counts start at zero.
workload() {
  times >"$work/times0"
  taskset -c "$cpu" "$work/load" "$secs" >"$work/load.out" &
  wpid=$!
  wait "$wpid" || die "the workload failed: $(cat "$work/load.out")"
  times >"$work/times1"
  local used
  # The second line of `times` is the children's: "0m1.234s 0m0.567s".
  used=$(awk 'FNR == 2 {split($1, u, /[ms]/); split($2, k, /[ms]/); t[FILENAME] = u[1] * 60 + u[2] + k[1] * 60 + k[2]}
    END {print t[ARGV[2]] - t[ARGV[1]]}' "$work/times0" "$work/times1")
  # connectloop: "connects N seconds S rate R"
  # bulk:        "bytes N seconds S rate R connections C cpu U"
  # ddloop.sh:   "bytes N seconds S rate R", and no connect
  read -r rate count percpu < <(awk -v m="$mode" -v u="$used" \
    '{printf "%s %s %.0f\n", $6, (m == "bulk" ? $8 : m == "syscalls" ? 0 : $2), (u > 0 ? $2 / u : 0)}' "$work/load.out")
}

start_agent() {
  addr=127.0.0.1:$(free_port)
  "${pin[@]}" "$bin" run --metrics-addr "$addr" "$@" >"$work/events" 2>"$work/log" &
  tool=$!
  bgpids+=("$tool")
  wait_ready "$addr" "$tool" "$work/log"
}

start_bpftrace() {
  # Full buffering, as a tool writing to a file would; BEGIN cannot tell
  # when the probe is attached, bpftool's list of perf attachments can.
  "${pin[@]}" bpftrace -B full -e 'tracepoint:syscalls:sys_exit_connect { printf("%d %s %d\n", pid, comm, args->ret); }' \
    >"$work/events" 2>"$work/log" &
  tool=$!
  bgpids+=("$tool")
  local i
  for ((i = 0; i < 1200; i++)); do
    if [[ $(bpftool perf show 2>/dev/null) =~ (^|$'\n')"pid $tool "[^$'\n']*sys_exit_connect ]]; then return; fi
    kill -0 "$tool" 2>/dev/null || die "bpftrace exited before it attached: $(cat "$work/log")"
    sleep 0.1
  done
  die "bpftrace had not attached after 120 s"
}

stop_tool() {
  kill -INT "$tool"
  wait "$tool" || die "$1 exited with status $?: $(tail -5 "$work/log")"
  local p left=()
  for p in "${bgpids[@]}"; do [[ $p == "$tool" ]] || left+=("$p"); done
  bgpids=("${left[@]}")
}

# run measures one variant and appends
#   round variant rate count events losses tool_cpu_seconds percpu
# to $work/results; the kernel's program counters go to $work/progs.
run() {
  local round=$1 v=$2 events=- losses=- used=- before
  case $v in
    bare) workload ;;
    callscope | callscope-stats | callscope-sys)
      case $v in
        callscope) start_agent ;;
        callscope-stats) start_agent --bpf-stats=true ;;
        callscope-sys) start_agent --syscall-errors=true ;;
      esac
      sleep 1 # let start-up work (first /proc and cgroup reads) end before measuring
      before=$(cputicks "$tool")
      workload
      used=$(( $(cputicks "$tool") - before ))
      curl -sf "http://$addr/metrics" >"$work/metrics"
      stop_tool callscope
      events=$(grep -c "\"kind\":\"connect\".*\"process\":{\"pid\":$wpid," "$work/events" || true)
      losses=$(grep -c '"kind":"loss"' "$work/events" || true)
      if [[ $v == callscope-stats ]]; then
        # callscope_bpf_program_runs_total{program="egress"} 1.2e+06
        awk -F'[{}"]' '/^callscope_bpf_program_run(s_total|_seconds_total)\{/ {print $1, $3, $NF}' "$work/metrics" >>"$work/progs"
      fi ;;
    bpftrace)
      start_bpftrace
      sleep 1
      before=$(cputicks "$tool")
      workload
      used=$(( $(cputicks "$tool") - before ))
      stop_tool bpftrace
      events=$(grep -c "^$wpid " "$work/events" || true)
      # bpftrace reports what its perf buffer dropped as "Lost N events".
      losses=$(awk '/Lost [0-9]+ events/ {n += $2} END {print n + 0}' "$work/events" "$work/log")
      ;;
  esac
  [[ $used == - ]] || used=$(awk -v t="$used" -v h="$tck" 'BEGIN {printf "%.2f", t / h}')
  printf 'round %-2d %-17s rate %11s %s  per cpu-s %11s  %s %-7s events %-7s loss %-3s tool cpu %s s\n' \
    "$round" "$v" "$rate" "$unit" "$percpu" "$what" "$count" "$events" "$losses" "$used"
  echo "$round $v $rate $count $events $losses $used $percpu" >>"$work/results"
  if [[ -n ${KEEP:-} && $v != bare ]]; then
    mkdir -p "$KEEP"
    cp "$work/events" "$KEEP/$mode-$round-$v.events"
    cp "$work/log" "$KEEP/$mode-$round-$v.log"
    if [[ -f $work/metrics ]]; then cp "$work/metrics" "$KEEP/$mode-$round-$v.metrics"; fi
  fi
  rm -f "$work/metrics"
}

printf '%s mode %s, %d rounds of %s s, workload on CPU %s, agent and bpftrace on CPUs %s; %s (%s)\n' \
  "$(date -u +%FT%TZ)" "$mode" "$rounds" "$secs" "$cpu" "${TOOL_CPUS:-any}" "$bin" "$("$bin" version 2>/dev/null || echo unknown)"
printf 'kernel %s, %s CPUs, %s, load average %s\n' "$(uname -r)" "$(nproc)" \
  "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" "$(cut -d' ' -f1-3 /proc/loadavg)"

n=${#variants[@]}
for ((r = 1; r <= rounds; r++)); do
  for ((k = 0; k < n; k++)); do
    run "$r" "${variants[$(((r - 1 + k) % n))]}"
  done
done

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
range() { sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {print lo, hi}'; }
# summarize COLUMN TITLE prints, per variant, the median of a column of the
# results, its range, the ratio of medians to bare, and the median and
# range of the per-round ratios (each run against the bare run of its round).
summarize() {
  local c=$1 v med lo hi ratios rlo rhi bare
  bare=$(awk -v c="$c" '$2 == "bare" {print $c}' "$work/results" | median)
  printf '\n%s\n%-17s %12s %12s %12s %8s  %s\n' "$2" variant median min max ratio "per-round ratios: median (min-max)"
  for v in "${variants[@]}"; do
    med=$(awk -v v="$v" -v c="$c" '$2 == v {print $c}' "$work/results" | median)
    read -r lo hi < <(awk -v v="$v" -v c="$c" '$2 == v {print $c}' "$work/results" | range)
    ratios=$(awk -v v="$v" -v c="$c" '$2 == "bare" {b[$1] = $c} $2 == v {r[$1] = $c} END {for (i in r) printf "%.4f\n", r[i] / b[i]}' "$work/results")
    read -r rlo rhi < <(range <<<"$ratios")
    printf '%-17s %12.0f %12.0f %12.0f %8.4f  %.4f (%.4f-%.4f)\n' "$v" "$med" "$lo" "$hi" \
      "$(awk -v a="$med" -v b="$bare" 'BEGIN {print a / b}')" "$(median <<<"$ratios")" "$rlo" "$rhi"
  done
}
summarize 3 "throughput, $unit (the CPU may also run other processes)"
summarize 8 "${unit%/s} per CPU second of the workload (time other processes take is left out)"

# Events against the workload's connects, and the tool's CPU time per event.
failed=0
printf '\n%-17s %12s %12s %8s %14s\n' variant "$what" events loss "cpu µs/event"
for v in "${variants[@]}"; do
  [[ $v == bare ]] && continue
  read -r c e l s < <(awk -v v="$v" '$2 == v {c += $4; e += $5; l += $6; s += $7} END {print c, e, l, s}' "$work/results")
  printf '%-17s %12d %12d %8d %14.2f\n' "$v" "$c" "$e" "$l" "$(awk -v s="$s" -v e="$e" 'BEGIN {print e ? s * 1e6 / e : 0}')"
  if [[ $v == callscope* ]] && [[ $e != "$c" || $l != 0 ]]; then
    echo "CHECK FAILED: $v: $e events for $c $what, $l loss events" >&2
    failed=1
  fi
done

# The kernel's counts, summed over the callscope-stats runs.
if [[ -s $work/progs ]]; then
  printf '\n%-14s %14s %12s\n' program runs ns/run
  awk '$1 ~ /runs_total$/ {n[$2] += $3} $1 ~ /seconds_total$/ {t[$2] += $3}
    END {for (p in n) printf "%-14s %14d %12.1f\n", p, n[p], n[p] ? t[p] * 1e9 / n[p] : 0}' "$work/progs" | sort
fi
exit "$failed"
