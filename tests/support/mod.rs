//! The integration-test harness: one private Dovecot per test process
//! (`dovecot()`), unique users on it (`Dovecot::new_user`), a tiny raw IMAP
//! client for seeding and checking the server side (`User::imap`), and a
//! `TestEnv` that runs the real `imapbak` binary in a scratch directory with
//! a clean environment. Each `tests/*.rs` file says `mod support;`.
//!
//! The Dovecot is `scripts/dovecot.sh start` in the foreground, run as a
//! child that gets SIGTERM when this process exits, however it exits (a
//! failed test, abort, SIGKILL). Its directory (server log:
//! `srv/log/dovecot.log`) is removed after a normal exit unless
//! `IMAPBAK_TEST_KEEP=1`; directories of killed runs are swept after an hour.
#![allow(dead_code)]

pub mod mail;
pub mod servers;

pub use servers::{courier, cyrus, cyrus_flat, ImapServer, Kind};
pub mod oauth;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imapbak::mutf7;

/// The hierarchy separator of the test server's INBOX namespace.
pub const SEP: char = '/';

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The private Dovecot
// ---------------------------------------------------------------------------

/// A running private Dovecot, shared by all tests of one test binary.
pub struct Dovecot {
    /// The server directory (config, logs, `passwd`, `mail/`, `tls/`).
    pub dir: PathBuf,
    /// Plain IMAP, STARTTLS offered (plaintext LOGIN allowed: loopback).
    pub imap_port: u16,
    /// Implicit TLS.
    pub imaps_port: u16,
    /// The self-signed certificate (PEM) the server presents; SAN
    /// `DNS:localhost`, `IP:127.0.0.1`.
    pub cert: PathBuf,
    /// Pid of the Dovecot master process.
    pub pid: u32,
    /// The hierarchy separator of the INBOX namespace.
    pub sep: char,
    mail_uid: u32,
    mail_gid: u32,
    passwd: Mutex<()>,
    next_user: AtomicU32,
}

static DOVECOT: OnceLock<Dovecot> = OnceLock::new();

/// The process-wide private Dovecot, started on first use.
pub fn dovecot() -> &'static Dovecot {
    DOVECOT.get_or_init(|| Dovecot::start(SEP))
}

static DOVECOT_PREFIXED: OnceLock<Dovecot> = OnceLock::new();

/// A third private Dovecot laid out as Courier and Debian's Cyrus are:
/// every personal mailbox under the namespace prefix `INBOX.`, delimiter `.`.
pub fn dovecot_prefixed() -> &'static Dovecot {
    DOVECOT_PREFIXED.get_or_init(|| Dovecot::start_with(DOT_SEP, "INBOX.", ""))
}

/// The hierarchy separator of the second private Dovecot ([`dovecot_dot`]).
pub const DOT_SEP: char = '.';

static DOVECOT_DOT: OnceLock<Dovecot> = OnceLock::new();

/// A second private Dovecot whose hierarchy separator is `.` (Dovecot's
/// Maildir++ default), started on first use, for tests that move mail
/// between servers with different delimiters.
pub fn dovecot_dot() -> &'static Dovecot {
    DOVECOT_DOT.get_or_init(|| Dovecot::start(DOT_SEP))
}

/// Microsoft 365's post-login capabilities (shared/PROVIDERS.md): no
/// CONDSTORE, QRESYNC, LIST-STATUS, COMPRESS, QUOTA, ESEARCH, SPECIAL-USE,
/// MULTIAPPEND.
pub const M365_CAPABILITY: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS \
                                   MOVE ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";

/// Gmail's post-login capabilities (shared/PROVIDERS.md): LITERAL- (a
/// non-synchronizing literal only up to 4096 bytes), no QRESYNC, no
/// MULTIAPPEND.
pub const GMAIL_CAPABILITY: &str = "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN \
                                    X-GM-EXT-1 UIDPLUS COMPRESS=DEFLATE ENABLE MOVE CONDSTORE \
                                    ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- \
                                    SPECIAL-USE APPENDLIMIT=35651584";

static DOVECOT_M365: OnceLock<Dovecot> = OnceLock::new();
static DOVECOT_GMAIL: OnceLock<Dovecot> = OnceLock::new();

/// A private Dovecot (separator `/`) announcing [`M365_CAPABILITY`]
/// instead of its own list; it still accepts every command, so tests check
/// in the `-vv` log that imapbak used only what was announced.
pub fn dovecot_m365() -> &'static Dovecot {
    DOVECOT_M365.get_or_init(|| Dovecot::start_with(SEP, "", M365_CAPABILITY))
}

/// Like [`dovecot_m365`] with [`GMAIL_CAPABILITY`].
pub fn dovecot_gmail() -> &'static Dovecot {
    DOVECOT_GMAIL.get_or_init(|| Dovecot::start_with(SEP, "", GMAIL_CAPABILITY))
}

/// The master user of [`dovecot_master`] (scripts/dovecot.sh MASTER_USER).
pub const MASTER_NAME: &str = "backup-admin";
pub const MASTER_PASSWORD: &str = "master-secret-9";

static DOVECOT_MASTER: OnceLock<Dovecot> = OnceLock::new();

