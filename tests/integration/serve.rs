//! `imapbak serve` against archives pulled from the test Dovecot: what a
//! mail client sees over the served archive (mailboxes, bytes, flags,
//! keywords, INTERNALDATE), that no write reaches the archive, that no
//! Dovecot file lands in it, a clean stop on SIGTERM, and the hint when
//! Dovecot is missing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::{self, dovecot, mail, mailbox_arg, parse_values, TestEnv, User, Value};

/// Mailboxes of the served test: a hierarchy, non-ASCII, `&`, spaces and a
/// `.` inside a level (listescape in the archive's folder name).
const MAILBOXES: &[&str] = &[
    "INBOX",
    "Archive/2024/Q1",
    "Entwürfe",
    "R&D",
    "with spaces in it",
    "v1.2",
];

/// The uid that owns the archive while it is served by root: Dovecot never
/// reads mail as root (see `mail_owner` in src/cli/serve.rs).
const MAIL_UID: u32 = 5000;

fn seed(user: &User, mailboxes: &[&str]) {
    let mut imap = user.imap();
    for mb in &mailboxes[1..] {
        imap.create(mb);
    }
    let kinds = mail::all_kinds();
    for (i, mb) in mailboxes.iter().enumerate() {
        for (j, (_, body)) in kinds.iter().enumerate() {
            let flags: &[&str] = match (i + j) % 4 {
                0 => &[],
                1 => &["\\Seen"],
                2 => &["\\Seen", "\\Flagged", "$Important"],
                _ => &["\\Answered", "\\Draft", "Custom-Kw"],
            };
            let date = format!("{:02}-Mar-2021 1{}:0{}:00 +0100", 1 + j, i % 10, j % 10);
            imap.append(mb, flags, &date, body);
        }
    }
}

