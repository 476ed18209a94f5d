//! Gmail mode against a fake Gmail: what no real server here can be made to
//! do. The fake keeps one message store and shows it through label views,
//! as Gmail does; every fact it encodes is from ../shared/PROVIDERS.md
//! ("Gmail"), which cites Google's "IMAP Extensions" page, imapsync's
//! FAQ.Gmail and gmvault.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fakes::{certs, parse_set, FakeServer, Greeting, Hook, Session};
use crate::support::{self, dovecot, TestEnv};

const PW: &str = "gmail-fake-pw";

/// Gmail's post-login capabilities (PROVIDERS.md, "Capabilities seen in
/// real sessions"); COMPRESS=DEFLATE left out: our client uses it only when
/// asked.
const CAPS: &str = "IMAP4rev1 UNSELECT IDLE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584";

struct Msg {
    /// X-GM-MSGID: the same in every folder (PROVIDERS.md).
    msgid: u64,
    thrid: u64,
    body: Vec<u8>,
    date: &'static str,
    flags: BTreeSet<String>,
    /// System labels (`\Inbox`, `\Sent`, ...) and user labels.
    labels: BTreeSet<String>,
    modseq: u64,
}

/// One view: a mailbox as Gmail lists it.
struct View {
    name: &'static str,
    /// Special-use attribute (RFC 6154), `\All` for All Mail.
    attr: &'static str,
    /// The label whose messages it shows; None: All Mail (every message
    /// but Spam and Trash, PROVIDERS.md).
    label: Option<&'static str>,
}

/// Folder names are localised (PROVIDERS.md): the German ones, so the client
/// must find them by attribute, never by name.
const VIEWS: &[View] = &[
    View {
        name: "INBOX",
        attr: "",
        label: Some("\\Inbox"),
    },
    View {
        name: "[Google Mail]/Alle Nachrichten",
        attr: "\\All",
        label: None,
    },
    View {
        name: "[Google Mail]/Gesendet",
        attr: "\\Sent",
        label: Some("\\Sent"),
    },
    View {
        name: "[Google Mail]/Papierkorb",
        attr: "\\Trash",
        label: Some("\\Trash"),
    },
    View {
        name: "[Google Mail]/Spam",
        attr: "\\Junk",
        label: Some("\\Spam"),
    },
    View {
        name: "Work",
        attr: "",
        label: Some("Work"),
    },
    View {
        name: "Work/Projects",
        attr: "",
        label: Some("Work/Projects"),
    },
];

#[derive(Default)]
struct Store {
    messages: Vec<Msg>,
    modseq: u64,
    /// Per view: msgid -> UID, assigned when a message first shows there.
    uids: HashMap<&'static str, BTreeMap<u64, u32>>,
    /// Body bytes sent in FETCH BODY[] replies.
    body_bytes: u64,
    selected: HashMap<usize, usize>,
    /// "Show in IMAP" off for All Mail (PROVIDERS.md, "Hidden mail").
    hide_all: bool,
}

impl Store {
    fn in_view(v: &View, m: &Msg) -> bool {
        match v.label {
            Some(l) => m.labels.contains(l),
            None => !m.labels.contains("\\Trash") && !m.labels.contains("\\Spam"),
        }
    }

