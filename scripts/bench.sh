#!/usr/bin/env bash
# imapbak against mbsync (isync), side by side on one private Dovecot and one
# corpus, alternating tools within each repetition; prints ONE table of medians
# with ratios (also written to $WORK/table.md).
#
#   scripts/bench.sh                  # defaults below; about 6-10 minutes on 2 cores
#   REPS=1 TOOLS=imapbak scripts/bench.sh
#
# What it does:
#   1. cargo build --release (imapbak and examples/fetch_floor); installs isync
#      (apt-get) and Dovecot (scripts/dovecot.sh install) when missing.
#   2. starts a private Dovecot (scripts/dovecot.sh) on two free loopback ports
#      under $WORK/srv, and loads the corpus with the team's generator
#      ($GEN, default ../shared/bench/corpus/gen.py; see its README):
#        alice: MESSAGES messages in MAILBOXES mailboxes, one HUGE_MB MiB message
#        bob:   MANY mailboxes of MANY_MSGS messages each (the many-mailbox no-change run)
#        carol: the alice corpus twice (2 x MESSAGES, seed+1 in a second half), for the
#               peak-RSS-does-not-grow check (imapbak only, one run; DOUBLE=0 skips it)
#      The corpus is kept between runs while its parameters stay the same.
#   3. per repetition, per tool (imapbak, mbsync default, mbsync with
#      COMPRESS=DEFLATE disabled): full pull into a fresh directory, a no-change
#      run, DELTA new messages APPENDed (gen.py --mode imap --recent) and a run
#      that picks them up, the delta expunged again; then a no-change run over
#      bob's MANY mailboxes; then the floor: examples/fetch_floor, which
#      fetches everything like imapbak but writes nothing.
#   Timing: /usr/bin/time (wall, user+sys CPU of the client, peak RSS of the
#   client); `sync` and a drop of the archive's dirty pages before each timed
#   run. Disk: `du -sk` of the archive (imapbak: mail/ + state/; mbsync: its
#   Maildir + sync state). Server and client share the machine's cores; the
#   server's files are warm in the page cache after the first run.
#
# Env: WORK (/tmp/imapbak-bench), REPS (3), TOOLS ("imapbak mbsync mbsync_nocompress"),
#      MESSAGES (5000), MAILBOXES (10), HUGE_MB (30), SEED (1), DELTA (50), MANY (200),
#      MANY_MSGS (5), DOUBLE (1), JOBS (imapbak --jobs; default: imapbak's own),
#      IMAPBAK_ARGS (extra args for `imapbak pull`), ACCOUNT_EXTRA (extra TOML
#      lines for imapbak's account, e.g. 'compression-level = 6'),
#      GEN (path of gen.py), KEEP_SERVER=1 (leave Dovecot running), RELOAD=1
#      (regenerate the corpus).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/imapbak-bench}
SRV=$WORK/srv
REPS=${REPS:-3}
TOOLS=${TOOLS:-"imapbak mbsync mbsync_nocompress"}
MESSAGES=${MESSAGES:-5000}
MAILBOXES=${MAILBOXES:-10}
HUGE_MB=${HUGE_MB:-30}
SEED=${SEED:-1}
DELTA=${DELTA:-50}
MANY=${MANY:-200}
MANY_MSGS=${MANY_MSGS:-5}
DOUBLE=${DOUBLE:-1}
GEN=${GEN:-$ROOT/../shared/bench/corpus/gen.py}
RES=$WORK/results.tsv
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
SRV=$WORK/srv

say() { printf '==> %s\n' "$*" >&2; }

[[ -f $GEN ]] || { echo "corpus generator not found: $GEN (set GEN=path/to/gen.py)" >&2; exit 1; }

# ------------------------------------------------------------ dependencies ----
bash "$ROOT/scripts/dovecot.sh" install
if ! command -v mbsync >/dev/null; then
  say "installing isync (apt-get)"
  sudo=(); [[ $(id -u) == 0 ]] || sudo=(sudo -n)
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq isync </dev/null
fi
[[ -x /usr/bin/time ]] || { echo "/usr/bin/time missing (apt-get install time)" >&2; exit 1; }
say "building imapbak (release)"
(cd "$ROOT" && cargo build --release -q && cargo build --release -q --example fetch_floor)
IMAPBAK=$ROOT/target/release/imapbak
FLOOR=$ROOT/target/release/examples/fetch_floor

