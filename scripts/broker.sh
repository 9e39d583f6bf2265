#!/usr/bin/env bash
# A local Kafka-protocol broker for readers who have no Kafka or Redpanda: tansu on
# 127.0.0.1:9092 (Kafka's default port, which `flowctl server` uses unless --kafka-brokers
# says otherwise), keeping records in memory. Runs in the foreground until Ctrl-C.
#
#   scripts/broker.sh            # 127.0.0.1:9092
#   BROKER_PORT=19092 scripts/broker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port="${BROKER_PORT:-9092}"
tansu=$(./scripts/tansu.sh)
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "broker: 127.0.0.1:$port is already in use (a broker may be running there)" >&2
    exit 1
fi
echo "broker: tansu $("$tansu" --version | cut -d' ' -f2) on 127.0.0.1:$port (Ctrl-C stops it)" >&2
exec "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/
