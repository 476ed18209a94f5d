//! `imapbak serve`: a private, read-only Dovecot over one or more archives,
//! so any mail client can browse and search a backup. No IMAP server of
//! ours: the archive is a Maildir a stock Dovecot serves as it is; this
//! command only writes the Dovecot configuration (under
//! `$XDG_STATE_HOME/imapbak/serve/`, never in the archive), runs Dovecot in
//! the foreground and stops it on Ctrl-C or SIGTERM.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{load_accounts, AccountArgs};
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::imap::tls::fingerprint_of;

/// Serve the archive read-only over IMAP to any mail client (a private Dovecot).
///
/// Starts a private Dovecot (found on PATH, or --dovecot) that serves the
/// archive read-only over IMAP with TLS, prints how to connect, and runs
/// until Ctrl-C or SIGTERM, which stop Dovecot and free the port. Connect
/// any mail client (Thunderbird, mutt, aerc, a phone) with the printed
/// settings: server, port, SSL/TLS (not STARTTLS), normal password, user
/// and password. Thunderbird: add a mail account, configure manually,
/// incoming IMAP with those settings, and confirm the security exception
/// after comparing the certificate's fingerprint with the printed one.
///
/// Read-only for real: Dovecot's ACL plugin grants only lookup and read, so
/// every mailbox opens READ-ONLY, flag changes and expunges have no effect,
/// and APPEND, COPY or MOVE into the archive, CREATE, DELETE and RENAME are
/// refused. Dovecot's config, log, index, cache, uidlist and subscriptions
/// files live under $XDG_STATE_HOME/imapbak/serve/ACCOUNT/ (the shared
/// config of several accounts in serve/.all/; sockets in a temp dir), never
/// in the archive. A pull may run while serve runs: reselect a mailbox to
/// see new mail.
///
/// Listens on 127.0.0.1 on a free port (the last run's when it is free)
/// unless --listen ADDR:PORT; any
/// address other than loopback prints a warning (the password is then all
/// that guards the mail). The TLS certificate is self-signed, made once per
/// archive and kept in the state directory, so a client accepts it once.
/// The password of each login is random, made on the first run and kept in
/// serve/ACCOUNT/password (delete it for a new one), or the first line
/// --password-command prints. With no --account, every configured
/// account is served, each as its own login (the account name).
///
/// Run as root, the mail is read as the archive's owner (Dovecot never
/// reads mail as root); an archive owned by root is refused: chown it to
/// the user who owns the backup. Needs Dovecot 2.3.12 or later with its
/// zlib, listescape and acl plugins (all in the stock packages).
///
/// Exit status: 0 stopped by Ctrl-C or SIGTERM; 2 no Dovecot, bad
/// configuration or an archive that cannot be served (nothing started); 4
/// this archive is already being served; 5 Dovecot stopped on its own.
#[derive(Debug, clap::Args)]
pub struct ServeCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    /// Address and port to listen on [default: 127.0.0.1 and a free port]
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,

    /// Command whose first line of output is the password of every login
    /// [default: a random password per account, kept and printed]
    #[arg(long, value_name = "CMD")]
    password_command: Option<String>,

    /// The Dovecot binary [default: `dovecot` on PATH]
    #[arg(long, value_name = "PATH")]
    dovecot: Option<PathBuf>,

    /// Print the connection settings as JSON on stdout (one line)
    #[arg(long)]
    json: bool,
}

/// What a client needs to connect, printed once Dovecot answers.
#[derive(Debug, Serialize)]
struct Settings {
    host: String,
    port: u16,
    /// Always `implicit`: TLS from the first byte (Thunderbird: "SSL/TLS").
    tls: &'static str,
    /// The self-signed certificate (PEM) the server presents.
    certificate: String,
    fingerprint: String,
    logins: Vec<Login>,
    /// The passwords came from --password-command (not printed for people).
    #[serde(skip)]
    password_from_command: bool,
    /// Dovecot's log and generated configuration.
    log: String,
    config: String,
    pid: u32,
}

