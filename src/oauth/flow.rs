//! The OAuth2 exchanges, done by the `oauth2` crate over `ureq` (blocking,
//! rustls): refresh, authorization code with PKCE and a loopback redirect
//! (RFC 8252), device authorization (RFC 8628), client credentials.
//!
//! Errors name the endpoint and the OAuth2 error code and description the
//! server sent, never a request or response body (a token endpoint's
//! answer holds tokens).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenResponse};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, DeviceAuthorizationUrl,
    EndpointMaybeSet, EndpointNotSet, PkceCodeChallenge, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardDeviceAuthorizationResponse, TokenResponse, TokenUrl,
};

use super::Builtin;

type Client = BasicClient<
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
>;

/// What a token endpoint granted. `Debug` hides the tokens.
#[derive(Clone)]
pub struct Granted {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Granted(<hidden>, expires_in: {:?})", self.expires_in)
    }
}

/// Why an exchange failed, without any secret in it.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The grant (refresh token, code) is no longer valid.
    #[error("the token endpoint `{url}` refused the grant (invalid_grant{})", desc(.description))]
    InvalidGrant {
        url: String,
        description: Option<String>,
    },
    #[error("the token endpoint `{url}` answered `{code}`{}", desc(.description))]
    Server {
        url: String,
        code: String,
        description: Option<String>,
    },
    #[error("cannot reach the token endpoint `{url}`: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the token endpoint `{url}` answered something that is not an OAuth2 token response")]
    Garbage { url: String },
    #[error("{0}")]
    Other(String),
}

fn desc(d: &Option<String>) -> String {
    match d {
        Some(d) if !d.is_empty() => {
            // Keep it to one line; providers put long texts here.
            let line: String = d.lines().next().unwrap_or("").chars().take(300).collect();
            format!(": {line}")
        }
        _ => String::new(),
    }
}

/// A failure of the HTTP client (no body, no secret in it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The HTTP client handed to the oauth2 crate: ureq with no redirects (the
/// oauth2 crate's advice against SSRF) and bounded time. Not the crate's
/// own ureq glue: that turns every 4xx into a transport error, and RFC 6749
/// 5.2 sends `invalid_grant` as a 400 whose JSON body we need.
fn http() -> impl Fn(oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(30))
        .build();
    move |request| send(&agent, request)
}

fn send(
    agent: &ureq::Agent,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, HttpError> {
    use std::io::Read;
    let uri = request.uri().to_string();
    let post = request.method() == oauth2::http::Method::POST;
    let mut req = if post {
        agent.post(&uri)
    } else {
        agent.get(&uri)
    };
    for (name, value) in request.headers() {
        let v = value
            .to_str()
            .map_err(|_| HttpError(format!("invalid `{name}` header value")))?;
        req = req.set(name.as_str(), v);
    }
    let result = if post {
        req.send_bytes(request.body())
    } else {
        req.call()
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(HttpError(t.to_string())),
    };
    let status = response.status();
    let content_type = response.header("content-type").map(str::to_string);
    let mut body = Vec::new();
    response
        .into_reader()
        .take(1 << 20)
        .read_to_end(&mut body)
        .map_err(|e| HttpError(e.to_string()))?;
    let mut b = oauth2::http::Response::builder().status(status);
    if let Some(ct) = content_type {
        b = b.header(oauth2::http::header::CONTENT_TYPE, ct);
    }
    b.body(body).map_err(|e| HttpError(e.to_string()))
}

fn client(b: &Builtin, secret: Option<String>) -> Result<Client, FlowError> {
    let bad = |what: &str, e: oauth2::url::ParseError| FlowError::Other(format!("{what}: {e}"));
    let mut c = BasicClient::new(ClientId::new(b.client_id.clone()))
        .set_auth_uri_option(
            b.auth_url
                .clone()
                .map(AuthUrl::new)
                .transpose()
                .map_err(|e| bad("oauth2-auth-url", e))?,
        )
        .set_device_authorization_url_option(
            b.device_url
                .clone()
                .map(DeviceAuthorizationUrl::new)
                .transpose()
                .map_err(|e| bad("oauth2-device-url", e))?,
        )
        .set_token_uri_option(Some(
            TokenUrl::new(b.token_url.clone()).map_err(|e| bad("oauth2-token-url", e))?,
        ));
    if let Some(s) = secret {
        c = c.set_client_secret(ClientSecret::new(s));
    }
    Ok(c)
}

fn scopes(b: &Builtin) -> Vec<Scope> {
    b.scopes.iter().cloned().map(Scope::new).collect()
}

fn granted(r: BasicTokenResponse) -> Granted {
    Granted {
        access_token: r.access_token().secret().clone(),
        refresh_token: r.refresh_token().map(|t| t.secret().clone()),
        expires_in: r.expires_in(),
    }
}

fn map_err<RE: std::error::Error + 'static>(
    url: &str,
    e: RequestTokenError<RE, BasicErrorResponse>,
) -> FlowError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().as_ref().to_string();
            let description = r.error_description().cloned();
            if code == "invalid_grant" {
                FlowError::InvalidGrant {
                    url: url.to_string(),
                    description,
                }
            } else {
                FlowError::Server {
                    url: url.to_string(),
                    code,
                    description,
                }
            }
        }
        RequestTokenError::Request(e) => FlowError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&e),
        },
        // The body is deliberately not shown: it may hold a token.
        RequestTokenError::Parse(..) => FlowError::Garbage {
            url: url.to_string(),
        },
        RequestTokenError::Other(text) => FlowError::Other(text),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A new access token (and maybe a rotated refresh token) for `refresh`.
