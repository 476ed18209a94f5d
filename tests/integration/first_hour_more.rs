//! More of what a new user trips over in the first hour (issue 18): export
//! blaming the archive, globs that match nothing, verify with the server
//! down, exit codes without an archive, risky archive paths, completions,
//! the version, logging and the shipped units.

use std::fs;
use std::process::Output;
use std::time::Duration;

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

/// A Dovecot user with two messages in INBOX and one in `Work`, pulled
/// into account `a` of a fresh TestEnv.
fn pulled(prefix: &str) -> (User, TestEnv) {
    let user = dovecot().new_user(prefix);
    let mut imap = user.imap();
    imap.create("Work");
    for (i, mb) in [(1, "INBOX"), (2, "INBOX"), (3, "Work")] {
        imap.append(
            mb,
            &["\\Seen"],
            "01-Jan-2019 10:00:00 +0000",
            &mail::plain(i),
        );
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let out = run(&env, &["pull", "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    (user, env)
}

#[test]
fn export_names_existing_files_and_missing_directories_not_the_archive() {
    let (_user, env) = pulled("exp-exists");
    let eml = env.path().join("eml");
    let eml_s = eml.to_str().unwrap();
    assert_eq!(
        run(&env, &["export", "--eml", eml_s]).status.code(),
        Some(0)
    );
    let out = run(&env, &["export", "--eml", eml_s]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("could not be read"), "{err}");
    assert!(
        err.contains("3 not overwritten because the file exists"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let out = run(&env, &["export", "--force", "--eml", eml_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exported 3 messages"),
        "{}",
        stderr(&out)
    );

    let out = run(&env, &["export", "--mbox", "/nonexistent/dir/x"]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("the directory `/nonexistent/dir` does not exist"),
        "{err}"
    );
    assert!(!err.contains("must not exist"), "{err}");

    let mbox = env.path().join("x.mbox");
    let mbox_s = mbox.to_str().unwrap();
    assert_eq!(
        run(&env, &["export", "--mbox", mbox_s]).status.code(),
        Some(0)
    );
    let out = run(&env, &["export", "--mbox", mbox_s]);
    assert!(
        stderr(&out).contains("exists\nhint: pass --force"),
        "{}",
        stderr(&out)
    );
    let out = run(&env, &["export", "--force", "--mbox", mbox_s]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_mailbox_glob_matching_nothing_warns_with_the_names_and_leaves_no_file() {
    let (_user, env) = pulled("glob-none");
    let mbox = env.path().join("typo.mbox");
    let out = run(
        &env,
        &[
            "export",
            "--mailbox",
            "Wrok",
            "--mbox",
            mbox.to_str().unwrap(),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--mailbox `Wrok` matched no archived mailbox"),
        "{err}"
    );
    assert!(err.contains("`INBOX`, `Sent`, `Trash`, `Work`"), "{err}");
    assert!(!mbox.exists(), "an empty mbox was left behind");
    // The corrected rerun works.
    let out = run(
        &env,
        &[
            "export",
            "--mailbox",
            "Work",
            "--mbox",
            mbox.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(&env, &["search", "--mailbox", "Wrok"]);
    assert!(
        stderr(&out).contains("`INBOX`, `Sent`, `Trash`, `Work`"),
        "{}",
        stderr(&out)
    );

    let out = run(
        &env,
        &[
            "restore",
            "--account",
            "a",
            "--mailbox",
            "Wrok",
            "--dry-run",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("matched no archived mailbox"), "{err}");

    // expunge touches only archived mailboxes: a typo expunges nothing, and
    // says so with the names there are.
    let out = run(
        &env,
        &[
            "expunge",
            "--json",
            "--older-than",
            "1d",
            "--mailbox",
            "Wrok",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["expunged"], 0, "{v:#}");
    assert!(
        err.contains("--mailbox `Wrok` matched no archived mailbox"),
        "{err}"
    );
    assert!(err.contains("`INBOX`, `Sent`, `Trash`, `Work`"), "{err}");
    let out = run(
        &env,
        &[
            "expunge",
            "--json",
            "--older-than",
            "1d",
            "--mailbox",
            "Work",
            "--dry-run",
        ],
    );
    assert!(!stderr(&out).contains("matched no"), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["expunged"], 1, "the 2019 message in Work: {v:#}");
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn verify_server_with_the_server_down_still_checks_the_files() {
    let (_user, env) = pulled("verify-down");
    // Damage one file, so the local check has something to find.
    let cur = env.archive("a").join("mail/cur");
    let file = fs::read_dir(&cur).unwrap().next().unwrap().unwrap().path();
    fs::write(&file, b"not zstd").unwrap();
    let toml = fs::read_to_string(env.config_path()).unwrap();
    let port = format!("port = {}", dovecot().imaps_port);
    assert!(toml.contains(&port));
    env.write_config(&toml.replace(&port, &format!("port = {}", closed_port())));
    let out = run(&env, &["verify", "--server"]);
    let (text, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{text}{err}");
    assert!(text.contains("message files in"), "{text}");
    assert!(text.contains("1 problem"), "{text}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("the server was not compared"), "{err}");
    let out = run(&env, &["verify", "--server", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = &v["accounts"][0];
    assert_eq!(a["files"], 3, "{a}");
    assert_eq!(a["problems"].as_array().unwrap().len(), 1, "{a}");
    assert!(a["error"].is_null(), "{a}");
    assert!(a["server_error"].is_string(), "{a}");
}

#[test]
fn no_archive_yet_is_exit_2_for_every_command_and_a_file_is_named_as_such() {
    let user = dovecot().new_user("no-archive");
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let mbox = env.path().join("out.mbox");
    let commands: [&[&str]; 7] = [
        &["ls"],
        &["show", "a/INBOX/1/1"],
        &["verify"],
        &["search"],
        &["export", "--mbox", mbox.to_str().unwrap()],
        &["restore", "--account", "a", "--dry-run"],
        &["expunge", "--older-than", "1y", "--dry-run"],
    ];
    for args in commands {
        let out = run(&env, args);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains("no archive at"), "{args:?}: {all}");
    }
    assert!(!mbox.exists());
    fs::write(env.archive("a"), b"a file").unwrap();
    for args in &commands[..6] {
        let out = run(&env, args);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains("is not a directory"), "{args:?}: {all}");
    }
}

#[test]
fn a_relative_archive_is_beside_the_config_and_a_foreign_directory_is_refused() {
    let user = dovecot().new_user("rel-archive");
    user.imap()
        .append("INBOX", &[], "01-Jan-2019 10:00:00 +0000", &mail::plain(1));
    let env = TestEnv::new();
    let absolute = env.archive("a").display().to_string();
    let toml = env.account_toml("a", &user, "");
    let set = |archive: &str| {
        env.write_config(&toml.replace(
            &crate::support::toml_str(&absolute),
            &crate::support::toml_str(archive),
        ))
    };
    set("rel/archive");
    // Run from elsewhere, as cron does (from $HOME).
    let out = env
        .cmd()
        .current_dir("/")
        .args(["pull", "--quiet"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(env.path().join("rel/archive/mail/cur").is_dir());
    let out = env.cmd().current_dir("/").args(["ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The directory holding config.toml is not an archive: refused.
    set(&env.path().display().to_string());
    let out = run(&env, &["pull"]);
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not empty and not an imapbak archive"),
        "{err}"
    );
    assert!(!env.path().join("mail").exists());
    // An existing empty directory is fine.
    let empty = env.path().join("empty");
    fs::create_dir(&empty).unwrap();
    set(&empty.display().to_string());
    assert_eq!(run(&env, &["pull", "--quiet"]).status.code(), Some(0));
    assert!(empty.join("mail/cur").is_dir());
}

#[test]
fn completions_are_printed_for_every_shell() {
    let env = TestEnv::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef imapbak"),
        ("fish", "complete -c imapbak"),
        ("elvish", "imapbak"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = run(&env, &["completions", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(text.contains("search"), "{shell}: no subcommands");
    }
    if std::process::Command::new("bash")
        .arg("--version")
        .output()
        .is_ok()
    {
        let out = run(&env, &["completions", "bash"]);
        let script = env.path().join("imapbak.bash");
        fs::write(&script, &out.stdout).unwrap();
        let st = std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .status()
            .unwrap();
        assert!(st.success(), "bash -n rejects the bash completions");
    }
}

#[test]
fn install_sh_puts_binary_man_pages_and_completions_under_the_prefix() {
    let env = TestEnv::new();
    let prefix = env.path().join("prefix");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .arg(&prefix)
        .env("IMAPBAK_BIN", env!("CARGO_BIN_EXE_imapbak"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(prefix.join("bin/imapbak").is_file());
    assert!(prefix.join("share/man/man1/imapbak.1").is_file());
    assert!(prefix.join("share/man/man1/imapbak-pull.1").is_file());
    for f in [
        "share/bash-completion/completions/imapbak",
        "share/zsh/site-functions/_imapbak",
        "share/fish/vendor_completions.d/imapbak.fish",
    ] {
        assert!(fs::metadata(prefix.join(f)).unwrap().len() > 100, "{f}");
    }
}

#[test]
fn v_shows_imapbaks_work_vv_its_debug_and_dependencies_only_with_rust_log() {
    let (_user, env) = pulled("logging");
    let log_of = |args: &[&str], rust_log: Option<&str>| {
        let mut c = env.cmd();
        c.env_remove("RUST_LOG")
            .args(args)
            .timeout(Duration::from_secs(120));
        if let Some(r) = rust_log {
            c.env("RUST_LOG", r);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    let quiet = log_of(&["pull"], None);
    assert!(!quiet.contains("info:"), "{quiet}");

    let v = log_of(&["-v", "pull"], None);
    assert!(v.contains("info: mailbox `INBOX`: "), "{v}");
    assert!(v.contains(" answered in "), "{v}");
    assert!(!v.contains("debug:"), "{v}");
    assert!(!v.contains('['), "dependency lines at -v: {v}");

    let vv = log_of(&["-vv", "pull"], None);
    assert!(vv.contains("debug: > "), "{vv}");
    assert!(!vv.contains("info: > "), "debug lines labelled info: {vv}");
    assert!(!vv.to_lowercase().contains("rustls"), "{vv}");
    assert!(!vv.contains("globset"), "{vv}");

    let deps = log_of(&["pull"], Some("rustls=debug"));
    assert!(deps.contains("[rustls"), "{deps}");
}

#[test]
fn version_names_the_commit_when_built_from_git() {
    let env = TestEnv::new();
    let out = run(&env, &["--version"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with(&format!("imapbak {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let head = std::process::Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(commit) => assert!(text.contains(&format!("(commit {commit})")), "{text}"),
        None => eprintln!("not a git checkout: only the version is checked"),
    }
}

#[test]
fn search_prints_ids_a_shell_reads_back_and_show_takes_the_mailbox_name() {
    let user = dovecot().new_user("paste-ids");
    let mut imap = user.imap();
    for (i, mb) in [(1, "R&D"), (2, "Entwürfe")] {
        imap.create(mb);
        imap.append(mb, &[], "01-Jan-2019 10:00:00 +0000", &mail::plain(i));
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    assert_eq!(run(&env, &["pull", "--quiet"]).status.code(), Some(0));
    let out = run(&env, &["search"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        let id = line.split("  ").next().unwrap();
        assert!(id.starts_with('\''), "an id with `&` is not quoted: {line}");
        // Pasted into a shell as printed, it is one word `show` takes.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("\"$0\" --config \"$1\" show {id}"))
            .arg(env!("CARGO_BIN_EXE_imapbak"))
            .arg(env.config_path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Subject:"));
    }
    // The decoded name in place of the folder.
    let v: serde_json::Value =
        serde_json::from_slice(&run(&env, &["search", "--json", "--mailbox", "Entwürfe"]).stdout)
            .unwrap();
    let id = v[0]["id"].as_str().unwrap();
    let (uv, uid) = (
        v[0]["uidvalidity"].as_u64().unwrap(),
        v[0]["uid"].as_u64().unwrap(),
    );
    let by_name = run(&env, &["show", &format!("a/Entwürfe/{uv}/{uid}")]);
    assert_eq!(by_name.status.code(), Some(0), "{}", stderr(&by_name));
    assert_eq!(by_name.stdout, run(&env, &["show", id]).stdout);
    let out = run(&env, &["show", &format!("a/Nope/{uv}/{uid}")]);
    assert!(
        stderr(&out).contains("no mailbox `Nope`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_lists_mailboxes_sorted_with_inbox_first_and_counts_aligned() {
    let user = dovecot().new_user("check-sorted");
    let mut imap = user.imap();
    for mb in ["Zeta", "Alpha", "A much longer name"] {
        imap.create(mb);
    }
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    let out = run(&env, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let rows: Vec<&str> = text.lines().filter(|l| l.ends_with(" messages")).collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(names[0], "INBOX", "{text}");
    let mut sorted = names[1..].to_vec();
    sorted.sort();
    assert_eq!(names[1..], sorted[..], "{text}");
    let ends: Vec<usize> = rows.iter().map(|r| r.len()).collect();
    assert!(
        ends.windows(2).all(|w| w[0] == w[1]),
        "not aligned:\n{text}"
    );
}

#[test]
fn man_pages_name_option_values_and_no_help_page() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pull = fs::read_to_string(root.join("imapbak-pull.1")).unwrap();
    let synopsis = pull
        .lines()
        .skip_while(|l| *l != ".SH SYNOPSIS")
        .nth(1)
        .unwrap();
    assert!(
        synopsis.contains(r"\fB\-\-account\fR \fINAME\fR]"),
        "{synopsis}"
    );
    assert!(
        synopsis.contains(r"\fB\-\-config\fR \fIPATH\fR]"),
        "{synopsis}"
    );
    for e in fs::read_dir(&root).unwrap() {
        let text = fs::read_to_string(e.unwrap().path()).unwrap();
        assert!(!text.contains(r"imapbak\-help(1)"));
    }
}

#[test]
fn verify_repair_moves_a_damaged_file_aside_and_the_next_pull_fetches_it_again() {
    let (_user, env) = pulled("repair");
    let archive = env.archive("a");
    let cur = archive.join("mail/cur");
    let file = fs::read_dir(&cur).unwrap().next().unwrap().unwrap().path();
    let name = file.file_name().unwrap().to_owned();
    fs::write(&file, b"not zstd").unwrap();
    let out = run(&env, &["verify", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("repaired: moved"), "{text}");
    assert!(
        text.contains("the next pull fetches this message again"),
        "{text}"
    );
    let aside = archive.join("state/damaged/INBOX").join(&name);
    assert_eq!(
        fs::read(&aside).unwrap(),
        b"not zstd",
        "moved, never deleted"
    );
    assert!(!file.exists());
    let out = run(&env, &["pull", "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&env, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("3 message files") && text.contains("all whole"),
        "{text}"
    );
}

#[test]
fn every_json_output_carries_its_schema() {
    let (_user, env) = pulled("json-schema");
    let outputs: [&[&str]; 7] = [
        &["pull", "--json"],
        &["verify", "--json"],
        &["quota", "--json"],
        &["expunge", "--older-than", "1y", "--dry-run", "--json"],
        &["restore", "--account", "a", "--dry-run", "--json"],
        &["ls", "--json"],
        &["search", "--json"],
    ];
    for args in outputs {
        let out = run(&env, args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        let objects: Vec<&serde_json::Value> = match &v {
            serde_json::Value::Array(items) => items.iter().collect(),
            o => vec![o],
        };
        assert!(!objects.is_empty(), "{args:?}: {v}");
        for o in objects {
            assert_eq!(o["schema"], 2, "{args:?}: {o}");
            let first = o.as_object().unwrap().keys().next().unwrap();
            assert_eq!(first, "schema", "{args:?}");
        }
    }
}
