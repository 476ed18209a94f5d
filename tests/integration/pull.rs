//! `imapbak pull` against a real Dovecot: fidelity, incremental runs, crash
//! safety, UIDVALIDITY changes, serving the archive with a stock Dovecot,
//! refusals before anything is written, and the lock.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use imapbak::archive::names::folder_for;
use imapbak::archive::{letters_to_flags, Archive, FileName};

use crate::support::{self, dovecot, mail, TestEnv, User};

/// The mailboxes of the issue, as the server names them (separator '/').
const MAILBOXES: &[&str] = &[
    "INBOX",
    "Archive/2024/Q1",
    "Entwürfe",
    "Отправленные",
    "R&D",
    "with spaces in it",
];

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn total(report: &serde_json::Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {report}"))
}

/// Seeds every kind of test message into the mailboxes, with flags,
/// a keyword and distinct INTERNALDATEs; one message is over 20 MB.
fn seed(user: &User) {
    let mut imap = user.imap();
    for mb in &MAILBOXES[1..] {
        imap.create(mb);
    }
    let kinds = mail::all_kinds();
    for (i, mb) in MAILBOXES.iter().enumerate() {
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
    imap.append(
        "Archive/2024/Q1",
        &["\\Seen"],
        "05-Jan-2024 08:00:00 +0000",
        &mail::big(21),
    );
}

/// Every archived message of `mailbox`, by UID: (path, parsed name).
fn archived(archive: &Path, mailbox: &str) -> BTreeMap<u32, (PathBuf, FileName)> {
    let folder = folder_for(mailbox, Some('/')).expect("mappable name");
    let mut out = BTreeMap::new();
    for path in support::folder_files(archive, &folder) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let parsed = FileName::parse(&name).unwrap_or_else(|| panic!("foreign file {name}"));
        let prev = out.insert(parsed.uid, (path, parsed));
        assert!(prev.is_none(), "two files for one UID in `{mailbox}`");
    }
    out
}

/// Asserts that the archive holds exactly the server's messages of
/// `mailbox`: same UIDs, identical bytes, same flags, keywords and
/// INTERNALDATE (mtime and name).
fn assert_mailbox_matches(archive: &Path, user: &User, mailbox: &str) {
    let server = user.imap().fetch_all(mailbox);
    let files = archived(archive, mailbox);
    let folder = Archive::at(archive).folder(&folder_for(mailbox, Some('/')).unwrap());
    let keywords = folder.load_keywords().unwrap();
    assert_eq!(
        files.keys().copied().collect::<Vec<_>>(),
        server.iter().map(|m| m.uid).collect::<Vec<_>>(),
        "UIDs of `{mailbox}`"
    );
    for m in &server {
        let (path, name) = &files[&m.uid];
        let bytes = support::read_zstd(path);
        assert!(
            bytes == m.body,
            "bytes of UID {} in `{mailbox}` differ",
            m.uid
        );
        assert_eq!(name.size, m.body.len() as u64);
        let mut want = m.flags.clone();
        want.sort();
        let mut got = letters_to_flags(&name.flags, &keywords);
        got.sort();
        assert_eq!(got, want, "flags of UID {} in `{mailbox}`", m.uid);
        let meta = fs::metadata(path).unwrap();
        let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            mtime.as_secs() as i64,
            m.internaldate_secs(),
            "INTERNALDATE"
        );
        assert_eq!(name.secs, m.internaldate_secs());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "file mode");
    }
}

