//! A small OAuth2 authorization server for the tests, and the private
//! Dovecots that check tokens against it.
//!
//! One HTTP server per test process on 127.0.0.1 serves:
//! - `POST /introspect` (RFC 7662): what Dovecot's `oauth2` passdb asks
//!   with `introspection_mode = post` (the token as the form field `token`),
//!   answered `{"active":true,"username":...}` for a live access token;
//! - `GET /authorize` (RFC 6749 4.1.1 with PKCE, RFC 7636): redirects at
//!   once (the user "approves") to `redirect_uri?code=..&state=..`;
//! - `POST /token`: `authorization_code` (checks the S256 `code_verifier`),
//!   `refresh_token` (rotates: every refresh issues a new refresh token and
//!   kills the old one, as Microsoft does, PROVIDERS.md), device code
//!   (RFC 8628 3.5: `authorization_pending` until approved, one `slow_down`
//!   first), `client_credentials` (HTTP Basic client authentication, RFC
//!   6749 2.3.1); errors are RFC 6749 5.2 JSON (`invalid_grant`);
//! - `POST /device` (RFC 8628 3.2) and `GET /approve?user_code=..` (the
//!   test approving on the "other device").
//!
//! Each test registers its own client ([`AuthServer::client`]), bound to
//! one Dovecot user; tokens are random, and every secret ever issued is
//! remembered so tests can check none of them leaked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{Dovecot, SEP};

/// One registered client.
#[derive(Debug, Clone)]
struct ClientReg {
    user: String,
    secret: Option<String>,
    access_ttl: u64,
    /// A service account's RSA public key (PKCS#1 DER).
    public_key: Option<Vec<u8>>,
}

#[derive(Debug)]
struct AccessInfo {
    user: String,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<String, ClientReg>,
    access: HashMap<String, AccessInfo>,
    /// refresh token -> (client id, alive)
    refresh: HashMap<String, (String, bool)>,
    /// code -> (client id, S256 challenge, redirect_uri)
    codes: HashMap<String, (String, String, String)>,
    /// device code -> (client id, user code, approved, polls)
    devices: HashMap<String, (String, String, bool, u32)>,
    /// Token requests per client id and grant type.
    grants: HashMap<(String, String), u32>,
    /// Every secret handed out (tokens, codes, client secrets).
    secrets: Vec<String>,
    /// Introspection requests answered.
    introspections: u64,
}

pub struct AuthServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    next: AtomicU64,
}

static SERVER: OnceLock<AuthServer> = OnceLock::new();

/// The process-wide authorization server, started on first use.
pub fn auth_server() -> &'static AuthServer {
    SERVER.get_or_init(AuthServer::start)
}

static DOVECOT_OAUTH: OnceLock<Dovecot> = OnceLock::new();
static DOVECOT_XOAUTH2: OnceLock<Dovecot> = OnceLock::new();

/// A private Dovecot that also takes bearer tokens over OAUTHBEARER and
/// XOAUTH2, checked against [`auth_server`]'s introspection endpoint.
pub fn dovecot_oauth() -> &'static Dovecot {
    DOVECOT_OAUTH.get_or_init(|| start_oauth_dovecot("xoauth2 oauthbearer"))
}

/// Like [`dovecot_oauth`] offering XOAUTH2 only (as Microsoft's servers do,
/// PROVIDERS.md "Capabilities seen in real sessions").
pub fn dovecot_xoauth2() -> &'static Dovecot {
    DOVECOT_XOAUTH2.get_or_init(|| start_oauth_dovecot("xoauth2"))
}

fn start_oauth_dovecot(mechanisms: &str) -> Dovecot {
    let url = format!("http://127.0.0.1:{}/introspect", auth_server().port);
    Dovecot::start_env(
        SEP,
        "",
        &[
            ("OAUTH2_INTROSPECT_URL", url),
            ("OAUTH2_MECHANISMS", mechanisms.to_string()),
        ],
    )
}

