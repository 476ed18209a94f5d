//! Organisations against a Dovecot with a master passdb (scripts/dovecot.sh
//! MASTER_USER; shared/PROVIDERS.md "Organisations"): one admin credential
//! pulls many users, each into an archive of its own; `--user` and
//! `--shard` pick which; hostile user names stay inside the template's
//! directory.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::support::{
    self, dovecot_master, mail, toml_str, Dovecot, TestEnv, User, MASTER_NAME, MASTER_PASSWORD,
};

/// `n` users of the master Dovecot, user `i` with `i + 1` messages in INBOX.
pub(crate) fn users(d: &Dovecot, prefix: &str, n: usize) -> Vec<User> {
    (0..n)
        .map(|i| {
            let u = d.new_user(prefix);
            let msgs: Vec<(Vec<u8>, i64)> = (0..=i as u32)
                .map(|j| (mail::plain(j), 1_600_000_000 + i64::from(j)))
                .collect();
            d.seed_inbox(&u, &msgs);
            u
        })
        .collect()
}

/// A `[accounts.staff]` table over `users-file`, archives under `root`.
pub(crate) fn staff_toml(d: &Dovecot, users_file: &Path, root: &Path, extra: &str) -> String {
    format!(
        "[accounts.staff]\n\
         host = \"127.0.0.1\"\n\
         port = {port}\n\
         ca-file = {cert}\n\
         users-file = {file}\n\
         admin-user = \"{MASTER_NAME}\"\n\
         password-env = \"IMAPBAK_TEST_ADMIN_PW\"\n\
         archive = {archive}\n\
         {extra}\n",
        port = d.imaps_port,
        cert = toml_str(&d.cert.display().to_string()),
        file = toml_str(&users_file.display().to_string()),
        archive = toml_str(&format!("{}/{{user}}", root.display())),
    )
}

