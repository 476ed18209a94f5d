//! `imapbak restore` against a real Dovecot: pull account A with the real
//! binary, restore its archive into account B, and compare what B's server
//! holds with what A's holds (bytes, flags, keywords, INTERNALDATE, names).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{self, dovecot, dovecot_dot, mail, Dovecot, Tls, User};
use crate::support::{Imap, TestEnv};

/// A message as a user sees it: bytes, flags (sorted, without \Recent and
/// \Deleted, which restore never uploads) and INTERNALDATE.
pub(crate) type Seen = (Vec<u8>, Vec<String>, i64);

/// Every message of `mailbox` as a user sees it ([`Seen`]), sorted.
pub(crate) fn contents(imap: &mut Imap, mailbox: &str) -> Vec<Seen> {
    let mut out: Vec<Seen> = imap
        .fetch_all(mailbox)
        .into_iter()
        .map(|m| {
            let secs = m.internaldate_secs();
            let mut flags: Vec<String> = m
                .flags
                .into_iter()
                .filter(|f| !f.eq_ignore_ascii_case("\\Deleted"))
                .collect();
            flags.sort();
            (m.body, flags, secs)
        })
        .collect();
    out.sort();
    out
}

fn env_for(a: &User, b: &User, b_server: &Dovecot) -> TestEnv {
    let env = TestEnv::new();
    let mut toml = env.account_toml("a", a, "");
    toml.push_str(&env.account_toml_on(b_server, "b", b, Tls::Implicit, ""));
    env.write_config(&toml);
    env
}

fn pull(env: &TestEnv, account: &str) {
    env.cmd()
        .args(["pull", "--account", account])
        .assert()
        .success();
}

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// Seeds A with nested, non-ASCII and awkward names, flags, keywords, a
/// \Deleted message, a message without Message-ID and a true duplicate.
fn seed_varied(a: &User) -> Vec<&'static str> {
    let boxes = ["INBOX", "Archive/2024/Q1", "Entwürfe", "R&D/v1.2"];
    let mut imap = a.imap();
    for b in &boxes[1..] {
        imap.create(b);
    }
    let d = "01-Jan-2020 10:00:00 +0000";
    imap.append("INBOX", &["\\Seen"], d, &mail::plain(1));
    imap.append(
        "INBOX",
        &["\\Seen", "$Important"],
        "15-Feb-2021 23:59:59 +0100",
        &mail::latin1_8bit(),
    );
    imap.append(
        "INBOX",
        &[],
        "02-Mar-2022 08:00:00 -0500",
        &mail::no_message_id(),
    );
    imap.append(
        "INBOX",
        &["\\Answered", "\\Flagged", "Work"],
        d,
        &mail::leading_whitespace(),
    );
    imap.append("INBOX", &["\\Seen", "\\Deleted"], d, &mail::plain(2));
    // A true duplicate: same bytes, same date, twice.
    imap.append("INBOX", &[], d, &mail::plain(3));
    imap.append("INBOX", &[], d, &mail::plain(3));
    imap.append(
        "Archive/2024/Q1",
        &["\\Seen"],
        "01-Feb-2024 12:00:00 +0000",
        &mail::multipart_attachment(),
    );
    imap.append(
        "Archive/2024/Q1",
        &["\\Draft"],
        "15-Mar-2024 00:00:00 +0000",
        &mail::encoded_subject(),
    );
    imap.append("Entwürfe", &["\\Draft", "\\Seen"], d, &mail::plain(20));
    imap.append("R&D/v1.2", &["$label1"], d, &mail::plain(21));
    boxes.to_vec()
}

fn assert_same(a: &User, b: &User, a_box: &str, b_box: &str) {
    let (want, have) = (
        contents(&mut a.imap(), a_box),
        contents(&mut b.imap(), b_box),
    );
    assert_eq!(
        want.len(),
        have.len(),
        "message count of `{b_box}` (from `{a_box}`)"
    );
    for (w, h) in want.iter().zip(&have) {
        assert!(w.0 == h.0, "bytes differ in `{b_box}`");
        assert_eq!((&w.1, w.2), (&h.1, h.2), "flags/date in `{b_box}`");
    }
}

