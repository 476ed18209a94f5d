//! Command-line definitions (clap derive). Help text, the man page and
//! completions all come from these definitions.

mod check;
mod completions;
mod export;
mod expunge;
mod login;
mod ls;
mod pull;
mod quota;
mod restore;
mod search;
mod serve;
mod show;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Account, Config, TlsMode};
use crate::exit_codes::ExitCode;
use crate::imap::{tls, ConnectParams, Connection, ImapError};
use crate::sync::remote::{ErrorKind, RemoteError};

/// The one configuration example: README.md shows it verbatim and a test
/// keeps both in step (`config_example_is_the_readmes_and_loads`).
pub const CONFIG_EXAMPLE: &str = include_str!("../../config.example.toml");

const AFTER_HELP: &str = "\
OAuth2 (Gmail, Microsoft 365, Outlook.com): `provider = \"gmail\"` or
`\"outlook\"` (also fastmail, icloud, yahoo) fills host, port, tls, auth and
the OAuth2 endpoints; `auth = \"oauth2\"`; then either
`oauth2-token-command = \"...\"` (prints an access token: oama, pizauth,
mutt_oauth2.py) or `oauth2-client-id` (+ `oauth2-client-secret-command`)
and `imapbak login ACCOUNT` once. Other keys: oauth2-flow (auth-code,
device, client-credentials, service-account), oauth2-auth-url,
oauth2-token-url, oauth2-device-url, oauth2-scopes,
oauth2-service-account-key. Tokens: $XDG_STATE_HOME/imapbak/tokens/.

Organisations: `users-file = \"users.txt\"` or `users-command = \"...\"`
(one login name per line) instead of `user`, `admin-user` with the password
keys giving the admin's password, `admin-login = \"authzid\"` (default; SASL
PLAIN with the user as authorization identity) or `\"master-separator\"`
(LOGIN user*admin; `admin-separator`, default `*`), and `archive =
\".../{user}\"`. Each user becomes an account named TABLE/USER with its own
archive; the user name is mapped to one safe path component (`%`, a
leading `.` and non-ASCII as %XX; `.`, `..`, a `/`, a control character
or over 200 bytes: that user is refused by name). pull, verify and expunge
take --user and --shard K/N (or --shard-count N with K from
$JOB_COMPLETION_INDEX). `max-connections` (default 10, Dovecot's
mail_max_userip_connections) caps the connections to one account or user. With
OAuth2 a users list takes oauth2-flow client-credentials or service-account
and no admin-user.

The archive is a Maildir++ tree (ARCHIVE/mail) that a stock Dovecot serves
as it is: mail_location = maildir:ARCHIVE/mail, mail_plugins = zlib.
Each message is one zstd frame (`zstd -dc FILE` reads it).
";

/// The long help after the options: the configuration example, indented,
/// then the archive note.
fn after_help() -> String {
    let example: String = CONFIG_EXAMPLE.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "Configuration (TOML; --config, else $IMAPBAK_CONFIG, else $XDG_CONFIG_HOME/imapbak/config.toml):\n\n{example}\n{AFTER_HELP}\n{}",
        ExitCode::TABLE
    )
}

