//! Handing out access tokens for one account: from the token command each
//! time, or from the token store, refreshing when the stored access token
//! is expired or close to it. A rotated refresh token is saved before the
//! new access token is used, so a crash between the two loses nothing.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::flow::{self, FlowError, Granted};
use super::store::{self, Stored};
use super::{Builtin, Flow, OAuth2, TokenSource};
use crate::config::PasswordSource;

/// Refresh when the access token has less than this left.
const MARGIN: Duration = Duration::from_secs(60);

/// A failure to get a token: a message and what to do, no secret in either.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    pub message: String,
    pub hint: String,
}

/// An access token, with what `check` reports about it. `Debug` hides it.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: String,
    /// Unix seconds; `None` when unknown (token command).
    pub expires_at: Option<i64>,
    /// Just obtained from the token endpoint (refreshing again is useless).
    pub fresh: bool,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AccessToken(<hidden>, expires_at: {:?})",
            self.expires_at
        )
    }
}

/// One account's token source, shared by all its connections.
pub struct TokenProvider {
    account: String,
    /// The mailbox (`user`): the JWT's `sub` for a service account.
    user: String,
    source: TokenSource,
    store_path: PathBuf,
    /// What is known now (loaded from the store on first use).
    state: Mutex<Option<Stored>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TokenProvider {
    pub fn new(account: &str, user: &str, o: &OAuth2) -> Result<TokenProvider, TokenError> {
        let store_path = store::path_for(account).map_err(|e| TokenError {
            message: format!("{e:#}"),
            hint: "set XDG_STATE_HOME".into(),
        })?;
        Ok(TokenProvider {
            account: account.to_string(),
            user: user.to_string(),
            source: o.source.clone(),
            store_path,
            state: Mutex::new(None),
        })
    }

    fn login_hint(&self) -> String {
        format!("run `imapbak login {}`", self.account)
    }

    /// A usable access token. `force` skips a cached one (after the
    /// server refused it).
    pub fn access_token(&self, force: bool) -> Result<AccessToken, TokenError> {
        match &self.source {
            TokenSource::Command(cmd) => {
                let secret = PasswordSource::Command(cmd.clone())
                    .read("oauth2-token")
                    .map_err(|e| {
                        let text = format!("{e:#}");
                        let (message, hint) = match text.split_once("\nhint: ") {
                            Some((m, h)) => (m.to_string(), h.to_string()),
                            None => (text, "run it by hand to see why".to_string()),
                        };
                        TokenError { message, hint }
                    })?;
                Ok(AccessToken {
                    secret,
                    expires_at: None,
                    fresh: true,
                })
            }
            TokenSource::Builtin(b) => self.builtin(b, force),
        }
    }

    fn builtin(&self, b: &Builtin, force: bool) -> Result<AccessToken, TokenError> {
        let mut state = self.state.lock().expect("token state lock");
        if state.is_none() && matches!(b.flow, Flow::AuthCode | Flow::Device) {
            *state = Some(
                store::load(&self.store_path)
                    .map_err(|e| {
                        let text = format!("{e:#}");
                        TokenError {
                            message: text.split("\nhint:").next().unwrap_or("").to_string(),
                            hint: self.login_hint(),
                        }
                    })?
                    .ok_or_else(|| TokenError {
                        message: format!(
                            "no stored OAuth2 token for account `{}` (`{}`)",
                            self.account,
                            self.store_path.display()
                        ),
                        hint: format!("{} once to sign in", self.login_hint()),
                    })?,
            );
        }
        let current = state.clone().unwrap_or_default();
        if !force {
            if let (Some(t), Some(exp)) = (&current.access_token, current.expires_at) {
                if exp - now() > MARGIN.as_secs() as i64 {
                    return Ok(AccessToken {
                        secret: t.clone(),
                        expires_at: Some(exp),
                        fresh: false,
                    });
                }
            }
        }
        let secret = match &b.client_secret {
            Some(s) => Some(s.read("oauth2-client-secret").map_err(|e| {
                let text = format!("{e:#}");
                TokenError {
                    message: text.split("\nhint:").next().unwrap_or("").to_string(),
                    hint: "check `oauth2-client-secret-command` / `-env`".into(),
                }
            })?),
            None => None,
        };
        let granted = match b.flow {
            Flow::AuthCode | Flow::Device => {
                let refresh = current.refresh_token.clone().ok_or_else(|| TokenError {
                    message: format!(
                        "the stored token of account `{}` has no refresh token",
                        self.account
                    ),
                    hint: self.login_hint(),
                })?;
                log::debug!("refreshing the access token of `{}`", self.account);
                flow::refresh(b, secret, &refresh).map_err(|e| self.flow_error(e))?
            }
            Flow::ClientCredentials => {
                flow::client_credentials(b, secret).map_err(|e| self.flow_error(e))?
            }
            Flow::ServiceAccount => {
                let key = b.service_account_key.as_deref().ok_or_else(|| TokenError {
                    message: "no `oauth2-service-account-key`".into(),
                    hint: "set it to the service account's JSON key file".into(),
                })?;
                flow::service_account(b, key, &self.user).map_err(|e| self.flow_error(e))?
            }
        };
        let stored = self.merge(b, &current, &granted);
        if matches!(b.flow, Flow::AuthCode | Flow::Device) {
            // Before the token is used: a rotated refresh token is the
            // only one that works from now on.
            store::save(&self.store_path, &stored).map_err(|e| TokenError {
                message: format!("cannot save the refreshed token: {e:#}"),
                hint: format!(
                    "check the permissions of `{}`",
                    self.store_path
                        .parent()
                        .unwrap_or(&self.store_path)
                        .display()
                ),
            })?;
        }
        let token = AccessToken {
            secret: granted.access_token,
            expires_at: stored.expires_at,
            fresh: true,
        };
        *state = Some(stored);
        Ok(token)
    }

    fn merge(&self, b: &Builtin, current: &Stored, g: &Granted) -> Stored {
        Stored {
            refresh_token: g
                .refresh_token
                .clone()
                .or_else(|| current.refresh_token.clone()),
            access_token: Some(g.access_token.clone()),
            expires_at: g.expires_in.map(|d| now() + d.as_secs() as i64),
            flow: Some(b.flow.name().to_string()),
        }
    }

    fn flow_error(&self, e: FlowError) -> TokenError {
        let hint = match &e {
            FlowError::InvalidGrant { .. } => format!(
                "{} (refresh tokens die when revoked, after 90 days unused at Microsoft, and after 7 days for a Google app in testing status)",
                self.login_hint()
            ),
            FlowError::Unreachable { .. } => {
                "check the network and `oauth2-token-url`; the run can be repeated".into()
            }
            FlowError::Garbage { .. } => "check `oauth2-token-url`".into(),
            FlowError::Server { code, .. } if code == "invalid_client" => {
                "check `oauth2-client-id` and the client secret".into()
            }
            _ => self.login_hint(),
        };
        TokenError {
            message: e.to_string(),
            hint,
        }
    }

    /// Runs `imapbak login`'s flow and stores what it got.
    pub fn login(
        &self,
        device: bool,
        prompt: &mut dyn flow::Prompt,
        wait: Duration,
    ) -> Result<Stored, TokenError> {
        let TokenSource::Builtin(b) = &self.source else {
            return Err(TokenError {
                message: format!(
                    "account `{}` gets its tokens from `oauth2-token-command`",
                    self.account
                ),
                hint: "sign in with that helper instead".into(),
            });
        };
        let mut b = b.clone();
        if device {
            b.flow = Flow::Device;
        }
        let secret = match &b.client_secret {
            Some(s) => Some(s.read("oauth2-client-secret").map_err(|e| TokenError {
                message: format!("{e:#}"),
                hint: "check `oauth2-client-secret-command` / `-env`".into(),
            })?),
            None => None,
        };
        let granted = match b.flow {
            Flow::AuthCode => flow::auth_code(&b, secret, prompt, wait),
            Flow::Device => {
                if b.device_url.is_none() {
                    return Err(TokenError {
                        message: format!("account `{}` has no `oauth2-device-url`", self.account),
                        hint: "set it (Google does not allow Gmail scopes in the device flow: leave out --device there)".into(),
                    });
                }
                flow::device(&b, secret, prompt, wait)
            }
            Flow::ClientCredentials | Flow::ServiceAccount => {
                return Err(TokenError {
                    message: format!(
                        "account `{}` uses `oauth2-flow = \"{}\"`, which needs no sign-in",
                        self.account,
                        b.flow.name()
                    ),
                    hint: "run `imapbak check` to test it".into(),
                })
            }
        }
        .map_err(|e| TokenError {
            message: e.to_string(),
            hint: "try `imapbak login` again".into(),
        })?;
        if granted.refresh_token.is_none() {
            return Err(TokenError {
                message: "the token endpoint granted no refresh token".into(),
                hint: "add the scope that grants one (`offline_access` at Microsoft) to `oauth2-scopes`".into(),
            });
        }
        let stored = self.merge(&b, &Stored::default(), &granted);
        store::save(&self.store_path, &stored).map_err(|e| TokenError {
            message: format!("{e:#}"),
            hint: "check the permissions of the state directory".into(),
        })?;
        *self.state.lock().expect("token state lock") = Some(stored.clone());
        Ok(stored)
    }

    /// The token file's path.
    pub fn store_path(&self) -> &std::path::Path {
        &self.store_path
    }
}
