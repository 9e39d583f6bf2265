#!/usr/bin/env bash
# The data-plane end-to-end test (tests/dataplane.rs) against a real Kafka-protocol broker
# process instead of librdkafka's in-process mock: tansu (scripts/tansu.sh fetches it), with
# in-memory storage on 127.0.0.1 only.
# Each run starts a fresh broker (topics from an earlier run would hold old records).
# scripts/test.sh runs this after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."

tansu=$(./scripts/tansu.sh)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t tansu-XXXXXX.log)
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
echo "real-broker-test: tansu $("$tansu" --version | cut -d' ' -f2) on 127.0.0.1:$port (log $log)"
export FLOWCTL_TEST_KAFKA_BROKERS="127.0.0.1:$port"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p flowctl-cli --test dataplane
else
    cargo test -p flowctl-cli --test dataplane
fi