pub(crate) fn write_users(path: &Path, users: &[&str]) {
    let mut text = users.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

pub(crate) fn pull(env: &TestEnv, password: &str, args: &[&str]) -> std::process::Output {
    env.cmd()
        .env("IMAPBAK_TEST_ADMIN_PW", password)
        .args(["pull", "--json", "--account", "staff"])
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The account names of a pull report (`staff/USER`).
pub(crate) fn pulled(v: &serde_json::Value) -> BTreeSet<String> {
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn inbox_count(archive: &Path) -> usize {
    support::folder_messages(archive, "").len()
}

/// Every regular file under `dir`.
pub(crate) fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

fn pulls_two_users_with(admin_login: &str) {
    let d = dovecot_master();
    let us = users(d, "org", 2);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &[&us[0].name, &us[1].name]);
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, admin_login));
    let out = pull(&env, MASTER_PASSWORD, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let v = report(&out);
    assert_eq!(
        pulled(&v),
        us.iter().map(|u| format!("staff/{}", u.name)).collect()
    );
    for (i, u) in us.iter().enumerate() {
        assert_eq!(inbox_count(&root.join(&u.name)), i + 1, "{}", u.name);
    }
    // A second run downloads nothing; even its debug log holds neither
    // the admin's password nor the SASL PLAIN blob that carries it.
    let out = pull(&env, MASTER_PASSWORD, &["-vv"]);
    let v = report(&out);
    assert_eq!(v["fetched"], 0, "{v}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("debug: > "), "{log}");
    use base64::Engine;
    for u in &us {
        let blob = format!("{}\0{MASTER_NAME}\0{MASTER_PASSWORD}", u.name);
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        assert!(
            !log.contains(&b64) && !log.contains(MASTER_PASSWORD),
            "{log}"
        );
    }
}

#[test]
fn admin_with_authzid_pulls_each_user_into_its_own_archive() {
    pulls_two_users_with("");
}

#[test]
fn dovecot_master_user_separator_pulls_each_user_into_its_own_archive() {
    pulls_two_users_with("admin-login = \"master-separator\"\nadmin-separator = \"*\"");
}

#[test]
fn a_wrong_admin_password_is_exit_3_and_writes_no_mail() {
    let d = dovecot_master();
    let us = users(d, "orgpw", 2);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &[&us[0].name, &us[1].name]);
    let root = env.path().join("archives");
    for login in ["", "admin-login = \"master-separator\""] {
        env.write_config(&staff_toml(d, &file, &root, login));
        let out = pull(&env, "not-the-password", &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{login}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("not-the-password"), "{err}");
        let mail: Vec<_> = files_under(&root)
            .into_iter()
            .filter(|p| p.components().any(|c| c.as_os_str() == "mail"))
            .collect();
        assert!(mail.is_empty(), "{login}: {mail:?}");
    }
}

#[test]
fn user_pulls_only_the_named_user_and_an_unknown_one_is_an_error() {
    let d = dovecot_master();
    let us = users(d, "orgone", 3);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    let names: Vec<&str> = us.iter().map(|u| u.name.as_str()).collect();
    write_users(&file, &names);
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    let out = pull(&env, MASTER_PASSWORD, &["--user", &us[1].name]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        pulled(&report(&out)),
        BTreeSet::from([format!("staff/{}", us[1].name)])
    );
    assert!(!root.join(&us[0].name).exists() && !root.join(&us[2].name).exists());
    assert_eq!(inbox_count(&root.join(&us[1].name)), 2);
    let out = pull(&env, MASTER_PASSWORD, &["--user", "nobody-here"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user `nobody-here`"));
}

#[test]
fn shards_partition_the_users_and_stay_put_when_a_user_is_added() {
    let d = dovecot_master();
    let us = users(d, "orgshard", 7);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    let all: BTreeSet<String> = us[..6]
        .iter()
        .map(|u| format!("staff/{}", u.name))
        .collect();
    let names: Vec<&str> = us[..6].iter().map(|u| u.name.as_str()).collect();
    write_users(&file, &names);
    let mut shards = Vec::new();
    for k in 0..3 {
        let out = pull(&env, MASTER_PASSWORD, &["--shard", &format!("{k}/3")]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shards.push(pulled(&report(&out)));
    }
    let union: BTreeSet<String> = shards.iter().flatten().cloned().collect();
    assert_eq!(union, all);
    assert_eq!(shards.iter().map(BTreeSet::len).sum::<usize>(), all.len());
    for u in &us[..6] {
        assert!(root.join(&u.name).join("mail").is_dir(), "{}", u.name);
    }
    // A new user at the top of the list moves no one else; the same
    // shares come from JOB_COMPLETION_INDEX with --shard-count.
    let mut names: Vec<&str> = vec![us[6].name.as_str()];
    names.extend(us[..6].iter().map(|u| u.name.as_str()));
    write_users(&file, &names);
    let newcomer = format!("staff/{}", us[6].name);
    let mut found = 0;
    for (k, before) in shards.iter().enumerate() {
        let out = env
            .cmd()
            .env("IMAPBAK_TEST_ADMIN_PW", MASTER_PASSWORD)
            .env("JOB_COMPLETION_INDEX", k.to_string())
            .args(["pull", "--json", "--dry-run", "--account", "staff"])
            .args(["--shard-count", "3"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let mut after = pulled(&report(&out));
        if after.remove(&newcomer) {
            found += 1;
        }
        assert_eq!(&after, before, "shard {k}");
    }
    assert_eq!(found, 1);
}

#[test]
fn hostile_user_names_are_refused_by_name_and_nothing_leaves_the_archive_root() {
    let d = dovecot_master();
    let us = users(d, "orgsafe", 1);
    let env = TestEnv::new();
    let root = env.path().join("archives");
    let long = "x".repeat(300);
    // `users-command` prints `..`, a `/`, an escape, a NUL, a very long
    // name and a real user; an empty line is no name at all.
    let script = env.path().join("users.sh");
    fs::write(
        &script,
        format!(
            "printf '%s\\n' '..' '.' 'a/b' '../../escaped' '{long}' '' {real}\nprintf 'bad\\000name\\n'\n",
            real = us[0].name
        ),
    )
    .unwrap();
    let toml = staff_toml(d, Path::new("unused"), &root, "").replace(
        "users-file = \"unused\"",
        &format!(
            "users-command = {}",
            toml_str(&format!("sh {}", script.display()))
        ),
    );
    env.write_config(&toml);
    let before: BTreeSet<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let out = pull(&env, MASTER_PASSWORD, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // The real user is pulled; each hostile name is refused by name.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(inbox_count(&root.join(&us[0].name)), 1);
    let v = report(&out);
    let refused: BTreeSet<String> = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["outcome"] == "failed")
        .map(|a| a["account"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = ["..", ".", "a/b", "../../escaped", &long, "bad\\0name"]
        .iter()
        .map(|u| format!("staff/{u}"))
        .collect();
    assert_eq!(refused, expected, "{err}");
    for name in &expected {
        assert!(err.contains(&format!("error: account `{name}`")), "{err}");
    }
    let mut after: BTreeSet<_> = fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.remove(std::ffi::OsStr::new("archives"));
    assert_eq!(after, before, "something was written beside the archives");
    assert!(!env.path().parent().unwrap().join("escaped").exists());
    let inside: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(inside, [us[0].name.clone()]);
    // The password never shows, neither in the log nor in the JSON.
    assert!(!err.contains(MASTER_PASSWORD));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(MASTER_PASSWORD));
    // verify and expunge refuse the same names by name and go on.
    for args in [
        &["verify", "--json"][..],
        &["expunge", "--json", "--dry-run", "--older-than", "1y"][..],
    ] {
        let out = env
            .cmd()
            .env("IMAPBAK_TEST_ADMIN_PW", MASTER_PASSWORD)
            .args(args)
            .args(["--account", "staff"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        let v = report(&out);
        let accounts = v["accounts"].as_array().unwrap();
        assert_eq!(accounts.len(), expected.len() + 1, "{args:?}: {v}");
        let failed: BTreeSet<String> = accounts
            .iter()
            .filter(|a| !a["error"].is_null())
            .map(|a| a["account"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(failed, expected, "{args:?}: {v}");
    }
}

/// Google Workspace domain-wide delegation: one service account, a JWT per
/// user with `sub` the user, no admin password; each user's mail in its
/// own archive.
#[test]
fn a_service_account_pulls_each_user_of_the_list_with_its_own_jwt() {
    use crate::support::oauth::{auth_server, dovecot_oauth};
    let d = dovecot_oauth();
    let us: Vec<User> = users(d, "orgsa", 2);
    let env = TestEnv::new();
    let names: Vec<&str> = us.iter().map(|u| u.name.as_str()).collect();
    let (key, client) = auth_server().service_account_for(&names, env.path());
    let file = env.path().join("users.txt");
    write_users(&file, &names);
    let root = env.path().join("archives");
    env.write_config(&format!(
        "[accounts.staff]\nhost = \"127.0.0.1\"\nport = {}\nca-file = {}\nauth = \"oauth2\"\n\
         oauth2-flow = \"service-account\"\noauth2-service-account-key = {}\n\
         oauth2-token-url = {}\noauth2-scopes = [\"https://mail.google.com/\"]\n\
         users-file = {}\narchive = {}\n",
        d.imaps_port,
        toml_str(&d.cert.display().to_string()),
        toml_str(&key.display().to_string()),
        toml_str(&auth_server().url("/token")),
        toml_str(&file.display().to_string()),
        toml_str(&format!("{}/{{user}}", root.display())),
    ));
    let out = env
        .cmd()
        .args(["pull", "--json", "--account", "staff"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, u) in us.iter().enumerate() {
        assert_eq!(inbox_count(&root.join(&u.name)), i + 1, "{}", u.name);
    }
    assert_eq!(auth_server().grants(&client, "jwt-bearer"), 2);
}

/// `search` over a table prints ids whose account is `staff/USER`, and
/// `show` takes them.
#[test]
fn search_ids_of_a_tables_users_work_with_show() {
    let d = dovecot_master();
    let us = users(d, "orgshow", 2);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &[&us[0].name, &us[1].name]);
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    assert_eq!(pull(&env, MASTER_PASSWORD, &[]).status.code(), Some(0));
    let out = env
        .cmd()
        .args(["search", "--json", "--account", "staff"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in &ids {
        assert!(id.starts_with("staff/orgshow-"), "{id}");
        let out = env.cmd().args(["show", id]).output().unwrap();
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Subject: Plain test message"));
    }
    // The named form (mailbox name instead of folder) too.
    let named = ids[0].replacen("/INBOX/", "/inbox/", 1);
    let out = env.cmd().args(["show", &named]).output().unwrap();
    assert!(
        out.status.success(),
        "{named}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
