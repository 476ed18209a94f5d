//! The performance paths of `imapbak pull` keep every byte: bodies taken
//! out of the network buffer without a copy (large ones) or copied (small
//! ones), batches bounded by the memory budget, and COMPRESS=DEFLATE.

use crate::fakes::{Fault, Proxy};
use crate::support::{self, dovecot, mail, TestEnv, User};

fn pull_matches_server(extra: &str) {
    let d = dovecot();
    let user = d.new_user("perf");
    let mut imap = user.imap();
    // Small ones share a network read; the 5 MiB one and the 3 MiB one each
    // fill their buffer (moved, not copied) and exceed a 4 MiB batch.
    let mut bodies = vec![mail::big(5), mail::plain(1), mail::big(3)];
    bodies.extend((2..40).map(mail::plain));
    bodies.push(mail::multipart_attachment());
    for (i, b) in bodies.iter().enumerate() {
        let day = 1 + i % 28;
        imap.append(
            "INBOX",
            &["\\Seen"],
            &format!("{day:02}-Mar-2021 10:00:00 +0000"),
            b,
        );
    }
    let mut want: Vec<Vec<u8>> = imap
        .fetch_all("INBOX")
        .into_iter()
        .map(|m| m.body)
        .collect();
    imap.logout();
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, extra));
    env.cmd().args(["pull", "--jobs", "2"]).assert().success();
    let mut got = support::folder_messages(&env.archive("a"), "");
    want.sort();
    got.sort();
    assert_eq!(got.len(), bodies.len());
    assert!(
        got == want,
        "archived bytes differ from what the server serves"
    );
}

#[test]
fn pull_keeps_every_byte_of_large_and_small_messages() {
    pull_matches_server("");
}

#[test]
fn pull_with_compress_deflate_keeps_every_byte() {
    pull_matches_server("compress = true\n");
}

/// COMPRESS=DEFLATE both ways: a pull over STARTTLS, then a restore of its
/// archive into another account, both with `compress = true`, so the
/// server inflates what imapbak deflated (the APPENDs). The target then
/// serves exactly the bytes the source did.
#[test]
fn restore_with_compress_deflate_uploads_every_byte() {
    use crate::support::Tls;
    let d = dovecot();
    let (a, b) = (d.new_user("zrest-a"), d.new_user("zrest-b"));
    let mut imap = a.imap();
    let mut bodies = vec![mail::big(3), mail::multipart_attachment()];
    bodies.extend((1..30).map(mail::plain));
    for b in &bodies {
        imap.append("INBOX", &["\\Seen"], "05-Mar-2021 10:00:00 +0000", b);
    }
    let mut want: Vec<Vec<u8>> = imap
        .fetch_all("INBOX")
        .into_iter()
        .map(|m| m.body)
        .collect();
    imap.logout();
    let env = TestEnv::new();
    let mut toml = env.account_toml_with("a", &a, Tls::Starttls, "compress = true\n");
    toml.push_str(&env.account_toml("b", &b, "compress = true\n"));
    env.write_config(&toml);
    let out = env
        .cmd()
        .args(["-v", "pull", "--account", "a"])
        .assert()
        .success();
    let log = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        log.contains("COMPRESS=DEFLATE on"),
        "pull did not compress:\n{log}"
    );
    let out = env
        .cmd()
        .args(["-v", "restore", "--account", "a", "--to", "b"])
        .assert()
        .success();
    let log = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        log.contains("COMPRESS=DEFLATE on"),
        "restore did not compress:\n{log}"
    );
    let mut got: Vec<Vec<u8>> = b
        .imap()
        .fetch_all("INBOX")
        .into_iter()
        .map(|m| m.body)
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), bodies.len());
    assert!(got == want, "restored bytes differ from the source's");
}

/// A pull with the default `compress = "auto"` through `proxy`: its `-v`
/// log, after checking that every message arrived.
fn auto_pull_through(user: &User, proxy: &Proxy) -> String {
    let env = TestEnv::new();
    let toml = env.account_toml("a", user, "").replace(
        &format!("port = {}", dovecot().imaps_port),
        &format!("port = {}", proxy.port),
    );
    env.write_config(&toml);
    let out = env.cmd().args(["-v", "pull"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    let got = support::folder_messages(&env.archive("a"), "");
    assert_eq!(got.len(), 12, "{log}");
    log
}

fn auto_user(prefix: &str) -> User {
    let user = dovecot().new_user(prefix);
    let mut imap = user.imap();
    for n in 0..12 {
        imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    imap.logout();
    user
}

#[test]
fn auto_leaves_deflate_off_when_only_the_handshakes_were_slow() {
    // The server's first three reads (TLS handshake, greeting, LOGIN's
    // reply) come 15 ms late, the rest at once: a loaded loopback (13-38
    // ms measured there, issue 14), where deflate only burns CPU.
    let user = auto_user("auto-busy");
    let proxy = Proxy::start_every(dovecot().imaps_port, Fault::SlowStart { reads: 3, ms: 15 });
    let log = auto_pull_through(&user, &proxy);
    assert!(log.contains("COMPRESS=DEFLATE wanted"), "{log}");
    assert!(log.contains("COMPRESS=DEFLATE left off"), "{log}");
    assert!(!log.contains("COMPRESS=DEFLATE on"), "{log}");
}

#[test]
fn auto_turns_deflate_on_over_a_slow_link() {
    let user = auto_user("auto-slow");
    let proxy = Proxy::start_every(dovecot().imaps_port, Fault::Latency { ms: 25 });
    let log = auto_pull_through(&user, &proxy);
    assert!(log.contains("COMPRESS=DEFLATE on"), "{log}");
    assert!(!log.contains("left off"), "{log}");
}