pub fn refresh(b: &Builtin, secret: Option<String>, refresh: &str) -> Result<Granted, FlowError> {
    let c = client(b, secret)?;
    let token = RefreshToken::new(refresh.to_string());
    c.exchange_refresh_token(&token)
        .map_err(|e| FlowError::Other(e.to_string()))?
        .add_scopes(scopes(b))
        .request(&http())
        .map(granted)
        .map_err(|e| map_err(&b.token_url, e))
}

/// Client credentials (Microsoft app-only): an access token, no refresh.
pub fn client_credentials(b: &Builtin, secret: Option<String>) -> Result<Granted, FlowError> {
    let c = client(b, secret)?;
    c.exchange_client_credentials()
        .map_err(|e| FlowError::Other(e.to_string()))?
        .add_scopes(scopes(b))
        .request(&http())
        .map(granted)
        .map_err(|e| map_err(&b.token_url, e))
}

/// How `imapbak login` talks to the person signing in.
pub trait Prompt {
    /// Shows the authorization URL (auth-code flow).
    fn open_url(&mut self, url: &str);
    /// Shows where to go and which code to type (device flow).
    fn device_code(&mut self, verification_uri: &str, user_code: &str, complete_uri: Option<&str>);
}

/// The auth-code flow: listen on 127.0.0.1, show the URL, wait for the
/// browser's redirect (at most `wait`), check `state`, exchange the code
/// with the PKCE verifier.
pub fn auth_code(
    b: &Builtin,
    secret: Option<String>,
    prompt: &mut dyn Prompt,
    wait: Duration,
) -> Result<Granted, FlowError> {
    // RFC 8252 7.3: loopback IP literal, any port, chosen at run time.
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| FlowError::Other(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| FlowError::Other(e.to_string()))?
        .port();
    let redirect = format!("http://127.0.0.1:{port}/");
    let c = client(b, secret)?
        .set_redirect_uri(RedirectUrl::new(redirect).map_err(|e| FlowError::Other(e.to_string()))?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = c
        .authorize_url(CsrfToken::new_random)
        .map_err(|e| FlowError::Other(e.to_string()))?
        .add_scopes(scopes(b))
        .set_pkce_challenge(challenge)
        .url();
    prompt.open_url(url.as_str());
    let code = wait_for_redirect(&listener, state.secret(), wait)?;
    c.exchange_code(AuthorizationCode::new(code))
        .map_err(|e| FlowError::Other(e.to_string()))?
        .set_pkce_verifier(verifier)
        .request(&http())
        .map(granted)
        .map_err(|e| map_err(&b.token_url, e))
}

/// Accepts connections until one carries `code` (or `error`) with our
/// `state`; anything else (a favicon request) gets a 404.
fn wait_for_redirect(
    listener: &TcpListener,
    state: &str,
    wait: Duration,
) -> Result<String, FlowError> {
    let deadline = Instant::now() + wait;
    listener
        .set_nonblocking(true)
        .map_err(|e| FlowError::Other(e.to_string()))?;
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(FlowError::Other(format!(
                        "no answer from the browser within {} s",
                        wait.as_secs()
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(FlowError::Other(format!("loopback listener: {e}"))),
        };
        if let Some(result) = handle_redirect(stream, state) {
            return result;
        }
    }
}

/// One request to the loopback listener; `None` when it was not the redirect.
fn handle_redirect(mut stream: TcpStream, state: &str) -> Option<Result<String, FlowError>> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).ok()?;
    let target = line.split(' ').nth(1)?;
    let url = oauth2::url::Url::parse(&format!("http://127.0.0.1{target}")).ok()?;
    let get = |k: &str| {
        url.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    };
    let (code, error, got_state) = (get("code"), get("error"), get("state"));
    if code.is_none() && error.is_none() {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return None;
    }
    let reply = |stream: &mut TcpStream, status: &str, text: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        );
    };
    if got_state.as_deref() != Some(state) {
        reply(
            &mut stream,
            "400 Bad Request",
            "imapbak: the answer does not belong to this sign-in (state differs).\n",
        );
        return Some(Err(FlowError::Other(
            "the browser's answer carried a different `state`; refusing it (possible cross-site request forgery)".into(),
        )));
    }
    if let Some(error) = error {
        let description = get("error_description");
        reply(
            &mut stream,
            "200 OK",
            "imapbak: sign-in refused; see the terminal.\n",
        );
        return Some(Err(FlowError::Server {
            url: "authorization".into(),
            code: error,
            description,
        }));
    }
    reply(
        &mut stream,
        "200 OK",
        "imapbak: signed in. You can close this tab.\n",
    );
    code.map(Ok)
}

