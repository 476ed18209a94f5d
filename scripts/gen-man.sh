#!/usr/bin/env bash
# Regenerates man/*.1 from the clap definitions (the test `man_pages_are_fresh`
# fails when they are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q
mkdir -p man
./target/debug/imapbak man > man/imapbak.1
for sub in check pull; do
  ./target/debug/imapbak man "$sub" > "man/imapbak-$sub.1"
done
echo "man pages written to man/"
