//! One test body, three real servers: every test here runs against the
//! private Dovecot (no namespace prefix, `/`), Debian's Cyrus IMAP 3.6 and
//! Courier-IMAP 5 (both `INBOX.` and `.`), from tests/support. Each test is
//! written in the folder names a user sees (`Sent`, `Archive/2024/Q1`);
//! `ImapServer::mailbox` turns them into the server's (`INBOX.Sent`).
//!
//! The archive must hold those user names, whatever the server's personal
//! namespace (issue 13): `Sent` from Courier's `INBOX.Sent` is the archive
//! folder `.Sent`, like Dovecot's `Sent`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use imapbak::archive::names::folder_for;
use imapbak::archive::{letters_to_flags, Archive, FileName};
use serde_json::Value;

use crate::support::{self, mail, Imap, ImapServer, Kind, TestEnv, User};

type Srv = &'static dyn ImapServer;

/// The folders every test seeds, as a user names them.
const FOLDERS: &[&str] = &["INBOX", "Sent", "Archive/2024/Q1", "Entwürfe"];

/// Runs each listed body once per server, as `interop::<server>::<body>`.
macro_rules! per_server {
    ($($body:ident),* $(,)?) => {
        mod dovecot {
            $(#[test] fn $body() { super::$body(crate::support::dovecot()) })*
        }
        mod cyrus {
            $(#[test] fn $body() { super::$body(crate::support::cyrus()) })*
        }
        mod courier {
            $(#[test] fn $body() { super::$body(crate::support::courier()) })*
        }
    };
}

per_server!(
    pull_archives_every_message_byte_identical_with_flags_keywords_and_dates,
    archive_folders_are_named_without_the_namespace_prefix,
    rerun_fetches_nothing_then_exactly_three_new_messages_and_two_flag_changes,
    verify_server_finds_exactly_what_is_not_archived,
    uidvalidity_change_loses_nothing,
    restore_into_a_second_user_gives_the_same_folders_messages_flags_and_dates,
    expunge_older_than_removes_only_verified_old_mail,
    quota_reports_the_accounts_quota,
    no_change_pull_opens_one_connection,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs imapbak `args`, asserts exit code `code`, returns (stdout, stderr).
fn run(env: &TestEnv, args: &[&str], code: i32) -> (String, String) {
    let out = env.cmd().args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "imapbak {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs imapbak `args` with `--json` (exit 0) and returns the report.
fn run_json(env: &TestEnv, args: &[&str]) -> Value {
    let (stdout, stderr) = run(env, &[args, &["--json"]].concat(), 0);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn total(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {report:#}"))
}

fn env_for(s: Srv, user: &User) -> TestEnv {
    let env = TestEnv::new();
    env.write_config(&env.account_toml_on(s, "a", user, support::Tls::Implicit, ""));
    env
}

/// Creates the non-INBOX `FOLDERS` and seeds every kind of test message
/// with flags, keywords and distinct INTERNALDATEs. Returns the count.
fn seed(s: Srv, user: &User) -> u64 {
    let mut imap = user.imap();
    for f in &FOLDERS[1..] {
        imap.create(&s.mailbox(f));
    }
    let kinds = mail::all_kinds();
    let mut n = 0;
    for (i, f) in FOLDERS.iter().enumerate() {
        for (j, (_, body)) in kinds.iter().enumerate() {
            let flags: &[&str] = match (i + j) % 4 {
                0 => &[],
                1 => &["\\Seen"],
                2 => &["\\Seen", "\\Flagged", "$Important"],
                _ => &["\\Answered", "\\Draft", "Custom-Kw"],
            };
            let date = format!("{:02}-Mar-2021 1{}:0{}:00 +0100", 1 + j, i % 10, j % 10);
            imap.append(&s.mailbox(f), flags, &date, body);
            n += 1;
        }
    }
    imap.logout();
    n
}

/// The archive folder (directory under `mail/`) issue 13 wants for the
/// user's folder `path`: `.Archive.2024.Q1`, never `.INBOX.Archive...`.
fn wanted_folder(path: &str) -> String {
    folder_for(path, Some('/')).expect("mappable name")
}

/// The archive folder that holds `path` today: the wanted one, else the
/// one named after the server's full name (`.INBOX.Sent`, as pulls before
/// issue 13's fix store it), so the fidelity checks run either way; the
/// names themselves are asserted by
/// `archive_folders_are_named_without_the_namespace_prefix`.
fn folder_in_archive(s: Srv, archive: &Path, path: &str) -> String {
    let wanted = wanted_folder(path);
    if archive.join("mail").join(&wanted).join("cur").is_dir() || wanted.is_empty() {
        return wanted;
    }
    folder_for(&s.mailbox(path), Some(s.sep())).expect("mappable name")
}

/// Every archived message of a folder, by UID: (path, parsed name).
fn archived(archive: &Path, folder: &str) -> BTreeMap<u32, (PathBuf, FileName)> {
    let mut out = BTreeMap::new();
    for path in support::folder_files(archive, folder) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let parsed = FileName::parse(&name).unwrap_or_else(|| panic!("foreign file {name}"));
        let prev = out.insert(parsed.uid, (path, parsed));
        assert!(prev.is_none(), "two files for one UID in `{folder}`");
    }
    out
}

/// The archive holds exactly the server's messages of `path`: same UIDs,
/// identical bytes (`BODY[]`), same flags and keywords, INTERNALDATE as
/// mtime and in the name.
fn assert_folder_matches(s: Srv, archive: &Path, user: &User, path: &str) {
    let mailbox = s.mailbox(path);
    let server = user.imap().fetch_all(&mailbox);
    let folder = folder_in_archive(s, archive, path);
    let files = archived(archive, &folder);
    let keywords = Archive::at(archive)
        .folder(&folder)
        .load_keywords()
        .unwrap();
    assert_eq!(
        files.keys().copied().collect::<Vec<_>>(),
        server.iter().map(|m| m.uid).collect::<Vec<_>>(),
        "{:?}: UIDs of `{mailbox}` (archive folder `{folder}`)",
        s.kind()
    );
    for m in &server {
        let (file, name) = &files[&m.uid];
        assert!(
            support::read_zstd(file) == m.body,
            "{:?}: bytes of UID {} in `{mailbox}` differ from BODY[]",
            s.kind(),
            m.uid
        );
        assert_eq!(name.size, m.body.len() as u64);
        let mut want = m.flags.clone();
        want.sort();
        let mut got = letters_to_flags(&name.flags, &keywords);
        got.sort();
        assert_eq!(got, want, "flags of UID {} in `{mailbox}`", m.uid);
        let mtime = fs::metadata(file)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(mtime, m.internaldate_secs(), "INTERNALDATE (mtime)");
        assert_eq!(name.secs, m.internaldate_secs(), "INTERNALDATE (name)");
    }
}

/// A message as a user sees it: bytes, flags (sorted, no \Recent) and
/// INTERNALDATE.
type Seen = (Vec<u8>, Vec<String>, i64);

fn contents(imap: &mut Imap, mailbox: &str) -> Vec<Seen> {
    let mut out: Vec<Seen> = imap
        .fetch_all(mailbox)
        .into_iter()
        .map(|m| {
            let secs = m.internaldate_secs();
            let mut flags = m.flags;
            flags.sort();
            (m.body, flags, secs)
        })
        .collect();
    out.sort();
    out
}

/// Every selectable mailbox of `user` with its messages.
fn everything(user: &User) -> BTreeMap<String, Vec<Seen>> {
    let mut imap = user.imap();
    let names = imap.list();
    names
        .into_iter()
        .map(|n| {
            let c = contents(&mut imap, &n);
            (n, c)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The bodies
// ---------------------------------------------------------------------------

fn pull_archives_every_message_byte_identical_with_flags_keywords_and_dates(s: Srv) {
    let user = s.new_user("io-fidelity");
    let seeded = seed(s, &user);
    let env = env_for(s, &user);
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: pull failed:\n{}",
        s.kind(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(total(&json(&out), "fetched"), seeded);
    for f in FOLDERS {
        assert_folder_matches(s, &env.archive("a"), &user, f);
    }
}

fn archive_folders_are_named_without_the_namespace_prefix(s: Srv) {
    let user = s.new_user("io-names");
    seed(s, &user);
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);
    let mail_dir = env.archive("a").join("mail");
    let mut folders: Vec<String> = fs::read_dir(&mail_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && mail_dir.join(n).join("cur").is_dir())
        .collect();
    folders.sort();
    for f in &FOLDERS[1..] {
        let want = wanted_folder(f);
        assert!(
            folders.contains(&want),
            "{:?}: `{}` (server name `{}`) should be archived as `{want}`; archive folders: {folders:?}",
            s.kind(),
            f,
            s.mailbox(f)
        );
    }
    assert!(
        !folders.iter().any(|f| f.starts_with(".INBOX.")),
        "{:?}: the namespace prefix leaked into the archive: {folders:?}",
        s.kind()
    );
    // INBOX is the Maildir root, as from any server.
    assert_eq!(
        support::folder_files(&env.archive("a"), "").len(),
        mail::all_kinds().len()
    );
}

fn rerun_fetches_nothing_then_exactly_three_new_messages_and_two_flag_changes(s: Srv) {
    let user = s.new_user("io-rerun");
    seed(s, &user);
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);

    let out = env.cmd().args(["-vv", "pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("BODY.PEEK"),
        "{:?}: a no-change run fetched bodies:\n{stderr}",
        s.kind()
    );
    let report = json(&out);
    assert_eq!(total(&report, "fetched"), 0, "{:?}: {report:#}", s.kind());
    assert_eq!(
        total(&report, "flag_updates"),
        0,
        "{:?}: {report:#}",
        s.kind()
    );

    let mut imap = user.imap();
    let sent = s.mailbox("Sent");
    imap.append(
        "INBOX",
        &[],
        "02-Apr-2022 10:00:00 +0000",
        &mail::plain(500),
    );
    imap.append("INBOX", &["\\Seen"], "", &mail::plain(501));
    imap.append(&sent, &["Custom-Kw"], "", &mail::plain(502));
    // UID 1 of INBOX had no flags, UID 1 of Sent \Seen only (see `seed`).
    imap.store("INBOX", 1, "+FLAGS (\\Flagged)");
    imap.store(&sent, 1, "+FLAGS ($Important)");
    imap.logout();

    let report = run_json(&env, &["pull"]);
    assert_eq!(total(&report, "fetched"), 3, "{:?}: {report:#}", s.kind());
    assert_eq!(
        total(&report, "flag_updates"),
        2,
        "{:?}: {report:#}",
        s.kind()
    );
    for f in FOLDERS {
        assert_folder_matches(s, &env.archive("a"), &user, f);
    }
}

fn verify_server_finds_exactly_what_is_not_archived(s: Srv) {
    let user = s.new_user("io-verify");
    seed(s, &user);
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);
    let (out, _) = run(&env, &["verify", "--server"], 0);
    assert!(
        out.contains("everything on the server is archived"),
        "{:?}: {out}",
        s.kind()
    );

    let mut imap = user.imap();
    imap.append("INBOX", &[], "", &mail::plain(600));
    imap.append(&s.mailbox("Archive/2024/Q1"), &[], "", &mail::plain(601));
    imap.logout();
    let (_, out) = run(&env, &["verify", "--server"], 1);
    let reported = out.lines().filter(|l| l.contains("not in the archive"));
    assert_eq!(reported.count(), 2, "{:?}: {out}", s.kind());

    run(&env, &["pull", "--quiet"], 0);
    run(&env, &["verify", "--server"], 0);
}

fn uidvalidity_change_loses_nothing(s: Srv) {
    let user = s.new_user("io-uidvalidity");
    let mut imap = user.imap();
    let boxname = s.mailbox("Box");
    imap.create(&boxname);
    let date = "01-Feb-2022 10:00:00 +0000";
    for n in 0..3 {
        imap.append(&boxname, &[], date, &mail::plain(n));
    }
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);
    let archive = env.archive("a");
    let folder = folder_in_archive(s, &archive, "Box");
    let before = support::folder_messages(&archive, &folder);
    assert_eq!(before.len(), 3);
    let (uv_before, _, _) = imap.status(&boxname);

    // Recreate the mailbox: two old messages come back, one is new. Servers
    // derive UIDVALIDITY from the clock: let a second pass.
    imap.delete(&boxname);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    imap.create(&boxname);
    imap.append(&boxname, &[], date, &mail::plain(0));
    imap.append(&boxname, &[], date, &mail::plain(1));
    imap.append(&boxname, &[], date, &mail::plain(99));
    let (uv_after, _, _) = imap.status(&boxname);
    imap.logout();
    assert_ne!(uv_before, uv_after, "{:?} kept the UIDVALIDITY", s.kind());

    run(&env, &["pull", "--quiet"], 0);
    let after = support::folder_messages(&archive, &folder_in_archive(s, &archive, "Box"));
    for m in &before {
        assert!(
            after.contains(m),
            "{:?}: an archived message was lost",
            s.kind()
        );
    }
    assert!(after.contains(&mail::plain(99)));
    assert_eq!(
        after.len(),
        4,
        "{:?}: 3 old + 1 new, no second copies",
        s.kind()
    );
    let report = run_json(&env, &["pull"]);
    assert_eq!(total(&report, "fetched"), 0);
}

fn restore_into_a_second_user_gives_the_same_folders_messages_flags_and_dates(s: Srv) {
    let (a, b) = (s.new_user("io-rt-a"), s.new_user("io-rt-b"));
    let seeded = seed(s, &a);
    let env = TestEnv::new();
    let mut toml = env.account_toml_on(s, "a", &a, support::Tls::Implicit, "");
    toml.push_str(&env.account_toml_on(s, "b", &b, support::Tls::Implicit, ""));
    env.write_config(&toml);
    run(&env, &["pull", "--account", "a", "--quiet"], 0);

    let report = run_json(&env, &["restore", "-a", "a", "--to", "b"]);
    assert_eq!(report["appended"], seeded, "{:?}: {report:#}", s.kind());
    let want = everything(&a);
    let have = everything(&b);
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{:?}: folder names after restore",
        s.kind()
    );
    for (name, w) in &want {
        let h = &have[name];
        assert_eq!(
            w.len(),
            h.len(),
            "{:?}: message count of `{name}`",
            s.kind()
        );
        for (w, h) in w.iter().zip(h) {
            assert!(w.0 == h.0, "{:?}: bytes differ in `{name}`", s.kind());
            assert_eq!(
                (&w.1, w.2),
                (&h.1, h.2),
                "{:?}: flags/date in `{name}`",
                s.kind()
            );
        }
    }

    let report = run_json(&env, &["restore", "-a", "a", "--to", "b"]);
    assert_eq!(report["appended"], 0, "{:?}: rerun: {report:#}", s.kind());
    assert_eq!(everything(&b), have, "{:?}: a rerun changed B", s.kind());
}

fn expunge_older_than_removes_only_verified_old_mail(s: Srv) {
    let user = s.new_user("io-expunge");
    let mut imap = user.imap();
    let old_box = s.mailbox("Archive/2019");
    imap.create(&old_box);
    let old = |n: u32| format!("{n:02}-Jan-2019 10:00:00 +0000");
    for n in 1..=3 {
        imap.append("INBOX", &["\\Seen"], &old(n), &mail::plain(n));
    }
    imap.append("INBOX", &["\\Seen"], "", &mail::plain(4));
    imap.append(&old_box, &["\\Seen"], &old(9), &mail::latin1_8bit());
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);
    // Old but never archived: must stay.
    let late = imap.append("INBOX", &["\\Seen"], &old(20), &mail::plain(20));
    imap.logout();

    let report = run_json(&env, &["expunge", "--older-than", "1y"]);
    assert_eq!(report["expunged"], 4, "{:?}: {report:#}", s.kind());
    let mut imap = user.imap();
    let inbox: Vec<u32> = imap.fetch_all("INBOX").iter().map(|m| m.uid).collect();
    assert_eq!(inbox, [4, late], "{:?}: what INBOX kept", s.kind());
    assert!(imap.fetch_all(&old_box).is_empty());
    imap.logout();
    // The archive still holds all five archived messages.
    let archive = env.archive("a");
    assert_eq!(support::folder_files(&archive, "").len(), 4);
    assert_eq!(
        support::folder_files(&archive, &folder_in_archive(s, &archive, "Archive/2019")).len(),
        1
    );
}

fn quota_reports_the_accounts_quota(s: Srv) {
    let user = s.new_user("io-quota");
    let mut imap = user.imap();
    imap.append("INBOX", &[], "", &mail::plain(1));
    imap.logout();
    let env = env_for(s, &user);
    let report = run_json(&env, &["quota"]);
    let a = &report["accounts"][0];
    assert_eq!(a["supported"], true, "{:?}: {report:#}", s.kind());
    if s.kind() == Kind::Cyrus {
        // autocreate_quota in scripts/imapservers.sh: 10 GiB (the server
        // counts KiB; JSON gives bytes).
        let storage = a["roots"][0]["resources"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "STORAGE"))
            .unwrap_or_else(|| panic!("no STORAGE in {report:#}"));
        assert_eq!(storage["limit"], 10_485_760u64 * 1024, "{report:#}");
    }
}

fn no_change_pull_opens_one_connection(s: Srv) {
    let user = s.new_user("io-one-conn");
    seed(s, &user);
    let env = env_for(s, &user);
    run(&env, &["pull", "--quiet"], 0);
    // Issue 14 counts the round trips the client waits for: through a proxy
    // that counts its turns, as the benchmark's delay line does.
    let proxy = crate::fakes::TurnProxy::start(s.imaps_port());
    let direct = env.account_toml_on(s, "a", &user, support::Tls::Implicit, "");
    let through = direct.replace(
        &format!("port = {}\n", s.imaps_port()),
        &format!("port = {}\n", proxy.port),
    );
    assert_ne!(direct, through);
    env.write_config(&through);
    // Issue 13: "The no-change pull opens exactly one connection whatever
    // the scheduling" (also where, as on Courier, no LIST-STATUS proves a
    // mailbox unchanged and each one must be examined). Several runs: the
    // count must not depend on how the workers race.
    // Where the listing can prove a mailbox unchanged (LIST-STATUS, or
    // STATUS with CONDSTORE: Dovecot, Cyrus) that is one connection. Where it
    // cannot (Courier: neither), every mailbox has work (its flags must be
    // read), so every worker connects: as many connections as jobs, the
    // same number each run.
    let courier = s.kind() == support::servers::Kind::Courier;
    let expected = if courier { 4 } else { 1 };
    for attempt in 0..3 {
        let before = proxy.turns().len();
        let (_, stderr) = run(&env, &["-vv", "pull", "--jobs", "4"], 0);
        // imapbak logs one line per TLS connection at -v.
        let connections = stderr.matches(" over TLS").count();
        let commands: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("debug: > "))
            .collect();
        if attempt == 0 {
            // For the table: what a no-change pull sends.
            eprintln!("{:?} no-change pull sends: {commands:?}", s.kind());
        }
        assert_eq!(
            connections,
            expected,
            "{:?}: a no-change pull (run {attempt}) opened {connections} connections; it sent {commands:?}",
            s.kind()
        );
        // Without CONDSTORE (Courier) `UID FETCH 1:* (UID FLAGS)` is how
        // flag changes show; bodies are never fetched.
        assert!(
            !commands.iter().any(|c| c.contains("BODY")),
            "{:?}: a no-change pull fetched bodies: {commands:?}",
            s.kind()
        );
        // Issue 14: LOGIN goes out before the greeting is read, on every
        // server (Courier included: it must still log in).
        let login = stderr.find("debug: > rx0 LOGIN ...");
        let greeting = stderr.find("debug: greeting after");
        assert!(
            login.is_some() && login < greeting,
            "{:?}: LOGIN waited for the greeting:\n{stderr}",
            s.kind()
        );
        // The LOGIN reply's capabilities do (Dovecot, Cyrus); Courier's
        // reply has none, so there CAPABILITY and NAMESPACE follow it.
        let asked = commands.contains(&"rx0 CAPABILITY");
        assert_eq!(asked, courier, "{:?}: it sent {commands:?}", s.kind());
        let turns = proxy.turns()[before..].to_vec();
        assert_eq!(turns.len(), connections, "{turns:?}");
        if attempt == 0 {
            eprintln!(
                "{:?} no-change pull, turns per connection: {turns:?}",
                s.kind()
            );
        }
        if !courier {
            // The TLS handshake's two flights (the second carrying LOGIN),
            // NAMESPACE + LIST-STATUS, and LOGOUT, not waited for: with TCP's
            // own, the 5 round trips. The greeting is no turn of its
            // own (it was, before: 5).
            assert_eq!(
                turns,
                [4],
                "{:?}: the client's turns (run {attempt}); it sent {commands:?}",
                s.kind()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Migration between servers with different namespaces
// ---------------------------------------------------------------------------

/// The name a user sees for the server's `name`: without the personal
/// namespace prefix, levels joined by `/`; INBOX stays INBOX.
fn user_path(s: Srv, name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        return "INBOX".into();
    }
    let rest = name.strip_prefix(s.prefix()).unwrap_or(name);
    rest.chars()
        .map(|c| if c == s.sep() { '/' } else { c })
        .collect()
}

/// Every selectable folder of `user`, by the name a user sees.
fn as_user_sees(s: Srv, user: &User) -> BTreeMap<String, Vec<Seen>> {
    everything(user)
        .into_iter()
        .map(|(n, c)| (user_path(s, &n), c))
        .collect()
}

/// Pulls a seeded account from `from`, restores it into a new account on
/// `to`, and checks that a user sees the same folders (`Sent`,
/// `Archive/2024/Q1`; INBOX as INBOX) with the same messages, flags and
/// dates. The target may also have folders it gives every new user (empty)
/// and the empty parents it makes for nested folders.
fn migrate(from: Srv, to: Srv) {
    let a = from.new_user("io-mig-a");
    let b = to.new_user("io-mig-b");
    let seeded = seed(from, &a);
    let baseline = as_user_sees(to, &b);
    let env = TestEnv::new();
    let mut toml = env.account_toml_on(from, "a", &a, support::Tls::Implicit, "");
    toml.push_str(&env.account_toml_on(to, "b", &b, support::Tls::Implicit, ""));
    env.write_config(&toml);
    run(&env, &["pull", "--account", "a", "--quiet"], 0);
    let (stdout, stderr) = run(&env, &["restore", "-a", "a", "--to", "b", "--json"], 0);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let route = format!(
        "{:?} ({:?}) -> {:?} ({:?})",
        from.kind(),
        from.prefix(),
        to.kind(),
        to.prefix()
    );
    assert_eq!(report["appended"], seeded, "{route}: {report:#}");

    let want = as_user_sees(from, &a);
    let have = as_user_sees(to, &b);
    for (name, w) in &want {
        let h = have.get(name).unwrap_or_else(|| {
            panic!(
                "{route}: `{name}` missing on the target; it shows {:?}",
                have.keys().collect::<Vec<_>>()
            )
        });
        assert_eq!(w.len(), h.len(), "{route}: message count of `{name}`");
        for (w, h) in w.iter().zip(h) {
            assert!(w.0 == h.0, "{route}: bytes differ in `{name}`");
            assert_eq!((&w.1, w.2), (&h.1, h.2), "{route}: flags/date in `{name}`");
        }
    }
    for (name, h) in &have {
        if want.contains_key(name) || baseline.contains_key(name) {
            continue;
        }
        let parent = want.keys().any(|w| w.starts_with(&format!("{name}/")));
        assert!(
            parent && h.is_empty(),
            "{route}: unexpected folder `{name}` on the target ({} messages); source shows {:?}",
            h.len(),
            want.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn migrate_courier_to_cyrus_without_prefix() {
    migrate(support::courier(), support::cyrus_flat());
}

#[test]
fn migrate_courier_to_dovecot() {
    migrate(support::courier(), support::dovecot());
}

#[test]
fn migrate_cyrus_to_dovecot() {
    migrate(support::cyrus(), support::dovecot());
}

#[test]
fn migrate_dovecot_to_courier() {
    migrate(support::dovecot(), support::courier());
}

#[test]
fn migrate_cyrus_without_prefix_to_courier() {
    migrate(support::cyrus_flat(), support::courier());
}

// ---------------------------------------------------------------------------
// Dovecot announcing a provider's capabilities
// ---------------------------------------------------------------------------

/// Runs `imapbak -vv ARGS --json` (exit 0): the report and every command
/// the `-vv` log shows it sent (`> ...` lines).
fn run_vv(env: &TestEnv, args: &[&str]) -> (Value, Vec<String>) {
    let (stdout, stderr) = run(env, &[&["-vv"], args, &["--json"]].concat(), 0);
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let sent = stderr
        .lines()
        .filter_map(|l| l.split_once("> ").map(|(_, c)| c.to_string()))
        .collect();
    (report, sent)
}

/// Pull, no-change rerun, rerun after one new message and one flag change,
/// restore into a second user, expunge: each works against `s`. Returns
/// every command sent.
fn provider_round_trip(s: &'static support::Dovecot) -> Vec<String> {
    let srv: Srv = s;
    let (a, b) = (s.new_user("io-prov-a"), s.new_user("io-prov-b"));
    let seeded = seed(srv, &a);
    let env = TestEnv::new();
    // A Dovecot announcing Gmail's list (X-GM-EXT-1 included) has none of
    // Gmail's semantics: Gmail mode is off here; tests/integration/gmail.rs
    // covers it against a fake Gmail.
    let mut toml = env.account_toml_on(s, "a", &a, support::Tls::Implicit, "gmail = false");
    toml.push_str(&env.account_toml_on(s, "b", &b, support::Tls::Implicit, "gmail = false"));
    env.write_config(&toml);
    let mut sent = Vec::new();

    let (report, cmds) = run_vv(&env, &["pull", "--account", "a"]);
    sent.extend(cmds);
    assert_eq!(total(&report, "fetched"), seeded, "{report:#}");
    for f in FOLDERS {
        assert_folder_matches(srv, &env.archive("a"), &a, f);
    }
    let (report, cmds) = run_vv(&env, &["pull", "--account", "a"]);
    sent.extend(cmds);
    assert_eq!(total(&report, "fetched"), 0, "{report:#}");
    assert_eq!(total(&report, "flag_updates"), 0, "{report:#}");
    let mut imap = a.imap();
    imap.append("INBOX", &[], "", &mail::plain(700));
    imap.store("INBOX", 1, "+FLAGS (\\Flagged)");
    imap.logout();
    let (report, cmds) = run_vv(&env, &["pull", "--account", "a"]);
    sent.extend(cmds);
    assert_eq!(total(&report, "fetched"), 1, "{report:#}");
    assert_eq!(total(&report, "flag_updates"), 1, "{report:#}");

    let (report, cmds) = run_vv(&env, &["restore", "-a", "a", "--to", "b"]);
    sent.extend(cmds);
    assert_eq!(report["appended"], seeded + 1, "{report:#}");
    assert_eq!(everything(&b), everything(&a), "B after the restore");

    let before = everything(&a);
    let (report, cmds) = run_vv(&env, &["expunge", "-a", "a", "--older-than", "1y"]);
    sent.extend(cmds);
    let after = everything(&a);
    let kept: usize = after.values().map(Vec::len).sum();
    let had: usize = before.values().map(Vec::len).sum();
    assert_eq!(
        report["expunged"].as_u64().unwrap() as usize,
        had - kept,
        "{report:#}"
    );
    assert!(kept < had, "nothing was expunged: {report:#}");
    // The seed dates are from 2021; what stays is what the default keeps.
    for (name, msgs) in &after {
        for m in msgs {
            let flags = &m.1;
            assert!(
                flags.iter().any(|f| f == "\\Flagged") || !flags.iter().any(|f| f == "\\Seen"),
                "`{name}` kept a seen, unflagged old message: {flags:?}"
            );
        }
    }
    sent
}

fn assert_never_sent(provider: &str, sent: &[String], unannounced: &[&str]) {
    for word in unannounced {
        let used: Vec<&String> = sent.iter().filter(|c| c.contains(word)).collect();
        assert!(
            used.is_empty(),
            "{provider} does not announce it, yet imapbak sent `{word}`: {used:?}"
        );
    }
}

#[test]
fn microsoft_365_capabilities_pull_restore_expunge_use_only_what_is_announced() {
    let s = support::dovecot_m365();
    let sent = provider_round_trip(s);
    // `RETURN (` covers LIST-STATUS, SPECIAL-USE listing and ESEARCH.
    assert_never_sent(
        "Microsoft 365",
        &sent,
        &[
            "RETURN (",
            "CHANGEDSINCE",
            "CONDSTORE",
            "MODSEQ",
            "QRESYNC",
            "COMPRESS",
            "GETQUOTA",
        ],
    );
    // Without LIST-STATUS every mailbox is looked at another way.
    assert!(
        sent.iter()
            .any(|c| c.starts_with("STATUS ") || c.starts_with("EXAMINE ")),
        "{sent:?}"
    );
    // No QUOTA announced: quota says so instead of failing.
    let user = s.new_user("io-m365-quota");
    let env = env_for(s, &user);
    let (report, sent) = run_vv(&env, &["quota"]);
    assert_eq!(report["accounts"][0]["supported"], false, "{report:#}");
    assert_never_sent("Microsoft 365", &sent, &["GETQUOTA"]);
}

#[test]
fn gmail_capabilities_pull_restore_expunge_use_only_what_is_announced() {
    let sent = provider_round_trip(support::dovecot_gmail());
    assert_never_sent("Gmail", &sent, &["QRESYNC"]);
    // LITERAL-: a non-synchronizing literal only up to 4096 bytes
    // (RFC 7888); `seed` includes a message larger than that.
    let too_big: Vec<&String> = sent
        .iter()
        .filter(|c| {
            c.rsplit_once('{')
                .and_then(|(_, n)| n.strip_suffix("+}"))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n > 4096)
        })
        .collect();
    assert!(
        too_big.is_empty(),
        "non-synchronizing literals over 4096 bytes under LITERAL-: {too_big:?}"
    );
    assert!(
        sent.iter().any(|c| c.starts_with("APPEND ")),
        "the -vv log shows no APPEND; cannot check literals: {sent:?}"
    );
}

// ---------------------------------------------------------------------------
// Messages a server refuses or rewrites
// ---------------------------------------------------------------------------

/// Cyrus refuses some messages Dovecot takes (a NUL byte, bare LF line
/// ends; PROVIDERS.md, issue 13). Each is reported in the server's words,
/// the rest is restored, and a rerun adds nothing that already landed
/// (also for a message the server rewrote at APPEND).
#[test]
fn cyrus_refuses_some_messages_in_its_own_words_and_the_restore_goes_on() {
    let c = support::cyrus();
    let a = support::dovecot().new_user("io-refuse-a");
    let b = c.new_user("io-refuse-b");
    let env = TestEnv::new();
    let mut toml = env.account_toml("a", &a, "");
    toml.push_str(&env.account_toml_on(c, "b", &b, support::Tls::Implicit, ""));
    env.write_config(&toml);

    // The archive is written directly: a pull from Dovecot never holds a
    // NUL byte (Dovecot serves it as 0x80).
    let archive = Archive::at(&env.archive("a"));
    archive.create().unwrap();
    let inbox = archive.folder("");
    inbox.create().unwrap();
    let bodies: [&[u8]; 3] = [
        b"From: a@example.invalid\r\nSubject: fine\r\nMessage-ID: <fine@x.invalid>\r\n\r\nfine\r\n",
        b"From: a@example.invalid\r\nSubject: nul\r\nMessage-ID: <nul@x.invalid>\r\n\r\nnul \0 byte\r\n",
        b"From: a@example.invalid\nSubject: bare lf\nMessage-ID: <lf@x.invalid>\n\nbare line feeds\n",
    ];
    let mut entries = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let w = inbox
            .write_message(7, i as u32 + 1, 1_600_000_000 + i as i64, "S", body, 3)
            .unwrap();
        entries.push(w.entry);
    }
    inbox.sync().unwrap();
    inbox.journal(&entries).unwrap();

    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = json(&out);
    let landed = b.imap().fetch_all("INBOX").len();
    // Cyrus 3.6's words, as this test saw them.
    assert_eq!(
        landed, 1,
        "only the plain message can land on Cyrus\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for words in [
        "Message contains NUL characters",
        "Message contains bare newlines",
    ] {
        assert!(
            stderr.contains(words),
            "`{words}` is not in the errors:\n{stderr}"
        );
    }
    assert_eq!(report["mailboxes"][0]["appended"], 1, "{report:#}");

    // A rerun reports the same refusals and appends nothing again.
    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        b.imap().fetch_all("INBOX").len(),
        landed,
        "the rerun appended again what had landed"
    );
}

/// A Courier user without a quota file gets `* QUOTA "ROOT"` with no
/// resource list (seen on Courier-IMAP 5 here); quota and expunge must
/// read it as "no limit", not fail the connection.
#[test]
fn courier_without_a_quota_file_has_no_limit_and_expunge_still_runs() {
    let c = support::courier();
    let user = c.new_user("io-noquota");
    let mut imap = user.imap();
    imap.append("INBOX", &[], "01-Jan-2020 10:00:00 +0000", &mail::plain(1));
    imap.logout();
    let size_file = user.maildir.join("maildirsize");
    if size_file.exists() {
        fs::remove_file(&size_file).unwrap();
    }
    let env = env_for(c, &user);
    let report = run_json(&env, &["quota"]);
    let roots = report["accounts"][0]["roots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        roots
            .iter()
            .all(|r| r["resources"].as_array().is_none_or(|v| v.is_empty())),
        "{report:#}"
    );
    run(&env, &["pull", "--quiet"], 0);
    let report = run_json(&env, &["expunge", "--older-than", "1y"]);
    assert_eq!(total(&report, "expunged"), 1, "{report:#}");
}
