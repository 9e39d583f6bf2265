#!/usr/bin/env bash
# Builds flowctl and the three example Stellar components (stellar-live-source-datalake,
# ttp-processor, consumer_app) and puts them into ./bin, so that the guide's commands work as
# typed: `./bin/flowctl server --port 8080`, `./bin/flowctl apply -f examples/stellar-pipeline.yaml`.
# The server finds the components' bare command names beside its own binary.
#
#   scripts/install.sh           # an optimized (release) build
#   scripts/install.sh --debug   # the test profile's build in target/debug (faster to build)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
profile=(--release)
dir=release
case "${1:-}" in
    "") ;;
    --debug) profile=(); dir=debug ;;
    *) echo "usage: scripts/install.sh [--debug]" >&2; exit 2 ;;
esac
bins=(flowctl stellar-live-source-datalake ttp-processor consumer_app)
cargo build "${profile[@]}" -p flowctl-cli -p stellar-live-source-datalake -p ttp-processor \
    -p consumer_app --bins
mkdir -p bin
for b in "${bins[@]}"; do
    install -m 0755 "target/$dir/$b" "bin/$b"
done
echo "install: ${bins[*]} in $(pwd)/bin" >&2