    /// UID of each message in view `v`, assigning new ones in order.
    fn view(&mut self, v: &'static View) -> Vec<(u32, usize)> {
        let map = self.uids.entry(v.name).or_default();
        let mut out = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if Self::in_view(v, m) {
                let next = map.values().max().copied().unwrap_or(0) + 1;
                let uid = *map.entry(m.msgid).or_insert(next);
                out.push((uid, i));
            }
        }
        out.sort();
        out
    }

    fn add(&mut self, body: Vec<u8>, date: &'static str, flags: &[&str], labels: &[&str]) {
        self.modseq += 1;
        let n = self.messages.len() as u64;
        self.messages.push(Msg {
            msgid: 1_600_000_000_000_000_000 + n,
            thrid: 1_600_000_000_000_000_000 + n / 2,
            body,
            date,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            modseq: self.modseq,
        });
        for v in VIEWS {
            self.view(v);
        }
    }

    /// A label or flag change moves the message's MODSEQ (CONDSTORE works
    /// on Gmail, PROVIDERS.md).
    fn relabel(&mut self, i: usize, add: &[&str], remove: &[&str]) {
        self.modseq += 1;
        let m = &mut self.messages[i];
        for l in add {
            m.labels.insert(l.to_string());
        }
        for l in remove {
            m.labels.remove(*l);
        }
        m.modseq = self.modseq;
        for v in VIEWS {
            self.view(v);
        }
    }
}

/// X-GM-LABELS as Gmail sends them: system labels quoted with the
/// backslash escaped (`"\\Inbox"`), user labels quoted (PROVIDERS.md).
fn labels_item(m: &Msg) -> String {
    let l: Vec<String> = m
        .labels
        .iter()
        .map(|l| format!("\"{}\"", l.replace('\\', "\\\\")))
        .collect();
    format!("({})", l.join(" "))
}

fn handle(store: &Mutex<Store>, n: usize, tag: &str, cmd: &str, s: &mut Session) -> Hook {
    let mut st = store.lock().unwrap();
    let upper = cmd.to_ascii_uppercase();
    let reply = if upper.starts_with("LOGIN ") {
        format!("{tag} OK [CAPABILITY {CAPS}] me@gmail.com authenticated (Success)\r\n")
    } else if upper == "CAPABILITY" {
        format!("* CAPABILITY {CAPS}\r\n{tag} OK Success\r\n")
    } else if upper.starts_with("LIST ") {
        let mut r = String::new();
        for v in VIEWS {
            if st.hide_all && v.attr == "\\All" {
                continue;
            }
            let attrs = if v.attr.is_empty() {
                "\\HasNoChildren".to_string()
            } else {
                format!("\\HasNoChildren {}", v.attr)
            };
            r.push_str(&format!("* LIST ({attrs}) \"/\" \"{}\"\r\n", v.name));
            if upper.contains("RETURN (STATUS") {
                let view = st.view(v);
                let uidnext = view.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                let modseq = view
                    .iter()
                    .map(|(_, i)| st.messages[*i].modseq)
                    .max()
                    .unwrap_or(1);
                r.push_str(&format!(
                    "* STATUS \"{}\" (MESSAGES {} UIDNEXT {uidnext} UIDVALIDITY 11 HIGHESTMODSEQ {modseq})\r\n",
                    v.name,
                    view.len()
                ));
            }
        }
        r.push_str(&format!("{tag} OK Success\r\n"));
        r
    } else if upper.starts_with("EXAMINE ") {
        let name = cmd[8..].trim_end_matches(" (CONDSTORE)").trim_matches('"');
        match VIEWS.iter().position(|v| v.name == name) {
            Some(i) => {
                st.selected.insert(n, i);
                let view = st.view(&VIEWS[i]);
                let uidnext = view.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                let modseq = view
                    .iter()
                    .map(|(_, i)| st.messages[*i].modseq)
                    .max()
                    .unwrap_or(1);
                format!(
                    "* {} EXISTS\r\n* OK [UIDVALIDITY 11] ok\r\n* OK [UIDNEXT {uidnext}] ok\r\n* OK [HIGHESTMODSEQ {modseq}] ok\r\n{tag} OK [READ-ONLY] {name} selected. (Success)\r\n",
                    view.len()
                )
            }
            None => format!("{tag} NO [NONEXISTENT] Unknown Mailbox\r\n"),
        }
    } else if upper.starts_with("UID FETCH ") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        let view = st.view(&VIEWS[vi]);
        let max = view.iter().map(|(u, _)| *u).max().unwrap_or(0);
        let set = cmd.split(' ').nth(2).unwrap_or("");
        let wanted: BTreeSet<u32> = parse_set(set, max).into_iter().collect();
        let since: Option<u64> = upper
            .split("CHANGEDSINCE ")
            .nth(1)
            .and_then(|x| x.trim_end_matches(')').parse().ok());
        let mut r: Vec<u8> = Vec::new();
        for (seq, (uid, i)) in view.iter().enumerate() {
            if !wanted.contains(uid) {
                continue;
            }
            let m = &st.messages[*i];
            if since.is_some_and(|s| m.modseq <= s) {
                continue;
            }
            let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
            let flags = flags.join(" ");
            let seq = seq + 1;
            if upper.contains("BODY.PEEK[]") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} RFC822.SIZE {} FLAGS ({flags}) INTERNALDATE \"{}\" BODY[] {{{}}}\r\n",
                        m.body.len(),
                        m.date,
                        m.body.len()
                    )
                    .as_bytes(),
                );
                r.extend_from_slice(&m.body);
                r.extend_from_slice(b")\r\n");
            } else if upper.contains("X-GM-LABELS") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} FLAGS ({flags}) X-GM-MSGID {} X-GM-THRID {} X-GM-LABELS {} MODSEQ ({}))\r\n",
                        m.msgid,
                        m.thrid,
                        labels_item(m),
                        m.modseq
                    )
                    .as_bytes(),
                );
            } else if upper.contains("RFC822.SIZE") {
                r.extend_from_slice(
                    format!("* {seq} FETCH (UID {uid} RFC822.SIZE {})\r\n", m.body.len())
                        .as_bytes(),
                );
            } else if upper.contains("FLAGS") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} FLAGS ({flags}) MODSEQ ({}))\r\n",
                        m.modseq
                    )
                    .as_bytes(),
                );
            } else {
                r.extend_from_slice(format!("* {seq} FETCH (UID {uid})\r\n").as_bytes());
            }
        }
        if upper.contains("BODY.PEEK[]") {
            let bytes: u64 = view
                .iter()
                .filter(|(u, _)| wanted.contains(u))
                .map(|(_, i)| st.messages[*i].body.len() as u64)
                .sum();
            st.body_bytes += bytes;
        }
        r.extend_from_slice(format!("{tag} OK Success\r\n").as_bytes());
        let _ = s.send(&r);
        return Hook::Done;
    } else if upper == "LOGOUT" {
        let _ = s.send(
            format!("* BYE LOGOUT Requested\r\n{tag} OK 73 good day (Success)\r\n").as_bytes(),
        );
        return Hook::Close;
    } else {
        format!("{tag} BAD Unknown command\r\n")
    };
    reply_and(s, reply)
}