# ------------------------------------------------------------------ server ----
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [[ -s $SRV/instance.env ]]; then
  # Same ports as last time, so an already running instance is reused.
  IMAP_PORT=$(sed -n 's/^IMAP_PORT=//p' "$SRV/instance.env")
  IMAPS_PORT=$(sed -n 's/^IMAPS_PORT=//p' "$SRV/instance.env")
else
  IMAP_PORT=$(free_port)
  IMAPS_PORT=$(free_port)
fi
export IMAP_PORT IMAPS_PORT
bash "$ROOT/scripts/dovecot.sh" start "$SRV" >/dev/null
cleanup() { [[ -n ${KEEP_SERVER:-} ]] || bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null 2>&1 || true; }
trap cleanup EXIT
DOVEADM=(doveadm -c "$SRV/dovecot.conf")
MAIL_UID=$(sed -n 's/^MAIL_UID=//p' "$SRV/instance.env")
MAIL_GID=$(sed -n 's/^MAIL_GID=//p' "$SRV/instance.env")
if [[ ! -s $SRV/users/carol ]]; then
  echo "carol:{PLAIN}carolpw:$MAIL_UID:$MAIL_GID::$SRV/mail/carol::" > "$SRV/users/carol"
  chmod 0644 "$SRV/users/carol"
fi

# ------------------------------------------------------------------ corpus ----
gen() { python3 "$GEN" --port "$IMAP_PORT" "$@"; }
load() { # user params-string gen-args...
  local user=$1 params=$2; shift 2
  if [[ -z ${RELOAD:-} && "$(cat "$WORK/$user.params" 2>/dev/null)" == "$params" ]]; then return; fi
  say "loading corpus for $user ($params)"
  bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null
  rm -rf "${SRV:?}/mail/$user"
  mkdir -p "$SRV/mail/$user" && chown "$MAIL_UID:$MAIL_GID" "$SRV/mail/$user"
  bash "$ROOT/scripts/dovecot.sh" start "$SRV" >/dev/null
  "$@"
  echo "$params" > "$WORK/$user.params"
}
load alice "m=$MESSAGES b=$MAILBOXES h=$HUGE_MB s=$SEED" \
  gen --server-dir "$SRV" --user alice --messages "$MESSAGES" --mailboxes "$MAILBOXES" \
  --huge-mb "$HUGE_MB" --seed "$SEED" --manifest "$WORK/alice.jsonl" -q
load bob "many=$MANY msgs=$MANY_MSGS" \
  gen --server-dir "$SRV" --user bob --messages $((MANY * MANY_MSGS)) --mailboxes "$MANY" \
  --mid-frac 0 --attach-frac 0 --seed 7 -q
load_carol() {
  gen --server-dir "$SRV" --user carol --messages "$MESSAGES" --mailboxes "$MAILBOXES" \
    --huge-mb "$HUGE_MB" --seed "$SEED" -q
  gen --server-dir "$SRV" --user carol --messages "$MESSAGES" --mailboxes "$MAILBOXES" \
    --seed $((SEED + 1)) -q
}
[[ $DOUBLE == 1 ]] && load carol "m=$MESSAGES b=$MAILBOXES h=$HUGE_MB s=$SEED x2" load_carol
corpus_stats() { # user -> "messages MB largest_MB"
  "${DOVEADM[@]}" fetch -u "$1" 'size.virtual' mailbox '*' 2>/dev/null |
    awk '/^size.virtual:/{n++; s+=$2; if ($2>m) m=$2} END{printf "%d %.1f %.1f\n", n, s/1e6, m/1048576}'
}
read -r CORPUS_N CORPUS_MB LARGEST_MB < <(corpus_stats alice)
say "corpus: $CORPUS_N messages, $CORPUS_MB MB, largest $LARGEST_MB MiB, in $MAILBOXES mailboxes (alice); $MANY mailboxes (bob)"

cutoff() { date -u -d "-5 days" +%Y-%m-%d; }   # delta mail has INTERNALDATE within 3 days
expunge_delta() {
  local n
  n=$("${DOVEADM[@]}" search -u alice mailbox '*' since "$(cutoff)" | wc -l)
  if ((n > 0)); then
    ((n <= DELTA)) || { echo "refusing to expunge $n (> DELTA) messages" >&2; exit 1; }
    "${DOVEADM[@]}" expunge -u alice mailbox '*' since "$(cutoff)"
  fi
}
add_delta() {
  gen --mode imap --user alice --messages "$DELTA" --mailboxes "$MAILBOXES" \
    --seed $((SEED + 1000)) --recent -q
}

