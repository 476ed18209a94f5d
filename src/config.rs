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
use crate::oauth::presets::{self, AuthMode};
use crate::oauth::{Builtin, Flow, OAuth2, TokenSource};

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
    provider: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    tls: Option<TlsMode>,
    user: Option<String>,
    users_command: Option<String>,
    users_file: Option<PathBuf>,
    admin_user: Option<String>,
    admin_login: Option<crate::org::AdminLoginKey>,
    admin_separator: Option<String>,
    auth: Option<AuthMode>,
    password_command: Option<String>,
    password_env: Option<String>,
    password: Option<String>,
    oauth2_token_command: Option<String>,
    oauth2_flow: Option<Flow>,
    oauth2_client_id: Option<String>,
    oauth2_client_secret_command: Option<String>,
    oauth2_client_secret_env: Option<String>,
    oauth2_client_secret: Option<String>,
    oauth2_auth_url: Option<String>,
    oauth2_token_url: Option<String>,
    oauth2_device_url: Option<String>,
    oauth2_scopes: Option<Vec<String>>,
    oauth2_service_account_key: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_fingerprint: Option<String>,
    archive: Option<String>,
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    compression_level: Option<i32>,
    timeout: Option<u64>,
    max_message_size: Option<u64>,
    compress: Option<CompressFile>,
    gmail: Option<bool>,
    gmail_spam_and_trash: Option<bool>,
    daily_download_limit: Option<u64>,
    max_connections: Option<u16>,
}

/// The OAuth2 keys of an account, taken out of [`AccountFile`] (serde's
/// `flatten` would switch `deny_unknown_fields` off).
#[derive(Debug, Default)]
struct OAuth2File {
    oauth2_token_command: Option<String>,
    oauth2_flow: Option<Flow>,
    oauth2_client_id: Option<String>,
    oauth2_client_secret_command: Option<String>,
    oauth2_client_secret_env: Option<String>,
    oauth2_client_secret: Option<String>,
    oauth2_auth_url: Option<String>,
    oauth2_token_url: Option<String>,
    oauth2_device_url: Option<String>,
    oauth2_scopes: Option<Vec<String>>,
    oauth2_service_account_key: Option<PathBuf>,
}

impl OAuth2File {
    /// The keys that are set, by their names in the file.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut add = |set: bool, key| {
            if set {
                out.push(key)
            }
        };
        add(self.oauth2_token_command.is_some(), "oauth2-token-command");
        add(self.oauth2_flow.is_some(), "oauth2-flow");
        add(self.oauth2_client_id.is_some(), "oauth2-client-id");
        add(
            self.oauth2_client_secret_command.is_some(),
            "oauth2-client-secret-command",
        );
        add(
            self.oauth2_client_secret_env.is_some(),
            "oauth2-client-secret-env",
        );
        add(self.oauth2_client_secret.is_some(), "oauth2-client-secret");
        add(self.oauth2_auth_url.is_some(), "oauth2-auth-url");
        add(self.oauth2_token_url.is_some(), "oauth2-token-url");
        add(self.oauth2_device_url.is_some(), "oauth2-device-url");
        add(self.oauth2_scopes.is_some(), "oauth2-scopes");
        add(
            self.oauth2_service_account_key.is_some(),
            "oauth2-service-account-key",
        );
        out
    }
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

/// COMPRESS=DEFLATE (RFC 4978): forced on or off, or chosen per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// On where the link is slow enough for deflate to pay: a round trip of
    /// at least [`Compress::AUTO_RTT`] measured while connecting (the
    /// smaller of the greeting's wait and half the TCP + TLS handshakes; an
    /// internet link) and then by a NOOP once the connection has work
    /// ([`Compress::AUTO_PROBES`]); off on loopback and LANs, where the CPU
    /// is the bottleneck, also when a busy machine slows the handshakes.
    Auto,
    On,
    Off,
}

impl Compress {
    /// The round trip from which `auto` turns deflate on. Measured with
    /// scripts/bench.sh: deflate loses on loopback (CPU-bound) and wins over
    /// a 40 ms / 100 Mbit/s link (issue 14); LANs answer in well under 1 ms,
    /// and a busy loopback in a few.
    pub const AUTO_RTT: std::time::Duration = std::time::Duration::from_millis(10);

