#!/usr/bin/env bash
# Organisations at scale (issue 16): one private Dovecot with a master user
# (scripts/dovecot.sh MASTER_USER), USERS users of one [accounts.staff]
# table, each with MAILBOXES mailboxes of one small message; prints ONE
# table (also written to $WORK/table.md).
#
#   scripts/bench-orgs.sh                 # 1,000 users x 10 mailboxes; ~5-10 min on 2 cores
#   USERS=200 scripts/bench-orgs.sh
#
# What it measures, with the release build and /usr/bin/time:
#   1. the first pull of every user (creates the archives; reported, not the point);
#   2. a no-change pull of all USERS in one process with --jobs JOBS: wall
#      time, time per user, peak RSS, and logins (imapbak's -v lines
#      "logged in as ... on behalf of"), median of REPS runs;
#   3. pull throughput on this machine: THRU_USERS users of the team's corpus
#      generator (../shared/bench/corpus/gen.py; THRU_MSGS messages in 4
#      mailboxes each, about 90 kB a message) pulled from scratch with --jobs JOBS;
#   4. from 3, the projected first backup of 5,000 users x 2 GB (10 TB):
#      one node, and 16 pods of the Indexed Job (contrib/kubernetes/), each
#      on a node like this one. The projection assumes the IMAP server and
#      the network keep up with 16 clients; in practice the server is the
#      limit, so read the 16-pod figure as a lower bound.
#
# Env: WORK (/tmp/imapbak-bench-orgs), USERS (1000), MAILBOXES (10), JOBS (8),
#      REPS (3), THRU_USERS (8), THRU_MSGS (500), GEN (path of gen.py),
#      IMAPBAK (binary; default: cargo build --release), KEEP_SERVER=1,
#      FRESH=0 (keep the archives of an earlier run: no first pull).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/imapbak-bench-orgs}
USERS=${USERS:-1000}
MAILBOXES=${MAILBOXES:-10}
JOBS=${JOBS:-8}
REPS=${REPS:-3}
THRU_USERS=${THRU_USERS:-8}
THRU_MSGS=${THRU_MSGS:-500}
GEN=${GEN:-$ROOT/../shared/bench/corpus/gen.py}
MASTER=backup-admin
MASTER_PW=bench-master-pw
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SRV=$WORK/srv

say() { printf '==> %s\n' "$*" >&2; }

