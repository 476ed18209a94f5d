//! The configuration file: TOML, one table per account. Raw file structs
//! (`*File`) are separate from the resolved settings (`Account`) so that
//! defaults and checks live in one place. Lookup: `--config`, then
//! `$IMAPBAK_CONFIG`, then `$XDG_CONFIG_HOME/imapbak/config.toml`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::imap::tls::parse_fingerprint;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    accounts: BTreeMap<String, AccountFile>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Implicit,
    Starttls,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct AccountFile {
    host: String,
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    user: String,
    password_command: Option<String>,
    password_env: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    cert_fingerprint: Option<String>,
    archive: Option<String>,
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    compression_level: Option<i32>,
    timeout: Option<u64>,
    max_message_size: Option<u64>,
    compress: Option<bool>,
    gmail: Option<bool>,
    gmail_spam_and_trash: Option<bool>,
}

/// Where the password comes from; the password itself is only read when a
/// connection is made, and is never printed.
#[derive(Clone)]
pub enum PasswordSource {
    Command(String),
    Env(String),
    Literal(String),
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Command(c) => write!(f, "Command({c:?})"),
            PasswordSource::Env(v) => write!(f, "Env({v:?})"),
            PasswordSource::Literal(_) => write!(f, "Literal(<hidden>)"),
        }
    }
}

/// One account, resolved and checked.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub user: String,
    pub password: PasswordSource,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<[u8; 32]>,
    pub archive: PathBuf,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub compression_level: i32,
    pub timeout: Duration,
    pub max_message_size: u64,
    /// Ask for COMPRESS=DEFLATE (RFC 4978) when the server offers it.
    pub compress: bool,
    /// Gmail mode when the server announces X-GM-EXT-1 (default on).
    pub gmail: bool,
    /// In Gmail mode, also pull Spam and Trash (as ordinary folders).
    pub gmail_spam_and_trash: bool,
}

pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 512 * 1024 * 1024;

/// A loaded configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub accounts: Vec<Account>,
}

/// Which file to read: the explicit path, `$IMAPBAK_CONFIG`, or the XDG default.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("IMAPBAK_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|b| b.config_dir().to_path_buf()))
        .context("cannot find the configuration directory\nhint: pass --config PATH")?;
    Ok(base.join("imapbak").join("config.toml"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read configuration `{}`\nhint: create it (see `man imapbak`) or pass --config PATH",
                path.display()
            )
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| {
            let hint = suggestion(e.message())
                .map(|s| format!("\nhint: did you mean `{s}`?"))
                .unwrap_or_default();
            anyhow::Error::new(e)
                .context(format!("invalid configuration `{}`{hint}", path.display()))
        })?;
        if file.accounts.is_empty() {
            bail!(
                "configuration `{}` defines no account\nhint: add an [accounts.NAME] table",
                path.display()
            );
        }
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot stat `{}`", path.display()))?
            .permissions()
            .mode();
        let mut accounts = Vec::new();
        for (name, a) in file.accounts {
            accounts.push(
                resolve(&name, a, mode)
                    .with_context(|| format!("in account `{name}` of `{}`", path.display()))?,
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            accounts,
        })
    }

    /// The accounts named (all when `names` is empty); an unknown name is an error.
    pub fn select(&self, names: &[String]) -> Result<Vec<Account>> {
        if names.is_empty() {
            return Ok(self.accounts.clone());
        }
        names
            .iter()
            .map(|n| {
                self.accounts
                    .iter()
                    .find(|a| &a.name == n)
                    .cloned()
                    .with_context(|| {
                        let known: Vec<&str> =
                            self.accounts.iter().map(|a| a.name.as_str()).collect();
                        format!(
                            "no account `{n}` in `{}`\nhint: known accounts: {}",
                            self.path.display(),
                            known.join(", ")
                        )
                    })
            })
            .collect()
    }
}

