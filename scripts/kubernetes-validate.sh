#!/usr/bin/env bash
# Checks Kubernetes manifests offline against the API's JSON schemas, strictly: an unknown or
# misspelt field, a wrong type, a kind the schemas do not know or a file that is not YAML is
# an error. Uses the PyPI package kubernetes-validate (pinned below), which ships the schemas
# of every Kubernetes version it supports, so nothing is fetched while validating; it is
# installed once into a venv under target/tools/kubernetes-validate.
#
#   scripts/kubernetes-validate.sh [FILE...]     (default: deploy/kubernetes/*.yaml)
#   K8S_VERSION=1.37.0 scripts/kubernetes-validate.sh
#
# Prints one line per file, "ok" or "FAIL" (a failing file's problems follow it, indented),
# and exits non-zero when any file fails.
#
# Needs python3 with its venv module (Debian: python3 and python3-venv, which brings ensurepip
# and the pip wheel the venv gets its pip from; python3-pip is not needed), and PyPI the
# first time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

kv_version=1.37.0
# The Kubernetes version whose schemas the manifests must satisfy: one that kubernetes-validate
# ships (1.37.0 has 1.25 to 1.37; they are its kubernetes_validate/kubernetes-json-schema/).
k8s_version=${K8S_VERSION:-1.33.0}

venv=$root/target/tools/kubernetes-validate
kv=$venv/bin/kubernetes-validate
if [ ! -x "$kv" ] || [ "$("$kv" --version 2>/dev/null)" != "$kv_version" ]; then
    echo "kubernetes-validate: installing kubernetes-validate $kv_version into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || {
        echo "kubernetes-validate: python3 -m venv failed (Debian: install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$kv_version" || {
        rm -rf "$venv"
        echo "kubernetes-validate: pip install kubernetes-validate==$kv_version failed" >&2
        exit 1
    }
fi

files=("$@")
if ((${#files[@]} == 0)); then
    cd "$root"
    shopt -s nullglob
    files=(deploy/kubernetes/*.yaml)
    shopt -u nullglob
    if ((${#files[@]} == 0)); then
        echo "kubernetes-validate: no files given and none in deploy/kubernetes/" >&2
        exit 1
    fi
fi

failed=0
for f in "${files[@]}"; do
    if [ ! -f "$f" ]; then
        echo "FAIL $f: no such file"
        failed=1
        continue
    fi
    # Exit status: 1 for a resource that does not validate, 2 for one that cannot be
    # validated; a file that is not YAML ends it with a message. A kind (or apiVersion) it
    # has no schema for is only a WARN with status 0, so that counts as a failure here too.
    # (Its file arguments are argparse's REMAINDER, where "--" would be taken as a file.)
    arg=$f
    case $arg in -*) arg=./$arg ;; esac
    status=0
    out=$("$kv" --strict --kubernetes-version "$k8s_version" "$arg" 2>&1) || status=$?
    passed=$(grep -c '^INFO .* passed for resource ' <<<"$out" || true)
    problems=$(grep -v '^INFO .* passed for resource ' <<<"$out" | grep -v '^$' || true)
    if ((status == 0)) && [ -z "$problems" ] && ((passed > 0)); then
        echo "ok   $f ($passed resources, Kubernetes $k8s_version, strict)"
    else
        if ((passed == 0)) && [ -z "$problems" ]; then
            problems="no Kubernetes resources in the file"
        fi
        echo "FAIL $f (Kubernetes $k8s_version, strict)"
        sed 's/^/    /' <<<"$problems"
        failed=1
    fi
done
exit "$failed"
