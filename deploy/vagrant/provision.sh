#!/usr/bin/env bash
# Provisions the Vagrant VM (see /Vagrantfile): Go, the agent built from the
# synced tree, a one-node Kafka, the example policies and the demo client.
# Every step checks what is there first, so running it again only rebuilds
# and restarts the agent.
#   provision.sh [SOURCE_TREE]     (default /vagrant)
set -euo pipefail

src=${1:-/vagrant}
here="$src/deploy/vagrant"
export DEBIAN_FRONTEND=noninteractive

echo "--- packages"
apt-get update -qq
# Java for Kafka; make and git for the build; libcap2-bin for capsh, to
# look at the agent's capabilities.
apt-get install -y -qq --no-install-recommends \
  ca-certificates curl make git openjdk-17-jre-headless libcap2-bin >/dev/null

echo "--- Go"
"$here/install-go.sh"

echo "--- Kafka"
"$here/install-kafka.sh"

echo "--- BPF run-time statistics"
# The agent reports its programs' run time; turning the counting on takes
# CAP_SYS_ADMIN, which it does not hold, so the node turns it on for all.
echo kernel.bpf_stats_enabled=1 >/etc/sysctl.d/90-callscope.conf
sysctl -q -p /etc/sysctl.d/90-callscope.conf

echo "--- callscope"
"$here/install-callscope.sh" "$src"

echo "--- demo client"
# A copy of curl under its own name, so that the demo-client policy binds
# it by its exe and no other curl.
install -m 0755 /usr/bin/curl /usr/local/bin/demo-client

echo "ready: sudo $here/demo.sh"