/// Pulls `accounts` (name, user) into `env`, then makes the archives
/// servable: as root, owned by a plain uid and reachable by it.
fn pulled(accounts: &[(&str, &User)]) -> TestEnv {
    let env = TestEnv::new();
    let toml: String = accounts
        .iter()
        .map(|(name, user)| env.account_toml(name, user, ""))
        .collect();
    env.write_config(&toml);
    let out = env.cmd().arg("pull").output().unwrap();
    assert!(
        out.status.success(),
        "pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if unsafe { libc::geteuid() } == 0 {
        for (name, _) in accounts {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{MAIL_UID}:{MAIL_UID}"))
                .arg(env.archive(name))
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    env
}

/// A running `imapbak serve --json`, stopped (SIGTERM) when dropped.
struct Serve {
    child: Child,
    settings: serde_json::Value,
}

impl Serve {
    fn start(env: &TestEnv, args: &[&str]) -> Serve {
        let mut cmd = env.std_cmd();
        cmd.arg("serve").arg("--json").args(args);
        Serve::spawn(cmd)
    }

    /// Runs `cmd`, an `imapbak ... serve --json`, and reads its settings.
    fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imapbak serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve printed no settings: {:?}\n{err}", child.wait());
        }
        let settings = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("settings are not JSON ({e}): {line}"));
        Serve { child, settings }
    }

    fn port(&self) -> u16 {
        self.settings["port"].as_u64().unwrap() as u16
    }

    fn password(&self, account: &str) -> String {
        self.settings["logins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["user"] == account)
            .unwrap_or_else(|| panic!("no login `{account}` in {}", self.settings))["password"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn client(&self) -> TlsImap {
        TlsImap::connect(
            self.port(),
            Path::new(self.settings["certificate"].as_str().unwrap()),
        )
    }

    fn login(&self, account: &str) -> TlsImap {
        let mut c = self.client();
        let r = c.run(&format!(
            "LOGIN {} {}",
            support::quote(account),
            support::quote(&self.password(account))
        ));
        assert!(r.ok(), "LOGIN as `{account}`: {}", r.text);
        c
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.stop_ref()
    }

    fn stop_ref(&mut self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, then waits for the exit status.
    fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// A raw IMAP client over implicit TLS (the harness's speaks plain IMAP only)
// ---------------------------------------------------------------------------

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

struct TlsImap {
    conn: BufReader<TlsStream>,
    tag: u32,
}

struct Reply {
    untagged: Vec<Vec<u8>>,
    text: String,
    /// The server closed the connection (e.g. BYE after a refused command).
    closed: bool,
}

impl Reply {
    fn ok(&self) -> bool {
        self.text.starts_with("OK")
    }
}

/// A message as served: flags (without `\Recent`) sorted, INTERNALDATE in
/// seconds, the `BODY.PEEK[]` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    flags: Vec<String>,
    date: i64,
    body: Vec<u8>,
}

fn atom(v: &Value) -> String {
    match v {
        Value::Atom(a) => a.clone(),
        Value::Str(s) => String::from_utf8_lossy(s).into_owned(),
        Value::List(_) => String::new(),
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}

impl TlsImap {
    fn connect(port: u16, cert: &Path) -> TlsImap {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        roots
            .add(CertificateDer::from_pem_file(cert).expect("read the served certificate"))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to serve");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = TlsImap {
            conn: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
            tag: 0,
        };
        let greeting = c.read_response().expect("greeting");
        assert!(greeting.starts_with(b"* OK"), "greeting {greeting:?}");
        c
    }

    fn read_response(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            let start = buf.len();
            if self.conn.read_until(b'\n', &mut buf).ok()? == 0 {
                return None;
            }
            match literal_len(&buf[start..]) {
                Some(n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    self.conn.read_exact(&mut buf[at..]).ok()?;
                }
                None => return Some(buf),
            }
        }
    }

    /// Sends `cmd` (with `literal` as a LITERAL+ argument at its end).
    fn run_with(&mut self, cmd: &str, literal: Option<&[u8]>) -> Reply {
        self.tag += 1;
        let tag = format!("S{}", self.tag);
        let mut out = format!("{tag} {cmd}").into_bytes();
        if let Some(l) = literal {
            out.extend_from_slice(format!(" {{{}+}}\r\n", l.len()).as_bytes());
            out.extend_from_slice(l);
        }
        out.extend_from_slice(b"\r\n");
        let mut untagged = Vec::new();
        if self
            .conn
            .get_mut()
            .write_all(&out)
            .and_then(|()| self.conn.get_mut().flush())
            .is_err()
        {
            return Reply {
                untagged,
                text: "closed".into(),
                closed: true,
            };
        }
        loop {
            let Some(r) = self.read_response() else {
                return Reply {
                    untagged,
                    text: "closed".into(),
                    closed: true,
                };
            };
            if let Some(rest) = r.strip_prefix(format!("{tag} ").as_bytes()) {
                return Reply {
                    untagged,
                    text: String::from_utf8_lossy(rest).trim_end().to_string(),
                    closed: false,
                };
            }
            untagged.push(r);
        }
    }

    fn run(&mut self, cmd: &str) -> Reply {
        self.run_with(cmd, None)
    }

    fn ok(&mut self, cmd: &str) -> Reply {
        let r = self.run(cmd);
        assert!(r.ok(), "`{cmd}` answered `{}`", r.text);
        r
    }

    /// Decoded names of all selectable mailboxes.
    fn list(&mut self) -> Vec<String> {
        let r = self.ok("LIST \"\" \"*\"");
        let mut names = Vec::new();
        for line in &r.untagged {
            let Some(v) = parse_values(line) else {
                continue;
            };
            if v.len() < 5 || atom(&v[1]) != "LIST" {
                continue;
            }
            let Value::List(attrs) = &v[2] else { continue };
            if attrs.iter().any(|a| {
                let a = atom(a);
                a.eq_ignore_ascii_case("\\Noselect") || a.eq_ignore_ascii_case("\\NonExistent")
            }) {
                continue;
            }
            names.push(imapbak::mutf7::decode(&atom(&v[4])).unwrap());
        }
        names.sort();
        names
    }

    /// Every message of `mailbox` in UID order (EXAMINE).
    fn fetch_all(&mut self, mailbox: &str) -> Vec<Served> {
        self.ok(&format!("EXAMINE {}", mailbox_arg(mailbox)));
        let r = self.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])");
        let mut out = Vec::new();
        for line in &r.untagged {
            let Some(v) = parse_values(line) else {
                continue;
            };
            if v.len() < 4 || atom(&v[2]) != "FETCH" {
                continue;
            }
            let Value::List(items) = &v[3] else { continue };
            let mut m = BTreeMap::new();
            for kv in items.chunks(2) {
                m.insert(atom(&kv[0]).to_ascii_uppercase(), kv[1].clone());
            }
            let Value::List(flags) = &m["FLAGS"] else {
                panic!("FLAGS")
            };
            let mut flags: Vec<String> = flags
                .iter()
                .map(atom)
                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                .collect();
            flags.sort();
            let Value::Str(body) = &m["BODY[]"] else {
                panic!("BODY[]")
            };
            let uid: u32 = atom(&m["UID"]).parse().unwrap();
            out.push((
                uid,
                Served {
                    flags,
                    date: support::internaldate_secs(&atom(&m["INTERNALDATE"])),
                    body: body.clone(),
                },
            ));
        }
        out.sort_by_key(|(uid, _)| *uid);
        out.into_iter().map(|(_, m)| m).collect()
    }
}