fn reply_and(s: &mut Session, reply: String) -> Hook {
    match s.send(reply.as_bytes()) {
        Ok(()) => Hook::Done,
        Err(_) => Hook::Close,
    }
}

fn start(store: Arc<Mutex<Store>>) -> FakeServer {
    FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        Vec::new(),
        move |n, tag, cmd, s| handle(&store, n, tag, cmd, s),
    )
}

fn config(env: &TestEnv, port: u16, extra: &str) {
    let ca = env.path().join("ca.pem");
    fs::write(&ca, &certs().ca_pem).unwrap();
    env.write_config(&format!(
        "[accounts.g]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"me@gmail.com\"\n\
         password-env = \"IMAPBAK_FAKE_PW\"\nca-file = {}\narchive = {}\ntimeout = 10\n{extra}\n",
        support::toml_str(&ca.display().to_string()),
        support::toml_str(&env.archive("g").display().to_string()),
    ));
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imapbak {args:?} failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender {n} <s{n}@example.invalid>\r\nTo: me@gmail.com\r\nSubject: message {n}\r\n\
         Message-ID: <gmail-{n}@example.invalid>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n\
         Body of message {n}.\r\n{}\r\n",
        "x".repeat(200 + n as usize * 37)
    )
    .into_bytes()
}

