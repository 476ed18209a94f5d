//! Organisations: one account table that names many users, logged in with
//! one admin credential (SASL PLAIN with an authorization identity, or
//! Dovecot's `user*master`). The table is expanded here into one ordinary
//! [`Account`] per user (named `TABLE/USER`), so the sync engine never
//! learns that users exist. Also the stable sharding of users over
//! machines (`--shard K/N`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Account;

/// How the admin logs in on a user's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminLogin {
    /// AUTHENTICATE PLAIN `user\0admin\0password` (RFC 4616).
    Authzid,
    /// LOGIN `user<separator>admin` with the admin's password (Dovecot
    /// `auth_master_user_separator`).
    MasterSeparator(String),
}

/// The file's `admin-login` key.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AdminLoginKey {
    #[default]
    Authzid,
    MasterSeparator,
}

/// The admin credential an account logs in with; the password keys of the
/// account are the admin's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub user: String,
    pub login: AdminLogin,
}

/// Where the login names of a multi-user table come from.
#[derive(Debug, Clone)]
pub enum UsersSource {
    /// A shell command printing one login name per line.
    Command(String),
    /// A file with one login name per line.
    File(PathBuf),
}

/// What a multi-user table adds to its [`Account`] template.
#[derive(Debug, Clone)]
pub struct Users {
    pub source: UsersSource,
    /// The `archive` key, holding `{user}`.
    pub archive_template: String,
}

/// The longest path component a user name may map to (most file systems
/// allow 255 bytes; room is left for editors' and tools' suffixes).
pub const MAX_COMPONENT: usize = 200;

/// A user name as one path component, or why it cannot be one.
///
/// Refused, with the name in the error: an empty name, `.` and `..`, a
/// name holding `/`, a NUL or other control character, and a name whose
/// mapping is longer than [`MAX_COMPONENT`] bytes. Of the rest, ASCII
/// letters, digits and `_ - + @ = ,` stay as they are; `.` stays except as
/// the first character; every other byte of the UTF-8 name (`%`, a space,
/// a leading `.`, `\`, non-ASCII) becomes `%XX` (upper-case hex). The
/// mapping is one-to-one, so two users never share an archive, and the
/// result is never empty, `.`, `..`, hidden, or holds a `/`.
pub fn user_component(user: &str) -> Result<String> {
    if user.is_empty() {
        bail!("an empty user name cannot be archived\nhint: remove the empty line from the users list");
    }
    if user == "." || user == ".." || user.contains('/') {
        bail!(
            "user name `{}` could name a directory outside the archive root (`.`, `..` or a `/`)\nhint: fix the users list; no login name needs these",
            user.escape_debug()
        );
    }
    if user.chars().any(char::is_control) {
        bail!(
            "user name `{}` holds a control character (NUL, tab, newline, ...)\nhint: fix the users list",
            user.escape_debug()
        );
    }
    let mut out = String::with_capacity(user.len());
    for (i, b) in user.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b"_-+@=,".contains(&b) || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_COMPONENT {
        bail!(
            "user name `{}` is too long for a directory name ({} bytes once mapped, at most {MAX_COMPONENT})\nhint: fix the users list",
            user.escape_debug(),
            out.len()
        );
    }
    Ok(out)
}

/// The archive of `user` from a template holding `{user}`.
pub fn archive_for(template: &str, user: &str) -> Result<PathBuf> {
    let component = user_component(user)?;
    crate::config::expand_home(&template.replace("{user}", &component))
}

/// Reads the users list: one login name per line; surrounding blanks are
/// dropped, as are empty lines and lines starting with `#`; a name listed
/// twice counts once.
pub fn read_users(source: &UsersSource) -> Result<Vec<String>> {
    let text = match source {
        UsersSource::File(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read users-file `{}`", p.display()))?,
        UsersSource::Command(cmd) => crate::config::command_output("users-command", cmd)?,
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut users = Vec::new();
    for line in text.lines() {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if seen.insert(name.to_string()) {
            users.push(name.to_string());
        }
    }
    Ok(users)
}

/// One share of the users: the `index`-th of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `K/N` with 0 <= K < N.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not K/N (e.g. 3/16)"))?;
        let index: u32 = k
            .trim()
            .parse()
            .map_err(|_| format!("`{k}` is not a shard number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a shard count"))?;
        Shard::new(index, count)
    }

    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist (shards are numbered 0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// The shard from `$JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job)
    /// and the given count.
    pub fn from_job_index(count: u32) -> Result<Shard> {
        let raw = std::env::var("JOB_COMPLETION_INDEX").context(
            "--shard-count needs JOB_COMPLETION_INDEX in the environment\nhint: run it in a Kubernetes Job with `completionMode: Indexed`, or use --shard K/N",
        )?;
        let index: u32 = raw
            .trim()
            .parse()
            .with_context(|| format!("JOB_COMPLETION_INDEX `{raw}` is not a number"))?;
        Shard::new(index, count).map_err(|e| {
            anyhow::anyhow!("{e}\nhint: the Job's `completions` must equal --shard-count")
        })
    }

    /// True when `user` belongs to this share. The share is the first 8
    /// bytes of SHA-256 of the login name, modulo the count: it depends on
    /// the name alone (not on its place in the list), so adding or
    /// removing a user moves no other user, and every machine agrees.
    pub fn holds(&self, user: &str) -> bool {
        shard_of(user, self.count) == self.index
    }
}

/// The share of `user` among `count`.
pub fn shard_of(user: &str, count: u32) -> u32 {
    let digest = Sha256::digest(user.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(count)) as u32
}

/// Which users of the tables to take: all, the named ones, a shard.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub users: Vec<String>,
    pub shard: Option<Shard>,
}

