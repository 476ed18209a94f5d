//! Servers for what Dovecot cannot be made to do: a scripted fake IMAP
//! server (hostile replies, PREAUTH, STARTTLS injection, bad certificates)
//! and a fault-injecting TCP proxy in front of the real Dovecot (cut,
//! stall, trickle). Both listen on 127.0.0.1 only and stop with the test.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A test CA and server certificates signed by it (made once per process).
pub struct Certs {
    /// The CA, PEM: what `ca-file` points at.
    pub ca_pem: String,
    /// For 127.0.0.1 and localhost, valid now.
    pub valid: Arc<ServerConfig>,
    /// For 127.0.0.1, expired in 2021.
    pub expired: Arc<ServerConfig>,
    /// Valid, but for another host name only.
    pub wrong_host: Arc<ServerConfig>,
    /// For 127.0.0.1, self-signed (not from the CA).
    pub self_signed: Arc<ServerConfig>,
}

pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "imapbak test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: &[&str], expired: bool, self_signed: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, names[0]);
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = if self_signed {
                p.self_signed(&key).unwrap()
            } else {
                p.signed_by(&key, &ca).unwrap()
            };
            server_config(
                cert.der().clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
        };
        Certs {
            ca_pem: ca.pem(),
            valid: leaf(&["127.0.0.1", "localhost"], false, false),
            expired: leaf(&["127.0.0.1", "localhost"], true, false),
            wrong_host: leaf(&["mail.other.invalid"], false, false),
            self_signed: leaf(&["127.0.0.1", "localhost"], false, true),
        }
    })
}

fn server_config(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------
// The scripted fake server
// ---------------------------------------------------------------------------

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One client connection of the fake server.
pub struct Session {
    stream: BufReader<Box<dyn Stream>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Session {
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.stream.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }

    /// Reads exactly `n` bytes (a literal), then the rest of its line.
    pub fn read_literal(&mut self, n: usize) -> io::Result<(Vec<u8>, String)> {
        let mut b = vec![0; n];
        self.stream.read_exact(&mut b)?;
        let mut rest = Vec::new();
        self.stream.read_until(b'\n', &mut rest)?;
        Ok((b, String::from_utf8_lossy(&rest).trim_end().to_string()))
    }

    /// The next command line, split into (tag, command); None at EOF.
    pub fn read_command(&mut self) -> Option<(String, String)> {
        let mut line = Vec::new();
        match self.stream.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        self.log.lock().unwrap().push(line.clone());
        let (tag, rest) = line.split_once(' ').unwrap_or((&line, ""));
        Some((tag.to_string(), rest.to_string()))
    }
}

/// How the fake server starts a connection.
#[derive(Clone)]
pub enum Greeting {
    /// Implicit TLS with this certificate, then `* OK`.
    Tls(Arc<ServerConfig>),
    /// Implicit TLS, then `* PREAUTH`.
    TlsPreauth(Arc<ServerConfig>),
    /// Plain text; STARTTLS offered or not; `inject` sends extra bytes in
    /// the same segment as the STARTTLS OK.
    StartTls {
        config: Arc<ServerConfig>,
        offer: bool,
        inject: bool,
    },
    /// Plain text `* PREAUTH` (a STARTTLS-stripping attacker).
    PlainPreauth,
    /// STARTTLS done right, but the greeting comes only after this long
    /// (a slow server, not a TLS port).
    SlowStartTls(Arc<ServerConfig>, Duration),
}

/// What a hook did with a command.
pub enum Hook {
    /// Not handled: the standard behaviour answers.
    Pass,
    /// Handled; go on reading commands.
    Done,
    /// Handled; close the connection.
    Close,
}

/// A mailbox the standard behaviour serves.
#[derive(Clone)]
pub struct FakeMailbox {
    /// As sent in LIST (already encoded; sent as a literal when it holds
    /// control characters or quotes).
    pub name: String,
    pub delimiter: String,
    pub messages: Vec<Vec<u8>>,
}

pub type HookFn = dyn Fn(usize, &str, &str, &mut Session) -> Hook + Send + Sync;

pub struct FakeServer {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl FakeServer {
    /// Starts a server on a free loopback port. Each connection gets the
    /// greeting, then `hook(connection index, tag, command, session)` sees
    /// every command first; what it passes gets the standard answers for
    /// `mailboxes` (LOGIN, CAPABILITY, LIST, EXAMINE, UID FETCH, LOGOUT).
    pub fn start(
        greeting: Greeting,
        mailboxes: Vec<FakeMailbox>,
        hook: impl Fn(usize, &str, &str, &mut Session) -> Hook + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let hook: Arc<HookFn> = Arc::new(hook);
        let mailboxes = Arc::new(mailboxes);
        let (log2, stop2) = (log.clone(), stop.clone());
        thread::spawn(move || {
            let count = AtomicUsize::new(0);
            for tcp in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(tcp) = tcp else { continue };
                let n = count.fetch_add(1, Ordering::Relaxed);
                let (greeting, mailboxes, hook, log) = (
                    greeting.clone(),
                    mailboxes.clone(),
                    hook.clone(),
                    log2.clone(),
                );
                thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
                    if let Some(mut s) = open(tcp, &greeting, log) {
                        serve(n, &mut s, &mailboxes, &*hook);
                    }
                });
            }
        });
        FakeServer { port, log, stop }
    }

    /// Every command line received so far, over all connections.
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn saw_login(&self) -> bool {
        self.commands().iter().any(|c| {
            c.split(' ')
                .nth(1)
                .is_some_and(|v| v.eq_ignore_ascii_case("LOGIN"))
        })
    }
}

