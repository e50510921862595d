#!/usr/bin/env bash
# Profiles the agent under load, on both sides of the ring buffer:
#   - the kernel's count of each callscope program's runs and run time
#     (bpftool, with the kernel.bpf_stats_enabled sysctl on), over three
#     phases: idle, bench/connectloop, bench/bulk;
#   - perf samples with call graphs, with that counting off: of the agent's
#     process during the connect loop (the user-space pipeline), and of the
#     workload's CPU during the connect loop and during bulk (callscope's
#     programs run there, in the workload's context); then of the workload's
#     CPU during the connect loop with the counting on, as the agent's
#     --bpf-stats (off by default) turns it on. The share of the workload's
#     own samples spent under the kernel's entry points into the programs
#     is its overhead, measured within one run: other processes' use of the
#     CPU does not blur it, as it blurs throughput.
#
#   sudo bench/profile.sh [BIN] [SECS] [OUT]
#
# BIN should keep its symbol table (`make build` strips it), for example
#   CGO_ENABLED=0 go build -trimpath -o /tmp/callscope-sym ./cmd/callscope
# SECS is the length of each phase, in whole seconds, at least 2 (default
# 5; under perf the workload runs for SECS - 1 of them). OUT (default a new
# temporary directory) keeps the perf.data files and the reports
# (bpf-stats.txt, perf.txt). The agent runs with --bpf-stats=false: the sysctl is what
# turns the counting on, and it is put back as it was on exit. CPU picks
# the CPU of the workload (default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

usage() { echo "usage: $0 [BIN] [SECS] [OUT]" >&2; exit 2; }
bin=${1:-bin/callscope}
secs=${2:-5}
[[ $secs =~ ^[1-9][0-9]*$ && $secs -ge 2 ]] || usage
out=${3:-$(mktemp -d)}
cpu=${CPU:-0}
die() { echo "profile: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"
[[ -x $bin ]] || die "$bin: no such executable"
for t in bpftool perf jq curl; do command -v "$t" >/dev/null || die "$t is not installed"; done
mkdir -p "$out"

work=$(mktemp -d)
stats_was=$(sysctl -n kernel.bpf_stats_enabled)
agent=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [[ -n $agent ]]; then kill -INT "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
  sysctl -qw kernel.bpf_stats_enabled="$stats_was"
  rm -rf "$work"
}
trap cleanup EXIT

# The names matter: perf's reports pick the workloads' samples by them.
build_workload connect "$work/connectloop"
build_workload bulk "$work/bulk"

addr=127.0.0.1:$(free_port)
"$bin" run --bpf-stats=false --metrics-addr "$addr" >"$work/events" 2>"$out/agent.log" &
agent=$!
wait_ready "$addr" "$agent" "$out/agent.log"
sysctl -qw kernel.bpf_stats_enabled=1
sleep 1

