//! SASL login with an OAuth2 access token: OAUTHBEARER (RFC 7628) when
//! the server offers it, else XOAUTH2 (Google's and Microsoft's), with the
//! token in the AUTHENTICATE line when SASL-IR (RFC 4959) is offered.
//!
//! async-imap's `authenticate` puts its mechanism argument on the command
//! line as given (so `"XOAUTH2 <base64>"` is SASL-IR) and hands every
//! continuation to our [`Authenticator`]; that is all an OAuth2 exchange
//! needs, so no raw I/O here. On a refused token the server sends one more
//! continuation carrying its error as base64 JSON; we keep it for the
//! error message and answer as each mechanism wants (measured on Dovecot
//! 2.3.19, DESIGN.md: XOAUTH2 an empty line, OAUTHBEARER `AQ==`, one
//! 0x01, without which Dovecot waits), then the tagged NO arrives.
//!
//! The token never reaches a log: async-imap's trace of what it sends is
//! filtered out in main.rs, and nothing here logs the lines.

use std::sync::{Arc, Mutex};

use base64::Engine;

use super::ImapError;

/// The SASL mechanisms we can send a bearer token with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// The one we use among the announced capabilities (upper case).
    pub fn choose(caps: &[String]) -> Option<Mechanism> {
        let has = |c: &str| caps.iter().any(|x| x == c);
        if has("AUTH=OAUTHBEARER") {
            Some(Mechanism::OAuthBearer)
        } else if has("AUTH=XOAUTH2") {
            Some(Mechanism::XOAuth2)
        } else {
            None
        }
    }

    /// The client's first message, before base64.
    pub fn initial_response(self, user: &str, host: &str, port: u16, token: &str) -> Vec<u8> {
        match self {
            // RFC 7628 3.1: GS2 header with the authorization identity
            // (Dovecot requires `a=`), then host, port and auth key-values.
            Mechanism::OAuthBearer => format!(
                "n,a={},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01",
                gs2_escape(user)
            )
            .into_bytes(),
            // developers.google.com "OAuth 2.0 Mechanism" (XOAUTH2).
            Mechanism::XOAuth2 => {
                format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
            }
        }
    }

    /// What the client answers to the server's error challenge.
    fn error_answer(self) -> Vec<u8> {
        match self {
            Mechanism::OAuthBearer => vec![0x01],
            Mechanism::XOAuth2 => Vec::new(),
        }
    }
}

/// RFC 5801 saslname: `,` and `=` escaped.
fn gs2_escape(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

struct Bearer {
    mechanism: Mechanism,
    /// Sent at the first (empty) continuation when SASL-IR is not used.
    initial: Option<Vec<u8>>,
    /// The server's error challenge, kept for the message.
    error: Arc<Mutex<Option<Vec<u8>>>>,
}

impl async_imap::Authenticator for Bearer {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if let Some(first) = self.initial.take() {
            return first;
        }
        *self.error.lock().expect("challenge lock") = Some(challenge.to_vec());
        self.mechanism.error_answer()
    }
}

/// The longest base64 initial response put on the AUTHENTICATE line.
const MAX_IR: usize = 7_900;

/// Who to log in as, with which token.
pub struct Login<'a> {
    pub user: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub token: &'a str,
}

/// The tag of CAPABILITY before login (here, and sent before the greeting
/// by session.rs).
pub(crate) const CAPABILITY_TAG: &str = "capq1";

