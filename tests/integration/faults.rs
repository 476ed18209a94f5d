//! The promises of the reliability and security suite for pull: connection
//! faults, hostile servers, TLS refusals, credentials that never leak, and
//! a full disk. Each test fails if its promise is broken.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use crate::fakes::{
    certs, fetch_response, FakeMailbox, FakeServer, Fault, Greeting, HoldProxy, Hook, Proxy,
};
use crate::support::{self, dovecot, mail, TestEnv, User};

const PW: &str = "fake-Secret-pw-7731";

/// A config for the fake server on `port` (CA of fakes::certs()).
fn fake_config(env: &TestEnv, port: u16, tls: &str, extra: &str) {
    let ca = env.path().join("ca.pem");
    fs::write(&ca, &certs().ca_pem).unwrap();
    env.write_config(&format!(
        "[accounts.a]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\nuser = \"u\"\n\
         password-env = \"IMAPBAK_FAKE_PW\"\nca-file = {}\narchive = {}\n{}{extra}\n",
        support::toml_str(&ca.display().to_string()),
        support::toml_str(&env.archive("a").display().to_string()),
        // 5 s unless the test sets its own.
        if extra.contains("timeout") {
            ""
        } else {
            "timeout = 5\n"
        },
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
        out.status.signal().is_none() && out.status.code() != Some(101),
        "imapbak crashed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mailbox(name: &str, n: usize) -> FakeMailbox {
    FakeMailbox {
        name: name.to_string(),
        delimiter: "/".into(),
        messages: (0..n as u32).map(mail::plain).collect(),
    }
}

/// Every path under `root` (files, dirs and symlinks).
fn tree(root: &Path) -> Vec<PathBuf> {
    WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn hostile_mailbox_names_never_write_outside_the_archive() {
    let hostile = [
        ("../../escaped", "/"),
        ("a/../../b", "/"),
        ("..", "."),
        ("cur", "/"),
        ("new/../../x", "/"),
        ("~root", "/"),
        ("tab\there", "/"),
        ("nul\0byte", "/"),
    ];
    let mut boxes: Vec<FakeMailbox> = hostile
        .iter()
        .map(|(n, d)| FakeMailbox {
            name: n.to_string(),
            delimiter: d.to_string(),
            messages: vec![mail::plain(1)],
        })
        .collect();
    boxes.push(mailbox(&"L".repeat(300), 1));
    boxes.push(mailbox("INBOX", 2));
    let server = FakeServer::start(Greeting::Tls(certs().valid.clone()), boxes, |_, _, _, _| {
        Hook::Pass
    });
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull"]);
    let archive = env.archive("a");
    // Every path created is inside the archive, and every folder is a
    // direct child of mail/ whose name starts with '.' (or INBOX itself).
    for p in tree(&archive.join("mail")) {
        let rel = p.strip_prefix(archive.join("mail")).unwrap();
        let first = rel.components().next();
        if let Some(std::path::Component::Normal(f)) = first {
            let f = f.to_string_lossy();
            assert!(
                f.starts_with('.') || ["cur", "new", "tmp"].contains(&f.as_ref()),
                "unexpected entry {rel:?}"
            );
        }
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }
    // Nothing beside the archive in the test directory, nothing in its parent.
    for e in fs::read_dir(env.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            ["config.toml", "ca.pem", "archive-a", "home"].contains(&name.as_str()),
            "something was written outside the archive: {name}"
        );
    }
    for name in ["escaped", "b", "x"] {
        assert!(
            !env.path().parent().unwrap().join(name).exists(),
            "{name} escaped"
        );
    }
    // INBOX and the hostile-but-mappable names were archived; the 300-byte
    // name was refused and reported; the run says it was partial.
    assert_eq!(support::folder_files(&archive, "").len(), 2);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("LLLL"), "{}", stderr(&out));
    let folders: Vec<String> = fs::read_dir(archive.join("mail"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    // ".." with delimiter "." has only empty levels: refused, not mapped.
    assert_eq!(folders.len(), hostile.len() - 1, "{folders:?}");
    assert!(stderr(&out).contains("`..`"), "{}", stderr(&out));
}

#[test]
fn a_symlink_planted_in_the_archive_is_not_followed() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("Box", 1), mailbox("INBOX", 1)],
        |_, _, _, _| Hook::Pass,
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let target = env.path().join("elsewhere");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(env.archive("a").join("mail")).unwrap();
    std::os::unix::fs::symlink(&target, env.archive("a").join("mail/.Box")).unwrap();
    let out = run(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(".Box"), "{}", stderr(&out));
    assert!(tree(&target).len() == 1, "wrote through the symlink");
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 1);
}