    /// How many NOOPs at most check `auto`'s yes before deflate goes on: a
    /// round trip measured while connecting includes the TLS handshake's
    /// CPU work, which a busy machine makes slow (a loaded loopback
    /// measured 13-38 ms with load 5 on 2 cores, issue 14), while a NOOP's
    /// answer is the link's round trip and little else. One NOOP decides
    /// unless it lands between 1 and 2 x [`Compress::AUTO_RTT`].
    pub const AUTO_PROBES: usize = 2;

    /// Whether to turn deflate on, given the measured round trip.
    pub fn wanted(self, rtt: std::time::Duration) -> bool {
        match self {
            Compress::On => true,
            Compress::Off => false,
            Compress::Auto => rtt >= Compress::AUTO_RTT,
        }
    }
}

/// `compress = true | false | "auto"` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CompressFile {
    Forced(bool),
    Word(String),
}

/// One account, resolved and checked.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub user: String,
    /// The password source; unused (and empty) with OAuth2.
    pub password: PasswordSource,
    /// Set when `auth = "oauth2"`: where access tokens come from.
    pub oauth2: Option<OAuth2>,
    pub ca_file: Option<PathBuf>,
    pub fingerprint: Option<[u8; 32]>,
    pub archive: PathBuf,
    pub include: GlobSet,
    pub exclude: GlobSet,
    pub compression_level: i32,
    pub timeout: Duration,
    pub max_message_size: u64,
    /// Ask for COMPRESS=DEFLATE (RFC 4978) when the server offers it.
    pub compress: Compress,
    /// Gmail mode when the server announces X-GM-EXT-1 (default on).
    pub gmail: bool,
    /// In Gmail mode, also pull Spam and Trash (as ordinary folders).
    pub gmail_spam_and_trash: bool,
    /// Set when an admin logs in on the user's behalf (`admin-user`); the
    /// password is then the admin's.
    pub admin: Option<crate::org::Admin>,
    /// `daily-download-limit` in bytes as configured (0: none); unset:
    /// Gmail mode's default, none elsewhere (`sync::gmail`).
    pub daily_download_limit: Option<u64>,
    /// The most connections pull opens for this account (one user) at once,
    /// whatever --jobs says (`max-connections`).
    pub max_connections: usize,
    /// For a user of a multi-user table: the table's name (the account is
    /// then named `TABLE/USER`).
    pub table: Option<String>,
}

/// Dovecot's `mail_max_userip_connections` default: the connections one
/// user may hold from one address. Gmail allows about 15 per account,
/// shared with the user's own clients (shared/PROVIDERS.md), so 10 leaves
/// them room too.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10;

pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 512 * 1024 * 1024;

