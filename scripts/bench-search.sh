#!/usr/bin/env bash
# Benchmark of `imapbak search` (and ls/verify) on an archive of N messages
# (default 100,000) in three mailboxes, built straight on disk the way a
# pull lays it out: one zstd frame per message (the zstd CLI, with its
# checksum), canonical file names, a journal with each message's SHA-256,
# status.json. No header index is written: the first search rebuilds it
# from the files (that figure is the "state/ deleted" cost), every later
# search reads it. Prints a table of wall times (median of RUNS).
#
#   bash scripts/bench-search.sh            # 100,000 messages
#   N=20000 RUNS=5 bash scripts/bench-search.sh
#   KEEP=1 bash scripts/bench-search.sh     # keep the archive (path printed)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
RUNS=${RUNS:-3}
command -v zstd >/dev/null || { echo "error: the zstd CLI is needed (apt-get install zstd)" >&2; exit 2; }

echo "==> cargo build --release" >&2
cargo build --release -q
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/imapbak

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imapbak-bench-search.XXXXXX")
if [[ -z "${KEEP:-}" ]]; then
  trap 'rm -rf "$WORK"' EXIT
else
  echo "archive kept in $WORK" >&2
fi

echo "==> generating $N messages in $WORK/archive" >&2
python3 - "$WORK/archive" "$N" <<'PY'
import base64, email.utils, hashlib, json, os, random, sys

root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(42)
uv = 1700000000
boxes = [("", "INBOX", 0.6), (".Archive.2020", "Archive/2020", 0.2), (".Sent", "Sent", 0.2)]
first = ["Ada", "Bert", "Carol", "Dieter", "Eve", "Jürgen", "Zoë", "Renée", "Łukasz", "Mia"]
last = ["Tester", "Müller", "Smith", "Nguyen", "García", "Kowalski", "Okafor"]
words = ("invoice report meeting minutes quarterly budget travel receipt order shipped "
         "newsletter update security alert password reset welcome offer holiday photos "
         "contract draft review agenda lunch project status weekly").split()
t0, t1 = 1262304000, 1735689600  # 2010 .. 2025

def enc(s):
    if s.isascii():
        return s
    return "=?UTF-8?B?" + base64.b64encode(s.encode()).decode() + "?="

def addr(i):
    f, l = rnd.choice(first), rnd.choice(last)
    local = (f + "." + l).lower().encode("ascii", "ignore").decode() or "x"
    return f"{enc(f + ' ' + l)} <{local}{i % 97}@example.invalid>"

os.umask(0o077)
counts = {}
for dir_, name, share in boxes:
    count = int(n * share) if dir_ else n - int(n * 0.2) * 2
    counts[dir_] = (name, count)
for dir_, (name, count) in counts.items():
    folder = os.path.join(root, "mail", dir_)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    if dir_:
        open(os.path.join(folder, "maildirfolder"), "w").close()
    state = os.path.join(root, "state", "mailboxes", dir_ or "INBOX")
    os.makedirs(state, exist_ok=True)
    journal = []
    key = "box%d" % len(os.listdir(os.path.join(root, "raw"))) if os.path.isdir(os.path.join(root, "raw")) else "box0"
    raw_dir = os.path.join(root, "raw", key)
    os.makedirs(raw_dir)
    for uid in range(1, count + 1):
        secs = rnd.randint(t0, t1)
        subj = " ".join(rnd.choice(words) for _ in range(rnd.randint(2, 7)))
        if rnd.random() < 0.2:
            subj = enc("Grüße: " + subj)
        date = email.utils.formatdate(secs)
        body_lines = [" ".join(rnd.choice(words) for _ in range(12)) for _ in range(rnd.randint(5, 60))]
        msg = ("Return-Path: <bounce@example.invalid>\r\n"
               f"From: {addr(uid)}\r\nTo: {addr(uid + 1)}\r\n"
               f"Subject: {subj}\r\nDate: {date}\r\n"
               f"Message-ID: <{uid}.{dir_ or 'inbox'}@bench.example.invalid>\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
               + "\r\n".join(body_lines) + "\r\n").encode()
        base = f"{secs}.V{uv}U{uid}.imapbak,S={len(msg)},W={len(msg)}"
        with open(os.path.join(raw_dir, f"{uid}"), "wb") as f:
            f.write(msg)
        journal.append((uid, len(msg), hashlib.sha256(msg).hexdigest(), base, secs))
    with open(os.path.join(state, "journal"), "w") as f:
        for uid, size, sha, base, _ in journal:
            f.write(f"{uv}\t{uid}\t{size}\t{sha}\t{base}\n")
    with open(os.path.join(state, "status.json"), "w") as f:
        json.dump({"mailbox": name, "uidvalidity": uv, "uidnext": count + 1,
                   "floor": count + 1, "last_pull": t1}, f)
    with open(os.path.join(root, "raw", key + ".names"), "w") as f:
        f.write(os.path.join(folder, "cur") + "\n")
        for uid, _, _, base, secs in journal:
            f.write(f"{uid}\t{base}:2,S\t{secs}\n")