# ------------------------------------------------------------------- tools ----
# prepare_<tool> OUT USER : write the config into OUT;  run_<tool> OUT : one run
prepare_imapbak() {
  mkdir -p "$1"
  cat > "$1/config.toml" <<EOF
[accounts.bench]
host = "127.0.0.1"
port = $IMAPS_PORT
user = "$2"
password = "$2pw"
ca-file = "$SRV/tls/cert.pem"
archive = "$1/archive"
${ACCOUNT_EXTRA:-}
EOF
  chmod 600 "$1/config.toml"
}
run_imapbak() {
  # shellcheck disable=SC2086
  "$IMAPBAK" --config "$1/config.toml" pull -q ${JOBS:+--jobs $JOBS} ${IMAPBAK_ARGS:-}
}
# The configurations of ../shared/bench/peers/conf/mbsyncrc{,-nocompress}.
prepare_mbsync_conf() { # OUT USER [extra IMAPAccount line]
  mkdir -p "$1/mail"
  cat > "$1/mbsyncrc" <<EOF
IMAPAccount bench
Host 127.0.0.1
Port $IMAPS_PORT
User $2
Pass $2pw
SSLType IMAPS
CertificateFile $SRV/tls/cert.pem
${3:-}

IMAPStore bench-far
Account bench

MaildirStore bench-near
Path $1/mail/
Inbox $1/mail/INBOX
SubFolders Verbatim

Channel bench
Far :bench-far:
Near :bench-near:
Patterns *
Create Near
Sync Pull
CopyArrivalDate yes
SyncState *
EOF
}
prepare_mbsync() { prepare_mbsync_conf "$@"; }
# isync 1.4 uses COMPRESS=DEFLATE whenever offered; on loopback the server's deflate is the bottleneck.
prepare_mbsync_nocompress() { prepare_mbsync_conf "$@" "DisableExtensions COMPRESS=DEFLATE"; }
run_mbsync() { mbsync -q -c "$1/mbsyncrc" -a; }
run_mbsync_nocompress() { run_mbsync "$@"; }
run_floor() { "$FLOOR" "$1/config.toml" bench ${JOBS:-}; }

echo -e "tool\tphase\trep\twall_s\tcpu_s\tmaxrss_kb\trc\tdisk_kb" > "$RES"
timed() { # tool phase rep out
  local tool=$1 phase=$2 rep=$3 out=$4 tf=$WORK/time.out
  sync
  /usr/bin/time -f '%e %U %S %M %x' -o "$tf" bash -c "run_$tool \"\$1\"" _ "$out" >> "$WORK/$tool.log" 2>&1 || true
  local wall user sys rss rc disk
  read -r wall user sys rss rc < <(tail -1 "$tf")
  disk=$(du -sk "$out" | cut -f1)
  local cpu; cpu=$(awk "BEGIN{print $user + $sys}")
  echo -e "$tool\t$phase\t$rep\t$wall\t$cpu\t$rss\t$rc\t$disk" >> "$RES"
  printf '  %-17s %-9s rep %d: %6.2f s wall, %5.2f s cpu, %4d MB rss, rc %s\n' \
    "$tool" "$phase" "$rep" "$wall" "$cpu" $((rss / 1024)) "$rc" >&2
}
# /usr/bin/time runs a program, not a shell function: export them for bash -c.
export -f run_imapbak run_mbsync run_mbsync_nocompress run_floor
export IMAPBAK FLOOR JOBS IMAPBAK_ARGS

B=$WORK/runs
for rep in $(seq 1 "$REPS"); do
  for tool in $TOOLS; do
    expunge_delta
    out=$B/$tool
    rm -rf "$out"
    "prepare_$tool" "$out" alice
    timed "$tool" full "$rep" "$out"
    timed "$tool" noop "$rep" "$out"
    add_delta
    timed "$tool" delta "$rep" "$out"
    expunge_delta
    # Many mailboxes: one untimed pull to fill the archive (first rep), then timed no-change runs.
    many=$B/$tool-many
    if [[ $rep == 1 ]]; then
      rm -rf "$many"; "prepare_$tool" "$many" bob
      "run_$tool" "$many" >> "$WORK/$tool.log" 2>&1 || true
    fi
    timed "$tool" noop-many "$rep" "$many"
  done
  if [[ " $TOOLS " == *" imapbak "* ]]; then
    prepare_imapbak "$B/floor" alice
    timed floor full "$rep" "$B/floor"
  fi