/// A loaded configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub accounts: Vec<Account>,
    /// The accounts that are tables of many users (`users-command` or
    /// `users-file`), by name; [`Config::select`] expands them.
    pub orgs: BTreeMap<String, crate::org::Users>,
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
        let mut orgs = BTreeMap::new();
        for (name, a) in file.accounts {
            let (mut account, users) = resolve(&name, a, mode)
                .with_context(|| format!("in account `{name}` of `{}`", path.display()))?;
            // Relative to this file, not to the cwd (under cron, $HOME).
            if account.archive.is_relative() {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                let dir = std::path::absolute(dir.unwrap_or(Path::new(".")))
                    .with_context(|| format!("cannot resolve `{}`", path.display()))?;
                account.archive = dir.join(&account.archive);
            }
            if let Some(u) = users {
                orgs.insert(name, u);
            }
            accounts.push(account);
        }
        Ok(Config {
            path: path.to_path_buf(),
            accounts,
            orgs,
        })
    }

    /// Like [`Config::select`], with each multi-user table expanded into one
    /// account per user (`TABLE/USER`) that `filter` keeps. `--user` and
    /// `--shard` apply to those tables only, so they need one selected.
    pub fn select_users(
        &self,
        names: &[String],
        filter: &crate::org::UserFilter,
    ) -> Result<Vec<Account>> {
        self.select_users_scoped(names, filter)?
            .into_iter()
            .map(|r| r.map_err(|refused| refused.error))
            .collect()
    }

    /// Like [`Config::select_users`], with a user whose name cannot be
    /// archived given back in its place as [`crate::org::Refused`] instead
    /// of failing the whole selection (pull goes on with the others).
    pub fn select_users_scoped(
        &self,
        names: &[String],
        filter: &crate::org::UserFilter,
    ) -> Result<Vec<Result<Account, crate::org::Refused>>> {
        let selected = self.select_tables(names)?;
        let filtered = !filter.users.is_empty() || filter.shard.is_some();
        if filtered && !selected.iter().any(|a| self.orgs.contains_key(&a.name)) {
            bail!(
                "--user and --shard need an account with a users list (`users-command` or `users-file`)\nhint: pick one with --account NAME"
            );
        }
        let mut out = Vec::new();
        for a in selected {
            match self.orgs.get(&a.name) {
                Some(users) => out.extend(crate::org::expand(&a, users, filter)?),
                None => out.push(Ok(a)),
            }
        }
        Ok(out)
    }

    /// The accounts named (all when `names` is empty), a multi-user table
    /// expanded into all its users; an unknown name is an error.
    pub fn select(&self, names: &[String]) -> Result<Vec<Account>> {
        self.select_users(names, &crate::org::UserFilter::default())
    }

    /// The accounts named, multi-user tables as their templates.
    fn select_tables(&self, names: &[String]) -> Result<Vec<Account>> {
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

fn resolve(name: &str, a: AccountFile, mode: u32) -> Result<(Account, Option<crate::org::Users>)> {
    let (user, users, admin) = resolve_users(name, &a)?;
    let oauth2_keys = OAuth2File {
        oauth2_token_command: a.oauth2_token_command,
        oauth2_flow: a.oauth2_flow,
        oauth2_client_id: a.oauth2_client_id,
        oauth2_client_secret_command: a.oauth2_client_secret_command,
        oauth2_client_secret_env: a.oauth2_client_secret_env,
        oauth2_client_secret: a.oauth2_client_secret,
        oauth2_auth_url: a.oauth2_auth_url,
        oauth2_token_url: a.oauth2_token_url,
        oauth2_device_url: a.oauth2_device_url,
        oauth2_scopes: a.oauth2_scopes,
        oauth2_service_account_key: a.oauth2_service_account_key,
    };
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        bail!("account name `{name}` cannot be used as a directory name");
    }
    let preset = a
        .provider
        .as_deref()
        .map(presets::find)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let auth = a.auth.or(preset.map(|p| p.auth)).unwrap_or_default();
    let (password, oauth2) = match auth {
        AuthMode::Password => {
            if let Some(key) = oauth2_keys.set_keys().first() {
                bail!("`{key}` is set but the account logs in with a password\nhint: add `auth = \"oauth2\"`, or remove `{key}`");
            }
            let p = password_source(
                "password",
                a.password_command,
                a.password_env,
                a.password,
                mode,
            )?
            .context("no password source\nhint: set password-command, password-env or password")?;
            (p, None)
        }
        AuthMode::Oauth2 => {
            for (key, set) in [
                ("password-command", a.password_command.is_some()),
                ("password-env", a.password_env.is_some()),
                ("password", a.password.is_some()),
            ] {
                if set {
                    bail!("`{key}` is set but the account signs in with OAuth2 (`auth = \"oauth2\"`)\nhint: remove `{key}`; the access token comes from `oauth2-token-command` or `imapbak login {name}`");
                }
            }
            (
                PasswordSource::Literal(String::new()),
                Some(resolve_oauth2(name, oauth2_keys, preset, mode)?),
            )
        }
    };
    let tls = a.tls.or(preset.map(|p| p.tls)).unwrap_or_default();
    let host = a
        .host
        .or(preset.map(|p| p.host.to_string()))
        .context("no `host`\nhint: set `host`, or `provider` to one of gmail, outlook, fastmail, icloud, yahoo")?;
    let fingerprint = match &a.cert_fingerprint {
        Some(text) => Some(parse_fingerprint(text).with_context(|| {
            format!("cert-fingerprint `{text}` is not a SHA-256 fingerprint\nhint: 64 hex digits, colons optional, e.g. the value `imapbak check` prints")
        })?),
        None => None,
    };
    let port = a.port.or(preset.map(|p| p.port)).unwrap_or(match tls {
        TlsMode::Implicit => 993,
        TlsMode::Starttls => 143,
    });
    match (&users, &oauth2, &admin) {
        (Some(_), None, None) => bail!("a users list needs `admin-user`\nhint: the admin (or Dovecot master user) whose password the password keys give"),
        (_, Some(_), Some(_)) => bail!("`admin-user` is set but the account signs in with OAuth2\nhint: remove `admin-user`; an app-only or service-account token logs in for each user"),
        // One grant covers every mailbox only for the app-only flows:
        // client credentials (Microsoft, XOAUTH2 with `user=` the mailbox)
        // and a service account (Google, a JWT with `sub` the user).
        (Some(_), Some(o), None) => match &o.source {
            TokenSource::Builtin(b) if matches!(b.flow, Flow::ClientCredentials | Flow::ServiceAccount) => {}
            _ => bail!("a users list with OAuth2 needs `oauth2-flow = \"client-credentials\"` or `\"service-account\"`\nhint: a token from a sign-in or a token command is one user's"),
        },
        _ => {}
    }
    let archive = match (&a.archive, &users) {
        // Each user's archive comes from the template at expansion.
        (_, Some(u)) => PathBuf::from(&u.archive_template),
        (Some(p), None) => expand_home(p)?,
        (None, None) => data_dir()?.join(name),
    };
    let level = a.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL);
    if !(1..=22).contains(&level) {
        bail!(
            "compression-level {level} is out of range\nhint: use 1 (fastest, the default) to 19"
        );
    }
    let account = Account {
        name: name.to_string(),
        host,
        port,
        tls,
        user,
        password,
        oauth2,
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
        compress: match a.compress {
            None => Compress::Auto,
            Some(CompressFile::Forced(true)) => Compress::On,
            Some(CompressFile::Forced(false)) => Compress::Off,
            Some(CompressFile::Word(w)) if w == "auto" => Compress::Auto,
            Some(CompressFile::Word(w)) => bail!(
                "compress = \"{w}\" is not a setting\nhint: use true, false or \"auto\" (the default)"
            ),
        },
        gmail: a.gmail.unwrap_or(true),
        gmail_spam_and_trash: a.gmail_spam_and_trash.unwrap_or(false),
        admin,
        daily_download_limit: a.daily_download_limit,
        max_connections: match a.max_connections {
            Some(0) => bail!("max-connections = 0 allows no connection\nhint: use 1 or more; the default is {DEFAULT_MAX_CONNECTIONS}"),
            Some(n) => n as usize,
            None => DEFAULT_MAX_CONNECTIONS,
        },
        table: None,
    };
    Ok((account, users))
}