/// A private Dovecot (separator `/`) with a master passdb holding
/// [`MASTER_NAME`]: it logs in as any user as `user*backup-admin` or over
/// SASL PLAIN with the user as authorization identity.
pub fn dovecot_master() -> &'static Dovecot {
    DOVECOT_MASTER.get_or_init(|| {
        Dovecot::start_env(
            SEP,
            "",
            &[("MASTER_USER", format!("{MASTER_NAME}:{MASTER_PASSWORD}"))],
        )
    })
}

/// What the exit-time cleanup needs to know.
struct Cleanup {
    root: PathBuf,
    pid: u32,
    exited: Arc<Mutex<Option<ExitStatus>>>,
    /// What stops the server (SIGTERM; Courier's unshare needs SIGKILL).
    signal: libc::c_int,
}

static CLEANUP: OnceLock<Cleanup> = OnceLock::new();
/// The second server's cleanup (see [`dovecot_dot`]).
static CLEANUP_DOT: OnceLock<Cleanup> = OnceLock::new();
/// The cleanups of the private Cyrus and Courier ([`cyrus`], [`courier`]).
static CLEANUP_CYRUS: OnceLock<Cleanup> = OnceLock::new();
static CLEANUP_COURIER: OnceLock<Cleanup> = OnceLock::new();
static CLEANUP_CYRUS_FLAT: OnceLock<Cleanup> = OnceLock::new();
/// The Dovecots that announce a provider's capabilities.
static CLEANUP_DOVECOT_CAPS: [OnceLock<Cleanup>; 2] = [OnceLock::new(), OnceLock::new()];
static ATEXIT: std::sync::Once = std::sync::Once::new();

fn register_atexit() {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Two distinct loopback ports that were free a moment ago.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Spawns `cmd` from a thread that never exits, with PR_SET_PDEATHSIG so
/// the child is sent SIGTERM when that thread (hence this process) dies.
/// Returns the child's pid and a slot filled with its exit status.
fn spawn_bound_to_process(cmd: Command) -> io::Result<(u32, Arc<Mutex<Option<ExitStatus>>>)> {
    spawn_bound_with(cmd, libc::SIGTERM)
}

/// [`spawn_bound_to_process`] with `signal` instead of SIGTERM.
fn spawn_bound_with(
    mut cmd: Command,
    signal: libc::c_int,
) -> io::Result<(u32, Arc<Mutex<Option<ExitStatus>>>)> {
    let exited = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&exited);
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("dovecot-parent".into())
        .spawn(move || {
            // SAFETY: prctl is async-signal-safe; nothing else runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    if let Ok(status) = child.wait() {
                        *lock(&slot) = Some(status);
                    }
                    // PDEATHSIG fires when the spawning *thread* exits.
                    loop {
                        thread::park();
                    }
                }
            }
        })?;
    let pid = rx
        .recv()
        .map_err(|_| io::Error::other("dovecot spawner thread died"))??;
    Ok((pid, exited))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn cleanup_at_exit() {
    let all = [
        CLEANUP.get(),
        CLEANUP_DOT.get(),
        CLEANUP_CYRUS.get(),
        CLEANUP_COURIER.get(),
        CLEANUP_CYRUS_FLAT.get(),
        CLEANUP_DOVECOT_CAPS[0].get(),
        CLEANUP_DOVECOT_CAPS[1].get(),
    ];
    for c in all.into_iter().flatten() {
        cleanup_one(c);
    }
}

fn cleanup_one(c: &Cleanup) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(c.pid as libc::pid_t, c.signal);
    }
    if std::env::var_os("IMAPBAK_TEST_KEEP").is_some_and(|v| v == "1") {
        return;
    }
    // Dovecot takes about a second to shut down; remove its directory from
    // a detached process once it is gone rather than hold up this exit.
    let cleaner = Command::new("sh")
        .arg("-c")
        .arg(
            "i=0; while kill -0 \"$0\" 2>/dev/null && [ $i -lt 100 ]; do \
             sleep 0.1; i=$((i+1)); done; rm -rf \"$1\"",
        )
        .arg(c.pid.to_string())
        .arg(&c.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if cleaner.is_ok() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(&c.exited).is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = fs::remove_dir_all(&c.root);
}

/// Removes server directories left by test processes that were killed
/// (SIGKILL, Ctrl-C: no exit handler runs) more than an hour ago.
fn sweep_stale_dirs() {
    sweep_stale("imapbak-dovecot-", "srv/run/master.pid");
}

/// [`sweep_stale_dirs`] for directories named `prefix*` whose server
/// wrote its pid to `pidfile` (relative to the directory).
fn sweep_stale(prefix: &str, pidfile: &str) {
    let Ok(rd) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        let pid = fs::read_to_string(e.path().join(pidfile))
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
        // SAFETY: kill(pid, 0) only probes for existence.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if old && !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True once `port` gives an IMAP greeting (`tls == false`) or accepts a
/// connection (`tls == true`).
fn port_ready(port: u16, greeting: bool) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if !greeting {
        return true;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).is_ok() && &buf == b"* OK"
}

impl Dovecot {
    fn start(sep: char) -> Dovecot {
        Self::start_with(sep, "", "")
    }

    /// A Dovecot whose INBOX namespace has `prefix` (`INBOX.` as Courier)
    /// and that announces `capability` after login ("": Dovecot's own).
    fn start_with(sep: char, prefix: &str, capability: &str) -> Dovecot {
        Self::start_env(sep, prefix, &[("IMAP_CAPABILITY", capability.to_string())])
    }