#[test]
fn pull_archives_every_message_byte_identical_with_flags_keywords_and_dates() {
    let user = dovecot().new_user("fidelity");
    seed(&user);
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let archive = env.archive("a");
    let kinds = mail::all_kinds().len() as u64;
    assert_eq!(
        total(&report, "fetched"),
        kinds * MAILBOXES.len() as u64 + 1
    );
    for mb in MAILBOXES {
        assert_mailbox_matches(&archive, &user, mb);
    }
    // Every selectable mailbox has a folder, even empty ones (Dovecot makes
    // Drafts, Sent, Trash); \Noselect parents have none.
    let mail_dir = archive.join("mail");
    for folder in [".Drafts", ".Sent", ".Trash", ".Archive.2024.Q1", ".R&-D"] {
        assert!(mail_dir.join(folder).join("cur").is_dir(), "{folder}");
        assert!(mail_dir.join(folder).join("maildirfolder").is_file());
    }
    assert!(!mail_dir.join(".Archive").exists());
    assert!(!mail_dir.join(".Archive.2024").exists());
    for dir in [&archive, &mail_dir, &mail_dir.join(".Entw&APw-rfe/cur")] {
        assert_eq!(fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    }
    // Pulling never sets \Seen on the server.
    let unseen_before = user.imap().fetch_all("R&D");
    assert!(unseen_before
        .iter()
        .any(|m| !m.flags.contains(&"\\Seen".into())));
}

#[test]
fn second_pull_transfers_no_bodies_then_fetches_exactly_the_new_and_renames_the_changed() {
    let user = dovecot().new_user("incremental");
    let mut imap = user.imap();
    imap.create("Box");
    let mut uids = Vec::new();
    for n in 0..10 {
        uids.push(imap.append("Box", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n)));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();

    let out = env.cmd().args(["-vv", "pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("BODY.PEEK"),
        "a no-change run fetched bodies:\n{stderr}"
    );
    assert!(
        !stderr.contains("EXAMINE"),
        "a no-change run opened a mailbox:\n{stderr}"
    );
    let report = json(&out);
    assert_eq!(total(&report, "fetched"), 0);
    assert_eq!(total(&report, "flag_updates"), 0);

    // The human summary says so in one line.
    let out = env.cmd().arg("pull").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("pull: nothing new in"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for n in 10..15 {
        imap.append("Box", &[], "02-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    imap.store("Box", uids[3], "+FLAGS (\\Flagged $Later)");
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    let report = json(&out);
    assert_eq!(total(&report, "fetched"), 5);
    assert_eq!(total(&report, "flag_updates"), 1);
    assert_mailbox_matches(&env.archive("a"), &user, "Box");
    assert_mailbox_matches(&env.archive("a"), &user, "INBOX");
}

#[test]
fn dry_run_reports_what_would_be_fetched_and_writes_nothing() {
    let user = dovecot().new_user("dryrun");
    let mut imap = user.imap();
    for n in 0..3 {
        imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let out = env
        .cmd()
        .args(["pull", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(total(&json(&out), "fetched"), 3);
    assert!(!env.archive("a").exists(), "a dry run created the archive");
}

/// Seeds `count` messages of about `kb` KiB straight into the server's
/// Maildir (the fastest way, as DESIGN.md notes) and lets Dovecot index them.
fn seed_many(user: &User, mailbox_dir: &str, count: u32, kb: usize) {
    let dir = user.maildir.join(mailbox_dir);
    let owner = fs::metadata(&user.maildir).unwrap();
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    if !mailbox_dir.is_empty() {
        fs::write(dir.join("maildirfolder"), b"").unwrap();
    }
    let filler = support::mail::base64(&mail::pseudo_random(7, kb * 768));
    for n in 0..count {
        let mut m = mail::plain(n);
        m.extend_from_slice(filler.as_bytes());
        let name = format!("{}.M{n}P1.seed,S={}:2,S", 1_600_000_000 + n, m.len());
        fs::write(dir.join("cur").join(name), &m).unwrap();
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", owner.uid(), owner.gid()))
        .arg(&user.maildir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `imapbak pull --quiet --jobs 1` in the background (for kill and lock tests).
fn spawn_pull(env: &TestEnv, user: &User) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_imapbak"))
        .arg("--config")
        .arg(env.config_path())
        .args(["pull", "--quiet", "--jobs", "1"])
        .env(TestEnv::password_var("a"), &user.password)
        .env("HOME", env.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for_files(archive: &Path, folder: &str, at_least: usize, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if support::folder_files(archive, folder).len() >= at_least {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn kill_9_during_pull_then_rerun_archives_every_message_exactly_once() {
    let user = dovecot().new_user("crash");
    seed_many(&user, ".Big", 1500, 24);
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let archive = env.archive("a");
    // Kill at two different depths of the same mailbox, then finish.
    for at in [50, 700] {
        let mut child = spawn_pull(&env, &user);
        let reached = wait_for_files(&archive, ".Big", at, Duration::from_secs(60));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(reached, "pull never got to {at} files");
    }
    let files_before_rerun = support::folder_files(&archive, ".Big").len();
    assert!(
        files_before_rerun < 1500,
        "the kill came too late to test anything"
    );
    env.cmd().args(["pull", "--quiet"]).assert().success();
    assert_mailbox_matches(&archive, &user, "Big");
    // Nothing half-written outside tmp/: every file in cur/ and new/ is a
    // whole message (checked above); tmp/ may keep a partial file.
    let in_new = fs::read_dir(archive.join("mail/.Big/new")).unwrap().count();
    assert_eq!(in_new, 0, "unexpected files in new/");
    // And the lock of the killed runs did not stay behind.
    env.cmd().args(["pull", "--quiet"]).assert().success();
}

#[test]
fn deleting_state_loses_nothing_and_redownloads_nothing() {
    let user = dovecot().new_user("nostate");
    let mut imap = user.imap();
    imap.create("Box");
    for n in 0..4 {
        imap.append(
            "Box",
            &["\\Seen"],
            "01-Feb-2022 10:00:00 +0000",
            &mail::plain(n),
        );
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    fs::remove_dir_all(env.archive("a").join("state")).unwrap();
    let out = env.cmd().args(["-vv", "pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(total(&json(&out), "fetched"), 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("BODY.PEEK"), "{stderr}");
    assert_mailbox_matches(&env.archive("a"), &user, "Box");
}

#[test]
fn a_message_file_deleted_from_the_archive_is_downloaded_again() {
    let user = dovecot().new_user("refetch");
    let mut imap = user.imap();
    for n in 0..3 {
        imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    let files = support::folder_files(&env.archive("a"), "");
    fs::remove_file(&files[0]).unwrap();
    // Something new makes the mailbox worth opening; the lost file comes back.
    imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(3));
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(total(&json(&out), "fetched"), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone"));
    assert_mailbox_matches(&env.archive("a"), &user, "INBOX");
}

#[test]
fn a_lost_file_noticed_by_another_command_is_still_downloaded_again() {
    let user = dovecot().new_user("refetch2");
    let mut imap = user.imap();
    for n in 0..3 {
        imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    let files = support::folder_files(&env.archive("a"), "");
    fs::remove_file(&files[1]).unwrap();
    // expunge reads the folder first (and forgets the lost entry); nothing is
    // old enough to go.
    env.cmd()
        .args(["expunge", "--older-than", "100y"])
        .assert()
        .success();
    // Nothing new on the server, yet the lost message comes back.
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(total(&json(&out), "fetched"), 1);
    assert_mailbox_matches(&env.archive("a"), &user, "INBOX");
}

#[test]
fn uidvalidity_change_keeps_every_archived_message_and_stores_no_second_copy() {
    let user = dovecot().new_user("uidvalidity");
    let mut imap = user.imap();
    imap.create("Box");
    let date = "01-Feb-2022 10:00:00 +0000";
    for n in 0..3 {
        imap.append("Box", &[], date, &mail::plain(n));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    let archive = env.archive("a");
    let before: Vec<Vec<u8>> = support::folder_messages(&archive, ".Box");
    let (uv_before, _, _) = imap.status("Box");

    // Recreate the mailbox: two old messages come back, one is new.
    imap.delete("Box");
    imap.create("Box");
    imap.append("Box", &[], date, &mail::plain(0));
    imap.append("Box", &[], date, &mail::plain(1));
    imap.append("Box", &[], date, &mail::plain(99));
    let (uv_after, _, _) = imap.status("Box");
    assert_ne!(uv_before, uv_after, "Dovecot kept the UIDVALIDITY");

    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("UIDVALIDITY"), "no warning:\n{stderr}");
    let report = json(&out);
    let mb = &report["accounts"][0]["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mailbox"] == "Box")
        .unwrap()
        .clone();
    assert_eq!(mb["uidvalidity_changed"], true);
    assert_eq!(mb["deduplicated"], 2);
    let after = support::folder_messages(&archive, ".Box");
    for m in &before {
        assert!(after.contains(m), "an archived message was lost");
    }
    assert_eq!(after.len(), 4, "3 old + 1 new, no second copies");
    assert!(after.contains(&mail::plain(99)));
    // A further run is quiet.
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert_eq!(total(&json(&out), "fetched"), 0);
}

#[test]
fn a_stock_dovecot_serves_the_archive_byte_identical() {
    let d = dovecot();
    let user = d.new_user("origin");
    seed(&user);
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();

    // A second user whose Maildir is a copy of the archive's mail/: the
    // private Dovecot has the stock zlib plugin and nothing of ours.
    let served = d.new_user("served");
    fs::remove_dir_all(&served.maildir).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(env.archive("a").join("mail"))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());
    let owner = fs::metadata(&user.maildir).unwrap();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", owner.uid(), owner.gid()))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());

    let mut original = user.imap();
    let mut copy = served.imap();
    let mut want = original.list();
    let mut got = copy.list();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the served archive lists other mailboxes");
    for mb in MAILBOXES {
        let a = original.fetch_all(mb);
        let b = copy.fetch_all(mb);
        assert_eq!(a.len(), b.len(), "`{mb}`");
        for (x, y) in a.iter().zip(&b) {
            assert!(x.body == y.body, "bytes differ in `{mb}`");
            assert_eq!(x.size, y.size);
            assert_eq!(x.internaldate_secs(), y.internaldate_secs());
            let (mut fx, mut fy) = (x.flags.clone(), y.flags.clone());
            fx.sort();
            fy.sort();
            assert_eq!(fx, fy, "flags in `{mb}`");
        }
    }
}

/// Runs a pull that must fail before writing anything; returns stderr.
fn refused(env: &TestEnv, code: i32) -> String {
    let out = env.cmd().arg("pull").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("\nhint: "), "no hint:\n{stderr}");
    assert!(!env.archive("a").exists(), "something was written");
    stderr
}

#[test]
fn wrong_password_is_one_error_with_a_hint_and_the_connection_exit_code() {
    let user = dovecot().new_user("wrongpw");
    let mut bad = user.clone();
    bad.password = "not-the-password".into();
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &bad, ""));
    let stderr = refused(&env, 3);
    assert!(stderr.contains("login"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "the password leaked");
}

#[test]
fn unreachable_host_is_one_error_with_a_hint() {
    let user = dovecot().new_user("unreachable");
    let env = TestEnv::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = env.account_toml("a", &user, "").replace(
        &format!("port = {}", dovecot().imaps_port),
        &format!("port = {port}"),
    );
    env.write_config(&toml);
    let stderr = refused(&env, 3);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn untrusted_certificate_and_wrong_pin_are_refused_before_login() {
    let user = dovecot().new_user("tls");
    let logins = || {
        dovecot()
            .log()
            .matches(&format!("user=<{}>", user.name))
            .count()
    };
    // The harness logged in once to check the user; Dovecot's log process
    // may write that line a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while logins() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logins_before = logins();
    assert!(
        logins_before > 0,
        "the log never showed the harness's login"
    );
    let env = TestEnv::new();
    let no_ca: String = env
        .account_toml("a", &user, "")
        .lines()
        .filter(|l| !l.starts_with("ca-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    env.write_config(&no_ca);
    let stderr = refused(&env, 3);
    assert!(
        stderr.contains("sha256:"),
        "the fingerprint is not named:\n{stderr}"
    );

    let pinned = format!("{no_ca}cert-fingerprint = \"sha256:{}\"\n", "00".repeat(32));
    env.write_config(&pinned);
    let stderr = refused(&env, 3);
    assert!(stderr.contains("does not match"), "{stderr}");
    assert_eq!(logins(), logins_before, "credentials reached the server");
}

#[test]
fn correct_pin_alone_is_enough_and_starttls_works() {
    let user = dovecot().new_user("pin");
    user.imap()
        .append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(1));
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&dovecot().cert)
        .output()
        .unwrap();
    let fp = String::from_utf8(out.stdout).unwrap();
    let fp = fp
        .trim()
        .split('=')
        .nth(1)
        .unwrap()
        .to_lowercase()
        .replace(':', "");
    let env = TestEnv::new();
    let pinned: String = env
        .account_toml("a", &user, "")
        .lines()
        .filter(|l| !l.starts_with("ca-file"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("cert-fingerprint = \"{fp}\"\n");
    let starttls = env.account_toml_with("b", &user, support::Tls::Starttls, "");
    env.write_config(&format!("{pinned}\n{starttls}"));
    env.cmd().args(["pull", "--quiet"]).assert().success();
    assert_mailbox_matches(&env.archive("a"), &user, "INBOX");
    assert_mailbox_matches(&env.archive("b"), &user, "INBOX");
}

#[test]
fn two_pulls_at_once_the_second_exits_with_the_lock_code() {
    let user = dovecot().new_user("lock");
    seed_many(&user, ".Big", 400, 64);
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let archive = env.archive("a");
    let mut first = spawn_pull(&env, &user);
    // The first message written (to tmp/: a burst reaches cur/ at once).
    let tmp = archive.join("mail/.Big/tmp");
    let start = Instant::now();
    while fs::read_dir(&tmp).map_or(0, |d| d.count()) == 0
        && support::folder_files(&archive, ".Big").is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first pull wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = env.cmd().arg("pull").output().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    let stderr = String::from_utf8_lossy(&out.stderr);
    first.wait().unwrap();
    assert!(
        still_running,
        "the first pull ended too soon to test the lock"
    );
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(
        stderr.contains("state/lock"),
        "the lock is not named:\n{stderr}"
    );
}

#[test]
fn unknown_config_key_is_a_usage_error_naming_key_and_file() {
    let user = dovecot().new_user("badkey");
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}colour = \"blue\"\n",
        env.account_toml("a", &user, "")
    ));
    let out = env.cmd().arg("pull").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("colour") && stderr.contains("config.toml"),
        "{stderr}"
    );
}

#[test]
fn man_pages_are_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    for (file, page) in imapbak::cli::all_man_pages().unwrap() {
        let on_disk = fs::read(dir.join(&file)).unwrap_or_default();
        assert!(
            on_disk == page,
            "man/{file} is stale\nhint: run scripts/gen-man.sh and commit man/"
        );
    }
}

#[test]
fn a_no_change_pull_logs_in_once_and_ls_shows_it_as_the_last_pull() {
    let user = dovecot().new_user("nochange");
    let mut imap = user.imap();
    for i in 0..6 {
        let name = format!("Box{i}");
        imap.create(&name);
        imap.append(&name, &[], "14-May-2024 09:30:00 +0200", &mail::plain(i));
    }
    imap.logout();
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().args(["pull", "--jobs", "4"]).assert().success();
    let logins = || {
        dovecot()
            .log()
            .matches(&format!("Login: user=<{}>", user.name))
            .count()
    };
    // Dovecot's log process may write a line a moment after the login.
    std::thread::sleep(Duration::from_millis(300));
    let before = logins();
    // LAST PULL has one-second resolution: the second run must be later.
    std::thread::sleep(Duration::from_millis(1100));
    let started = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = env
        .cmd()
        .args(["pull", "--jobs", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(json(&out)["fetched"], 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        logins() - before,
        1,
        "a no-change pull must log in exactly once, whatever the scheduling"
    );
    let ls = env.cmd().args(["ls", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    for m in v[0]["mailboxes"].as_array().unwrap() {
        let last = chrono_secs(m["last_pull"].as_str().unwrap());
        assert!(
            last >= started,
            "`{}`: LAST PULL {} is older than the no-change run ({started})",
            m["mailbox"],
            m["last_pull"]
        );
    }
}

/// Seconds since the epoch of an RFC 3339 time as `ls --json` prints it.
fn chrono_secs(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("`{s}`: {e}"))
        .timestamp()
}
