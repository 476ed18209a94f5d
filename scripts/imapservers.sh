#!/usr/bin/env bash
# Private, loopback-only Cyrus IMAP 3.6 and Courier-IMAP 5 for the
# integration tests (tests/support/mod.rs: `cyrus()`, `courier()`), beside
# the private Dovecot of scripts/dovecot.sh (same model: config, state, TLS
# cert, users and mail all under DIR; free ports chosen by the caller).
#
#   scripts/imapservers.sh install                 # fetch + unpack both
#   IMAP_PORT=N IMAPS_PORT=M scripts/imapservers.sh start cyrus|courier DIR
#   scripts/imapservers.sh adduser cyrus|courier DIR NAME PASSWORD
#   scripts/imapservers.sh stop DIR
#
# Why not apt-get install: cyrus-imapd, courier-imap and dovecot-imapd all
# provide `imap-server` and conflict with each other (apt-cache depends
# cyrus-imapd: "Conflicts: <imap-server> courier-imap dovecot-imapd"), and
# the tests need Dovecot installed. So `install` fetches the Debian 12
# packages with `apt-get download` and unpacks them with `dpkg-deb -x` into
# a cache directory, never running their maintainer scripts:
#
#   $IMAPBAK_SERVERS_CACHE [<repo>/target/imap-servers]
#     debs/            the downloaded .deb files
#     cyrus/           cyrus-imapd, cyrus-common, sasl2-bin, libsasl2-modules*
#                      and the shared libraries the host lacks (LD_LIBRARY_PATH)
#     courier/         courier-imap, courier-base, courier-authlib*, their libs
#     .complete-*      stamp: the unpacked tree passed its ldd check
#
# start: FOREGROUND=1 runs the server in the foreground (the Rust harness
# runs it as a child that dies with the test process); otherwise it goes to
# the background with a pid file DIR/run/server.pid. Either way `start`
# returns/serves once both ports answer. Users are added with `adduser`
# (both servers check real passwords; a wrong one is refused).
#
# TLS: self-signed end-entity cert DIR/tls/cert.pem, CN=localhost, SAN
# DNS:localhost, IP:127.0.0.1 (made exactly as scripts/dovecot.sh makes it).
#
# Facts learned while building this (with where they come from) are in the
# comments beside the code that depends on them.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${IMAPBAK_SERVERS_CACHE:-$REPO/target/imap-servers}
# Bump when the package lists below change, so old caches are redone.
CACHE_VERSION=1

# The uid the mail belongs to. Cyrus runs its services as `nobody` (it
# refuses root: "must run as the Cyrus user", cyrus-master(8) / imapd.conf(5)
# `cyrus_user`); Courier's imapd runs as the uid userdb gives the user.
NOBODY_UID=$(id -u nobody 2>/dev/null || echo 65534)
NOBODY_GID=$(id -g nobody 2>/dev/null || echo 65534)
MAIL_UID=${MAIL_UID:-5000}
MAIL_GID=${MAIL_GID:-5000}

usage() {
  cat >&2 <<EOF
usage: $0 install [cyrus|courier]
       IMAP_PORT=N IMAPS_PORT=M $0 start cyrus|courier DIR
       $0 adduser cyrus|courier DIR NAME PASSWORD
       $0 stop DIR
EOF
  exit 2
}

# --- install -----------------------------------------------------------------

# The packages whose files we run. Their library dependencies that the host
# lacks are added by `missing_lib_deps` (direct Depends only: a recursive
# closure drags in an MTA, perl modules and ~40 packages).
CYRUS_PKGS=(cyrus-imapd cyrus-common sasl2-bin libsasl2-modules libsasl2-modules-db)
COURIER_PKGS=(courier-imap courier-base courier-authlib courier-authdaemon
  courier-authlib-userdb)
# Direct dependencies we never load: libclamav12 is only for cyr_virusscan,
# libzephyr4 only for notifyd (checked with ldd on every binary of
# cyrus-common); both are large and pull in more.
SKIP_DEPS=" libclamav12 libzephyr4 libzephyr4-krb5 "

# The binaries the harness runs, checked with ldd after unpacking.
CYRUS_BINS=(usr/lib/cyrus/bin/master usr/lib/cyrus/bin/imapd
  usr/lib/cyrus/bin/ctl_cyrusdb usr/sbin/saslpasswd2)
