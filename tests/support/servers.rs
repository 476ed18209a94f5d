//! The other real servers: a private Cyrus IMAP 3.6 ([`cyrus`]) and a
//! private Courier-IMAP 5 ([`courier`]), Debian 12's packages unpacked into a
//! cache by `scripts/imapservers.sh install` (they conflict with the
//! installed dovecot-imapd) and started by `scripts/imapservers.sh start`
//! on free loopback ports, one per test process, killed when it exits, like
//! the private Dovecot. [`ImapServer`] is what a test body needs from any of
//! the three, so one body runs against each.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    free_ports, lock, password_for, port_ready, read_lossy, register_atexit, script,
    spawn_bound_with, sweep_stale, tail, Cleanup, Dovecot, Imap, User, CLEANUP_COURIER,
    CLEANUP_CYRUS, CLEANUP_CYRUS_FLAT, STARTUP_TIMEOUT,
};

/// Which server software.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dovecot,
    Cyrus,
    Courier,
}

/// What a test body needs from a private server, whichever it is.
pub trait ImapServer: Sync {
    fn kind(&self) -> Kind;
    /// Plain IMAP (LOGIN allowed: loopback), STARTTLS offered.
    fn imap_port(&self) -> u16;
    /// Implicit TLS.
    fn imaps_port(&self) -> u16;
    /// The self-signed certificate the server presents (also the CA file).
    fn cert(&self) -> &Path;
    /// A new user with a unique name starting with `prefix`; it can log in
    /// when this returns.
    fn new_user(&self, prefix: &str) -> User;
    /// The personal namespace's prefix as the server shows it (`""` on our
    /// Dovecot, `INBOX.` on Debian's Cyrus and on Courier).
    fn prefix(&self) -> &str;
    /// The hierarchy delimiter of the personal namespace.
    fn sep(&self) -> char;
    /// The server's log so far (Cyrus and Courier log to syslog: only what
    /// the start script printed).
    fn log(&self) -> String;

    /// The server's name of the folder a user calls `path` (`/`-separated,
    /// as the archive should hold it): `Archive/2024` is
    /// `INBOX.Archive.2024` on Cyrus; INBOX stays INBOX.
    fn mailbox(&self, path: &str) -> String {
        if path.eq_ignore_ascii_case("INBOX") {
            return "INBOX".into();
        }
        let native: String = path
            .chars()
            .map(|c| if c == '/' { self.sep() } else { c })
            .collect();
        format!("{}{native}", self.prefix())
    }
}

impl ImapServer for Dovecot {
    fn kind(&self) -> Kind {
        Kind::Dovecot
    }
    fn imap_port(&self) -> u16 {
        self.imap_port
    }
    fn imaps_port(&self) -> u16 {
        self.imaps_port
    }
    fn cert(&self) -> &Path {
        &self.cert
    }
    fn new_user(&self, prefix: &str) -> User {
        Dovecot::new_user(self, prefix)
    }
    fn prefix(&self) -> &str {
        ""
    }
    fn sep(&self) -> char {
        self.sep
    }
    fn log(&self) -> String {
        Dovecot::log(self)
    }
}

/// A running private Cyrus or Courier, shared by all tests of one binary.
pub struct Server {
    pub kind: Kind,
    /// The server directory (config, `tls/`, users, mail).
    pub dir: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub cert: PathBuf,
    /// Pid of the start script, which became the server (Cyrus: master;
    /// Courier: the shell holding the private mount namespace).
    pub pid: u32,
    /// The personal namespace: prefix and delimiter.
    prefix: &'static str,
    sep: char,
    root: PathBuf,
    users: Mutex<()>,
    next_user: AtomicU32,
}

static CYRUS: OnceLock<Server> = OnceLock::new();
static CYRUS_FLAT: OnceLock<Server> = OnceLock::new();
static COURIER: OnceLock<Server> = OnceLock::new();

/// The process-wide private Cyrus IMAP (Debian's namespace: `INBOX.`, `.`),
/// started on first use.
pub fn cyrus() -> &'static Server {
    CYRUS.get_or_init(|| Server::start(Kind::Cyrus, false))
}

/// A second private Cyrus with upstream's namespace (no prefix, `/`:
/// `altnamespace` and `unixhierarchysep` on), for migrations between
/// namespaces.
pub fn cyrus_flat() -> &'static Server {
    CYRUS_FLAT.get_or_init(|| Server::start(Kind::Cyrus, true))
}

/// The process-wide private Courier-IMAP (`INBOX.`, `.`), started on first
/// use.
pub fn courier() -> &'static Server {
    COURIER.get_or_init(|| Server::start(Kind::Courier, false))
}

impl Kind {
    fn script_name(self) -> &'static str {
        match self {
            Kind::Dovecot => "dovecot",
            Kind::Cyrus => "cyrus",
            Kind::Courier => "courier",
        }
    }
}