    /// Like `start_with`, with extra variables for scripts/dovecot.sh
    /// (e.g. `OAUTH2_INTROSPECT_URL`, see tests/support/oauth.rs).
    pub(crate) fn start_env(sep: char, prefix: &str, env: &[(&str, String)]) -> Dovecot {
        assert!(
            Command::new("dovecot")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "dovecot is not installed\nhint: run `scripts/test.sh` (installs dovecot-imapd) \
             or `scripts/dovecot.sh install`"
        );
        let mut last_err = String::new();
        for _attempt in 0..4 {
            match Self::try_start(sep, prefix, env) {
                Ok(d) => return d,
                Err((msg, retry)) => {
                    last_err = msg;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("could not start the private dovecot:\n{last_err}");
    }

    /// Err((diagnostics, worth retrying on other ports)).
    fn try_start(
        sep: char,
        prefix: &str,
        env: &[(&str, String)],
    ) -> Result<Dovecot, (String, bool)> {
        sweep_stale_dirs();
        let root = tempfile::Builder::new()
            .prefix("imapbak-dovecot-")
            .tempdir()
            .map_err(|e| (format!("tempdir: {e}"), false))?
            .keep();
        let dir = root.join("srv");
        let start_log = root.join("start.log");
        let (imap_port, imaps_port) = free_ports();

        let out = fs::File::create(&start_log).map_err(|e| (e.to_string(), false))?;
        let err = out.try_clone().map_err(|e| (e.to_string(), false))?;
        let mut cmd = Command::new("bash");
        cmd.arg(script("dovecot.sh"))
            .arg("start")
            .arg(&dir)
            .env("FOREGROUND", "1")
            .env("IMAP_PORT", imap_port.to_string())
            .env("IMAPS_PORT", imaps_port.to_string())
            .env("IMAP_SEP", sep.to_string())
            .env("IMAP_PREFIX", prefix)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let (pid, exited) =
            spawn_bound_to_process(cmd).map_err(|e| (format!("spawn: {e}"), false))?;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = *lock(&exited) {
                let log = read_lossy(&dir.join("log/dovecot.log"));
                let msg = format!(
                    "scripts/dovecot.sh exited with {status}\n--- {}:\n{}\n--- dovecot.log:\n{}",
                    start_log.display(),
                    read_lossy(&start_log),
                    tail(&log, 20)
                );
                let retry = log.contains("in use") || read_lossy(&start_log).contains("in use");
                let _ = fs::remove_dir_all(&root);
                return Err((msg, retry));
            }
            if port_ready(imaps_port, false) && port_ready(imap_port, true) {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill(2) on our own child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
                return Err((
                    format!(
                        "dovecot did not answer on 127.0.0.1:{imaps_port} within {:?}\n{}",
                        STARTUP_TIMEOUT,
                        tail(&read_lossy(&dir.join("log/dovecot.log")), 20)
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
            signal: libc::SIGTERM,
        };
        // One slot per Dovecot, whichever starts first.
        let _ = CLEANUP
            .set(cleanup)
            .or_else(|c| CLEANUP_DOT.set(c))
            .or_else(|c| CLEANUP_DOVECOT_CAPS[0].set(c))
            .or_else(|c| CLEANUP_DOVECOT_CAPS[1].set(c));
        register_atexit();
        let meta = fs::metadata(dir.join("mail")).expect("stat the server's mail dir");
        eprintln!(
            "private dovecot: pid {pid}, imap 127.0.0.1:{imap_port}, imaps 127.0.0.1:{imaps_port}, dir {}",
            dir.display()
        );
        Ok(Dovecot {
            cert: dir.join("tls/cert.pem"),
            sep,
            dir,
            imap_port,
            imaps_port,
            pid,
            mail_uid: meta.uid(),
            mail_gid: meta.gid(),
            passwd: Mutex::new(()),
            next_user: AtomicU32::new(1),
        })
    }

    /// The private config file, for `doveadm -c`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    /// A `doveadm -c <private config>` command to add arguments to.
    pub fn doveadm_cmd(&self) -> Command {
        let mut cmd = Command::new("doveadm");
        cmd.arg("-c").arg(self.config());
        cmd
    }

    /// Runs `doveadm -c <private config> ARGS...`, panics unless it
    /// succeeds, and returns its stdout.
    pub fn doveadm(&self, args: &[&str]) -> String {
        let out = self
            .doveadm_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run doveadm");
        assert!(
            out.status.success(),
            "doveadm {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Saves `message` into `mailbox` (UTF-8 name) of `user` with
    /// `doveadm save` (INTERNALDATE = now, no flags).
    pub fn doveadm_save(&self, user: &User, mailbox: &str, message: &[u8]) {
        let mut child = self
            .doveadm_cmd()
            .args(["save", "-u", &user.name, "-m", mailbox])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run doveadm save");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message)
            .expect("write to doveadm save");
        let out = child.wait_with_output().expect("wait for doveadm save");
        assert!(
            out.status.success(),
            "doveadm save -u {} -m {mailbox:?} failed: {}",
            user.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server log so far (for assertion messages).
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("log/dovecot.log"))
    }

    /// A new user with a unique name starting with `prefix`, no quota.
    pub fn new_user(&self, prefix: &str) -> User {
        self.add_user(prefix, "")
    }

    /// A new user whose storage quota is `storage_kb` KiB.
    pub fn new_user_with_quota(&self, prefix: &str, storage_kb: u64) -> User {
        self.add_user(
            prefix,
            &format!("userdb_quota_rule=*:storage={storage_kb}K"),
        )
    }

    /// Writes `messages` (bytes, INTERNALDATE in seconds) straight into the
    /// `cur/` of `user`'s INBOX as unflagged Maildir files owned by the mail
    /// uid: the fastest way to seed thousands of messages. Dovecot assigns
    /// UIDs at the next EXAMINE/SELECT, in file-name order.
    pub fn seed_inbox(&self, user: &User, messages: &[(Vec<u8>, i64)]) {
        self.seed_mailbox(user, "INBOX", messages)
    }

    /// [`Dovecot::seed_inbox`] for any top-level mailbox (`INBOX`, or a
    /// name without the hierarchy separator): Maildir++ keeps mailbox `X`
    /// in the folder `.X` of the user's maildir, where LIST finds it.
    pub fn seed_mailbox(&self, user: &User, mailbox: &str, messages: &[(Vec<u8>, i64)]) {
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(self.mail_uid), Some(self.mail_gid))
                .unwrap_or_else(|e| panic!("chown `{}`: {e}", p.display()))
        };
        let dir = if mailbox == "INBOX" {
            user.maildir.clone()
        } else {
            assert!(!mailbox.contains(['/', '.']), "a top-level name: {mailbox}");
            user.maildir.join(format!(".{mailbox}"))
        };
        fs::create_dir_all(&dir).expect("create a maildir");
        chown(&dir);
        for sub in ["cur", "new", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).expect("create a maildir subdirectory");
            chown(&d);
        }
        for (i, (bytes, secs)) in messages.iter().enumerate() {
            let name = format!("{secs}.M{i:07}P1.seed,S={}:2,", bytes.len());
            let path = dir.join("cur").join(name);
            let f = fs::File::create(&path).expect("create a seeded message");
            (&f).write_all(bytes).expect("write a seeded message");
            f.set_modified(UNIX_EPOCH + Duration::from_secs(*secs as u64))
                .expect("set a seeded message's mtime");
            chown(&path);
        }
    }

    /// Changes `user`'s storage quota to `storage_kb` KiB (`None`: no
    /// limit). New logins see it; sessions already open keep the old one.
    pub fn set_quota(&self, user: &User, storage_kb: Option<u64>) {
        let extra = storage_kb
            .map(|kb| format!("userdb_quota_rule=*:storage={kb}K"))
            .unwrap_or_default();
        let line = format!(
            "{}:{{PLAIN}}{}:{}:{}::{}::{extra}\n",
            user.name,
            user.password,
            self.mail_uid,
            self.mail_gid,
            user.maildir.display()
        );
        let _guard = lock(&self.passwd);
        let users = self.dir.join("users");
        let tmp = users.join(format!(".new-{}", user.name));
        fs::write(&tmp, &line).expect("write the user's passwd file");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
            .expect("chmod the user's passwd file");
        fs::rename(&tmp, users.join(&user.name)).expect("rename the user's passwd file");
        // Dovecot stats a passwd-file at most once a second.
        thread::sleep(Duration::from_millis(1100));
    }

    fn add_user(&self, prefix: &str, extra: &str) -> User {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let n = self.next_user.fetch_add(1, Ordering::Relaxed);
        let name = format!("{clean}-{n}-{}", std::process::id());
        let password = password_for(&name);
        let maildir = self.dir.join("mail").join(&name);
        fs::create_dir_all(&maildir).expect("create the user's maildir");
        std::os::unix::fs::chown(&maildir, Some(self.mail_uid), Some(self.mail_gid))
            .expect("chown the user's maildir to the mail uid");
        let line = format!(
            "{name}:{{PLAIN}}{password}:{}:{}::{}::{extra}\n",
            self.mail_uid,
            self.mail_gid,
            maildir.display()
        );
        {
            // One file per user (DIR/users/NAME), read on the user's first
            // login; a line appended to DIR/passwd could stay unknown for up
            // to a second (see scripts/dovecot.sh).
            let _guard = lock(&self.passwd);
            let users = self.dir.join("users");
            let tmp = users.join(format!(".new-{name}"));
            fs::write(&tmp, &line).expect("write the user's passwd file");
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))
                .expect("chmod the user's passwd file");
            fs::rename(&tmp, users.join(&name)).expect("rename the user's passwd file");
        }
        let user = User {
            name,
            password,
            maildir,
            imap_port: self.imap_port,
        };
        self.wait_until_known(&user);
        user
    }

    /// Makes sure the new user can log in before anyone (the test or the
    /// imapbak binary) relies on it. With per-user passwd files this passes
    /// at once; the retry into the next second covers Dovecot's
    /// once-a-second passwd-file stat should a lookup ever race the write.
    fn wait_until_known(&self, user: &User) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Imap::connect(self.imap_port).and_then(|c| c.login(user)) {
                Ok(mut c) => {
                    c.logout();
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("new user `{}` cannot log in: {e}", user.name)
                }
                Err(_) => {
                    // Sleep into the next wall-clock second.
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                    let to_next = Duration::from_nanos(1_000_000_000 - now.subsec_nanos() as u64);
                    thread::sleep(to_next + Duration::from_millis(20));
                }
            }
        }
    }
}

/// A password unique to `name` and this moment, safe in passwd-file and in
/// IMAP quoted strings.
fn password_for(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let digest = Sha256::digest(format!("{name}/{nanos}/{}", std::process::id()));
    format!("pw{}", &hex::encode(digest)[..18])
}

/// A user on the private Dovecot.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// The user's Maildir++ root on the server (INBOX's cur/new/tmp).
    pub maildir: PathBuf,
    imap_port: u16,
}

