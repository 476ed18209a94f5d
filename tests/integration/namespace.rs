//! Names in the archive are the user's names, whatever the server's
//! personal namespace: `INBOX.Sent` on a server laid out as Courier and
//! Debian's Cyrus are (prefix `INBOX.`, delimiter `.`; here a Dovecot set up
//! that way) is the folder `.Sent`, restored as `Sent` to a server without a
//! prefix and as `INBOX.Sent` to one with it.

use std::path::Path;

use crate::restore::contents;
use crate::support::{self, dovecot, dovecot_prefixed, mail, Dovecot, Imap, TestEnv, Tls, User};

fn assert_same(a: &User, a_box: &str, b: &User, b_box: &str) {
    let want = contents(&mut a.imap(), a_box);
    assert!(!want.is_empty(), "`{a_box}` holds nothing to compare");
    assert_eq!(
        want,
        contents(&mut b.imap(), b_box),
        "`{b_box}` does not hold what `{a_box}` holds"
    );
}

fn env_for(a: &User, a_server: &Dovecot, b: &User, b_server: &Dovecot) -> TestEnv {
    let env = TestEnv::new();
    let mut toml = env.account_toml_on(a_server, "a", a, Tls::Implicit, "");
    toml.push_str(&env.account_toml_on(b_server, "b", b, Tls::Implicit, ""));
    env.write_config(&toml);
    env
}

fn folders(archive: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(archive.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    out.sort();
    out
}

fn seed(imap: &mut Imap, inbox: &str, sent: &str, archive: &str) {
    imap.create(archive);
    imap.append(
        inbox,
        &["\\Seen"],
        "01-Jan-2020 10:00:00 +0000",
        &mail::plain(1),
    );
    imap.append(
        sent,
        &["\\Seen"],
        "02-Jan-2020 10:00:00 +0000",
        &mail::plain(2),
    );
    imap.append(
        archive,
        &["\\Flagged"],
        "03-Mar-2024 10:00:00 +0000",
        &mail::plain(3),
    );
}

#[test]
fn a_prefixed_server_is_archived_under_the_users_names_and_restored_without_the_prefix() {
    let (p, d) = (dovecot_prefixed(), dovecot());
    let (a, b) = (p.new_user("ns-a"), d.new_user("ns-b"));
    seed(&mut a.imap(), "INBOX", "INBOX.Sent", "INBOX.Archive.2024");
    let env = env_for(&a, p, &b, d);
    env.cmd().args(["pull", "-a", "a"]).assert().success();
    let have = folders(&env.archive("a"));
    for f in [".Sent", ".Archive.2024"] {
        assert!(have.iter().any(|h| h == f), "no `{f}` in {have:?}");
    }
    assert!(
        !have.iter().any(|h| h.starts_with(".INBOX")),
        "the namespace prefix went into folder names: {have:?}"
    );

    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    let listed = b.imap().list();
    assert!(
        !listed.iter().any(|l| l.starts_with("INBOX/")),
        "restored under INBOX/: {listed:?}"
    );
    assert_same(&a, "INBOX", &b, "INBOX");
    assert_same(&a, "INBOX.Sent", &b, "Sent");
    assert_same(&a, "INBOX.Archive.2024", &b, "Archive/2024");
}

#[test]
fn an_archive_from_a_server_without_prefix_is_restored_under_the_targets_prefix() {
    let (d, p) = (dovecot(), dovecot_prefixed());
    let (a, b) = (d.new_user("ns-c"), p.new_user("ns-d"));
    seed(&mut a.imap(), "INBOX", "Sent", "Archive/2024");
    let env = env_for(&a, d, &b, p);
    env.cmd().args(["pull", "-a", "a"]).assert().success();
    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    assert_same(&a, "INBOX", &b, "INBOX");
    assert_same(&a, "Sent", &b, "INBOX.Sent");
    assert_same(&a, "Archive/2024", &b, "INBOX.Archive.2024");
    // A rerun adds nothing.
    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    assert_same(&a, "Archive/2024", &b, "INBOX.Archive.2024");
}

#[test]
fn an_archive_pulled_with_the_prefix_in_its_names_keeps_its_folders() {
    let (p, d) = (dovecot_prefixed(), dovecot());
    let (a, b) = (p.new_user("ns-e"), d.new_user("ns-f"));
    seed(&mut a.imap(), "INBOX", "INBOX.Sent", "INBOX.Archive.2024");
    let env = env_for(&a, p, &b, d);
    env.cmd().args(["pull", "-a", "a"]).assert().success();
    // Make it look like an archive pulled before prefixes were stripped:
    // the folder is `.INBOX.Sent`, and no namespace was recorded.
    let mail_dir = env.archive("a").join("mail");
    std::fs::rename(mail_dir.join(".Sent"), mail_dir.join(".INBOX.Sent")).unwrap();
    let state = env.archive("a").join("state");
    std::fs::rename(
        state.join("mailboxes/.Sent"),
        state.join("mailboxes/.INBOX.Sent"),
    )
    .unwrap();
    std::fs::remove_file(state.join("namespace.json")).unwrap();
    let before = support::folder_files(&env.archive("a"), ".INBOX.Sent").len();
    assert_eq!(before, 1);

    let out = env
        .cmd()
        .args(["pull", "-a", "a", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fetched"], 0, "the old folder was not used: {v}");
    assert!(!folders(&env.archive("a")).iter().any(|f| f == ".Sent"));

    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    assert_same(&a, "INBOX.Sent", &b, "Sent");
}
