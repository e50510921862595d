#!/usr/bin/env bash
# The demo, inside the Vagrant VM: demo-client (a copy of curl) makes one
# call its CallScope allows and one it does not, and the second arrives on
# the violations topic.
#   sudo /vagrant/deploy/vagrant/demo.sh
# The scope is deploy/vagrant/demo-client.yaml: /usr/local/bin/demo-client
# may call 127.0.0.0/8 on any port, and nothing else.
set -euo pipefail

brokers=${KAFKA_BROKERS:-127.0.0.1:9092}
client=/usr/local/bin/demo-client

# call ADDR PORT: the client holds the connection for a second (curl's
# telnet mode waits for --max-time), because the agent reads the caller's
# exe from /proc when the event reaches it, and a process gone by then
# cannot be bound by an exe glob. PORT is the source port, which tells this
# run's events from those of earlier runs.
call() {
  echo "demo-client → $1 (from port $2)"
  "$client" -s --max-time 1 --local-port "$2" "telnet://$1" >/dev/null </dev/null || true
}

port=$((40000 + RANDOM % 20000))

echo "--- allowed: the agent's metrics port on 127.0.0.1"
call 127.0.0.1:9470 "$port"
echo "--- out of scope: sshd on ::1, outside 127.0.0.0/8"
call '[::1]:22' "$((port + 1))"

echo "--- the violation, read back from the violations topic"
match="\"src\":{\"ip\":\"::1\",\"port\":$((port + 1))}"
# The VM's agent is built from this tree (install-callscope.sh), so it has
# `callscope tail` to read the topic back.
found=$(timeout 30 callscope tail --kafka-brokers "$brokers" --violations --from-beginning --json 2>/dev/null |
  grep -m1 -F "$match" || true)
if [[ -z $found ]]; then
  echo "the violation did not arrive within 30 s; see journalctl -u callscope" >&2
  exit 1
fi
echo "$found"