done
if [[ $DOUBLE == 1 && " $TOOLS " == *" imapbak "* ]]; then
  read -r N2 MB2 L2 < <(corpus_stats carol)
  say "double corpus (carol): $N2 messages, $MB2 MB, largest $L2 MiB"
  rm -rf "$B/double"; prepare_imapbak "$B/double" carol
  timed imapbak full-x2 1 "$B/double"
  rm -rf "$B/double"
fi
rm -rf "$B/floor"

# ------------------------------------------------------------------- table ----
python3 - "$RES" "$CORPUS_N" "$CORPUS_MB" "$LARGEST_MB" "$MANY" "$DELTA" "${N2:-}" "${MB2:-}" <<'PY' | tee "$WORK/table.md"
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
n, mb, largest, many, delta, n2, mb2 = sys.argv[2:9]
def med(tool, phase, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["phase"] == phase]
    return st.median(v) if v else None
def runs(tool, phase):
    return sum(1 for r in rows if r["tool"] == tool and r["phase"] == phase)
def bad(tool):
    return sorted({r["rc"] for r in rows if r["tool"] == tool and r["rc"] != "0"})
tools = [t for t in ["imapbak", "mbsync", "mbsync_nocompress"] if any(r["tool"] == t for r in rows)]
head = {"imapbak": "imapbak", "mbsync": "mbsync (default)", "mbsync_nocompress": "mbsync (COMPRESS off)"}
metrics = [
    ("full pull, wall s", "full", "wall_s", 1, "{:.2f}"),
    ("full pull, client CPU s", "full", "cpu_s", 1, "{:.2f}"),
    ("full pull, peak RSS MB", "full", "maxrss_kb", 1 / 1024, "{:.0f}"),
    ("no-change run, wall s", "noop", "wall_s", 1, "{:.2f}"),
    (f"+{delta} messages, wall s", "delta", "wall_s", 1, "{:.2f}"),
    (f"no-change run, {many} mailboxes, wall s", "noop-many", "wall_s", 1, "{:.2f}"),
    ("archive on disk, MB", "full", "disk_kb", 1 / 1024, "{:.0f}"),
]
cols = [head[t] for t in tools]
ratio = "imapbak / mbsync (COMPRESS off)" if "mbsync_nocompress" in tools and "imapbak" in tools else None
ratio2 = "imapbak / mbsync (default)" if "mbsync" in tools and "imapbak" in tools else None
hdr = ["metric (median of %d)" % max(runs(t, "full") for t in tools)] + cols + [c for c in (ratio, ratio2) if c]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for label, phase, key, scale, fmt in metrics:
    vals = [med(t, phase, key) for t in tools]
    cells = [fmt.format(v * scale) if v is not None else "-" for v in vals]
    def r(other):
        a, b = med("imapbak", phase, key), med(other, phase, key)
        return f"{a / b:.2f}" if a is not None and b else "-"
    if ratio: cells.append(r("mbsync_nocompress"))
    if ratio2: cells.append(r("mbsync"))
    print(f"| {label} | " + " | ".join(cells) + " |")
fl = med("floor", "full", "wall_s")
ib = med("imapbak", "full", "wall_s")
print()
print(f"Corpus: {n} messages, {mb} MB, largest {largest} MiB; +{delta} = gen.py --mode imap --recent; "
      f"{many} mailboxes for the many-mailbox run.")
if fl is not None:
    print(f"Floor (examples/fetch_floor: same fetches, nothing written): {fl:.2f} s wall, "
          f"{med('floor','full','cpu_s'):.2f} s CPU, {med('floor','full','maxrss_kb')/1024:.0f} MB; "
          f"imapbak full pull = {ib / fl:.2f} x floor.")
x2 = med("imapbak", "full-x2", "maxrss_kb")
if x2 is not None:
    print(f"Twice the corpus ({n2} messages, {mb2} MB, same largest message): imapbak full pull "
          f"{med('imapbak','full-x2','wall_s'):.2f} s, peak RSS {x2/1024:.0f} MB "
          f"(budget 2 x largest + 32 = {2*float(largest)+32:.0f} MB).")
for t in tools + ["floor"]:
    if bad(t):
        print(f"WARNING: {t} exited with status {','.join(bad(t))} in some runs (see its log)")
PY
say "raw rows: $RES   logs: $WORK/<tool>.log   table: $WORK/table.md"
