#!/usr/bin/env bash
# A private, loopback-only Dovecot whose config, state, logs, pid, TLS cert and
# mail all live under DIR. Used by the test harness (tests/support/mod.rs) and
# by scripts/demo.sh; derived from the team's lab script (shared/bench/dovecot).
#
#   IMAP_PORT=N IMAPS_PORT=M scripts/dovecot.sh start DIR
#   scripts/dovecot.sh stop DIR
#   scripts/dovecot.sh install        # apt-get install what is missing
#
# start: idempotent (exits 0 if this DIR's Dovecot already answers).
#   IMAP_PORT   (required) plain IMAP + STARTTLS on 127.0.0.1
#   IMAPS_PORT  (required) implicit TLS on 127.0.0.1
#   IMAP_SEP    [/] hierarchy separator of the INBOX namespace ("/" or ".")
#   IMAP_PREFIX [] prefix of the INBOX namespace ("INBOX." as Courier and
#               Debian's Cyrus lay mail out; needs IMAP_SEP=.)
#   FOREGROUND  [] if 1, exec `dovecot -F` in the foreground (the Rust harness
#               runs it as a child that dies with the test process)
#   ZLIB_SAVE   [] if set (gz|bz2|xz|lz4|zstd), Dovecot compresses mail it saves
#   IMAP_CAPABILITY [] if set, the post-login capability list Dovecot
#               announces instead of its own (imap_capability; e.g. Microsoft
#               365's or Gmail's from shared/PROVIDERS.md). It only changes
#               what is announced: Dovecot still accepts every command.
#   OAUTH2_INTROSPECT_URL [] if set, also an `oauth2` passdb that checks
#               bearer tokens (SASL OAUTH2_MECHANISMS) by POSTing them to this
#               URL (RFC 7662 introspection; the test harness serves it, see
#               tests/support/oauth.rs); passwords then work only over PLAIN
#               and LOGIN, so a password sent as a token is refused
#   OAUTH2_MECHANISMS ["xoauth2 oauthbearer"] the SASL mechanisms offered for
#               tokens (e.g. just "xoauth2", as Microsoft's servers)
#   MASTER_USER [] if set (NAME:PASSWORD), also a master passdb (listed first)
#               holding that one admin: it logs in as any user either as
#               `user*NAME` (auth_master_user_separator = *) or over SASL
#               PLAIN with the user as authorization identity (RFC 4616)
#   MAIL_UID/MAIL_GID  owner of the mail [owner of DIR, or 5000:5000 if that is
#               root: Dovecot refuses uid 0 for mail access]
#
# Users: passwd-file DIR/passwd, written with alice/alicepw and bob/bobpw when
# it does not exist yet. Callers may append lines to it
#   name:{PLAIN}password:UID:GID::DIR/mail/name::[userdb_quota_rule=*:storage=NK]
# (UID/GID as in DIR/instance.env); Dovecot re-reads it when its size or mtime
# changes, but stats it at most once per second: a user appended in the same
# second as an earlier login stays unknown until the next second. A file
# DIR/users/NAME holding NAME's one line (same format) is read on NAME's first
# login instead, with no such delay (the test harness adds users this way).
# Mail: Maildir under DIR/mail/<user>. Mailbox names may contain '.'
# (listescape plugin). Quota plugin (no limit unless a userdb_quota_rule), zlib.
# TLS: self-signed end-entity cert DIR/tls/cert.pem (the client trusts it as
# its CA file), CN=localhost, SAN DNS:localhost, IP:127.0.0.1.
# Admin: doveadm -c DIR/dovecot.conf ...  (e.g. `save -u alice -m INBOX < msg`)
set -euo pipefail

usage() {
  echo "usage: IMAP_PORT=N IMAPS_PORT=M $0 start DIR | $0 stop DIR | $0 install" >&2
  exit 2
}

