#!/usr/bin/env bash
# Installs what building flowctl needs on a fresh Debian machine (run as root, or with sudo):
# clang/libclang (bindgen for RocksDB), Debian's librocksdb-dev (linked instead of compiling
# RocksDB from source), and protobuf-compiler (only the benchmark's etcd client needs protoc;
# flowctl's own protos are compiled by protox), and util-linux (setpriv, which `flowctl dev up`
# uses so that its nodes die with it).
set -euo pipefail

packages=(clang libclang-dev librocksdb-dev protobuf-compiler curl util-linux)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
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
