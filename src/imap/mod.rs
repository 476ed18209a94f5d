//! The IMAP side: connecting (implicit TLS or STARTTLS, always verified),
//! logging in, and the few raw commands the sync engine needs. No policy
//! lives here: what to fetch and when is decided in `sync/`.
//!
//! `async-imap` gives us framing and parsing (`imap-proto`); commands are
//! issued raw so that LIST-STATUS, CONDSTORE modifiers and APPENDUID are ours
//! to use, and every read is bounded by the account's timeout.

mod append;
pub mod auth;
mod deflate;
mod expunge;
mod guard;
mod namespace;
mod probe;
mod session;
pub mod tls;

use std::borrow::Cow;
use std::future::Future;
use std::path::PathBuf;

use crate::sync::remote::{ErrorKind, RemoteError};

pub use session::{ConnectParams, Connection};

/// A failure on the IMAP side. `is_connection_level` tells the executor
/// whether the connection is still usable for the next mailbox.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to `{host}:{port}`: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS handshake with `{host}` failed: {reason}")]
    Handshake { host: String, reason: String },
    /// Implicit TLS on a port that speaks plain IMAP (usually 143).
    #[error("`{host}:{port}` sent a plain-text IMAP greeting where a TLS handshake was expected")]
    PlainGreeting { host: String, port: u16 },
    /// STARTTLS on a port that speaks TLS from the first byte (usually 993).
    #[error("`{host}:{port}` waits for a TLS handshake instead of sending an IMAP greeting")]
    TlsPort { host: String, port: u16 },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("cannot read ca-file `{}`: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("server `{0}` does not offer STARTTLS; refusing to send credentials in plain text")]
    NoStartTls(String),
    #[error("server `{0}` sent PREAUTH; refusing a session that skipped authentication")]
    Preauth(String),
    #[error(
        "server `{0}` sent data after its STARTTLS reply; refusing (possible injection attack)"
    )]
    StartTlsInjection(String),
    #[error("login as `{user}` refused: {text}")]
    Auth { user: String, text: String },
    #[error("the server refused the OAuth2 access token for `{user}` ({mechanism}): {text}{}", if detail.is_empty() { String::new() } else { format!(" [{detail}]") })]
    TokenRefused {
        user: String,
        mechanism: &'static str,
        /// The server's decoded SASL error challenge.
        detail: String,
        text: String,
    },
    #[error("server `{host}` offers neither OAUTHBEARER nor XOAUTH2")]
    NoOAuth2 { host: String },
    #[error("timed out after {secs} s waiting for the server ({what})")]
    Timeout { what: String, secs: u64 },
    #[error("server refused `{command}`: {text}")]
    No { command: String, text: String },
    #[error("server rejected `{command}` as bad: {text}")]
    Bad { command: String, text: String },
    #[error("server closed the connection: {0}")]
    Bye(String),
    #[error("connection lost")]
    ConnectionLost,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// A failure of the engine's side handed through (a message sink that
    /// stopped); converted back unchanged.
    #[error(transparent)]
    Engine(RemoteError),
}

impl From<RemoteError> for ImapError {
    fn from(e: RemoteError) -> ImapError {
        ImapError::Engine(e)
    }
}