impl User {
    /// A logged-in raw IMAP connection (plain port, LOGIN).
    pub fn imap(&self) -> Imap {
        Imap::connect(self.imap_port)
            .and_then(|c| c.login(self))
            .unwrap_or_else(|e| panic!("IMAP login as `{}`: {e}", self.name))
    }
}

// ---------------------------------------------------------------------------
// The raw IMAP client (test side only)
// ---------------------------------------------------------------------------

/// The tagged status of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
}

/// One command's answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Untagged (`* ...`) and continuation responses as received, each with
    /// its literals inline and its final CRLF.
    pub untagged: Vec<Vec<u8>>,
    pub status: Status,
    /// The tagged line without the tag, e.g. `OK [APPENDUID 1 2] Append completed.`
    pub text: String,
}

impl Response {
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// Every line as received, tagged line last (tag replaced by `TAG`).
    pub fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for u in &self.untagged {
            out.extend_from_slice(u);
        }
        out.extend_from_slice(format!("TAG {}\r\n", self.text).as_bytes());
        out
    }
}

/// A message as the server serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMessage {
    pub uid: u32,
    /// As served, without `\Recent`.
    pub flags: Vec<String>,
    /// As served, e.g. ` 1-Jan-2020 10:00:00 +0000` (note the space-padded day).
    pub internaldate: String,
    pub size: u32,
    /// The `BODY.PEEK[]` bytes.
    pub body: Vec<u8>,
}