/// The capabilities before login, upper case. Sent raw on the stream
/// like NAMESPACE (async-imap's `Client` has no public way to run a
/// command before login); nothing else is in flight yet.
async fn capabilities<T>(client: &mut async_imap::Client<T>) -> Result<Vec<String>, ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    use tokio::io::AsyncWriteExt;
    const TAG: &str = CAPABILITY_TAG;
    let stream = client.get_mut();
    stream
        .write_all(format!("{TAG} CAPABILITY\r\n").as_bytes())
        .await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let mut caps = Vec::new();
    for _ in 0..64 {
        let line = super::session::read_line(stream, &mut buf).await?;
        let upper = line.trim_end().to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix("* CAPABILITY ") {
            caps.extend(rest.split(' ').map(str::to_string));
        } else if let Some(rest) = upper.strip_prefix(&format!("{} ", TAG.to_ascii_uppercase())) {
            if !rest.starts_with("OK") {
                return Err(ImapError::No {
                    command: "CAPABILITY".into(),
                    text: line.trim_end().to_string(),
                });
            }
            return Ok(caps);
        } else if upper.starts_with("* BYE") {
            return Err(ImapError::Bye(line.trim_end().to_string()));
        }
    }
    Err(ImapError::Protocol("no end to the CAPABILITY reply".into()))
}

/// Logs in with the token; the session, or why not.
/// `caps`: the capabilities before login when already known (implicit TLS
/// asks for them before the greeting, session.rs `Early`).
pub(crate) async fn login<T>(
    mut client: async_imap::Client<T>,
    l: &Login<'_>,
    caps: Option<Vec<String>>,
) -> Result<(async_imap::Session<T>, Mechanism), ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    let caps = match caps {
        Some(caps) => caps,
        None => capabilities(&mut client).await?,
    };
    let mechanism = Mechanism::choose(&caps).ok_or_else(|| ImapError::NoOAuth2 {
        host: l.host.to_string(),
    })?;
    let initial = mechanism.initial_response(l.user, l.host, l.port, l.token);
    let error = Arc::new(Mutex::new(None));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&initial);
    // Dovecot 2.3.19 takes an ~8 KB AUTHENTICATE line and resets the
    // connection at ~9.4 KB (DESIGN.md): a longer response goes after the
    // continuation instead, for servers whose line limit is the tighter
    // one (Dovecot itself refuses SASL responses that large either way:
    // "Authentication response too large").
    let sasl_ir = caps.iter().any(|c| c == "SASL-IR") && b64.len() <= MAX_IR;
    let (command, initial) = if sasl_ir {
        (format!("{} {b64}", mechanism.name()), None)
    } else {
        (mechanism.name().to_string(), Some(initial))
    };
    log::debug!(
        "> AUTHENTICATE {} <token hidden>{}",
        mechanism.name(),
        if sasl_ir { " (SASL-IR)" } else { "" }
    );
    let auth = Bearer {
        mechanism,
        initial,
        error: error.clone(),
    };
    match client.authenticate(&command, auth).await {
        Ok(session) => Ok((session, mechanism)),
        Err((e, _)) => Err(match e {
            async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                ImapError::TokenRefused {
                    user: l.user.to_string(),
                    mechanism: mechanism.name(),
                    detail: describe_challenge(error.lock().expect("challenge lock").as_deref()),
                    text,
                }
            }
            other => super::session::async_to_imap(other),
        }),
    }
}

/// An admin's login on a user's behalf: SASL PLAIN with an authorization
/// identity (RFC 4616), as Dovecot master users and Cyrus admins take it.
pub struct Plain<'a> {
    /// Whose mailboxes (the user).
    pub authzid: &'a str,
    /// Who proves it (the admin).
    pub authcid: &'a str,
    pub password: &'a str,
}

impl Plain<'_> {
    /// `authzid NUL authcid NUL password`.
    fn message(&self) -> Vec<u8> {
        format!("{}\0{}\0{}", self.authzid, self.authcid, self.password).into_bytes()
    }
}

/// Sends the PLAIN message at the first continuation (without SASL-IR).
struct PlainAuth(Option<Vec<u8>>);

impl async_imap::Authenticator for PlainAuth {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        // A second continuation is not part of PLAIN: answer empty, get NO.
        self.0.take().unwrap_or_default()
    }
}

