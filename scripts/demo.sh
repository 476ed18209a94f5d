#!/usr/bin/env bash
# The README's demo: on a fresh machine, back up a local demo IMAP server.
#
#   scripts/demo.sh
#
# Installs Dovecot and the zstd CLI if missing, builds imapbak (release),
# starts a private Dovecot in DEMO_DIR/srv (loopback, ports IMAP_PORT [11143]
# and IMAPS_PORT [11993]), gives its user alice 20 messages dated over
# eight years in INBOX, Archive/2024, Entwürfe and R&D (Dovecot adds its own
# special-use mailboxes; the count printed is the server's), then runs
# `imapbak pull` twice (the second run has nothing to do), shows the
# archive, ls, a search by date and an expunge dry run, and names three
# commands to try next. DEMO_DIR defaults to /tmp/imapbak-demo; each run
# starts it afresh. The server keeps running afterwards so you can try more:
#   target/release/imapbak --config /tmp/imapbak-demo/config.toml --help
#   scripts/dovecot.sh stop /tmp/imapbak-demo/srv
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO=${DEMO_DIR:-/tmp/imapbak-demo}
SRV="$DEMO/srv"
export IMAP_PORT=${IMAP_PORT:-11143}
export IMAPS_PORT=${IMAPS_PORT:-11993}
USER_NAME=alice
USER_PW=alicepw

say() { printf '\n==> %s\n' "$*"; }
run() {
  printf '+ %s\n' "$*"
  "$@"
}

say "installing dovecot-imapd and zstd if missing"
bash scripts/dovecot.sh install

say "building imapbak (release)"
run cargo build --release
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/imapbak"

say "starting a private Dovecot in $SRV (127.0.0.1:$IMAP_PORT plain, :$IMAPS_PORT TLS)"
bash scripts/dovecot.sh stop "$SRV" >/dev/null
rm -rf "$SRV" "$DEMO/archive" "$DEMO/seed" "$DEMO/config.toml" "$DEMO/password"
mkdir -p "$DEMO"
bash scripts/dovecot.sh start "$SRV"
doveadm() { command doveadm -c "$SRV/dovecot.conf" "$@"; }

# --- seed mail ------------------------------------------------------------------
say "seeding $USER_NAME: INBOX, Archive/2024, Entwürfe, R&D with 20 messages over eight years"
mkdir -p "$DEMO/seed"

# message FILE SUBJECT DATE [BODY-LINE...]: a small text/plain message, CRLF.
message() {
  local file=$1 subject=$2 date=$3 n
  shift 3
  n=$(basename "$file" .eml)
  {
    printf 'From: Demo Sender <sender@example.invalid>\r\n'
    printf 'To: Alice Demo <alice@example.invalid>\r\n'
    printf 'Subject: %s\r\n' "$subject"
    printf 'Date: %s\r\n' "$date"
    printf 'Message-ID: <demo-%s@imapbak.example.invalid>\r\n' "$n"
    printf 'MIME-Version: 1.0\r\n'
    printf 'Content-Type: text/plain; charset=utf-8\r\n'
    printf '\r\n'
    local line
    for line in "$@"; do printf '%s\r\n' "$line"; done
  } >"$file"
}