fn tls_session(
    tcp: TcpStream,
    config: &Arc<ServerConfig>,
    log: Arc<Mutex<Vec<String>>>,
) -> Option<Session> {
    let conn = ServerConnection::new(config.clone()).ok()?;
    let mut stream = StreamOwned::new(conn, tcp);
    // Drive the handshake now so a refused certificate ends here.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).ok()?;
    }
    Some(Session {
        stream: BufReader::new(Box::new(stream)),
        log,
    })
}

fn open(tcp: TcpStream, greeting: &Greeting, log: Arc<Mutex<Vec<String>>>) -> Option<Session> {
    match greeting {
        Greeting::Tls(config) => {
            let mut s = tls_session(tcp, config, log)?;
            s.send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake server ready\r\n")
                .ok()?;
            Some(s)
        }
        Greeting::TlsPreauth(config) => {
            let mut s = tls_session(tcp, config, log)?;
            s.send(b"* PREAUTH [CAPABILITY IMAP4rev1] already logged in\r\n")
                .ok()?;
            Some(s)
        }
        Greeting::SlowStartTls(config, delay) => {
            thread::sleep(*delay);
            let right = Greeting::StartTls {
                config: config.clone(),
                offer: true,
                inject: false,
            };
            open(tcp, &right, log)
        }
        Greeting::PlainPreauth => {
            let mut plain = Session {
                stream: BufReader::new(Box::new(tcp)),
                log,
            };
            plain
                .send(b"* PREAUTH [CAPABILITY IMAP4rev1] welcome\r\n")
                .ok()?;
            Some(plain)
        }
        Greeting::StartTls {
            config,
            offer,
            inject,
        } => {
            let tcp2 = tcp.try_clone().ok()?;
            let mut plain = Session {
                stream: BufReader::new(Box::new(tcp)),
                log: log.clone(),
            };
            let caps = if *offer {
                "IMAP4rev1 STARTTLS LOGINDISABLED"
            } else {
                "IMAP4rev1 AUTH=PLAIN"
            };
            plain.send(b"* OK fake server ready\r\n").ok()?;
            loop {
                let (tag, cmd) = plain.read_command()?;
                let verb = cmd.split(' ').next().unwrap_or("").to_ascii_uppercase();
                match verb.as_str() {
                    "CAPABILITY" => plain
                        .send(format!("* CAPABILITY {caps}\r\n{tag} OK done\r\n").as_bytes())
                        .ok()?,
                    "STARTTLS" if *offer => {
                        let mut reply = format!("{tag} OK begin TLS\r\n").into_bytes();
                        if *inject {
                            reply.extend_from_slice(
                                b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n",
                            );
                        }
                        plain.send(&reply).ok()?;
                        // Reads nothing more in plain text (a real attacker's
                        // bytes are already on their way).
                        return tls_session(tcp2, config, log);
                    }
                    _ => plain
                        .send(format!("{tag} BAD not now\r\n").as_bytes())
                        .ok()?,
                }
            }
        }
    }
}

