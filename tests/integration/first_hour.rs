//! What a new user trips over in the first hour (issue 18): the exit
//! status of a run over several accounts, port and TLS mode mismatched,
//! configuration typos, and error text that reads as English.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fakes::{certs, FakeMailbox, FakeServer, Greeting, Hook};
use crate::support::{dovecot, folder_files, mail, toml_str, TestEnv, User};

fn run(env: &TestEnv, args: &[&str]) -> Output {
    env.cmd()
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// A Dovecot user with one message in INBOX.
fn seeded(prefix: &str) -> User {
    let user = dovecot().new_user(prefix);
    user.imap().append(
        "INBOX",
        &["\\Seen"],
        "01-Jan-2019 10:00:00 +0000",
        &mail::plain(1),
    );
    user
}

/// An account whose password variable is never set: it fails before any
/// connection (a configuration error, 2 on its own).
fn unset_password_account(env: &TestEnv, name: &str) -> String {
    format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"nobody\"\n\
         password-env = \"IMAPBAK_TEST_NEVER_SET\"\narchive = {}\n\n",
        dovecot().imaps_port,
        toml_str(&env.archive(name).display().to_string()),
    )
}

/// An account for `user` whose password is wrong: it fails at login (3).
fn wrong_password_account(env: &TestEnv, name: &str, user: &User) -> String {
    let mut bad = user.clone();
    bad.password = "not-the-password".into();
    env.account_toml(name, &bad, "")
}

