#!/usr/bin/env bash
# Private, loopback-only Cyrus IMAP 3.6 and Courier-IMAP 5 for the
# integration tests (tests/support/mod.rs: `cyrus()`, `courier()`), beside
# the private Dovecot of scripts/dovecot.sh (same model: config, state, TLS
# cert, users and mail all under DIR; free ports chosen by the caller).
#
#   scripts/imapservers.sh install                 # fetch + unpack both
#   IMAP_PORT=N IMAPS_PORT=M scripts/imapservers.sh start cyrus|courier DIR
#     CYRUS_NAMESPACE [debian] `debian`: INBOX. and `.`; `flat`: no prefix, `/`
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
# `start` needs root: Cyrus's state is chowned to nobody, Courier needs
# `unshare -m` (CAP_SYS_ADMIN). `install` does not (apt-get download).
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
CACHE_VERSION=2

# The uid the mail belongs to. Cyrus services refuse to run as root (issue
# 13); imapd.conf(5) `cyrus_user` names the user they run as, here `nobody`
# (ps shows master itself and imapd as nobody once started). Courier's
# imapd runs as the uid userdb gives the user.
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
# gamin: courier-imap Depends on it (apt-cache depends); libgamin0 spawns
# its /usr/libexec/gam_server (in the /usr overlay below) for IDLE and the
# folder watches imapd sets up at LOGIN, CREATE and SELECT.
COURIER_PKGS=(courier-imap courier-base courier-authlib courier-authdaemon
  courier-authlib-userdb gamin)
# Direct dependencies we never load: libclamav12 is only for cyr_virusscan,
# libzephyr4 only for notifyd (checked with ldd on every binary of
# cyrus-common); both are large and pull in more.
SKIP_DEPS=" libclamav12 libzephyr4 libzephyr4-krb5 "

# The binaries the harness runs, checked with ldd after unpacking.
CYRUS_BINS=(usr/lib/cyrus/bin/master usr/lib/cyrus/bin/imapd
  usr/lib/cyrus/bin/ctl_cyrusdb usr/sbin/saslpasswd2
  usr/lib/x86_64-linux-gnu/sasl2/libplain.so usr/lib/x86_64-linux-gnu/sasl2/liblogin.so
  usr/lib/x86_64-linux-gnu/sasl2/libsasldb.so)
COURIER_BINS=(usr/sbin/couriertcpd usr/bin/couriertls usr/bin/imapd
  usr/lib/courier/courier/imaplogin usr/lib/courier/courier-authlib/authdaemond
  usr/lib/courier/courier-authlib/makedatprog usr/libexec/gam_server
  usr/lib/courier-authlib/libauthuserdb.so)

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
    [[ -e $root/$f ]] || { missing+=" $f(absent)"; continue; }
    missing+=$(LD_LIBRARY_PATH=$(libpath_of "$root") ldd "$root/$f" | awk -v f="$f" '/not found/ {printf " %s:%s", f, $1}')
  done
  if [[ -n $missing ]]; then
    echo "unpacked $name is incomplete:$missing" >&2
    return 1
  fi
  rm -f "$CACHE/.complete-$name-v"*
  touch "$stamp"
}

