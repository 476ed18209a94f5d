//! OAuth2 sign-in: where an access token comes from (a user's helper
//! command, or our own flows and stored refresh token), the provider
//! presets, and the token store. The IMAP side only ever sees a finished
//! access token (`imap/auth.rs` sends it over SASL); nothing here knows
//! IMAP.
//!
//! Secrets (access and refresh tokens, client secrets, codes) never reach
//! a log line, an error text, argv of a child process or `--json`: types
//! holding them print `<hidden>` in `Debug`, and errors name only the
//! endpoint and the OAuth2 error code.

pub mod flow;
pub mod presets;
pub mod store;
pub mod token;

use std::path::PathBuf;

use crate::config::PasswordSource;

pub use token::TokenProvider;

/// Which built-in flow `imapbak login` runs (and which one the refresh
/// token came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    /// Browser, loopback redirect, PKCE S256 (RFC 8252).
    #[default]
    AuthCode,
    /// Device authorization grant (RFC 8628).
    Device,
    /// Client credentials (Microsoft app-only).
    ClientCredentials,
    /// JWT bearer assertion (RFC 7523; Google domain-wide delegation).
    ServiceAccount,
}

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::AuthCode => "auth-code",
            Flow::Device => "device",
            Flow::ClientCredentials => "client-credentials",
            Flow::ServiceAccount => "service-account",
        }
    }
}

/// An account's OAuth2 settings, resolved from the file and its preset.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    pub source: TokenSource,
}

/// Where access tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `oauth2-token-command`: prints a current access token, run by
    /// `sh -c` each time one is needed.
    Command(String),
    /// Our own flows and the token store.
    Builtin(Builtin),
}

/// The built-in flows' settings.
#[derive(Debug, Clone)]
pub struct Builtin {
    pub flow: Flow,
    pub client_id: String,
    /// Optional for public clients.
    pub client_secret: Option<PasswordSource>,
    pub auth_url: Option<String>,
    pub token_url: String,
    pub device_url: Option<String>,
    pub scopes: Vec<String>,
    pub service_account_key: Option<PathBuf>,
}

/// Checks that an OAuth2 endpoint is `https://`, or plain http on a
/// loopback address (what tests and local helpers use).
pub fn check_endpoint(key: &str, url: &str) -> Result<(), String> {
    let parsed =
        oauth2::url::Url::parse(url).map_err(|e| format!("`{key}` = `{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => match parsed.host() {
            Some(oauth2::url::Host::Domain("localhost")) => Ok(()),
            Some(oauth2::url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(oauth2::url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => Err(format!(
                "`{key}` = `{url}` is not https\nhint: OAuth2 endpoints must use https:// (plain http only on 127.0.0.1, ::1 or localhost)"
            )),
        },
        other => Err(format!(
            "`{key}` = `{url}` has scheme `{other}`\nhint: OAuth2 endpoints must use https://"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        assert!(check_endpoint("k", "https://login.example.com/token").is_ok());
        assert!(check_endpoint("k", "http://127.0.0.1:8080/token").is_ok());
        assert!(check_endpoint("k", "http://[::1]:8080/token").is_ok());
        assert!(check_endpoint("k", "http://localhost/token").is_ok());
        let err = check_endpoint("oauth2-token-url", "http://example.com/token").unwrap_err();
        assert!(
            err.contains("`oauth2-token-url`") && err.contains("https"),
            "{err}"
        );
        assert!(check_endpoint("k", "ftp://127.0.0.1/").is_err());
        assert!(check_endpoint("k", "not a url").is_err());
    }
}