# Installs Dovecot (imapd), openssl, the zstd CLI and strace (the write
# protocol test traces a pull) when missing. Needs root (or passwordless
# sudo); never prompts.
install_deps() {
  local need=()
  command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd)
  command -v doveadm >/dev/null 2>&1 || need+=(dovecot-core)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v zstd >/dev/null 2>&1 || need+=(zstd)
  command -v strace >/dev/null 2>&1 || need+=(strace)
  if ((${#need[@]} == 0)); then
    return 0
  fi
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "missing ${need[*]} and not root; install them first" >&2
      return 1
    }
    sudo=(sudo -n)
  fi
  echo "==> installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's postinst from starting a system-wide Dovecot (no-op
  # where a policy-rc.d already exists, as in Debian containers).
  local policy=/usr/sbin/policy-rc.d made_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    made_policy=1
  fi
  local rc=0
  {
    "${sudo[@]}" apt-get update -qq &&
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${need[@]}" </dev/null
  } || rc=$?
  if [[ -n $made_policy ]]; then "${sudo[@]}" rm -f "$policy"; fi
  return $rc
}

# True when something accepts connections on 127.0.0.1:$1; with a second
# argument, also requires the IMAP greeting "* OK" on that (plain) port.
port_answers() {
  local port=$1 want_greeting=${2:-} line=
  (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    if [[ -n $want_greeting ]]; then
      IFS= read -r -t 2 line <&3 || exit 1
      [[ $line == "* OK"* ]] || exit 1
    fi
    exec 3>&-
  ) 2>/dev/null
}

ready() {
  port_answers "$IMAP_PORT" greeting && port_answers "$IMAPS_PORT"
}

is_running() {
  [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

print_info() {
  echo "dovecot running: pid $(cat "$PIDFILE" 2>/dev/null || echo '?')  dir $DIR"
  echo "  imap  (plain+STARTTLS): 127.0.0.1:$IMAP_PORT"
  echo "  imaps (implicit TLS)  : 127.0.0.1:$IMAPS_PORT"
  echo "  cert: $DIR/tls/cert.pem   log: $DIR/log/dovecot.log"
  echo "  users: $DIR/passwd, $DIR/users/<user>   mail: $DIR/mail/<user>"
  echo "  admin: doveadm -c $DIR/dovecot.conf ...   stop: $0 stop $DIR"
}

start() {
  : "${IMAP_PORT:?IMAP_PORT is required}" "${IMAPS_PORT:?IMAPS_PORT is required}"
  IMAP_SEP=${IMAP_SEP:-/}
  IMAP_PREFIX=${IMAP_PREFIX:-}
  local zlib_save=${ZLIB_SAVE:-}

  command -v dovecot >/dev/null || {
    echo "dovecot not installed (run: $0 install)" >&2
    exit 1
  }

  if is_running; then
    if [[ ${FOREGROUND:-} == 1 ]]; then
      echo "dovecot already running for $DIR (pid $(cat "$PIDFILE"))" >&2
      exit 1
    fi
    local i
    for i in $(seq 1 50); do
      if ready; then print_info; exit 0; fi
      sleep 0.1
    done
    echo "dovecot pid $(cat "$PIDFILE") alive but not answering" >&2
    exit 1
  fi

  mkdir -p "$DIR"/{run,state,log,tls,mail,users}
  # Dovecot's mail processes run as MAIL_UID and must traverse DIR (a
  # tempfile::TempDir is 0700).
  chmod 0755 "$DIR" "$DIR/run" "$DIR/state" "$DIR/mail" "$DIR/users"

  # --- uid/gid that owns the mail ---------------------------------------------
  if [[ -z ${MAIL_UID:-} ]]; then
    MAIL_UID=$(stat -c %u "$DIR")
    MAIL_GID=$(stat -c %g "$DIR")
    if [[ $MAIL_UID == 0 ]]; then MAIL_UID=5000 MAIL_GID=5000; fi
  fi
  MAIL_GID=${MAIL_GID:-$MAIL_UID}
  # Owned by the mail uid so Dovecot can create the home of an appended user.
  chown "$MAIL_UID:$MAIL_GID" "$DIR/mail"

  # --- self-signed certificate --------------------------------------------------
  # An end-entity certificate (CA:FALSE): `openssl req -x509` with the system
  # openssl.cnf marks it CA:TRUE, which rustls/webpki refuses as a server
  # certificate (CaUsedAsEndEntity) even when it is the trusted ca-file.
  if [[ ! -s $DIR/tls/cert.pem || ! -s $DIR/tls/key.pem ]]; then
    cat >"$DIR/tls/openssl.cnf" <<'CNF'
[req]
prompt = no
distinguished_name = dn
x509_extensions = server
[dn]
CN = localhost
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = DNS:localhost, IP:127.0.0.1
CNF
    if ! openssl req -x509 -config "$DIR/tls/openssl.cnf" -newkey rsa:2048 \
      -nodes -days 3650 -sha256 -keyout "$DIR/tls/key.pem" \
      -out "$DIR/tls/cert.pem" >"$DIR/tls/openssl.log" 2>&1; then
      cat "$DIR/tls/openssl.log" >&2
      exit 1
    fi
    chmod 0600 "$DIR/tls/key.pem"
    chmod 0644 "$DIR/tls/cert.pem"
  fi
  # Generating DH parameters takes long: use the package's, else cache one.
  local dh=/usr/share/dovecot/dh.pem
  if [[ ! -s $dh ]]; then
    dh="$DIR/tls/dh.pem"
    [[ -s $dh ]] || openssl dhparam -out "$dh" 2048 >/dev/null 2>&1
  fi

  # --- users ---------------------------------------------------------------------
  # user:password:uid:gid:(gecos):home:(shell):extra_fields
  if [[ ! -e $DIR/passwd ]]; then
    {
      echo "alice:{PLAIN}alicepw:$MAIL_UID:$MAIL_GID::$DIR/mail/alice::"
      echo "bob:{PLAIN}bobpw:$MAIL_UID:$MAIL_GID::$DIR/mail/bob::"
    } >"$DIR/passwd"
  fi
  chmod 0644 "$DIR/passwd"
  local u
  for u in alice bob; do
    mkdir -p "$DIR/mail/$u"
    chown "$MAIL_UID:$MAIL_GID" "$DIR/mail/$u"
  done
  cat >"$DIR/instance.env" <<EOF
IMAP_PORT=$IMAP_PORT
IMAPS_PORT=$IMAPS_PORT
IMAP_SEP=$IMAP_SEP
IMAP_PREFIX=$IMAP_PREFIX
MAIL_UID=$MAIL_UID
MAIL_GID=$MAIL_GID
EOF

  # --- OAuth2 (optional) -------------------------------------------------------------
  # Measured on Dovecot 2.3.19 (shared/DESIGN.md, "OAuth2 on Dovecot"): the
  # oauth2 passdb with force_introspection and POST mode, the password
  # passdbs restricted to plain/login.
  local mechanisms="plain login" pw_mechanisms="" oauth2_passdb=""
  if [[ -n ${OAUTH2_INTROSPECT_URL:-} ]]; then
    local token_mechs=${OAUTH2_MECHANISMS:-xoauth2 oauthbearer}
    mechanisms="plain login $token_mechs"
    pw_mechanisms="mechanisms = plain login"
    cat >"$DIR/oauth2.conf.ext" <<EOF
introspection_mode = post
introspection_url = $OAUTH2_INTROSPECT_URL
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
EOF
    oauth2_passdb="passdb {
  driver = oauth2
  mechanisms = $token_mechs
  args = $DIR/oauth2.conf.ext
}"
  fi

  # --- master user (optional) ------------------------------------------------------
  # Dovecot's master users: a passdb with `master = yes`, consulted first for
  # `user*master` logins and for PLAIN with an authorization identity; the
  # user itself then needs only a userdb entry.
  local master_passdb="" master_sep_line="#auth_master_user_separator ="
  if [[ -n ${MASTER_USER:-} ]]; then
    echo "${MASTER_USER%%:*}:{PLAIN}${MASTER_USER#*:}" >"$DIR/master-users"
    chmod 0644 "$DIR/master-users"
    master_sep_line="auth_master_user_separator = *"
    master_passdb="passdb {
  driver = passwd-file
  master = yes
  args = scheme=PLAIN $DIR/master-users
  $pw_mechanisms
}"
  fi

  # --- config ----------------------------------------------------------------------
  local caps_line="#imap_capability ="
  [[ -n ${IMAP_CAPABILITY:-} ]] && caps_line="imap_capability = $IMAP_CAPABILITY"
  local zlib_save_line="#zlib_save ="
  [[ -n $zlib_save ]] && zlib_save_line="zlib_save = $zlib_save"

  cat >"$CONF" <<EOF
# Generated by scripts/dovecot.sh -- overwritten on every start.
# Private loopback-only IMAP server. Dovecot $(dovecot --version)
base_dir = $DIR/run
state_dir = $DIR/state
instance_name = imapbak-test-$IMAP_PORT
log_path = $DIR/log/dovecot.log
info_log_path = $DIR/log/dovecot.log
debug_log_path = $DIR/log/dovecot.log
auth_verbose = yes
protocols = imap
listen = 127.0.0.1

ssl = yes
ssl_cert = <$DIR/tls/cert.pem
ssl_key = <$DIR/tls/key.pem
ssl_dh = <$dh
disable_plaintext_auth = no
auth_mechanisms = $mechanisms
$master_sep_line
# A wrong password answers at once (default: 2 s), so tests stay fast.
auth_failure_delay = 0

first_valid_uid = 100
first_valid_gid = 100
mail_location = maildir:$DIR/mail/%u
mail_plugins = \$mail_plugins quota zlib listescape
mail_max_userip_connections = 100
mailbox_list_index = yes

namespace inbox {
  inbox = yes
  separator = $IMAP_SEP
  prefix = $IMAP_PREFIX
  mailbox Drafts {
    special_use = \\Drafts
    auto = create
  }
  mailbox Sent {
    special_use = \\Sent
    auto = create
  }
  mailbox Trash {
    special_use = \\Trash
    auto = create
  }
  mailbox Junk {
    special_use = \\Junk
  }
}

# Users: DIR/passwd, then one file per user DIR/users/<name> (same format):
# Dovecot stats a passwd-file at most once per second, so a line appended to
# DIR/passwd can stay unknown for up to a second, while a new per-user file
# is read on its first lookup.
$master_passdb
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/passwd
  $pw_mechanisms
}
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $DIR/users/%u
  $pw_mechanisms
}
$oauth2_passdb
userdb {
  driver = passwd-file
  args = username_format=%u $DIR/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%u $DIR/users/%u
}

