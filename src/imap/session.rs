//! One authenticated IMAP connection, implementing [`Remote`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_imap::imap_proto::{
    AttributeValue, MailboxDatum, NameAttribute, RequestId, Response, ResponseCode, Status,
    StatusAttribute,
};
use chrono::DateTime;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::deflate::Deflate;
use super::guard::Guarded;
use super::probe::{await_greeting, is_plain_imap, FirstBytes};
use super::{quote, uid_set, ImapError};
use crate::config::Compress;
use crate::mutf7;
use crate::sync::remote::{
    AlongWith, Examination, FetchedMessage, GmailMeta, ListedMailbox, MailboxStatus, MessageSink,
    Namespace, Remote, RemoteError, RemoteFlags, Selected, SpecialUse,
};

/// The byte stream under the IMAP session: TLS, optionally wrapped in
/// COMPRESS=DEFLATE (boxed, so both are one session type).
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}
type Stream = Box<dyn Io>;

/// What is needed to open a session.
pub struct ConnectParams<'a> {
    pub host: &'a str,
    pub port: u16,
    pub starttls: bool,
    pub user: &'a str,
    pub password: &'a str,
    /// An OAuth2 access token: log in with SASL OAUTHBEARER or XOAUTH2
    /// (imap/auth.rs) instead of LOGIN, and `password` is unused.
    pub bearer: Option<&'a str>,
    /// An admin logging in on `user`'s behalf with `password`, the admin's:
    /// AUTHENTICATE PLAIN with `user` as authorization identity (RFC 4616).
    pub authcid: Option<&'a str>,
    pub tls: Arc<ClientConfig>,
    pub timeout: Duration,
    /// The largest literal accepted outside a FETCH of known sizes.
    pub max_literal: u64,
    /// COMPRESS=DEFLATE: forced on or off, or decided by the round trip
    /// measured while connecting ([`Compress::wanted`]).
    pub compress: Compress,
}

/// An authenticated session.
pub struct Connection {
    pub(crate) session: async_imap::Session<Stream>,
    pub(crate) caps: HashSet<String>,
    /// The personal namespace (NAMESPACE), when the server announced one.
    pub(crate) namespace: Option<Namespace>,
    /// The reply to a NAMESPACE sent ahead of the first command (see
    /// [`Connection::login_sent`]), once it has come; it then stands in
    /// for `namespace`.
    pub(crate) namespace_reply: Option<Reply>,
    /// A mailbox is selected read-only (EXAMINE): no APPEND into it.
    pub(crate) examined: bool,
    /// The round trip measured while connecting: the wait for the
    /// greeting, or STARTTLS's exchange.
    pub(crate) rtt: Duration,
    /// COMPRESS=DEFLATE is on.
    pub(crate) deflate: bool,
    /// COMPRESS=DEFLATE is to go on once the connection has work.
    pub(crate) deflate_wanted: bool,
    /// `auto` wants deflate on the round trip measured while connecting,
    /// which may be a busy machine's rather than the link's: a NOOP checks
    /// before it goes on.
    pub(crate) deflate_unsure: bool,
    pub(crate) timeout: Duration,
    /// The largest literal the server may announce right now (see guard.rs).
    pub(crate) literal_limit: Arc<AtomicU64>,
    pub(crate) max_literal: u64,
    /// Whether the guard on the raw stream reads IMAP framing (off once
    /// COMPRESS is on; a second guard then sits above the decompressor).
    pub(crate) scanning: Arc<AtomicBool>,
    /// The SASL mechanism of an OAuth2 login (`None`: LOGIN).
    pub(crate) mechanism: Option<&'static str>,
    /// Whatever the caller hands [`Connection::hold`]: dropped with the
    /// connection (a permit of a connection budget shared by many users).
    pub(crate) held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// One response, reduced to what a caller needs once the raw buffer is gone.
pub(crate) enum Step<T> {
    Untagged(T),
    Done(Result<(), ImapError>),
    Other,
}

impl Connection {
    /// Connects, secures the connection, and logs in. Credentials are sent
    /// only over a verified TLS channel.
    pub async fn connect(p: &ConnectParams<'_>) -> Result<Connection, ImapError> {
        let started = std::time::Instant::now();
        let tcp = within(
            p.timeout,
            &format!("connecting to {}:{}", p.host, p.port),
            TcpStream::connect((p.host, p.port)),
        )
        .await?
        .map_err(|source| ImapError::Connect {
            host: p.host.to_string(),
            port: p.port,
            source,
        })?;
        tcp.set_nodelay(true).ok();
        let mut tcp = tcp;
        // The link's round trip, for `compress = "auto"`: STARTTLS's own
        // exchange, or (implicit TLS) the time from the handshake's end to
        // the greeting, which a server sends once it has the client's last
        // handshake message (LOGIN goes with that message, so this is
        // measured while the login is under way, not waited for on its
        // own); see below for the handshakes' share.
        let mut rtt = Duration::MAX;
        // Whether the server keeps commands sent right behind LOGIN (see
        // `keeps_input_across_login`).
        let mut pipelining = false;
        if p.starttls {
            let greeting;
            (rtt, greeting) = within(
                p.timeout,
                "STARTTLS negotiation",
                starttls_preamble(&mut tcp, p),
            )
            .await??;
            pipelining = keeps_input_across_login(&greeting);
        }
        let name = ServerName::try_from(p.host.to_string())
            .map_err(|e| ImapError::Tls(format!("invalid host name `{}`: {e}", p.host)))?;
        let (tcp, first) = FirstBytes::new(tcp);
        let tls = within(
            p.timeout,
            "TLS handshake",
            TlsConnector::from(p.tls.clone()).connect(name, tcp),
        )
        .await?
        .map_err(|e| {
            let first = first.lock().unwrap_or_else(|p| p.into_inner());
            if !p.starttls && is_plain_imap(&first) {
                ImapError::PlainGreeting {
                    host: p.host.to_string(),
                    port: p.port,
                }
            } else {
                ImapError::Handshake {
                    host: p.host.to_string(),
                    reason: e.to_string(),
                }
            }
        })?;

        let handshakes = started.elapsed();
        // One line per connection at -v (tests count them).
        log::info!(
            "connected to {}:{} over TLS (TCP and TLS handshakes {:.1} ms)",
            p.host,
            p.port,
            handshakes.as_secs_f64() * 1000.0
        );
        let literal_limit = Arc::new(AtomicU64::new(p.max_literal));
        let scanning = Arc::new(AtomicBool::new(true));
        let mut stream: Stream =
            Box::new(Guarded::new(tls, literal_limit.clone(), scanning.clone()));
        // Implicit TLS: the certificate is verified, so the first command
        // goes out now, in the flight of the handshake's last message,
        // instead of one round trip later behind the greeting (see `Early`).
        let early = Early::of(p);
        // What was read beyond the greeting (the early command's reply).
        let mut buf = Vec::new();
        if !p.starttls {
            if let Some(line) = early.line(p)? {
                within(p.timeout, "sending the login", async {
                    stream.write_all(line.as_bytes()).await?;
                    stream.flush().await
                })
                .await??;
            }
            let waited = std::time::Instant::now();
            let greeting = within(
                p.timeout,
                "server greeting",
                read_line(&mut stream, &mut buf),
            )
            .await??;
            rtt = waited.elapsed();
            log::debug!("greeting after {:.1} ms", rtt.as_secs_f64() * 1000.0);
            log::debug!("< {}", greeting.trim_end());
            check_greeting(&greeting, p.host)?;
        }
        // The handshakes take two round trips or more on a real link (TCP
        // and TLS 1.3 one each). Taking the smaller of the two measures
        // keeps one wait made long by a busy machine (loopback, server and
        // client on the same cores) from passing for a slow link.
        let rtt = rtt.min(handshakes / 2);
        let pre_login_caps = match early {
            Early::Login => {
                return Connection::login_sent(stream, buf, p, rtt, literal_limit, scanning).await
            }
            Early::Capability => {
                let tags = [super::auth::CAPABILITY_TAG.to_string()];
                let replies = within(
                    p.timeout,
                    "CAPABILITY",
                    read_replies(&mut stream, &mut buf, &tags),
                )
                .await??;
                // Refused or empty: auth.rs asks again.
                let (caps, _) = super::namespace::caps_and_namespace(&replies);
                (!caps.is_empty()).then(|| caps.into_iter().collect::<Vec<_>>())
            }
            Early::None => None,
        };
        let client = async_imap::Client::new(Box::new(LoggedIn::passing(stream, buf)) as Stream);
        if let Some(token) = p.bearer {
            let login = super::auth::Login {
                user: p.user,
                host: p.host,
                port: p.port,
                token,
            };
            let (session, mechanism) = within(
                p.timeout,
                "login",
                unwinding(super::auth::login(client, &login, pre_login_caps)),
            )
            .await???;
            log::info!("logged in with {}", mechanism.name());
            let mut conn = Connection::logged_in(session, p, rtt, literal_limit, scanning).await?;
            conn.mechanism = Some(mechanism.name());
            return Ok(conn);
        }
        if let Some(admin) = p.authcid {
            let plain = super::auth::Plain {
                authzid: p.user,
                authcid: admin,
                password: p.password,
            };
            let session = within(
                p.timeout,
                "login",
                unwinding(super::auth::login_plain(client, &plain, pre_login_caps)),
            )
            .await???;
            log::info!("logged in as `{admin}` on behalf of `{}` (PLAIN)", p.user);
            return Connection::logged_in(session, p, rtt, literal_limit, scanning).await;
        }
        if pipelining && plain_word(p.user) && plain_word(p.password) {
            return Connection::login_in_one_flight(client, p, rtt, literal_limit, scanning).await;
        }
        let session = match within(
            p.timeout,
            "login",
            unwinding(client.login(p.user, p.password)),
        )
        .await??
        {
            Ok(session) => session,
            Err((e, _)) => {
                return Err(match e {
                    async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                        ImapError::Auth {
                            user: p.user.to_string(),
                            text: server_text(&text),
                        }
                    }
                    async_imap::error::Error::Io(e) => ImapError::Io(e),
                    async_imap::error::Error::ConnectionLost => ImapError::ConnectionLost,
                    other => ImapError::Protocol(other.to_string()),
                })
            }
        };
        Connection::logged_in(session, p, rtt, literal_limit, scanning).await
    }

