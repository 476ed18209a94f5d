//! What a new user trips over in the first hour (issue 18): the exit
//! status of a run over several accounts, port and TLS mode mismatched,
//! configuration typos, and error text that reads as English.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::{dovecot, mail, TestEnv, User};

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
        crate::support::toml_str(&env.archive(name).display().to_string()),
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
    assert_eq!(
        crate::support::folder_files(&env.archive("good"), "").len(),
        1
    );
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

    // verify --server: the good account is compared, the other cannot log in.
    let out = run(
        &env,
        &[
            "verify",
            "--server",
            "--account",
            "good",
            "--account",
            "badpw",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

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