/// The RFC 3501 quoted or literal form of a mailbox name.
fn astring(name: &str) -> String {
    if name
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
    {
        format!("{{{}}}\r\n{name}", name.len())
    } else {
        format!("\"{name}\"")
    }
}

/// Parses an IMAP sequence set of UIDs against the mailbox size.
pub fn parse_set(set: &str, max: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for part in set.split(',') {
        let val = |s: &str| {
            if s == "*" {
                max
            } else {
                s.parse().unwrap_or(0)
            }
        };
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (val(a), val(b));
                out.extend(a.min(b)..=a.max(b));
            }
            None => out.push(val(part)),
        }
    }
    out
}

pub fn fetch_response(uid: u32, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "* {uid} FETCH (UID {uid} RFC822.SIZE {} FLAGS (\\Seen) INTERNALDATE \"01-Jan-2020 10:00:00 +0000\" BODY[] {{{}}}\r\n",
        body.len(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r.extend_from_slice(b")\r\n");
    r
}

fn serve(n: usize, s: &mut Session, mailboxes: &[FakeMailbox], hook: &HookFn) {
    let mut selected: Option<usize> = None;
    while let Some((tag, cmd)) = s.read_command() {
        match hook(n, &tag, &cmd, s) {
            Hook::Done => continue,
            Hook::Close => return,
            Hook::Pass => {}
        }
        let upper = cmd.to_ascii_uppercase();
        let reply: Vec<u8> = if upper.starts_with("LOGIN ") {
            // No capabilities in the reply (Courier 5 sends none either), so
            // a client asks CAPABILITY, which a test's hook may answer.
            format!("{tag} OK logged in\r\n").into_bytes()
        } else if upper == "CAPABILITY" {
            format!("* CAPABILITY IMAP4rev1 UIDPLUS\r\n{tag} OK done\r\n").into_bytes()
        } else if upper.starts_with("LIST ") {
            let mut r = Vec::new();
            for m in mailboxes {
                r.extend_from_slice(
                    format!("* LIST () \"{}\" {}\r\n", m.delimiter, astring(&m.name)).as_bytes(),
                );
            }
            r.extend_from_slice(format!("{tag} OK listed\r\n").as_bytes());
            r
        } else if upper.starts_with("EXAMINE ") {
            let (arg, condstore) = match cmd[8..].strip_suffix(" (CONDSTORE)") {
                Some(a) => (a, true),
                None => (&cmd[8..], false),
            };
            let arg = arg
                .trim_matches('"')
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
            selected = mailboxes.iter().position(|m| m.name == arg);
            let modseq = if condstore {
                "* OK [HIGHESTMODSEQ 5] ok\r\n"
            } else {
                ""
            };
            match selected {
                Some(i) => format!(
                    "* {} EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT {}] ok\r\n{modseq}{tag} OK [READ-ONLY] examined\r\n",
                    mailboxes[i].messages.len(),
                    mailboxes[i].messages.len() + 1
                )
                .into_bytes(),
                None => format!("{tag} NO no such mailbox\r\n").into_bytes(),
            }
        } else if upper.starts_with("UID FETCH ") {
            let msgs = selected.map(|i| &mailboxes[i].messages[..]).unwrap_or(&[]);
            let set = cmd.split(' ').nth(2).unwrap_or("");
            let uids: Vec<u32> = parse_set(set, msgs.len() as u32)
                .into_iter()
                .filter(|u| *u >= 1 && (*u as usize) <= msgs.len())
                .collect();
            let mut r = Vec::new();
            for uid in uids {
                let body = &msgs[uid as usize - 1];
                if upper.contains("BODY.PEEK[]") {
                    r.extend_from_slice(&fetch_response(uid, body));
                } else if upper.contains("RFC822.SIZE") {
                    r.extend_from_slice(
                        format!("* {uid} FETCH (UID {uid} RFC822.SIZE {})\r\n", body.len())
                            .as_bytes(),
                    );
                } else {
                    r.extend_from_slice(
                        format!("* {uid} FETCH (UID {uid} FLAGS (\\Seen))\r\n").as_bytes(),
                    );
                }
            }
            r.extend_from_slice(format!("{tag} OK fetched\r\n").as_bytes());
            r
        } else if upper == "LOGOUT" {
            let _ = s.send(format!("* BYE bye\r\n{tag} OK bye\r\n").as_bytes());
            return;
        } else {
            format!("{tag} BAD unknown command\r\n").into_bytes()
        };
        if s.send(&reply).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The fault-injecting proxy
// ---------------------------------------------------------------------------

/// What the proxy does to the server-to-client bytes of its FIRST
/// connection; later connections pass through untouched (so a rerun or a
/// reconnect works).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close both directions after this many bytes.
    CutAfter(usize),
    /// Stop forwarding after this many bytes, keep the connection open.
    StallAfter(usize),
    /// Forward `chunk` bytes every `pause_ms` milliseconds.
    Trickle { chunk: usize, pause_ms: u64 },
    /// Hold each of the first `reads` reads `ms` milliseconds, then pass
    /// the rest at once: the TLS handshake and greeting of a busy machine
    /// on a fast link.
    SlowStart { reads: usize, ms: u64 },
    /// Hold every read `ms` milliseconds: a link that slow one way.
    Latency { ms: u64 },
}

pub struct Proxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Proxy {
    pub fn start(target: u16, fault: Fault) -> Proxy {
        Self::start_with(target, fault, false)
    }

    /// Like [`Proxy::start`], with `fault` on every connection: a slow
    /// link (`Trickle`) rather than a one-off fault.
    pub fn start_every(target: u16, fault: Fault) -> Proxy {
        Self::start_with(target, fault, true)
    }

    fn start_with(target: u16, fault: Fault, every: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            for (n, client) in listener.incoming().enumerate() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let fault = (every || n == 0).then_some(fault);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(c2, s2, None));
                let stop3 = stop2.clone();
                thread::spawn(move || {
                    pump(server, client, fault);
                    drop(stop3);
                });
            }
        });
        Proxy { port, stop }
    }
}

