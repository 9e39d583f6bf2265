#!/usr/bin/env bash
# The seed guide, followed literally: a broker on localhost:9092 (scripts/broker.sh), then
#
#   ./bin/flowctl server --port 8080
#   cd examples && ./register-schemas.sh
#   ./bin/flowctl apply -f examples/stellar-pipeline.yaml
#   ./bin/flowctl list
#   ./bin/flowctl logs ttp-processor --follow
#   ./bin/flowctl get pipelines
#   ./bin/flowctl dlq ls
#   ./bin/flowctl graph --pipeline stellar-token-pipeline --format svg
#   ./bin/flowctl schemas push ...
#   ./bin/flowctl replay --pipeline stellar-token-pipeline --from-ledger ... --to-ledger ...
#
# each checked on what it prints. It uses the guide's fixed ports (8080, 9090 and 9092 on
# loopback), so it runs alone: scripts/test.sh calls it after the parallel suite. The server's
# default data dir is under a temporary $HOME, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
./scripts/install.sh --debug
tansu_dir="${FLOWCTL_TOOLS_DIR:-$HOME/.cache/flowctl-tools}"

for port in 8080 9090 9092; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "guide-test: port $port is in use; the guide's commands need it free" >&2
        exit 1
    fi
done

work=$(mktemp -d -t flowctl-guide-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "guide-test: FAILED: $*" >&2
    echo "--- server log (tail) ---" >&2
    tail -n 30 "$work/server.log" >&2 || true
    exit 1
}
# Polls "$@" until it succeeds, for at most $1 seconds.
wait_for() {
    local secs=$1
    shift
    local until=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < until)) || return 1
        sleep 0.5
    done
}

FLOWCTL_TOOLS_DIR="$tansu_dir" ./scripts/broker.sh >"$work/broker.log" 2>&1 &
pids+=($!)
wait_for 60 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9092' || fail "the broker did not listen on 9092"

# The guide's server, with its default data dir under a fresh $HOME.
mkdir -p "$work/home"
HOME="$work/home" ./bin/flowctl server --port 8080 >"$work/server.log" 2>&1 &
pids+=($!)
wait_for 60 ./bin/flowctl cluster status || fail "the server did not answer on 8080"
echo "guide-test: server up on 8080, broker on 9092"

(cd examples && ./register-schemas.sh) >"$work/schemas.out" 2>&1 \
    || fail "register-schemas.sh: $(cat "$work/schemas.out")"
# Captured first: `grep -q` in a pipe may exit before flowctl has written everything.
subjects=$(./bin/flowctl schemas ls) || fail "schemas ls"
grep -q token_transfer <<<"$subjects" || fail "schemas ls has no token_transfer: $subjects"

out=$(./bin/flowctl apply -f examples/stellar-pipeline.yaml) || fail "apply"
grep -q "created" <<<"$out" || fail "apply said: $out"

ready() { ./bin/flowctl get pipelines | awk '$1 == "stellar-token-pipeline" && $4 == "3/3" && $5 == "Running" {ok=1} END {exit !ok}'; }
wait_for 120 ready || fail "get pipelines never showed 3/3 Running: $(./bin/flowctl get pipelines)"
echo "guide-test: get pipelines:"
./bin/flowctl get pipelines

listed() {
    local t
    t=$(./bin/flowctl list)
    for id in stellar-live-source ttp-processor consumer-app; do
        grep -E "^$id +[a-z]+ +stellar-token-pipeline +healthy +[^ ]+ ago +http://" <<<"$t" >/dev/null || return 1
    done
}
wait_for 60 listed || fail "list: $(./bin/flowctl list)"
echo "guide-test: list:"
./bin/flowctl list

set +e
timeout 5 ./bin/flowctl logs ttp-processor --follow >"$work/logs.out" 2>&1
rc=$?
set -e
[ "$rc" = 124 ] || fail "logs --follow ended by itself (exit $rc): $(cat "$work/logs.out")"
[ -s "$work/logs.out" ] || fail "logs --follow printed nothing"
if grep -q $'\e' "$work/logs.out"; then fail "logs carry ANSI escape codes"; fi

./bin/flowctl dlq ls >"$work/dlq.out" || fail "dlq ls: $(cat "$work/dlq.out")"

./bin/flowctl graph --pipeline stellar-token-pipeline --format svg >"$work/graph.svg" || fail "graph"
grep -q "<svg" "$work/graph.svg" || fail "graph printed no SVG"
grep -q "ttp-processor" "$work/graph.svg" || fail "the SVG does not name ttp-processor"

./bin/flowctl schemas push examples/protos/token_transfer.proto --package token_transfer \
    -I examples/protos >"$work/push.out" 2>&1 || fail "schemas push: $(cat "$work/push.out")"

./bin/flowctl replay --pipeline stellar-token-pipeline --from-ledger 123456 --to-ledger 123583 \
    --timeout 120 >"$work/replay.out" 2>&1 || fail "replay: $(cat "$work/replay.out")"
job=$(./bin/flowctl replay ls -o json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j[0]["state"] if j else "")')
[ "$job" = "completed" ] || fail "the replay job is '$job', not completed: $(cat "$work/replay.out")"

echo "guide-test: every step of the guide worked as typed ($root)"