/// The same listing from the origin server's point of view.
fn origin(user: &User, mailbox: &str) -> Vec<Served> {
    user.imap()
        .fetch_all(mailbox)
        .into_iter()
        .map(|m| {
            let mut flags = m.flags.clone();
            flags.sort();
            Served {
                flags,
                date: m.internaldate_secs(),
                body: m.body,
            }
        })
        .collect()
}

/// Every entry under `root`: relative path -> (kind, mode, mtime in ns,
/// size, SHA-256 of the bytes or the link target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (char, u32, i128, u64, String)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        let meta = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let (kind, digest) = if meta.file_type().is_symlink() {
            ('l', fs::read_link(e.path()).unwrap().display().to_string())
        } else if meta.is_dir() {
            ('d', String::new())
        } else {
            let bytes = fs::read(e.path()).unwrap();
            ('f', hex::encode(Sha256::digest(&bytes)))
        };
        let mtime = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        out.insert(rel, (kind, meta.mode(), mtime, meta.len(), digest));
    }
    out
}

/// Names Dovecot gives its own files (the archive has only
/// `dovecot-keywords`, which imapbak writes).
fn dovecot_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().to_string_lossy();
            (n.starts_with("dovecot") && n != "dovecot-keywords")
                || n == "subscriptions"
                || n.starts_with("dovecot-acl")
                || n.ends_with(".lock")
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn served_archive_lists_the_same_mailboxes_and_serves_every_message_identically() {
    let d = dovecot();
    let alice = d.new_user("serve-a");
    seed(&alice, MAILBOXES);
    let bob = d.new_user("serve-b");
    seed(&bob, &["INBOX", "Only Bob"]);
    let env = pulled(&[("a", &alice), ("b", &bob)]);
    let before: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| snapshot(&env.archive(n)))
        .collect();

    // No --account: each account is its own login.
    let serve = Serve::start(&env, &[]);
    assert_eq!(serve.settings["tls"], "implicit");
    assert_eq!(serve.settings["host"], "127.0.0.1");
    assert!(serve.settings["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    for (account, user, mailboxes) in [
        ("a", &alice, MAILBOXES),
        ("b", &bob, &["INBOX", "Only Bob"][..]),
    ] {
        let mut client = serve.login(account);
        let mut want = user.imap().list();
        want.sort();
        assert_eq!(client.list(), want, "mailboxes of `{account}`");
        // Every mailbox is subscribed (Thunderbird shows subscribed ones only).
        let lsub = client.ok("LSUB \"\" \"*\"");
        let subscribed = lsub
            .untagged
            .iter()
            .filter(|l| {
                l.starts_with(b"* LSUB ") && !String::from_utf8_lossy(l).contains("\\Noselect")
            })
            .count();
        assert_eq!(
            subscribed,
            want.len(),
            "subscribed mailboxes of `{account}`"
        );
        for mb in mailboxes {
            let want = origin(user, mb);
            let got = client.fetch_all(mb);
            assert_eq!(got.len(), want.len(), "messages in `{mb}` of `{account}`");
            assert!(!want.is_empty());
            for (g, w) in got.iter().zip(&want) {
                assert!(g.body == w.body, "bytes differ in `{mb}` of `{account}`");
                assert_eq!(g.flags, w.flags, "flags and keywords in `{mb}`");
                assert_eq!(g.date, w.date, "INTERNALDATE in `{mb}`");
            }
        }
        // Keywords came from the archive's dovecot-keywords files.
        let flags: Vec<String> = client
            .fetch_all(mailboxes[0])
            .into_iter()
            .flat_map(|m| m.flags)
            .collect();
        assert!(flags.iter().any(|f| f == "Custom-Kw"), "{flags:?}");
    }
    // One login's password does not open the other.
    let mut c = serve.client();
    let r = c.run(&format!("LOGIN b {}", support::quote(&serve.password("a"))));
    assert!(!r.ok(), "a's password opened b");
    drop(c);

    let status = serve.stop();
    assert!(status.success(), "{status:?}");
    for (i, n) in ["a", "b"].iter().enumerate() {
        let archive = env.archive(n);
        assert_eq!(
            dovecot_files(&archive),
            Vec::<PathBuf>::new(),
            "Dovecot wrote into `{n}`"
        );
        assert!(
            snapshot(&archive) == before[i],
            "the archive of `{n}` changed"
        );
    }
    // Dovecot's files went to the state directory instead.
    let state = env.path().join("home/.local/state/imapbak/serve");
    assert!(!dovecot_files(&state.join("a/home/control")).is_empty());
    assert!(state.join(".all/dovecot.conf").is_file());
}