/// Back up every mailbox of an IMAP account into a compressed local Maildir.
#[derive(Debug, Parser)]
#[command(
    name = "imapbak",
    version = env!("IMAPBAK_LONG_VERSION"),
    about,
    long_about = "Back up every mailbox of an IMAP account into a compressed, \
                  Dovecot-servable local Maildir, incrementally by UID. Run \
                  `imapbak check` once, then `imapbak pull` from cron.",
    after_long_help = after_help(),
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file [default: $IMAPBAK_CONFIG, else $XDG_CONFIG_HOME/imapbak/config.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// More log output on stderr: -v what imapbak does (each mailbox,
    /// each command's round trip), -vv its debug output; libraries' logs
    /// only with RUST_LOG
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
/// Each subcommand's help comes from the doc comment of its `XxxCmd`
/// struct (first line: the summary; the rest: the long help).
pub enum Command {
    Check(check::CheckCmd),
    Pull(pull::PullCmd),
    Restore(restore::RestoreCmd),
    Expunge(expunge::ExpungeCmd),
    Quota(quota::QuotaCmd),
    Verify(verify::VerifyCmd),
    Ls(ls::LsCmd),
    Search(search::SearchCmd),
    Show(show::ShowCmd),
    Export(export::ExportCmd),
    Login(login::LoginCmd),
    Logout(login::LogoutCmd),
    Serve(serve::ServeCmd),
    Completions(completions::CompletionsCmd),
    /// Print the man page (roff) of imapbak or of one subcommand
    #[command(hide = true)]
    Man {
        /// Subcommand whose page to print
        subcommand: Option<String>,
        /// Write every page (imapbak.1, imapbak-SUB.1) into this directory
        #[arg(long, value_name = "DIR")]
        write_all: Option<PathBuf>,
    },
}

/// Runs the parsed command line; the exit code says how it went.
pub fn run(cli: Cli) -> Result<ExitCode> {
    use crate::sync::interrupt::{self, Interrupt};
    // The commands that write stop cleanly on Ctrl-C and SIGTERM; the
    // others keep the default (die at once), which is harmless for them.
    if matches!(
        cli.command,
        Command::Pull(_) | Command::Restore(_) | Command::Expunge(_)
    ) {
        interrupt::install();
    }
    let code = run_command(cli)?;
    Ok(match interrupt::requested() {
        Some(Interrupt::Int) => ExitCode::Interrupted,
        Some(Interrupt::Term) => ExitCode::Terminated,
        None => code,
    })
}

fn run_command(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(cmd) => check::run(cmd, cli.config.as_deref()),
        Command::Pull(cmd) => pull::run(cmd, cli.config.as_deref()),
        Command::Restore(cmd) => restore::run(cmd, cli.config.as_deref()),
        Command::Expunge(cmd) => expunge::run(cmd, cli.config.as_deref()),
        Command::Quota(cmd) => quota::run(cmd, cli.config.as_deref()),
        Command::Verify(cmd) => verify::run(cmd, cli.config.as_deref()),
        Command::Ls(cmd) => ls::run(cmd, cli.config.as_deref()),
        Command::Search(cmd) => search::run(cmd, cli.config.as_deref()),
        Command::Show(cmd) => show::run(cmd, cli.config.as_deref()),
        Command::Export(cmd) => export::run(cmd, cli.config.as_deref()),
        Command::Login(cmd) => login::run(cmd, cli.config.as_deref()),
        Command::Logout(cmd) => login::run_logout(cmd, cli.config.as_deref()),
        Command::Serve(cmd) => serve::run(cmd, cli.config.as_deref()),
        Command::Completions(cmd) => completions::run(cmd),
        Command::Man {
            subcommand,
            write_all: Some(dir),
        } => {
            anyhow::ensure!(
                subcommand.is_none(),
                "--write-all writes every page; name no subcommand"
            );
            for (file, page) in all_man_pages()? {
                let path = dir.join(file);
                std::fs::write(&path, page)
                    .with_context(|| format!("cannot write `{}`", path.display()))?;
            }
            Ok(ExitCode::Success)
        }
        Command::Man {
            subcommand,
            write_all: None,
        } => {
            let page = man_page(subcommand.as_deref())?;
            use std::io::Write;
            std::io::stdout().write_all(&page)?;
            Ok(ExitCode::Success)
        }
    }
}

/// The roff man page of `imapbak` or `imapbak-<subcommand>`.
pub fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    cmd.build();
    let page_cmd = match subcommand {
        // `imapbak help` is clap's, with no page of its own to refer to.
        None => cmd.mut_subcommand("help", |h| h.hide(true)),
        Some(name) => {
            let sub = cmd
                .find_subcommand(name)
                .with_context(|| format!("no subcommand `{name}`"))?
                .clone();
            let full = format!("imapbak-{name}");
            sub.name(full.clone()).bin_name(full)
        }
    };
    // The pages are checked in: they name the release, not the commit.
    let page_cmd = page_cmd.version(env!("CARGO_PKG_VERSION"));
    let values = value_names(&page_cmd);
    let mut out = Vec::new();
    clap_mangen::Man::new(page_cmd).render(&mut out)?;
    Ok(synopsis_with_values(out, &values))
}

/// Each option's escaped long name (as roff spells it) and value name.
fn value_names(cmd: &clap::Command) -> Vec<(String, String)> {
    cmd.get_arguments()
        .filter(|a| a.get_action().takes_values() && !a.is_positional())
        .filter_map(|a| {
            let long = a.get_long()?;
            let value = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
            Some((long.replace('-', "\\-"), value))
        })
        .collect()
}

