#!/usr/bin/env bash
# Installs a one-node Apache Kafka in KRaft mode (no ZooKeeper), listening
# on 127.0.0.1:9092 only, as the systemd unit kafka.service, and makes the
# agent's two topics. The release is pinned and checked against its
# published SHA-512. Does only what is not done yet.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=3.7.2
scala=2.13
sha512=65c09fbe8c78098b1efb26632a35d90ee709327a7aab13b37b2023692e1649105714ea513253a19f2cb685dc2c0c3837f32e39e9fb1d8d2367fe4650e5ad3cdc  # kafka_2.13-3.7.2.tgz
home=/opt/kafka_$scala-$version
config=/etc/kafka/server.properties
data=/var/lib/kafka

if ! id kafka >/dev/null 2>&1; then
  useradd --system --home-dir "$data" --no-create-home --shell /usr/sbin/nologin kafka
fi

if [[ ! -x $home/bin/kafka-server-start.sh ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tarball="kafka_$scala-$version.tgz"
  # The archive keeps every release; the mirrors only the latest ones.
  curl -fsSL --retry 3 -o "$tmp/$tarball" "https://archive.apache.org/dist/kafka/$version/$tarball"
  echo "$sha512  $tmp/$tarball" | sha512sum --check --quiet
  tar -C /opt -xzf "$tmp/$tarball"
fi
ln -sfn "$home" /opt/kafka

install -d -o kafka -g kafka -m 0750 "$data" /var/log/kafka
install -d -m 0755 /etc/kafka
cat >"$config.new" <<PROPERTIES
# One node that is both broker and KRaft controller, for the callscope demo.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
log.retention.hours=24
PROPERTIES
restart=
if cmp -s "$config.new" "$config"; then
  rm "$config.new"
else
  mv "$config.new" "$config"
  restart=yes
fi

# A KRaft log directory is formatted once, with a cluster id of its own.
if [[ ! -f $data/data/meta.properties ]]; then
  cluster_id=$(/opt/kafka/bin/kafka-storage.sh random-uuid)
  runuser -u kafka -- /opt/kafka/bin/kafka-storage.sh format -t "$cluster_id" -c "$config"
fi

install -m 0644 "$here/kafka.service" /etc/systemd/system/kafka.service
systemctl daemon-reload
systemctl enable kafka.service
# One start or restart: a restart if the configuration changed, which
# starts the broker too if it is not running yet (as on the first install).
if [[ -n $restart ]]; then
  systemctl restart kafka.service
else
  systemctl start kafka.service
fi

echo "waiting for the broker"
ready=
for _ in $(seq 1 60); do
  if /opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:9092 --list >/dev/null 2>&1; then
    ready=yes
    break
  fi
  sleep 2
done
if [[ -z $ready ]]; then
  echo "install-kafka: the broker did not answer on 127.0.0.1:9092 within 120 s" >&2
  systemctl --no-pager status kafka.service || true
  journalctl --no-pager -u kafka.service -n 30 || true
  exit 1
fi
for topic in callscope.events callscope.violations; do
  /opt/kafka/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:9092 \
    --create --if-not-exists --topic "$topic" --partitions 1 --replication-factor 1
done