[[ -f $GEN ]] || { echo "corpus generator not found: $GEN (set GEN=path/to/gen.py)" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time missing (apt-get install time)" >&2; exit 1; }
bash "$ROOT/scripts/dovecot.sh" install
if [[ -z ${IMAPBAK:-} ]]; then
  say "building imapbak (release)"
  (cd "$ROOT" && cargo build --release -q)
  IMAPBAK=${CARGO_TARGET_DIR:-$ROOT/target}/release/imapbak
fi

# ------------------------------------------------------------------ server ----
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [[ -s $SRV/instance.env ]]; then
  IMAP_PORT=$(sed -n 's/^IMAP_PORT=//p' "$SRV/instance.env")
  IMAPS_PORT=$(sed -n 's/^IMAPS_PORT=//p' "$SRV/instance.env")
else
  IMAP_PORT=$(free_port)
  IMAPS_PORT=$(free_port)
fi
export IMAP_PORT IMAPS_PORT MASTER_USER="$MASTER:$MASTER_PW"
bash "$ROOT/scripts/dovecot.sh" start "$SRV" >/dev/null
cleanup() { [[ -n ${KEEP_SERVER:-} ]] || bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null 2>&1 || true; }
trap cleanup EXIT
MAIL_UID=$(sed -n 's/^MAIL_UID=//p' "$SRV/instance.env")
MAIL_GID=$(sed -n 's/^MAIL_GID=//p' "$SRV/instance.env")

# ------------------------------------------------------------------ corpus ----
# USERS users u0000.. with MAILBOXES Maildir++ folders (INBOX, .Box1, ...)
# of one small message each, written straight into the server's Maildir.
if [[ "$(cat "$WORK/users.params" 2>/dev/null)" != "$USERS $MAILBOXES" ]]; then
  say "seeding $USERS users x $MAILBOXES mailboxes"
  rm -f "$WORK/users.params"
  python3 - "$SRV" "$USERS" "$MAILBOXES" "$MAIL_UID" "$MAIL_GID" <<'PY'
import os, sys
srv, users, boxes, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
for u in range(users):
    name = f"u{u:04d}"
    home = f"{srv}/mail/{name}"
    with open(f"{srv}/users/{name}", "w") as f:
        f.write(f"{name}:{{PLAIN}}pw-{name}:{uid}:{gid}::{home}::\n")
    os.chmod(f"{srv}/users/{name}", 0o644)
    for b in range(boxes):
        d = home if b == 0 else f"{home}/.Box{b}"
        for sub in ("cur", "new", "tmp"):
            os.makedirs(f"{d}/{sub}", exist_ok=True)
        if b:
            open(f"{d}/maildirfolder", "w").close()
        msg = (f"From: a@example.invalid\r\nTo: {name}@example.invalid\r\n"
               f"Subject: box {b} of {name}\r\nMessage-ID: <{name}-{b}@bench.invalid>\r\n"
               f"Date: Tue, 14 May 2024 09:30:00 +0200\r\n\r\nHello {name}, box {b}.\r\n").encode()
        p = f"{d}/cur/1700000000.M{b:06d}P1.bench,S={len(msg)}:2,"
        with open(p, "wb") as f:
            f.write(msg)
        os.utime(p, (1700000000, 1700000000))
    for dirpath, dirnames, filenames in os.walk(home):
        os.chown(dirpath, uid, gid)
        for n in filenames:
            os.chown(os.path.join(dirpath, n), uid, gid)
PY
  echo "$USERS $MAILBOXES" > "$WORK/users.params"
fi
for t in $(seq 0 $((THRU_USERS - 1))); do
  name=t$t
  if [[ ! -s $WORK/$name.params || "$(cat "$WORK/$name.params")" != "$THRU_MSGS" ]]; then
    say "generating the throughput corpus of $name ($THRU_MSGS messages)"
    rm -rf "${SRV:?}/mail/$name"
    mkdir -p "$SRV/mail/$name" && chown "$MAIL_UID:$MAIL_GID" "$SRV/mail/$name"
    echo "$name:{PLAIN}pw-$name:$MAIL_UID:$MAIL_GID::$SRV/mail/$name::" > "$SRV/users/$name"
    chmod 0644 "$SRV/users/$name"
    python3 "$GEN" --port "$IMAP_PORT" --server-dir "$SRV" --user "$name" --password "pw-$name" \
      --messages "$THRU_MSGS" --mailboxes 4 --huge-mb 0 --seed $((t + 11)) -q
    echo "$THRU_MSGS" > "$WORK/$name.params"
  fi
done

# ------------------------------------------------------------------ config ----
seq -f 'u%04g' 0 $((USERS - 1)) > "$WORK/users.txt"
seq -f 't%g' 0 $((THRU_USERS - 1)) > "$WORK/thru.txt"
table() { # name users-file archive-root
  cat <<EOF
[accounts.$1]
host = "127.0.0.1"
port = $IMAPS_PORT
ca-file = "$SRV/tls/cert.pem"
users-file = "$2"
admin-user = "$MASTER"
password-env = "BENCH_ADMIN_PW"
archive = "$3/{user}"
EOF
}
{ table staff "$WORK/users.txt" "$WORK/archives"; table thru "$WORK/thru.txt" "$WORK/thru-archives"; } > "$WORK/config.toml"
chmod 0600 "$WORK/config.toml"
export BENCH_ADMIN_PW=$MASTER_PW

# A timed run: prints "wall_s rss_kb logins exit".
timed() {
  local out=$WORK/run.err
  /usr/bin/time -f '%e %M' -o "$WORK/time.txt" \
    "$IMAPBAK" --config "$WORK/config.toml" -v pull --quiet "$@" 2>"$out" || true
  local logins
  logins=$(grep -c 'logged in as .* on behalf of' "$out" || true)
  read -r wall rss < "$WORK/time.txt"
  echo "$wall $rss $logins"
}
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

if [[ ${FRESH:-1} == 1 || ! -d $WORK/archives ]]; then
  say "first pull of $USERS users (creates $USERS archives)"
  rm -rf "$WORK/archives"
  read -r FIRST_WALL FIRST_RSS FIRST_LOGINS < <(timed --account staff --jobs "$JOBS")
else
  FIRST_WALL=nan   # FRESH=0: the archives of an earlier run are kept
fi
walls=() rsss=() logins=()
for r in $(seq 1 "$REPS"); do
  say "no-change pull $r/$REPS"
  read -r w m l < <(timed --account staff --jobs "$JOBS")
  grep -q '^error:' "$WORK/run.err" && { echo "the no-change run reported errors:" >&2; grep '^error:' "$WORK/run.err" | head >&2; exit 1; }
  walls+=("$w") rsss+=("$m") logins+=("$l")
done
NC_WALL=$(printf '%s\n' "${walls[@]}" | median)
NC_RSS=$(printf '%s\n' "${rsss[@]}" | median)
NC_LOGINS=$(printf '%s\n' "${logins[@]}" | median)

say "throughput: $THRU_USERS users from scratch"
rm -rf "$WORK/thru-archives"
read -r TH_WALL TH_RSS TH_LOGINS < <(timed --account thru --jobs "$JOBS")
TH_BYTES=$(for t in $(seq 0 $((THRU_USERS - 1))); do du -sb "$SRV/mail/t$t" | cut -f1; done | awk '{s+=$1} END{print s}')
load=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$WORK/table.md" <<PY
import sys
import json
users, boxes, jobs = $USERS, $MAILBOXES, $JOBS
# The mailboxes the server lists (the test Dovecot adds Drafts, Sent, Trash).
listed = len(json.load(open("$WORK/archives/u0000/state/last-pull.json"))["account"]["mailboxes"])
nc, rss, logins = float("$NC_WALL"), int("$NC_RSS"), int("$NC_LOGINS")
first = float("$FIRST_WALL")
tw, tb = float("$TH_WALL"), int("$TH_BYTES")
rate = tb / tw                      # bytes/s, one process, --jobs $JOBS
total = 5000 * 2e9                  # 5,000 users x 2 GB
one = total / rate
pods = one / 16
h = lambda s: f"{s/3600:.1f} h" if s >= 3600 else f"{s/60:.1f} min"
rows = [
  ("users x mailboxes", f"{users:,} x {listed} ({boxes} seeded with a message each, {listed - boxes} empty that Dovecot creates)"),
  ("first pull (creates the archives)", f"{first:.1f} s" if first == first else "not run (FRESH=0)"),
  (f"no-change pull, one process, --jobs {jobs}: wall (median of $REPS)", f"{nc:.1f} s"),
  ("per user", f"{nc/users*1000:.1f} ms"),
  ("peak RSS", f"{rss/1024:.0f} MiB"),
  ("logins", f"{logins:,}"),
  (f"pull throughput ($THRU_USERS users, {tb/1e6:.0f} MB of generated mail, from scratch)", f"{rate/1e6:.1f} MB/s ({tw:.1f} s)"),
  ("projected first backup, 5,000 users x 2 GB, one node", h(one)),
  ("projected first backup, 16 Indexed-Job pods (server keeps up)", h(pods)),
]
out = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
text = "\n".join(out) + f"\n\nLoad average at the end: $load (a shared, loaded 2-core machine: the server, the client and other jobs share the cores).\n"
open(sys.argv[1], "w").write(text)
print(text)
PY