    /// The rest of connecting, after a login through async-imap:
    /// capabilities and the personal namespace in one flight, then
    /// COMPRESS if wanted.
    async fn logged_in(
        session: async_imap::Session<Stream>,
        p: &ConnectParams<'_>,
        rtt: Duration,
        literal_limit: Arc<AtomicU64>,
        scanning: Arc<AtomicBool>,
    ) -> Result<Connection, ImapError> {
        let mut conn = Connection::assemble(session, p, rtt, literal_limit, scanning);
        let (caps, namespace) = conn.capabilities_and_namespace().await?;
        conn.learned(p, caps, namespace);
        Ok(conn)
    }

    /// A logged-in connection that knows nothing of the server yet.
    fn assemble(
        session: async_imap::Session<Stream>,
        p: &ConnectParams<'_>,
        rtt: Duration,
        literal_limit: Arc<AtomicU64>,
        scanning: Arc<AtomicBool>,
    ) -> Connection {
        Connection {
            session,
            namespace: None,
            namespace_reply: None,
            examined: false,
            rtt,
            deflate: false,
            deflate_wanted: false,
            deflate_unsure: false,
            caps: HashSet::new(),
            timeout: p.timeout,
            literal_limit,
            max_literal: p.max_literal,
            scanning,
            mechanism: None,
            held: None,
        }
    }

    /// Takes in what the server said after login: its capabilities and
    /// personal namespace, and so whether COMPRESS is wanted.
    fn learned(
        &mut self,
        p: &ConnectParams<'_>,
        caps: HashSet<String>,
        namespace: Option<Namespace>,
    ) {
        self.deflate_wanted = deflate_wanted(p, self.rtt, &caps);
        self.deflate_unsure = self.deflate_wanted && p.compress == Compress::Auto;
        self.caps = caps;
        self.namespace = namespace;
    }

    /// The rest of a login whose LOGIN went out before the greeting
    /// (implicit TLS, [`Early::Login`]): its reply, then the session.
    /// Commands behind LOGIN are lost on Courier (`keeps_input_across_login`)
    /// and we do not know the server before its greeting, so LOGIN went
    /// alone. Where its reply carries the capabilities (Dovecot, Cyrus;
    /// RFC 9051 6.2.3 lets any server), NAMESPACE goes out ahead of the
    /// connection's first command, in the same flight ([`LoggedIn`]), and
    /// the login is this one round trip; elsewhere (Courier) CAPABILITY
    /// and NAMESPACE follow in one flight, one round trip more.
    async fn login_sent(
        mut stream: Stream,
        mut buf: Vec<u8>,
        p: &ConnectParams<'_>,
        rtt: Duration,
        literal_limit: Arc<AtomicU64>,
        scanning: Arc<AtomicBool>,
    ) -> Result<Connection, ImapError> {
        let login = within(
            p.timeout,
            "login",
            read_replies(&mut stream, &mut buf, &flight_tags(1)),
        )
        .await??;
        let done = login
            .first()
            .map(|(_, done)| done.as_str())
            .ok_or(ImapError::ConnectionLost)?;
        if !super::namespace::tagged_ok(done) {
            return Err(ImapError::Auth {
                user: p.user.to_string(),
                text: done.splitn(3, ' ').nth(2).unwrap_or("").to_string(),
            });
        }
        let (mut caps, _) = super::namespace::caps_and_namespace(&login);
        let mut namespace = None;
        let mut ahead = None;
        if caps.is_empty() {
            let replies = within(p.timeout, "CAPABILITY + NAMESPACE", async {
                send_flight(&mut stream, &["CAPABILITY", "NAMESPACE"]).await?;
                read_replies(&mut stream, &mut buf, &flight_tags(2)).await
            })
            .await??;
            if replies.len() < 2 {
                return Err(ImapError::ConnectionLost);
            }
            (caps, namespace) = super::namespace::caps_and_namespace(&replies);
        } else if caps.contains("NAMESPACE") {
            ahead = Some(Reply::default());
        }
        let mut shim = LoggedIn::new(stream, buf);
        if let Some(reply) = &ahead {
            shim = shim.ahead(NAMESPACE_AHEAD, reply.clone());
        }
        let client = async_imap::Client::new(Box::new(shim) as Stream);
        let session = unwinding(client.login("-", "-"))
            .await?
            .map_err(|(e, _)| async_to_imap(e))?;
        let mut conn = Connection::assemble(session, p, rtt, literal_limit, scanning);
        conn.learned(p, caps, namespace);
        conn.namespace_reply = ahead;
        Ok(conn)
    }

    /// The personal namespace: what NAMESPACE said at login, or in reply
    /// to the one sent ahead of the first command (known once any command
    /// has been answered; every caller lists the mailboxes first).
    pub(crate) fn personal_namespace(&self) -> Option<Namespace> {
        let Some(reply) = &self.namespace_reply else {
            return self.namespace.clone();
        };
        let reply = reply.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert!(
            reply.is_some(),
            "the namespace was asked for before any command was answered"
        );
        let (lines, done) = reply.as_ref()?;
        super::namespace::personal_in(lines, done)
    }

    /// LOGIN, CAPABILITY and NAMESPACE in one flight: the whole login is
    /// one round trip (before, LOGIN and CAPABILITY + NAMESPACE were two).
    /// Commands after a failed LOGIN are refused harmlessly. Done raw,
    /// beside async-imap (NAMESPACE is beyond its parser); [`LoggedIn`]
    /// then hands async-imap the session. COMPRESS waits for the
    /// capabilities (only what is announced is sent) and for work
    /// ([`Connection::compress`]).
    async fn login_in_one_flight(
        client: async_imap::Client<Stream>,
        p: &ConnectParams<'_>,
        rtt: Duration,
        literal_limit: Arc<AtomicU64>,
        scanning: Arc<AtomicBool>,
    ) -> Result<Connection, ImapError> {
        // Nothing but the greeting came before our first command, so
        // async-imap's buffer holds nothing more.
        let mut stream = client.into_inner();
        let login = format!("LOGIN {} {}", quote(p.user)?, quote(p.password)?);
        let commands = [login.as_str(), "CAPABILITY", "NAMESPACE"];
        let replies = within(p.timeout, "login", raw_flight(&mut stream, &commands)).await??;
        let login_done = replies
            .first()
            .map(|(_, done)| done.as_str())
            .ok_or(ImapError::ConnectionLost)?;
        if !super::namespace::tagged_ok(login_done) {
            return Err(ImapError::Auth {
                user: p.user.to_string(),
                text: login_done.splitn(3, ' ').nth(2).unwrap_or("").to_string(),
            });
        }
        if replies.len() < commands.len() {
            return Err(ImapError::ConnectionLost);
        }
        let (caps, namespace) = super::namespace::caps_and_namespace(&replies);
        let client = async_imap::Client::new(Box::new(LoggedIn::new(stream, Vec::new())) as Stream);
        let session = unwinding(client.login("-", "-"))
            .await?
            .map_err(|(e, _)| async_to_imap(e))?;
        let mut conn = Connection::assemble(session, p, rtt, literal_limit, scanning);
        conn.learned(p, caps, namespace);
        Ok(conn)
    }