fn resolve(name: &str, a: AccountFile, mode: u32) -> Result<Account> {
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        bail!("account name `{name}` cannot be used as a directory name");
    }
    let password = match (a.password_command, a.password_env, a.password) {
        (Some(c), None, None) => PasswordSource::Command(c),
        (None, Some(v), None) => PasswordSource::Env(v),
        (None, None, Some(p)) => {
            if mode & 0o077 != 0 {
                bail!(
                    "`password` is set but the file is readable by group or others (mode {:o})\nhint: chmod 600 the file, or use password-command",
                    mode & 0o777
                );
            }
            PasswordSource::Literal(p)
        }
        (None, None, None) => {
            bail!("no password source\nhint: set password-command, password-env or password")
        }
        _ => bail!(
            "more than one password source\nhint: keep one of password-command, password-env, password"
        ),
    };
    let fingerprint = match &a.cert_fingerprint {
        Some(text) => Some(parse_fingerprint(text).with_context(|| {
            format!("cert-fingerprint `{text}` is not a SHA-256 fingerprint\nhint: 64 hex digits, colons optional, e.g. the value `imapbak check` prints")
        })?),
        None => None,
    };
    let port = a.port.unwrap_or(match a.tls {
        TlsMode::Implicit => 993,
        TlsMode::Starttls => 143,
    });
    let archive = match a.archive {
        Some(p) => expand_home(&p)?,
        None => data_dir()?.join(name),
    };
    let level = a.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL);
    if !(1..=22).contains(&level) {
        bail!("compression-level {level} is out of range\nhint: use 1 (fastest) to 19; 3 is the default");
    }
    Ok(Account {
        name: name.to_string(),
        host: a.host,
        port,
        tls: a.tls,
        user: a.user,
        password,
        ca_file: a
            .ca_file
            .map(|p| expand_home(&p.to_string_lossy()))
            .transpose()?,
        fingerprint,
        archive,
        include: globs(&a.include.unwrap_or_else(|| vec!["*".into()]), "include")?,
        exclude: globs(&a.exclude, "exclude")?,
        compression_level: level,
        timeout: Duration::from_secs(a.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1)),
        max_message_size: a.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE),
        // Off by default: measured on loopback, the server's deflate costs
        // more than it saves; on a 20 Mbit/s link it saves about a quarter.
        compress: a.compress.unwrap_or(false),
        gmail: a.gmail.unwrap_or(true),
        gmail_spam_and_trash: a.gmail_spam_and_trash.unwrap_or(false),
    })
}

/// The known name nearest to the unknown one in serde's "unknown field
/// `x`, expected one of `a`, `b`" (or "unknown variant"), when it is close
/// enough to be a typo.
fn suggestion(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field ")
        .or_else(|| message.strip_prefix("unknown variant "))?;
    // The backticked names: the unknown one first, then the expected ones.
    let mut names = rest.split('`').skip(1).step_by(2);
    let wrong = names.next()?;
    names
        .map(|n| (edit_distance(wrong, n), n))
        .filter(|&(d, n)| d <= (n.chars().count() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn globs(patterns: &[String], key: &str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).with_context(|| format!("invalid {key} pattern `{p}`"))?);
    }
    Ok(b.build()?)
}

fn data_dir() -> Result<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("imapbak"))
        .or_else(|| directories::BaseDirs::new().map(|b| b.data_dir().join("imapbak")))
        .context("cannot find the data directory\nhint: set `archive` in the account")
}

fn expand_home(p: &str) -> Result<PathBuf> {
    if let Some(rest) = p.strip_prefix("~/") {
        let home = std::env::var_os("HOME").context("`~` in a path but HOME is not set")?;
        return Ok(PathBuf::from(home).join(rest));
    }
    Ok(PathBuf::from(p))
}

impl Account {
    /// True if the decoded mailbox name passes include/exclude.
    pub fn wants(&self, mailbox: &str) -> bool {
        self.include.is_match(mailbox) && !self.exclude.is_match(mailbox)
    }