/// A user of a table whose name cannot be archived: refused with its
/// name, while the table's other users go on.
#[derive(Debug)]
pub struct Refused {
    /// `TABLE/USER`, the user's name escaped for display.
    pub account: String,
    /// The login name as listed.
    pub user: String,
    pub error: anyhow::Error,
}

/// One account per user of the table `template`, filtered, in the list's
/// order; a user whose name cannot be archived is a [`Refused`] in its
/// place. Fails as a whole only when the list cannot be read or `--user`
/// names someone not in it.
pub fn expand(
    template: &Account,
    users: &Users,
    filter: &UserFilter,
) -> Result<Vec<Result<Account, Refused>>> {
    let all = read_users(&users.source)?;
    for wanted in &filter.users {
        if !all.iter().any(|u| u == wanted) {
            bail!(
                "no user `{wanted}` in the users list of account `{}`\nhint: check the name, or add it to users-file / what users-command prints",
                template.name
            );
        }
    }
    let mut out = Vec::new();
    for user in all {
        if !filter.users.is_empty() && !filter.users.contains(&user) {
            continue;
        }
        if filter.shard.is_some_and(|s| !s.holds(&user)) {
            continue;
        }
        let name = format!("{}/{user}", template.name);
        match archive_for(&users.archive_template, &user) {
            Ok(archive) => {
                let mut a = template.clone();
                a.name = name;
                a.user = user;
                a.archive = archive;
                a.table = Some(template.name.clone());
                out.push(Ok(a));
            }
            Err(error) => out.push(Err(Refused {
                account: format!("{}/{}", template.name, user.escape_debug()),
                user,
                error: error.context(format!("in the users list of account `{}`", template.name)),
            })),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_map_to_one_safe_component_each() {
        assert_eq!(user_component("joe").unwrap(), "joe");
        assert_eq!(
            user_component("joe.smith@example.com").unwrap(),
            "joe.smith@example.com"
        );
        assert_eq!(user_component(".hidden").unwrap(), "%2Ehidden");
        assert_eq!(user_component("...").unwrap(), "%2E..");
        assert_eq!(user_component("a\\b").unwrap(), "a%5Cb");
        assert_eq!(user_component("50%").unwrap(), "50%25");
        assert_eq!(user_component("jürgen").unwrap(), "j%C3%BCrgen");
        // One-to-one: the escape character is itself escaped.
        assert_ne!(
            user_component("%2Ehidden").unwrap(),
            user_component(".hidden").unwrap()
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "/abs",
            "a\0b",
            "a\nb",
            &"x".repeat(201),
        ] {
            let err = format!("{:#}", user_component(bad).unwrap_err());
            assert!(err.contains("hint:"), "{err}");
        }
        let err = format!("{:#}", user_component("a\0b").unwrap_err());
        assert!(err.contains("a\\0b"), "{err}");
    }

    #[test]
    fn a_hostile_user_stays_inside_the_templates_directory() {
        for user in [".hidden", "...", "..x", "a\\..\\b", "%2F", " .. "] {
            let p = archive_for("/srv/mail/{user}", user).unwrap();
            assert_eq!(
                p.parent().unwrap(),
                std::path::Path::new("/srv/mail"),
                "{user}"
            );
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(
                !name.starts_with('.') && !name.contains('/'),
                "{user}: {name}"
            );
        }
    }

    #[test]
    fn shard_parses_k_of_n_and_refuses_out_of_range() {
        assert_eq!(
            Shard::parse("3/16").unwrap(),
            Shard {
                index: 3,
                count: 16
            }
        );
        assert!(Shard::parse("16/16").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("3").is_err());
        assert!(Shard::parse("a/2").is_err());
    }

    #[test]
    fn shards_partition_users_and_adding_a_user_moves_no_other() {
        let users: Vec<String> = (0..1000).map(|i| format!("user{i}@example.com")).collect();
        let n = 4;
        let mut seen = 0;
        for k in 0..n {
            let s = Shard::new(k, n).unwrap();
            let share = users.iter().filter(|u| s.holds(u)).count();
            // Roughly even: each of 4 shares within 20% of 250.
            assert!((200..=300).contains(&share), "{share}");
            seen += share;
        }
        assert_eq!(seen, users.len());
        for u in &users {
            assert_eq!(
                (0..n)
                    .filter(|&k| Shard::new(k, n).unwrap().holds(u))
                    .count(),
                1
            );
        }
        // Stable: the share depends on the name alone (a fixed value, so a
        // change of hash is a visible, deliberate break).
        assert_eq!(shard_of("joe", 16), shard_of("joe", 16));
        let before: Vec<u32> = users.iter().map(|u| shard_of(u, n)).collect();
        let mut more = users.clone();
        more.insert(0, "newcomer".into());
        let after: Vec<u32> = more[1..].iter().map(|u| shard_of(u, n)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn users_file_skips_blanks_comments_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users.txt");
        std::fs::write(&p, "# staff\njoe\n\n  ann  \njoe\n").unwrap();
        assert_eq!(read_users(&UsersSource::File(p)).unwrap(), ["joe", "ann"]);
        let users = read_users(&UsersSource::Command("printf 'a\\nb\\n'".into())).unwrap();
        assert_eq!(users, ["a", "b"]);
        let err = format!(
            "{:#}",
            read_users(&UsersSource::Command("exit 3".into())).unwrap_err()
        );
        assert!(err.contains("users-command"), "{err}");
    }
}

/// The Kubernetes example (contrib/kubernetes/) is checked here, offline: no
/// cluster runs in the tests, so what can go wrong in it by editing is.
#[cfg(test)]
mod k8s_example_tests {
    use serde_yaml::Value;

    const MANIFEST: &str = include_str!("../contrib/kubernetes/imapbak-cronjob.yaml");

    fn docs() -> Vec<Value> {
        serde_yaml::Deserializer::from_str(MANIFEST)
            .map(|d| serde::Deserialize::deserialize(d).expect("contrib/kubernetes is YAML"))
            .collect()
    }

    fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in contrib/kubernetes"))
    }

    fn s(v: &Value) -> &str {
        v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
    }

    #[test]
    fn the_cronjob_runs_an_indexed_job_whose_pods_each_pull_one_shard() {
        let docs = docs();
        for d in &docs {
            assert!(d["apiVersion"].is_string() && d["metadata"]["name"].is_string());
        }
        let cron = kind(&docs, "CronJob");
        assert_eq!(s(&cron["apiVersion"]), "batch/v1");
        assert!(s(&cron["spec"]["schedule"]).split_whitespace().count() == 5);
        let job = &cron["spec"]["jobTemplate"]["spec"];
        assert_eq!(s(&job["completionMode"]), "Indexed");
        let completions = job["completions"].as_u64().unwrap();
        assert!(job["parallelism"].as_u64().unwrap() <= completions);
        let pod = &job["template"]["spec"];
        // A Job's pods must not restart in place (the API refuses Always).
        assert_eq!(s(&pod["restartPolicy"]), "Never");
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
        // The arguments are a valid imapbak command line, sharded by the
        // Job's index over exactly `completions` shares.
        let argv = std::iter::once("imapbak").chain(args.iter().copied());
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(argv).expect("valid args");
        drop(cli);
        let count = args
            .iter()
            .position(|a| *a == "--shard-count")
            .map(|i| args[i + 1].parse::<u64>().unwrap())
            .expect("--shard-count");
        assert_eq!(count, completions, "--shard-count must equal completions");
        // The config the pod reads is the ConfigMap's, mounted where
        // IMAPBAK_CONFIG points, and it loads.
        let env = c["env"].as_sequence().unwrap();
        let config_path = env
            .iter()
            .find(|e| e["name"] == "IMAPBAK_CONFIG")
            .map(|e| s(&e["value"]))
            .unwrap();
        let mounts = c["volumeMounts"].as_sequence().unwrap();
        let config_mount = mounts.iter().find(|m| m["name"] == "config").unwrap();
        let dir = s(&config_mount["mountPath"]);
        assert_eq!(config_path, format!("{dir}/config.toml"));
        let volumes = pod["volumes"].as_sequence().unwrap();
        for m in mounts {
            assert!(volumes.iter().any(|v| v["name"] == m["name"]), "{m:?}");
        }
        let cm = kind(&docs, "ConfigMap");
        let toml_text = s(&cm["data"]["config.toml"]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        std::fs::write(&path, toml_text).unwrap();
        let config = crate::config::Config::load(&path).unwrap();
        assert!(config.orgs.contains_key("staff"));
        // The password the config names comes from the Secret.
        let pw = env
            .iter()
            .find(|e| e["name"] == "IMAPBAK_ADMIN_PASSWORD")
            .unwrap();
        let secret = kind(&docs, "Secret");
        assert_eq!(
            pw["valueFrom"]["secretKeyRef"]["name"],
            secret["metadata"]["name"]
        );
        assert!(toml_text.contains("password-env = \"IMAPBAK_ADMIN_PASSWORD\""));
    }
}
