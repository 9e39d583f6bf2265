#!/usr/bin/env bash
# The main job until `flowctl dev up` exists: start a local 3-node cluster on 127.0.0.1,
# apply examples/stellar-pipeline.yaml, and read it back from every node. The cluster keeps
# running until Ctrl-C (or exits at once with --exit).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -p flowctl-cli
bin=target/debug/flowctl

work=$(mktemp -d -t flowctl-demo-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ports=(18080 18081 18082)
metrics=(19090 19091 19092)
for i in 0 1 2; do
    join=()
    [ "$i" -gt 0 ] && join=(--join "127.0.0.1:${ports[0]}")
    "$bin" server --listen "127.0.0.1:${ports[$i]}" --metrics-port "${metrics[$i]}" \
        --data-dir "$work/node$i" "${join[@]}" >"$work/node$i.log" 2>&1 &
    pids+=($!)
    if [ "$i" -eq 0 ]; then
        for _ in $(seq 1 100); do
            curl -sf "http://127.0.0.1:${metrics[0]}/readyz" >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
done
export FLOWCTL_ENDPOINTS="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
for _ in $(seq 1 100); do
    n=$("$bin" cluster members -o json 2>/dev/null | grep -c '"voter": true' || true)
    [ "$n" = 3 ] && break
    sleep 0.2
done

echo "== cluster"
"$bin" cluster status
echo "== register the example schemas (examples/register-schemas.sh)"
FLOWCTL_BIN="$bin" examples/register-schemas.sh
echo "== apply (through a follower or the leader: any node serves writes)"
"$bin" --endpoints "127.0.0.1:${ports[1]}" apply -f examples/stellar-pipeline.yaml
for i in 0 1 2; do
    echo "== get pipelines from node $i (127.0.0.1:${ports[$i]}, linearizable)"
    "$bin" --endpoints "127.0.0.1:${ports[$i]}" get pipelines
done

if [ "${1:-}" = "--exit" ]; then
    exit 0
fi
echo
echo "cluster running: FLOWCTL_ENDPOINTS=$FLOWCTL_ENDPOINTS; metrics on :${metrics[0]}-${metrics[2]}; Ctrl-C stops it"
wait
