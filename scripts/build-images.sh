#!/usr/bin/env bash
# Builds the example components' images (and flowctl's) locally from the workspace binaries,
# for the Docker driver: flowctl/stellar-live-source-datalake:dev, flowctl/ttp-processor:dev,
# flowctl/consumer-app:dev and flowctl/flowctl:dev. No registry is needed or used.
#
# Each image is FROM scratch with only the binary, the shared libraries `ldd` lists for it and
# the dynamic loader, plus an empty /tmp.
#
#   scripts/build-images.sh [--tag TAG] [--release]    (default tag: dev; debug binaries)
#
# Uses $DOCKER_HOST, else starts an engine with scripts/docker.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=dev
profile=debug
cargo_flags=()
while (($#)); do
    case "$1" in
    --tag) tag=$2; shift 2 ;;
    --release) profile=release; cargo_flags+=(--release); shift ;;
    *) echo "usage: scripts/build-images.sh [--tag TAG] [--release]" >&2; exit 2 ;;
    esac
done
export DOCKER_HOST=${DOCKER_HOST:-$(./scripts/docker.sh start)}

cargo build "${cargo_flags[@]}" --bins -p flowctl-cli -p stellar-live-source-datalake \
    -p ttp-processor -p consumer_app

# image name → binary
images=(
    "stellar-live-source-datalake:stellar-live-source-datalake"
    "ttp-processor:ttp-processor"
    "consumer-app:consumer_app"
    "flowctl:flowctl"
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${images[@]}"; do
    name=${entry%%:*}
    bin=${entry#*:}
    src=target/$profile/$bin
    [ -x "$src" ] || { echo "build-images: $src is missing" >&2; exit 1; }
    ctx=$work/$name
    mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp"
    cp "$src" "$ctx/rootfs/usr/local/bin/$bin"
    # The libraries and the loader, at the paths the binary asks for.
    ldd "$src" | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L "$lib" "$ctx/rootfs$lib"
    done
    cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/$bin"]
DOCKERFILE
    DOCKER_BUILDKIT=0 docker build --quiet -t "flowctl/$name:$tag" "$ctx" >/dev/null
    echo "built flowctl/$name:$tag ($(docker image inspect --format '{{.Size}}' "flowctl/$name:$tag") bytes)"
done