/// 20 messages, 8 (40 %) with 2-4 labels, one in Trash, one in Spam.
fn seeded() -> Arc<Mutex<Store>> {
    let store = Arc::new(Mutex::new(Store::default()));
    let mut st = store.lock().unwrap();
    for n in 0..20u32 {
        let labels: &[&str] = match n % 5 {
            0 => &["\\Inbox", "Work"],
            1 => &["\\Inbox", "Work", "Work/Projects"],
            2 => &["\\Sent", "Work", "Work/Projects", "\\Inbox"],
            3 => &["\\Inbox"],
            _ => &[],
        };
        let labels = match n {
            18 => &["\\Trash"][..],
            19 => &["\\Spam"][..],
            _ => labels,
        };
        let flags: &[&str] = if n % 2 == 0 { &["\\Seen"] } else { &[] };
        st.add(message(n), "01-Jan-2024 10:00:00 +0000", flags, labels);
    }
    drop(st);
    store
}

fn folder_files(archive: &Path, folder: &str) -> Vec<PathBuf> {
    support::folder_files(archive, folder)
}

/// (inode, flags) of each file of a folder.
fn inodes(archive: &Path, folder: &str) -> BTreeSet<(u64, String)> {
    folder_files(archive, folder)
        .iter()
        .map(|p| (fs::metadata(p).unwrap().ino(), support::maildir_flags(p)))
        .collect()
}

/// The (sha256, flags) multiset of a view of the fake.
fn fake_view(store: &Mutex<Store>, view: &str) -> Vec<(String, String)> {
    let st = store.lock().unwrap();
    let v = VIEWS.iter().find(|v| v.name == view).unwrap();
    let mut out: Vec<(String, String)> = st
        .messages
        .iter()
        .filter(|m| Store::in_view(v, m))
        .map(|m| {
            let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
            (sha(&m.body), flags.join(" "))
        })
        .collect();
    out.sort();
    out
}

fn sha(b: &[u8]) -> String {
    imapbak::archive::sha256_hex(b)
}

/// The (sha256, flags) multiset of a mailbox of a Dovecot serving a copy
/// of the archive.
fn served_view(user: &crate::support::User, mailbox: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = user
        .imap()
        .fetch_all(mailbox)
        .into_iter()
        .map(|m| {
            let mut f: Vec<String> = m.flags.into_iter().filter(|f| f != "\\Recent").collect();
            f.sort();
            (sha(&m.body), f.join(" "))
        })
        .collect();
    out.sort();
    out
}

fn serve_copy(archive: &Path) -> crate::support::User {
    let d = dovecot();
    let served = d.new_user("gserved");
    fs::remove_dir_all(&served.maildir).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(archive.join("mail"))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());
    let owner = fs::metadata(d.dir.join("mail")).unwrap();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", owner.uid(), owner.gid()))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());
    served
}

const ALL: &str = ".[Google Mail].Alle Nachrichten";