#[test]
fn every_write_through_serve_is_refused_and_the_archive_is_unchanged() {
    let alice = dovecot().new_user("serve-w");
    seed(&alice, MAILBOXES);
    let env = pulled(&[("a", &alice)]);
    let archive = env.archive("a");
    let before = snapshot(&archive);
    let serve = Serve::start(&env, &["--account", "a"]);
    let served_before: Vec<_> = {
        let mut c = serve.login("a");
        MAILBOXES.iter().map(|mb| c.fetch_all(mb)).collect()
    };

    let msg = b"From: x@example.com\r\nSubject: new\r\n\r\nnew\r\n";
    // (setup commands, the write, its literal, whether it must be refused
    // with NO); the others must have no effect (checked below).
    let writes: &[WriteAttempt] = &[
        (
            &["SELECT INBOX"],
            "UID STORE 1:* +FLAGS (\\Flagged \\Deleted $Junk)",
            None,
            false,
        ),
        (
            &["SELECT INBOX"],
            "UID STORE 1:* -FLAGS (\\Seen \\Answered Custom-Kw)",
            None,
            false,
        ),
        (&["SELECT INBOX"], "STORE 1:* FLAGS ()", None, false),
        (
            &["SELECT INBOX", "STORE 1:* +FLAGS (\\Deleted)"],
            "EXPUNGE",
            None,
            false,
        ),
        (&["SELECT INBOX"], "UID EXPUNGE 1:*", None, false),
        (&["SELECT INBOX"], "FETCH 1:* BODY[]", None, false),
        (&[], "APPEND INBOX (\\Seen)", Some(msg), true),
        (&[], "APPEND \"Archive/2024/Q1\"", Some(msg), true),
        (&["SELECT INBOX"], "COPY 1:* \"R&-D\"", None, true),
        (&["SELECT INBOX"], "MOVE 1:* \"R&-D\"", None, true),
        (&[], "CREATE New", None, true),
        (&[], "CREATE \"Archive/2024/New\"", None, true),
        (&[], "DELETE \"R&-D\"", None, true),
        (&[], "DELETE \"Archive/2024/Q1\"", None, true),
        (&[], "RENAME \"R&-D\" Renamed", None, true),
        (&[], "RENAME INBOX Renamed", None, true),
        (&[], "SETACL INBOX a lrswipkxtea", None, true),
    ];
    for (setup, cmd, literal, must_refuse) in writes {
        let mut c = serve.login("a");
        for s in *setup {
            c.run(s);
        }
        let r = c.run_with(cmd, *literal);
        if *must_refuse {
            assert!(
                r.text.starts_with("NO"),
                "`{cmd}` was not refused: {}",
                r.text
            );
        }
        if !r.closed {
            c.run("LOGOUT");
        }
    }

    let mut c = serve.login("a");
    let mut want = alice.imap().list();
    want.sort();
    assert_eq!(c.list(), want, "the mailboxes changed");
    let served_after: Vec<_> = MAILBOXES.iter().map(|mb| c.fetch_all(mb)).collect();
    assert!(served_after == served_before, "what serve shows changed");
    drop(c);
    assert!(serve.stop().success());
    let after = snapshot(&archive);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "names in the archive changed"
    );
    for (path, entry) in &before {
        assert_eq!(&after[path], entry, "`{}` changed", path.display());
    }
    assert_eq!(dovecot_files(&archive), Vec::<PathBuf>::new());
}

