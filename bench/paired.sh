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
# and started with --syscall-errors=false (the default), so that all it
# attaches, connect4/6 and sock_release included, is scoped to that cgroup. Each pair runs the workload (pinned to CPU $CPU) for
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
# The syscall-exit tracepoint that --syscall-errors (opt-in) adds is
# not cgroup-scoped: it puts every syscall on the node on the kernel's
# slower path, "off" runs included, so pairs cannot measure it. The perf
# profile (bench/profile.sh) and docs/benchmarks.md give its cost. Set
# SYSCALL_ERRORS=1 to run the agent with it anyway (both sides pay it), as
# an agent from before the flag does.
#
# FLOOR=1 (or FLOOR=PATH, a bench/floor binary, relative to the top of
# the repository as BIN is; 1 builds one with go; empty or 0 leaves it out)
# adds two more sides to each round, each a cgroup of its own:
# "floor", where bench/floor attaches programs that do nothing at the hooks
# the agent uses (the kernel's dispatch alone), and "floor+rec", where they
# also write a 24-byte ring-buffer record at each connect's start and
# establishment (the least a per-connect report costs). Ratios of these
# sides against "off" say how much of the agent's cost any program at
# those hooks would pay. The order of the sides in a round follows a
# balanced Latin square (Williams): over each run of as many rounds as
# there are sides, every side runs in every position once and right after
# every other side once, so that what one run leaves behind (the agent
# still draining its ring buffer, say) falls on each side alike.
#
# BPF_STATS=1 also has the kernel count the run time of the programs
# attached to each side's cgroup (the kernel.bpf_stats_enabled sysctl, put
# back as it was on exit), and prints it per connect: what the agent's
# programs do beyond bench/floor's, measured without the throughput's
# noise. The counting itself costs every side two clock reads per program
# run (about 11 sock_ops and 8 cgroup_skb runs per connect), so the ratios
# of a run with it are a little lower. Needs bpftool and jq.
#
# Prints each round, then the median, quartiles and mean of the per-round
# throughput ratios (on/off, and floor/off and floor+rec/off), the agent's
# CPU per event, and checks that every connect of the "on" runs gave one
# event and no loss event was written. BIN defaults to bin/callscope, PAIRS
# (rounds) to 40, SECS to 1.
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
sides=(on off)
cgroups=("$on" "$off")
if [[ ${FLOOR:-0} != 0 ]]; then
  sides+=(floor floor+rec)
  cgroups+=("$cgroot/callscope-bench-floor-$$" "$cgroot/callscope-bench-floorrec-$$")
fi
agent=
floors=()
stats_was=
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  if [[ -n $agent ]]; then kill -INT "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
  for f in ${floors[@]+"${floors[@]}"}; do kill -TERM "$f" 2>/dev/null || true; wait "$f" 2>/dev/null || true; done
  if [[ -n $stats_was ]]; then sysctl -qw kernel.bpf_stats_enabled="$stats_was" || true; fi
  rmdir "${cgroups[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "${cgroups[@]}"
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
if [[ ${FLOOR:-0} != 0 ]]; then
  floor=$FLOOR
  if [[ $floor == 1 ]]; then
    command -v go >/dev/null || die "FLOOR=1 builds bench/floor, and go is not installed: give FLOOR the path of a floor binary"
    CGO_ENABLED=0 go build -o "$work/floor" ./bench/floor
    floor=$work/floor
  fi
  [[ -x $floor ]] || die "FLOOR=$floor: not an executable"
  "$floor" -cgroup "${cgroups[2]}" 2>"$work/floor0.log" &
  floors+=($!)
  "$floor" -cgroup "${cgroups[3]}" -records 2>"$work/floor1.log" &
  floors+=($!)
  for f in 0 1; do
    log=$work/floor$f.log
    for ((i = 0; i < 100; i++)); do
      grep -q attached "$log" && break
      kill -0 "${floors[f]}" 2>/dev/null || break
      sleep 0.1
    done
    grep -q attached "$log" || die "bench/floor did not attach: $(cat "$log")"
  done
fi
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

