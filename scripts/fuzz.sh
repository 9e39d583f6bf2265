#!/usr/bin/env bash
# Runs the fuzz targets of crates/flowctl-fuzz with cargo-fuzz (libFuzzer), one after another,
# each for N seconds, starting from its seeds. Prints one line per target (executions, and
# whether it crashed) and a total line; exits non-zero if any target crashed.
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]     (default: 300 seconds, every target)
#
# Targets: spec state_codec command schema requests. Working corpora and crash artifacts go
# under target/fuzz/ (ignored by git); to keep an interesting input, minimize it
# (`cargo fuzz tmin`) and copy it into crates/flowctl-fuzz/seeds/<target>/, where
# `cargo test -p flowctl-fuzz` replays it on stable Rust.
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain
# accept them, so no nightly toolchain is needed. The targets are built without a sanitizer
# (the code under test forbids `unsafe`) but with debug assertions and overflow checks, as the
# tests build them. The fuzzer runs with a 2 MiB stack, the size of a tokio worker's, so that
# deep recursion that would overflow a server thread is found too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=300
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds)
            seconds=${2:?--seconds needs a number}
            shift 2
            ;;
        --seconds=*)
            seconds=${1#--seconds=}
            shift
            ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "fuzz.sh: unknown option $1" >&2
            exit 2
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done
all=(spec state_codec command schema requests)
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    if [[ ! " ${all[*]} " =~ " $t " ]]; then
        echo "fuzz.sh: unknown target $t (expected one of: ${all[*]})" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    nice -n 19 cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
fuzz_dir=$root/crates/flowctl-fuzz/fuzz
build_flags=(-s none --debug-assertions --codegen-units 16)
# Without a target name cargo-fuzz builds them all; with one, only that one.
if [[ ${#targets[@]} -eq ${#all[@]} ]]; then
    (cd "$fuzz_dir" && nice -n 19 cargo fuzz build "${build_flags[@]}" >&2)
else
    for t in "${targets[@]}"; do
        (cd "$fuzz_dir" && nice -n 19 cargo fuzz build "${build_flags[@]}" "$t" >&2)
    done
fi
bin_dir=$fuzz_dir/target/x86_64-unknown-linux-gnu/release

work=$root/target/fuzz
total=0
crashed_any=0
results=()
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    artifacts=$work/artifacts/$t
    log=$work/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    cp -n "$root/crates/flowctl-fuzz/seeds/$t/"* "$corpus/" 2>/dev/null || true
    dict=()
    if [[ -f $fuzz_dir/dict/$t.dict ]]; then
        dict=("-dict=$fuzz_dir/dict/$t.dict")
    fi
    echo "fuzzing $t for ${seconds}s (log: $log)" >&2
    start=$(date +%s)
    set +e
    (
        ulimit -s 2048
        exec nice -n 19 "$bin_dir/$t" "$corpus" \
            -max_total_time="$seconds" \
            -timeout=10 \
            -rss_limit_mb=2048 \
            -print_final_stats=1 \
            -artifact_prefix="$artifacts/" \
            "${dict[@]}"
    ) >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [[ -z $execs ]]; then
        # A crash ends the run before the final stats; take the last progress line.
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    execs=${execs:-0}
    total=$((total + execs))
    if [[ $rc -eq 0 ]]; then
        status="no crash"
    else
        crashed_any=1
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')
        status="CRASHED (exit $rc${artifact:+, input $artifact})"
    fi
    results+=("$(printf '%-12s %12s execs %6ss  %s' "$t" "$execs" "$elapsed" "$status")")
    echo "${results[-1]}" >&2
done

printf '%s\n' "${results[@]}"
printf '%-12s %12s execs\n' total "$total"
exit $crashed_any