    /// Reads the password from its source. Errors never contain it.
    pub fn read_password(&self) -> Result<String> {
        match &self.password {
            PasswordSource::Literal(p) => Ok(p.clone()),
            PasswordSource::Env(var) => std::env::var(var).with_context(|| {
                format!(
                    "password-env `{var}` is not set\nhint: export {var} before running imapbak"
                )
            }),
            PasswordSource::Command(cmd) => {
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::null())
                    .stderr(Stdio::piped())
                    .output()
                    .with_context(|| format!("cannot run password-command `{cmd}`"))?;
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    let first = err.lines().next().unwrap_or("").trim();
                    bail!(
                        "password-command `{cmd}` failed ({}){}\nhint: run it by hand to see why",
                        out.status,
                        if first.is_empty() {
                            String::new()
                        } else {
                            format!(": {first}")
                        }
                    );
                }
                let text = String::from_utf8(out.stdout)
                    .context("password-command printed something that is not UTF-8")?;
                let pw = text.lines().next().unwrap_or("").to_string();
                if pw.is_empty() {
                    bail!("password-command `{cmd}` printed an empty first line");
                }
                Ok(pw)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    const MINIMAL: &str = "[accounts.work]\nhost = \"h\"\nuser = \"u\"\npassword-env = \"PW\"\narchive = \"/tmp/a\"\n";

    #[test]
    fn minimal_account_gets_defaults() {
        let (_d, p) = write(MINIMAL, 0o644);
        let c = Config::load(&p).unwrap();
        let a = &c.accounts[0];
        assert_eq!((a.port, a.tls), (993, TlsMode::Implicit));
        assert!(a.wants("Archive/2024") && a.wants("INBOX"));
        assert_eq!(a.compression_level, DEFAULT_COMPRESSION_LEVEL);
        assert!(!a.compress);
        let (_d, p) = write(&format!("{MINIMAL}compress = true\n"), 0o644);
        assert!(Config::load(&p).unwrap().accounts[0].compress);
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_file() {
        let (_d, p) = write(&format!("{MINIMAL}hots = \"x\"\n"), 0o600);
        let err = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(err.contains("hots"), "{err}");
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn a_typo_in_a_key_or_value_suggests_the_nearest_name() {
        let text = MINIMAL.replace("password-env", "pasword-env");
        let (_d, p) = write(&text, 0o600);
        let err = crate::report::error_text(&Config::load(&p).unwrap_err());
        assert!(err.ends_with("hint: did you mean `password-env`?"), "{err}");
        let (_d, p) = write(&format!("{MINIMAL}tls = \"startls\"\n"), 0o600);
        let err = crate::report::error_text(&Config::load(&p).unwrap_err());
        assert!(err.contains("did you mean `starttls`?"), "{err}");
        let (_d, p) = write(&format!("{MINIMAL}colour = 1\n"), 0o600);
        let err = crate::report::error_text(&Config::load(&p).unwrap_err());
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn a_syntax_error_shows_the_line_and_caret_on_lines_of_their_own() {
        let (_d, p) = write(&format!("{MINIMAL}timeout = = 3\n"), 0o600);
        let err = crate::report::error_text(&Config::load(&p).unwrap_err());
        assert!(err.lines().count() >= 4, "{err}");
        assert!(err.lines().any(|l| l.contains("| timeout = = 3")), "{err}");
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with("| ") && l.contains('^')),
            "{err}"
        );
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        assert_eq!(edit_distance("hots", "host"), 1);
        assert_eq!(edit_distance("pasword-command", "password-command"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn literal_password_in_a_world_readable_file_is_refused() {
        let text = MINIMAL.replace("password-env = \"PW\"", "password = \"s3cret\"");
        let (_d, p) = write(&text, 0o644);
        let err = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("s3cret"));
        let (_d, p) = write(&text, 0o600);
        assert!(Config::load(&p).is_ok());
    }

    #[test]
    fn exclude_and_starttls_port_default() {
        let text = format!("{MINIMAL}tls = \"starttls\"\nexclude = [\"Junk\", \"Spam/*\"]\n");
        let (_d, p) = write(&text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert_eq!(a.port, 143);
        assert!(!a.wants("Junk") && !a.wants("Spam/x") && a.wants("Junkyard"));
    }

    #[test]
    fn failing_password_command_is_one_clear_error_without_the_secret() {
        let text = MINIMAL.replace(
            "password-env = \"PW\"",
            "password-command = \"echo nope >&2; exit 3\"",
        );
        let (_d, p) = write(&text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        let err = format!("{:#}", a.read_password().unwrap_err());
        assert!(err.contains("failed") && err.contains("nope"), "{err}");
    }
}
