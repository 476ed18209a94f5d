#!/usr/bin/env bash
# imapbak against mbsync (isync), side by side on one private Dovecot and one
# corpus, alternating tools within each repetition; prints ONE table of medians
# with ratios (also written to $WORK/table.md).
#
#   scripts/bench.sh                  # defaults below; about 6-10 minutes on 2 cores
#   REPS=1 TOOLS=imapbak scripts/bench.sh
#   scripts/bench.sh --link 40ms:100mbit                 # over an emulated internet link
#   scripts/bench.sh --link 40ms:100mbit --messages 300  # a quick run
#
# --link RTT:RATE (e.g. 40ms:100mbit) runs every client through a userspace
# delay line on loopback ($RELAY, default ../shared/bench/wan/wanrelay.py: a
# one-way delay of RTT/2 each way, RATE per direction shared by all
# connections, one extra RTT per new connection): one relay per timed run,
# whose own counters (connections, bytes, turns = sequential round trips,
# its CPU seconds, its timer lateness) go into the table beside the results,
# with the link's limit (bytes / RATE) as a column. Link mode defaults to
# MESSAGES=2000 (176 MB with HUGE_MB=30, as in issue 14) and DOUBLE=0.
# --messages N sets MESSAGES.
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
#   4. (imapbak only, RESTORE=1) restore of the archive over the same path into
#      an empty account (dave), timed like the rest.
# Env: WORK (/tmp/imapbak-bench, or /tmp/imapbak-bench-link with --link), REPS (3), TOOLS ("imapbak mbsync mbsync_nocompress"),
#      MESSAGES (5000), MAILBOXES (10), HUGE_MB (30), SEED (1), DELTA (50), MANY (200),
#      MANY_MSGS (5), DOUBLE (1), JOBS (imapbak --jobs; default: imapbak's own),
#      IMAPBAK_ARGS (extra args for `imapbak pull`), ACCOUNT_EXTRA (extra TOML
#      lines for imapbak's account, e.g. 'compression-level = 6'),
#      GEN (path of gen.py), KEEP_SERVER=1 (leave Dovecot running), RELOAD=1
#      (regenerate the corpus).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
LINK=
while (($#)); do
  case $1 in
    --link) LINK=${2:?--link needs RTT:RATE, e.g. 40ms:100mbit}; shift 2 ;;
    --link=*) LINK=${1#--link=}; shift ;;
    --messages) MESSAGES=${2:?}; shift 2 ;;
    --messages=*) MESSAGES=${1#--messages=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n $LINK ]]; then
  [[ $LINK =~ ^([0-9.]+)ms:([0-9.]+)mbit$ ]] || { echo "--link wants RTTms:RATEmbit, e.g. 40ms:100mbit" >&2; exit 2; }
  LINK_RTT_MS=${BASH_REMATCH[1]} LINK_MBIT=${BASH_REMATCH[2]}
  LINK_DELAY_MS=$(awk "BEGIN{print $LINK_RTT_MS / 2}")
  MESSAGES=${MESSAGES:-2000}
  DOUBLE=${DOUBLE:-0}
  WORK=${WORK:-/tmp/imapbak-bench-link}
fi
RELAY=${RELAY:-$ROOT/../shared/bench/wan/wanrelay.py}
RESTORE=${RESTORE:-1}
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
[[ -z $LINK || -f $RELAY ]] || { echo "relay not found: $RELAY (set RELAY=path/to/wanrelay.py)" >&2; exit 1; }

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
IMAPBAK=${CARGO_TARGET_DIR:-$ROOT/target}/release/imapbak
FLOOR=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/fetch_floor

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
cleanup() {
  [[ -z ${RELAY_PID:-} ]] || kill -TERM "$RELAY_PID" 2>/dev/null || true
  [[ -n ${KEEP_SERVER:-} ]] || bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null 2>&1 || true
}
trap cleanup EXIT
DOVEADM=(doveadm -c "$SRV/dovecot.conf")
MAIL_UID=$(sed -n 's/^MAIL_UID=//p' "$SRV/instance.env")
MAIL_GID=$(sed -n 's/^MAIL_GID=//p' "$SRV/instance.env")
for u in carol dave; do
  if [[ ! -s $SRV/users/$u ]]; then
    echo "$u:{PLAIN}${u}pw:$MAIL_UID:$MAIL_GID::$SRV/mail/$u::" > "$SRV/users/$u"
    chmod 0644 "$SRV/users/$u"
  fi
done
# What the clients connect to: Dovecot's TLS port, or the relay in front of it.
CLIENT_PORT=$IMAPS_PORT
[[ -z $LINK ]] || CLIENT_PORT=$(free_port)

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
imapbak_account() { # name user archive
  cat <<EOF
[accounts.$1]
host = "127.0.0.1"
port = $CLIENT_PORT
user = "$2"
password = "$2pw"
ca-file = "$SRV/tls/cert.pem"
archive = "$3"
${ACCOUNT_EXTRA:-}
EOF
}
prepare_imapbak() {
  mkdir -p "$1"
  imapbak_account bench "$2" "$1/archive" > "$1/config.toml"
  # restore's: the same archive, and an empty account to restore into
  { cat "$1/config.toml"; echo; imapbak_account dst dave "$1/archive-dst"; } > "$1/restore.toml"
  chmod 600 "$1/config.toml" "$1/restore.toml"
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
Port $CLIENT_PORT
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
# Restore of the pulled archive into dave (emptied before each run), its own
# state directory each time.
run_imapbak_restore() {
  rm -rf "$1/restore-state"
  # shellcheck disable=SC2086
  XDG_STATE_HOME=$1/restore-state "$IMAPBAK" --config "$1/restore.toml" restore --account bench \
    --to dst --json ${JOBS:+--jobs $JOBS} > "$1/restore.json"
}
empty_dave() {
  bash "$ROOT/scripts/dovecot.sh" stop "$SRV" >/dev/null
  rm -rf "${SRV:?}/mail/dave"
  mkdir -p "$SRV/mail/dave" && chown "$MAIL_UID:$MAIL_GID" "$SRV/mail/dave"
  bash "$ROOT/scripts/dovecot.sh" start "$SRV" >/dev/null
}

# ------------------------------------------------------------------- relay ----
# relay_start STATS [fast]: a wanrelay in front of Dovecot on CLIENT_PORT; fast
# = no delay, no cap (for untimed set-up runs). relay_stop writes STATS.
RELAY_PID=
relay_start() {
  [[ -n $LINK ]] || return 0
  local stats=$1 ready=$WORK/relay.ready args
  if [[ ${2:-} == fast ]]; then args=(--delay-ms 0 --rate-mbit 0 --no-handshake)
  else args=(--delay-ms "$LINK_DELAY_MS" --rate-mbit "$LINK_MBIT"); fi
  rm -f "$ready" "$stats"
  python3 "$RELAY" --listen "$CLIENT_PORT" --target "$IMAPS_PORT" "${args[@]}" --stats "$stats" \
    --ready-file "$ready" 2>> "$WORK/relay.log" &
  RELAY_PID=$!
  for _ in $(seq 100); do [[ -s $ready ]] && return 0; sleep 0.05; done
  echo "relay did not start (see $WORK/relay.log)" >&2; exit 1
}
relay_stop() {
  [[ -n $RELAY_PID ]] || return 0
  kill -TERM "$RELAY_PID" 2>/dev/null || true
  wait "$RELAY_PID" 2>/dev/null || true
  RELAY_PID=
}

echo -e "tool\tphase\trep\twall_s\tcpu_s\tmaxrss_kb\trc\tdisk_kb\tconns\tturns\tdown_b\tup_b\trelay_cpu_s\tactive_s\tlate_p50_ms\tlate_p99_ms\tload1" > "$RES"
# The relay's counters as "conns turns down up cpu active p50 p99" (- without a relay).
relay_fields() {
  [[ -n $LINK && -s $1 ]] || { echo "- - - - - - - -"; return; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(*(d[k] for k in ("conns","turns","bytes_down","bytes_up","cpu_s","active_s","late_ms_p50","late_ms_p99")))' "$1"
}
timed() { # tool phase rep out [runner]
  local tool=$1 phase=$2 rep=$3 out=$4 run=${5:-$1} tf=$WORK/time.out st=$WORK/relay.json
  sync
  relay_start "$st"
  /usr/bin/time -f '%e %U %S %M %x' -o "$tf" bash -c "run_$run \"\$1\"" _ "$out" >> "$WORK/$tool.log" 2>&1 || true
  relay_stop
  local wall user sys rss rc disk conns turns down up rcpu active p50 p99 load
  read -r wall user sys rss rc < <(tail -1 "$tf")
  read -r conns turns down up rcpu active p50 p99 < <(relay_fields "$st")
  load=$(cut -d' ' -f1 /proc/loadavg)
  disk=$(du -sk "$out" | cut -f1)
  local cpu; cpu=$(awk "BEGIN{print $user + $sys}")
  echo -e "$tool\t$phase\t$rep\t$wall\t$cpu\t$rss\t$rc\t$disk\t$conns\t$turns\t$down\t$up\t$rcpu\t$active\t$p50\t$p99\t$load" >> "$RES"
  printf '  %-17s %-9s rep %d: %6.2f s wall, %5.2f s cpu, %4d MB rss, rc %s%s\n' \
    "$tool" "$phase" "$rep" "$wall" "$cpu" $((rss / 1024)) "$rc" \
    "$([[ -z $LINK ]] || echo ", relay: $conns conn, $turns turns, $((down / 1000000)) MB down, $((up / 1000000)) MB up")" >&2
}
untimed() { # tool out: one run through a relay without delay or cap
  relay_start "$WORK/relay-untimed.json" fast
  "run_$1" "$2" >> "$WORK/$1.log" 2>&1 || true
  relay_stop
}
# /usr/bin/time runs a program, not a shell function: export them for bash -c.
export -f run_imapbak run_mbsync run_mbsync_nocompress run_floor run_imapbak_restore
export IMAPBAK FLOOR JOBS IMAPBAK_ARGS

B=$WORK/runs
# Archives of earlier runs are moved aside, not deleted, until the end: on
# ext4 without a journal (this machine's root), a file created within 30 s
# of thousands of deletions in its block group makes the kernel skip every
# recently deleted inode (recently_deleted() in ext4_new_inode), which
# perf showed as a fifth of a full pull's CPU, for whichever tool ran next.
TRASH=$WORK/trash
if [[ -d $TRASH ]]; then
  say "removing the last run's archives, then 31 s for ext4 to forget them"
  rm -rf "$TRASH"; sleep 31
fi
mkdir -p "$TRASH"
discard() { [[ ! -e $1 ]] || mv "$1" "$TRASH/$(basename "$1").$RANDOM$RANDOM"; }
for rep in $(seq 1 "$REPS"); do
  for tool in $TOOLS; do
    expunge_delta
    out=$B/$tool
    discard "$out"
    "prepare_$tool" "$out" alice
    timed "$tool" full "$rep" "$out"
    timed "$tool" noop "$rep" "$out"
    add_delta
    timed "$tool" delta "$rep" "$out"
    expunge_delta
    # Many mailboxes: one untimed pull to fill the archive (first rep), then timed no-change runs.
    many=$B/$tool-many
    if [[ $rep == 1 ]]; then
      discard "$many"; "prepare_$tool" "$many" bob
      untimed "$tool" "$many"
    fi
    timed "$tool" noop-many "$rep" "$many"
    if [[ $tool == imapbak && $RESTORE == 1 ]]; then
      empty_dave
      timed imapbak restore "$rep" "$out" imapbak_restore
      RESTORED_B=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$out/restore.json" 2>/dev/null || echo 0)
    fi
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
rm -rf "$B/floor" "$TRASH"

# ------------------------------------------------------------------- table ----
python3 - "$RES" "$CORPUS_N" "$CORPUS_MB" "$LARGEST_MB" "$MANY" "$DELTA" "${N2:-}" "${MB2:-}" \
  "${LINK:-}" "${LINK_MBIT:-0}" "${LINK_RTT_MS:-0}" "${RESTORED_B:-0}" <<'PY' | tee "$WORK/table.md"
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
n, mb, largest, many, delta, n2, mb2, link, mbit, rtt, restored = sys.argv[2:13]
mbit, rtt, restored = float(mbit), float(rtt), int(restored)
rate = mbit * 1e6 / 8  # bytes/s
def vals(tool, phase, key):
    if key == "mb_per_s":  # bytes carried over the link / wall time
        return [float(r["down_b"]) / float(r["wall_s"]) / 1e6 for r in rows if r["tool"] == tool
                and r["phase"] == phase and r["down_b"] not in ("", "-") and float(r["wall_s"]) > 0]
    return [float(r[key]) for r in rows if r["tool"] == tool and r["phase"] == phase and r[key] not in ("", "-")]
def med(tool, phase, key):
    v = vals(tool, phase, key)
    return st.median(v) if v else None
def runs(tool, phase):
    return sum(1 for r in rows if r["tool"] == tool and r["phase"] == phase)
def bad(tool):
    return sorted({r["rc"] for r in rows if r["tool"] == tool and r["rc"] != "0"})
tools = [t for t in ["imapbak", "mbsync", "mbsync_nocompress"] if any(r["tool"] == t for r in rows)]
head = {"imapbak": "imapbak", "mbsync": "mbsync (default)", "mbsync_nocompress": "mbsync (COMPRESS off)"}
limit_full = float(mb) * 1e6 / rate if link else None
limit_restore = restored / rate if link and restored else None
M = 1 / 1e6
metrics = [
    ("full pull, wall s", "full", "wall_s", 1, "{:.2f}", limit_full),
    ("full pull, client CPU s", "full", "cpu_s", 1, "{:.2f}", None),
    ("full pull, peak RSS MB", "full", "maxrss_kb", 1 / 1024, "{:.0f}", None),
]
if link:
    metrics += [
        ("full pull, MB down the link", "full", "down_b", M, "{:.1f}", None),
        ("full pull, MB/s down the link (bytes / wall)", "full", "mb_per_s", 1, "{:.1f}", None),
        ("full pull, relay turns / connections", "full", ("turns", "conns"), 1, "{:.0f}", None),
    ]
metrics += [("no-change run, wall s", "noop", "wall_s", 1, "{:.2f}", None)]
if link:
    metrics += [("no-change run, relay turns / connections", "noop", ("turns", "conns"), 1, "{:.0f}", None)]
metrics += [(f"+{delta} messages, wall s", "delta", "wall_s", 1, "{:.2f}", None)]
if link:
    metrics += [(f"+{delta} messages, relay turns / connections", "delta", ("turns", "conns"), 1, "{:.0f}", None)]
metrics += [(f"no-change run, {many} mailboxes, wall s", "noop-many", "wall_s", 1, "{:.2f}", None)]
if link:
    metrics += [(f"no-change run, {many} mailboxes, relay turns / connections", "noop-many", ("turns", "conns"), 1, "{:.0f}", None)]
metrics += [("archive on disk, MB", "full", "disk_kb", 1 / 1024, "{:.0f}", None)]
if any(r["phase"] == "restore" for r in rows):
    metrics += [("restore of the archive, wall s", "restore", "wall_s", 1, "{:.2f}", limit_restore),
                ("restore, client CPU s", "restore", "cpu_s", 1, "{:.2f}", None),
                ("restore, peak RSS MB", "restore", "maxrss_kb", 1 / 1024, "{:.0f}", None)]
    if link:
        metrics += [("restore, MB up the link", "restore", "up_b", M, "{:.1f}", None),
                    ("restore, relay turns / connections", "restore", ("turns", "conns"), 1, "{:.0f}", None)]
cols = [head[t] for t in tools]
ratio = "imapbak / mbsync (COMPRESS off)" if "mbsync_nocompress" in tools and "imapbak" in tools else None
ratio2 = "imapbak / mbsync (default)" if "mbsync" in tools and "imapbak" in tools else None
hdr = ["metric (median of %d)" % max(runs(t, "full") for t in tools)] + cols + [c for c in (ratio, ratio2) if c]
if link:
    hdr += [f"link limit (bytes / {mbit:g} Mbit/s)", "imapbak / link limit"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
def cell(tool, phase, key, scale, fmt):
    if isinstance(key, tuple):
        a = [med(tool, phase, k) for k in key]
        return " / ".join(fmt.format(v) if v is not None else "-" for v in a) if any(v is not None for v in a) else "-"
    v = med(tool, phase, key)
    return fmt.format(v * scale) if v is not None else "-"
for label, phase, key, scale, fmt, lim in metrics:
    cells = [cell(t, phase, key, scale, fmt) for t in tools]
    def r(other):
        if isinstance(key, tuple):
            return "-"
        a, b = med("imapbak", phase, key), med(other, phase, key)
        return f"{a / b:.2f}" if a is not None and b else "-"
    if ratio: cells.append(r("mbsync_nocompress"))
    if ratio2: cells.append(r("mbsync"))
    if link:
        ib = med("imapbak", phase, key) if not isinstance(key, tuple) else None
        cells.append(f"{lim:.2f}" if lim else "")
        cells.append(f"{ib / lim:.2f}" if lim and ib else "")
    print(f"| {label} | " + " | ".join(cells) + " |")
fl = med("floor", "full", "wall_s")
ib = med("imapbak", "full", "wall_s")
print()
print(f"Corpus: {n} messages, {mb} MB, largest {largest} MiB; +{delta} = gen.py --mode imap --recent; "
      f"{many} mailboxes for the many-mailbox run.")
if link:
    def allv(key):
        return [float(r[key]) for r in rows if r[key] not in ("", "-")]
    p50, p99, rc = allv("late_p50_ms"), allv("late_p99_ms"), allv("relay_cpu_s")
    print(f"Link: {link} = one-way delay {rtt / 2:g} ms each way, {mbit:g} Mbit/s per direction "
          f"({rate / 1e6:.1f} MB/s), one extra RTT per new connection (wanrelay.py). Relay's own figures: "
          f"RTT {rtt:g} ms + its timer lateness (median {st.median(p50):.1f} ms, p99 up to {max(p99):.1f} ms per delivery); "
          f"relay CPU {sum(rc):.1f} s over {len(rc)} timed runs "
          f"(median {st.median(rc):.2f} s, full pulls {st.median([float(r['relay_cpu_s']) for r in rows if r['phase'] == 'full']):.2f} s).")
    if restored:
        print(f"Restore: {restored / 1e6:.1f} MB of messages appended into an empty account (dave).")
if fl is not None:
    print(f"Floor (examples/fetch_floor: same fetches, nothing written): {fl:.2f} s wall, "
          f"{med('floor','full','cpu_s'):.2f} s CPU, {med('floor','full','maxrss_kb')/1024:.0f} MB; "
          f"imapbak full pull = {ib / fl:.2f} x floor.")
rr = med("imapbak", "restore", "maxrss_kb")
if rr is not None:
    print(f"Restore peak RSS {rr/1024:.0f} MB (bound 2 x largest + 32 = {2*float(largest)+32:.0f} MB).")
x2 = med("imapbak", "full-x2", "maxrss_kb")
if x2 is not None:
    print(f"Twice the corpus ({n2} messages, {mb2} MB, same largest message): imapbak full pull "
          f"{med('imapbak','full-x2','wall_s'):.2f} s, peak RSS {x2/1024:.0f} MB "
          f"(budget 2 x largest + 32 = {2*float(largest)+32:.0f} MB).")
loads = [float(r["load1"]) for r in rows if r["load1"] not in ("", "-")]
print(f"Machine load (1-min average at each timed run): {min(loads):.2f}-{max(loads):.2f}, median {st.median(loads):.2f}.")
for t in tools + ["floor", "restore"]:
    if bad(t):
        print(f"WARNING: {t} exited with status {','.join(bad(t))} in some runs (see its log)")
PY
say "raw rows: $RES   logs: $WORK/<tool>.log   table: $WORK/table.md"