install() {
  local which=${1:-all}
  mkdir -p "$CACHE"
  # Test processes and scripts/test.sh may install at the same time.
  exec 9>"$CACHE/.lock"
  flock 9
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
  # The signal that stops it (`stop`; the Rust harness reads it too).
  echo "${STOP_SIGNAL:-TERM}" >"$DIR/run/stop-signal"
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
  local alt=no
  case ${CYRUS_NAMESPACE:-debian} in
    debian) ;;
    flat) alt=yes ;;
    *)
      echo "CYRUS_NAMESPACE must be debian or flat" >&2
      exit 2
      ;;
  esac

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
# Debian's namespace (cyrus-common etc/imapd.conf: INBOX. and .) unless
# CYRUS_NAMESPACE=flat, upstream's 3.x default (imapd.conf(5): altnamespace
# 1, unixhierarchysep 1: folders beside INBOX, delimiter /).
altnamespace: $alt
unixhierarchysep: $alt
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
#
# Courier has its paths compiled in: strings(1) on the unpacked binaries
# shows /etc/courier/authdaemonrc and /run/courier/authdaemon/socket
# (authdaemond, libcourierauth.so.0), /etc/courier/userdb.dat and
# userdbshadow.dat (libauthuserdb.so), /usr/lib/courier-authlib (the auth
# modules authdaemond loads), /usr/bin/couriertls. None of them exist on
# this host, and none may be touched. So the server runs in a private mount
# namespace (`unshare -m --propagation private`: nothing leaks back), where
#   /usr  is an overlay of the unpacked packages' usr/ over the host's /usr
#         (read-only: two lowerdirs, no upperdir),
#   /etc  is an overlay of the packages' etc/ over the host's /etc, and the
#         test's DIR/etc is bind-mounted over /etc/courier,
#   /run  is an overlay that adds an empty /run/courier, with DIR/run
#         bind-mounted over it.
# Plain bind mounts alone do not do: their mount points (/etc/courier,
# /usr/lib/courier-authlib) would have to be created on the host; overlayfs
# makes them exist inside the namespace only.
#
# The daemons run directly, not through Debian's /usr/sbin/imapd and
# /usr/sbin/authdaemond wrappers, which daemonize through courierlogger:
#   authdaemond (foreground: strings shows "authdaemond no longer handles
#     its own daemonizing"), module authuserdb only;
#   couriertcpd (foreground without -pid, couriertcpd(1)) on IMAP_PORT,
#     running imaplogin + imapd, STARTTLS through couriertls;
#   couriertcpd on IMAPS_PORT running `couriertls -server -tcpd` + imaplogin
#     + imapd with IMAP_TLS=1 (as Debian's /usr/sbin/imapd-ssl does, without
#     `-user=courier`: there is no courier user here).
# Their settings are the environment Debian's /etc/courier/imapd and
# imapd-ssl give (DIR/etc/imapd.env), minus IMAP_EMPTYTRASH (deletes Trash
# mail older than 7 days) and the access file.
# Users: userdb (text DIR/etc/userdb, compiled with the unpacked makedatprog
# into userdb.dat + userdbshadow.dat the way makeuserdb(8) does), with a
# real crypt(3) password (`systempw`, SHA-512 crypt from `openssl passwd
# -6`), uid MAIL_UID, mail in DIR/mail/NAME (Maildir). Namespace: `INBOX.`,
# `.`. Courier logs to syslog, absent here: what its daemons write to stderr
# goes to the start script's output.

