#!/usr/bin/env bash
# The tools that check contrib/ offline (tests/integration/contrib.rs):
# `systemd-analyze verify` for the systemd units (Debian package systemd)
# and `kubernetes-validate` (PyPI) for the Kubernetes manifests, installed
# when missing. kubernetes-validate goes into a virtualenv under target/
# (Debian 12's pip refuses system-wide installs, PEP 668); print the
# directory to add to PATH:
#   export PATH="$(bash scripts/contrib-tools.sh install):$PATH"
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

apt_install() {
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || { sudo_ apt-get update >&2 && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; }
}

case "${1:-install}" in
install)
    if ! command -v systemd-analyze >/dev/null; then
        apt_install systemd
    fi
    venv="${CARGO_TARGET_DIR:-target}/contrib-tools"
    if command -v kubernetes-validate >/dev/null; then
        dirname "$(command -v kubernetes-validate)"
        exit 0
    fi
    if [ ! -x "$venv/bin/kubernetes-validate" ]; then
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3 python3-venv
        fi
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet kubernetes-validate >&2
    fi
    (cd "$venv/bin" && pwd)
    ;;
*)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