PY

echo "==> compressing (zstd -3, one frame per file)" >&2
for names in "$WORK"/archive/raw/*.names; do
  raw="${names%.names}"
  (cd "$raw" && ls | xargs -n 2000 -P 2 zstd -q -3 --rm)
  python3 - "$raw" "$names" <<'PY'
import os, sys
raw, names = sys.argv[1:]
lines = open(names)
dest = next(lines).rstrip("\n")
for line in lines:
    uid, name, secs = line.rstrip("\n").split("\t")
    target = os.path.join(dest, name)
    os.rename(os.path.join(raw, uid + ".zst"), target)
    os.utime(target, (int(secs), int(secs)))
PY
done
rm -rf "$WORK/archive/raw"

cat >"$WORK/config.toml" <<EOF
[accounts.bench]
host = "127.0.0.1"
user = "bench"
password-env = "IMAPBAK_BENCH_UNUSED"
archive = "$WORK/archive"
EOF
chmod 600 "$WORK/config.toml"

echo "==> archive: $(du -sh "$WORK/archive" | cut -f1) on disk" >&2
# label, then the command's arguments; prints "label|median|hits"
measure() {
  local label=$1; shift
  python3 - "$RUNS" "$BIN" "$WORK/config.toml" "$label" "$@" <<'PY'
import statistics, subprocess, sys, time
runs, binary, config, label, args = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
times, lines = [], 0
for _ in range(runs):
    t = time.perf_counter()
    out = subprocess.run([binary, "--config", config, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    times.append(time.perf_counter() - t)
    lines = out.stdout.count(b"\n")
print(f"{label}|{statistics.median(times):.3f}|{lines}")
PY
}

rows=()
rows+=("$(RUNS=1 measure "search, no header index yet (rebuilt from the files)" search --subject invoice)")
rows+=("$(measure "search --subject invoice" search --subject invoice)")
rows+=("$(measure "search --subject <non-ASCII, in encoded words>" search --subject grüße)")
rows+=("$(measure "search --from <non-ASCII name>" search --from jürgen)")
rows+=("$(measure "search --since 2021-01-01 --before 2022-01-01" search --since 2021-01-01 --before 2022-01-01)")
rows+=("$(measure "search --mailbox 'Archive/*' --to smith" search --mailbox 'Archive/*' --to smith)")
rows+=("$(measure "search --subject no-such-thing (no hit)" search --subject no-such-thing)")
rows+=("$(measure "search --json --limit 10" search --json --limit 10)")
rows+=("$(measure "ls" ls)")
rows+=("$(RUNS=1 measure "verify (reads and hashes every file)" verify)")

echo
printf '%s messages, %s runs each (median), %s cores, %s\n' "$N" "$RUNS" "$(nproc)" "$($BIN --version)"
printf '%-58s %9s %9s\n' "command" "seconds" "lines"
printf '%-58s %9s %9s\n' "-------" "-------" "-----"
for r in "${rows[@]}"; do
  IFS='|' read -r label secs lines <<<"$r"
  printf '%-58s %9s %9s\n' "$label" "$secs" "$lines"
done
