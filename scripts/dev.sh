#!/usr/bin/env bash
# The main job: builds flowctl and the example components, then runs `flowctl dev up`: a local
# control-plane cluster, an embedded Kafka-protocol broker, the example schemas and
# examples/stellar-pipeline.yaml (source → ttp-processor → consumer), with a live status table
# until Ctrl-C. Arguments go to `flowctl dev up` (e.g. --nodes 3). `flowctl dev down` from
# another terminal stops it too.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The workspace's default members: flowctl and the example components, not the benchmarks.
cargo build --bins
exec target/debug/flowctl dev up "$@"