# save MAILBOX FILE: APPEND over IMAPS with the Date: header as INTERNALDATE
# (doveadm save would date every message today, and then ls, search --since
# and expunge --older-than would have nothing to show).
save() {
  DEMO_CA="$SRV/tls/cert.pem" DEMO_USER="$USER_NAME" DEMO_PW="$USER_PW" \
    python3 - "$1" "$2" <<'PY'
import email.utils, imaplib, os, ssl, sys
mailbox, path = sys.argv[1], sys.argv[2]
data = open(path, "rb").read()
date = None
for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
    if line.lower().startswith(b"date:"):
        date = email.utils.parsedate_to_datetime(line[5:].decode().strip())
# Modified UTF-7 of the demo's two non-ASCII names (RFC 3501 5.1.3).
encoded = {"Entwürfe": "Entw&APw-rfe", "R&D": "R&-D"}.get(mailbox, mailbox)
ctx = ssl.create_default_context(cafile=os.environ["DEMO_CA"])
ctx.check_hostname = False
imap = imaplib.IMAP4_SSL("127.0.0.1", int(os.environ["IMAPS_PORT"]), ssl_context=ctx)
imap.login(os.environ["DEMO_USER"], os.environ["DEMO_PW"])
when = imaplib.Time2Internaldate(date) if date else None
typ, answer = imap.append('"%s"' % encoded, None, when, data)
if typ != "OK":
    sys.exit("APPEND to %s failed: %r" % (mailbox, answer))
imap.logout()
PY
}

doveadm mailbox create -u "$USER_NAME" "Archive/2024" "Entwürfe" "R&D"

# One note a year, ending this year, so `expunge --older-than 1y` spares some.
year=$(date +%Y)
for i in $(seq 1 8); do
  message "$DEMO/seed/inbox-$i.eml" "Weekly note $i" \
    "$((i + 3)) Jan $((year - 8 + i)) 08:1$((i % 10)):00 +0100" \
    "Hello Alice," "" "this is weekly note number $i." "" "-- the demo"
  save INBOX "$DEMO/seed/inbox-$i.eml"
done
# An RFC 2047 subject and an 8-bit latin-1 body.
message "$DEMO/seed/inbox-9.eml" "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=" \
  "11 Mar 2025 10:00:00 +0100" "Encoded-word subject."
save INBOX "$DEMO/seed/inbox-9.eml"
{
  printf 'From: Demo Sender <sender@example.invalid>\r\nTo: alice@example.invalid\r\n'
  printf 'Subject: latin-1 body\r\nDate: 12 Mar 2025 10:00:00 +0100\r\n'
  printf 'Message-ID: <demo-latin1@imapbak.example.invalid>\r\nMIME-Version: 1.0\r\n'
  printf 'Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
  printf 'Gr\xfc\xdfe aus K\xf6ln.\r\n'
} >"$DEMO/seed/inbox-10.eml"
save INBOX "$DEMO/seed/inbox-10.eml"

for i in $(seq 1 5); do
  message "$DEMO/seed/archive-$i.eml" "Invoice 2024-0$i" \
    "$((i + 10)) Oct 2024 14:00:00 +0200" "Invoice number 2024-0$i is attached in spirit."
  save "Archive/2024" "$DEMO/seed/archive-$i.eml"
done
# One with an attachment.
{
  printf 'From: Demo Sender <sender@example.invalid>\r\nTo: alice@example.invalid\r\n'
  printf 'Subject: Year report with attachment\r\nDate: 31 Dec 2024 18:00:00 +0100\r\n'
  printf 'Message-ID: <demo-attachment@imapbak.example.invalid>\r\nMIME-Version: 1.0\r\n'
  printf 'Content-Type: multipart/mixed; boundary="demo-boundary"\r\n\r\n'
  printf -- '--demo-boundary\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee attachment.\r\n'
  printf -- '--demo-boundary\r\nContent-Type: application/octet-stream; name="report.bin"\r\n'
  printf 'Content-Transfer-Encoding: base64\r\n\r\n'
  head -c 4096 /dev/urandom | base64 -w 76 | sed 's/$/\r/'
  printf -- '--demo-boundary--\r\n'
} >"$DEMO/seed/archive-6.eml"
save "Archive/2024" "$DEMO/seed/archive-6.eml"

for i in 1 2; do
  message "$DEMO/seed/draft-$i.eml" "Entwurf $i: Einladung" \
    "$((i + 1)) Jan 2025 09:00:00 +0100" "Liebe Grüße, noch nicht fertig."
  save "Entwürfe" "$DEMO/seed/draft-$i.eml"
