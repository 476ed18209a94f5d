//! verify, ls, search, show and export against an archive pulled from the
//! real Dovecot by the real binary.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{self, dovecot, mail, TestEnv, User};

/// A message with its own Date:, From: and Subject:, and body lines that
/// an mbox writer must quote.
fn dated(n: u32, date: &str, from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\n\
         To: Bert Tester <bert@example.invalid>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <dated-{n}@imapbak.example.invalid>\r\n\
         \r\n\
         From the start of a line, message {n}.\r\n\
         >From an already quoted line.\r\n\
         >>From a doubly quoted one.\r\n\
         Fromage is not quoted.\r\n"
    )
    .into_bytes()
}

/// A user whose INBOX holds every kind of test message (malformed ones
/// included) plus four dated ones, and whose `Archive/2021` holds two more;
/// pulled into account `a` of a new TestEnv.
fn pulled() -> (User, TestEnv) {
    let user = dovecot().new_user("tools");
    let mut imap = user.imap();
    for (_, m) in mail::all_kinds() {
        imap.append("INBOX", &["\\Seen"], "14-May-2024 09:30:00 +0200", &m);
    }
    let dates = [
        (
            "Sat, 01 Jun 2019 12:00:00 +0000",
            "01-Jun-2019 12:00:00 +0000",
        ),
        (
            "Mon, 15 Mar 2021 08:00:00 +0100",
            "15-Mar-2021 08:00:00 +0100",
        ),
        (
            "Tue, 30 Nov 2021 18:45:00 -0500",
            "30-Nov-2021 18:45:00 -0500",
        ),
        (
            "Sun, 01 Jan 2023 00:30:00 +0000",
            "01-Jan-2023 00:30:00 +0000",
        ),
    ];
    for (i, (date, internal)) in dates.iter().enumerate() {
        let m = dated(
            i as u32,
            date,
            "Invoices <billing@shop.example.invalid>",
            &format!("Invoice {i}"),
        );
        imap.append("INBOX", &[], internal, &m);
    }
    imap.create("Archive/2021");
    for i in 10..12 {
        let m = dated(
            i,
            "Wed, 10 Feb 2021 10:00:00 +0000",
            "Carol <carol@example.invalid>",
            &format!("Archived note {i}"),
        );
        imap.append("Archive/2021", &[], "10-Feb-2021 10:00:00 +0000", &m);
    }
    imap.logout();
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    (user, env)
}