plugin {
  quota = maildir:User quota
  quota_exceeded_message = Quota exceeded (imapbak test server)
  # zlib reads gz/bz2/xz/zstd(/Dovecot-lz4) mail files whatever this says;
  # zlib_save only makes Dovecot compress mail it writes itself.
  $zlib_save_line
}

protocol imap {
  mail_plugins = \$mail_plugins imap_zlib imap_quota
  $caps_line
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
service imap {
  process_limit = 256
}
# No per-IP auth penalty (2 s doubling to 15 s after failed logins, applied
# even on loopback): the auth process cannot open this socket, which
# disables the penalty.
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF

  if ! dovecot -c "$CONF" -n >/dev/null 2>"$DIR/log/doveconf.err"; then
    cat "$DIR/log/doveconf.err" >&2
    exit 1
  fi

  if [[ ${FOREGROUND:-} == 1 ]]; then
    exec dovecot -F -c "$CONF"
  fi

  # detach from the caller's stdio (a pipe left open would hang `start | tail`)
  dovecot -c "$CONF" </dev/null >/dev/null 2>>"$DIR/log/dovecot.log"
  local i
  for i in $(seq 1 100); do
    if ready; then print_info; exit 0; fi
    sleep 0.1
  done
  echo "dovecot did not come up; last log lines:" >&2
  tail -20 "$DIR/log/dovecot.log" >&2 || true
  exit 1
}

stop() {
  if [[ ! -s $PIDFILE ]]; then
    echo "dovecot not running (no $PIDFILE)"
    exit 0
  fi
  local pid i
  pid=$(cat "$PIDFILE")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "dovecot not running (stale pid $pid)"
    rm -f "$PIDFILE"
    exit 0
  fi
  kill -TERM "$pid"
  for i in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "dovecot (pid $pid) stopped"
      exit 0
    fi
    sleep 0.1
  done
  echo "dovecot pid $pid still alive after 10 s" >&2
  exit 1
}

cmd=${1:-}
case $cmd in
  install)
    install_deps
    exit
    ;;
  start | stop) ;;
  *) usage ;;
esac
[[ -n ${2:-} ]] || usage
if [[ $cmd == start ]]; then mkdir -p "$2"; fi
if [[ ! -d $2 ]]; then
  echo "dovecot not running (no directory $2)"
  exit 0
fi
DIR=$(cd "$2" && pwd)
CONF="$DIR/dovecot.conf"
PIDFILE="$DIR/run/master.pid"
"$cmd"