#[test]
fn round_trip_restores_every_message_byte_identical_with_flags_and_dates() {
    let d = dovecot();
    let (a, b) = (d.new_user("rt-a"), d.new_user("rt-b"));
    let boxes = seed_varied(&a);
    let env = env_for(&a, &b, d);
    pull(&env, "a");
    let out = env
        .cmd()
        .args(["restore", "--account", "a", "--to", "b", "--json"])
        .assert()
        .success();
    let report = json_of(&out.get_output().stdout);
    assert_eq!(report["appended"], 11, "{report:#}");
    // B's side, seen through the archive a pull of B makes.
    pull(&env, "b");
    let b_files = support::archived_files(&env.archive("b"));
    assert_eq!(b_files.len(), 11, "archived messages of B");

    let listed = b.imap().list();
    for m in &boxes {
        assert!(listed.iter().any(|l| l == m), "`{m}` missing in {listed:?}");
        assert_same(&a, &b, m, m);
    }
    // \Deleted was not uploaded, \Seen was.
    let inbox = contents(&mut b.imap(), "INBOX");
    let p2 = inbox.iter().find(|m| m.0 == mail::plain(2)).unwrap();
    assert_eq!(p2.1, ["\\Seen"]);
    // The archive of A is untouched by restore (same files, same names).
    let before = support::archived_files(&env.archive("a"));
    env.cmd()
        .args(["restore", "--account", "a", "--to", "b"])
        .assert()
        .success();
    assert_eq!(support::archived_files(&env.archive("a")), before);
}

#[test]
fn second_restore_appends_nothing() {
    let d = dovecot();
    let (a, b) = (d.new_user("twice-a"), d.new_user("twice-b"));
    seed_varied(&a);
    let env = env_for(&a, &b, d);
    pull(&env, "a");
    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    let counts = |u: &User| {
        let mut imap = u.imap();
        imap.list()
            .into_iter()
            .map(|m| {
                let n = imap.status(&m).2;
                (m, n)
            })
            .collect::<BTreeMap<_, _>>()
    };
    let first = counts(&b);
    // Without the APPENDUID records too: the fingerprints alone decide.
    let state = env.path().join("home/.local/state/imapbak/restore");
    assert!(state.is_dir(), "no restore state under {}", state.display());
    for wipe in [false, true] {
        if wipe {
            std::fs::remove_dir_all(&state).unwrap();
        }
        let out = env
            .cmd()
            .args(["restore", "-a", "a", "--to", "b", "--json"])
            .assert()
            .success();
        let report = json_of(&out.get_output().stdout);
        assert_eq!(report["appended"], 0, "wiped state: {wipe}: {report:#}");
        assert_eq!(report["present"], 11, "{report:#}");
        assert_eq!(counts(&b), first);
    }
}

const BIG: usize = 3000;

/// A user whose INBOX holds `BIG` messages (every tenth without
/// Message-ID), pulled into account `a` of the returned env.
fn big_source(tag: &str) -> (User, User, TestEnv) {
    let d = dovecot();
    let (a, b) = (
        d.new_user(&format!("{tag}-a")),
        d.new_user(&format!("{tag}-b")),
    );
    let messages: Vec<(Vec<u8>, i64)> = (0..BIG)
        .map(|i| {
            let mut m = if i % 10 == 0 {
                // Some without Message-ID, told apart by their bytes.
                let mut m = mail::no_message_id();
                m.extend_from_slice(format!("variant {i}\r\n").as_bytes());
                m
            } else {
                mail::plain(i as u32)
            };
            m.extend_from_slice(&mail::base64(&mail::pseudo_random(i as u64, 3000)).into_bytes());
            m.extend_from_slice(b"\r\n");
            (m, 1_600_000_000 + (i as i64 % 500) * 3600)
        })
        .collect();
    d.seed_inbox(&a, &messages);
    let env = env_for(&a, &b, d);
    pull(&env, "a");
    (a, b, env)
}