impl ServerMessage {
    /// INTERNALDATE as seconds since the epoch.
    pub fn internaldate_secs(&self) -> i64 {
        internaldate_secs(&self.internaldate)
    }
}

/// Seconds since the epoch of an IMAP date-time (`01-Jan-2020 10:00:00 +0000`,
/// day possibly space-padded).
pub fn internaldate_secs(date: &str) -> i64 {
    chrono::DateTime::parse_from_str(date.trim(), "%d-%b-%Y %H:%M:%S %z")
        .unwrap_or_else(|e| panic!("bad IMAP date-time {date:?}: {e}"))
        .timestamp()
}

/// A tiny synchronous IMAP client for seeding and inspecting the server.
/// Every method panics on an unexpected answer; `try_*` methods return it.
pub struct Imap {
    conn: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    fn connect(port: u16) -> io::Result<Imap> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut imap = Imap {
            conn: BufReader::new(stream),
            tag: 0,
        };
        let greeting = imap.read_response()?;
        if !greeting.starts_with(b"* OK") {
            return Err(io::Error::other(format!(
                "unexpected greeting {:?}",
                String::from_utf8_lossy(&greeting)
            )));
        }
        Ok(imap)
    }

    fn login(mut self, user: &User) -> io::Result<Imap> {
        let r = self.run_parts(&[Part::Text(format!(
            "LOGIN {} {}",
            quote(&user.name),
            quote(&user.password)
        ))])?;
        if r.is_ok() {
            Ok(self)
        } else {
            Err(io::Error::other(format!("LOGIN refused: {}", r.text)))
        }
    }

    /// Reads one response: a line plus any literals it announces.
    fn read_response(&mut self) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            let start = buf.len();
            if self.conn.read_until(b'\n', &mut buf)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "server closed the connection after {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                ));
            }
            match literal_len(&buf[start..]) {
                Some(n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    self.conn.read_exact(&mut buf[at..])?;
                }
                None => return Ok(buf),
            }
        }
    }

    fn run_parts(&mut self, parts: &[Part]) -> io::Result<Response> {
        self.tag += 1;
        let tag = format!("T{}", self.tag);
        let mut untagged = Vec::new();
        let mut out = format!("{tag} ").into_bytes();
        for part in parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Literal(bytes) => {
                    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
                    self.conn.get_mut().write_all(&out)?;
                    out.clear();
                    // Synchronizing literal: wait for the go-ahead.
                    loop {
                        let r = self.read_response()?;
                        if r.starts_with(b"+") {
                            break;
                        }
                        if r.starts_with(tag.as_bytes()) {
                            return Ok(Self::finish(untagged, &tag, &r));
                        }
                        untagged.push(r);
                    }
                    self.conn.get_mut().write_all(bytes)?;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        self.conn.get_mut().write_all(&out)?;
        loop {
            let r = self.read_response()?;
            if r.starts_with(format!("{tag} ").as_bytes()) {
                return Ok(Self::finish(untagged, &tag, &r));
            }
            untagged.push(r);
        }
    }

    fn finish(untagged: Vec<Vec<u8>>, tag: &str, line: &[u8]) -> Response {
        let text = String::from_utf8_lossy(&line[tag.len() + 1..])
            .trim_end()
            .to_string();
        let status = if text.starts_with("OK") {
            Status::Ok
        } else if text.starts_with("NO") {
            Status::No
        } else {
            Status::Bad
        };
        Response {
            untagged,
            status,
            text,
        }
    }

    /// Sends `cmd` (without tag) and returns the answer, whatever it is.
    pub fn try_command(&mut self, cmd: &str) -> Response {
        self.run_parts(&[Part::Text(cmd.to_string())])
            .unwrap_or_else(|e| panic!("IMAP `{cmd}`: {e}"))
    }

    /// Sends `cmd` (without tag) and returns every line received, the
    /// tagged one last; does not check the status.
    pub fn command(&mut self, cmd: &str) -> Vec<u8> {
        self.try_command(cmd).raw()
    }

    /// Sends `cmd` and panics unless the server answers OK.
    pub fn ok(&mut self, cmd: &str) -> Response {
        let r = self.try_command(cmd);
        assert!(r.is_ok(), "IMAP `{cmd}` answered `{}`", r.text);
        r
    }

    pub fn create(&mut self, mailbox: &str) {
        self.ok(&format!("CREATE {}", mailbox_arg(mailbox)));
    }

    pub fn delete(&mut self, mailbox: &str) {
        self.ok(&format!("DELETE {}", mailbox_arg(mailbox)));
    }

    pub fn rename(&mut self, from: &str, to: &str) {
        self.ok(&format!("RENAME {} {}", mailbox_arg(from), mailbox_arg(to)));
    }

    pub fn select(&mut self, mailbox: &str) {
        self.ok(&format!("SELECT {}", mailbox_arg(mailbox)));
    }

    /// APPENDs `message` and returns its UID (from APPENDUID).
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internaldate: &str,
        message: &[u8],
    ) -> u32 {
        self.try_append(mailbox, flags, internaldate, message)
            .unwrap_or_else(|text| panic!("APPEND to `{mailbox}` answered `{text}`"))
    }

    /// Like `append`, but a NO or BAD is returned as its tagged text.
    pub fn try_append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internaldate: &str,
        message: &[u8],
    ) -> Result<u32, String> {
        let mut head = format!("APPEND {} ({})", mailbox_arg(mailbox), flags.join(" "));
        if !internaldate.is_empty() {
            head.push_str(&format!(" {}", quote(internaldate)));
        }
        head.push(' ');
        let r = self
            .run_parts(&[Part::Text(head), Part::Literal(message.to_vec())])
            .unwrap_or_else(|e| panic!("APPEND to `{mailbox}`: {e}"));
        if !r.is_ok() {
            return Err(r.text);
        }
        let uid = r
            .text
            .split_once("[APPENDUID ")
            .and_then(|(_, rest)| rest.split(']').next())
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no APPENDUID in `{}`", r.text));
        Ok(uid)
    }

    /// Every message of `mailbox` in UID order (EXAMINE, then
    /// `UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])`).
    pub fn fetch_all(&mut self, mailbox: &str) -> Vec<ServerMessage> {
        self.ok(&format!("EXAMINE {}", mailbox_arg(mailbox)));
        let r = self.ok("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])");
        let mut out: Vec<ServerMessage> = r
            .untagged
            .iter()
            .filter_map(|line| parse_fetch(line))
            .collect();
        out.sort_by_key(|m| m.uid);
        out
    }

    /// SELECTs `mailbox` and runs `UID STORE <uid> <action>`, e.g.
    /// `store("INBOX", 3, "+FLAGS (\\Seen)")`.
    pub fn store(&mut self, mailbox: &str, uid: u32, action: &str) {
        self.select(mailbox);
        self.ok(&format!("UID STORE {uid} {action}"));
    }

    /// Marks `uid` \Deleted and expunges it.
    pub fn expunge_uid(&mut self, mailbox: &str, uid: u32) {
        self.store(mailbox, uid, "+FLAGS.SILENT (\\Deleted)");
        self.ok(&format!("UID EXPUNGE {uid}"));
    }

    /// Decoded names of all selectable mailboxes, in the server's order.
    pub fn list(&mut self) -> Vec<String> {
        let r = self.ok("LIST \"\" \"*\"");
        let mut names = Vec::new();
        for line in &r.untagged {
            let Some(v) = parse_values(line) else {
                continue;
            };
            if v.len() < 5 || !v[1].is_atom("LIST") {
                continue;
            }
            let Value::List(attrs) = &v[2] else { continue };
            if attrs
                .iter()
                .any(|a| a.is_atom("\\Noselect") || a.is_atom("\\NonExistent"))
            {
                continue;
            }
            let raw = v[4].text();
            names.push(mutf7::decode(&raw).unwrap_or_else(|e| panic!("LIST name: {e}")));
        }
        names
    }

    /// (UIDVALIDITY, UIDNEXT, MESSAGES) of `mailbox`.
    pub fn status(&mut self, mailbox: &str) -> (u32, u32, u32) {
        let r = self.ok(&format!(
            "STATUS {} (UIDVALIDITY UIDNEXT MESSAGES)",
            mailbox_arg(mailbox)
        ));
        let line = r
            .untagged
            .iter()
            .find(|l| l.starts_with(b"* STATUS "))
            .expect("no STATUS response");
        let v = parse_values(line).expect("unparsable STATUS response");
        let Some(Value::List(items)) = v.last() else {
            panic!(
                "unparsable STATUS response {:?}",
                String::from_utf8_lossy(line)
            )
        };
        let map = pairs(items);
        let num = |k: &str| -> u32 {
            map.get(k)
                .and_then(|v| v.text().parse().ok())
                .unwrap_or_else(|| panic!("STATUS without {k}"))
        };
        (num("UIDVALIDITY"), num("UIDNEXT"), num("MESSAGES"))
    }

    pub fn logout(&mut self) {
        let _ = self.run_parts(&[Part::Text("LOGOUT".into())]);
    }
}