#[derive(Debug, Serialize)]
struct Login {
    account: String,
    user: String,
    password: String,
    archive: String,
}

/// One account as Dovecot will see it.
struct Served {
    account: Account,
    password: String,
    /// The login's home: `mail` (a symlink to ARCHIVE/mail), `index/`,
    /// `control/`, `volatile/`.
    home: PathBuf,
    /// The archive's folders as last seen by [`sync_control`].
    folders: BTreeSet<String>,
}

/// Set by the signal handler; the main loop polls it.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

pub fn run(cmd: ServeCmd, config: Option<&Path>) -> Result<ExitCode> {
    let dovecot = find_dovecot(cmd.dovecot.as_deref())?;
    check_version(&dovecot)?;
    let accounts = load_accounts(config, &cmd.accounts)?;
    let (uid, gid) = mail_owner(&accounts)?;
    let root = unsafe { libc::geteuid() } == 0;

    let serve_dir = state_home()?.join("imapbak").join("serve");
    if serve_dir.to_string_lossy().contains([':', '%', '\n']) {
        bail!(
            "the state directory `{}` contains `:`, `%` or a newline, which Dovecot's configuration cannot hold\nhint: set XDG_STATE_HOME to a plainer path",
            serve_dir.display()
        );
    }
    // One account: everything in its own directory. Several: the shared
    // instance (config, log, certificate) in `.all` (no account name starts
    // with a dot), each login's index files still in its account's directory.
    let instance = match accounts.as_slice() {
        [one] => serve_dir.join(&one.name),
        _ => serve_dir.join(".all"),
    };
    // Searchable (not readable) by Dovecot's unprivileged processes.
    make_dirs(&serve_dir, 0o755)?;
    make_dirs(&instance, 0o711)?;
    let lock_path = instance.join("lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open `{}`", lock_path.display()))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "error: `{}` is already being served by another `imapbak serve`\nhint: stop that one first (its settings are in `{}`)",
            instance.display(),
            instance.join("dovecot.conf").display()
        );
        return Ok(ExitCode::Locked);
    }

    let shared_password = match &cmd.password_command {
        Some(c) => Some(crate::config::PasswordSource::Command(c.clone()).read("--password")?),
        None => None,
    };
    let mut served = Vec::new();
    for account in accounts {
        if account.name.contains([':', ' ', '\t', '%', '\\', '"']) {
            bail!(
                "account name `{}` cannot be a Dovecot login (it contains `:`, `%`, `\\`, a quote or a space)\nhint: serve the other accounts with --account",
                account.name
            );
        }
        let account_dir = serve_dir.join(&account.name);
        make_dirs(&account_dir, 0o711)?;
        let password = match &shared_password {
            Some(p) => p.clone(),
            None => kept_password(&account_dir.join("password"))?,
        };
        let home = prepare_home(&account_dir, &account, uid, gid, root)?;
        let mut folders = BTreeSet::new();
        sync_control(
            &account.archive.join("mail"),
            &home,
            (uid, gid, root),
            &mut folders,
        )?;
        served.push(Served {
            account,
            password,
            home,
            folders,
        });
    }

    let (cert, fingerprint) = certificate(&instance.join("tls"))?;
    let addr = match cmd.listen {
        Some(a) => a,
        None => remembered_port(&instance.join("port"))?,
    };
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr}, not on loopback: anyone who can reach it and knows the password can read this mail"
        );
    }

    // Sockets have a 108-byte path limit; a temp dir keeps them short.
    let runtime = std::env::temp_dir().join(format!("imapbak-serve-{}", std::process::id()));
    let _ = fs::remove_dir_all(&runtime);
    let _cleanup = RemoveOnDrop(runtime.clone());
    let log_dir = instance.join("log");
    make_dirs(&log_dir, 0o700)?;
    let log = log_dir.join("dovecot.log");
    let conf = write_config(&ConfigInput {
        instance: &instance,
        runtime: &runtime,
        log: &log,
        addr,
        served: &served,
        uid,
        gid,
        root,
    })?;

    install_signal_handlers();
    let mut child = spawn_dovecot(&dovecot, &conf, &log)?;
    let pid = child.id();
    let mut guard = StopOnDrop(Some(pid));
    match wait_ready(&mut child, addr, &log) {
        Ok(true) => {}
        Ok(false) => {
            // Ctrl-C before Dovecot answered: a clean stop all the same.
            stop(&mut child);
            guard.0 = None;
            return Ok(ExitCode::Success);
        }
        Err(e) => {
            stop(&mut child);
            guard.0 = None;
            return Err(e);
        }
    }

    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let settings = Settings {
        host,
        port: addr.port(),
        tls: "implicit",
        password_from_command: cmd.password_command.is_some(),
        certificate: cert.display().to_string(),
        fingerprint,
        logins: served
            .iter()
            .map(|s| Login {
                account: s.account.name.clone(),
                user: s.account.name.clone(),
                password: s.password.clone(),
                archive: s.account.archive.display().to_string(),
            })
            .collect(),
        log: log.display().to_string(),
        config: conf.display().to_string(),
        pid,
    };
    print_settings(&settings, cmd.json)?;

    // Serve until a signal or until Dovecot dies; keep the keyword links
    // up to date for folders a concurrent pull creates.
    let mut last_scan = Instant::now();
    let code = loop {
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            break ExitCode::Success;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "error: dovecot exited unexpectedly ({status})\nhint: see `{}`",
                log.display()
            );
            break ExitCode::Internal;
        }
        if last_scan.elapsed() >= Duration::from_secs(2) {
            for s in &mut served {
                let mail = s.account.archive.join("mail");
                if let Err(e) = sync_control(&mail, &s.home, (uid, gid, root), &mut s.folders) {
                    log::warn!("account `{}`: {e:#}", s.account.name);
                }
            }
            last_scan = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop(&mut child);
    guard.0 = None;
    if !cmd.json {
        eprintln!("stopped");
    }
    drop(lock);
    Ok(code)
}