/// What the engine sees of an IMAP failure: its kind, the server's text
/// for NO, BAD and BYE, and the hint for the account's error line.
impl From<ImapError> for RemoteError {
    fn from(e: ImapError) -> RemoteError {
        use ErrorKind as K;
        let (kind, hint): (ErrorKind, Option<Cow<'static, str>>) = match &e {
            ImapError::Engine(inner) => return inner.clone(),
            ImapError::Connect { .. } => (
                K::Unreachable,
                Some("check `host` and `port`, and that the server is reachable".into()),
            ),
            ImapError::Timeout { .. } => (
                K::Timeout,
                Some("check `host` and `port`, and that the server is reachable".into()),
            ),
            // The fingerprint is in the reason only when the certificate
            // was refused; other handshake failures get the default hint.
            ImapError::Handshake { reason, .. } => (
                K::Tls,
                if reason.contains("server certificate sha256:") {
                    Some("if you trust this server's certificate, set `ca-file` to its CA, or `cert-fingerprint` to the sha256 value above".into())
                } else if reason.contains("does not match the pinned") {
                    Some("if the server's certificate changed on purpose, set `cert-fingerprint` to the new value above".into())
                } else {
                    None
                },
            ),
            ImapError::PlainGreeting { port, .. } => (
                K::Tls,
                Some(format!("port {port} speaks plain IMAP/STARTTLS: set `tls = \"starttls\"` or use port 993").into()),
            ),
            ImapError::TlsPort { port, .. } => (
                K::Tls,
                Some(format!("port {port} speaks implicit TLS: set `tls = \"implicit\"` or use port 143 for STARTTLS").into()),
            ),
            ImapError::Tls(_) | ImapError::CaFile { .. } => (K::Tls, None),
            ImapError::NoStartTls(_) => (
                K::Insecure,
                Some("use `tls = \"implicit\"` (port 993) if the server offers it".into()),
            ),
            ImapError::Preauth(_) | ImapError::StartTlsInjection(_) => (K::Insecure, None),
            ImapError::Auth { .. } => (K::Auth, Some("check `user` and the password source".into())),
            ImapError::TokenRefused { .. } => (
                K::Auth,
                Some("check `user`; sign in again with `imapbak login ACCOUNT`".into()),
            ),
            ImapError::NoOAuth2 { .. } => (
                K::Auth,
                Some("check `host`, or use `auth = \"password\"` with this server".into()),
            ),
            ImapError::No { .. } => (K::Refused, None),
            ImapError::Bad { .. } => (K::Rejected, None),
            ImapError::Bye(_) => (K::Closed, None),
            ImapError::ConnectionLost | ImapError::Protocol(_) | ImapError::Io(_) => {
                (K::Broken, None)
            }
        };
        let mut out = RemoteError::new(kind, e.to_string());
        if let ImapError::No { text, .. } | ImapError::Bad { text, .. } | ImapError::Bye(text) = &e
        {
            out = out.with_server_text(text.clone());
        }
        if let Some(hint) = hint {
            out = out.with_hint(hint);
        }
        out
    }
}

/// Runs a trait method's body, written against [`ImapError`], and hands
/// its failure to the engine as a [`RemoteError`].
pub(crate) async fn lift<T>(
    body: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, RemoteError> {
    body.await.map_err(RemoteError::from)
}

impl ImapError {
    /// True when the connection cannot be used any more.
    pub fn is_connection_level(&self) -> bool {
        match self {
            ImapError::No { .. } | ImapError::Bad { .. } => false,
            ImapError::Engine(e) => e.is_connection_level(),
            _ => true,
        }
    }

    /// True when the failure happened before or during login, so no mailbox
    /// could be touched (the account-level exit code).
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            ImapError::Connect { .. }
                | ImapError::Handshake { .. }
                | ImapError::PlainGreeting { .. }
                | ImapError::TlsPort { .. }
                | ImapError::Tls(_)
                | ImapError::CaFile { .. }
                | ImapError::NoStartTls(_)
                | ImapError::Preauth(_)
                | ImapError::StartTlsInjection(_)
                | ImapError::Auth { .. }
                | ImapError::TokenRefused { .. }
                | ImapError::NoOAuth2 { .. }
        )
    }
}

/// Quotes a string for IMAP (RFC 3501 quoted string). Names with CR, LF or
/// NUL cannot be quoted and come only from hostile servers.
pub fn quote(s: &str) -> Result<String, ImapError> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ImapError::Protocol(format!(
            "mailbox name {s:?} contains a line break or NUL"
        )));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// Formats a sorted list of UIDs as a compact IMAP sequence set.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_set_compresses_runs() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[]), "");
    }

    #[test]
    fn quote_escapes_and_refuses_line_breaks() {
        assert_eq!(quote(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(quote("a\r\nb").is_err());
    }
}