/// Logs in with AUTHENTICATE PLAIN and an authorization identity, the
/// message on the command line when SASL-IR (RFC 4959) is offered. `caps`
/// as for [`login`].
pub(crate) async fn login_plain<T>(
    mut client: async_imap::Client<T>,
    p: &Plain<'_>,
    caps: Option<Vec<String>>,
) -> Result<async_imap::Session<T>, ImapError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug,
{
    let caps = match caps {
        Some(caps) => caps,
        None => capabilities(&mut client).await?,
    };
    let message = p.message();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&message);
    let sasl_ir = caps.iter().any(|c| c == "SASL-IR");
    let (command, initial) = if sasl_ir {
        (format!("PLAIN {b64}"), None)
    } else {
        ("PLAIN".to_string(), Some(message))
    };
    log::debug!(
        "> AUTHENTICATE PLAIN <{} on behalf of {}, password hidden>{}",
        p.authcid,
        p.authzid,
        if sasl_ir { " (SASL-IR)" } else { "" }
    );
    match client.authenticate(&command, PlainAuth(initial)).await {
        Ok(session) => Ok(session),
        Err((e, _)) => Err(match e {
            async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                ImapError::Auth {
                    user: format!("{} (as admin `{}`)", p.authzid, p.authcid),
                    text: super::session::server_text(&text),
                }
            }
            other => super::session::async_to_imap(other),
        }),
    }
}

/// The server's error challenge as one line: its JSON (RFC 7628 3.2.2:
/// `status`, `scope`, `schemes`) compacted, or nothing.
fn describe_challenge(challenge: Option<&[u8]>) -> String {
    let Some(bytes) = challenge.filter(|b| !b.is_empty()) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => text.chars().filter(|c| !c.is_control()).take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauthbearer_is_preferred_over_xoauth2() {
        let caps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Mechanism::choose(&caps(&["AUTH=XOAUTH2", "AUTH=OAUTHBEARER"])),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            Mechanism::choose(&caps(&["AUTH=PLAIN", "AUTH=XOAUTH2"])),
            Some(Mechanism::XOAuth2)
        );
        assert_eq!(Mechanism::choose(&caps(&["AUTH=PLAIN"])), None);
    }

    #[test]
    fn initial_responses_follow_the_specs() {
        assert_eq!(
            Mechanism::XOAuth2.initial_response("me@x", "h", 993, "T"),
            b"user=me@x\x01auth=Bearer T\x01\x01"
        );
        assert_eq!(
            Mechanism::OAuthBearer.initial_response("a,b=c", "imap.x", 993, "T"),
            b"n,a=a=2Cb=3Dc,\x01host=imap.x\x01port=993\x01auth=Bearer T\x01\x01"
        );
    }

    #[test]
    fn plain_with_authzid_is_user_nul_admin_nul_password() {
        let p = Plain {
            authzid: "joe",
            authcid: "backup-admin",
            password: "pw",
        };
        assert_eq!(p.message(), b"joe\0backup-admin\0pw");
    }

    #[test]
    fn error_challenges_are_shown_decoded() {
        assert_eq!(
            describe_challenge(Some(
                br#"{"status":"401","schemes":"bearer","scope":"mail"}"#
            )),
            // In the server's order (serde_json's preserve_order).
            "status=401, schemes=bearer, scope=mail"
        );
        assert_eq!(
            describe_challenge(Some(br#"{"status":"invalid_token"}"#)),
            "status=invalid_token"
        );
        assert_eq!(describe_challenge(None), "");
    }

    #[test]
    fn error_continuation_is_answered_per_mechanism() {
        use async_imap::Authenticator;
        let error = Arc::new(Mutex::new(None));
        let mut a = Bearer {
            mechanism: Mechanism::OAuthBearer,
            initial: Some(b"first".to_vec()),
            error: error.clone(),
        };
        assert_eq!(a.process(b""), b"first");
        assert_eq!(a.process(br#"{"status":"invalid_token"}"#), vec![0x01]);
        assert!(error.lock().unwrap().is_some());
        let mut x = Bearer {
            mechanism: Mechanism::XOAuth2,
            initial: None,
            error,
        };
        assert_eq!(x.process(b"{}"), Vec::<u8>::new());
    }
}