/// A hook that answers the body FETCH of mailbox `name` with `answer`
/// (given the command's tag) and passes everything else on.
fn on_body_fetch_in(
    name: &'static str,
    answer: impl Fn(&str, &mut crate::fakes::Session) -> Hook + Send + Sync + 'static,
) -> impl Fn(usize, &str, &str, &mut crate::fakes::Session) -> Hook + Send + Sync + 'static {
    let selected = std::sync::Mutex::new(String::new());
    move |_, tag, cmd, s| {
        if let Some(examined) = cmd.strip_prefix("EXAMINE ") {
            *selected.lock().unwrap() = examined.trim_matches('"').to_string();
            return Hook::Pass;
        }
        if cmd.contains("BODY.PEEK[]") && *selected.lock().unwrap() == name {
            return answer(tag, s);
        }
        Hook::Pass
    }
}

#[test]
fn malformed_fetch_fails_that_mailbox_only() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("Bad", 2), mailbox("INBOX", 2)],
        on_body_fetch_in("Bad", |tag, s| {
            let _ = s.send(
                format!("* 1 FETCH (UID 1 BODY[] NIL INTERNALDATE)))\r\n{tag} OK done\r\n")
                    .as_bytes(),
            );
            Hook::Done
        }),
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`Bad`"), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
}

/// Runs imapbak; returns its exit code, stderr and peak RSS in KiB
/// ([`support::wait_with_peak_rss`]).
fn run_measured(env: &TestEnv, args: &[&str]) -> (i32, String, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imapbak"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .env("IMAPBAK_FAKE_PW", PW)
        .env("HOME", env.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut err = String::new();
        stderr_pipe.read_to_string(&mut err).unwrap();
        err
    });
    let (status, peak) = support::wait_with_peak_rss(&mut child);
    let err = reader.join().unwrap();
    assert!(
        status.signal().is_none(),
        "imapbak died: status {status:?}\n{err}"
    );
    (status.code().unwrap_or(-1), err, peak)
}