    /// Turns on COMPRESS=DEFLATE (RFC 4978) if it was wanted at login (the
    /// account's `compress`, the server's capabilities) and is not on yet;
    /// a no-op otherwise. Called once the connection has work
    /// ([`Remote::prepare_for_work`]): a no-change run, all LIST-STATUS,
    /// never pays its round trip. Only while nothing is in flight. Pays on
    /// slow links; on a fast one the server's deflate is the bottleneck
    /// (scripts/bench.sh, README Performance).
    pub async fn compress(&mut self) -> Result<(), ImapError> {
        if self.deflate || !self.deflate_wanted {
            return Ok(());
        }
        if std::mem::take(&mut self.deflate_unsure) {
            // The handshakes and the greeting are slow on a busy machine
            // (TLS is CPU work, and the server shares the cores), while a
            // NOOP's answer is only the link's round trip and a wakeup:
            // one that comes back fast shows a fast link.
            for _ in 0..Compress::AUTO_PROBES {
                let sent = std::time::Instant::now();
                match self.raw_command("NOOP", "NOOP").await {
                    Ok(_) => {}
                    // A server that refuses NOOP (RFC 9051 requires it)
                    // keeps the measure taken while connecting.
                    Err(ImapError::No { .. } | ImapError::Bad { .. }) => break,
                    Err(e) => return Err(e),
                }
                let noop = sent.elapsed();
                if !Compress::Auto.wanted(noop) {
                    log::info!(
                        "COMPRESS=DEFLATE left off: a NOOP came back in {:.1} ms, a fast link (the {:.1} ms while connecting were a busy machine's)",
                        noop.as_secs_f64() * 1000.0,
                        self.rtt.as_secs_f64() * 1000.0
                    );
                    self.deflate_wanted = false;
                    return Ok(());
                }
                if noop >= 2 * Compress::AUTO_RTT {
                    break; // the link's own round trip
                }
            }
        }
        match self.raw_command("COMPRESS DEFLATE", "COMPRESS").await {
            Ok(_) => {}
            // Announced but refused: go on without it.
            Err(ImapError::No { text, .. } | ImapError::Bad { text, .. }) => {
                log::info!("the server refused COMPRESS DEFLATE: {text}");
                self.deflate_wanted = false;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        // From here on the wire carries deflate, not IMAP framing: the guard
        // moves above the decompressor. async-imap's buffer is empty (the
        // exchange went beside it), so the stream under it can be swapped.
        self.scanning.store(false, Ordering::Relaxed);
        let on = Arc::new(AtomicBool::new(true));
        let stream = self.session.get_mut();
        let raw = std::mem::replace(stream, Box::new(std::io::Cursor::new(Vec::new())));
        *stream = Box::new(Guarded::new(
            Deflate::new(raw),
            self.literal_limit.clone(),
            on.clone(),
        ));
        self.scanning = on;
        self.deflate = true;
        log::info!("COMPRESS=DEFLATE on");
        Ok(())
    }

    /// The SASL mechanism of an OAuth2 login; `None` after LOGIN.
    pub fn login_mechanism(&self) -> Option<&'static str> {
        self.mechanism
    }

    /// The round trip measured while connecting (the greeting's wait, or
    /// STARTTLS's exchange).
    pub fn round_trip(&self) -> Duration {
        self.rtt
    }

    /// Whether COMPRESS=DEFLATE is on.
    pub fn compressed(&self) -> bool {
        self.deflate
    }

    /// The capabilities announced after login, sorted.
    pub fn capabilities(&self) -> Vec<String> {
        let mut v: Vec<String> = self.caps.iter().cloned().collect();
        v.sort();
        v
    }

    /// Reads one response and reduces it with `f` while the buffer is alive.
    pub(crate) async fn next<T>(
        &mut self,
        f: impl FnOnce(&Response<'_>) -> T,
    ) -> Result<T, ImapError> {
        let resp = within(
            self.timeout,
            "a server response",
            unwinding(self.session.read_response()),
        )
        .await???
        .ok_or(ImapError::ConnectionLost)?;
        Ok(f(resp.parsed()))
    }

    /// Sends one tagged command (logged at debug level; LOGIN never passes here).
    pub(crate) async fn send(&mut self, command: &str) -> Result<RequestId, ImapError> {
        log::debug!("> {command}");
        // The verb is named only on a timeout: no string per command sent.
        timeout(self.timeout, self.session.run_command(command))
            .await
            .map_err(|_| ImapError::Timeout {
                what: format!("sending {}", verb(command)),
                secs: self.timeout.as_secs(),
            })?
            .map_err(async_to_imap)
    }

    /// Sends `command` and reads until its tagged reply, showing every
    /// untagged response to `on_untagged`.
    pub(crate) async fn run(
        &mut self,
        command: &str,
        mut on_untagged: impl FnMut(&Response<'_>),
    ) -> Result<(), ImapError> {
        let started = std::time::Instant::now();
        let tag = self.send(command).await?;
        let mut untagged = 0usize;
        let result = loop {
            untagged += 1;
            if untagged > MAX_UNTAGGED {
                return Err(ImapError::Protocol(format!(
                    "server sent more than {MAX_UNTAGGED} responses to {}",
                    verb(command)
                )));
            }
            let step = self
                .next(|r| match completion(r, &tag, command) {
                    Some(result) => Step::Done(result),
                    None => {
                        on_untagged(r);
                        Step::<()>::Other
                    }
                })
                .await?;
            match step {
                Step::Done(result) => break result,
                Step::Untagged(()) | Step::Other => {}
            }
        };
        log::info!(
            "{} answered in {} ms ({} responses){}",
            verb(command),
            started.elapsed().as_millis(),
            untagged - 1,
            if result.is_ok() { "" } else { ", refused" }
        );
        result
    }
}

/// `fut`, or [`ImapError::Timeout`] naming `what` once `limit` has passed.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, ImapError> {
    timeout(limit, fut).await.map_err(|_| ImapError::Timeout {
        what: what.into(),
        secs: limit.as_secs(),
    })
}

/// Whether COMPRESS=DEFLATE is to go on once there is work: the account
/// wants it for this round trip, and the server announced it.
fn deflate_wanted(p: &ConnectParams<'_>, rtt: Duration, caps: &HashSet<String>) -> bool {
    let wanted = p.compress.wanted(rtt) && caps.contains("COMPRESS=DEFLATE");
    if wanted {
        log::info!(
            "COMPRESS=DEFLATE wanted (round trip {:.1} ms, compress = {:?})",
            rtt.as_secs_f64() * 1000.0,
            p.compress
        );
    }
    wanted
}

/// Whether commands may follow LOGIN in the same flight: only for servers
/// known to keep them, named by their greeting. Courier-IMAP's imaplogin
/// reads them into its buffer and then execs imapd, which never sees them,
/// so the session hangs until the timeout (found with the Courier 5 of the
/// interop tests); a server we do not know might do the same, and a
/// backup that hangs on every run is far worse than one round trip more.
/// Dovecot hands its login process's buffer to the mail process (greeting
/// `Dovecot ready.`, `Dovecot (Debian) ready.`); Cyrus is one process
/// (`... Cyrus IMAP 3.6.1 server ready`); Gmail answers pipelined commands
/// (`Gimap ready for requests from ...`). Any other server logs in through
/// async-imap, one round trip more. Only STARTTLS asks: with implicit TLS,
/// LOGIN goes out before the greeting names the server ([`Early`]), alone.
fn keeps_input_across_login(greeting_text: &str) -> bool {
    let g = greeting_text.to_ascii_lowercase();
    ["dovecot", "cyrus imap", "gimap ready"]
        .iter()
        .any(|known| g.contains(known))
}

/// A user name or password LOGIN can carry as a quoted string: printable
/// ASCII. Anything else logs in through async-imap, which knows literals.
fn plain_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The command implicit TLS sends before the server's greeting has come:
/// the TLS handshake has verified the certificate, so nothing the greeting
/// says could make it unsafe to send, and bytes written before the greeting
/// wait in the server's socket buffer (RFC 9051 5.5 lets a client send
/// without waiting; Dovecot, Cyrus and Courier all take it: the interop
/// tests). One command alone: what is pipelined behind LOGIN is lost on
/// some servers (`keeps_input_across_login`). The greeting is checked when
/// it comes: PREAUTH or BYE still fail the connection. STARTTLS waits for
/// the greeting, as it must: credentials go only over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// LOGIN with the password (quoted strings only; a literal needs the
    /// server's go-ahead).
    Login,
    /// CAPABILITY, which a SASL login (OAuth2, an admin's PLAIN) needs to
    /// choose its mechanism.
    Capability,
    /// Nothing: STARTTLS, or a password LOGIN can only send as a literal.
    None,
}

impl Early {
    fn of(p: &ConnectParams<'_>) -> Early {
        if p.starttls {
            Early::None
        } else if p.bearer.is_some() || p.authcid.is_some() {
            Early::Capability
        } else if plain_word(p.user) && plain_word(p.password) {
            Early::Login
        } else {
            Early::None
        }
    }

