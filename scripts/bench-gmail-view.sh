#!/usr/bin/env bash
# What counting each message once costs `ls`, `search` and `verify` on an
# archive pulled in Gmail mode: N messages (default 20,000) in All Mail,
# one zstd frame each, with journals and status as a pull writes them, and
# three label folders of hard links (INBOX 60 %, Work 30 %, Work/Projects
# 10 % of the messages). Each command runs twice: with the label record
# (Gmail view: each message once, with its labels) and without it (every
# folder on its own, as before). Prints a table of wall times (median of
# RUNS) and the lines each printed.
#
#   bash scripts/bench-gmail-view.sh            # 20,000 messages
#   N=100000 RUNS=5 bash scripts/bench-gmail-view.sh
#   BIN=target/debug/imapbak bash scripts/bench-gmail-view.sh   # no release build
#   KEEP=1 bash scripts/bench-gmail-view.sh     # keep the archive (path printed)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
RUNS=${RUNS:-3}
command -v zstd >/dev/null || { echo "error: the zstd CLI is needed (apt-get install zstd)" >&2; exit 2; }
if [[ -z "${BIN:-}" ]]; then
  echo "==> cargo build --release" >&2
  cargo build --release -q
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/imapbak
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imapbak-bench-gmail.XXXXXX")
if [[ -z "${KEEP:-}" ]]; then
  trap 'rm -rf "$WORK"' EXIT
else
  echo "archive kept in $WORK" >&2
fi

echo "==> generating $N messages in $WORK/archive" >&2
python3 - "$WORK/archive" "$N" <<'PY'
import email.utils, hashlib, json, os, random, subprocess, sys

root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(12)
uv = 11
all_dir = ".[Gmail].All Mail"
labels = [("", "\\Inbox", "INBOX", 0.6), (".Work", "Work", "Work", 0.3),
          (".Work.Projects", "Work/Projects", "Work/Projects", 0.1)]
words = "invoice report meeting budget travel receipt order update alert offer".split()
os.umask(0o077)

def folder(d, name):
    path = os.path.join(root, "mail", d)
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    if d:
        open(os.path.join(path, "maildirfolder"), "w").close()
    state = os.path.join(root, "state", "mailboxes", d or "INBOX")
    os.makedirs(state, exist_ok=True)
    return path, state

all_path, all_state = folder(all_dir, "[Gmail]/All Mail")
raw = os.path.join(root, "raw")
os.makedirs(raw)
entries = []
for uid in range(1, n + 1):
    secs = rnd.randint(1262304000, 1735689600)
    subj = " ".join(rnd.choice(words) for _ in range(rnd.randint(2, 6)))
    body = "\r\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(rnd.randint(5, 40)))
    msg = (f"From: a{uid % 97}@example.invalid\r\nTo: me@gmail.com\r\nSubject: {subj}\r\n"
           f"Date: {email.utils.formatdate(secs)}\r\nMessage-ID: <{uid}@bench.invalid>\r\n\r\n"
           f"{body}\r\n").encode()
    base = f"{secs}.V{uv}U{uid}.imapbak,S={len(msg)},W={len(msg)}"
    with open(os.path.join(raw, str(uid)), "wb") as f:
        f.write(msg)
    entries.append((uid, len(msg), hashlib.sha256(msg).hexdigest(), base, secs))
subprocess.run(f"cd '{raw}' && ls | xargs -n 2000 -P 2 zstd -q -3 --rm", shell=True, check=True)

def journal(state, name, rows):
    with open(os.path.join(state, "journal"), "w") as f:
        for uid, size, sha, base, _ in rows:
            f.write(f"{uv}\t{uid}\t{size}\t{sha}\t{base}\n")
    with open(os.path.join(state, "status.json"), "w") as f:
        json.dump({"mailbox": name, "uidvalidity": uv, "uidnext": n + 1,
                   "floor": n + 1, "last_pull": 1735689600}, f)

for uid, _, _, base, secs in entries:
    target = os.path.join(all_path, "cur", base + ":2,S")
    os.rename(os.path.join(raw, f"{uid}.zst"), target)
    os.utime(target, (secs, secs))
journal(all_state, "[Gmail]/All Mail", entries)
os.rmdir(raw)
layout = {}
for d, label, name, share in labels:
    path, state = folder(d, name)
    rows = [e for e in entries if rnd.random() < share]
    for e in rows:
        os.link(os.path.join(all_path, "cur", e[3] + ":2,S"), os.path.join(path, "cur", e[3] + ":2,S"))
    journal(state, name, rows)
    layout[label] = d
with open(os.path.join(all_path, "imapbak-gmail-labels.json"), "w") as f:
    json.dump(layout, f)
PY

cat >"$WORK/config.toml" <<EOF
[accounts.bench]
host = "127.0.0.1"
user = "bench"
password-env = "IMAPBAK_BENCH_UNUSED"
archive = "$WORK/archive"
EOF
chmod 600 "$WORK/config.toml"
RECORD="$WORK/archive/mail/.[Gmail].All Mail/imapbak-gmail-labels.json"

# label, then the command's arguments; prints "label|median|lines"
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

# The first search builds the header index; neither variant pays for it.
"$BIN" --config "$WORK/config.toml" search --subject warm-up >/dev/null 2>&1 || true
rows=()
for view in gmail plain; do
  if [[ $view == plain ]]; then mv "$RECORD" "$RECORD.off"; fi
  rows+=("$(measure "$view: ls" ls)")
  rows+=("$(measure "$view: search --subject invoice" search --subject invoice)")
  rows+=("$(measure "$view: search (every message)" search)")
  rows+=("$(measure "$view: export --mbox -" export --mbox -)")
  rows+=("$(measure "$view: verify" verify)")
done

echo
printf '%s messages in All Mail plus %s label links, %s runs each (median), %s cores, %s\n' \
  "$N" "$(find "$WORK/archive/mail" -path '*All Mail*' -prune -o -type f -name '*:2,*' -print | wc -l)" \
  "$RUNS" "$(nproc)" "$("$BIN" --version)"
printf '%-44s %9s %9s\n' "command" "seconds" "lines"
printf '%-44s %9s %9s\n' "-------" "-------" "-----"
for r in "${rows[@]}"; do
  IFS='|' read -r label secs lines <<<"$r"
  printf '%-44s %9s %9s\n' "$label" "$secs" "$lines"
done
