#!/usr/bin/env bash
# THE test command (README; .ci/run runs exactly this): installs what the
# tests need when missing (Dovecot for the integration tests' private server,
# the zstd CLI, unpacked Cyrus and Courier for the interop tests), then
# checks formatting, lints and runs every test target.
# Works as root with no stdin (CI=true); as another user it needs sudo -n for
# the install step, or the packages already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "install test dependencies if missing (dovecot-imapd, zstd, strace)"
bash scripts/dovecot.sh install
echo "dovecot $(dovecot --version), $(zstd --version | head -1)"

# Cyrus and Courier conflict with dovecot-imapd: fetched with apt-get
# download and unpacked into target/imap-servers, never installed.
step "fetch and unpack Cyrus IMAP and Courier-IMAP if missing (scripts/imapservers.sh)"
bash scripts/imapservers.sh install

step "install systemd-analyze and kubernetes-validate if missing (scripts/contrib-tools.sh)"
tools="$(bash scripts/contrib-tools.sh install)"
export PATH="$tools:$PATH"
echo "$(systemd-analyze --version | head -1), kubernetes-validate $(kubernetes-validate --version)"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
cargo test --all-targets

step "all checks passed"