/// Starts a restore of `a` into `b` and returns once a tenth of the
/// messages are on the target (and not all of them).
fn restore_until_a_tenth_is_there(env: &TestEnv, b: &User) -> std::process::Child {
    let mut child = env
        .std_cmd()
        .args(["restore", "-a", "a", "--to", "b", "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imapbak restore");
    let mut imap = b.imap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = imap.status("INBOX").2 as usize;
        if n >= BIG / 10 {
            assert!(n < BIG, "restore finished before it could be interrupted");
            return child;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "restore exited early with {n} messages on the target"
        );
        assert!(Instant::now() < deadline, "restore made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_inbox_exactly_once(a: &User, b: &User, when: &str) {
    let bodies = |u: &User| {
        let mut v: Vec<Vec<u8>> = u
            .imap()
            .fetch_all("INBOX")
            .into_iter()
            .map(|m| m.body)
            .collect();
        v.sort();
        v
    };
    let (want, have) = (bodies(a), bodies(b));
    assert_eq!(want.len(), BIG);
    assert_eq!(have.len(), BIG, "copies on the target {when}");
    assert!(
        want == have,
        "the target's messages differ from the source's"
    );
}

#[test]
fn restore_killed_half_way_then_rerun_has_every_message_exactly_once() {
    let (a, b, env) = big_source("kill");
    let mut child = restore_until_a_tenth_is_there(&env, &b);
    child.kill().expect("kill -9 the restore");
    child.wait().unwrap();
    let partial = b.imap().status("INBOX").2 as usize;
    assert!(
        partial < BIG,
        "nothing left to do after the kill ({partial})"
    );

    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    assert_inbox_exactly_once(&a, &b, &format!("after a rerun (killed at {partial})"));
}

#[test]
fn a_dropped_connection_is_retried_and_nothing_is_duplicated() {
    let (a, b, env) = big_source("kick");
    let child = restore_until_a_tenth_is_there(&env, &b);
    // The server drops every session of the target user.
    dovecot().doveadm(&["kick", &b.name]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore failed after a kick: {err}");
    assert!(err.contains("retrying"), "no retry was reported: {err}");
    assert_inbox_exactly_once(&a, &b, "after a dropped connection");
}

#[test]
fn prefix_mailbox_dates_and_dry_run_do_what_they_say() {
    let d = dovecot();
    let (a, b) = (d.new_user("filt-a"), d.new_user("filt-b"));
    let mut imap = a.imap();
    imap.create("Archive/2024");
    imap.create("Other");
    imap.append("INBOX", &[], "10-Jun-2024 10:00:00 +0000", &mail::plain(1));
    for (n, date) in [
        (10, "31-Dec-2023 23:59:59 +0000"),
        (11, "01-Jan-2024 00:00:00 +0000"),
        (12, "31-Dec-2024 23:59:59 +0000"),
        (13, "01-Jan-2025 00:00:00 +0000"),
    ] {
        imap.append("Archive/2024", &["\\Seen"], date, &mail::plain(n));
    }
    imap.append("Other", &[], "10-Jun-2024 10:00:00 +0000", &mail::plain(20));
    let env = env_for(&a, &b, d);
    pull(&env, "a");

    let before = b.imap().list();
    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b", "--dry-run"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("would append 6 messages"), "{text}");
    assert!(text.contains("create `Archive/2024`"), "{text}");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(b.imap().list()),
        sorted(before),
        "a dry run created mailboxes"
    );
    assert_eq!(b.imap().status("INBOX").2, 0, "a dry run appended");

    env.cmd()
        .args([
            "restore",
            "-a",
            "a",
            "--to",
            "b",
            "--mailbox",
            "Archive/*",
            "--prefix",
            "Restored/",
            "--since",
            "2024-01-01",
            "--before",
            "2025-01-01",
        ])
        .assert()
        .success();
    let listed = b.imap().list();
    assert!(
        listed.iter().any(|l| l == "Restored/Archive/2024"),
        "{listed:?}"
    );
    assert!(!listed
        .iter()
        .any(|l| l.contains("Other") || l.contains("Restored/INBOX")));
    let got: Vec<Vec<u8>> = contents(&mut b.imap(), "Restored/Archive/2024")
        .into_iter()
        .map(|m| m.0)
        .collect();
    let mut want = vec![mail::plain(11), mail::plain(12)];
    want.sort();
    assert!(got == want, "wrong messages restored by the date range");
    assert_eq!(b.imap().status("INBOX").2, 0);
}

#[test]
fn over_quota_stops_with_a_clear_error_and_a_rerun_completes_without_duplicates() {
    let d = dovecot();
    let a = d.new_user("quota-a");
    let b = d.new_user_with_quota("quota-b", 200);
    let mut imap = a.imap();
    imap.create("More");
    for i in 0..30u32 {
        let mut m = mail::plain(100 + i);
        m.extend_from_slice(&mail::base64(&mail::pseudo_random(i as u64, 20_000)).into_bytes());
        m.extend_from_slice(b"\r\n");
        let mailbox = if i % 3 == 0 { "More" } else { "INBOX" };
        imap.append(mailbox, &[], "01-Jan-2020 10:00:00 +0000", &m);
    }
    let env = env_for(&a, &b, d);
    pull(&env, "a");

    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .failure()
        .code(6);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("over quota"), "{err}");
    assert!(
        err.contains("Quota exceeded"),
        "server's words missing: {err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let partial = b.imap().status("INBOX").2 + b.imap().status("More").2;
    assert!(partial < 30, "everything fit a 200 KiB quota ({partial})");

    // Maildir++ quota keeps the old limit without a new rule: raise it.
    d.set_quota(&b, Some(100_000));
    env.cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .success();
    assert_same(&a, &b, "INBOX", "INBOX");
    assert_same(&a, &b, "More", "More");
}

#[test]
fn a_target_with_dot_delimiter_gets_the_same_hierarchy() {
    let (d, dot) = (dovecot(), dovecot_dot());
    let a = d.new_user("delim-a");
    let b = dot.new_user("delim-b");
    let mut imap = a.imap();
    imap.create("Archive/2024");
    imap.create("Archive/2024/Q1");
    imap.create("Straße/v1.2");
    imap.append(
        "INBOX",
        &["\\Seen"],
        "01-Jan-2020 10:00:00 +0000",
        &mail::plain(1),
    );
    imap.append(
        "Archive/2024/Q1",
        &["\\Flagged", "Work"],
        "01-Feb-2024 10:00:00 +0000",
        &mail::plain(2),
    );
    imap.append(
        "Archive/2024",
        &[],
        "01-Mar-2024 10:00:00 +0000",
        &mail::plain(3),
    );
    imap.append(
        "Straße/v1.2",
        &[],
        "01-Mar-2024 10:00:00 +0000",
        &mail::plain(4),
    );
    let env = env_for(&a, &b, dot);
    pull(&env, "a");

    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b"])
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("`v1.2`") && err.contains("delimiter `.`"),
        "no clear refusal of `Straße/v1.2`: {err}"
    );
    let listed = b.imap().list();
    for m in ["Archive.2024", "Archive.2024.Q1"] {
        assert!(listed.iter().any(|l| l == m), "`{m}` missing in {listed:?}");
    }
    assert!(!listed.iter().any(|l| l.contains("v1")), "{listed:?}");
    assert_same(&a, &b, "Archive/2024/Q1", "Archive.2024.Q1");
    assert_same(&a, &b, "Archive/2024", "Archive.2024");
    assert_same(&a, &b, "INBOX", "INBOX");
}

/// A text message of about `bytes` bytes with its own Message-ID: lines
/// that compress well, so the pull that makes the archive stays quick.
fn sized_text(tag: &str, i: usize, bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Ada Tester <ada@example.invalid>\r\nTo: Bert Tester <bert@example.invalid>\r\n\
         Subject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@imapbak.example.invalid>\r\n\r\n"
    )
    .into_bytes();
    let mut n = 0;
    while m.len() < bytes {
        m.extend_from_slice(format!("line {n} of {tag} message {i}\r\n").as_bytes());
        n += 1;
    }
    m
}

