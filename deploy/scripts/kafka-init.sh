#!/usr/bin/env bash
# The stack's one-shot topic set-up, run in the apache/kafka image before any
# swabstream process starts:
#   kafka-init.sh BOOTSTRAP PARTITIONS TOPIC...
# Creates each topic if it is missing, with PARTITIONS partitions, one
# replica and no retention limit (the log is the truth: replay rebuilds the
# views from its start), then checks that an existing topic has that many
# partitions: the workers place each person by murmur2(key) mod the
# partition count, so a topic of another size must not be used silently.
set -euo pipefail

bootstrap=${1:?usage: kafka-init.sh BOOTSTRAP PARTITIONS TOPIC...}
partitions=${2:?usage: kafka-init.sh BOOTSTRAP PARTITIONS TOPIC...}
shift 2
[ "$#" -gt 0 ] || { echo "kafka-init: no topic named" >&2; exit 2; }

topics=${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}

for topic in "$@"; do
  "$topics" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1 \
    --config retention.ms=-1
  have=$("$topics" --bootstrap-server "$bootstrap" --describe --topic "$topic" |
    sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
  if [ "$have" != "$partitions" ]; then
    echo "kafka-init: topic $topic has ${have:-no} partitions, the stack expects $partitions." >&2
    echo "kafka-init: start from empty volumes (docker compose down -v) or change the count everywhere." >&2
    exit 1
  fi
  echo "kafka-init: topic $topic ready, $partitions partitions"
done