#[test]
fn gmail_pull_stores_each_message_once_and_every_label_as_a_folder_of_links() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    let out = run(&env, &["pull", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archive = env.archive("g");

    // Bytes: each message once (not once per label), Trash and Spam not at all.
    let unique: u64 = {
        let st = store.lock().unwrap();
        st.messages[..18].iter().map(|m| m.body.len() as u64).sum()
    };
    let fetched = store.lock().unwrap().body_bytes;
    assert!(
        fetched as f64 <= 1.1 * unique as f64,
        "fetched {fetched} body bytes for {unique} unique"
    );
    assert_eq!(report["fetched"], 18, "{report}");
    assert_eq!(folder_files(&archive, ALL).len(), 18);
    assert!(!archive.join("mail/.[Google Mail].Papierkorb").exists());

    // Every label folder holds links to All Mail's files: the bytes are on disk once.
    let all: BTreeSet<u64> = inodes(&archive, ALL).into_iter().map(|(i, _)| i).collect();
    for folder in ["", ".[Google Mail].Gesendet", ".Work", ".Work.Projects"] {
        let files = inodes(&archive, folder);
        assert!(!files.is_empty(), "`{folder}` is empty");
        for (ino, _) in &files {
            assert!(all.contains(ino), "`{folder}` holds a copy, not a link");
        }
    }
    let nlinks: Vec<u64> = folder_files(&archive, ALL)
        .iter()
        .map(|p| fs::metadata(p).unwrap().nlink())
        .collect();
    assert!(nlinks.contains(&5), "a message with 4 labels: {nlinks:?}");

    // A stock Dovecot serving a copy shows Gmail's folders with Gmail's messages.
    let served = serve_copy(&archive);
    for (fake, served_name) in [
        ("INBOX", "INBOX"),
        (
            "[Google Mail]/Alle Nachrichten",
            "[Google Mail]/Alle Nachrichten",
        ),
        ("[Google Mail]/Gesendet", "[Google Mail]/Gesendet"),
        ("Work", "Work"),
        ("Work/Projects", "Work/Projects"),
    ] {
        assert_eq!(
            served_view(&served, served_name),
            fake_view(&store, fake),
            "`{served_name}` differs from Gmail's `{fake}`"
        );
    }

    // Labels and flags change on the server: no body is fetched again and
    // the served view matches again.
    {
        let mut st = store.lock().unwrap();
        st.relabel(3, &["Work"], &["\\Inbox"]);
        st.relabel(0, &[], &["Work"]);
        st.messages[5].flags.insert("\\Flagged".into());
        st.relabel(5, &["\\Sent"], &[]);
    }
    let before = store.lock().unwrap().body_bytes;
    let out = run(&env, &["pull", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fetched"], 0, "{report}");
    assert_eq!(
        store.lock().unwrap().body_bytes,
        before,
        "a body was fetched again"
    );
    let served = serve_copy(&archive);
    for (fake, served_name) in [
        ("INBOX", "INBOX"),
        ("[Google Mail]/Gesendet", "[Google Mail]/Gesendet"),
        ("Work", "Work"),
        (
            "[Google Mail]/Alle Nachrichten",
            "[Google Mail]/Alle Nachrichten",
        ),
    ] {
        assert_eq!(
            served_view(&served, served_name),
            fake_view(&store, fake),
            "after the changes, `{served_name}` differs from Gmail's `{fake}`"
        );
    }
}

#[test]
fn gmail_mode_off_backs_up_every_folder_and_no_all_mail_is_an_error_with_the_setting() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "gmail = false");
    run(&env, &["pull"]);
    // Every view is a folder of its own copies, Trash and Spam included.
    assert!(env
        .archive("g")
        .join("mail/.[Google Mail].Papierkorb")
        .is_dir());
    let inbox = inodes(&env.archive("g"), "");
    let all: BTreeSet<u64> = inodes(&env.archive("g"), ALL)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert!(inbox.iter().all(|(i, _)| !all.contains(i)));

    // Gmail mode with All Mail hidden: an error naming the setting, nothing written.
    store.lock().unwrap().hide_all = true;
    let env = TestEnv::new();
    config(&env, server.port, "");
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .arg("pull")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Show in IMAP"), "{err}");
    assert!(!env.archive("g").join("mail/cur").exists());
}

#[test]
fn expunge_refuses_gmail_and_deletes_nothing() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    run(&env, &["pull"]);
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(["expunge", "--older-than", "1d"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Gmail") && err.contains("hint:"), "{err}");
    let stores: Vec<String> = server
        .commands()
        .into_iter()
        .filter(|c| {
            c.split(' ')
                .skip(1)
                .take(2)
                .any(|w| w.eq_ignore_ascii_case("STORE") || w.eq_ignore_ascii_case("EXPUNGE"))
        })
        .collect();
    assert!(stores.is_empty(), "sent {stores:?}");
}