/// A client registered with the server.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: Option<String>,
}

impl AuthServer {
    fn start() -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the OAuth2 server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        thread::Builder::new()
            .name("oauth-server".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let st = st.clone();
                    thread::spawn(move || {
                        let _ = serve(conn, &st);
                    });
                }
            })
            .expect("spawn the OAuth2 server");
        AuthServer {
            port,
            state,
            next: AtomicU64::new(1),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Registers a client whose tokens log in as `user` and live `ttl`
    /// seconds; `confidential` gives it a secret.
    pub fn client(&self, user: &str, ttl: u64, confidential: bool) -> Client {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("client-{n}-{}", std::process::id());
        let secret = confidential.then(|| random("csecret"));
        let mut st = self.state.lock().unwrap();
        if let Some(s) = &secret {
            st.secrets.push(s.clone());
        }
        st.clients.insert(
            id.clone(),
            ClientReg {
                user: user.to_string(),
                secret: secret.clone(),
                access_ttl: ttl,
                public_key: None,
            },
        );
        Client { id, secret }
    }

    /// A service account with domain-wide delegation for every one of
    /// `users` (one JWT per user, `sub` the user).
    pub fn service_account_for(
        &self,
        users: &[&str],
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, Client) {
        self.service_account(&users.join(" "), dir)
    }

    /// A service account allowed to act for `user`: writes Google's JSON
    /// key file format (`client_email`, `private_key` PKCS#8 PEM) into
    /// `dir` and returns its path and the account as a client.
    pub fn service_account(
        &self,
        user: &str,
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, Client) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let email = format!("backup-{n}@project.iam.gserviceaccount.com");
        let pem = dir.join("sa-key.pem");
        let der = dir.join("sa-pub.der");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&pem)
            .output()
            .unwrap()
            .status
            .success()
            && std::process::Command::new("openssl")
                .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
                .arg(&pem)
                .arg("-out")
                .arg(&der)
                .output()
                .unwrap()
                .status
                .success();
        assert!(ok, "openssl could not make an RSA key");
        let key_pem = std::fs::read_to_string(&pem).unwrap();
        let public = std::fs::read(&der).unwrap();
        std::fs::remove_file(&pem).unwrap();
        std::fs::remove_file(&der).unwrap();
        let file = dir.join("service-account.json");
        std::fs::write(
            &file,
            serde_json::json!({
                "type": "service_account",
                "client_email": email,
                "private_key": key_pem,
                "token_uri": self.url("/token"),
            })
            .to_string(),
        )
        .unwrap();
        let mut st = self.state.lock().unwrap();
        st.clients.insert(
            email.clone(),
            ClientReg {
                user: user.to_string(),
                secret: None,
                access_ttl: 3600,
                public_key: Some(public),
            },
        );
        (
            file,
            Client {
                id: email,
                secret: None,
            },
        )
    }

    /// An access token for `client` issued directly (what a token command
    /// prints).
    pub fn access_token(&self, client: &Client) -> String {
        let mut st = self.state.lock().unwrap();
        issue(&mut st, &client.id, false).0
    }

    /// Like [`AuthServer::access_token`], `len` bytes long (Microsoft's
    /// run to a few KB).
    pub fn long_access_token(&self, client: &Client, len: usize) -> String {
        let mut st = self.state.lock().unwrap();
        let short = issue(&mut st, &client.id, false).0;
        let mut long = short.clone();
        while long.len() < len {
            long.push_str("-pad");
        }
        let info = st.access.remove(&short).unwrap();
        st.access.insert(long.clone(), info);
        st.secrets.push(long.clone());
        long
    }

    /// A refresh token for `client` issued directly (as after a login).
    pub fn refresh_token(&self, client: &Client) -> String {
        let mut st = self.state.lock().unwrap();
        issue(&mut st, &client.id, true).1.unwrap()
    }

    /// True when `refresh` would still be accepted.
    pub fn refresh_alive(&self, refresh: &str) -> bool {
        let st = self.state.lock().unwrap();
        st.refresh.get(refresh).is_some_and(|(_, alive)| *alive)
    }

    /// Kills every refresh token of `client` (a revoked grant).
    pub fn revoke(&self, client: &Client) {
        let mut st = self.state.lock().unwrap();
        for (c, alive) in st.refresh.values_mut() {
            if *c == client.id {
                *alive = false;
            }
        }
    }

    /// Token requests of `client` with `grant_type`.
    pub fn grants(&self, client: &Client, grant_type: &str) -> u32 {
        let st = self.state.lock().unwrap();
        st.grants
            .get(&(client.id.clone(), grant_type.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Approves the device flow waiting with `user_code`.
    pub fn approve(&self, user_code: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let mut found = false;
        for (_, code, approved, _) in st.devices.values_mut() {
            if code == user_code {
                *approved = true;
                found = true;
            }
        }
        found
    }

    /// Every secret issued so far.
    pub fn secrets(&self) -> Vec<String> {
        self.state.lock().unwrap().secrets.clone()
    }

    pub fn introspections(&self) -> u64 {
        self.state.lock().unwrap().introspections
    }
}

fn random(prefix: &str) -> String {
    use sha2::{Digest, Sha256};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = Sha256::digest(format!("{prefix}/{nanos}/{n}/{}", std::process::id()));
    format!("{prefix}{}", &hex::encode(d)[..32])
}

/// Issues an access token (and a refresh token when `with_refresh`).
fn issue(st: &mut State, client: &str, with_refresh: bool) -> (String, Option<String>, u64) {
    let reg = st.clients.get(client).expect("registered client").clone();
    let access = random("at");
    st.access.insert(
        access.clone(),
        AccessInfo {
            user: reg.user.clone(),
            expires: Instant::now() + Duration::from_secs(reg.access_ttl),
        },
    );
    st.secrets.push(access.clone());
    let refresh = with_refresh.then(|| {
        let r = random("rt");
        st.refresh.insert(r.clone(), (client.to_string(), true));
        st.secrets.push(r.clone());
        r
    });
    (access, refresh, reg.access_ttl)
}

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    form: HashMap<String, String>,
}

fn parse_form(s: &str) -> HashMap<String, String> {
    url_decode_pairs(s)
}

fn url_decode_pairs(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), url_decode_pairs(q)),
        None => (target, HashMap::new()),
    };
    Ok(Request {
        method,
        path,
        query,
        headers,
        form: parse_form(&String::from_utf8_lossy(&body)),
    })
}

