#!/usr/bin/env bash
# Builds the agent from the source tree, installs it with its systemd unit
# and the example policies, and (re)starts it.
#   install-callscope.sh [SOURCE_TREE]     (default /vagrant)
set -euo pipefail

src=${1:-/vagrant}
export PATH="/usr/local/go/bin:$PATH"

make -C "$src" build
install -m 0755 "$src/bin/callscope" /usr/local/bin/callscope

# The demo's scope, and every example beside it, so that the agent loads
# several files and several documents per file.
install -d -m 0755 /etc/callscope/policies
install -m 0644 "$src/deploy/vagrant/demo-client.yaml" "$src"/deploy/examples/*.yaml /etc/callscope/policies/
/usr/local/bin/callscope policy check /etc/callscope/policies

install -m 0644 "$src/deploy/vagrant/callscope.service" /etc/systemd/system/callscope.service
systemctl daemon-reload
systemctl enable callscope.service
# A restart, not a start: a provision after a change must run the new binary.
systemctl restart callscope.service

echo "waiting for the agent to attach"
for _ in $(seq 1 30); do
  if curl -fsS -o /dev/null http://127.0.0.1:9470/readyz; then
    echo "callscope is ready"
    exit 0
  fi
  sleep 1
done
systemctl --no-pager status callscope.service || true
journalctl --no-pager -u callscope.service -n 30 || true
exit 1