n=${#sides[@]}
# progtime CGROUP: the run time, in ns, the kernel has counted for the
# programs attached to CGROUP.
progtime() {
  local ids
  ids=$(bpftool cgroup show "$1" -j | jq -s 'map(.[].id)') || die "bpftool cgroup show $1 failed"
  prog_stats "$ids" | awk '{t += $3} END {print t + 0}'
}
stats=${BPF_STATS:-0}
[[ $stats == 0 || $stats == 1 ]] || die "BPF_STATS=$stats: want 0 or 1"
declare -a time_before side_count
for ((j = 0; j < n; j++)); do side_count[j]=0; done
if [[ $stats == 1 ]]; then
  for t in bpftool jq; do command -v "$t" >/dev/null || die "BPF_STATS=1 needs $t"; done
  stats_was=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1
  for ((j = 0; j < n; j++)); do time_before[j]=$(progtime "${cgroups[j]}"); done
fi
agent_before=$(cputicks "$agent")
# The first row of a Williams square for an even n: 0, 1, n-1, 2, n-2, ...;
# round p adds p to each.
order=(0)
lo=1 hi=$((n - 1))
for ((k = 1; k < n; k++)); do
  if ((k % 2)); then order+=("$lo"); lo=$((lo + 1)); else order+=("$hi"); hi=$((hi - 1)); fi
done
printf 'round'
for side in "${sides[@]}"; do printf ' %18s' "$side: $unit"; done
printf '   ratio on/off\n'
: >"$work/pairs"
on_pids=()
declare -a rate
for ((p = 1; p <= pairs; p++)); do
  for ((k = 0; k < n; k++)); do
    j=$(((order[k] + p) % n))
    read -r "rate[j]" pid c < <(run "${cgroups[j]}")
    side_count[j]=$((side_count[j] + c))
    if ((j == 0)); then on_pids+=("$pid"); fi
  done
  ratio=$(awk -v a="${rate[0]}" -v b="${rate[1]}" 'BEGIN {printf "%.4f", a / b}')
  printf '%-5d' "$p"
  for ((j = 0; j < n; j++)); do printf ' %18s' "${rate[j]}"; done
  printf '   %s\n' "$ratio"
  echo "${rate[*]}" >>"$work/pairs"
done
agent_used=$(($(cputicks "$agent") - agent_before))
declare -a time_used
if [[ $stats == 1 ]]; then
  for ((j = 0; j < n; j++)); do time_used[j]=$(($(progtime "${cgroups[j]}") - time_before[j])); done
  sysctl -qw kernel.bpf_stats_enabled="$stats_was"
  stats_was=
fi

kill -INT "$agent"
wait "$agent" || die "the agent exited with status $?: $(tail -5 "$work/log")"
agent=

# One pass over the events: the connects of the "on" runs' processes.
events=$(awk -v pids="${on_pids[*]}" 'BEGIN {split(pids, p, " "); for (i in p) on[p[i]] = 1}
  /"kind":"connect"/ && match($0, /"process":\{"pid":[0-9]+,/) {
    if (substr($0, RSTART + 17, RLENGTH - 18) in on) n++
  }
  END {print n + 0}' "$work/events")
losses=$(grep -c '"kind":"loss"' "$work/events" || true)

echo
echo "$(date -u +%FT%TZ) $mode: $pairs rounds of $secs s runs (${sides[*]}), workload on CPU $cpu; kernel $(uname -r), $(nproc) CPUs"
echo "agent: $("$bin" version 2>/dev/null | head -1), ${flags[*]}"
for ((j = 0; j < n; j++)); do
  ((j == 1)) && continue
  awk -v j=$((j + 1)) '{print $j / $2}' "$work/pairs" | sort -g | awk -v side="${sides[j]}" '{r[NR] = $1; s += $1}
    END {
      n = NR
      printf "ratio %s/off per round: median %.4f, quartiles %.4f-%.4f, mean %.4f, min %.4f, max %.4f\n",
        side, r[int((n + 1) / 2)], r[int((n + 3) / 4)], r[int((3 * n + 1) / 4)], s / n, r[1], r[n]
    }'
done
awk -v unit="$unit" -v names="${sides[*]}" 'BEGIN {split(names, name, " ")}
  {for (j = 1; j <= NF; j++) sum[j] += $j}
  END {
    printf "mean %s:", unit
    for (j = 1; j <= NF; j++) printf " %s %.0f%s", name[j], sum[j] / NR, (j < NF ? "," : "\n")
  }' "$work/pairs"
echo "events: $events of ${side_count[0]} connects in the on runs; loss events: $losses"
if [[ $stats == 1 ]]; then
  if [[ $mode == connect ]]; then printf 'program run time per connect (kernel.bpf_stats_enabled):'; else printf 'program run time (kernel.bpf_stats_enabled):'; fi
  for ((j = 0; j < n; j++)); do
    ((j == 1)) && continue
    awk -v side="${sides[j]}" -v t="${time_used[j]}" -v c="${side_count[j]}" -v m="$mode" -v first=$((j == 0)) 'BEGIN {
      if (!first) printf ","
      if (m == "connect") printf " %s %.0f ns", side, (c > 0 ? t / c : 0); else printf " %s %.1f ms", side, t / 1e6
    }'
  done
  echo
fi
awk -v t="$agent_used" -v h="$tck" -v n="$events" -v m="$mode" 'BEGIN {
  printf "agent CPU: %.2f s", t / h
  if (m == "connect" && n > 0) printf ", %.2f µs per event", t / h * 1e6 / n
  printf "\n"
}'
[[ $events == "${side_count[0]}" && $losses == 0 ]] || die "events and connects differ, or events were lost"