fn stdout_of(env: &TestEnv, args: &[&str]) -> (i32, String) {
    let out = env.cmd().args(args).output().expect("run imapbak");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "imapbak {args:?} exited {code}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`stdout_of`], with stderr as well: (exit code, stdout, stderr).
fn streams_of(env: &TestEnv, args: &[&str]) -> (i32, String, String) {
    let out = env.cmd().args(args).output().expect("run imapbak");
    let code = out.status.code().unwrap_or(-1);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (code, text(&out.stdout), text(&out.stderr))
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The part of a message file name that flag changes leave alone.
fn base_of(p: &Path) -> String {
    let n = name_of(p);
    n.split(":2,").next().unwrap().to_string()
}

#[test]
fn verify_passes_a_fresh_archive_and_names_each_of_four_kinds_of_damage() {
    let (_user, env) = pulled();
    let archive = env.archive("a");
    let (code, out) = stdout_of(&env, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("12 message files") && out.contains("all whole"),
        "{out}"
    );
    let before = snapshot(&archive);

    let files: Vec<PathBuf> = support::folder_files(&archive, "");
    assert!(files.len() >= 10);
    let (flipped, truncated, deleted) = (&files[0], &files[3], &files[6]);
    let mut bytes = fs::read(flipped).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    fs::write(flipped, &bytes).unwrap();
    let bytes = fs::read(truncated).unwrap();
    fs::write(truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fs::remove_file(deleted).unwrap();
    let stray = archive.join("mail/.Archive.2021/cur/notes.txt");
    fs::write(&stray, b"not mail").unwrap();
    let damaged = snapshot(&archive);

    // Each problem on stderr (what cron mails), the summary on stdout.
    let (code, summary, out) = streams_of(&env, &["verify"]);
    assert_eq!(code, 1, "{out}");
    for p in [flipped, truncated, deleted, &stray] {
        assert!(
            out.contains(&base_of(p)),
            "`{}` not named in:\n{out}",
            base_of(p)
        );
        assert!(!summary.contains(&base_of(p)), "on stdout:\n{summary}");
    }
    assert!(summary.contains("4 problems"), "{summary}");
    let line = |p: &Path| {
        out.lines()
            .find(|l| l.contains(&base_of(p)))
            .unwrap()
            .to_string()
    };
    assert!(line(deleted).contains("no file"), "{out}");
    assert!(line(&stray).contains("not a message file"), "{out}");
    assert!(line(truncated).contains("decompress"), "{out}");

    let (code, json) = stdout_of(&env, &["verify", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["problems"], 4);
    assert_eq!(v["exit_code"], 1);
    // verify never changes the archive, not even the state it disagrees with.
    assert_eq!(snapshot(&archive), damaged);
    assert_ne!(before, damaged);
}

/// Every path under `dir` with its content (files) or `dir` (directories).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
        if rel == "state/lock" {
            continue;
        }
        let content = if e.file_type().is_file() {
            fs::read(e.path()).unwrap()
        } else {
            b"dir".to_vec()
        };
        out.push((rel, content));
    }
    out
}

#[test]
fn verify_server_reports_exactly_the_three_new_messages() {
    let (user, env) = pulled();
    let (code, out) = stdout_of(&env, &["verify", "--server"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("everything on the server is archived"),
        "{out}"
    );

    let mut imap = user.imap();
    let a = imap.append("INBOX", &[], "", &mail::plain(100));
    let b = imap.append("INBOX", &[], "", &mail::plain(101));
    let c = imap.append("Archive/2021", &[], "", &mail::plain(102));
    // One archived message deleted on the server: informational only.
    imap.expunge_uid("INBOX", 1);
    imap.logout();

    let (code, summary, out) = streams_of(&env, &["verify", "--server"]);
    assert_eq!(code, 1, "{out}");
    let reported: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("not in the archive"))
        .collect();
    assert_eq!(reported.len(), 3, "{out}");
    for (mailbox, uid) in [("INBOX", a), ("INBOX", b), ("Archive/2021", c)] {
        let want = format!("`{mailbox}` UID {uid} ");
        assert!(
            reported.iter().any(|l| l.contains(&want)),
            "{want} missing:\n{out}"
        );
    }
    assert!(
        summary.contains("1 archived message(s) no longer on the server"),
        "{summary}"
    );

    let (_, json) = stdout_of(&env, &["verify", "--server", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let not_archived: usize = v["accounts"][0]["server"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["not_archived"].as_array().unwrap().len())
        .sum();
    assert_eq!(not_archived, 3);

    env.cmd().arg("pull").assert().success();
    let (code, out) = stdout_of(&env, &["verify", "--server"]);
    assert_eq!(code, 0, "{out}");
}

fn ids(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split("  ").next().unwrap().to_string())
        .collect()
}

#[test]
fn search_finds_by_encoded_subject_sender_and_dates_and_show_prints_the_servers_bytes() {
    let (user, env) = pulled();
    let server = user.imap().fetch_all("INBOX");
    // pull wrote the header index: a version line and one record per message.
    let index = env.archive("a").join("state/mailboxes/INBOX/headers");
    let text = fs::read_to_string(&index).unwrap();
    assert_eq!(text.lines().count(), 1 + server.len(), "{text}");
    assert!(text.contains("Grüße aus Köln – Übersicht"), "{text}");

    // A non-ASCII subject sent as RFC 2047 encoded words, searched in other case.
    for needle in ["grüße aus köln", "ÜBERSICHT"] {
        let (code, out) = stdout_of(&env, &["search", "--subject", needle]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count(), 1, "{needle}: {out}");
        assert!(out.contains("Grüße aus Köln – Übersicht"), "{out}");
        assert!(
            out.contains("Jürgen Tester <juergen@example.invalid>"),
            "{out}"
        );
    }
    let (_, out) = stdout_of(&env, &["search", "--from", "JÜRGEN"]);
    let hit = ids(&out);
    assert_eq!(hit.len(), 1, "{out}");

    // Sender substring, across mailboxes.
    let (_, out) = stdout_of(&env, &["search", "--from", "billing@SHOP"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    let (_, out) = stdout_of(
        &env,
        &["search", "--from", "carol", "--mailbox", "archive/*"],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| l.contains("Archive/2021")), "{out}");

    // A date range on the Date: header: 2021 holds invoices 1 and 2 and
    // the two archived notes; --mailbox narrows it to INBOX.
    let (_, out) = stdout_of(
        &env,
        &["search", "--since", "2021-01-01", "--before", "2022-01-01"],
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    let (_, out) = stdout_of(
        &env,
        &[
            "search",
            "--mailbox",
            "INBOX",
            "--since",
            "2021-01-01",
            "--before",
            "2022-01-01",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let subjects: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Invoice 1", "Invoice 2"]);

    // Malformed messages are found with what could be read.
    let (_, out) = stdout_of(&env, &["search", "--subject", "first header line starts"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out) = stdout_of(&env, &["search", "--limit", "3"]);
    assert_eq!(out.lines().count(), 3, "{out}");

    // show prints the exact bytes the server serves, for every message.
    let (_, all) = stdout_of(&env, &["search", "--mailbox", "INBOX", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all.as_array().unwrap().len(), server.len());
    for h in all.as_array().unwrap() {
        let id = h["id"].as_str().unwrap();
        let uid = h["uid"].as_u64().unwrap() as u32;
        let out = env.cmd().args(["show", id]).output().unwrap();
        assert!(out.status.success(), "show {id}");
        let want = &server.iter().find(|m| m.uid == uid).unwrap().body;
        assert!(
            out.stdout == *want,
            "show {id}: bytes differ from the server's"
        );
    }
    let out = env.cmd().args(["show", &hit[0]]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Sch=C3=B6ne"));

    // The header index is a cache: without it the answers are the same.
    let before = stdout_of(&env, &["search", "--from", "a"]).1;
    fs::remove_file(env.archive("a").join("state/mailboxes/INBOX/headers")).unwrap();
    assert_eq!(stdout_of(&env, &["search", "--from", "a"]).1, before);
    assert!(env
        .archive("a")
        .join("state/mailboxes/INBOX/headers")
        .exists());

    // Ids that are not there fail clearly.
    env.cmd()
        .args(["show", "a/INBOX/1/999999"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("no message"));
    env.cmd()
        .args(["show", "nonsense"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("not a message id"));
}

#[test]
fn export_mbox_reads_back_in_python_and_eml_holds_the_servers_bytes() {
    let (user, env) = pulled();
    let server: BTreeSet<Vec<u8>> = user
        .imap()
        .fetch_all("INBOX")
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(server.len(), 10);

    let mbox = env.path().join("inbox.mbox");
    env.cmd()
        .args(["export", "--mailbox", "INBOX", "--mbox"])
        .arg(&mbox)
        .assert()
        .success();
    let text = fs::read(&mbox).unwrap();
    assert!(
        text.windows(24).any(|w| w == b"\n>From the start of a li"),
        "From lines are quoted"
    );
    let out_dir = env.path().join("from-python");
    fs::create_dir(&out_dir).unwrap();
    let py = r#"
import mailbox, os, re, sys
box = mailbox.mbox(sys.argv[1], create=False)
n = 0
for key in box.keys():
    raw = box.get_bytes(key)
    raw = re.sub(rb'(?m)^>(>*From )', rb'\1', raw)
    with open(os.path.join(sys.argv[2], '%03d.eml' % n), 'wb') as f:
        f.write(raw)
    n += 1
print(n)
"#;
    let run = std::process::Command::new("python3")
        .args(["-c", py])
        .arg(&mbox)
        .arg(&out_dir)
        .output()
        .expect("run python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "10");
    let from_python: BTreeSet<Vec<u8>> = dir_files(&out_dir)
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    assert!(
        from_python == server,
        "mbox messages differ from the server's"
    );

    // A second export to the same file is refused, not appended or clobbered.
    env.cmd()
        .args(["export", "--mailbox", "INBOX", "--mbox"])
        .arg(&mbox)
        .assert()
        .failure()
        .stderr(predicates::str::contains("exists\nhint: pass --force"));

    let eml = env.path().join("eml");
    env.cmd()
        .args(["export", "--eml"])
        .arg(&eml)
        .assert()
        .success();
    let inbox = dir_files(&eml.join("a/INBOX"));
    let got: BTreeSet<Vec<u8>> = inbox.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(got == server, ".eml files differ from the server's");
    // Numbered in date order: the 2019 invoice comes first.
    assert!(
        name_of(&inbox[0]).starts_with("000001-20190601-"),
        "{inbox:?}"
    );
    assert_eq!(dir_files(&eml.join("a/Archive/2021")).len(), 2);
}

fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read `{}`: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn ls_shows_each_mailbox_and_the_totals_without_touching_the_archive() {
    let (_user, env) = pulled();
    let before = snapshot(&env.archive("a"));
    let (code, out) = stdout_of(&env, &["ls"]);
    assert_eq!(code, 0);
    let inbox = out.lines().find(|l| l.contains(" INBOX ")).expect(&out);
    assert!(inbox.contains(" 10 "), "{out}");
    let total = out.lines().find(|l| l.contains("(total)")).expect(&out);
    assert!(total.contains(" 12 "), "{out}");
    let (_, json) = stdout_of(&env, &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let acct = &v[0];
    assert_eq!(acct["total"]["messages"], 12);
    let raw: u64 = support::archived_files(&env.archive("a"))
        .iter()
        .map(|(_, p)| support::read_zstd(p).len() as u64)
        .sum();
    assert_eq!(acct["total"]["bytes"], raw);
    assert!(acct["total"]["bytes_on_disk"].as_u64().unwrap() > 0);
    assert!(acct["mailboxes"][0]["last_pull"].is_string());
    assert_eq!(snapshot(&env.archive("a")), before);
}
