#!/usr/bin/env bash
# The large cases of the reliability suite, run by hand (too slow for CI):
# a mailbox of 100,000 small messages and a single 200 MB message, each
# pulled into a fresh archive, then pulled again with nothing new. Prints
# one table: wall time, peak RSS, and the memory bound the performance issue
# sets (2 x the largest message + 32 MB).
#
#   scripts/bench-large.sh                 # N=100000 BIG_MB=200
#   N=20000 BIG_MB=50 scripts/bench-large.sh
#
# Everything lives under $WORK (default /tmp/imapbak-bench-large); the
# private Dovecot listens on 127.0.0.1 only and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${WORK:-/tmp/imapbak-bench-large}
N=${N:-100000}
BIG_MB=${BIG_MB:-200}
export IMAP_PORT=${IMAP_PORT:-14143} IMAPS_PORT=${IMAPS_PORT:-14993}

bash scripts/dovecot.sh install >/dev/null
[[ -x /usr/bin/time ]] || { apt-get install -y -qq time >/dev/null; }
echo "==> building imapbak (release)"
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/imapbak

rm -rf "$WORK"
mkdir -p "$WORK"
SRV=$WORK/srv
bash scripts/dovecot.sh start "$SRV" >/dev/null
trap 'bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null 2>&1 || true' EXIT

echo "==> seeding $N small messages and one ${BIG_MB} MB message (straight into the Maildir)"
python3 - "$SRV/mail/alice" "$N" "$BIG_MB" <<'PY'
import base64, os, random, sys
root, n, big_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def folder(name):
    d = os.path.join(root, name)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    open(os.path.join(d, "maildirfolder"), "a").close()
    return os.path.join(d, "cur")
rng = random.Random(1)
cur = folder(".Many")
for i in range(n):
    body = ("From: Bench <bench@example.invalid>\r\nTo: Archive <archive@example.invalid>\r\n"
            f"Subject: small message {i}\r\nMessage-ID: <small-{i}@bench.invalid>\r\n"
            "Date: Tue, 14 May 2024 09:30:00 +0200\r\n\r\n"
            + "".join(f"line {j} of message {i}, some filler text to compress\r\n" for j in range(20)))
    data = body.encode()
    with open(os.path.join(cur, f"{1600000000 + i}.M{i}P1.bench,S={len(data)}:2,S"), "wb") as f:
        f.write(data)
cur = folder(".Huge")
head = (b"From: Bench <bench@example.invalid>\r\nSubject: one huge message\r\n"
        b"Message-ID: <huge@bench.invalid>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n")
raw_len = big_mb * 1000 * 1000 * 57 // 78
chunks = [base64.b64encode(rng.randbytes(57)) + b"\r\n" for _ in range(raw_len // 57)]
data = head + b"".join(chunks)
with open(os.path.join(cur, f"1600000000.Mhuge.bench,S={len(data)}:2,S"), "wb") as f:
    f.write(data)
print(f"huge message: {len(data)} bytes")
PY
chown -R "$(stat -c %u "$SRV/mail/alice"):$(stat -c %g "$SRV/mail/alice")" "$SRV/mail/alice"
HUGE_BYTES=$(stat -c %s "$SRV"/mail/alice/.Huge/cur/*)

run() { # case-name include-glob
  local name=$1 glob=$2 cfg=$WORK/$1.toml
  cat > "$cfg" <<EOF
[accounts.bench]
host = "127.0.0.1"
port = $IMAPS_PORT
user = "alice"
password-env = "BENCH_PW"
ca-file = "$SRV/tls/cert.pem"
archive = "$WORK/archive-$name"
include = ["$glob"]
EOF
  chmod 600 "$cfg"
  local t=$WORK/$name.time
  BENCH_PW=alicepw /usr/bin/time -v "$BIN" --config "$cfg" pull --quiet 2> "$t"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$t")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$t")
  local t2=$WORK/$name.again
  BENCH_PW=alicepw /usr/bin/time -v "$BIN" --config "$cfg" pull --quiet 2> "$t2"
  local again
  again=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$t2")
  local files disk
  files=$(find "$WORK/archive-$name/mail" -path '*/cur/*' -type f | wc -l)
  disk=$(du -sk "$WORK/archive-$name/mail" | cut -f1)
  printf '| %-22s | %9s | %10s | %9s MB | %12s | %9s MB |\n' \
    "$name" "$files" "$wall" "$((rss / 1024))" "$again" "$((disk / 1024))"
}

echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, Dovecot $(dovecot --version | cut -d' ' -f1)"
echo "Memory bound for the huge case: 2 x $((HUGE_BYTES / 1000000)) MB + 32 MB = $((2 * HUGE_BYTES / 1000000 + 32)) MB"
echo
echo "| case                   |  messages | full pull  |  peak RSS    | no-change run | on disk      |"
echo "|------------------------|-----------|------------|--------------|---------------|--------------|"
run "$N small messages" "Many"
run "one ${BIG_MB} MB message" "Huge"