COURIER_BINS=(usr/sbin/couriertcpd usr/bin/couriertls usr/bin/imapd
  usr/lib/courier/courier/imaplogin usr/lib/courier/courier-authlib/authdaemond
  usr/lib/courier/courier-authlib/makedatprog)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing_lib_deps() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null |
    sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \(lib[^ <>]*\)$/\2/p' | sort -u |
    while read -r p; do
      [[ $SKIP_DEPS == *" $p "* ]] && continue
      installed "$p" || echo "$p"
    done
}

libpath_of() {
  local root=$1
  echo "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu:$root/usr/lib"
}

# apt-get download [pkgs...] into $CACHE/debs, running `apt-get update` once
# if the lists are missing or stale (a fresh machine has none).
download() {
  mkdir -p "$CACHE/debs"
  local -a opts=(-qq -o APT::Sandbox::User=root)
  if ! (cd "$CACHE/debs" && apt-get download "${opts[@]}" "$@" </dev/null); then
    echo "==> apt-get update (package lists missing or stale)" >&2
    apt-get update -qq </dev/null
    (cd "$CACHE/debs" && apt-get download "${opts[@]}" "$@" </dev/null)
  fi
}

install_one() {
  local name=$1
  shift
  local -a pkgs=("$@") bins
  local stamp="$CACHE/.complete-$name-v$CACHE_VERSION" root="$CACHE/$name"
  [[ -e $stamp ]] && return 0
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
    echo "need apt-get and dpkg-deb (Debian 12) to fetch $name" >&2
    return 1
  }
  # apt-cache knows nothing before the first `apt-get update`.
  if ! apt-cache show "${pkgs[0]}" >/dev/null 2>&1; then apt-get update -qq </dev/null; fi
  local -a deps
  mapfile -t deps < <(missing_lib_deps "${pkgs[@]}")
  # courier-base: libcourier-unicode4 etc.; cyrus-common: libical3, libxapian30, libpcre3
  echo "==> fetching $name: ${pkgs[*]} ${deps[*]}" >&2
  rm -rf "$root" && mkdir -p "$root"
  download "${pkgs[@]}" "${deps[@]}"
  local p f
  for p in "${pkgs[@]}" "${deps[@]}"; do
    f=$(ls -t "$CACHE/debs/${p}_"*.deb | head -1)
    dpkg-deb -x "$f" "$root"
  done
  if [[ $name == cyrus ]]; then bins=("${CYRUS_BINS[@]}"); else bins=("${COURIER_BINS[@]}"); fi
  local missing=
  for f in "${bins[@]}"; do
    [[ -x $root/$f ]] || { missing+=" $f(absent)"; continue; }
    missing+=$(LD_LIBRARY_PATH=$(libpath_of "$root") ldd "$root/$f" | awk -v f="$f" '/not found/ {printf " %s:%s", f, $1}')
  done
  if [[ -n $missing ]]; then
    echo "unpacked $name is incomplete:$missing" >&2
    return 1
  fi
  touch "$stamp"
}

install() {
  local which=${1:-all}
  command -v openssl >/dev/null || {
    echo "openssl missing (scripts/dovecot.sh install installs it)" >&2
    return 1
  }
  if [[ $which == all || $which == cyrus ]]; then install_one cyrus "${CYRUS_PKGS[@]}"; fi
  if [[ $which == all || $which == courier ]]; then install_one courier "${COURIER_PKGS[@]}"; fi
}

need_installed() {
  [[ -e $CACHE/.complete-$1-v$CACHE_VERSION ]] || {
    echo "$1 is not unpacked in $CACHE (run: $0 install)" >&2
    exit 1
  }
}

# --- shared by both servers ---------------------------------------------------

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

# The certificate exactly as scripts/dovecot.sh makes it: an end-entity
# certificate (CA:FALSE), which rustls accepts as a server certificate even
# when it is also the trusted ca-file.
make_cert() {
  local tls=$DIR/tls
  mkdir -p "$tls"
  [[ -s $tls/cert.pem && -s $tls/key.pem ]] && return 0
  cat >"$tls/openssl.cnf" <<'CNF'
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
  if ! openssl req -x509 -config "$tls/openssl.cnf" -newkey rsa:2048 \
    -nodes -days 3650 -sha256 -keyout "$tls/key.pem" \
    -out "$tls/cert.pem" >"$tls/openssl.log" 2>&1; then
    cat "$tls/openssl.log" >&2
    exit 1
  fi
  chmod 0600 "$tls/key.pem"
  chmod 0644 "$tls/cert.pem"
}