    /// The line to send (tag `rx0`; the password is not logged).
    fn line(self, p: &ConnectParams<'_>) -> Result<Option<String>, ImapError> {
        Ok(match self {
            Early::Login => {
                log::debug!("> rx0 LOGIN ...");
                Some(format!(
                    "rx0 LOGIN {} {}\r\n",
                    quote(p.user)?,
                    quote(p.password)?
                ))
            }
            Early::Capability => {
                let tag = super::auth::CAPABILITY_TAG;
                log::debug!("> {tag} CAPABILITY");
                Some(format!("{tag} CAPABILITY\r\n"))
            }
            Early::None => None,
        })
    }
}

/// An implicit-TLS greeting: `* OK` goes on; PREAUTH (someone else's
/// session, or a login we did not ask for) and BYE end the connection.
fn check_greeting(greeting: &str, host: &str) -> Result<(), ImapError> {
    let line = greeting.trim_end();
    let upper = line.to_ascii_uppercase();
    if upper.starts_with("* OK") {
        Ok(())
    } else if upper.starts_with("* PREAUTH") {
        Err(ImapError::Preauth(host.to_string()))
    } else if upper.starts_with("* BYE") {
        Err(ImapError::Bye(line.to_string()))
    } else {
        Err(ImapError::Protocol(format!("unexpected greeting {line:?}")))
    }
}

/// Sends `commands` in one flight (tags `rx0`, `rx1`, ...) and reads their
/// replies ([`read_replies`]).
pub(crate) async fn raw_flight<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    commands: &[&str],
) -> Result<Vec<(Vec<String>, String)>, ImapError> {
    send_flight(stream, commands).await?;
    read_replies(stream, &mut Vec::new(), &flight_tags(commands.len())).await
}

/// The tags of a flight of `n` commands: `rx0`, `rx1`, ...
fn flight_tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("rx{i}")).collect()
}