# The agent's programs, by id: the file descriptors it holds say which
# (this bpftool may be built without the pid column).
# A descriptor closed while cat reads is no error here.
ids=$({ cat /proc/"$agent"/fdinfo/* 2>/dev/null || true; } | awk '/^prog_id:/ {print $2}' | sort -un | jq -sc .)
[[ $ids != "[]" ]] || die "found no BPF program held by the agent"
# snapshot prints "name run_cnt run_time_ns" for each program the agent holds.
snapshot() { prog_stats "$ids"; }
# phase NAME CMD... runs CMD and prints, per program, its runs and ns per run
# in that time; the workload's own output goes to $out/NAME.out.
phase() {
  local name=$1
  shift
  snapshot >"$work/before"
  "$@" >"$out/$name.out"
  snapshot >"$work/after"
  echo "phase $name: $(cat "$out/$name.out")"
  join "$work/before" "$work/after" | awk '{n = $4 - $2; t = $5 - $3; if (n > 0) printf "  %-14s runs %10d  ns/run %8.1f  total ms %8.1f\n", $1, n, t / n, t / 1e6}'
}

{
  echo "$(date -u +%FT%TZ) kernel $(uname -r), $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "agent $("$bin" version), workload on CPU $cpu, $secs s per phase"
  phase idle sleep "$secs"
  phase connect taskset -c "$cpu" "$work/connectloop" "$secs"
  phase bulk taskset -c "$cpu" "$work/bulk" "$secs"
} | tee "$out/bpf-stats.txt"

# perf, with the kernel's counting off again (it adds two clock reads per
# program run): during the connect loop, the agent's process (the
# user-space pipeline) and the workload's CPU; during bulk, the workload's
# CPU. Shares of the workload's own samples are immune to the time other
# processes take from the CPU, so they resolve overheads of a few percent
# that throughput on a shared machine cannot.
#
# perf_cpu NAME PROGRAM records CPU $cpu, with call graphs, to
# $out/NAME.data for SECS seconds, while PROGRAM runs on it for SECS - 1 of
# them; PROGRAM's output goes to $out/perf-NAME.out.
perf_cpu() {
  local p
  perf record -q -F 997 -g -C "$cpu" -o "$out/$1.data" -- sleep "$secs" 2>/dev/null &
  p=$!
  sleep 0.2
  taskset -c "$cpu" "$2" "$((secs - 1))" >"$out/perf-$1.out"
  wait "$p"
}
sysctl -qw kernel.bpf_stats_enabled="$stats_was"
perf record -q -F 997 -g -p "$agent" -o "$out/agent.data" -- sleep "$secs" 2>/dev/null &
pagent=$!
perf_cpu connect "$work/connectloop"
wait "$pagent"
perf_cpu bulk "$work/bulk"
# The connect loop once more with the counting on, as --bpf-stats (off by
# default) turns it on: what the clock reads cost is the difference.
sysctl -qw kernel.bpf_stats_enabled=1
perf_cpu connect-stats "$work/connectloop"
sysctl -qw kernel.bpf_stats_enabled="$stats_was"

# top DATA [perf report options]: self time by function, top 30.
top() { perf report -i "$1" --no-children --sort sym --stdio -g none "${@:2}" 2>/dev/null | grep -v -e '^#' -e '^$' | head -30 || true; }
# hooks DATA COMM: the share of COMM's samples spent under each of the
# kernel's entry points into callscope's programs, callees included.
hooks() {
  perf report -i "$1" --comm "$2" --percentage relative --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\] (__cgroup_bpf_run_filter_(sock_ops|skb|sock_addr)|syscall_exit_work|syscall_trace_enter|perf_syscall_exit|bpf_prog_[0-9a-f]+_[a-z_0-9]+|sched_clock|htab_map_(update|lookup|delete)_elem|__htab_map_lookup_elem|bpf_skb_load_bytes|bpf_ringbuf_(reserve|submit)|irq_work_queue)$' || true
}
{
  echo "connect loop during perf: $(cat "$out/perf-connect.out")"
  echo "--- agent process, self time by function (top 30)"
  top "$out/agent.data"
  echo "--- agent process, including callees: the pipeline's stages and the GC"
  perf report -i "$out/agent.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '\] (main\.pipeline|.*Stream\)\.Write|.*Encoder\)\.Append|.*EnrichBatch|.*JudgeBatch|.*Collector\)\.read|runtime\.growslice|runtime\.mallocgc|runtime\.gcBgMarkWorker|runtime\.gcAssistAlloc|syscall\.write|time\.Time\.AppendFormat|.*appendEscaped)$' || true
  echo "--- CPU $cpu during the connect loop: connectloop's samples under callscope's hooks (callees included)"
  hooks "$out/connect.data" connectloop
  echo "--- CPU $cpu during the connect loop: connectloop's self time by function (top 30)"
  top "$out/connect.data" --comm connectloop --percentage relative
  echo "bulk during perf: $(cat "$out/perf-bulk.out")"
  echo "--- CPU $cpu during bulk: bulk's samples under callscope's hooks (callees included)"
  hooks "$out/bulk.data" bulk
  echo "connect loop with kernel.bpf_stats_enabled=1: $(cat "$out/perf-connect-stats.out")"
  echo "--- CPU $cpu: connectloop's samples under callscope's hooks, with the run-time counting on"
  hooks "$out/connect-stats.data" connectloop
} | tee "$out/perf.txt"
echo "profile: reports and perf data in $out"
