#!/usr/bin/env bash
# Registers the example schemas (examples/protos) with a running flowctl cluster.
#
#   FLOWCTL_ENDPOINTS=127.0.0.1:8080,127.0.0.1:8081 examples/register-schemas.sh
#
# The endpoints come from FLOWCTL_ENDPOINTS (default: localhost:8080). The flowctl binary is
# $FLOWCTL_BIN, else `flowctl` on PATH, else bin/flowctl (scripts/install.sh), else
# target/debug/flowctl. Pushing the same files
# again registers nothing new and says so.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${FLOWCTL_BIN:-}"
if [ -z "$bin" ]; then
    if command -v flowctl >/dev/null 2>&1; then
        bin=flowctl
    elif [ -x "$here/../bin/flowctl" ]; then
        bin="$here/../bin/flowctl"
    else
        bin="$here/../target/debug/flowctl"
    fi
fi
export FLOWCTL_ENDPOINTS="${FLOWCTL_ENDPOINTS:-localhost:8080}"
"$bin" schemas push "$here/protos/raw_ledger_service.proto" --package raw_ledger_service -I "$here/protos"
"$bin" schemas push "$here/protos/token_transfer.proto" --package token_transfer -I "$here/protos"