/// Writes `commands` at once, tagged `rx0`, `rx1`, ...
async fn send_flight<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    commands: &[&str],
) -> Result<(), ImapError> {
    let mut flight = String::new();
    for (i, c) in commands.iter().enumerate() {
        // Never log a password.
        let shown = if c.starts_with("LOGIN ") {
            "LOGIN ..."
        } else {
            c
        };
        log::debug!("> rx{i} {shown}");
        flight.push_str(&format!("rx{i} {c}\r\n"));
    }
    stream.write_all(flight.as_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads the replies to the commands tagged `tags`, in order, line by
/// line, `buf` holding what was read ahead and keeping what follows: per
/// command, the untagged lines before its tagged one, and that line. Stops
/// early when the connection ends after at least one reply (a server may
/// hang up after a failed LOGIN), so the caller sees what was answered.
/// Replies with literals are not supported.
async fn read_replies<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    tags: &[String],
) -> Result<Vec<(Vec<String>, String)>, ImapError> {
    let count = tags.len();
    let mut out = Vec::new();
    let mut untagged = Vec::new();
    for _ in 0..64 * count {
        let line = match read_line(stream, buf).await {
            Ok(line) => line,
            Err(ImapError::ConnectionLost) if !out.is_empty() => return Ok(out),
            Err(e) => return Err(e),
        };
        let line = line.trim_end().to_string();
        log::debug!("< {line}");
        if line
            .strip_prefix(tags[out.len()].as_str())
            .is_some_and(|rest| rest.starts_with(' '))
        {
            out.push((std::mem::take(&mut untagged), line));
            if out.len() == count {
                return Ok(out);
            }
        } else {
            untagged.push(line);
        }
    }
    Err(ImapError::Protocol(
        "no end to the replies of a flight".to_string(),
    ))
}

/// The reply to a command sent ahead ([`LoggedIn::ahead`]): its untagged
/// lines and its tagged line, once the tagged line has come.
pub(crate) type Reply = Arc<std::sync::Mutex<Option<(Vec<String>, String)>>>;

/// The tag and command of the NAMESPACE sent ahead of a connection's
/// first command.
const NAMESPACE_AHEAD: &str = "ns0 NAMESPACE";

/// async-imap hands out a `Session` only from its own LOGIN or
/// AUTHENTICATE, and reads the stream from its start. This sits between it
/// and the server:
/// - after a login done raw ([`LoggedIn::new`]), it stands in for the
///   server for one command: the LOGIN async-imap then writes is not
///   sent, and is answered `OK` from here;
/// - it hands async-imap first what was read ahead of it (a greeting's
///   reader, [`read_replies`], may have read beyond what it needed);
/// - [`LoggedIn::ahead`]: one command (NAMESPACE, which imap-proto cannot
///   parse) goes out in the same write as the first real command, and its
///   reply is taken out of what async-imap reads, into a [`Reply`].
///
/// Every other byte goes straight through.
#[derive(Debug)]
struct LoggedIn<S> {
    inner: S,
    /// The command line async-imap's LOGIN has written so far, while it
    /// is to be answered here.
    swallowing: Option<Vec<u8>>,
    /// Bytes for async-imap before any more from `inner`, and how many it
    /// has read.
    queued: Vec<u8>,
    at: usize,
    /// The command line to put ahead of the first real one.
    ahead: Option<Vec<u8>>,
    /// Bytes accepted from async-imap and not yet written to `inner`.
    out: Vec<u8>,
    out_at: usize,
    /// While the reply to the command sent ahead is still to come.
    filter: Option<Filter>,
}

#[derive(Debug)]
struct Filter {
    /// `TAG ` of the command sent ahead.
    tag: Vec<u8>,
    /// `* VERB `, how its untagged replies begin.
    untagged: String,
    /// Bytes read, not yet a whole line.
    partial: Vec<u8>,
    /// Its untagged lines so far.
    lines: Vec<String>,
    reply: Reply,
}

impl<S> LoggedIn<S> {
    /// After a raw login: answers async-imap's LOGIN, then hands it
    /// `read_ahead`.
    fn new(inner: S, read_ahead: Vec<u8>) -> Self {
        LoggedIn {
            swallowing: Some(Vec::new()),
            ..LoggedIn::passing(inner, read_ahead)
        }
    }

    /// Before any login: hands async-imap `read_ahead`, then the stream.
    fn passing(inner: S, read_ahead: Vec<u8>) -> Self {
        LoggedIn {
            inner,
            swallowing: None,
            queued: read_ahead,
            at: 0,
            ahead: None,
            out: Vec::new(),
            out_at: 0,
            filter: None,
        }
    }

    /// Sends `command` (`TAG VERB ...`) in the flight of the first command
    /// written after the login, and puts its reply into `reply` instead
    /// of handing it to async-imap. Its untagged replies must be one line
    /// each and named like the command (`* NAMESPACE ...`); any other line
    /// before its tagged one passes through.
    fn ahead(mut self, command: &str, reply: Reply) -> Self {
        let (tag, verb) = command.split_once(' ').expect("TAG VERB");
        self.ahead = Some(format!("{command}\r\n").into_bytes());
        self.filter = Some(Filter {
            tag: format!("{tag} ").into_bytes(),
            untagged: format!("* {verb} "),
            partial: Vec::new(),
            lines: Vec::new(),
            reply,
        });
        self
    }
}

impl Filter {
    /// Takes in `data`; whatever is not the reply goes to `pass`. True once
    /// the tagged line has come (what followed it is in `pass` too).
    fn take(&mut self, data: &[u8], pass: &mut Vec<u8>) -> bool {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.partial.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            log::debug!("< {text}");
            if line.starts_with(&self.tag) {
                let lines = std::mem::take(&mut self.lines);
                *self.reply.lock().unwrap_or_else(|p| p.into_inner()) = Some((lines, text));
                pass.append(&mut self.partial);
                return true;
            }
            if text
                .get(..self.untagged.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.untagged))
            {
                self.lines.push(text);
            } else {
                pass.extend_from_slice(&line);
            }
        }
        false
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> LoggedIn<S> {
    /// Writes out what was accepted and not yet written.
    fn poll_out(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = std::task::ready!(
                std::pin::Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..])
            )?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LoggedIn<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.at < this.queued.len() {
                let n = (this.queued.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.queued[this.at..this.at + n]);
                this.at += n;
                if this.at == this.queued.len() {
                    this.queued.clear();
                    this.at = 0;
                }
                return std::task::Poll::Ready(Ok(()));
            }
            // Filter only once the command went out (before, async-imap
            // reads the LOGIN answered here).
            let filtering = this.ahead.is_none() && this.filter.is_some();
            if !filtering {
                return std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 4096];
            let mut read = tokio::io::ReadBuf::new(&mut chunk);
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let filter = this.filter.as_mut().expect("filtering");
            if read.filled().is_empty() {
                // The end of the stream: hand on what there is, then the end.
                this.queued.append(&mut filter.partial);
                this.filter = None;
                if this.queued.is_empty() {
                    return std::task::Poll::Ready(Ok(()));
                }
                continue;
            }
            if filter.take(read.filled(), &mut this.queued) {
                this.filter = None;
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LoggedIn<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if let Some(line) = &mut this.swallowing {
            line.extend_from_slice(data);
            if line.ends_with(b"\r\n") {
                let mut reply = line.split(|b| *b == b' ').next().unwrap_or(b"").to_vec();
                reply.extend_from_slice(b" OK logged in already\r\n");
                // Before anything read ahead: it came after the real LOGIN's reply.
                this.queued.splice(this.at..this.at, reply);
                this.swallowing = None;
            }
            return std::task::Poll::Ready(Ok(data.len()));
        }
        std::task::ready!(this.poll_out(cx))?;
        if let Some(mut ahead) = this.ahead.take() {
            log::debug!("> {}", String::from_utf8_lossy(&ahead).trim_end());
            ahead.extend_from_slice(data);
            this.out = ahead;
            return std::task::Poll::Ready(Ok(data.len()));
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_out(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_out(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Runs a read of async-imap. Its parser (imap-proto) panics on a few
/// malformed inputs (found by fuzzing, e.g. `* 1 FETCH (INTERNALDATE NIL)`);
/// such a panic becomes an error of this connection, which is then dropped,
/// instead of ending the process.
async fn unwinding<F: std::future::Future>(f: F) -> Result<F::Output, ImapError> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|_| {
            ImapError::Protocol("the server sent a response the IMAP parser cannot read".into())
        })
}

/// Responses one command may bring before we call the server hostile.
const MAX_UNTAGGED: usize = 4_000_000;

fn verb(command: &str) -> &str {
    let mut words = command.split(' ');
    match words.next() {
        Some("UID") => command.splitn(3, ' ').take(2).last().unwrap_or("UID"),
        Some(w) => w,
        None => "",
    }
}

/// The end of `command`: its tagged reply, or a BYE (which ends everything).
/// Set when a command completed with Gmail's `OK ... [THROTTLED]`
/// (PROVIDERS.md, "Limits"); the engine takes it through
/// `Remote::take_throttled` and decides what to do.
pub(crate) static THROTTLED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(crate) fn completion(
    r: &Response<'_>,
    tag: &RequestId,
    command: &str,
) -> Option<Result<(), ImapError>> {
    match r {
        Response::Done {
            tag: t,
            status,
            outcome,
        } if t == tag => {
            if outcome
                .information
                .as_deref()
                .is_some_and(|i| i.contains("[THROTTLED]"))
            {
                THROTTLED.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some(done_status(command, status, outcome))
        }
        Response::Data {
            status: Status::Bye,
            outcome,
        } => Some(Err(ImapError::Bye(
            outcome.information.as_deref().unwrap_or("").to_string(),
        ))),
        _ => None,
    }
}

pub(crate) fn done_status(
    command: &str,
    status: &Status,
    outcome: &async_imap::imap_proto::Outcome<'_>,
) -> Result<(), ImapError> {
    let text = outcome.information.as_deref().unwrap_or("").to_string();
    let command = verb(command).to_string();
    match status {
        Status::Ok => Ok(()),
        Status::No => Err(ImapError::No { command, text }),
        Status::Bad => Err(ImapError::Bad { command, text }),
        Status::Bye => Err(ImapError::Bye(text)),
        Status::PreAuth => Err(ImapError::Protocol("tagged PREAUTH".into())),
    }
}

pub(crate) fn async_to_imap(e: async_imap::error::Error) -> ImapError {
    match e {
        async_imap::error::Error::Io(e) => ImapError::Io(e),
        async_imap::error::Error::ConnectionLost => ImapError::ConnectionLost,
        async_imap::error::Error::No(text) => {
            ImapError::Protocol(format!("the server said NO: {}", server_text(&text)))
        }
        async_imap::error::Error::Bad(text) => {
            ImapError::Protocol(format!("the server said BAD: {}", server_text(&text)))
        }
        other => ImapError::Protocol(other.to_string()),
    }
}

/// The server's own words in an async-imap NO or BAD error, which arrives
/// as the Rust debug form of the parsed reply (`code: Some(Alert), info:
/// Some("...")`): the response code in brackets, then the text. Anything
/// not in that form is returned as it is.
pub(crate) fn server_text(async_imap_text: &str) -> String {
    let Some(rest) = async_imap_text.strip_prefix("code: ") else {
        return async_imap_text.to_string();
    };
    let Some((raw_code, raw_info)) = rest.split_once(", info: ") else {
        return async_imap_text.to_string();
    };
    let code = raw_code
        .strip_prefix("Some(")
        .and_then(|c| c.strip_suffix(')'))
        .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric()))
        .map(|c| format!("[{}]", c.to_ascii_uppercase()));
    let info = raw_info
        .strip_prefix("Some(\"")
        .and_then(|i| i.strip_suffix("\")"))
        .map(unescape_debug);
    match (code, info) {
        (Some(c), Some(i)) => format!("{c} {i}"),
        (Some(c), None) => c,
        (None, Some(i)) => i,
        (None, None) if raw_code == "None" && raw_info == "None" => "(no reason given)".into(),
        (None, None) => async_imap_text.to_string(),
    }
}

/// Undoes `{:?}` on a string: `\"`, `\\`, `\n`, `\r`, `\t`, `\0`, `\'`, `\u{..}`.
fn unescape_debug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let hex: String = chars
                    .by_ref()
                    .skip_while(|&c| c == '{')
                    .take_while(|&c| c != '}')
                    .collect();
                out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// The plain-text part of STARTTLS (RFC 3501 6.2.1). Everything read here is
/// discarded; bytes after the tagged OK mean someone injected them.
/// Up to the TLS handshake after STARTTLS; returns how long the STARTTLS
/// exchange took (a round trip) and the greeting.
async fn starttls_preamble(
    tcp: &mut TcpStream,
    p: &ConnectParams<'_>,
) -> Result<(Duration, String), ImapError> {
    let host = p.host;
    await_greeting(tcp, host, p.port, &p.tls).await?;
    let mut buf = Vec::new();
    let greeting = read_line(tcp, &mut buf).await?;
    let upper = greeting.to_ascii_uppercase();
    if upper.starts_with("* PREAUTH") {
        return Err(ImapError::Preauth(host.to_string()));
    }
    if upper.starts_with("* BYE") {
        return Err(ImapError::Bye(greeting.trim_end().to_string()));
    }
    if !upper.starts_with("* OK") {
        return Err(ImapError::Protocol(format!(
            "unexpected greeting {:?}",
            greeting.trim_end()
        )));
    }
    let mut offered = upper.contains("[CAPABILITY") && has_starttls(&upper);
    if !offered {
        tcp.write_all(b"A0 CAPABILITY\r\n").await?;
        loop {
            let line = read_line(tcp, &mut buf).await?.to_ascii_uppercase();
            if line.starts_with("* CAPABILITY") && has_starttls(&line) {
                offered = true;
            }
            if line.starts_with("A0 ") {
                break;
            }
        }
    }
    if !offered {
        return Err(ImapError::NoStartTls(host.to_string()));
    }
    let sent = std::time::Instant::now();
    tcp.write_all(b"A1 STARTTLS\r\n").await?;
    loop {
        let line = read_line(tcp, &mut buf).await?;
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("A1 OK") {
            break;
        }
        if upper.starts_with("A1 ") {
            return Err(ImapError::NoStartTls(host.to_string()));
        }
    }
    let rtt = sent.elapsed();
    if !buf.is_empty() {
        return Err(ImapError::StartTlsInjection(host.to_string()));
    }
    Ok((rtt, greeting))
}

fn has_starttls(line: &str) -> bool {
    line.split([' ', ']']).any(|w| w == "STARTTLS")
}

/// Reads one CRLF-terminated line (at most 64 KiB), keeping any bytes after
/// it in `buf`.
pub(crate) async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    tcp: &mut R,
    buf: &mut Vec<u8>,
) -> Result<String, ImapError> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).collect();
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if buf.len() > 64 * 1024 {
            return Err(ImapError::Protocol("line longer than 64 KiB".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(ImapError::ConnectionLost);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses an IMAP date-time (`DD-Mon-YYYY hh:mm:ss +zzzz`, day maybe space-padded).
pub(crate) fn parse_internaldate(s: &str) -> Option<DateTime<chrono::FixedOffset>> {
    DateTime::parse_from_str(s.trim(), "%d-%b-%Y %H:%M:%S %z").ok()
}

/// A label of X-GM-LABELS as Gmail means it. Gmail sends system labels as
/// quoted strings with the backslash escaped (`"\\Inbox"`), and imap-proto
/// 0.17 hands quoted strings back without undoing escapes (PROVIDERS.md,
/// "Gmail"), so `\\` and `\"` are undone here; user labels are modified
/// UTF-7 (sent as atoms or quoted) and are decoded.
pub(crate) fn gmail_label(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('\\') | Some('"')) {
            out.push(chars.next().expect("peeked"));
        } else {
            out.push(c);
        }
    }
    if out.starts_with('\\') {
        return out;
    }
    mutf7::decode(&out).unwrap_or(out)
}

fn special_use_of(a: &NameAttribute<'_>) -> Option<SpecialUse> {
    Some(match a {
        NameAttribute::All => SpecialUse::All,
        NameAttribute::Archive => SpecialUse::Archive,
        NameAttribute::Drafts => SpecialUse::Drafts,
        NameAttribute::Flagged => SpecialUse::Flagged,
        NameAttribute::Junk => SpecialUse::Junk,
        NameAttribute::Sent => SpecialUse::Sent,
        NameAttribute::Trash => SpecialUse::Trash,
        NameAttribute::Extension(e) if e.eq_ignore_ascii_case("\\Important") => {
            SpecialUse::Important
        }
        _ => return None,
    })
}

fn status_of(attrs: &[StatusAttribute]) -> MailboxStatus {
    let mut st = MailboxStatus::default();
    for a in attrs {
        match a {
            StatusAttribute::UidValidity(v) => st.uidvalidity = *v,
            StatusAttribute::UidNext(v) => st.uidnext = *v,
            StatusAttribute::Messages(v) => st.messages = *v,
            StatusAttribute::HighestModSeq(v) => st.highestmodseq = Some(*v),
            _ => {}
        }
    }
    st
}

impl Connection {
    /// Keeps `token` until the connection is dropped (pull's shared
    /// connection budget: the permit goes back when the connection does).
    pub fn hold(mut self, token: impl std::any::Any + Send + Sync) -> Connection {
        self.held = Some(Box::new(token));
        self
    }
}

impl Remote for Connection {
    fn has_capability(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    async fn prepare_for_work(&mut self) -> Result<(), RemoteError> {
        Ok(self.compress().await?)
    }

    fn namespace(&self) -> Option<Namespace> {
        self.personal_namespace()
    }

    async fn list(&mut self) -> Result<Vec<ListedMailbox>, RemoteError> {
        super::lift(async {
            let condstore = self.has_capability("CONDSTORE");
            let command = if self.has_capability("LIST-STATUS") {
                format!(
                    "LIST \"\" \"*\" RETURN (STATUS (MESSAGES UIDNEXT UIDVALIDITY{}))",
                    if condstore { " HIGHESTMODSEQ" } else { "" }
                )
            } else {
                "LIST \"\" \"*\"".to_string()
            };
            let mut listed: Vec<ListedMailbox> = Vec::new();
            let mut statuses: Vec<(String, MailboxStatus)> = Vec::new();
            let mut bad_names: Vec<String> = Vec::new();
            self.run(&command, |r| match r {
                Response::MailboxData(MailboxDatum::List(data)) => {
                    let raw = data.name.to_string();
                    let selectable = !data.name_attributes.iter().any(|a| {
                        matches!(a, NameAttribute::NoSelect)
                            || matches!(a, NameAttribute::Extension(e) if e.eq_ignore_ascii_case("\\NonExistent"))
                    });
                    let delimiter = data.delimiter.as_deref().and_then(|d| d.chars().next());
                    let name = if raw.eq_ignore_ascii_case("INBOX") {
                        "INBOX".to_string()
                    } else {
                        match mutf7::decode(&raw) {
                            Ok(n) => n,
                            Err(_) => {
                                bad_names.push(raw.clone());
                                raw.clone()
                            }
                        }
                    };
                    let special_use = data.name_attributes.iter().find_map(special_use_of);
                    listed.push(ListedMailbox {
                        raw,
                        name,
                        delimiter,
                        selectable,
                        status: None,
                        special_use,
                    });
                }
                Response::MailboxData(MailboxDatum::Status { mailbox, status }) => {
                    statuses.push((mailbox.to_string(), status_of(status)));
                }
                _ => {}
            })
            .await?;
            for name in bad_names {
                log::warn!("mailbox `{name}` is not valid modified UTF-7; using its name as sent");
            }
            if !self.has_capability("LIST-STATUS") && condstore {
                // Without LIST-STATUS, STATUS still lets an unchanged mailbox be
                // skipped: all of them sent at once, one round trip in all.
                let raws: Vec<String> = listed
                    .iter()
                    .filter(|m| m.selectable)
                    .map(|m| m.raw.clone())
                    .collect();
                statuses = self.status_pipelined(&raws).await?;
            }
            let mut by_raw: HashMap<String, MailboxStatus> = statuses.into_iter().collect();
            for m in &mut listed {
                m.status = by_raw.remove(&m.raw);
            }
            Ok(listed)
        })
        .await
    }

    async fn examine(&mut self, raw: &str) -> Result<Selected, RemoteError> {
        // The same exchange as examine_with, with nothing alongside.
        super::lift(self.examine_pipelined(raw, AlongWith::default()))
            .await
            .map(|e| e.selected)
    }

    async fn examine_with(
        &mut self,
        raw: &str,
        along: AlongWith,
    ) -> Result<Examination, RemoteError> {
        super::lift(self.examine_pipelined(raw, along)).await
    }

    async fn uid_sizes(&mut self, from: u32) -> Result<Vec<(u32, u32)>, RemoteError> {
        super::lift(async {
            let mut out = Vec::new();
            let command = format!("UID FETCH {}:* (UID RFC822.SIZE)", from.max(1));
            self.run(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut uid = None;
                    let mut size = None;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::Rfc822Size(s) => size = Some(*s),
                            _ => {}
                        }
                    }
                    if let (Some(uid), Some(size)) = (uid, size) {
                        // `n:*` returns the last message even when its UID < n.
                        if uid >= from {
                            out.push((uid, size));
                        }
                    }
                }
            })
            .await?;
            out.sort_unstable();
            out.dedup_by_key(|e| e.0);
            Ok(out)
        })
        .await
    }

    fn take_throttled(&mut self) -> bool {
        THROTTLED.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    async fn gmail_meta(
        &mut self,
        changed_since: Option<u64>,
    ) -> Result<Vec<GmailMeta>, RemoteError> {
        super::lift(self.gmail_fetch("1:*", changed_since)).await
    }

    async fn flags(&mut self, changed_since: Option<u64>) -> Result<Vec<RemoteFlags>, RemoteError> {
        super::lift(async {
            let command = match changed_since {
                Some(m) => format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m})"),
                None => "UID FETCH 1:* (UID FLAGS)".to_string(),
            };
            let mut out = Vec::new();
            self.run(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    let mut uid = None;
                    let mut flags = None;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::Flags(f) => {
                                flags = Some(f.iter().map(|s| s.to_string()).collect())
                            }
                            _ => {}
                        }
                    }
                    if let (Some(uid), Some(flags)) = (uid, flags) {
                        out.push(RemoteFlags { uid, flags });
                    }
                }
            })
            .await?;
            Ok(out)
        })
        .await
    }

    async fn fetch<S: MessageSink + Sync>(
        &mut self,
        uids: &[u32],
        max_size: u64,
        sink: &S,
    ) -> Result<Vec<u32>, RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(Vec::new());
            }
            let wanted: HashSet<u32> = uids.iter().copied().collect();
            let mut delivered = Vec::with_capacity(uids.len());
            let command = format!(
                "UID FETCH {} (UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[])",
                uid_set(uids)
            );
            // No literal may be larger than what this batch can hold.
            self.literal_limit
                .store(max_size.min(self.max_literal), Ordering::Relaxed);
            let result = self
                .fetch_loop(&command, &wanted, max_size, sink, &mut delivered)
                .await;
            self.literal_limit
                .store(self.max_literal, Ordering::Relaxed);
            result.map(|()| delivered)
        })
        .await
    }

    async fn still_there(&mut self, uids: &[u32]) -> Result<Vec<u32>, RemoteError> {
        super::lift(async {
            let mut present = Vec::new();
            let command = format!("UID FETCH {} (UID)", uid_set(uids));
            self.run(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    for a in attrs {
                        if let AttributeValue::Uid(u) = a {
                            present.push(*u);
                        }
                    }
                }
            })
            .await?;
            present.retain(|u| uids.contains(u));
            present.sort_unstable();
            present.dedup();
            Ok(present)
        })
        .await
    }

    async fn logout(mut self) {
        // LOGOUT is sent, its answer not awaited: the session ends either
        // way, and on a real link the wait is a whole round trip.
        let _ = timeout(Duration::from_secs(2), self.send("LOGOUT")).await;
        let _ = timeout(Duration::from_secs(2), self.session.get_mut().shutdown()).await;
    }
}