/// Kills Dovecot if `run` leaves early through an error.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

/// `dovecot` from `--dovecot` or PATH; when there is none, how to install it.
fn find_dovecot(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if is_executable(p) {
            return Ok(p.to_path_buf());
        }
        bail!(
            "`{}` is not an executable file\nhint: pass the path of the `dovecot` binary, e.g. /usr/sbin/dovecot",
            p.display()
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("dovecot");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    // Debian puts it in /usr/sbin, which a user's PATH often lacks.
    let elsewhere = [
        "/usr/sbin/dovecot",
        "/usr/local/sbin/dovecot",
        "/opt/homebrew/sbin/dovecot",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| is_executable(p));
    let found = match elsewhere {
        Some(p) => format!(
            "\nhint: found `{}`: add its directory to PATH or pass --dovecot {}",
            p.display(),
            p.display()
        ),
        None => String::new(),
    };
    bail!(
        "dovecot is not on PATH; `imapbak serve` runs a private Dovecot (2.3.12 or later){found}\n\
         hint: install it:\n  \
         Debian/Ubuntu: sudo apt install dovecot-imapd\n  \
         Fedora:        sudo dnf install dovecot\n  \
         Arch:          sudo pacman -S dovecot\n  \
         Homebrew:      brew install dovecot\n\
         no system-wide service is needed: serve starts its own"
    )
}

/// The configuration written here is Dovecot 2.3's: 2.3.12 is the first to
/// read zstd mail files, and 2.4 changed the configuration language.
fn check_version(dovecot: &Path) -> Result<()> {
    let out = Command::new(dovecot)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{} --version`", dovecot.display()))?;
    version_fits(dovecot, &String::from_utf8_lossy(&out.stdout))
}

fn version_fits(dovecot: &Path, text: &str) -> Result<()> {
    let version = text.split_whitespace().next().unwrap_or("");
    let parts: Vec<u32> = version
        .split('.')
        .take(3)
        .map_while(|p| p.parse().ok())
        .collect();
    match parts.as_slice() {
        [2, 3, patch, ..] if *patch >= 12 => Ok(()),
        [2, 3, ..] | [2, 0..=2, ..] | [0..=1, ..] => bail!(
            "`{}` is Dovecot {version}; serving zstd-compressed mail needs 2.3.12 or later\nhint: install a newer Dovecot, or pass --dovecot PATH",
            dovecot.display()
        ),
        [_, ..] => bail!(
            "`{}` is Dovecot {version}; `imapbak serve` writes a Dovecot 2.3 configuration (2.4 changed the format)\nhint: pass --dovecot PATH to a Dovecot 2.3 (2.3.12 or later)",
            dovecot.display()
        ),
        [] => bail!(
            "`{}` does not look like Dovecot (`--version` printed `{}`)\nhint: pass --dovecot PATH to the dovecot binary",
            dovecot.display(),
            text.trim()
        ),
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The uid/gid Dovecot reads the mail as. As root: the archives' owner.
/// Uid 0 does not work, measured on Dovecot 2.3.19: a passwd-file userdb
/// line with uid 0 fails every login ("User u has invalid UID '0'"), and
/// with the uid left empty plus `mail_uid = root`, `first_valid_uid = 0`,
/// the login succeeds but the imap process dies with "Couldn't drop
/// privileges: Mail access not allowed for root". So a root-owned archive
/// (0700/0600, readable by root only) cannot be served, and is refused with
/// a hint. Not root: ourselves, and Dovecot runs without changing users.
fn mail_owner(accounts: &[Account]) -> Result<(u32, u32)> {
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut owner: Option<(u32, u32, &Path)> = None;
    for a in accounts {
        let mail = a.archive.join("mail");
        let meta = fs::metadata(&mail).with_context(|| {
            format!(
                "account `{}` has no archive at `{}`\nhint: run `imapbak pull --account {}` first",
                a.name,
                mail.display(),
                a.name
            )
        })?;
        if euid != 0 {
            continue;
        }
        if meta.uid() == 0 {
            bail!(
                "the archive `{}` is owned by root, and Dovecot never reads mail as root\nhint: chown -R USER: {} (the user who should own the backup), then serve again; run pull as that user too",
                a.archive.display(),
                a.archive.display()
            );
        }
        match owner {
            Some((u, _, p)) if u != meta.uid() => bail!(
                "the archives `{}` and `{}` have different owners; one Dovecot reads all mail as one user\nhint: serve them one at a time with --account",
                p.display(),
                a.archive.display()
            ),
            Some(_) => {}
            None => owner = Some((meta.uid(), meta.gid(), &a.archive)),
        }
    }
    Ok(match owner {
        Some((u, g, _)) => (u, g),
        None => (euid, egid),
    })
}

fn state_home() -> Result<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| directories::BaseDirs::new().map(|b| b.home_dir().join(".local").join("state")))
        .context("cannot find the state directory\nhint: set XDG_STATE_HOME")
}

fn make_dirs(dir: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create `{}`", dir.display()))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown `{}`", path.display()))
}

/// The login's home: `mail` links to the archive's Maildir, and Dovecot's
/// own files go to `index/`, `control/` and `volatile/` beside it.
fn prepare_home(
    account_dir: &Path,
    a: &Account,
    uid: u32,
    gid: u32,
    root: bool,
) -> Result<PathBuf> {
    make_dirs(account_dir, 0o711)?;
    let home = &account_dir.join("home");
    make_dirs(home, 0o700)?;
    let mail = home.join("mail");
    let target = a.archive.join("mail");
    let target = target
        .canonicalize()
        .with_context(|| format!("cannot resolve `{}`", target.display()))?;
    if fs::read_link(&mail).ok().as_deref() != Some(target.as_path()) {
        let _ = fs::remove_file(&mail);
        std::os::unix::fs::symlink(&target, &mail)
            .with_context(|| format!("cannot link `{}`", mail.display()))?;
    }
    for sub in ["index", "control", "volatile"] {
        make_dirs(&home.join(sub), 0o700)?;
    }
    if root {
        // Dovecot's mail process runs as the archive's owner and writes here.
        for p in walkdir::WalkDir::new(home)
            .into_iter()
            .filter_entry(|e| e.path() != mail)
        {
            let p = p.with_context(|| format!("cannot read `{}`", home.display()))?;
            chown(p.path(), uid, gid)?;
        }
        chown(&mail, uid, gid)?;
        for dir in home.ancestors().skip(1) {
            if !searchable_by(dir, uid, gid) {
                bail!(
                    "`{}` is not searchable by uid {uid}, which Dovecot reads the archive as\nhint: set XDG_STATE_HOME to a directory that user can reach, e.g. /var/tmp/imapbak-state",
                    dir.display()
                );
            }
        }
        for dir in target.ancestors() {
            if !searchable_by(dir, uid, gid) {
                bail!(
                    "`{}` is not searchable by uid {uid}, the archive's owner\nhint: chmod o+x `{}`, or move the archive",
                    dir.display(),
                    dir.display()
                );
            }
        }
    }
    Ok(home.to_path_buf())
}

fn searchable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    let Ok(m) = fs::metadata(dir) else {
        return false;
    };
    let mode = m.mode();
    if m.uid() == uid {
        mode & 0o100 != 0
    } else if m.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Keeps a login's control directory in step with its archive, at start
/// and every few seconds (a pull may add folders meanwhile):
///
/// - Dovecot reads a folder's `dovecot-keywords` from its control
///   directory, which is outside the archive: each archived file is linked
///   there (Dovecot replaces a file it writes by a rename, so it could never
///   write through the link, and the ACLs keep it from writing keywords at
///   all). INBOX's control directory is `control/.INBOX`.
/// - Every folder is subscribed (`control/subscriptions`, Dovecot's v2
///   format: one mailbox a line, levels as stored, separated by a tab), so
///   clients that show subscribed folders only (Thunderbird's default) show
///   the whole archive. Rewritten only when the set of folders changes.
fn sync_control(
    mail: &Path,
    home: &Path,
    owner: (u32, u32, bool),
    known: &mut BTreeSet<String>,
) -> Result<()> {
    let (uid, gid, root) = owner;
    let control = home.join("control");
    let rd = fs::read_dir(mail).with_context(|| format!("cannot read `{}`", mail.display()))?;
    let mut folders = BTreeSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.')
            && name != "."
            && name != ".."
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            folders.insert(name);
        }
    }
    let all = std::iter::once((String::new(), ".INBOX".to_string()))
        .chain(folders.iter().map(|f| (f.clone(), f.clone())));
    for (folder, control_name) in all {
        let source = mail.join(&folder).join("dovecot-keywords");
        if !source.is_file() {
            continue;
        }
        let dir = control.join(&control_name);
        let link = dir.join("dovecot-keywords");
        if fs::read_link(&link).ok().as_deref() == Some(source.as_path()) {
            continue;
        }
        if !dir.is_dir() {
            make_dirs(&dir, 0o700)?;
            if root {
                chown(&dir, uid, gid)?;
            }
        }
        let tmp = dir.join("dovecot-keywords.imapbak-tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&source, &tmp)
            .with_context(|| format!("cannot link `{}`", tmp.display()))?;
        if root {
            chown(&tmp, uid, gid)?;
        }
        fs::rename(&tmp, &link)
            .with_context(|| format!("cannot rename to `{}`", link.display()))?;
    }
    if &folders != known {
        let mut text = String::from("V\t2\n\nINBOX\n");
        for f in &folders {
            text.push_str(&f[1..].replace('.', "\t"));
            text.push('\n');
        }
        let path = control.join("subscriptions");
        write_private(&path, text.as_bytes())?;
        if root {
            chown(&path, uid, gid)?;
        }
        *known = folders;
    }
    Ok(())
}

/// The account's password for serve: made once, kept 0600 beside the
/// certificate's key so a client that saved it keeps working (delete the
/// file for a new one).
fn kept_password(file: &Path) -> Result<String> {
    if let Ok(text) = fs::read_to_string(file) {
        let pw = text.trim();
        if !pw.is_empty() {
            return Ok(pw.to_string());
        }
    }
    let pw = random_password()?;
    write_private(file, format!("{pw}\n").as_bytes())?;
    Ok(pw)
}

/// 20 characters of letters and digits without the look-alikes 0 O 1 l I
/// (about 117 bits), from the kernel's CSPRNG.
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut f = fs::File::open("/dev/urandom").context("cannot open `/dev/urandom`")?;
    let mut out = String::new();
    let mut buf = [0u8; 64];
    while out.len() < 20 {
        std::io::Read::read_exact(&mut f, &mut buf).context("cannot read `/dev/urandom`")?;
        for &b in &buf {
            // Rejection sampling keeps every character equally likely.
            let limit = 256 - 256 % ALPHABET.len();
            if (b as usize) < limit && out.len() < 20 {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// The archive's self-signed certificate, made on first use and kept in
/// the state directory so a client accepts it once. Made with rcgen
/// (pure Rust, no `openssl` binary needed) as an end-entity certificate:
/// `openssl req -x509` marks it CA:TRUE, which some clients refuse.
fn certificate(dir: &Path) -> Result<(PathBuf, String)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !(cert.is_file() && key.is_file()) {
        make_dirs(dir, 0o700)?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .context("cannot make the TLS certificate")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imapbak serve");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 12, 31);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let pair = rcgen::KeyPair::generate().context("cannot make the TLS key")?;
        let signed = params
            .self_signed(&pair)
            .context("cannot sign the TLS certificate")?;
        write_private(&key, pair.serialize_pem().as_bytes())?;
        write_private(&cert, signed.pem().as_bytes())?;
    }
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let der = CertificateDer::from_pem_file(&cert)
        .with_context(|| format!("cannot read the certificate `{}`", cert.display()))?;
    Ok((cert, fingerprint_of(&der)))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create `{}`", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename to `{}`", path.display()))
}

/// 127.0.0.1 and the port of the last run when it is free (so a mail
/// client set up once keeps working), else a free one, remembered in `file`.
fn remembered_port(file: &Path) -> Result<SocketAddr> {
    let last = fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse::<u16>().ok())
        .filter(|&p| p != 0);
    let listener = last
        .and_then(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).ok())
        .map_or_else(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)), Ok)
        .context("cannot find a free port on 127.0.0.1")?;
    let addr = listener
        .local_addr()
        .context("cannot find a free port on 127.0.0.1")?;
    if last != Some(addr.port()) {
        write_private(file, format!("{}\n", addr.port()).as_bytes())?;
    }
    Ok(addr)
}

struct ConfigInput<'a> {
    instance: &'a Path,
    runtime: &'a Path,
    log: &'a Path,
    addr: SocketAddr,
    served: &'a [Served],
    uid: u32,
    gid: u32,
    root: bool,
}

/// Writes `dovecot.conf`, `passwd` and `acl` into the instance directory.
fn write_config(c: &ConfigInput) -> Result<PathBuf> {
    let state = c.instance.join("state");
    make_dirs(&state, 0o700)?;
    let tls = c.instance.join("tls");

    // Passwords as unsalted SHA-256: they are random and used for one run.
    let mut passwd = String::new();
    for s in c.served {
        let hash = hex::encode(Sha256::digest(s.password.as_bytes()));
        passwd.push_str(&format!(
            "{}:{{SHA256.HEX}}{hash}:{}:{}::{}::\n",
            s.account.name,
            c.uid,
            c.gid,
            s.home.display()
        ));
    }
    let passwd_path = c.instance.join("passwd");
    write_private(&passwd_path, passwd.as_bytes())?;
    // Only lookup and read, on every mailbox; per-mailbox ACL files (which
    // would live in the archive) are never consulted.
    let acl_path = c.instance.join("acl");
    write_private(&acl_path, b"* owner lr\n* anyone lr\n")?;
    set_mode(&acl_path, 0o644)?;

    let listen = match c.addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let dh = Path::new("/usr/share/dovecot/dh.pem");
    let dh_line = if dh.is_file() {
        format!("ssl_dh = <{}", dh.display())
    } else {
        // Without DH parameters, keep Dovecot off the DHE suites.
        "ssl_cipher_list = ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL".to_string()
    };
    let users = if c.root {
        // Debian/Fedora/Arch packages create `dovecot` and `dovenull`.
        format!(
            "first_valid_uid = {uid}\nlast_valid_uid = {uid}\nfirst_valid_gid = 1\n",
            uid = c.uid
        )
    } else {
        // Rootless: every process runs as ourselves; nothing can chroot.
        let name = user_name(c.uid)?;
        let group = group_name(c.gid)?;
        format!(
            "default_internal_user = {name}\ndefault_internal_group = {group}\ndefault_login_user = {name}\nfirst_valid_uid = {uid}\nlast_valid_uid = {uid}\n\
             service anvil {{\n  chroot =\n}}\nservice imap-login {{\n  chroot =\n}}\n",
            uid = c.uid
        )
    };
    let conf = format!(
        "# Written by `imapbak serve` at every start; edits are lost.\n\
         # A private, read-only Dovecot over the archive(s) below.\n\
         base_dir = {runtime}\n\
         state_dir = {state}\n\
         instance_name = imapbak-serve-{pid}\n\
         log_path = {log}\n\
         protocols = imap\n\
         listen = {listen}\n\
         {users}\
         ssl = required\n\
         ssl_cert = <{tls}/cert.pem\n\
         ssl_key = <{tls}/key.pem\n\
         {dh_line}\n\
         ssl_min_protocol = TLSv1.2\n\
         auth_mechanisms = plain login\n\
         # logins are account names: `staff/joe` for a user of a table\n\
         auth_username_chars =\n\
         # index, cache, uidlist, keywords and subscriptions go outside the archive\n\
         mail_location = maildir:~/mail:INDEX=~/index:CONTROL=~/control:VOLATILEDIR=~/volatile\n\
         # zlib: the archive's zstd files; listescape: names with '.', '/' or '\\';\n\
         # acl: read-only\n\
         mail_plugins = $mail_plugins acl zlib listescape\n\
         mail_max_userip_connections = 50\n\
         # a pull adds folders behind Dovecot's back: list the tree, not a cache\n\
         mailbox_list_index = no\n\
         namespace inbox {{\n  inbox = yes\n  separator = /\n}}\n\
         passdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
         userdb {{\n  driver = passwd-file\n  args = {passwd}\n}}\n\
         plugin {{\n  acl = vfile:{acl}\n  acl_globals_only = yes\n}}\n\
         protocol imap {{\n  mail_plugins = $mail_plugins imap_acl imap_zlib\n}}\n\
         service imap-login {{\n  inet_listener imap {{\n    port = 0\n  }}\n  inet_listener imaps {{\n    address = {listen}\n    port = {port}\n    ssl = yes\n  }}\n}}\n\
         service stats {{\n  unix_listener stats-writer {{\n    mode = 0666\n  }}\n}}\n",
        runtime = c.runtime.display(),
        state = state.display(),
        pid = std::process::id(),
        log = c.log.display(),
        tls = tls.display(),
        passwd = passwd_path.display(),
        acl = acl_path.display(),
        port = c.addr.port(),
    );
    let path = c.instance.join("dovecot.conf");
    write_private(&path, conf.as_bytes())?;
    if c.root {
        // The auth process runs as `dovecot` and reads the passwd-file.
        // (Without a `dovecot` group, world-readable: the hashes are of
        // random one-run passwords.)
        match group_id("dovecot") {
            Some(g) => {
                std::os::unix::fs::chown(&passwd_path, Some(0), Some(g))
                    .with_context(|| format!("cannot chown `{}`", passwd_path.display()))?;
                set_mode(&passwd_path, 0o640)?;
            }
            None => set_mode(&passwd_path, 0o644)?,
        }
    }
    Ok(path)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod `{}`", path.display()))
}

fn user_name(uid: u32) -> Result<String> {
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        bail!("uid {uid} has no user name, which Dovecot needs\nhint: run imapbak as a user listed in /etc/passwd");
    }
    Ok(unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
        .to_string_lossy()
        .into_owned())
}

fn group_name(gid: u32) -> Result<String> {
    let gr = unsafe { libc::getgrgid(gid) };
    if gr.is_null() {
        bail!("gid {gid} has no group name, which Dovecot needs\nhint: run imapbak with a primary group listed in /etc/group");
    }
    Ok(unsafe { std::ffi::CStr::from_ptr((*gr).gr_name) }
        .to_string_lossy()
        .into_owned())
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        None
    } else {
        Some(unsafe { (*gr).gr_gid })
    }
}

fn spawn_dovecot(dovecot: &Path, conf: &Path, log: &Path) -> Result<Child> {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open `{}`", log.display()))?;
    let mut cmd = Command::new(dovecot);
    cmd.arg("-F")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Its own process group: Ctrl-C reaches us only, and we stop the
        // whole group (master and children) in one kill.
        .process_group(0);
    #[cfg(target_os = "linux")]
    unsafe {
        // Dies with us even if we are SIGKILLed.
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot run `{}`", dovecot.display()))
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// True once Dovecot accepts connections, false if a signal came first.
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> Result<bool> {
    let probe = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for dovecot")? {
            bail!(
                "dovecot did not start ({status}); its log ends:\n{}\nhint: see `{}`",
                log_tail(log),
                log.display()
            );
        }
        if TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            return Ok(true);
        }
        if SIGNAL.load(Ordering::SeqCst) != 0 {
            return Ok(false);
        }
        if Instant::now() > deadline {
            bail!(
                "dovecot did not answer on {addr}; its log ends:\n{}\nhint: see `{}`",
                log_tail(log),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to the master (it stops its children), then SIGKILL to
/// whatever of its group is left after 10 s.
fn stop(child: &mut Child) {
    let pid = child.id() as i32;
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
    // Exit only once the group is gone (killed children linger until reaped).
    let deadline = Instant::now() + Duration::from_secs(3);
    while unsafe { libc::kill(-pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_settings(s: &Settings, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, &crate::report::json_value(s)?)?;
        writeln!(out)?;
    } else {
        writeln!(out, "serving read-only over IMAP (Dovecot pid {})", s.pid)?;
        writeln!(out, "  server       {}", s.host)?;
        writeln!(out, "  port         {}", s.port)?;
        writeln!(
            out,
            "  security     SSL/TLS (implicit TLS, not STARTTLS), normal password"
        )?;
        writeln!(out, "  certificate  {} (self-signed)", s.certificate)?;
        writeln!(out, "  fingerprint  {}", s.fingerprint)?;
        for l in &s.logins {
            let password = if s.password_from_command {
                "from --password-command"
            } else {
                &l.password
            };
            writeln!(
                out,
                "  user         {}   password {password}   ({})",
                l.user, l.archive
            )?;
        }
        writeln!(out, "  log          {}", s.log)?;
        writeln!(out, "Ctrl-C stops it.")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_takes_dovecot_2_3_12_to_2_3_x_only() {
        let d = Path::new("/usr/sbin/dovecot");
        assert!(version_fits(d, "2.3.19.1 (9b53102964)\n").is_ok());
        assert!(version_fits(d, "2.3.12").is_ok());
        let old = version_fits(d, "2.3.7.2 (3c910f64b)").unwrap_err();
        assert!(format!("{old:#}").contains("2.3.12 or later"));
        let new = version_fits(d, "2.4.1-4 (7d8c0e5759)").unwrap_err();
        assert!(format!("{new:#}").contains("2.4 changed"));
        assert!(version_fits(d, "").is_err());
    }

    #[test]
    fn random_passwords_are_20_unambiguous_characters_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 20);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() && !"0O1lI".contains(c)));
        assert_ne!(a, b);
    }
}