/// One write attempt: setup commands, the command, its literal, and
/// whether it must be refused with NO (the others must have no effect).
type WriteAttempt<'a> = (&'a [&'a str], &'a str, Option<&'a [u8]>, bool);

/// Waits (at most 2 s: init reaps killed processes a moment later) until
/// no process of group `pgid` is left.
fn assert_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !group_members(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left behind: {:?}",
            group_members(pgid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn sigterm_stops_serve_leaving_no_process_and_freeing_the_port_for_the_next_run() {
    let alice = dovecot().new_user("serve-t");
    seed(&alice, &["INBOX"]);
    let env = pulled(&[("a", &alice)]);
    let serve = Serve::start(&env, &[]);
    let port = serve.port();
    let master = serve.settings["pid"].as_u64().unwrap() as u32;
    let serve_pid = serve.child.id();
    let first_password = serve.password("a");
    assert_eq!(first_password.len(), 20);
    // A logged-in client keeps an imap process alive at the signal.
    let mut client = serve.login("a");
    client.ok("EXAMINE INBOX");
    assert!(group_members(master).len() > 1, "no Dovecot processes");
    assert!(TcpListener::bind(("127.0.0.1", port)).is_err());

    let status = serve.stop();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_group_gone(master);
    TcpListener::bind(("127.0.0.1", port)).expect("the port is still taken");

    // The next run takes the same port (a client set up once keeps
    // working); Ctrl-C (SIGINT) stops it as cleanly.
    let mut again = Serve::start(&env, &[]);
    assert_eq!(again.port(), port, "the port was not reused");
    assert_eq!(again.password("a"), first_password, "the password changed");
    let again_master = again.settings["pid"].as_u64().unwrap() as u32;
    let status = again.stop_with(libc::SIGINT);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_group_gone(again_master);
    TcpListener::bind(("127.0.0.1", port)).expect("the port is still taken after SIGINT");
    // The runtime directory (sockets, pid file) is gone too.
    let runtime: Vec<_> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy() == format!("imapbak-serve-{serve_pid}"))
        .collect();
    assert!(runtime.is_empty());
}

#[test]
fn serve_without_dovecot_on_path_exits_2_with_install_hints() {
    let env = TestEnv::new();
    let out = env
        .cmd()
        .env("PATH", "/nonexistent")
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: dovecot is not on PATH"),
        "{stderr}"
    );
    for hint in [
        "apt install dovecot-imapd",
        "dnf install dovecot",
        "pacman -S dovecot",
        "brew install dovecot",
    ] {
        assert!(stderr.contains(hint), "no `{hint}` in:\n{stderr}");
    }
    assert!(out.stdout.is_empty());
    assert!(!env.path().join("home/.local/state/imapbak/serve").exists());
}

#[test]
fn serve_shows_what_a_concurrent_pull_adds_after_a_reselect() {
    let alice = dovecot().new_user("serve-p");
    seed(&alice, &["INBOX"]);
    let env = pulled(&[("a", &alice)]);
    let serve = Serve::start(&env, &[]);
    let mut client = serve.login("a");
    let before = client.fetch_all("INBOX").len();

    let mut origin_imap = alice.imap();
    origin_imap.append(
        "INBOX",
        &["\\Flagged"],
        "02-Feb-2022 10:00:00 +0000",
        b"Subject: later\r\n\r\nlater\r\n",
    );
    origin_imap.create("Later");
    origin_imap.append(
        "Later",
        &["\\Seen", "Later-Kw"],
        "03-Feb-2022 10:00:00 +0000",
        b"Subject: in a new mailbox\r\n\r\nnew\r\n",
    );
    let out = env.cmd().arg("pull").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if unsafe { libc::geteuid() } == 0 {
        // The pull ran as root; serve reads the archive as its owner.
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{MAIL_UID}:{MAIL_UID}"))
            .arg(env.archive("a"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    let inbox = client.fetch_all("INBOX");
    assert_eq!(inbox.len(), before + 1, "the new message is not served");
    assert!(inbox
        .iter()
        .any(|m| m.body == b"Subject: later\r\n\r\nlater\r\n"));
    // The new mailbox is listed at once; its keywords once serve has linked
    // its dovecot-keywords (every 2 s).
    assert!(client.list().contains(&"Later".to_string()));
    std::thread::sleep(Duration::from_millis(2500));
    let mut fresh = serve.login("a");
    let later = fresh.fetch_all("Later");
    assert_eq!(later.len(), 1);
    assert_eq!(
        later[0].flags,
        vec!["Later-Kw".to_string(), "\\Seen".to_string()]
    );
    let lsub = fresh.ok("LSUB \"\" \"Later\"");
    assert!(
        lsub.untagged.iter().any(|l| l.starts_with(b"* LSUB ")),
        "Later is not subscribed"
    );
}

#[test]
fn serve_refuses_an_archive_owned_by_root_with_a_hint() {
    if unsafe { libc::geteuid() } != 0 {
        return; // Only root can own an archive as root.
    }
    let alice = dovecot().new_user("serve-r");
    seed(&alice, &["INBOX"]);
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &alice, ""));
    env.cmd().arg("pull").assert().success();
    let before = snapshot(&env.archive("a"));
    let out = env.cmd().arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is owned by root"), "{stderr}");
    assert!(stderr.contains("hint: chown -R"), "{stderr}");
    assert!(snapshot(&env.archive("a")) == before);
}

#[test]
fn serve_off_loopback_warns_takes_the_password_command_and_runs_once_per_archive() {
    let alice = dovecot().new_user("serve-l");
    seed(&alice, &["INBOX"]);
    let env = pulled(&[("a", &alice)]);
    let port = TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("0.0.0.0:{port}");
    let serve = Serve::start(
        &env,
        &[
            "--listen",
            &listen,
            "--password-command",
            "echo not-random-pw; echo ignored",
        ],
    );
    assert_eq!(serve.port(), port);
    assert_eq!(serve.password("a"), "not-random-pw");
    let mut c = serve.login("a");
    c.ok("EXAMINE INBOX");
    drop(c);

    // A second serve of the same archive is refused (exit 4), nothing started.
    let out = env.cmd().arg("serve").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("already being served"), "{stderr}");

    let mut serve = serve;
    let status = serve.stop_ref();
    assert!(status.success());
    let mut stderr = String::new();
    serve
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("warning: listening on {listen}, not on loopback")),
        "{stderr}"
    );
}