/// Copies `from` to `to`, applying `fault`; at most 60 s of stalling.
fn pump(mut from: TcpStream, mut to: TcpStream, fault: Option<Fault>) {
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0usize;
    let mut reads = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        reads += 1;
        let mut data = &buf[..n];
        match fault {
            Some(Fault::SlowStart { reads: slow, ms }) if reads <= slow => {
                thread::sleep(Duration::from_millis(ms));
            }
            Some(Fault::Latency { ms }) => thread::sleep(Duration::from_millis(ms)),
            Some(Fault::CutAfter(limit)) | Some(Fault::StallAfter(limit))
                if sent + data.len() >= limit =>
            {
                let _ = to.write_all(&data[..limit - sent]);
                if let Some(Fault::StallAfter(_)) = fault {
                    // Hold both ends open, send nothing.
                    thread::sleep(Duration::from_secs(60));
                }
                break;
            }
            Some(Fault::Trickle { chunk, pause_ms }) => {
                while !data.is_empty() {
                    let k = chunk.min(data.len());
                    if to.write_all(&data[..k]).is_err() {
                        return;
                    }
                    data = &data[k..];
                    thread::sleep(Duration::from_millis(pause_ms));
                }
                continue;
            }
            _ => {}
        }
        sent += data.len();
        if to.write_all(data).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// The counting proxy: the round trips a client waits for
// ---------------------------------------------------------------------------

/// How long the counting proxy holds the server's bytes.
const TURN_HOLD: Duration = Duration::from_millis(50);

/// A byte proxy that counts, per connection, the client's turns: the times
/// it sent data after having received some since it last sent, the first
/// send counting too. That is how ../shared/bench/wan/wanrelay.py counts
/// them for scripts/bench.sh; the TCP handshake is not a turn. Every chunk
/// from the server is held [`TURN_HOLD`] before it is passed on, so a
/// reply cannot slip between two writes the client makes back to back
/// (the TLS handshake's last message, then a command) on a busy machine:
/// a round trip the client waits for always counts, one it does not wait
/// for only if the client stalls that long between two writes.
pub struct TurnProxy {
    pub port: u16,
    turns: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for TurnProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl TurnProxy {
    pub fn start(target: u16) -> TurnProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let turns: Arc<Mutex<Vec<Arc<AtomicUsize>>>> = Arc::default();
        let (stop2, turns2) = (stop.clone(), turns.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let count = Arc::new(AtomicUsize::new(0));
                turns2.lock().unwrap().push(count.clone());
                // Set when server bytes reached the client since it last sent.
                let received = Arc::new(AtomicBool::new(true));
                let (c2, s2, r2) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    received.clone(),
                );
                thread::spawn(move || {
                    count_pump(c2, s2, |_| {
                        if r2.swap(false, Ordering::SeqCst) {
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                });
                thread::spawn(move || {
                    count_pump(server, client, |_| {
                        thread::sleep(TURN_HOLD);
                        received.store(true, Ordering::SeqCst);
                    })
                });
            }
        });
        TurnProxy { port, turns, stop }
    }

    /// The turns of each connection so far, in the order they were opened.
    pub fn turns(&self) -> Vec<usize> {
        self.turns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

/// Copies `from` to `to`, calling `before` ahead of passing on each chunk.
fn count_pump(mut from: TcpStream, mut to: TcpStream, before: impl Fn(usize)) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        before(n);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------
// The holding proxy: APPENDs kept in flight
// ---------------------------------------------------------------------------

/// A proxy that passes each connection's first `hold_after` client bytes
/// to the server and holds the rest until [`HoldProxy::release`]: what a
/// killed client had already sent, still on its way. A client that goes
/// away does not close its server connection, so released bytes still
/// reach the server and are executed there; every server connection is
/// closed when the proxy is dropped.
pub struct HoldProxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<Arc<Held>>>>,
    stop: Arc<AtomicBool>,
}

struct Held {
    /// (bytes waiting, released)
    state: Mutex<(Vec<u8>, bool)>,
    server: TcpStream,
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().iter() {
            let _ = c.server.shutdown(Shutdown::Both);
        }
    }
}

impl HoldProxy {
    pub fn start(target: u16, hold_after: usize) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<Arc<Held>>>> = Arc::default();
        let (stop2, conns2) = (stop.clone(), conns.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let held = Arc::new(Held {
                    state: Mutex::new((Vec::new(), false)),
                    server: server.try_clone().unwrap(),
                });
                conns2.lock().unwrap().push(held.clone());
                let mut to_client = client.try_clone().unwrap();
                let mut from_server = server.try_clone().unwrap();
                thread::spawn(move || {
                    // Server to client; a dead client's answers are drained.
                    let mut buf = [0u8; 16 * 1024];
                    let mut alive = true;
                    while let Ok(n @ 1..) = from_server.read(&mut buf) {
                        alive = alive && to_client.write_all(&buf[..n]).is_ok();
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                });
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    let mut passed = 0usize;
                    while let Ok(n @ 1..) = client.read(&mut buf) {
                        let mut st = held.state.lock().unwrap();
                        let free = if st.1 {
                            n
                        } else {
                            hold_after.saturating_sub(passed).min(n)
                        };
                        if server.write_all(&buf[..free]).is_err() {
                            break;
                        }
                        passed += free;
                        st.0.extend_from_slice(&buf[free..n]);
                    }
                    // The client is gone (or done): its server connection stays.
                });
            }
        });
        HoldProxy { port, conns, stop }
    }

    /// Client bytes held on connection `n` (0 before it exists).
    pub fn held(&self, n: usize) -> usize {
        self.conns
            .lock()
            .unwrap()
            .get(n)
            .map_or(0, |c| c.state.lock().unwrap().0.len())
    }

    /// Waits until connection `n` holds at least `min` bytes and has not
    /// grown for 300 ms (the client has sent what it will send).
    pub fn wait_held(&self, n: usize, min: usize, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        let mut last = (0, std::time::Instant::now());
        while start.elapsed() < limit {
            let h = self.held(n);
            if h != last.0 {
                last = (h, std::time::Instant::now());
            } else if h >= min && last.1.elapsed() >= Duration::from_millis(300) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends what connection `n` holds on to the server, and everything
    /// after it straight through.
    pub fn release(&self, n: usize) {
        let c = self.conns.lock().unwrap()[n].clone();
        let mut st = c.state.lock().unwrap();
        let data = std::mem::take(&mut st.0);
        st.1 = true;
        let _ = (&c.server).write_all(&data);
    }
}