fn imapservers(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script("imapservers.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run scripts/imapservers.sh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "scripts/imapservers.sh {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Server {
    fn start(kind: Kind, flat: bool) -> Server {
        let name = kind.script_name();
        // Fetches and unpacks the packages once (a stamp file makes later
        // calls instant); scripts/test.sh has normally done it already.
        if let Err(e) = imapservers(&["install", name]) {
            panic!("{e}\nhint: run `scripts/imapservers.sh install` (needs apt-get)");
        }
        let mut last_err = String::new();
        for _attempt in 0..4 {
            match Self::try_start(kind, flat) {
                Ok(s) => return s,
                Err((msg, retry)) => {
                    last_err = msg;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("could not start the private {name}:\n{last_err}");
    }

    fn try_start(kind: Kind, flat: bool) -> Result<Server, (String, bool)> {
        let name = kind.script_name();
        let prefix = format!("imapbak-{name}-");
        sweep_stale(&prefix, "srv/run/server.pid");
        let root = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir()
            .map_err(|e| (format!("tempdir: {e}"), false))?
            .keep();
        let dir = root.join("srv");
        let start_log = root.join("start.log");
        let (imap_port, imaps_port) = free_ports();
        let out = fs::File::create(&start_log).map_err(|e| (e.to_string(), false))?;
        let err = out.try_clone().map_err(|e| (e.to_string(), false))?;
        let mut cmd = Command::new("bash");
        cmd.arg(script("imapservers.sh"))
            .arg("start")
            .arg(name)
            .arg(&dir)
            .env("FOREGROUND", "1")
            .env("IMAP_PORT", imap_port.to_string())
            .env("IMAPS_PORT", imaps_port.to_string())
            .env("CYRUS_NAMESPACE", if flat { "flat" } else { "debian" })
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // scripts/imapservers.sh: Courier's unshare(1) blocks SIGTERM.
        let signal = match kind {
            Kind::Courier => libc::SIGKILL,
            _ => libc::SIGTERM,
        };
        let (pid, exited) =
            spawn_bound_with(cmd, signal).map_err(|e| (format!("spawn: {e}"), false))?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = *lock(&exited) {
                let log = read_lossy(&start_log);
                let msg = format!(
                    "scripts/imapservers.sh start {name} exited with {status}\n--- {}:\n{}",
                    start_log.display(),
                    tail(&log, 30)
                );
                let retry = log.contains("in use");
                let _ = fs::remove_dir_all(&root);
                return Err((msg, retry));
            }
            if port_ready(imaps_port, false) && port_ready(imap_port, true) {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, signal);
                }
                return Err((
                    format!(
                        "{name} did not answer on 127.0.0.1:{imaps_port} within {STARTUP_TIMEOUT:?}\n{}",
                        tail(&read_lossy(&start_log), 30)
                    ),
                    false,
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let cleanup = Cleanup {
            root: root.clone(),
            pid,
            exited,
            signal,
        };
        let slot = match (kind, flat) {
            (Kind::Cyrus, false) => &CLEANUP_CYRUS,
            (Kind::Cyrus, true) => &CLEANUP_CYRUS_FLAT,
            _ => &CLEANUP_COURIER,
        };
        let _ = slot.set(cleanup);
        register_atexit();
        eprintln!(
            "private {name}: pid {pid}, imap 127.0.0.1:{imap_port}, imaps 127.0.0.1:{imaps_port}, dir {}",
            dir.display()
        );
        Ok(Server {
            kind,
            cert: dir.join("tls/cert.pem"),
            dir,
            imap_port,
            imaps_port,
            pid,
            prefix: if flat { "" } else { "INBOX." },
            sep: if flat { '/' } else { '.' },
            root,
            users: Mutex::new(()),
            next_user: AtomicU32::new(1),
        })
    }

    /// What the start script printed (the servers log to syslog).
    pub fn start_log(&self) -> String {
        read_lossy(&self.root.join("start.log"))
    }

    /// The Cyrus admin (`admins: cyrusadm` in its imapd.conf), logged in.
    pub fn admin_imap(&self) -> Imap {
        assert_eq!(self.kind, Kind::Cyrus, "only the Cyrus has an admin");
        let admin = User {
            name: "cyrusadm".into(),
            password: fs::read_to_string(self.dir.join("admin.pw"))
                .expect("read the Cyrus admin password")
                .trim()
                .to_string(),
            maildir: PathBuf::new(),
            imap_port: self.imap_port,
        };
        admin.imap()
    }

    fn add_user(&self, prefix: &str) -> User {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        let name = format!("{clean}-{n}-{}", std::process::id());
        let password = password_for(&name);
        {
            // saslpasswd2 (Cyrus) and the userdb rebuild (Courier) rewrite
            // one database file: one writer at a time.
            let _guard = lock(&self.users);
            let dir = self.dir.display().to_string();
            imapservers(&["adduser", self.kind.script_name(), &dir, &name, &password])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let maildir = match self.kind {
            Kind::Courier => self.dir.join("mail").join(&name),
            // Cyrus keeps mail in its own spool, not a Maildir.
            _ => PathBuf::new(),
        };
        let user = User {
            name,
            password,
            maildir,
            imap_port: self.imap_port,
        };
        self.wait_until_known(&user);
        user
    }

    /// The first login also creates a Cyrus user's INBOX (autocreate). A
    /// Courier authdaemond notices a rebuilt userdb.dat by its mtime, at
    /// one-second resolution: retry into the next second.
    fn wait_until_known(&self, user: &User) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Imap::connect(self.imap_port).and_then(|c| c.login(user)) {
                Ok(mut c) => {
                    c.logout();
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "new {:?} user `{}` cannot log in: {e}\n{}",
                        self.kind,
                        user.name,
                        tail(&self.start_log(), 20)
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl ImapServer for Server {
    fn kind(&self) -> Kind {
        self.kind
    }
    fn imap_port(&self) -> u16 {
        self.imap_port
    }
    fn imaps_port(&self) -> u16 {
        self.imaps_port
    }
    fn cert(&self) -> &Path {
        &self.cert
    }
    fn new_user(&self, prefix: &str) -> User {
        self.add_user(prefix)
    }
    fn prefix(&self) -> &str {
        self.prefix
    }
    fn sep(&self) -> char {
        self.sep
    }
    fn log(&self) -> String {
        self.start_log()
    }
}