#[test]
fn serve_run_by_a_plain_user_runs_dovecot_without_root() {
    // Most users are not root: Dovecot then runs as them, unprivileged.
    // As root, the test becomes `nobody` with setpriv; otherwise it already
    // is a plain user and this case is every other test.
    const NOBODY: u32 = 65534;
    let has_setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if unsafe { libc::geteuid() } != 0
        || !has_setpriv
        || unsafe { libc::getpwuid(NOBODY) }.is_null()
    {
        return;
    }
    let alice = dovecot().new_user("serve-n");
    seed(&alice, &["INBOX", "Archive/2024/Q1"]);
    let env = pulled(&[("a", &alice)]);
    let state = env.path().join("nobody-state");
    fs::create_dir(&state).unwrap();
    for p in [&state, &env.config_path()] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(env.archive("a"))
        .status()
        .unwrap();
    assert!(status.success());
    let before = snapshot(&env.archive("a"));

    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        env!("CARGO_BIN_EXE_imapbak"),
        "--config",
    ])
    .arg(env.config_path())
    .args(["serve", "--json"])
    .env("HOME", &state)
    .env("XDG_STATE_HOME", &state)
    .current_dir(&state);
    let serve = Serve::spawn(cmd);
    let mut client = serve.login("a");
    for mb in ["INBOX", "Archive/2024/Q1"] {
        let want = origin(&alice, mb);
        assert!(client.fetch_all(mb) == want, "`{mb}` served differently");
    }
    let r = client.run("CREATE Nope");
    assert!(r.text.starts_with("NO"), "{}", r.text);
    drop(client);
    let master = serve.settings["pid"].as_u64().unwrap() as u32;
    assert!(serve.stop().success());
    assert_group_gone(master);
    assert!(snapshot(&env.archive("a")) == before, "the archive changed");
    let conf = fs::read_to_string(state.join("imapbak/serve/a/dovecot.conf")).unwrap();
    assert!(conf.contains("default_internal_user = nobody"), "{conf}");
}

/// A user of a multi-user table is served under its account name,
/// `TABLE/USER` (the name `search` prints in ids), as its own login.
#[test]
fn serve_logs_in_a_tables_user_as_table_slash_user() {
    use crate::orgs::{staff_toml, write_users};
    let d = support::dovecot_master();
    let joe = d.new_user("serve-org");
    d.seed_inbox(&joe, &[(mail::plain(1), 1_600_000_000)]);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &[&joe.name]);
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    let out = env
        .cmd()
        .env("IMAPBAK_TEST_ADMIN_PW", support::MASTER_PASSWORD)
        .args(["pull", "--account", "staff"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in [env.path(), root.as_path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if unsafe { libc::geteuid() } == 0 {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{MAIL_UID}:{MAIL_UID}"))
            .arg(root.join(&joe.name))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let serve = Serve::start(&env, &["--account", "staff"]);
    let login = format!("staff/{}", joe.name);
    let mut c = serve.login(&login);
    let r = c.ok("EXAMINE INBOX");
    let exists = r
        .untagged
        .iter()
        .any(|l| String::from_utf8_lossy(l).contains("1 EXISTS"));
    assert!(exists, "{:?}", r.untagged);
    drop(c);
    assert!(serve.stop().success());
}
