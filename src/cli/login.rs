//! `imapbak login` and `imapbak logout`: the one interactive step of an
//! OAuth2 account, and its undoing.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::oauth::flow::Prompt;
use crate::oauth::token::AccessToken;
use crate::oauth::{store, TokenProvider};

/// Sign in to an OAuth2 account once, so that later runs need no one.
///
/// With the authorization-code flow (the default, and the one Google allows
/// for Gmail), imapbak listens on 127.0.0.1 on a free port and prints the
/// provider's sign-in URL alone on a line of stderr; open it in a browser
/// (on another machine too: the browser only has to reach the provider,
/// then it is sent back to 127.0.0.1 on this one, so run it where a browser
/// is, or forward the port). A browser is opened for you only when stderr
/// is a terminal. The answer is checked (`state`) and exchanged for tokens
/// with the PKCE verifier (RFC 7636, S256).
///
/// With `--device` (or `oauth2-flow = "device"`; Microsoft allows it,
/// Google not for Gmail), imapbak prints a URL and a short code to type
/// there, on any device, and waits.
///
/// The refresh token goes to $XDG_STATE_HOME/imapbak/tokens/ACCOUNT.json
/// (0600, written atomically); every other command then refreshes access
/// tokens from it, and saves the new refresh token when the provider
/// rotates it. When it stops working (revoked, 90 days unused at
/// Microsoft, 7 days for a Google app in testing status) runs fail with
/// exit code 3 and a hint to sign in again.
#[derive(Debug, clap::Args)]
pub struct LoginCmd {
    /// The account to sign in to
    #[arg(value_name = "ACCOUNT")]
    account: String,

    /// Use the device flow (RFC 8628): a code to type on any device
    #[arg(long)]
    device: bool,

    /// Give up after this many seconds without an answer
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

/// Forget an OAuth2 account's stored tokens.
///
/// Deletes $XDG_STATE_HOME/imapbak/tokens/ACCOUNT.json. The provider still
/// knows the grant: revoke it there too (Google: myaccount.google.com,
/// "Third-party apps"; Microsoft: myapps.microsoft.com) if the machine is
/// being retired.
#[derive(Debug, clap::Args)]
pub struct LogoutCmd {
    /// The account whose tokens to delete
    #[arg(value_name = "ACCOUNT")]
    account: String,
}

struct Terminal;

impl Prompt for Terminal {
    fn open_url(&mut self, url: &str) {
        eprintln!("Open this URL in a browser and sign in:");
        eprintln!();
        eprintln!("{url}");
        eprintln!();
        if std::io::stderr().is_terminal() && has_display() {
            // The URL is not a secret (no code or verifier is in it).
            let opened = std::process::Command::new("xdg-open")
                .arg(url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .is_ok();
            if opened {
                eprintln!("(a browser was asked to open it)");
            }
        }
        eprintln!("Waiting for the browser to come back to 127.0.0.1 ...");
    }

    fn device_code(&mut self, verification_uri: &str, user_code: &str, complete: Option<&str>) {
        eprintln!("On any device, open");
        eprintln!();
        eprintln!("{verification_uri}");
        eprintln!();
        eprintln!("and enter the code {user_code}");
        if let Some(c) = complete {
            eprintln!("(or open {c})");
        }
        eprintln!("Waiting ...");
    }
}

fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

pub fn run(cmd: LoginCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    let account = config.select(std::slice::from_ref(&cmd.account))?.remove(0);
    let oauth2 = account.oauth2.as_ref().with_context(|| {
        format!(
            "account `{}` logs in with a password\nhint: set `auth = \"oauth2\"` (or a `provider` such as gmail or outlook) to sign in with OAuth2",
            account.name
        )
    })?;
    let tokens = TokenProvider::new(&account.name, &account.user, oauth2)
        .map_err(|e| anyhow!("{e}\nhint: {}", e.hint))?;
    match tokens.login(cmd.device, &mut Terminal, Duration::from_secs(cmd.timeout)) {
        Ok(stored) => {
            eprintln!(
                "signed in to account `{}`; tokens saved in `{}`",
                account.name,
                tokens.store_path().display()
            );
            if let Some(exp) = stored.expires_at {
                log::info!("access token expires at {}", when(exp));
            }
            eprintln!("next: `imapbak check -a {}`", account.name);
            Ok(ExitCode::Success)
        }
        Err(e) => {
            eprintln!(
                "error: account `{}`: {}\nhint: {}",
                account.name, e.message, e.hint
            );
            Ok(ExitCode::Connection)
        }
    }
}

pub fn run_logout(cmd: LogoutCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    let account = config.select(std::slice::from_ref(&cmd.account))?.remove(0);
    let file = store::path_for(&account.name)?;
    if store::delete(&file)? {
        eprintln!("deleted `{}`", file.display());
    } else {
        eprintln!("no stored token for account `{}`", account.name);
    }
    Ok(ExitCode::Success)
}

/// A Unix time as UTC text.
fn when(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// `check`'s line on how it logged in; `None` for a password login.
pub(crate) fn describe(mechanism: Option<&str>, token: Option<&AccessToken>) -> Option<String> {
    let mechanism = mechanism?;
    let expiry = match token.and_then(|t| t.expires_at) {
        Some(exp) => format!("; the access token expires at {}", when(exp)),
        None => "; the token command's token (expiry not known)".into(),
    };
    Some(format!(
        "signed in with OAuth2 over SASL {mechanism}{expiry}"
    ))
}