start_courier() {
  need_installed courier
  local root=$CACHE/courier
  mkdir -p "$DIR"/{run,log,tls,etc,mail,skel/run/courier}
  mkdir -p "$DIR/run/authdaemon"
  make_cert
  chmod 0755 "$DIR" "$DIR/mail" "$DIR/run" "$DIR/etc"
  chown "$MAIL_UID:$MAIL_GID" "$DIR/mail"
  chmod 0750 "$DIR/run/authdaemon"
  # couriertls reads the key and the certificate from one PEM file.
  cat "$DIR/tls/key.pem" "$DIR/tls/cert.pem" >"$DIR/etc/imapd.pem"
  chmod 0600 "$DIR/etc/imapd.pem"
  # DH parameters (Debian's TLS_DHPARAMS): RFC 7919's ffdhe2048 group costs
  # nothing to write out, unlike `openssl dhparam`.
  if [[ ! -s $DIR/etc/dhparams.pem ]]; then
    openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 \
      -out "$DIR/etc/dhparams.pem" 2>/dev/null
  fi
  [[ -e $DIR/etc/userdb ]] || : >"$DIR/etc/userdb"
  chmod 0600 "$DIR/etc/userdb"
  courier_makeuserdb
  write_env courier "$MAIL_UID" "$MAIL_GID"
  # libgamin names its socket after the user of the uid (getpwuid): with no
  # passwd entry for MAIL_UID, every LOGIN, CREATE and SELECT waited 1.2 s
  # and LOGIN said "* OK [ALERT] Filesystem notification initialization
  # error". The namespace gets a copy of the host's passwd/group with one
  # more line, bind-mounted over /etc/passwd and /etc/group.
  { grep -v "^imapbak-mail:" /etc/passwd; echo "imapbak-mail:x:$MAIL_UID:$MAIL_GID::/nonexistent:/usr/sbin/nologin"; } >"$DIR/passwd"
  { grep -v "^imapbak-mail:" /etc/group; echo "imapbak-mail:x:$MAIL_GID:"; } >"$DIR/group"
  chmod 0644 "$DIR/passwd" "$DIR/group"

  cat >"$DIR/etc/authdaemonrc" <<'END_RC'
# Generated by scripts/imapservers.sh -- overwritten on every start.
authmodulelist="authuserdb"
daemons=3
authdaemonvar=/run/courier/authdaemon
DEBUG_LOGIN=0
DEFAULTOPTIONS=""
LOGGEROPTS=""
END_RC

  cat >"$DIR/etc/imapd.env" <<'END_ENV'
# Generated by scripts/imapservers.sh: the environment of imapd, as Debian's
# /etc/courier/imapd and imapd-ssl set it.
IMAP_CAPABILITY="IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
IMAP_CAPABILITY_TLS="$IMAP_CAPABILITY AUTH=PLAIN"
IMAP_KEYWORDS=1
IMAP_ACL=1
IMAP_PROXY=0
IMAP_IDLE_TIMEOUT=60
IMAP_MAILBOX_SANITY_CHECK=1
IMAP_DISABLETHREADSORT=0
IMAP_CHECK_ALL_FOLDERS=0
IMAP_OBSOLETE_CLIENT=0
IMAP_UMASK=022
IMAP_USELOCKS=1
IMAP_ENHANCEDIDLE=0
IMAP_TRASHFOLDERNAME=Trash
IMAP_EMPTYTRASH=
IMAP_MOVE_EXPUNGE_TO_TRASH=0
IMAP_SHAREDINDEXFILE=/etc/courier/shared/index
IMAP_STARTTLS=YES
IMAP_TLS_REQUIRED=0
COURIERTLS=/usr/bin/couriertls
TLS_CERTFILE=/etc/courier/imapd.pem
TLS_DHPARAMS=/etc/courier/dhparams.pem
TLS_VERIFYPEER=NONE
MAILDIRPATH=Maildir
END_ENV

  # Runs inside the namespace; stops its daemons when it gets SIGTERM.
  cat >"$DIR/ns-run.sh" <<END_NS
# Generated by scripts/imapservers.sh: runs in Courier's mount namespace.
set -euo pipefail
mount -t overlay imapbak-courier-usr -o lowerdir=$root/usr:/usr /usr
mount -t overlay imapbak-courier-etc -o lowerdir=$root/etc:/etc /etc
mount --bind $DIR/etc /etc/courier
mount --bind $DIR/passwd /etc/passwd
mount --bind $DIR/group /etc/group
mount -t overlay imapbak-courier-run -o lowerdir=$DIR/skel/run:/run /run
mount --bind $DIR/run /run/courier
cd /
pids=()
stop() { kill -TERM "\${pids[@]}" 2>/dev/null || true; wait || true; exit 0; }
trap stop TERM INT HUP
PATH=/usr/sbin:/usr/bin:/sbin:/bin
env -i PATH=\$PATH bash -c 'set -a; . /etc/courier/authdaemonrc; exec /usr/lib/courier/courier-authlib/authdaemond' &
pids+=(\$!)
for i in \$(seq 1 100); do [[ -S /run/courier/authdaemon/socket ]] && break; sleep 0.05; done
tcpd="/usr/sbin/couriertcpd -address=127.0.0.1 -maxprocs=200 -maxperip=200 -nodnslookup -noidentlookup"
env -i PATH=\$PATH tcpd="\$tcpd" bash -c 'set -a; . /etc/courier/imapd.env; exec \$tcpd $IMAP_PORT /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir' &
pids+=(\$!)
env -i PATH=\$PATH tcpd="\$tcpd" bash -c 'set -a; . /etc/courier/imapd.env; IMAP_TLS=1; exec \$tcpd $IMAPS_PORT /usr/bin/couriertls -server -tcpd /usr/lib/courier/courier/imaplogin /usr/bin/imapd Maildir' &
pids+=(\$!)
# One daemon gone: stop the others, so the caller sees the server die.
wait -n || true
echo "a Courier daemon exited; stopping" >&2
stop
END_NS

  # Also a private pid namespace whose init is ns-run.sh: when it exits the
  # kernel kills every process left in it (imapd starts one gam_server per
  # user, which never exits by itself). unshare(1) with --fork blocks
  # SIGTERM (tried: `kill -TERM` left it and its children running), so it is
  # stopped with SIGKILL, and --kill-child hands ns-run.sh a SIGTERM then.
  SERVER=courier STOP_SIGNAL=KILL
  launch unshare -m -p --fork --kill-child=TERM --mount-proc \
    --propagation private bash "$DIR/ns-run.sh"
}