fn respond(mut stream: &TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn oauth_error(stream: &TcpStream, code: &str, description: &str) {
    respond(
        stream,
        "400 Bad Request",
        "",
        &serde_json::json!({"error": code, "error_description": description}).to_string(),
    );
}

fn token_json(access: &str, refresh: Option<&str>, ttl: u64) -> String {
    let mut v = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
    });
    if let Some(r) = refresh {
        v["refresh_token"] = serde_json::Value::String(r.to_string());
    }
    v.to_string()
}

fn s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The client id from the form or from HTTP Basic authentication, and
/// whether its secret (if it has one) was right.
fn authenticate_client(st: &State, req: &Request) -> Option<(String, bool)> {
    use base64::Engine;
    if let Some(basic) = req
        .headers
        .get("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (id, secret) = text.split_once(':')?;
        let (id, secret) = (decode(id), decode(secret));
        let reg = st.clients.get(&id)?;
        return Some((id, reg.secret.as_deref() == Some(secret.as_str())));
    }
    let id = req.form.get("client_id")?.clone();
    let reg = st.clients.get(&id)?;
    let ok = match &reg.secret {
        None => true,
        Some(s) => req.form.get("client_secret") == Some(s),
    };
    Some((id, ok))
}

fn serve(stream: TcpStream, st: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = read_request(&stream)?;
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/introspect") => {
            let mut st = st.lock().unwrap();
            st.introspections += 1;
            let token = req.form.get("token").cloned().unwrap_or_default();
            let body = match st.access.get(&token) {
                Some(a) if a.expires > Instant::now() => {
                    serde_json::json!({"active": true, "username": a.user})
                }
                _ => serde_json::json!({"active": false}),
            };
            respond(&stream, "200 OK", "", &body.to_string());
        }
        ("GET", "/authorize") => {
            let mut st = st.lock().unwrap();
            let q = &req.query;
            let client = q.get("client_id").cloned().unwrap_or_default();
            let (Some(redirect), Some(state), Some(challenge)) = (
                q.get("redirect_uri"),
                q.get("state"),
                q.get("code_challenge"),
            ) else {
                respond(&stream, "400 Bad Request", "", "{}");
                return Ok(());
            };
            if !st.clients.contains_key(&client)
                || q.get("code_challenge_method").map(String::as_str) != Some("S256")
            {
                respond(&stream, "400 Bad Request", "", "{}");
                return Ok(());
            }
            let code = random("code");
            st.secrets.push(code.clone());
            st.codes
                .insert(code.clone(), (client, challenge.clone(), redirect.clone()));
            let location = format!("{redirect}?code={}&state={}", encode(&code), encode(state));
            respond(
                &stream,
                "302 Found",
                &format!("Location: {location}\r\n"),
                "",
            );
        }
        ("POST", "/device") => {
            let mut st = st.lock().unwrap();
            let Some((client, true)) = authenticate_client(&st, &req) else {
                oauth_error(&stream, "invalid_client", "unknown client or wrong secret");
                return Ok(());
            };
            let device_code = random("dc");
            let user_code = random("UC")[..10].to_string();
            st.secrets.push(device_code.clone());
            st.devices
                .insert(device_code.clone(), (client, user_code.clone(), false, 0));
            let body = serde_json::json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": format!("http://127.0.0.1:{}/activate", stream.local_addr()?.port()),
                "expires_in": 300,
                "interval": 1,
            });
            respond(&stream, "200 OK", "", &body.to_string());
        }
        ("GET", "/approve") => {
            let code = req.query.get("user_code").cloned().unwrap_or_default();
            let mut st = st.lock().unwrap();
            let mut found = false;
            for (_, c, approved, _) in st.devices.values_mut() {
                if *c == code {
                    *approved = true;
                    found = true;
                }
            }
            respond(
                &stream,
                if found { "200 OK" } else { "404 Not Found" },
                "",
                "{}",
            );
        }
        ("POST", "/token") => token(&stream, &req, &mut st.lock().unwrap()),
        _ => respond(&stream, "404 Not Found", "", "{}"),
    }
    Ok(())
}