impl Connection {
    /// EXAMINE and the FETCHes `along` asks for, sent at once and answered
    /// in one flight. Responses come back in command order (RFC 3501 5.5:
    /// a server runs the commands of one client in order when they touch
    /// the same mailbox), so what arrives before EXAMINE's tagged reply is
    /// EXAMINE's; the FETCH replies are told apart by what they carry. A
    /// FETCH refused because the mailbox turned out empty is no failure.
    async fn examine_pipelined(
        &mut self,
        raw: &str,
        along: AlongWith,
    ) -> Result<Examination, ImapError> {
        let condstore = self.has_capability("CONDSTORE");
        let examine = format!(
            "EXAMINE {}{}",
            quote(raw)?,
            if condstore { " (CONDSTORE)" } else { "" }
        );
        let flags_cmd = along.flags.map(|since| match since {
            Some(m) if condstore => format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m})"),
            _ => "UID FETCH 1:* (UID FLAGS)".to_string(),
        });
        let from = along.sizes_from.map(|f| f.max(1));
        let sizes_cmd = from.map(|f| format!("UID FETCH {f}:* (UID RFC822.SIZE)"));
        // A failed EXAMINE leaves nothing selected (RFC 3501 6.3.2).
        self.examined = false;
        let mut commands: Vec<(RequestId, &str)> = vec![(self.send(&examine).await?, &examine)];
        for c in flags_cmd.iter().chain(sizes_cmd.iter()) {
            commands.push((self.send(c).await?, c));
        }
        let mut out = Examination::default();
        let mut results: Vec<Option<Result<(), ImapError>>> =
            commands.iter().map(|_| None).collect();
        let mut responses = 0usize;
        while results.iter().any(Option::is_none) {
            responses += 1;
            if responses > MAX_UNTAGGED {
                return Err(ImapError::Protocol(format!(
                    "server sent more than {MAX_UNTAGGED} responses to EXAMINE"
                )));
            }
            let examined = results[0].is_some();
            let sel = &mut out.selected;
            let (flags, sizes) = (&mut out.flags, &mut out.sizes);
            let done = self
                .next(|r| {
                    for (i, (tag, command)) in commands.iter().enumerate() {
                        if let Some(result) = completion(r, tag, command) {
                            let bye = matches!(result, Err(ImapError::Bye(_)));
                            return Some((i, result, bye));
                        }
                    }
                    match r {
                        Response::Data { outcome, .. } if !examined => match outcome.code {
                            Some(ResponseCode::UidValidity(v)) => sel.uidvalidity = v,
                            Some(ResponseCode::UidNext(v)) => sel.uidnext = v,
                            Some(ResponseCode::HighestModSeq(v)) => sel.highestmodseq = Some(v),
                            _ => {}
                        },
                        Response::MailboxData(MailboxDatum::Exists(n)) if !examined => {
                            sel.exists = *n
                        }
                        Response::Fetch(_, attrs) if examined => {
                            let (mut uid, mut size, mut f) = (None, None, None);
                            for a in attrs {
                                match a {
                                    AttributeValue::Uid(u) => uid = Some(*u),
                                    AttributeValue::Rfc822Size(s) => size = Some(*s),
                                    AttributeValue::Flags(v) => {
                                        f = Some(v.iter().map(|s| s.to_string()).collect())
                                    }
                                    _ => {}
                                }
                            }
                            match (uid, size, f) {
                                // `n:*` returns the last message even when its UID < n.
                                (Some(uid), Some(size), _) if from.is_some_and(|f| uid >= f) => {
                                    sizes.push((uid, size))
                                }
                                (Some(uid), None, Some(flags_now)) if along.flags.is_some() => {
                                    flags.push(RemoteFlags {
                                        uid,
                                        flags: flags_now,
                                    })
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                    None
                })
                .await?;
            if let Some((i, result, bye)) = done {
                if bye {
                    return Err(result.expect_err("a BYE is an error"));
                }
                results[i] = Some(result);
            }
        }
        let mut results = results.into_iter().map(|r| r.expect("all answered"));
        results.next().expect("EXAMINE")?;
        if out.selected.uidvalidity == 0 {
            return Err(ImapError::Protocol(format!(
                "server sent no UIDVALIDITY for `{raw}`"
            )));
        }
        self.examined = true;
        for r in results {
            match r {
                Err(ImapError::No { .. } | ImapError::Bad { .. }) if out.selected.exists == 0 => {}
                other => other?,
            }
        }
        out.sizes.sort_unstable();
        out.sizes.dedup_by_key(|e| e.0);
        Ok(out)
    }

    /// STATUS (with HIGHESTMODSEQ) of every mailbox in `raws`, the commands
    /// pipelined. A mailbox the server refuses STATUS for gets none.
    async fn status_pipelined(
        &mut self,
        raws: &[String],
    ) -> Result<Vec<(String, MailboxStatus)>, ImapError> {
        let mut pending = HashSet::new();
        for raw in raws {
            let command = format!(
                "STATUS {} (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
                quote(raw)?
            );
            pending.insert(self.send(&command).await?.0);
        }
        let mut out = Vec::new();
        let mut responses = 0usize;
        while !pending.is_empty() {
            responses += 1;
            if responses > MAX_UNTAGGED {
                return Err(ImapError::Protocol(format!(
                    "server sent more than {MAX_UNTAGGED} responses to STATUS"
                )));
            }
            let step = self
                .next(|r| match r {
                    Response::Done { tag, status, .. } => {
                        Some(Ok((tag.0.clone(), matches!(status, Status::Ok))))
                    }
                    Response::Data {
                        status: Status::Bye,
                        outcome,
                    } => Some(Err(ImapError::Bye(
                        outcome.information.as_deref().unwrap_or("").to_string(),
                    ))),
                    Response::MailboxData(MailboxDatum::Status { mailbox, status }) => {
                        out.push((mailbox.to_string(), status_of(status)));
                        None
                    }
                    _ => None,
                })
                .await?;
            match step {
                Some(Ok((tag, ok))) if pending.remove(&tag) && !ok => {
                    log::debug!("STATUS refused; that mailbox is opened instead");
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) | None => {}
            }
        }
        Ok(out)
    }

    async fn fetch_loop<S: MessageSink + Sync>(
        &mut self,
        command: &str,
        wanted: &HashSet<u32>,
        max_size: u64,
        sink: &S,
        delivered: &mut Vec<u32>,
    ) -> Result<(), ImapError> {
        let tag = self.send(command).await?;
        // Unsolicited responses (flag updates of other sessions) are fine;
        // an endless stream of them is not.
        let mut ignored = 0usize;
        let ignore_limit = 10_000 + 2 * wanted.len();
        loop {
            // Read here, not through `next`: the response buffer is needed
            // whole to move a body out of it without a copy.
            let resp = within(
                self.timeout,
                "a server response",
                unwinding(self.session.read_response()),
            )
            .await???
            .ok_or(ImapError::ConnectionLost)?;
            let step = match (completion(resp.parsed(), &tag, command), resp.parsed()) {
                (Some(result), _) => Step::Done(result),
                (None, Response::Fetch(_, attrs)) => match message_of(attrs, max_size) {
                    Some(Ok((msg, body))) => {
                        let place = place_in(resp.borrow_owner(), body);
                        Step::Untagged(Ok((msg, place)))
                    }
                    Some(Err(e)) => Step::Untagged(Err(e)),
                    None => Step::Other,
                },
                (None, _) => Step::Other,
            };
            match step {
                Step::Done(result) => return result,
                Step::Untagged(Err(e)) => return Err(e),
                Step::Untagged(Ok((mut msg, place)))
                    if wanted.contains(&msg.uid) && !delivered.contains(&msg.uid) =>
                {
                    msg.body = match place {
                        Place::At(range) => take_body(resp.into_owner(), range),
                        Place::Copied(body) => body,
                    };
                    delivered.push(msg.uid);
                    sink.send(msg).await?;
                }
                Step::Untagged(Ok((msg, _))) => {
                    log::warn!(
                        "ignoring a message the server sent unasked (UID {})",
                        msg.uid
                    );
                    ignored += 1;
                }
                Step::Other => ignored += 1,
            }
            if ignored > ignore_limit {
                return Err(ImapError::Protocol(format!(
                    "server sent more than {ignore_limit} unrelated responses during FETCH"
                )));
            }
        }
    }
}

/// Turns a FETCH response into a message (body still empty) and the body's
/// bytes in the response buffer, if it carries a body; unsolicited flag
/// updates carry none and yield `None`.
fn message_of<'a>(
    attrs: &'a [AttributeValue<'_>],
    max_size: u64,
) -> Option<Result<(FetchedMessage, &'a [u8]), ImapError>> {
    let mut uid = None;
    let mut size = None;
    let mut flags = Vec::new();
    let mut date = None;
    let mut body: Option<&[u8]> = None;
    let mut has_body_item = false;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::Rfc822Size(s) => size = Some(*s),
            AttributeValue::Flags(f) => flags = f.iter().map(|s| s.to_string()).collect(),
            AttributeValue::InternalDate(d) => date = Some(d.to_string()),
            AttributeValue::BodySection {
                section: None,
                data,
                ..
            } => {
                has_body_item = true;
                body = data.as_deref();
            }
            _ => {}
        }
    }
    if !has_body_item {
        return None;
    }
    let uid = match uid {
        Some(u) => u,
        None => {
            return Some(Err(ImapError::Protocol(
                "FETCH response without UID".into(),
            )))
        }
    };
    let Some(body) = body else {
        return Some(Err(ImapError::Protocol(format!(
            "server sent no body (NIL) for UID {uid}"
        ))));
    };
    if body.len() as u64 > max_size {
        return Some(Err(ImapError::Protocol(format!(
            "message UID {uid} is {} bytes, over the limit of {max_size}",
            body.len()
        ))));
    }
    let Some(internaldate) = date.as_deref().and_then(parse_internaldate) else {
        return Some(Err(ImapError::Protocol(format!(
            "missing or unreadable INTERNALDATE for UID {uid}"
        ))));
    };
    Some(Ok((
        FetchedMessage {
            uid,
            flags,
            internaldate,
            size: size.unwrap_or(body.len() as u32),
            body: Vec::new(),
        },
        body,
    )))
}