/// The login keys: `user`, or a users list (`users-command`, `users-file`)
/// with an `archive` template holding `{user}`; and the admin credential.
fn resolve_users(
    name: &str,
    a: &AccountFile,
) -> Result<(String, Option<crate::org::Users>, Option<crate::org::Admin>)> {
    use crate::org::{Admin, AdminLogin, AdminLoginKey, Users, UsersSource};
    let source = match (&a.users_command, &a.users_file) {
        (Some(_), Some(_)) => {
            bail!("both `users-command` and `users-file` are set\nhint: keep one")
        }
        (Some(c), None) => Some(UsersSource::Command(c.clone())),
        (None, Some(f)) => Some(UsersSource::File(expand_home(&f.to_string_lossy())?)),
        (None, None) => None,
    };
    let users = match source {
        Some(source) => {
            if a.user.is_some() {
                bail!("`user` is set beside a users list\nhint: remove `user`; every name of the list is a user, and `admin-user` is who logs in");
            }
            let template = a.archive.clone().with_context(|| {
                format!("a users list needs `archive` with `{{user}}` in it\nhint: e.g. archive = \"/srv/mail-archive/{{user}}\" (account `{name}`)")
            })?;
            if !template.contains("{user}") {
                bail!("archive `{template}` has no `{{user}}`, so every user would share one archive\nhint: e.g. archive = \"/srv/mail-archive/{{user}}\"");
            }
            Some(Users {
                source,
                archive_template: template,
            })
        }
        None => None,
    };
    let user = match (&a.user, &users) {
        (Some(u), _) => u.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => bail!("no `user`\nhint: set `user`, or `users-file` / `users-command` with `admin-user` for many users"),
    };
    let admin = match &a.admin_user {
        None => {
            for (key, set) in [
                ("admin-login", a.admin_login.is_some()),
                ("admin-separator", a.admin_separator.is_some()),
            ] {
                if set {
                    bail!("`{key}` is set but `admin-user` is not\nhint: add `admin-user`, or remove `{key}`");
                }
            }
            None
        }
        Some(admin) => {
            let login = match a.admin_login.unwrap_or_default() {
                AdminLoginKey::Authzid => {
                    if a.admin_separator.is_some() {
                        bail!("`admin-separator` is set but `admin-login` is \"authzid\"\nhint: add `admin-login = \"master-separator\"`, or remove `admin-separator`");
                    }
                    AdminLogin::Authzid
                }
                AdminLoginKey::MasterSeparator => {
                    let sep = a.admin_separator.clone().unwrap_or_else(|| "*".into());
                    if sep.is_empty() {
                        bail!("`admin-separator` is empty\nhint: Dovecot's default auth_master_user_separator is `*`");
                    }
                    AdminLogin::MasterSeparator(sep)
                }
            };
            Some(Admin {
                user: admin.clone(),
                login,
            })
        }
    };
    Ok((user, users, admin))
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

/// One secret's source out of its three keys (`KEY-command`, `KEY-env`,
/// `KEY`); `None` when none is set. A literal needs a 0600 file.
fn password_source(
    key: &str,
    command: Option<String>,
    env: Option<String>,
    literal: Option<String>,
    mode: u32,
) -> Result<Option<PasswordSource>> {
    Ok(match (command, env, literal) {
        (Some(c), None, None) => Some(PasswordSource::Command(c)),
        (None, Some(v), None) => Some(PasswordSource::Env(v)),
        (None, None, Some(p)) => {
            if mode & 0o077 != 0 {
                bail!(
                    "`{key}` is set but the file is readable by group or others (mode {:o})\nhint: chmod 600 the file, or use {key}-command",
                    mode & 0o777
                );
            }
            Some(PasswordSource::Literal(p))
        }
        (None, None, None) => None,
        _ => bail!("more than one {key} source\nhint: keep one of {key}-command, {key}-env, {key}"),
    })
}

/// The OAuth2 settings: the file's keys over the provider's preset.
fn resolve_oauth2(
    name: &str,
    f: OAuth2File,
    preset: Option<&presets::Preset>,
    mode: u32,
) -> Result<OAuth2> {
    if let Some(cmd) = f.oauth2_token_command.clone() {
        // The helper owns the whole flow: our own flow keys would be ignored.
        if let Some(key) = f
            .set_keys()
            .into_iter()
            .find(|k| *k != "oauth2-token-command")
        {
            bail!("`{key}` is set beside `oauth2-token-command`\nhint: the token command does the sign-in itself; remove `{key}`, or remove `oauth2-token-command` to use imapbak's own sign-in");
        }
        return Ok(OAuth2 {
            source: TokenSource::Command(cmd),
        });
    }
    let flow = f.oauth2_flow.unwrap_or_default();
    // A service account's key file names its client; others need an id.
    let client_id = match (f.oauth2_client_id, flow) {
        (Some(id), _) => Some(id),
        (None, Flow::ServiceAccount) => Some(String::new()),
        (None, _) => None,
    };
    let client_id = client_id.context(format!(
        "no `oauth2-client-id` (and no `oauth2-token-command`)\nhint: set `oauth2-client-id` to your OAuth2 client's id (README: \"Gmail, Microsoft 365 and other OAuth2 providers\"), or `oauth2-token-command` to a helper that prints a token; then run `imapbak login {name}`"
    ))?;
    let client_secret = password_source(
        "oauth2-client-secret",
        f.oauth2_client_secret_command,
        f.oauth2_client_secret_env,
        f.oauth2_client_secret,
        mode,
    )?;
    let pick = |own: Option<String>, preset_value: Option<&'static str>, key: &str| {
        let v = own.or(preset_value.map(str::to_string));
        if let Some(url) = &v {
            crate::oauth::check_endpoint(key, url).map_err(anyhow::Error::msg)?;
        }
        Ok::<_, anyhow::Error>(v)
    };
    let auth_url = pick(
        f.oauth2_auth_url,
        preset.and_then(|p| p.auth_url),
        "oauth2-auth-url",
    )?;
    let token_url = pick(
        f.oauth2_token_url,
        preset.and_then(|p| p.token_url),
        "oauth2-token-url",
    )?
    .context(
        "no `oauth2-token-url`\nhint: set it, or a `provider` that has one (gmail, outlook, yahoo)",
    )?;
    let device_url = pick(
        f.oauth2_device_url,
        preset.and_then(|p| p.device_url),
        "oauth2-device-url",
    )?;
    match flow {
        Flow::AuthCode if auth_url.is_none() => {
            bail!("`oauth2-flow = \"auth-code\"` needs `oauth2-auth-url`\nhint: set it, or a `provider` that has one")
        }
        Flow::Device if device_url.is_none() => bail!(
            "`oauth2-flow = \"device\"` needs `oauth2-device-url`\nhint: set it; Google does not allow Gmail scopes in the device flow, use auth-code there"
        ),
        Flow::ServiceAccount if f.oauth2_service_account_key.is_none() => bail!(
            "`oauth2-flow = \"service-account\"` needs `oauth2-service-account-key`\nhint: the path of the service account's JSON key file"
        ),
        _ => {}
    }
    let scopes = f.oauth2_scopes.unwrap_or_else(|| {
        preset
            .map(|p| p.scopes.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    });
    Ok(OAuth2 {
        source: TokenSource::Builtin(Builtin {
            flow,
            client_id,
            client_secret,
            auth_url,
            token_url,
            device_url,
            scopes,
            service_account_key: f
                .oauth2_service_account_key
                .map(|p| expand_home(&p.to_string_lossy()))
                .transpose()?,
        }),
    })
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

pub(crate) fn expand_home(p: &str) -> Result<PathBuf> {
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
        self.password.read("password")
    }
}

/// Runs `cmd` with `sh -c` (stdin closed) and returns what it printed on
/// stdout; `what` names it in errors (`password-command`, `users-command`),
/// which carry the first line of its stderr, never its stdout (a secret).
pub fn command_output(what: &str, cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {what} `{cmd}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("").trim();
        bail!(
            "{what} `{cmd}` failed ({}){}\nhint: run it by hand to see why",
            out.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("{what} `{cmd}` printed something that is not UTF-8"))
}

impl PasswordSource {
    /// Reads the secret; `key` names it in errors (`password`,
    /// `oauth2-client-secret`). Errors never contain the secret.
    pub fn read(&self, key: &str) -> Result<String> {
        match self {
            PasswordSource::Literal(p) => Ok(p.clone()),
            PasswordSource::Env(var) => std::env::var(var).with_context(|| {
                format!("{key}-env `{var}` is not set\nhint: export {var} before running imapbak")
            }),
            PasswordSource::Command(cmd) => {
                let text = command_output(&format!("{key}-command"), cmd)?;
                let pw = text.lines().next().unwrap_or("").to_string();
                if pw.is_empty() {
                    bail!("{key}-command `{cmd}` printed an empty first line");
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
        assert_eq!(a.compress, Compress::Auto);
        let (_d, p) = write(&format!("{MINIMAL}compress = true\n"), 0o644);
        assert_eq!(Config::load(&p).unwrap().accounts[0].compress, Compress::On);
        let (_d, p) = write(&format!("{MINIMAL}compress = \"auto\"\n"), 0o644);
        assert_eq!(
            Config::load(&p).unwrap().accounts[0].compress,
            Compress::Auto
        );
        let (_d, p) = write(&format!("{MINIMAL}compress = \"yes\"\n"), 0o644);
        assert!(Config::load(&p).is_err());
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

    fn load_err(text: &str) -> String {
        let (_d, p) = write(text, 0o600);
        format!("{:#}", Config::load(&p).unwrap_err())
    }

    const GMAIL: &str = "[accounts.g]\nprovider = \"gmail\"\nuser = \"me@gmail.com\"\noauth2-client-id = \"id\"\narchive = \"/tmp/a\"\n";

    #[test]
    fn a_provider_preset_fills_host_auth_and_endpoints_and_keys_win() {
        let (_d, p) = write(GMAIL, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("imap.gmail.com", 993, TlsMode::Implicit)
        );
        let Some(OAuth2 {
            source: TokenSource::Builtin(b),
        }) = &a.oauth2
        else {
            panic!("{:?}", a.oauth2)
        };
        assert_eq!(b.flow, Flow::AuthCode);
        assert_eq!(b.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(b.scopes, ["https://mail.google.com/"]);
        let text = format!(
            "{GMAIL}host = \"127.0.0.1\"\nport = 1993\noauth2-token-url = \"http://127.0.0.1:9/t\"\noauth2-scopes = [\"x\"]\n"
        );
        let (_d, p) = write(&text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 1993));
        let Some(OAuth2 {
            source: TokenSource::Builtin(b),
        }) = &a.oauth2
        else {
            panic!()
        };
        assert_eq!(
            (b.token_url.as_str(), b.scopes.clone()),
            ("http://127.0.0.1:9/t", vec!["x".to_string()])
        );
        // A password provider stays a password account.
        let (_d, p) = write("[accounts.f]\nprovider = \"fastmail\"\nuser = \"u\"\npassword-env = \"P\"\narchive = \"/a\"\n", 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert!(a.oauth2.is_none() && a.host == "imap.fastmail.com");
    }

    #[test]
    fn password_keys_with_oauth2_and_oauth2_keys_with_password_are_errors_naming_the_key() {
        let err = load_err(&format!("{GMAIL}password-env = \"PW\"\n"));
        assert!(
            err.contains("`password-env`") && err.contains("oauth2"),
            "{err}"
        );
        let err = load_err(&format!("{MINIMAL}oauth2-client-id = \"x\"\n"));
        assert!(
            err.contains("`oauth2-client-id`") && err.contains("auth = \"oauth2\""),
            "{err}"
        );
        let err = load_err(&format!(
            "{GMAIL}auth = \"password\"\npassword-env = \"PW\"\n"
        ));
        assert!(err.contains("`oauth2-client-id`"), "{err}");
        // Unknown keys stay errors beside the OAuth2 ones.
        let err = load_err(&format!("{GMAIL}oauth2-scope = [\"x\"]\n"));
        assert!(err.contains("oauth2-scope"), "{err}");
        let err = load_err(&GMAIL.replace("gmail\"", "gmial\""));
        assert!(err.contains("unknown provider `gmial`"), "{err}");
    }

    #[test]
    fn token_command_excludes_the_builtin_flow_keys_and_endpoints_must_be_https() {
        let text = "[accounts.o]\nhost = \"h\"\nuser = \"u\"\nauth = \"oauth2\"\noauth2-token-command = \"oama access u\"\narchive = \"/a\"\n";
        let (_d, p) = write(text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert!(
            matches!(&a.oauth2, Some(OAuth2 { source: TokenSource::Command(c) }) if c == "oama access u")
        );
        let err = load_err(&format!("{text}oauth2-client-id = \"x\"\n"));
        assert!(
            err.contains("`oauth2-client-id` is set beside `oauth2-token-command`"),
            "{err}"
        );
        let err = load_err(&format!(
            "{GMAIL}oauth2-token-url = \"http://example.com/t\"\n"
        ));
        assert!(
            err.contains("`oauth2-token-url`") && err.contains("https"),
            "{err}"
        );
        let err = load_err(&GMAIL.replace("oauth2-client-id = \"id\"\n", ""));
        assert!(
            err.contains("oauth2-client-id") && err.contains("imapbak login g"),
            "{err}"
        );
        let err = load_err(&format!("{GMAIL}oauth2-flow = \"device\"\n"));
        assert!(err.contains("oauth2-device-url"), "{err}");
        let err = load_err(&format!(
            "{GMAIL}oauth2-client-secret = \"s3cret\"\noauth2-client-secret-env = \"E\"\n"
        ));
        assert!(
            err.contains("more than one oauth2-client-secret source") && !err.contains("s3cret"),
            "{err}"
        );
    }

    const STAFF: &str =
        "[accounts.staff]\nhost = \"h\"\nadmin-user = \"backup-admin\"\npassword-env = \"PW\"\n";

    #[test]
    fn a_users_list_expands_into_one_account_per_user_with_its_own_archive() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "joe\nann\n.x\n").unwrap();
        let text = format!(
            "{STAFF}users-file = {:?}\narchive = \"/srv/{{user}}/x\"\n",
            users.display().to_string()
        );
        let (_d, p) = write(&text, 0o600);
        let c = Config::load(&p).unwrap();
        let all = c.select(&["staff".into()]).unwrap();
        let names: Vec<_> = all.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["staff/joe", "staff/ann", "staff/.x"]);
        assert_eq!(all[2].user, ".x");
        assert_eq!(all[2].archive, Path::new("/srv/%2Ex/x"));
        assert_eq!(all[2].table.as_deref(), Some("staff"));
        assert_eq!(all[0].max_connections, DEFAULT_MAX_CONNECTIONS);
        // A name that could leave the root is refused in its place, by
        // name; the others stay selected.
        std::fs::write(&users, "joe\n..\nann\n").unwrap();
        let scoped = c
            .select_users_scoped(&[], &crate::org::UserFilter::default())
            .unwrap();
        assert!(scoped[0].is_ok() && scoped[2].is_ok());
        let refused = scoped[1].as_ref().unwrap_err();
        assert_eq!(refused.account, "staff/..");
        assert!(format!("{:#}", refused.error).contains("`..`"));
        assert!(c.select(&[]).is_err());
        std::fs::write(&users, "joe\nann\n.x\n").unwrap();
        assert_eq!(
            all[0].admin,
            Some(crate::org::Admin {
                user: "backup-admin".into(),
                login: crate::org::AdminLogin::Authzid
            })
        );
        let filter = crate::org::UserFilter {
            users: vec!["ann".into()],
            shard: None,
        };
        let one = c.select_users(&[], &filter).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "staff/ann");
        let filter = crate::org::UserFilter {
            users: vec!["nobody".into()],
            shard: None,
        };
        let err = format!("{:#}", c.select_users(&[], &filter).unwrap_err());
        assert!(err.contains("no user `nobody`"), "{err}");
    }

    #[test]
    fn a_users_list_needs_an_admin_and_a_user_template_and_no_user() {
        let text = format!("{STAFF}users-command = \"echo joe\"\narchive = \"/srv/all\"\n");
        assert!(load_err(&text).contains("has no `{user}`"));
        let text = format!("{STAFF}users-command = \"echo joe\"\n");
        assert!(load_err(&text).contains("needs `archive`"));
        let text = format!(
            "{STAFF}users-command = \"echo joe\"\nuser = \"u\"\narchive = \"/s/{{user}}\"\n"
        );
        assert!(load_err(&text).contains("`user` is set beside a users list"));
        let text = STAFF.replace("admin-user = \"backup-admin\"\n", "")
            + "users-command = \"echo joe\"\narchive = \"/s/{user}\"\n";
        assert!(load_err(&text).contains("needs `admin-user`"));
        let text = format!(
            "{STAFF}user = \"joe\"\narchive = \"/a\"\nadmin-login = \"master-separator\"\n"
        );
        let (_d, p) = write(&text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        assert_eq!(
            a.admin.as_ref().unwrap().login,
            crate::org::AdminLogin::MasterSeparator("*".into())
        );
        let text = format!("{MINIMAL}admin-separator = \"*\"\n");
        assert!(load_err(&text).contains("`admin-user` is not"));
    }

    #[test]
    fn a_users_list_with_oauth2_takes_only_the_app_only_flows() {
        let base = "[accounts.t]\nprovider = \"gmail\"\nusers-command = \"echo a@example.com\"\narchive = \"/s/{user}\"\n";
        let sa = format!(
            "{base}oauth2-flow = \"service-account\"\noauth2-service-account-key = \"/k.json\"\n"
        );
        let (_d, p) = write(&sa, 0o600);
        let c = Config::load(&p).unwrap();
        let all = c.select(&[]).unwrap();
        assert_eq!(
            (all[0].name.as_str(), all[0].user.as_str()),
            ("t/a@example.com", "a@example.com")
        );
        assert!(load_err(&format!("{sa}admin-user = \"x\"\n")).contains("`admin-user` is set"));
        let err = load_err(&format!("{base}oauth2-client-id = \"id\"\n"));
        assert!(err.contains("client-credentials"), "{err}");
    }

    #[test]
    fn a_service_account_needs_no_client_id_and_app_only_keeps_its_token_url() {
        let text = "[accounts.w]\nprovider = \"gmail\"\nuser = \"a@example.com\"\noauth2-flow = \"service-account\"\noauth2-service-account-key = \"/k.json\"\narchive = \"/a\"\n";
        let (_d, p) = write(text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        let Some(OAuth2 {
            source: TokenSource::Builtin(b),
        }) = &a.oauth2
        else {
            panic!()
        };
        assert_eq!(b.flow, Flow::ServiceAccount);
        assert_eq!(b.service_account_key.as_deref(), Some(Path::new("/k.json")));
        let err = load_err(&text.replace("oauth2-service-account-key = \"/k.json\"\n", ""));
        assert!(err.contains("oauth2-service-account-key"), "{err}");
        let text = "[accounts.m]\nprovider = \"outlook\"\nuser = \"a@example.com\"\noauth2-flow = \"client-credentials\"\noauth2-client-id = \"id\"\noauth2-client-secret-env = \"S\"\noauth2-token-url = \"https://login.microsoftonline.com/T/oauth2/v2.0/token\"\noauth2-scopes = [\"https://outlook.office365.com/.default\"]\narchive = \"/a\"\n";
        let (_d, p) = write(text, 0o600);
        let a = &Config::load(&p).unwrap().accounts[0];
        let Some(OAuth2 {
            source: TokenSource::Builtin(b),
        }) = &a.oauth2
        else {
            panic!()
        };
        assert_eq!(
            b.token_url,
            "https://login.microsoftonline.com/T/oauth2/v2.0/token"
        );
        assert!(matches!(b.client_secret, Some(PasswordSource::Env(_))));
    }
}