/// Peak RSS (KiB) of a restore of `a` into `b` on `jobs` connections.
fn restore_peak_kib(env: &TestEnv, jobs: usize) -> u64 {
    let mut child = env
        .std_cmd()
        .args(["restore", "-q", "-a", "a", "--to", "b", "--jobs"])
        .arg(jobs.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imapbak restore");
    let (status, peak) = support::wait_with_peak_rss(&mut child);
    assert!(status.success(), "restore failed: {status:?}");
    peak
}

/// Restore holds at most its 32 MiB budget of messages at once, however
/// many connections it uses (README, "What imapbak guarantees": memory).
/// 16 mailboxes of two 3 MiB messages each, restored on 16 connections,
/// may take no more memory than the same 16 mailboxes with one small
/// message each, plus the budget and 8 MiB for everything else. Reading
/// every mailbox ahead at once, as restore did before the budget, took
/// 69 MiB more here (and 36 MiB with the budget). (The peak is the process's own high-water mark from /proc:
/// nothing here is timed.)
#[test]
fn restore_holds_no_more_than_its_memory_budget_of_messages() {
    const BOXES: usize = 16;
    const MIB: usize = 1024 * 1024;
    let d = dovecot();
    let seed = |tag: &str, per_box: usize, bytes: usize| {
        let (a, b) = (
            d.new_user(&format!("{tag}-a")),
            d.new_user(&format!("{tag}-b")),
        );
        for k in 0..BOXES {
            let messages: Vec<(Vec<u8>, i64)> = (0..per_box)
                .map(|i| {
                    let i = k * per_box + i;
                    (sized_text(tag, i, bytes), 1_600_000_000 + i as i64 * 60)
                })
                .collect();
            d.seed_mailbox(&a, &format!("Box{k:02}"), &messages);
        }
        let env = env_for(&a, &b, d);
        pull(&env, "a");
        (b, env)
    };
    let (small_b, small) = seed("memsmall", 1, 4096);
    let (big_b, big) = seed("membig", 2, 3 * MIB);
    let base = restore_peak_kib(&small, BOXES);
    let peak = restore_peak_kib(&big, BOXES);
    let mut imap = big_b.imap();
    for k in 0..BOXES {
        assert_eq!(
            imap.status(&format!("Box{k:02}")).2,
            2,
            "Box{k:02} restored"
        );
    }
    assert_eq!(small_b.imap().status("Box00").2, 1);
    let extra_mib = peak.saturating_sub(base) as f64 / 1024.0;
    eprintln!("restore peak RSS: {peak} KiB; of almost nothing: {base} KiB");
    assert!(
        extra_mib <= 32.0 + 8.0,
        "restoring 96 MiB on {BOXES} connections took {extra_mib:.1} MiB more than \
         restoring almost nothing (peak {peak} KiB, base {base} KiB); the budget is 32 MiB"
    );
}