enum Part {
    Text(String),
    Literal(Vec<u8>),
}

/// `{N}` (or `~{N}`, `{N+}`) at the end of a line announces N literal bytes.
fn literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n").or(line.strip_suffix(b"\n"))?;
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// A mailbox name (UTF-8) as a command argument: modified UTF-7, quoted.
pub fn mailbox_arg(name: &str) -> String {
    quote(&mutf7::encode(name))
}

/// A parsed IMAP value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Atoms, numbers, NIL, flags; `BODY[...]` section included.
    Atom(String),
    /// Quoted string or literal.
    Str(Vec<u8>),
    List(Vec<Value>),
}

impl Value {
    fn is_atom(&self, s: &str) -> bool {
        matches!(self, Value::Atom(a) if a.eq_ignore_ascii_case(s))
    }

    fn text(&self) -> String {
        match self {
            Value::Atom(a) => a.clone(),
            Value::Str(b) => String::from_utf8_lossy(b).into_owned(),
            Value::List(_) => String::new(),
        }
    }
}

/// Parses one response (line with inline literals) into top-level values.
pub fn parse_values(line: &[u8]) -> Option<Vec<Value>> {
    let mut p = Parser { s: line, i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip_spaces();
        if p.i >= p.s.len() || p.s[p.i] == b'\r' || p.s[p.i] == b'\n' {
            return Some(out);
        }
        out.push(p.value()?);
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        while self.i < self.s.len() && self.s[self.i] == b' ' {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        match *self.s.get(self.i)? {
            b'(' => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces();
                    match *self.s.get(self.i)? {
                        b')' => {
                            self.i += 1;
                            return Some(Value::List(items));
                        }
                        _ => items.push(self.value()?),
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match *self.s.get(self.i)? {
                        b'"' => {
                            self.i += 1;
                            return Some(Value::Str(out));
                        }
                        b'\\' => {
                            out.push(*self.s.get(self.i + 1)?);
                            self.i += 2;
                        }
                        c => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
            }
            b'{' | b'~' => {
                if self.s[self.i] == b'~' {
                    self.i += 1;
                }
                let close = self.i + self.s[self.i..].iter().position(|&b| b == b'}')?;
                let n: usize = std::str::from_utf8(&self.s[self.i + 1..close])
                    .ok()?
                    .trim_end_matches('+')
                    .parse()
                    .ok()?;
                let start = close + 3; // "}\r\n"
                let body = self.s.get(start..start + n)?.to_vec();
                self.i = start + n;
                Some(Value::Str(body))
            }
            _ => {
                let start = self.i;
                let mut depth = 0usize;
                while let Some(&c) = self.s.get(self.i) {
                    match c {
                        b'[' => depth += 1,
                        b']' => depth = depth.saturating_sub(1),
                        b' ' | b'(' | b')' | b'\r' | b'\n' if depth == 0 => break,
                        _ => {}
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
                Some(Value::Atom(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
        }
    }
}

/// A key/value list (FETCH items, STATUS items) as a map with upper-case keys.
fn pairs(items: &[Value]) -> BTreeMap<String, Value> {
    items
        .chunks(2)
        .filter(|kv| kv.len() == 2)
        .map(|kv| (kv[0].text().to_ascii_uppercase(), kv[1].clone()))
        .collect()
}

fn parse_fetch(line: &[u8]) -> Option<ServerMessage> {
    let v = parse_values(line)?;
    if v.len() < 4 || !v[2].is_atom("FETCH") {
        return None;
    }
    let Value::List(items) = &v[3] else {
        return None;
    };
    let map = pairs(items);
    let flags = match map.get("FLAGS")? {
        Value::List(f) => f
            .iter()
            .map(Value::text)
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .collect(),
        _ => return None,
    };
    let body = match map.get("BODY[]")? {
        Value::Str(b) => b.clone(),
        _ => return None,
    };
    Some(ServerMessage {
        uid: map.get("UID")?.text().parse().ok()?,
        flags,
        internaldate: map.get("INTERNALDATE")?.text(),
        size: map.get("RFC822.SIZE")?.text().parse().ok()?,
        body,
    })
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// How an account reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `tls = "implicit"` on the IMAPS port.
    Implicit,
    /// `tls = "starttls"` on the plain port.
    Starttls,
}

/// A scratch directory with a config file, archives and a clean environment
/// for the `imapbak` binary.
pub struct TestEnv {
    dir: tempfile::TempDir,
    passwords: RefCell<BTreeMap<String, String>>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("imapbak-test-")
            .tempdir()
            .expect("create a temp dir");
        TestEnv {
            dir,
            passwords: RefCell::new(BTreeMap::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    /// Writes `config.toml` (mode 0600).
    pub fn write_config(&self, toml: &str) {
        let path = self.config_path();
        fs::write(&path, toml).expect("write config.toml");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod config.toml");
    }

    /// Where account `name`'s archive goes.
    pub fn archive(&self, name: &str) -> PathBuf {
        self.path().join(format!("archive-{name}"))
    }

    /// The environment variable that carries account `name`'s password.
    pub fn password_var(name: &str) -> String {
        let up: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("IMAPBAK_TEST_PW_{up}")
    }

    /// A `[accounts.NAME]` table for `user` over implicit TLS; `extra` lines
    /// are appended to the table.
    pub fn account_toml(&self, name: &str, user: &User, extra: &str) -> String {
        self.account_toml_with(name, user, Tls::Implicit, extra)
    }

    /// Like `account_toml` with a chosen TLS mode.
    pub fn account_toml_with(&self, name: &str, user: &User, tls: Tls, extra: &str) -> String {
        self.account_toml_on(dovecot(), name, user, tls, extra)
    }

    /// Like `account_toml_with` for a user of the server `d` (e.g.
    /// [`dovecot_dot`], [`cyrus`], [`courier`]).
    pub fn account_toml_on(
        &self,
        d: &dyn ImapServer,
        name: &str,
        user: &User,
        tls: Tls,
        extra: &str,
    ) -> String {
        let (port, tls) = match tls {
            Tls::Implicit => (d.imaps_port(), "implicit"),
            Tls::Starttls => (d.imap_port(), "starttls"),
        };
        let var = Self::password_var(name);
        self.passwords
            .borrow_mut()
            .insert(var.clone(), user.password.clone());
        let mut t = format!(
            "[accounts.{name}]\n\
             host = \"127.0.0.1\"\n\
             port = {port}\n\
             tls = \"{tls}\"\n\
             user = {user_name}\n\
             password-env = \"{var}\"\n\
             ca-file = {cert}\n\
             archive = {archive}\n",
            user_name = toml_str(&user.name),
            cert = toml_str(&d.cert().display().to_string()),
            archive = toml_str(&self.archive(name).display().to_string()),
        );
        if !extra.is_empty() {
            t.push_str(extra.trim_end());
            t.push('\n');
        }
        t.push('\n');
        t
    }

    /// The `imapbak` binary with `--config <tempdir>/config.toml`, every
    /// `IMAPBAK_*` variable removed except the password variables of the
    /// accounts made here, HOME/XDG dirs inside the temp dir, NO_COLOR=1.
    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd())
    }

    /// `cmd()` as a plain `std::process::Command`, for runs that must be
    /// spawned and watched (or killed) rather than waited for.
    pub fn std_cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imapbak"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("IMAPBAK_") {
                cmd.env_remove(&key);
            }
        }
        for (var, pw) in self.passwords.borrow().iter() {
            cmd.env(var, pw);
        }
        let home = self.path().join("home");
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("NO_COLOR", "1")
            .env_remove("CLICOLOR_FORCE")
            .current_dir(self.path())
            .arg("--config")
            .arg(self.config_path());
        cmd
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => q.push_str(&format!("\\u{:04X}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

// ---------------------------------------------------------------------------
// Reading the archive
// ---------------------------------------------------------------------------

/// The decompressed content of one archived message file (one zstd frame).
pub fn read_zstd(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open `{}`: {e}", path.display()));
    zstd::decode_all(f).unwrap_or_else(|e| panic!("zstd-decode `{}`: {e}", path.display()))
}

/// Message files (`cur/` and `new/`) of one Maildir folder, sorted by name.
/// `folder` is the directory under `ARCHIVE/mail`: `""` for INBOX,
/// `.Archive.2024` for "Archive/2024".
pub fn folder_files(archive: &Path, folder: &str) -> Vec<PathBuf> {
    let base = archive.join("mail").join(folder);
    let mut files = Vec::new();
    for sub in ["cur", "new"] {
        let Ok(rd) = fs::read_dir(base.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

/// Every message file of the archive: (folder directory name, path).
pub fn archived_files(archive: &Path) -> Vec<(String, PathBuf)> {
    let mail = archive.join("mail");
    let mut folders = vec![String::new()];
    if let Ok(rd) = fs::read_dir(&mail) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push(name);
            }
        }
    }
    folders.sort();
    folders
        .into_iter()
        .flat_map(|f| {
            folder_files(archive, &f)
                .into_iter()
                .map(move |p| (f.clone(), p))
        })
        .collect()
}

/// The decompressed messages of one archive folder, in file-name order.
pub fn folder_messages(archive: &Path, folder: &str) -> Vec<Vec<u8>> {
    folder_files(archive, folder)
        .iter()
        .map(|p| read_zstd(p))
        .collect()
}

/// The Maildir flag letters of a message file name (after `:2,`).
pub fn maildir_flags(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.rsplit_once(":2,")
        .map(|(_, f)| f.to_string())
        .unwrap_or_default()
}

/// Waits for `child` and returns its exit status and peak resident set in
/// KiB: its own VmHWM from /proc, read until it exits. The high-water mark
/// only grows, so a read can only miss what the last few milliseconds
/// before the exit added; it never counts more than the process held.
/// (wait4(2)'s ru_maxrss would also count the test process's resident set
/// at fork: Linux carries the pre-exec high-water mark over exec, and it
/// grows as the suite runs.)
pub fn wait_with_peak_rss(child: &mut std::process::Child) -> (ExitStatus, u64) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
            if let Some(kib) = hwm {
                peak = peak.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return (status, peak);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True when `tool --version` runs; false (skip, with a message) outside
/// CI, a failure in CI. `installer` is the script of scripts/test.sh's
/// that installs it.
pub fn have_tool(tool: &str, installer: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is missing; scripts/test.sh installs it ({installer})"
        );
        eprintln!("skipped: `{tool}` is not installed (bash {installer} install)");
    }
    ok
}