#[test]
fn one_failed_account_of_two_exits_1_and_the_other_is_backed_up() {
    let user = seeded("two-ok");
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        env.account_toml("good", &user, ""),
        unset_password_account(&env, "nopw")
    ));
    let out = run(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(folder_files(&env.archive("good"), "").len(), 1);
    assert!(stderr(&out).contains("IMAPBAK_TEST_NEVER_SET"));

    // The same with a login failure beside the good account.
    let other = dovecot().new_user("two-bad");
    env.write_config(&format!(
        "{}{}",
        env.account_toml("good", &user, ""),
        wrong_password_account(&env, "badpw", &other)
    ));
    let out = run(&env, &["pull"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json(&run(&env, &["pull", "--json"]))["exit_code"], 1);

    // verify --server: both archives are whole (badpw shares good's), the
    // server of one is compared, the other refuses the login.
    let shared = wrong_password_account(&env, "badpw", &other).replace(
        &toml_str(&env.archive("badpw").display().to_string()),
        &toml_str(&env.archive("good").display().to_string()),
    );
    env.write_config(&format!("{}{shared}", env.account_toml("good", &user, "")));
    let out = run(&env, &["verify", "--server"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refused"), "{text}");
    let out = run(&env, &["verify", "--server", "--account", "badpw"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // expunge: the good account is expunged (its message is from 2019).
    let out = run(&env, &["expunge", "--older-than", "1y"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(user.imap().fetch_all("INBOX").is_empty(), "not expunged");
}

#[test]
fn accounts_that_all_fail_keep_the_account_level_exit_code() {
    let user = dovecot().new_user("all-fail");
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        unset_password_account(&env, "a"),
        unset_password_account(&env, "b")
    ));
    for args in [&["pull"][..], &["expunge", "--older-than", "1y"]] {
        let out = run(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    env.write_config(&format!(
        "{}{}",
        unset_password_account(&env, "a"),
        wrong_password_account(&env, "b", &user)
    ));
    for args in [
        &["pull"][..],
        &["expunge", "--older-than", "1y"],
        &["check"],
    ] {
        let out = run(&env, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn restore_into_an_account_that_refuses_the_login_exits_3() {
    let user = seeded("restore-src");
    let target = dovecot().new_user("restore-dst");
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        env.account_toml("a", &user, ""),
        wrong_password_account(&env, "b", &target)
    ));
    assert!(run(&env, &["pull", "--account", "a"]).status.success());
    let out = run(&env, &["restore", "--account", "a", "--to", "b"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// Pulls with `tls` on `port` of the test Dovecot and returns the exit
/// code, stderr and how long it took.
fn mismatched(tls: &str, port: u16) -> (Option<i32>, String, Duration) {
    let user = dovecot().new_user("mismatch");
    let env = TestEnv::new();
    let toml = env
        .account_toml("a", &user, "")
        .replace(
            &format!("port = {}", dovecot().imaps_port),
            &format!("port = {port}"),
        )
        .replace("tls = \"implicit\"", &format!("tls = \"{tls}\""));
    env.write_config(&toml);
    let start = Instant::now();
    let out = run(&env, &["pull"]);
    (out.status.code(), stderr(&out), start.elapsed())
}

#[test]
fn implicit_tls_on_the_plain_port_fails_at_once_naming_starttls() {
    let (code, err, took) = mismatched("implicit", dovecot().imap_port);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("plain-text IMAP greeting"), "{err}");
    assert!(
        err.contains(&format!(
            "hint: port {} speaks plain IMAP/STARTTLS: set `tls = \"starttls\"` or use port 993",
            dovecot().imap_port
        )),
        "{err}"
    );
    assert!(
        !err.contains("InvalidContentType") && !err.contains("above"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn starttls_on_the_tls_port_fails_within_seconds_naming_implicit() {
    let (code, err, took) = mismatched("starttls", dovecot().imaps_port);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("waits for a TLS handshake"), "{err}");
    assert!(err.contains("set `tls = \"implicit\"`"), "{err}");
    // The account timeout is 60 s: the point is not to wait for it.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_starttls_server_slow_to_greet_is_waited_for() {
    let server = FakeServer::start(
        Greeting::SlowStartTls(certs().valid.clone(), Duration::from_millis(2500)),
        vec![FakeMailbox {
            name: "INBOX".into(),
            delimiter: "/".into(),
            messages: vec![mail::plain(1)],
        }],
        |_, _, _, _| Hook::Pass,
    );
    let env = TestEnv::new();
    let ca = env.path().join("ca.pem");
    std::fs::write(&ca, &certs().ca_pem).unwrap();
    env.write_config(&format!(
        "[accounts.a]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nuser = \"u\"\n\
         password-env = \"IMAPBAK_FAKE_PW\"\nca-file = {}\narchive = {}\ntimeout = 10\n",
        server.port,
        toml_str(&ca.display().to_string()),
        toml_str(&env.archive("a").display().to_string()),
    ));
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", "pw")
        .args(["pull", "--jobs", "1"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(folder_files(&env.archive("a"), "").len(), 1);
}

#[test]
fn a_toml_syntax_error_keeps_its_caret_block_on_lines_of_their_own() {
    let env = TestEnv::new();
    env.write_config("[accounts.a]\nhost = \"h\"\nuser = = \"u\"\n");
    let out = run(&env, &["pull"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("error: invalid configuration `"),
        "{err}"
    );
    assert!(
        lines[0].ends_with("TOML parse error at line 3, column 8"),
        "{err}"
    );
    assert_eq!(lines[2], "3 | user = = \"u\"", "{err}");
    assert_eq!(lines[3], "  |        ^", "{err}");
}

#[test]
fn a_misspelt_key_suggests_the_right_one() {
    let env = TestEnv::new();
    env.write_config(
        "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npasword-command = \"pass show x\"\n",
    );
    let out = run(&env, &["pull"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown field `pasword-command`"), "{err}");
    assert!(
        err.trim_end()
            .ends_with("hint: did you mean `password-command`?"),
        "{err}"
    );
}

#[test]
fn a_refused_login_reads_as_the_servers_words_naming_the_account_once() {
    let user = dovecot().new_user("words");
    let env = TestEnv::new();
    env.write_config(&wrong_password_account(&env, "alice", &user));
    let out = run(&env, &["pull"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "login as `{}` refused: [AUTHENTICATIONFAILED] Authentication failed.",
            user.name
        )),
        "{err}"
    );
    for internal in ["code: None", "Some(", "info:"] {
        assert!(!err.contains(internal), "`{internal}` in:\n{err}");
    }
    assert_eq!(err.matches("`alice`").count(), 1, "{err}");
    assert_eq!(
        err.lines().last(),
        Some("hint: check `user` and the password source")
    );

    // The same for an account that fails before connecting, and in check.
    env.write_config(&unset_password_account(&env, "bob"));
    for args in [&["pull"][..], &["check"]] {
        let err = stderr(&run(&env, args));
        assert_eq!(err.matches("`bob`").count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn json_error_fields_carry_the_hint_apart() {
    let user = seeded("json-hint");
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}{}",
        env.account_toml("good", &user, ""),
        wrong_password_account(&env, "bad", &user)
    ));
    let out = run(&env, &["pull", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = json(&out);
    let accounts = v["accounts"].as_array().unwrap();
    let bad = accounts.iter().find(|a| a["account"] == "bad").unwrap();
    let good = accounts.iter().find(|a| a["account"] == "good").unwrap();
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains("refused") && !error.contains('\n'),
        "{error}"
    );
    assert_eq!(bad["hint"], "check `user` and the password source");
    assert!(good["error"].is_null() && good["hint"].is_null(), "{good}");
    for args in [
        &["expunge", "--older-than", "1y", "--json"][..],
        &["verify", "--server", "--json"],
        &["quota", "--json"],
    ] {
        let v = json(&run(&env, args));
        let bad = v["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account"] == "bad")
            .unwrap_or_else(|| panic!("{args:?}: {v}"));
        // (verify finds no archive of `bad` before it gets to the server.)
        assert!(
            bad["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{args:?}: {bad}"
        );
        assert!(
            !bad["error"].as_str().unwrap().contains("hint:"),
            "{args:?}"
        );
    }
}

#[test]
fn exports_are_as_private_as_the_archive() {
    use std::os::unix::fs::PermissionsExt;
    let user = seeded("private");
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    assert!(run(&env, &["pull"]).status.success());
    let mbox = env.path().join("out.mbox");
    let eml = env.path().join("eml");
    for args in [
        &["export", "--mbox", mbox.to_str().unwrap()][..],
        &["export", "--eml", eml.to_str().unwrap()],
    ] {
        let out = run(&env, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&mbox), 0o600);
    let mut files = 0;
    for entry in walkdir::WalkDir::new(&eml) {
        let entry = entry.unwrap();
        let want = if entry.file_type().is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(mode(entry.path()), want, "{}", entry.path().display());
        files += usize::from(entry.file_type().is_file());
    }
    assert_eq!(files, 1);
}