/// Where a body is: inside the response buffer, or (if the parser ever
/// hands back an owned copy) a copy of its own.
enum Place {
    At(std::ops::Range<usize>),
    Copied(Vec<u8>),
}

fn place_in(buf: &[u8], body: &[u8]) -> Place {
    let start = (body.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(body.len()) {
        Some(end) if start <= buf.len() && end <= buf.len() => Place::At(start..end),
        _ => Place::Copied(body.to_vec()),
    }
}

/// The body at `range` of a response buffer, as a `Vec`. A large body moves
/// to the front of the buffer it arrived in (no second allocation, so peak
/// memory stays at one copy of the largest message); a small one is copied,
/// so a buffer that holds many small messages is not kept alive by one.
fn take_body(mut buf: bytes::BytesMut, range: std::ops::Range<usize>) -> Vec<u8> {
    if range.len() < buf.capacity() / 2 {
        return buf[range].to_vec();
    }
    buf.truncate(range.end);
    let body = buf.split_off(range.start);
    drop(buf);
    // Unique owner: `From<BytesMut>` reuses the allocation (memmove, no copy out).
    Vec::from(body)
}

impl Connection {
    /// UID, flags and the X-GM-* items of the messages of `set` in the
    /// selected mailbox (Gmail, X-GM-EXT-1).
    pub(crate) async fn gmail_fetch(
        &mut self,
        set: &str,
        changed_since: Option<u64>,
    ) -> Result<Vec<GmailMeta>, ImapError> {
        {
            let items = "UID FLAGS X-GM-MSGID X-GM-THRID X-GM-LABELS";
            let command = match changed_since {
                Some(m) => format!("UID FETCH {set} ({items}) (CHANGEDSINCE {m})"),
                None => format!("UID FETCH {set} ({items})"),
            };
            let mut out = Vec::new();
            self.run(&command, |r| {
                let Response::Fetch(_, attrs) = r else { return };
                let mut m = GmailMeta::default();
                let (mut uid, mut flags) = (None, None);
                for a in attrs {
                    match a {
                        AttributeValue::Uid(u) => uid = Some(*u),
                        AttributeValue::Flags(f) => {
                            flags = Some(f.iter().map(|s| s.to_string()).collect())
                        }
                        AttributeValue::GmailMsgId(id) => m.msgid = *id,
                        AttributeValue::GmailThrId(id) => m.thrid = *id,
                        AttributeValue::GmailLabels(l) => {
                            m.labels = l.iter().map(|l| gmail_label(l)).collect()
                        }
                        _ => {}
                    }
                }
                // A FETCH without these is an unsolicited update.
                if let (Some(uid), Some(flags), true) = (uid, flags, m.msgid != 0) {
                    m.uid = uid;
                    m.flags = flags;
                    out.push(m);
                }
            })
            .await?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_labels_are_unescaped_and_decoded() {
        assert_eq!(gmail_label(r"\\Inbox"), r"\Inbox");
        assert_eq!(gmail_label(r"\Sent"), r"\Sent");
        assert_eq!(gmail_label("Work/Projects"), "Work/Projects");
        assert_eq!(gmail_label("Entw&APw-rfe"), "Entwürfe");
        assert_eq!(gmail_label(r#"say \"hi\""#), r#"say "hi""#);
    }

    #[test]
    fn internaldate_with_space_padded_day_parses() {
        let d = parse_internaldate(" 1-Feb-2024 10:11:12 +0100").unwrap();
        assert_eq!(d.timestamp(), 1706778672);
    }

    #[test]
    fn only_servers_known_to_keep_commands_behind_login_get_them() {
        assert!(!keeps_input_across_login(
            "Courier-IMAP ready. Copyright 1998-2019 Double Precision, Inc."
        ));
        assert!(keeps_input_across_login("Dovecot ready."));
        assert!(keeps_input_across_login("Dovecot (Debian) ready."));
        assert!(keeps_input_across_login(
            "example.org Cyrus IMAP 3.6.1-Debian-3.6.1-4 server ready"
        ));
        // A server we do not know gets the login of one round trip more.
        assert!(!keeps_input_across_login(""));
        assert!(!keeps_input_across_login(
            "The Microsoft Exchange IMAP4 service is ready."
        ));
    }

    /// The stand-in answers the one LOGIN async-imap writes, sends nothing
    /// of it, and passes everything after it through.
    #[tokio::test]
    async fn logged_in_shim_answers_one_login_then_steps_aside() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let client = async_imap::Client::new(Box::new(LoggedIn::new(ours, Vec::new())) as Stream);
        let mut session = client.login("-", "-").await.map_err(|(e, _)| e).unwrap();
        session.get_mut().write_all(b"A2 NOOP\r\n").await.unwrap();
        session.get_mut().flush().await.unwrap();
        let mut got = vec![0u8; 64];
        let n = theirs.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"A2 NOOP\r\n", "the LOGIN reached the server");
    }

    /// NAMESPACE goes out in the write of the first command after the
    /// login, and its reply, however it is cut into reads, is taken out of
    /// what async-imap sees; what was read ahead comes first.
    #[tokio::test]
    async fn a_command_sent_ahead_goes_with_the_first_and_its_reply_is_kept_apart() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let reply = Reply::default();
        let shim = LoggedIn::new(ours, b"* OK [ALERT] read ahead\r\n".to_vec())
            .ahead(NAMESPACE_AHEAD, reply.clone());
        let client = async_imap::Client::new(Box::new(shim) as Stream);
        let mut session = client.login("-", "-").await.map_err(|(e, _)| e).unwrap();
        let server = tokio::spawn(async move {
            let mut got = vec![0u8; 64];
            let n = theirs.read(&mut got).await.unwrap();
            let sent = String::from_utf8_lossy(&got[..n]).into_owned();
            let tag = sent
                .lines()
                .nth(1)
                .and_then(|l| l.split(' ').next())
                .unwrap()
                .to_string();
            for piece in [
                "* NAMESPACE ((\"INBOX.\" \".\")) N",
                "IL NIL\r\nns0 OK done\r\n* 1 EXI",
                &format!("STS\r\n{tag} OK noop done\r\n"),
            ] {
                theirs.write_all(piece.as_bytes()).await.unwrap();
                theirs.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        });
        session.noop().await.unwrap();
        let sent = server.await.unwrap();
        assert!(sent.starts_with("ns0 NAMESPACE\r\n"), "{sent:?}");
        assert!(sent.ends_with(" NOOP\r\n"), "{sent:?}");
        let (lines, done) = reply.lock().unwrap().clone().expect("the reply came");
        assert_eq!(done, "ns0 OK done");
        assert_eq!(
            super::super::namespace::personal_in(&lines, &done).map(|n| n.prefix),
            Some("INBOX.".to_string())
        );
    }

    #[test]
    fn implicit_tls_greetings_ok_go_on_preauth_and_bye_end() {
        assert!(check_greeting("* OK [CAPABILITY IMAP4rev1] ready\r\n", "h").is_ok());
        assert!(matches!(
            check_greeting("* PREAUTH hi\r\n", "h"),
            Err(ImapError::Preauth(_))
        ));
        assert!(matches!(
            check_greeting("* BYE too many\r\n", "h"),
            Err(ImapError::Bye(_))
        ));
        assert!(check_greeting("HTTP/1.1 400\r\n", "h").is_err());
    }

    #[test]
    fn server_text_is_the_servers_words_not_rust_debug_output() {
        assert_eq!(
            server_text(
                r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#
            ),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
        assert_eq!(
            server_text(r#"code: Some(Alert), info: Some("say \"hi\" \u{e9}")"#),
            "[ALERT] say \"hi\" \u{e9}"
        );
        assert_eq!(server_text("code: None, info: None"), "(no reason given)");
        assert_eq!(server_text("plain words"), "plain words");
    }

    #[test]
    fn verb_names_uid_commands() {
        assert_eq!(verb("UID FETCH 1:* (FLAGS)"), "FETCH");
        assert_eq!(verb("EXAMINE \"x\""), "EXAMINE");
    }
}
