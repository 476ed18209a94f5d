#!/usr/bin/env bash
# Regenerates man/*.1 from the clap definitions (the test
# `man_pages_are_fresh` fails when they are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
mkdir -p man
rm -f man/*.1
"${CARGO_TARGET_DIR:-target}/debug/imapbak" man --write-all man
echo "man pages written to man/"
