#!/usr/bin/env bash
# The whole test suite: setup, formatting and lint checks, then every test (unit, storage
# conformance, data-driven, and the multi-node cluster and fault suites with real processes),
# the data-plane test against a real broker process, and the seed guide's commands as typed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The deployment tests run the example components as real child processes.
cargo build --workspace --bins
# The Docker tests (the engine client, the docker driver) run apart (below), where an engine
# can run.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast -E 'not binary(docker_engine) and not binary(docker_driver)'
else
    cargo test --workspace --no-fail-fast -- --skip docker_engine --skip images_run_as_containers \
        --skip a_node_without_allowed_images --skip the_stellar_example_runs_on_docker
fi
# The Docker engine: started here when none answers, stopped afterwards if started here. Where
# no engine can run (a chroot without cgroups, say), this says so and why; it is not a pass.
if docker_host=$(./scripts/docker.sh start); then
    DOCKER_HOST=$docker_host cargo test -p flowctl-server --test docker_engine
    # The example pipeline's images (flowctl/*:dev), for its test on the Docker driver.
    DOCKER_HOST=$docker_host ./scripts/build-images.sh
    DOCKER_HOST=$docker_host cargo test -p flowctl-cli --test docker_driver
    ./scripts/docker.sh stop
else
    echo "test.sh: NOT RUN: the Docker engine and docker driver tests (no Docker engine can run on this machine; see above)" >&2
fi
# Every shipped Kubernetes manifest, and the ones `flowctl render` writes for the example,
# against the Kubernetes API's schemas (offline, strict).
mkdir -p target/rendered
./target/debug/flowctl render --target kubernetes -f examples/stellar-pipeline-kubernetes.yaml \
    >target/rendered/stellar-pipeline-kubernetes.yaml
./scripts/kubernetes-validate.sh deploy/kubernetes/*.yaml target/rendered/stellar-pipeline-kubernetes.yaml
# The data-plane test again, against a real Kafka-protocol broker process (tansu).
./scripts/real-broker-test.sh
# The guide's commands, typed as written, against a broker on localhost:9092 (fixed ports,
# so after the parallel suite).
./scripts/guide-test.sh