#[test]
fn a_literal_claiming_gigabytes_is_refused_without_allocating_it() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 1)],
        |_, _, cmd, s| {
            if cmd.contains("BODY.PEEK[]") {
                let _ =
                    s.send(b"* 1 FETCH (UID 1 RFC822.SIZE 300 BODY[] {4000000000}\r\nFrom: x\r\n");
                std::thread::sleep(Duration::from_millis(500));
                return Hook::Close;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let (code, err, rss_kib) = run_measured(&env, &["pull"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("literal"), "{err}");
    assert!(rss_kib < 100 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn a_line_without_end_and_endless_responses_are_cut_off() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 1), mailbox("Other", 1)],
        |n, _, cmd, s| {
            if cmd.contains("BODY.PEEK[]") && n == 0 {
                // 20 MiB of one line, no CRLF.
                let chunk = vec![b'x'; 1024 * 1024];
                let _ = s.send(b"* OK ");
                for _ in 0..20 {
                    if s.send(&chunk).is_err() {
                        break;
                    }
                }
                return Hook::Close;
            }
            if cmd.contains("BODY.PEEK[]") && n == 1 {
                // Flag updates forever (bounded here to 100,000).
                let line = b"* 1 FETCH (FLAGS (\\Seen))\r\n".repeat(1000);
                for _ in 0..100 {
                    if s.send(&line).is_err() {
                        break;
                    }
                }
                return Hook::Close;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    // Room for 20 MiB through TLS on a loaded machine: the point is the
    // cut, not the clock.
    fake_config(&env, server.port, "implicit", "timeout = 20");
    let (code, err, rss_kib) = run_measured(&env, &["pull", "--jobs", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("longer than"), "{err}");
    assert!(err.contains("unrelated responses"), "{err}");
    assert!(rss_kib < 150 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn uids_outside_the_requested_set_are_not_archived() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 1)],
        |_, tag, cmd, s| {
            if cmd.contains("BODY.PEEK[]") {
                let mut r = fetch_response(1, &mail::plain(1));
                r.extend(fetch_response(999, &mail::plain(999)));
                r.extend(format!("{tag} OK done\r\n").into_bytes());
                let _ = s.send(&r);
                return Hook::Done;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = support::folder_files(&env.archive("a"), "");
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().contains("U1."));
}

#[test]
fn bye_in_the_middle_of_a_fetch_keeps_what_arrived_and_a_rerun_completes() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 10)],
        |n, _, cmd, s| {
            if cmd.contains("BODY.PEEK[]") && n == 0 {
                let mut r = Vec::new();
                for uid in 1..=4 {
                    r.extend(fetch_response(uid, &mail::plain(uid - 1)));
                }
                r.extend_from_slice(b"* BYE server shutting down\r\n");
                let _ = s.send(&r);
                return Hook::Close;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`INBOX`"), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 4);
    let out = run(&env, &["pull", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = support::folder_messages(&env.archive("a"), "");
    assert_eq!(got.len(), 10);
    for n in 0..10 {
        assert!(got.contains(&mail::plain(n)));
    }
}

/// Asserts a refusal before any credentials were sent: exit 3, one error
/// naming the reason, no LOGIN on the server, nothing written.
fn assert_refused(greeting: Greeting, tls: &str, reason: &str) {
    let server = assert_run_refused(greeting, tls, reason);
    assert!(
        !server.saw_login(),
        "credentials were sent: {:?}",
        server.commands()
    );
}

/// Asserts a refused run: exit 3, one error naming the reason, nothing
/// written. The server, to ask what it saw.
fn assert_run_refused(greeting: Greeting, tls: &str, reason: &str) -> FakeServer {
    let server = FakeServer::start(greeting, vec![mailbox("INBOX", 1)], |_, _, _, _| Hook::Pass);
    let env = TestEnv::new();
    fake_config(&env, server.port, tls, "");
    let out = run(&env, &["pull"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(reason), "expected `{reason}` in:\n{err}");
    assert!(err.contains("hint:"), "{err}");
    // Give the server a moment to log anything that did arrive.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!env.archive("a").exists());
    server
}

#[test]
fn tls_refusals_happen_before_credentials_are_sent() {
    let c = certs();
    assert_refused(Greeting::Tls(c.expired.clone()), "implicit", "expired");
    assert_refused(
        Greeting::Tls(c.wrong_host.clone()),
        "implicit",
        "not valid for name",
    );
    assert_refused(Greeting::Tls(c.self_signed.clone()), "implicit", "sha256:");
    // Implicit TLS sends LOGIN as soon as the certificate checks out, in
    // the handshake's last flight (issue 14: the greeting is no round trip
    // of its own), so a PREAUTH greeting from the verified server comes
    // after it: the run is still refused, and the password went nowhere
    // but to the certificate's holder, the server it was meant for.
    let server = assert_run_refused(Greeting::TlsPreauth(c.valid.clone()), "implicit", "PREAUTH");
    assert!(
        server.commands().iter().all(|c| c
            .split(' ')
            .nth(1)
            .is_some_and(|v| v.eq_ignore_ascii_case("LOGIN"))),
        "{:?}",
        server.commands()
    );
    assert_refused(Greeting::PlainPreauth, "starttls", "PREAUTH");
    assert_refused(
        Greeting::StartTls {
            config: c.valid.clone(),
            offer: false,
            inject: false,
        },
        "starttls",
        "does not offer STARTTLS",
    );
    assert_refused(
        Greeting::StartTls {
            config: c.valid.clone(),
            offer: true,
            inject: true,
        },
        "starttls",
        "injection",
    );
}

#[test]
fn starttls_done_right_works() {
    let server = FakeServer::start(
        Greeting::StartTls {
            config: certs().valid.clone(),
            offer: true,
            inject: false,
        },
        vec![mailbox("INBOX", 2)],
        |_, _, _, _| Hook::Pass,
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "starttls", "");
    let out = run(&env, &["pull"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
}

/// Every byte a run left behind: stdout, stderr, and every file it wrote.
fn everything(env: &TestEnv, outs: &[Output]) -> Vec<u8> {
    let mut all = Vec::new();
    for o in outs {
        all.extend_from_slice(&o.stdout);
        all.extend_from_slice(&o.stderr);
    }
    for p in tree(env.path()) {
        if p.is_file() && p != env.config_path() {
            all.extend(fs::read(&p).unwrap_or_default());
            if let Ok(bytes) = zstd::decode_all(fs::File::open(&p).unwrap()) {
                all.extend(bytes);
            }
        }
    }
    all
}

#[test]
fn the_password_never_appears_in_output_logs_json_or_files() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 2)],
        |_, tag, cmd, s| {
            if cmd.to_ascii_uppercase().starts_with("LOGIN") && cmd.contains("wrong") {
                let _ = s.send(
                    format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                        .as_bytes(),
                );
                return Hook::Done;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let mut outs = vec![
        run(&env, &["-vv", "pull", "--json"]),
        run(&env, &["-vv", "check"]),
    ];
    let ok = &outs[0];
    assert!(ok.status.success(), "{}", stderr(ok));
    // A failing login, with RUST_LOG asking for everything.
    let wrong = "wrong-Secret-pw-4242";
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", wrong)
        .env("RUST_LOG", "trace")
        .args(["-vv", "pull", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    outs.push(out);
    let all = everything(&env, &outs);
    for secret in [PW, wrong] {
        assert!(
            !all.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "`{secret}` leaked"
        );
    }
    // The server did receive it (so the search above could have found it).
    assert!(server.commands().iter().any(|c| c.contains(PW)));
}

#[test]
fn a_failing_password_command_is_one_clear_error() {
    let env = TestEnv::new();
    env.write_config(
        "[accounts.a]\nhost = \"127.0.0.1\"\nuser = \"u\"\n\
         password-command = \"echo 'vault is sealed' >&2; exit 7\"\narchive = \"x\"\n",
    );
    let out = env.cmd().arg("pull").output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("password-command") && err.contains("vault is sealed"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

// --- connection faults against the real Dovecot, through the proxy --------

/// A user with a big mailbox (6 messages of ~400 KiB) and a small one.
fn seeded_user(prefix: &str) -> User {
    let user = dovecot().new_user(prefix);
    let mut imap = user.imap();
    imap.create("Big");
    imap.create("Small");
    for n in 0..6 {
        let mut m = mail::plain(n);
        m.extend(support::mail::base64(&mail::pseudo_random(n as u64, 300 * 1024)).into_bytes());
        imap.append("Big", &[], "01-Feb-2022 10:00:00 +0000", &m);
    }
    for n in 0..3 {
        imap.append("Small", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    user
}

fn proxied_env(user: &User, proxy: &Proxy, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let toml = env.account_toml("a", user, extra).replace(
        &format!("port = {}", dovecot().imaps_port),
        &format!("port = {}", proxy.port),
    );
    env.write_config(&toml);
    env
}

/// After a fault: the run was partial, named `Big`, archived `Small`, left
/// nothing half-written outside tmp/, and a clean rerun completes.
fn assert_fault_scoped(env: &TestEnv, user: &User, out: &Output, reason: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("`Big`"), "{err}");
    assert!(err.contains(reason), "expected `{reason}` in:\n{err}");
    let archive = env.archive("a");
    assert_eq!(support::folder_files(&archive, ".Small").len(), 3);
    for f in support::folder_files(&archive, ".Big") {
        support::read_zstd(&f); // every file outside tmp/ is whole
    }
    let out = env.cmd().arg("pull").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let server = user.imap().fetch_all("Big");
    let got = support::folder_messages(&archive, ".Big");
    assert_eq!(got.len(), server.len());
    for m in server {
        assert!(got.contains(&m.body));
    }
}

#[test]
fn a_connection_cut_mid_literal_fails_that_mailbox_and_a_rerun_completes() {
    let user = seeded_user("cut");
    let proxy = Proxy::start(dovecot().imaps_port, Fault::CutAfter(900 * 1024));
    let env = proxied_env(&user, &proxy, "");
    let out = env.cmd().args(["pull", "--jobs", "1"]).output().unwrap();
    assert_fault_scoped(&env, &user, &out, "");
}

#[test]
fn a_stalled_server_times_out_within_the_configured_bound() {
    let user = seeded_user("stall");
    let proxy = Proxy::start(dovecot().imaps_port, Fault::StallAfter(900 * 1024));
    let env = proxied_env(&user, &proxy, "timeout = 2");
    let start = Instant::now();
    let out = env.cmd().args(["pull", "--jobs", "1"]).output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        start.elapsed()
    );
    assert_fault_scoped(&env, &user, &out, "timed out after 2 s");
}

#[test]
fn a_trickling_server_is_slow_but_complete() {
    let user = dovecot().new_user("trickle");
    for n in 0..3 {
        user.imap()
            .append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &mail::plain(n));
    }
    let proxy = Proxy::start(
        dovecot().imaps_port,
        Fault::Trickle {
            chunk: 256,
            pause_ms: 2,
        },
    );
    let env = proxied_env(&user, &proxy, "timeout = 5");
    let out = env.cmd().args(["pull", "--jobs", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 3);
}

// --- a full disk --------------------------------------------------------------

/// A tmpfs of `mb` MiB at `dir`, unmounted on drop; None (with the reason
/// printed) where mounting is not allowed.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, mb: u32) -> Result<SmallFs, String> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(SmallFs(dir.to_path_buf()))
    }

    fn grow(&self, mb: u32) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_clearly_keeps_the_archive_whole_and_a_rerun_completes() {
    let user = dovecot().new_user("diskfull");
    let mut imap = user.imap();
    for n in 0..12 {
        let mut m = mail::plain(n);
        m.extend(
            support::mail::base64(&mail::pseudo_random(n as u64 + 50, 400 * 1024)).into_bytes(),
        );
        imap.append("INBOX", &[], "01-Feb-2022 10:00:00 +0000", &m);
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let small = match SmallFs::mount(&env.archive("a"), 2) {
        Ok(fs) => fs,
        Err(why) => {
            // Documented skip: containers without CAP_SYS_ADMIN cannot mount.
            eprintln!("SKIPPED a_full_disk_...: tmpfs mount not allowed here: {why}");
            return;
        }
    };
    // With an expunge asked for: a failed pull must not expunge anything.
    let out = env
        .cmd()
        .args(["pull", "--jobs", "1", "--expunge-older-than", "1d"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(
        user.imap().fetch_all("INBOX").len(),
        12,
        "expunged after a failed pull"
    );
    // What is in cur/ is whole and journaled (a rerun finds nothing to repair).
    let archive = env.archive("a");
    let kept = support::folder_files(&archive, "");
    assert!(!kept.is_empty() && kept.len() < 12, "{} files", kept.len());
    for f in &kept {
        support::read_zstd(f);
    }
    small.grow(64);
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let server = user.imap().fetch_all("INBOX");
    let got = support::folder_messages(&archive, "");
    assert_eq!(got.len(), 12);
    for m in server {
        assert!(got.contains(&m.body));
    }
}

#[test]
fn pull_and_expunge_share_one_lock_and_a_killed_holder_releases_it() {
    let user = dovecot().new_user("locks");
    user.imap()
        .append("INBOX", &[], "01-Feb-2020 10:00:00 +0000", &mail::plain(1));
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    // Hold the archive's lock from another process, as a running pull or
    // expunge would.
    let lock = env.archive("a").join("state/lock");
    // -o: the lock stays with flock itself, not with its child.
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "20"])
        .spawn()
        .unwrap();
    let start = Instant::now();
    while Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the holder never locked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for args in [&["pull"][..], &["expunge", "--older-than", "1d"][..]] {
        let out = env.cmd().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
    }
    holder.kill().unwrap(); // SIGKILL: the kernel drops the lock
    holder.wait().unwrap();
    env.cmd()
        .args(["expunge", "--older-than", "1d"])
        .assert()
        .success();
    assert!(user.imap().fetch_all("INBOX").is_empty());
    env.cmd().arg("pull").assert().success();
}

// --- crash points that a random kill rarely hits, set up exactly -----------

fn journal_of(archive: &Path, folder: &str) -> PathBuf {
    let key = if folder.is_empty() { "INBOX" } else { folder };
    archive.join("state/mailboxes").join(key).join("journal")
}

fn pulled_env(prefix: &str, n: u32) -> (User, TestEnv) {
    let user = dovecot().new_user(prefix);
    let mut imap = user.imap();
    for i in 0..n {
        imap.append(
            "INBOX",
            &["\\Seen"],
            "01-Feb-2022 10:00:00 +0000",
            &mail::plain(i),
        );
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    (user, env)
}

#[test]
fn a_crash_between_rename_and_journal_is_repaired_without_downloading() {
    let (user, env) = pulled_env("renamecrash", 6);
    let journal = journal_of(&env.archive("a"), "");
    // The state a crash leaves: files in cur/ whose journal lines were never
    // written.
    let text = fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    fs::write(&journal, format!("{}\n", kept.join("\n"))).unwrap();
    // Make the mailbox worth opening.
    user.imap().append(
        "INBOX",
        &[],
        "01-Feb-2022 10:00:00 +0000",
        &mail::plain(100),
    );
    let out = env.cmd().args(["-vv", "pull", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fetched"], 1, "re-downloaded archived messages");
    assert_eq!(fs::read_to_string(&journal).unwrap().lines().count(), 7);
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 7);
}

#[test]
fn a_torn_journal_and_leftovers_of_a_crashed_rewrite_are_harmless() {
    let (user, env) = pulled_env("torn", 4);
    let archive = env.archive("a");
    let journal = journal_of(&archive, "");
    // A torn last line (crash mid-append), a half-written temporary journal
    // (crash mid-rewrite) and a half-written message in tmp/.
    let mut text = fs::read(&journal).unwrap();
    text.extend_from_slice(b"123\t9\t40\tabc");
    fs::write(&journal, &text).unwrap();
    fs::write(journal.with_file_name(".journal.tmp99999"), b"1\t2\t").unwrap();
    fs::write(
        archive.join("mail/tmp/1.V1U99.imapbak,S=9,W=9"),
        b"\x28\xb5\x2f",
    )
    .unwrap();
    user.imap().append(
        "INBOX",
        &[],
        "01-Feb-2022 10:00:00 +0000",
        &mail::plain(100),
    );
    let out = env.cmd().args(["pull", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fetched"], 1);
    let lines = fs::read_to_string(&journal).unwrap();
    assert_eq!(lines.lines().count(), 5, "{lines}");
    assert!(lines.ends_with('\n'));
    let server = user.imap().fetch_all("INBOX");
    let got = support::folder_messages(&archive, "");
    assert_eq!(got.len(), server.len());
}

// --- connection faults during restore and expunge ---------------------------

/// A user with 40 messages of ~20 KiB in INBOX, pulled into account `a`;
/// account `b` reaches `target` through `proxy`.
fn restore_env(target: &User, proxy: &Proxy) -> (User, TestEnv) {
    restore_env_on(target, proxy.port, "timeout = 3")
}

/// [`restore_env`] with account `b` on `port` and `extra` settings.
fn restore_env_on(target: &User, port: u16, extra: &str) -> (User, TestEnv) {
    let source = dovecot().new_user("rsource");
    let mut imap = source.imap();
    for n in 0..40 {
        let mut m = mail::plain(n);
        m.extend(support::mail::base64(&mail::pseudo_random(n as u64 + 7, 15 * 1024)).into_bytes());
        imap.append("INBOX", &["\\Seen"], "01-Feb-2022 10:00:00 +0000", &m);
    }
    let env = TestEnv::new();
    let b = env.account_toml("b", target, extra).replace(
        &format!("port = {}", dovecot().imaps_port),
        &format!("port = {port}"),
    );
    env.write_config(&format!("{}{b}", env.account_toml("a", &source, "")));
    env.cmd().args(["pull", "-a", "a"]).assert().success();
    (source, env)
}

/// Every source message is on the target exactly once.
fn assert_restored_once(source: &User, target: &User) {
    let want = source.imap().fetch_all("INBOX");
    let got = target.imap().fetch_all("INBOX");
    assert_eq!(got.len(), want.len(), "duplicates or losses on the target");
    for m in want {
        assert_eq!(got.iter().filter(|g| g.body == m.body).count(), 1);
    }
}

#[test]
fn restore_survives_a_cut_and_a_stall_with_every_message_exactly_once() {
    for fault in [Fault::CutAfter(4 * 1024), Fault::StallAfter(4 * 1024)] {
        let target = dovecot().new_user("rtarget");
        let proxy = Proxy::start(dovecot().imaps_port, fault);
        let (source, env) = restore_env(&target, &proxy);
        let start = Instant::now();
        let out = env
            .cmd()
            .args(["restore", "-a", "a", "--to", "b", "--jobs", "1"])
            .output()
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{fault:?} took {:?}",
            start.elapsed()
        );
        if !out.status.success() {
            // A fault may fail the run; it must say so and a rerun completes.
            assert_eq!(out.status.code(), Some(1), "{fault:?}: {}", stderr(&out));
            env.cmd()
                .args(["restore", "-a", "a", "--to", "b"])
                .assert()
                .success();
        }
        assert_restored_once(&source, &target);
    }
}

/// Client bytes after which the holding proxy keeps the rest: past LOGIN,
/// LIST and the fingerprint FETCH, well inside the 40-message APPEND.
const HOLD_AFTER: usize = 64 * 1024;
/// Held bytes that prove the APPEND batch was sent (it is about 800 KiB).
const HELD_BATCH: usize = 200 * 1024;
const RESTORE_ARGS: [&str; 7] = ["restore", "-a", "a", "--to", "b", "--jobs", "1"];

fn messages_in_inbox(user: &User) -> u32 {
    user.imap().status("INBOX").2
}

fn wait_for_messages(user: &User, n: u32) {
    let start = Instant::now();
    while messages_in_inbox(user) < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {} of {n} messages arrived",
            messages_in_inbox(user)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_quiet(cmd: &mut Command) -> std::process::Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn restore_rerun_right_after_kill_9_with_appends_in_flight_restores_each_message_once() {
    // The sequence, made deterministic: the first run's APPENDs sit
    // in the proxy when it is killed; the rerun fingerprints an empty
    // target and appends; only then do the dead run's APPENDs reach the
    // server (and land), before the rerun's own.
    let target = dovecot().new_user("rkill");
    let proxy = HoldProxy::start(dovecot().imaps_port, HOLD_AFTER);
    let (source, env) = restore_env_on(&target, proxy.port, "timeout = 30");
    let mut dead = spawn_quiet(env.std_cmd().args(RESTORE_ARGS));
    assert!(
        proxy.wait_held(0, HELD_BATCH, Duration::from_secs(60)),
        "the first run never sent its APPENDs"
    );
    dead.kill().unwrap(); // SIGKILL
    dead.wait().unwrap();
    assert_eq!(messages_in_inbox(&target), 0, "nothing may land yet");
    let rerun = spawn_quiet(env.std_cmd().args(RESTORE_ARGS).arg("--json"));
    assert!(
        proxy.wait_held(1, HELD_BATCH, Duration::from_secs(60)),
        "the rerun never appended"
    );
    proxy.release(0);
    wait_for_messages(&target, 40);
    proxy.release(1);
    let out = rerun.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_restored_once(&source, &target);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["appended"], 40, "{report}");
    assert_eq!(report["removed"], 40, "{report}");
    // And the next run finds nothing to do.
    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["appended"], 0, "{report}");
    assert_restored_once(&source, &target);
}

#[test]
fn restore_stops_on_ctrl_c_after_the_answers_in_flight_with_status_130() {
    let target = dovecot().new_user("rint");
    let proxy = HoldProxy::start(dovecot().imaps_port, HOLD_AFTER);
    let (source, env) = restore_env_on(&target, proxy.port, "timeout = 30");
    let child = spawn_quiet(env.std_cmd().args(RESTORE_ARGS));
    assert!(proxy.wait_held(0, HELD_BATCH, Duration::from_secs(60)));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // The batch's answer arrives after the signal: it is read and recorded.
    std::thread::sleep(Duration::from_millis(200));
    proxy.release(0);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(messages_in_inbox(&target), 40);
    let out = env
        .cmd()
        .args(["restore", "-a", "a", "--to", "b", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["appended"], 0, "the answers were recorded: {report}");
    assert_restored_once(&source, &target);
}

#[test]
fn a_second_ctrl_c_quits_at_once_and_a_rerun_restores_each_message_once() {
    let target = dovecot().new_user("rint2");
    let proxy = HoldProxy::start(dovecot().imaps_port, HOLD_AFTER);
    let (source, env) = restore_env_on(&target, proxy.port, "timeout = 30");
    let child = spawn_quiet(env.std_cmd().args(RESTORE_ARGS));
    assert!(proxy.wait_held(0, HELD_BATCH, Duration::from_secs(60)));
    let start = Instant::now();
    for _ in 0..2 {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // Its APPENDs are still in flight: they land while the rerun runs.
    let rerun = spawn_quiet(env.std_cmd().args(RESTORE_ARGS));
    assert!(proxy.wait_held(1, HELD_BATCH, Duration::from_secs(60)));
    proxy.release(0);
    wait_for_messages(&target, 40);
    proxy.release(1);
    let out = rerun.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_restored_once(&source, &target);
}

#[test]
fn pull_stops_on_sigterm_with_status_143_and_a_rerun_completes() {
    let user = seeded_user("pterm");
    let proxy = Proxy::start(
        dovecot().imaps_port,
        Fault::Trickle {
            chunk: 16 * 1024,
            pause_ms: 20,
        },
    );
    let env = proxied_env(&user, &proxy, "");
    let child = spawn_quiet(env.std_cmd().args(["pull", "--jobs", "1"]));
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    let archive = env.archive("a");
    for f in support::folder_files(&archive, ".Big") {
        support::read_zstd(&f); // every file outside tmp/ is whole
    }
    let out = env.cmd().arg("pull").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for (folder, name) in [(".Big", "Big"), (".Small", "Small")] {
        let server = user.imap().fetch_all(name);
        let got = support::folder_messages(&archive, folder);
        assert_eq!(got.len(), server.len(), "`{name}`");
        for m in server {
            assert_eq!(got.iter().filter(|g| **g == m.body).count(), 1);
        }
    }
}

#[test]
fn expunge_cut_at_any_point_deletes_only_verified_mail_and_a_rerun_finishes() {
    // Cut points from the TLS handshake through listing, the metadata FETCH,
    // STORE and UID EXPUNGE.
    let mut failures = 0;
    for cut in [2_500, 4_000, 6_000, 9_000, 14_000] {
        let user = dovecot().new_user("xcut");
        let mut imap = user.imap();
        for n in 0..30 {
            imap.append(
                "INBOX",
                &["\\Seen"],
                "01-Feb-2020 10:00:00 +0000",
                &mail::plain(n),
            );
        }
        let proxy = Proxy::start(dovecot().imaps_port, Fault::CutAfter(cut));
        let env = TestEnv::new();
        let direct = env.account_toml("a", &user, "timeout = 3");
        env.write_config(&direct);
        env.cmd().arg("pull").assert().success();
        // Old by date, but arrived after the pull: never to be expunged.
        imap.append(
            "INBOX",
            &[],
            "01-Feb-2020 10:00:00 +0000",
            &mail::plain(999),
        );
        env.write_config(&direct.replace(
            &format!("port = {}", dovecot().imaps_port),
            &format!("port = {}", proxy.port),
        ));
        let out = env
            .cmd()
            .args(["expunge", "--older-than", "1y"])
            .output()
            .unwrap();
        assert!(out.status.signal().is_none() && out.status.code() != Some(101));
        if !out.status.success() {
            failures += 1;
            assert!(stderr(&out).contains("error"), "{}", stderr(&out));
        }
        let rerun = env
            .cmd()
            .args(["expunge", "--older-than", "1y"])
            .output()
            .unwrap();
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        let mut left = user.imap().fetch_all("INBOX");
        // A cut that loses the STORE's answer leaves marks imapbak cannot
        // prove its own: they stay, marked, and the rerun names them.
        let unproven: Vec<u32> = left
            .iter()
            .filter(|m| m.body != mail::plain(999))
            .map(|m| m.uid)
            .collect();
        for uid in &unproven {
            let m = left.iter().find(|m| m.uid == *uid).unwrap();
            assert!(m.flags.iter().any(|f| f == "\\Deleted"), "cut at {cut}");
            assert!(stderr(&rerun).contains("left marked"), "cut at {cut}");
        }
        left.retain(|m| !unproven.contains(&m.uid));
        assert_eq!(
            left.len(),
            1,
            "cut at {cut}: only the unarchived message stays"
        );
        assert_eq!(left[0].body, mail::plain(999));
        assert!(left[0].flags.iter().all(|f| f != "\\Deleted"));
        assert_eq!(support::folder_files(&env.archive("a"), "").len(), 30);
    }
    assert!(
        failures >= 3,
        "the cuts hardly hit anything ({failures} failures)"
    );
}

#[test]
fn without_list_status_pipelined_status_lets_unchanged_mailboxes_be_skipped() {
    let names = ["INBOX", "A", "B", "C"];
    let boxes: Vec<FakeMailbox> = names.iter().map(|n| mailbox(n, 2)).collect();
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        boxes,
        |_, tag, cmd, s| {
            let upper = cmd.to_ascii_uppercase();
            let reply = if upper == "CAPABILITY" {
                format!("* CAPABILITY IMAP4rev1 UIDPLUS CONDSTORE\r\n{tag} OK done\r\n")
            } else if let Some(rest) = cmd.strip_prefix("STATUS ") {
                let name = rest.split('"').nth(1).unwrap_or("");
                format!(
                "* STATUS \"{name}\" (MESSAGES 2 UIDNEXT 3 UIDVALIDITY 7 HIGHESTMODSEQ 5)\r\n{tag} OK done\r\n"
            )
            } else {
                return Hook::Pass;
            };
            let _ = s.send(reply.as_bytes());
            Hook::Done
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), ".A").len(), 2);
    let first = server.commands().len();
    let out = run(&env, &["pull", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second: Vec<String> = server.commands()[first..].to_vec();
    let count = |verb: &str| second.iter().filter(|c| c.contains(verb)).count();
    assert_eq!(count(" STATUS "), names.len(), "{second:?}");
    assert_eq!(
        count(" EXAMINE "),
        0,
        "an unchanged mailbox was opened: {second:?}"
    );
}

#[test]
fn a_response_that_panics_the_imap_parser_fails_only_that_connection() {
    // imap-proto 0.17 panics on this (found by fuzzing): it must cost one
    // connection, not the process.
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("Bad", 2), mailbox("INBOX", 2)],
        on_body_fetch_in("Bad", |_, s| {
            let _ = s.send(b"* 1 FETCH (INTERNALDATE NIL)\r\n");
            Hook::Close
        }),
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`Bad`"), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
}

#[test]
fn a_message_left_out_of_a_successful_fetch_is_asked_for_again() {
    // First connection: the FETCH answer silently skips UID 2 (as servers
    // do with items they cannot convert); later connections behave.
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 3)],
        |n, tag, cmd, s| {
            if n == 0 && cmd.contains("BODY.PEEK[]") {
                let mut r = fetch_response(1, &mail::plain(0));
                r.extend(fetch_response(3, &mail::plain(2)));
                r.extend(format!("{tag} OK done\r\n").into_bytes());
                let _ = s.send(&r);
                return Hook::Done;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("UID 2"), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
    let out = run(&env, &["pull"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = support::folder_messages(&env.archive("a"), "");
    assert_eq!(got.len(), 3);
    assert!(got.contains(&mail::plain(1)));
}

#[test]
fn a_message_expunged_between_listing_and_fetch_is_not_an_error() {
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![mailbox("INBOX", 3)],
        |_, tag, cmd, s| {
            if cmd.contains("BODY.PEEK[]") {
                let mut r = fetch_response(1, &mail::plain(0));
                r.extend(fetch_response(3, &mail::plain(2)));
                r.extend(format!("{tag} OK done\r\n").into_bytes());
                let _ = s.send(&r);
                return Hook::Done;
            }
            if cmd.ends_with("(UID)") {
                // UID 2 is gone now.
                let _ = s.send(format!("{tag} OK done\r\n").as_bytes());
                return Hook::Done;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    fake_config(&env, server.port, "implicit", "");
    let out = run(&env, &["pull"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
}
