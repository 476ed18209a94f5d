//! Proves the test harness itself: the private Dovecot starts, users are
//! separate, the raw IMAP client round-trips messages byte for byte with
//! flags, keywords and INTERNALDATE, and quota users are refused.

use crate::support::{dovecot, internaldate_secs, mail};

#[test]
fn appended_messages_come_back_byte_identical_with_flags_and_dates() {
    let user = dovecot().new_user("selftest");
    let mut imap = user.imap();
    let boxes = ["Archive/2024/Q1", "R&D", "with space", "v1.2"];
    for b in boxes {
        imap.create(b);
    }
    let listed = imap.list();
    for b in boxes.iter().chain(&["INBOX"]) {
        assert!(listed.iter().any(|l| l == b), "`{b}` not in {listed:?}");
    }

    let messages = [
        (mail::plain(1), vec![], "01-Jan-2020 10:00:00 +0000"),
        (
            mail::latin1_8bit(),
            vec!["\\Seen", "$Important"],
            "15-Feb-2021 23:59:59 +0100",
        ),
        (
            mail::multipart_attachment(),
            vec!["\\Answered", "\\Flagged"],
            "31-Dec-1999 12:00:00 -0500",
        ),
    ];
    for mailbox in boxes {
        let uids: Vec<u32> = messages
            .iter()
            .map(|(bytes, flags, date)| imap.append(mailbox, flags, date, bytes))
            .collect();
        assert_eq!(uids, [1, 2, 3], "APPENDUIDs in `{mailbox}`");

        let got = imap.fetch_all(mailbox);
        assert_eq!(got.len(), 3, "messages in `{mailbox}`");
        for (m, (bytes, flags, date)) in got.iter().zip(&messages) {
            assert!(
                m.body == *bytes,
                "body of UID {} in `{mailbox}` differs",
                m.uid
            );
            assert_eq!(m.size as usize, bytes.len());
            let mut want: Vec<&str> = flags.clone();
            let mut have: Vec<&str> = m.flags.iter().map(String::as_str).collect();
            want.sort_unstable();
            have.sort_unstable();
            assert_eq!(have, want, "flags of UID {} in `{mailbox}`", m.uid);
            assert_eq!(m.internaldate_secs(), internaldate_secs(date));
        }
        let (uidvalidity, uidnext, count) = imap.status(mailbox);
        assert!(uidvalidity > 0);
        assert_eq!((uidnext, count), (4, 3));
    }

    imap.store("R&D", 1, "+FLAGS (\\Seen)");
    assert_eq!(imap.fetch_all("R&D")[0].flags, ["\\Seen"]);
    imap.delete("with space");
    assert!(!imap.list().iter().any(|l| l == "with space"));
    let raw = imap.command("NOOP");
    assert!(raw.ends_with(b"\r\n") && String::from_utf8_lossy(&raw).contains("OK"));
}

#[test]
fn users_are_separate_and_new_users_log_in_at_once() {
    let a = dovecot().new_user("sep");
    let b = dovecot().new_user("sep");
    assert_ne!(a.name, b.name);
    let mut ia = a.imap();
    ia.append("INBOX", &[], "", &mail::no_message_id());
    assert_eq!(ia.status("INBOX").2, 1);
    assert_eq!(b.imap().status("INBOX").2, 0);
    // doveadm works against the private instance, with UTF-8 names.
    dovecot().doveadm(&["mailbox", "create", "-u", &b.name, "Entwürfe"]);
    dovecot().doveadm_save(&b, "Entwürfe", &mail::plain(7));
    assert_eq!(b.imap().fetch_all("Entwürfe")[0].body, mail::plain(7));
}

#[test]
fn quota_user_is_refused_an_append_over_quota() {
    let user = dovecot().new_user_with_quota("quota", 100);
    let mut imap = user.imap();
    imap.append("INBOX", &[], "", &mail::plain(1));
    let err = imap
        .try_append("INBOX", &[], "", &mail::big(1))
        .expect_err("a 1 MiB message fits a 100 KiB quota");
    assert!(
        err.to_lowercase().contains("quota"),
        "NO without quota: {err}"
    );
}

#[test]
fn generated_messages_have_crlf_lines_and_the_promised_shape() {
    for (name, m) in mail::all_kinds() {
        let text = String::from_utf8_lossy(&m);
        assert!(!text.replace("\r\n", "").contains('\n'), "{name}: bare LF");
        assert!(m.ends_with(b"\r\n"), "{name}: no final CRLF");
    }
    assert!(mail::leading_whitespace().starts_with(b" "));
    assert!(!String::from_utf8_lossy(&mail::no_message_id()).contains("Message-ID:"));
    assert!(mail::latin1_8bit().iter().any(|&b| b >= 0x80));
    assert!(mail::big(2).len() > 2 * 1024 * 1024);
    assert_eq!(mail::base64(b"Man is"), "TWFuIGlz");
    assert_eq!(mail::base64(b"Ma"), "TWE=");
    assert_eq!(mail::plain(3), mail::plain(3));
}
