#!/usr/bin/env bash
# The torture suite, long: a real 3-node cluster under kills, pauses, partitions, clock steps,
# membership churn and a full disk, its clients' history checked for linearizability.
#
#   scripts/torture.sh --cycles N [--seed S] [--faults kill,pause,partition,clock,churn,disk]
#
# Prints one final line: cycles=N faults=<counts> ops=<ok>/<indeterminate> linearizable=yes
# lost=0 duplicates=0, and exits non-zero otherwise. Runs as root (the disk fault mounts a
# tmpfs). The test suite runs a short version of the same test (20 cycles).
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=100
seed=""
faults=""
while (($#)); do
    case "$1" in
        --cycles) cycles="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --faults) faults="$2"; shift 2 ;;
        *) echo "torture.sh: unknown argument $1 (--cycles N, --seed S, --faults LIST)" >&2; exit 2 ;;
    esac
done
./scripts/setup.sh
cargo build -p flowctl-cli --bins
export TORTURE_CYCLES="$cycles" TORTURE_SEED="$seed" TORTURE_FAULTS="$faults"
[ -n "$seed" ] || unset TORTURE_SEED
log=$(mktemp)
set +e
cargo test -p flowctl-cli --test torture -- torture_history --nocapture 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
line=$(grep -E '^cycles=' "$log" | tail -1 || true)
rm -f "$log"
echo "${line:-torture: no result line (see above)}"
exit "$rc"