done
for i in 1 2; do
  message "$DEMO/seed/rd-$i.eml" "Prototype $i measurements" \
    "$((i + 4)) Apr $((2020 + i)) 16:30:00 +0200" "Measured values for prototype $i."
  save "R&D" "$DEMO/seed/rd-$i.eml"
done

doveadm flags add -u "$USER_NAME" '\Seen' mailbox INBOX uid 1:6
doveadm flags add -u "$USER_NAME" '\Flagged $Important' mailbox INBOX uid 2
doveadm flags add -u "$USER_NAME" '\Answered' mailbox INBOX uid 3
doveadm flags add -u "$USER_NAME" '\Seen' mailbox "Archive/2024" all
doveadm flags add -u "$USER_NAME" '\Draft' mailbox "Entwürfe" all
doveadm flags add -u "$USER_NAME" '\Seen \Flagged' mailbox "R&D" uid 1

# The selectable ones: what pull's summary counts (Archive itself is only a parent).
mailboxes=$(doveadm mailbox list -u "$USER_NAME" | while read -r m; do
  doveadm mailbox status -u "$USER_NAME" messages "$m" >/dev/null 2>&1 && echo "$m"
done | wc -l)
echo "server side: $mailboxes mailboxes (doveadm mailbox status -u $USER_NAME messages '*'):"
doveadm mailbox status -u "$USER_NAME" messages '*'

# --- configure and run imapbak ----------------------------------------------------
say "writing $DEMO/config.toml (mode 0600) for account \"demo\""
(
  umask 077
  printf '%s\n' "$USER_PW" >"$DEMO/password"
  cat >"$DEMO/config.toml" <<EOF
# imapbak demo configuration (written by scripts/demo.sh)
[accounts.demo]
host = "127.0.0.1"
port = $IMAPS_PORT
tls = "implicit"
user = "$USER_NAME"
password-command = "cat $DEMO/password"
ca-file = "$SRV/tls/cert.pem"
archive = "$DEMO/archive"
EOF
)
chmod 0600 "$DEMO/config.toml" "$DEMO/password"
cat "$DEMO/config.toml"

say "first pull: downloads everything"
run "$BIN" --config "$DEMO/config.toml" pull

say "second pull: nothing changed, nothing to download"
run "$BIN" --config "$DEMO/config.toml" pull

say "the archive: a Maildir++ tree (folder names in modified UTF-7), one zstd frame per message"
echo "+ find $DEMO/archive -maxdepth 2 -type d"
find "$DEMO/archive" -maxdepth 2 -type d | sort
echo "+ find $DEMO/archive/mail -type f -path '*/cur/*' | head"
find "$DEMO/archive/mail" -type f -path '*/cur/*' | sort | head -12 || true
count=$(find "$DEMO/archive/mail" -type f \( -path '*/cur/*' -o -path '*/new/*' \) | wc -l)
echo "... $count message files in all (the server has 20)"

first=$(find "$DEMO/archive/mail" -type f -path '*/cur/*' | sort | head -1 || true)
if [[ -n $first ]]; then
  say "one message, decompressed with the plain zstd CLI"
  echo "+ zstd -dc '$first' | head -20"
  { zstd -dc "$first" || true; } | head -20
fi

say "the archive offline: ls, a search by date, and what expunge would free"
run "$BIN" --config "$DEMO/config.toml" ls
run "$BIN" --config "$DEMO/config.toml" search --since 2024-01-01
run "$BIN" --config "$DEMO/config.toml" expunge --older-than 1y --dry-run

say "done"
C="$BIN --config $DEMO/config.toml"
echo "The demo server is still running. Three commands to try next:"
echo "  $C verify                    (is every archived message whole?)"
echo "  $C search --subject invoice   (then show one: $C show ID)"
echo "  $C export --mailbox 'Archive/*' --mbox /tmp/archive.mbox"
echo "Stop the server with:"
echo "  scripts/dovecot.sh stop $SRV"