/// The device flow: ask for a code, show it, poll the token endpoint at
/// the interval given (the oauth2 crate slows down on `slow_down`).
pub fn device(
    b: &Builtin,
    secret: Option<String>,
    prompt: &mut dyn Prompt,
    wait: Duration,
) -> Result<Granted, FlowError> {
    let c = client(b, secret)?;
    let url = b.device_url.clone().unwrap_or_default();
    let details: StandardDeviceAuthorizationResponse = c
        .exchange_device_code()
        .map_err(|e| FlowError::Other(e.to_string()))?
        .add_scopes(scopes(b))
        .request(&http())
        .map_err(|e| map_err(&url, e))?;
    prompt.device_code(
        details.verification_uri().as_str(),
        details.user_code().secret(),
        details
            .verification_uri_complete()
            .map(|u| u.secret().as_str()),
    );
    c.exchange_device_access_token(&details)
        .map_err(|e| FlowError::Other(e.to_string()))?
        .request(&http(), std::thread::sleep, Some(wait))
        .map(granted)
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => FlowError::Server {
                url: b.token_url.clone(),
                code: r.error().as_ref().to_string(),
                description: r.error_description().cloned(),
            },
            RequestTokenError::Request(e) => FlowError::Unreachable {
                url: b.token_url.clone(),
                reason: error_chain(&e),
            },
            RequestTokenError::Parse(..) => FlowError::Garbage {
                url: b.token_url.clone(),
            },
            RequestTokenError::Other(t) => FlowError::Other(t),
        })
}

/// Google's service account key file (the fields we use).
#[derive(serde::Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
}

/// A JWT bearer assertion (RFC 7523 2.1) for `sub`, signed RS256 with the
/// service account's key, exchanged at the token endpoint (Google
/// Workspace domain-wide delegation). The oauth2 crate has no JWT grant,
/// so this one request is made here.
pub fn service_account(
    b: &Builtin,
    key_file: &std::path::Path,
    sub: &str,
) -> Result<Granted, FlowError> {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let text = std::fs::read_to_string(key_file).map_err(|e| {
        FlowError::Other(format!(
            "cannot read oauth2-service-account-key `{}`: {e}",
            key_file.display()
        ))
    })?;
    let key: ServiceAccountKey = serde_json::from_str(&text).map_err(|e| {
        FlowError::Other(format!(
            "oauth2-service-account-key `{}` is not a service account key file (line {})",
            key_file.display(),
            e.line()
        ))
    })?;
    let der: String = key
        .private_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(der.trim())
        .map_err(|_| FlowError::Other("the service account's private_key is not PEM".into()))?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| {
        FlowError::Other(format!(
            "the service account's private_key is not a PKCS#8 RSA key: {e}"
        ))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({
        "iss": key.client_email,
        "sub": sub,
        "scope": b.scopes.join(" "),
        "aud": b.token_url,
        "iat": now,
        "exp": now + 3600,
    })
    .to_string()
    .as_bytes());
    let signing_input = format!("{header}.{claims}");
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| FlowError::Other("cannot sign the JWT assertion".into()))?;
    let assertion = format!("{signing_input}.{}", b64(&sig));
    let form = oauth2::url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
        .append_pair("assertion", &assertion)
        .finish();
    let request = oauth2::http::Request::builder()
        .method(oauth2::http::Method::POST)
        .uri(b.token_url.as_str())
        .header(
            oauth2::http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(oauth2::http::header::ACCEPT, "application/json")
        .body(form.into_bytes())
        .map_err(|e| FlowError::Other(e.to_string()))?;
    let response = http()(request).map_err(|e| FlowError::Unreachable {
        url: b.token_url.clone(),
        reason: e.to_string(),
    })?;
    let body = response.body();
    if !response.status().is_success() {
        return Err(match serde_json::from_slice::<BasicErrorResponse>(body) {
            Ok(r) => FlowError::Server {
                url: b.token_url.clone(),
                code: r.error().as_ref().to_string(),
                description: r.error_description().cloned(),
            },
            Err(_) => FlowError::Garbage {
                url: b.token_url.clone(),
            },
        });
    }
    serde_json::from_slice::<BasicTokenResponse>(body)
        .map(granted)
        .map_err(|_| FlowError::Garbage {
            url: b.token_url.clone(),
        })
}
