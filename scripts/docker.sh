#!/usr/bin/env bash
# Makes sure a Docker engine answers, for the Docker driver's tests and `flowctl dev up
# --driver docker`: `scripts/docker.sh start` starts Debian's dockerd (installed by
# scripts/setup.sh) when no daemon answers, and `scripts/docker.sh stop` stops it again only if
# this script started it.
#
# The engine it starts keeps to the host: no bridge network and no iptables rules
# (`--bridge=none --iptables=false`), so containers run with `--network host` (what flowctl's
# Docker driver uses by default) and the engine leaves the FORWARD policy alone, which the
# fault tests' own network namespaces rely on.
set -euo pipefail
state=${FLOWCTL_DOCKER_STATE:-/run/flowctl-docker}
sock=$state/docker.sock

answers() { docker -H "unix://$1" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case "${1:-start}" in
start)
    # A daemon that already answers (the system's, or ours from an earlier run) is used as is.
    if [ -S /var/run/docker.sock ] && answers /var/run/docker.sock; then
        echo "unix:///var/run/docker.sock"
        exit 0
    fi
    if [ -S "$sock" ] && answers "$sock"; then
        echo "unix://$sock"
        exit 0
    fi
    command -v dockerd >/dev/null || { echo "docker.sh: dockerd is missing: run scripts/setup.sh" >&2; exit 1; }
    mkdir -p "$state"
    dockerd --host "unix://$sock" --data-root "$state/data" --exec-root "$state/exec" \
        --pidfile "$state/dockerd.pid" --bridge=none --iptables=false --ip6tables=false \
        >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/started-by-us"
    for _ in $(seq 1 60); do
        if answers "$sock"; then
            echo "unix://$sock"
            exit 0
        fi
        if ! kill -0 "$(cat "$state/started-by-us")" 2>/dev/null; then break; fi
        sleep 0.5
    done
    echo "docker.sh: dockerd did not answer; its log ($state/dockerd.log) ends:" >&2
    tail -n 20 "$state/dockerd.log" >&2 || true
    exit 1
    ;;
stop)
    if [ -f "$state/started-by-us" ]; then
        pid=$(cat "$state/started-by-us")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        rm -f "$state/started-by-us"
    fi
    ;;
*)
    echo "usage: scripts/docker.sh [start|stop]" >&2
    exit 2
    ;;
esac