fn token(stream: &TcpStream, req: &Request, st: &mut State) {
    let grant = req.form.get("grant_type").cloned().unwrap_or_default();
    if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        jwt_bearer(stream, req, st);
        return;
    }
    let Some((client, secret_ok)) = authenticate_client(st, req) else {
        oauth_error(stream, "invalid_client", "unknown client");
        return;
    };
    *st.grants
        .entry((client.clone(), grant.clone()))
        .or_default() += 1;
    if !secret_ok {
        oauth_error(stream, "invalid_client", "wrong client secret");
        return;
    }
    match grant.as_str() {
        "authorization_code" => {
            let code = req.form.get("code").cloned().unwrap_or_default();
            let verifier = req.form.get("code_verifier").cloned().unwrap_or_default();
            match st.codes.remove(&code) {
                Some((c, challenge, redirect))
                    if c == client
                        && s256(&verifier) == challenge
                        && req.form.get("redirect_uri") == Some(&redirect) =>
                {
                    let (a, r, ttl) = issue(st, &client, true);
                    respond(stream, "200 OK", "", &token_json(&a, r.as_deref(), ttl));
                }
                _ => oauth_error(stream, "invalid_grant", "bad code or PKCE verifier"),
            }
        }
        "refresh_token" => {
            let r = req.form.get("refresh_token").cloned().unwrap_or_default();
            match st.refresh.get_mut(&r) {
                Some((c, alive)) if *c == client && *alive => {
                    // Rotation: the old refresh token dies now.
                    *alive = false;
                    let (a, r, ttl) = issue(st, &client, true);
                    respond(stream, "200 OK", "", &token_json(&a, r.as_deref(), ttl));
                }
                _ => oauth_error(
                    stream,
                    "invalid_grant",
                    "The refresh token has expired or was revoked.",
                ),
            }
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            let dc = req.form.get("device_code").cloned().unwrap_or_default();
            let Some((c, _, approved, polls)) = st.devices.get_mut(&dc) else {
                oauth_error(stream, "invalid_grant", "unknown device code");
                return;
            };
            if *c != client {
                oauth_error(stream, "invalid_grant", "wrong client");
                return;
            }
            *polls += 1;
            if *polls == 1 {
                oauth_error(stream, "slow_down", "");
            } else if !*approved {
                oauth_error(stream, "authorization_pending", "");
            } else {
                st.devices.remove(&dc);
                let (a, r, ttl) = issue(st, &client, true);
                respond(stream, "200 OK", "", &token_json(&a, r.as_deref(), ttl));
            }
        }
        "client_credentials" => {
            let (a, _, ttl) = issue(st, &client, false);
            respond(stream, "200 OK", "", &token_json(&a, None, ttl));
        }
        _ => oauth_error(stream, "unsupported_grant_type", &grant),
    }
}