wait_ready() {
  local pid=$1 i
  for i in $(seq 1 200); do
    if port_answers "$IMAP_PORT" greeting && port_answers "$IMAPS_PORT"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

write_env() {
  cat >"$DIR/instance.env" <<EOF
SERVER=$1
IMAP_PORT=$IMAP_PORT
IMAPS_PORT=$IMAPS_PORT
MAIL_UID=$2
MAIL_GID=$3
EOF
}

# Runs "$@" (the server in the foreground) either exec'd (FOREGROUND=1) or
# in the background with DIR/run/server.pid, then waits until it answers.
launch() {
  if [[ ${FOREGROUND:-} == 1 ]]; then
    echo $$ >"$DIR/run/server.pid"
    exec "$@"
  fi
  "$@" </dev/null >>"$DIR/log/server.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DIR/run/server.pid"
  if wait_ready "$pid"; then
    echo "$SERVER running: pid $pid  imap 127.0.0.1:$IMAP_PORT  imaps 127.0.0.1:$IMAPS_PORT  dir $DIR"
    echo "  cert: $DIR/tls/cert.pem  log: $DIR/log/server.log  stop: $0 stop $DIR"
    return 0
  fi
  echo "$SERVER did not come up; last log lines:" >&2
  tail -20 "$DIR/log/server.log" >&2 || true
  kill "$pid" 2>/dev/null || true
  exit 1
}

# --- Cyrus ----------------------------------------------------------------------
#
# master(8) runs from our own imapd.conf and cyrus.conf (cyrus-master(8):
# `-C alternate imapd.conf`, `-M alternate cyrus.conf`, `-p pidfile`, `-D`
# keeps it in the foreground with stdio open). Every path it would take from
# the compiled-in defaults (/var/lib/cyrus, /run/cyrus, /var/spool/cyrus) is
# set in imapd.conf to a directory under DIR. Services are given absolute
# paths into the cache (cyrus.conf(5): a relative cmd is looked up in the
# compiled-in /usr/lib/cyrus/bin). The namespace is Debian's default
# (etc/imapd.conf of cyrus-common: `altnamespace: no`, `unixhierarchysep:
# no`): personal folders under `INBOX.`, delimiter `.`.
#
# Authentication: real passwords, SASL auxprop `sasldb` (imapd.conf(5):
# `sasl_pwcheck_method: auxprop`; any SASL option is set by prefixing it
# with `sasl_`, so `sasl_sasldb_path` points at our own sasldb2, written by
# the unpacked saslpasswd2(8) with -f). The sasldb key is user@realm; imapd
# uses its `servername` as the realm, hence `saslpasswd2 -u localhost`.

start_cyrus() {
  need_installed cyrus
  local root=$CACHE/cyrus bin=$CACHE/cyrus/usr/lib/cyrus/bin
  mkdir -p "$DIR"/{run,log,tls,conf,spool}
  mkdir -p "$DIR"/conf/{db,log,msg,proc,ptclient,quota,sieve,socket,sync,user,lock}
  make_cert
  # imapd runs as nobody: it must read its key and own its state.
  chmod 0755 "$DIR" "$DIR/run" "$DIR/tls"
  chown -R "$NOBODY_UID:$NOBODY_GID" "$DIR/conf" "$DIR/spool" "$DIR/tls/key.pem"
  write_env cyrus "$NOBODY_UID" "$NOBODY_GID"

  cat >"$DIR/imapd.conf" <<EOF
# Generated by scripts/imapservers.sh -- overwritten on every start.
configdirectory: $DIR/conf
proc_path: $DIR/conf/proc
mboxname_lockpath: $DIR/conf/lock
defaultpartition: default
partition-default: $DIR/spool
lmtpsocket: $DIR/conf/socket/lmtp
idlesocket: $DIR/conf/socket/idle
notifysocket: $DIR/conf/socket/notify
servername: localhost
# Debian's namespace (cyrus-common etc/imapd.conf), not upstream's 3.x
# default (altnamespace: 1, unixhierarchysep: 1, imapd.conf(5)).
altnamespace: no
unixhierarchysep: no
hashimapspool: true
# cyrus_user (imapd.conf(5)): "the username to use as the cyrus user".
cyrus_user: nobody
admins: cyrusadm
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $DIR/sasldb2
sasl_mech_list: PLAIN LOGIN
# A user's INBOX is created at the first successful login, with this quota
# in KiB (imapd.conf(5) autocreate_quota: >= 0 enables it, > 0 sets a quota
# root, which the QUOTA tests need).
autocreate_quota: 10485760
tls_server_cert: $DIR/tls/cert.pem
tls_server_key: $DIR/tls/key.pem
umask: 077
syslog_prefix: imapbak-test-cyrus
EOF

  # master hands its -C to no child: each cmd names the config itself
  # (without it: "can't open configuration file /etc/imapd.conf").
  local c="-C $DIR/imapd.conf"
  cat >"$DIR/cyrus.conf" <<EOF
# Generated by scripts/imapservers.sh -- overwritten on every start.
START {
  recover cmd="$bin/ctl_cyrusdb $c -r"
}
SERVICES {
  imap  cmd="$bin/imapd $c" listen="127.0.0.1:$IMAP_PORT" prefork=0 maxchild=200
  imaps cmd="$bin/imapd $c -s" listen="127.0.0.1:$IMAPS_PORT" prefork=0 maxchild=200
}
EVENTS {
  checkpoint cmd="$bin/ctl_cyrusdb $c -c" period=30
}
DAEMON {
}
EOF

  # The admin (imapd.conf `admins`), for tests that need one. saslpasswd2
  # creates the sasldb (Berkeley DB): an empty file there is refused
  # ("BDB0004 fop_read_meta: unexpected file type or format").
  if [[ ! -s $DIR/admin.pw ]]; then
    head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/admin.pw"
  fi
  cyrus_adduser cyrusadm "$(cat "$DIR/admin.pw")"

  export LD_LIBRARY_PATH
  LD_LIBRARY_PATH=$(libpath_of "$root")
  # libsasl2 loads its mechanism and auxprop plugins from SASL_PATH (the
  # unpacked libsasl2-modules{,-db}), so a host without them works too.
  export SASL_PATH=$root/usr/lib/x86_64-linux-gnu/sasl2
  SERVER=cyrus
  launch "$bin/master" -C "$DIR/imapd.conf" -M "$DIR/cyrus.conf" \
    -p "$DIR/run/master.pid" -D
}

cyrus_adduser() {
  local name=$1 pw=$2 root=$CACHE/cyrus
  printf '%s' "$pw" | LD_LIBRARY_PATH=$(libpath_of "$root") \
    SASL_PATH=$root/usr/lib/x86_64-linux-gnu/sasl2 \
    "$root/usr/sbin/saslpasswd2" -p -c -u localhost -f "$DIR/sasldb2" "$name"
  chown "$NOBODY_UID:$NOBODY_GID" "$DIR/sasldb2"
  chmod 0640 "$DIR/sasldb2"
}

# --- Courier --------------------------------------------------------------------

start_courier() {
  echo "courier: not yet" >&2
  exit 1
}

courier_adduser() {
  echo "courier: not yet" >&2
  exit 1
}

# --- stop -------------------------------------------------------------------------

stop() {
  local pidfile=$DIR/run/server.pid pid i
  [[ -s $pidfile ]] || { echo "not running (no $pidfile)"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || { echo "not running (stale pid $pid)"; return 0; }
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { echo "stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  echo "pid $pid still alive after 10 s" >&2
  return 1
}

cmd=${1:-}
case $cmd in
  install)
    install "${2:-all}"
    ;;
  start)
    [[ ${2:-} == cyrus || ${2:-} == courier ]] && [[ -n ${3:-} ]] || usage
    : "${IMAP_PORT:?IMAP_PORT is required}" "${IMAPS_PORT:?IMAPS_PORT is required}"
    mkdir -p "$3"
    DIR=$(cd "$3" && pwd)
    "start_$2"
    ;;
  adduser)
    [[ ${2:-} == cyrus || ${2:-} == courier ]] && [[ -n ${3:-} && -n ${4:-} && -n ${5:-} ]] || usage
    DIR=$(cd "$3" && pwd)
    "$2_adduser" "$4" "$5"
    ;;
  stop)
    [[ -n ${2:-} && -d $2 ]] || usage
    DIR=$(cd "$2" && pwd)
    stop
    ;;
  *) usage ;;
esac