/// clap_mangen's SYNOPSIS leaves option values out (`[--config]`); put
/// them in (`[--config PATH]`), as the OPTIONS section has them.
fn synopsis_with_values(page: Vec<u8>, values: &[(String, String)]) -> Vec<u8> {
    let Ok(text) = String::from_utf8(page.clone()) else {
        return page;
    };
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    if let Some(i) = lines.iter().position(|l| l == ".SH SYNOPSIS") {
        if let Some(line) = lines.get_mut(i + 1) {
            for (long, value) in values {
                *line = line.replace(
                    &format!("\\fB\\-\\-{long}\\fR]"),
                    &format!("\\fB\\-\\-{long}\\fR \\fI{value}\\fR]"),
                );
            }
        }
    }
    lines.join("\n").into_bytes()
}

/// Every page that belongs under man/, with its file name.
pub fn all_man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    let mut pages = vec![("imapbak.1".to_string(), man_page(None)?)];
    for sub in MAN_PAGES {
        pages.push((format!("imapbak-{sub}.1"), man_page(Some(sub))?));
    }
    Ok(pages)
}

/// Subcommands that get a page of their own under man/.
pub const MAN_PAGES: &[&str] = &[
    "check",
    "pull",
    "restore",
    "expunge",
    "quota",
    "verify",
    "ls",
    "search",
    "show",
    "export",
    "login",
    "logout",
    "serve",
    "completions",
];

/// Options shared by the subcommands that talk to servers.
#[derive(Debug, clap::Args)]
pub struct AccountArgs {
    /// Account to work on (repeatable) [default: every account]
    #[arg(short, long = "account", value_name = "NAME")]
    pub accounts: Vec<String>,
}

/// Which users of a multi-user account table (`users-file` or
/// `users-command`) to work on; for the commands that talk to servers.
#[derive(Debug, Default, clap::Args)]
pub struct UserArgs {
    /// Only this user of the account's users list (repeatable)
    #[arg(short = 'u', long = "user", value_name = "LOGIN")]
    pub users: Vec<String>,

    /// Only the K-th of N disjoint shares of the users (0 <= K < N); a
    /// user's share is a hash of the login name, so adding a user moves no
    /// other user
    #[arg(long, value_name = "K/N", value_parser = crate::org::Shard::parse, conflicts_with = "shard_count")]
    pub shard: Option<crate::org::Shard>,

    /// Like --shard K/N with K from $JOB_COMPLETION_INDEX (a Kubernetes
    /// Job with `completionMode: Indexed` and N `completions`)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub shard_count: Option<u32>,
}

impl UserArgs {
    pub(crate) fn filter(&self) -> Result<crate::org::UserFilter> {
        let shard = match (self.shard, self.shard_count) {
            (Some(s), _) => Some(s),
            (None, Some(n)) => Some(crate::org::Shard::from_job_index(n)?),
            (None, None) => None,
        };
        Ok(crate::org::UserFilter {
            users: self.users.clone(),
            shard,
        })
    }
}

/// Loads the configuration and picks the accounts, multi-user tables
/// expanded into the users `users` keeps.
pub(crate) fn load_accounts_for(
    config: Option<&std::path::Path>,
    args: &AccountArgs,
    users: &UserArgs,
) -> Result<Vec<Account>> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    config.select_users(&args.accounts, &users.filter()?)
}

/// Like [`load_accounts_for`], a user whose name cannot be archived in its
/// place as [`crate::org::Refused`] (pull reports it and goes on).
pub(crate) fn load_accounts_scoped(
    config: Option<&std::path::Path>,
    args: &AccountArgs,
    users: &UserArgs,
) -> Result<Vec<Result<Account, crate::org::Refused>>> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    config.select_users_scoped(&args.accounts, &users.filter()?)
}

/// Loads the configuration and picks the accounts.
pub(crate) fn load_accounts(
    config: Option<&std::path::Path>,
    args: &AccountArgs,
) -> Result<Vec<Account>> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    config.select(&args.accounts)
}

/// Everything needed to open connections to one account, prepared once
/// (the password is read once, not per connection; an OAuth2 access token
/// is fetched per connection, so a reconnect gets a fresh one).
pub(crate) struct Connector {
    account: Arc<Account>,
    password: String,
    tls: Arc<rustls::ClientConfig>,
    tokens: Option<Arc<crate::oauth::TokenProvider>>,
}

impl Connector {
    /// Its error does not name the account: the account's error line does.
    pub(crate) fn new(account: Arc<Account>) -> Result<Connector> {
        Connector::shared(account, None, None)
    }