/// RFC 7523 2.1 as Google does it for service accounts ("Using OAuth 2.0
/// for Server to Server Applications": RS256, `iss` the client email,
/// `sub` the user, `aud` the token URL, `scope` space-separated).
fn jwt_bearer(stream: &TcpStream, req: &Request, st: &mut State) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let assertion = req.form.get("assertion").cloned().unwrap_or_default();
    st.secrets.push(assertion.clone());
    let parts: Vec<&str> = assertion.split('.').collect();
    let claims: Option<serde_json::Value> = parts
        .get(1)
        .and_then(|c| b64.decode(c).ok())
        .and_then(|c| serde_json::from_slice(&c).ok());
    let (Some(claims), 3) = (claims, parts.len()) else {
        oauth_error(stream, "invalid_grant", "not a JWT");
        return;
    };
    let iss = claims["iss"].as_str().unwrap_or("").to_string();
    let Some(reg) = st.clients.get(&iss).cloned() else {
        oauth_error(stream, "invalid_client", "unknown service account");
        return;
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    let sig = b64.decode(parts[2]).unwrap_or_default();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        reg.public_key.clone().unwrap_or_default(),
    );
    *st.grants
        .entry((iss.clone(), "jwt-bearer".into()))
        .or_default() += 1;
    if key.verify(signed.as_bytes(), &sig).is_err() {
        oauth_error(stream, "invalid_grant", "Invalid JWT Signature.");
        return;
    }
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    // `reg.user` lists the users delegated to it, space-separated
    // (Google Workspace domain-wide delegation).
    let sub = claims["sub"].as_str().unwrap_or("").to_string();
    if !reg.user.split(' ').any(|u| u == sub)
        || claims["aud"].as_str() != Some(format!("http://127.0.0.1:{port}/token").as_str())
        || claims["scope"].as_str().is_none_or(str::is_empty)
    {
        oauth_error(stream, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.");
        return;
    }
    let (a, _, ttl) = issue(st, &iss, false);
    // The token logs in as the user named in `sub`.
    if let Some(info) = st.access.get_mut(&a) {
        info.user = sub;
    }
    respond(stream, "200 OK", "", &token_json(&a, None, ttl));
}

/// A plain HTTP GET of `url` (http://127.0.0.1 only): status and the
/// `Location` header, as a browser would see them.
pub fn http_get(url: &str) -> (u16, Option<String>, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(hostport).expect("connect for GET");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Location: ").map(str::to_string));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, location, body)
}
