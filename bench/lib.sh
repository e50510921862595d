# Helpers shared by bench/overhead.sh, bench/paired.sh and bench/profile.sh,
# which source this file from the top of the repository. Each of them
# defines die MESSAGE, which these helpers call on failure.
# shellcheck shell=bash

# build_workload connect|bulk|syscalls OUT compiles bench/connectloop.c or
# bench/bulk.c into OUT, or for syscalls copies bench/ddloop.sh there.
build_workload() {
  case $1 in
    connect) cc -O2 -Wall -o "$2" bench/connectloop.c ;;
    bulk) cc -O2 -Wall -pthread -o "$2" bench/bulk.c ;;
    syscalls) cp bench/ddloop.sh "$2" ;;
    *) die "build_workload: unknown workload $1" ;;
  esac
}

# cgroup2_root prints where the cgroup2 hierarchy is mounted, or nothing.
cgroup2_root() { awk '$3 == "cgroup2" {print $2; exit}' /proc/self/mounts; }

# cputicks PID prints the user+system CPU time of a process, in clock ticks.
cputicks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

# free_port prints a port no one listens on, below the ephemeral range: the
# workload's connects take ephemeral ports, and one of them in use would
# make the agent's bind fail.
free_port() {
  local ephemeral p
  read -r ephemeral _ </proc/sys/net/ipv4/ip_local_port_range
  while :; do
    p=$((10000 + RANDOM % (ephemeral - 10000)))
    if [[ -z $(ss -Htan "sport = :$p") ]]; then echo "$p"; return; fi
  done
}

# wait_ready ADDR PID LOG waits up to 60 s for the agent PID, which serves
# its metrics on ADDR and writes its log to LOG, to answer on /readyz.
wait_ready() {
  local i
  for ((i = 0; i < 600; i++)); do
    if curl -sf "http://$1/readyz" >/dev/null; then return; fi
    kill -0 "$2" 2>/dev/null || die "the agent exited before it was ready: $(cat "$3")"
    sleep 0.1
  done
  die "the agent was not ready after 60 s: $(cat "$3")"
}

# prog_stats IDS prints "name run_cnt run_time_ns" for each BPF program
# whose id is in IDS (a JSON array), as the kernel counts them while the
# kernel.bpf_stats_enabled sysctl is on.
prog_stats() {
  bpftool prog show --json | jq -r --argjson ids "$1" \
    '.[] | select(.id as $id | $ids | index($id)) | "\(.name) \(.run_cnt // 0) \(.run_time_ns // 0)"' | sort
}