    /// Like [`Connector::new`] with the password already read and the TLS
    /// settings already made (`Some`): the users of one table share the
    /// admin's password, read once, and one TLS configuration (its root
    /// store is about 100 kB: not a copy per user).
    pub(crate) fn shared(
        account: Arc<Account>,
        password: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connector> {
        let tls = match tls {
            Some(t) => t,
            None => tls::client_config(account.ca_file.as_deref(), account.fingerprint)?,
        };
        let (password, tokens) = match &account.oauth2 {
            Some(o) => (
                String::new(),
                Some(Arc::new(
                    crate::oauth::TokenProvider::new(&account.name, &account.user, o)
                        .map_err(|e| anyhow::anyhow!("{e}\nhint: {}", e.hint))?,
                )),
            ),
            None => match password {
                Some(p) => (p, None),
                None => (account.read_password()?, None),
            },
        };
        Ok(Connector {
            account,
            password,
            tls,
            tokens,
        })
    }

    /// The TLS settings, for [`Connector::shared`].
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// A logged-in connection; its failure as the engine sees it.
    pub(crate) async fn connect(&self) -> Result<Connection, RemoteError> {
        Ok(self.connect_reporting().await?.0)
    }

    /// Like [`Connector::connect`], also saying how it logged in (for `check`).
    pub(crate) async fn connect_reporting(
        &self,
    ) -> Result<(Connection, Option<crate::oauth::token::AccessToken>), RemoteError> {
        let Some(tokens) = &self.tokens else {
            return Ok((self.connect_imap(None).await?, None));
        };
        let mut force = false;
        loop {
            // The token endpoint is blocking HTTP: off the async workers.
            let t = tokens.clone();
            let token = tokio::task::spawn_blocking(move || t.access_token(force))
                .await
                .map_err(|e| RemoteError::broken(format!("token task failed: {e}")))?
                .map_err(|e| {
                    RemoteError::new(ErrorKind::Auth, e.message.clone()).with_hint(leak(e.hint))
                })?;
            match self.connect_imap(Some(&token.secret)).await {
                Ok(conn) => return Ok((conn, Some(token))),
                // A cached token the server no longer takes: refresh once.
                Err(ImapError::TokenRefused { .. }) if !token.fresh && !force => {
                    log::info!("the server refused the cached access token; refreshing it");
                    force = true;
                }
                Err(e @ ImapError::TokenRefused { .. }) => {
                    let hint = match &self.account.oauth2 {
                        Some(crate::oauth::OAuth2 {
                            source: crate::oauth::TokenSource::Command(_),
                        }) => "check `user` and what `oauth2-token-command` prints".to_string(),
                        _ => format!(
                            "check `user`; sign in again with `imapbak login {}`",
                            self.account.name
                        ),
                    };
                    return Err(RemoteError::from(e).with_hint(leak(hint)));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn connect_imap(&self, bearer: Option<&str>) -> Result<Connection, ImapError> {
        let a = &self.account;
        // An admin logs in for the user (config `admin-user`): Dovecot's
        // `user*admin` LOGIN, or PLAIN with the user as authzid.
        let (user, authcid) = match &a.admin {
            Some(crate::org::Admin {
                user: admin,
                login: crate::org::AdminLogin::MasterSeparator(sep),
            }) => (format!("{}{sep}{admin}", a.user), None),
            Some(crate::org::Admin {
                user: admin,
                login: crate::org::AdminLogin::Authzid,
            }) => (a.user.clone(), Some(admin.as_str())),
            None => (a.user.clone(), None),
        };
        Connection::connect(&ConnectParams {
            host: &a.host,
            port: a.port,
            starttls: a.tls == TlsMode::Starttls,
            user: &user,
            password: &self.password,
            bearer,
            authcid,
            tls: self.tls.clone(),
            timeout: a.timeout,
            max_literal: a.max_message_size,
            compress: a.compress,
        })
        .await
    }
}

/// A hint made at run time, for [`RemoteError::with_hint`]'s `&'static
/// str`: one small string per failed account, so the leak is bounded.
fn leak(hint: String) -> &'static str {
    Box::leak(hint.into_boxed_str())
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(test)]
mod config_example_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn config_example_is_the_readmes_and_loads() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&format!("```toml\n{CONFIG_EXAMPLE}```\n")),
            "README.md's configuration example differs from config.example.toml"
        );
        assert!(after_help().contains("  password-command = \"pass show mail/work\""));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, CONFIG_EXAMPLE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.accounts[0].host, "imap.example.com");
        assert!(!config.accounts[0].wants("Junk"));
    }

    #[test]
    fn contrib_config_example_is_the_same_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let contrib = std::fs::read_to_string(root.join("contrib/config.example.toml")).unwrap();
        assert_eq!(contrib, CONFIG_EXAMPLE);
    }
}