# userdb.dat / userdbshadow.dat from the text DIR/etc/userdb, as
# makeuserdb(8) (a perl script hard-wired to /etc/courier/userdb) does:
# fields named *pw go to the shadow file, the rest to userdb.dat;
# makedatprog reads "key<TAB>value" lines ended by "." and renames the
# result into place.
courier_makeuserdb() {
  local root=$CACHE/courier etc=$DIR/etc lp
  local makedat=$root/usr/lib/courier/courier-authlib/makedatprog
  lp=$(libpath_of "$root")
  # shellcheck disable=SC2016
  local split='NF == 2 { n = split($2, f, "|"); out = "";
      for (i = 1; i <= n; i++) if ((f[i] ~ /^[^=]*pw=/) == shadow) out = out (out == "" ? "" : "|") f[i];
      if (out != "") print $1 "\t" out } END { print "." }'
  awk -F'\t' -v shadow=0 "$split" "$etc/userdb" |
    LD_LIBRARY_PATH=$lp "$makedat" - "$etc/userdb.tmp" "$etc/userdb.dat"
  (
    umask 066
    awk -F'\t' -v shadow=1 "$split" "$etc/userdb" |
      LD_LIBRARY_PATH=$lp "$makedat" - "$etc/userdbshadow.tmp" "$etc/userdbshadow.dat"
  )
}

courier_adduser() {
  local name=$1 pw=$2 hash home
  home=$DIR/mail/$name
  mkdir -p "$home"/{cur,new,tmp}
  chown -R "$MAIL_UID:$MAIL_GID" "$home"
  chmod 0700 "$home"
  hash=$(openssl passwd -6 "$pw")
  printf '%s\tuid=%s|gid=%s|home=%s|mail=%s|systempw=%s\n' \
    "$name" "$MAIL_UID" "$MAIL_GID" "$home" "$home" "$hash" >>"$DIR/etc/userdb"
  # A 10 GiB Maildir++ quota (maildirsize: limit line, then usage lines), so
  # QUOTA has a root with a STORAGE limit. A userdb `quota=` field alone
  # changes nothing here: without the file imapd answers GETQUOTAROOT with
  # a bare `* QUOTA "ROOT"` (no resource list, which RFC 2087's grammar
  # does not allow).
  printf '10737418240S\n0 0\n' >"$home/maildirsize"
  chown "$MAIL_UID:$MAIL_GID" "$home/maildirsize"
  courier_makeuserdb
}

# --- stop -------------------------------------------------------------------------

stop() {
  local pidfile=$DIR/run/server.pid pid i sig
  [[ -s $pidfile ]] || { echo "not running (no $pidfile)"; return 0; }
  pid=$(cat "$pidfile")
  sig=$(cat "$DIR/run/stop-signal" 2>/dev/null || echo TERM)
  kill -"$sig" "$pid" 2>/dev/null || { echo "not running (stale pid $pid)"; return 0; }
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
