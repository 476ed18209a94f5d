//! `imapbak verify`: is the archive whole? Reads every message file (in
//! parallel), checks the journal against the tree, and with `--server`
//! compares the server's UID/size lists with the archive. Never takes the
//! lock and never writes, so it is safe while a pull runs (a message
//! written meanwhile may show up as unjournaled for that one run).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use super::{runtime, AccountArgs, Connector};
use crate::archive::verify::{
    check_files, compare_server, plan_folder, FileCheck, Problem, ServerDiff,
};
use crate::archive::view::{folder_dirs, read_folder, FolderView};
use crate::archive::Archive;
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::progress::{Bars, Progress};
use crate::report::human_bytes;
use crate::sync::gmail::{self, view::display_label, view::GmailView};
use crate::sync::mailboxes::{choose_mailboxes_in, Naming};
use crate::sync::pull::connect_error;
use crate::sync::remote::Remote;

const LONG_HELP: &str = "\
     Reads every message file: it must be one whole zstd frame that decompresses \
     to exactly the size in its name and to the SHA-256 recorded at pull time. \
     Also checks that the journal and the tree agree (files without a journal \
     entry, entries without a file) and that nothing foreign sits in cur/ or \
     new/. Prints each problem as `PATH: what is wrong`, then a summary; exits 1 \
     when anything is wrong. Reads only: takes no lock, changes nothing. A file \
     with several names (a Gmail archive's label folders hold links to All \
     Mail's files) is read once, under All Mail, and a problem with it names \
     the message's labels.\n\n\
     With --server, also lists each mailbox's UIDs and sizes on the server (no \
     message is downloaded) and reports every message the server holds that the \
     archive does not (exit 1), sizes that differ (exit 1), and, for information \
     only, how many archived messages the server no longer has. When the \
     server cannot be reached, the files are checked all the same and the \
     connection failure is reported after them (exit 3 for one account).\n\n\
     With --repair, each damaged message file (kinds damaged, size, hash) is \
     moved out of cur/ or new/ into the archive's state/damaged/FOLDER/ (never \
     deleted), under the archive's lock, so the next pull fetches that message \
     again if the server still has it. The run still exits 1: something was \
     wrong.\n\n\
     Each problem, and each account or server error, is a line on stderr; the \
     summary of each account (files read, problems, the server comparison, \
     what --repair moved) is on stdout, or the JSON with --json.";

/// Check that every archived message is whole (optionally against the server).
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct VerifyCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    #[command(flatten)]
    users: super::UserArgs,

    /// Also compare with the server's UID and size lists (no bodies are downloaded)
    #[arg(long)]
    server: bool,

    /// Print the result as JSON on stdout
    #[arg(long)]
    json: bool,

    /// Move damaged message files into state/damaged/ (never deleting
    /// them), so the next pull fetches those messages again
    #[arg(long)]
    repair: bool,
}

/// `verify --json`.
#[derive(Debug, Default, Serialize)]
struct VerifyReport {
    accounts: Vec<AccountVerify>,
    /// Problems in all accounts, server differences included.
    problems: u64,
    exit_code: i32,
}

#[derive(Debug, Default, Serialize)]
struct AccountVerify {
    account: String,
    archive: String,
    /// Set when the account could not be checked at all.
    error: Option<String>,
    mailboxes: u64,
    /// Message files read: each file once, whatever its number of names
    /// (a Gmail archive's label folders hold links to All Mail's files).
    files: u64,
    /// Other names of those files (Gmail label links), not read again.
    links: u64,
    /// Their uncompressed size.
    bytes: u64,
    problems: Vec<Problem>,
    /// With --repair: each damaged file moved, `from` and `to`.
    repaired: Vec<Repaired>,
    /// With --server: one entry per server mailbox compared.
    server: Option<Vec<ServerMailbox>>,
    /// With --server: set when the server could not be compared at all
    /// (the files were checked all the same).
    server_error: Option<String>,
    #[serde(skip)]
    code: Option<ExitCode>,
    /// A file read once -> its other names (moved with it by --repair).
    #[serde(skip)]
    other_names: HashMap<PathBuf, Vec<PathBuf>>,
}

#[derive(Debug, Serialize)]
struct Repaired {
    from: std::path::PathBuf,
    to: std::path::PathBuf,
}

#[derive(Debug, Default, Serialize)]
struct ServerMailbox {
    mailbox: String,
    folder: String,
    uidvalidity: u32,
    /// Messages on the server.
    messages: u64,
    #[serde(flatten)]
    diff: ServerDiff,
    /// Set when this mailbox could not be compared.
    error: Option<String>,
}

impl AccountVerify {
    fn problem_count(&self) -> u64 {
        let server: u64 = self
            .server
            .iter()
            .flatten()
            .map(|m| {
                (m.diff.not_archived.len() + m.diff.size_differs.len()) as u64
                    + u64::from(m.error.is_some())
            })
            .sum();
        self.problems.len() as u64
            + server
            + u64::from(self.error.is_some())
            + u64::from(self.server_error.is_some())
    }

    fn exit_code(&self) -> ExitCode {
        match self.code {
            Some(c) => c,
            None if self.problem_count() > 0 => ExitCode::Partial,
            None => ExitCode::Success,
        }
    }
}

pub fn run(cmd: VerifyCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let accounts = super::load_accounts_scoped(config, &cmd.accounts, &cmd.users)?;
    let progress: Arc<dyn Progress> = Arc::from(Bars::for_terminal(cmd.json));
    let mut report = VerifyReport::default();
    for account in accounts {
        // A user whose name cannot be archived: refused by name, the
        // others are checked.
        let account = match account {
            Ok(a) => a,
            Err(refused) => {
                report.accounts.push(AccountVerify {
                    account: refused.account,
                    error: Some(crate::report::error_text(&refused.error)),
                    code: Some(ExitCode::Usage),
                    ..Default::default()
                });
                continue;
            }
        };
        let mut av = verify_archive(&account, &*progress);
        if cmd.repair && av.error.is_none() {
            repair(&account, &mut av);
        }
        if cmd.server && av.error.is_none() {
            verify_server(&account, &mut av);
        }
        report.accounts.push(av);
    }
    drop(progress);
    let code = ExitCode::for_accounts(report.accounts.iter().map(AccountVerify::exit_code));
    report.problems = report
        .accounts
        .iter()
        .map(AccountVerify::problem_count)
        .sum();
    report.exit_code = code.code();
    let (problems, summary) = human(&report);
    eprint!("{problems}");
    if cmd.json {
        println!("{}", crate::report::json_text(&report)?);
    } else {
        print!("{summary}");
    }
    Ok(code)
}

/// Checks one account's archive (tree, journal, every file).
fn verify_archive(account: &Account, progress: &dyn Progress) -> AccountVerify {
    let mut av = AccountVerify {
        account: account.name.clone(),
        archive: account.archive.display().to_string(),
        ..Default::default()
    };
    let archive = Archive::at(&account.archive);
    if let Some(why) = archive.missing() {
        av.error = Some(why);
        av.code = Some(ExitCode::Usage);
        return av;
    }
    let dirs = match folder_dirs(&archive) {
        Ok(d) => d,
        Err(e) => {
            av.error = Some(e.to_string());
            return av;
        }
    };
    let gmail = GmailView::read(&archive).ok().flatten();
    // All Mail first, so a Gmail message is read and reported under it.
    let mut dirs = dirs;
    if let Some(g) = &gmail {
        dirs.sort_by_key(|d| !g.is_all_mail(d));
    }
    let mut checks: Vec<FileCheck> = Vec::new();
    for dir in dirs {
        match read_folder(&archive, &dir) {
            Ok(view) => {
                av.mailboxes += 1;
                let (problems, c) = plan_folder(&view);
                av.problems.extend(problems);
                checks.extend(c);
            }
            Err(e) => av.problems.push(Problem {
                path: archive.mail_dir().join(&dir),
                kind: "unreadable",
                detail: e.to_string(),
            }),
        }
    }
    let checks = once_per_file(checks, &mut av.other_names);
    av.links = av.other_names.values().map(|v| v.len() as u64).sum();
    av.files = checks.len() as u64;
    av.bytes = checks.iter().map(|c| c.size).sum();
    let label = format!("verify {}", account.name);
    progress.mailbox_started(&label, av.files, av.bytes);
    // At least four readers, so the disk is kept busy while a core hashes.
    let threads = crate::archive::search::default_threads().max(4);
    av.problems.extend(check_files(&checks, threads, &|size| {
        progress.message_written(&label, size)
    }));
    progress.mailbox_finished(&label);
    if let Some(g) = &gmail {
        // A damaged Gmail message is damaged under every label it has.
        for p in av.problems.iter_mut() {
            if !DAMAGE.contains(&p.kind) || !av.other_names.contains_key(&p.path) {
                continue;
            }
            let base = p
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(crate::archive::FileName::parse)
                .map(|n| n.base())
                .unwrap_or_default();
            let labels: Vec<String> = g
                .labels_of(&base)
                .iter()
                .map(|l| display_label(l).to_string())
                .collect();
            if !labels.is_empty() {
                p.detail
                    .push_str(&format!(" (labels: {}; the same file)", labels.join(", ")));
            }
        }
    }
    av.problems.sort_by(|a, b| a.path.cmp(&b.path));
    av
}

/// Each file once: a check whose file (device, inode) was seen under
/// another name is dropped, its hashes merged into the first one's, and
/// its path kept in `other_names` under the first one's.
fn once_per_file(
    checks: Vec<FileCheck>,
    other_names: &mut HashMap<PathBuf, Vec<PathBuf>>,
) -> Vec<FileCheck> {
    use std::os::unix::fs::MetadataExt;
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut out: Vec<FileCheck> = Vec::with_capacity(checks.len());
    for c in checks {
        let key = std::fs::metadata(&c.path).ok().map(|m| (m.dev(), m.ino()));
        match key.and_then(|k| first.get(&k).copied()) {
            Some(i) => {
                for h in c.sha256 {
                    if !out[i].sha256.contains(&h) {
                        out[i].sha256.push(h);
                    }
                }
                other_names
                    .entry(out[i].path.clone())
                    .or_default()
                    .push(c.path);
            }
            None => {
                if let Some(k) = key {
                    first.insert(k, out.len());
                }
                out.push(c);
            }
        }
    }
    out
}

/// The kinds of problem that are a damaged message file.
const DAMAGE: &[&str] = &["damaged", "size", "hash"];

/// Moves each damaged message file into state/damaged/FOLDER/, under the
/// archive's lock (a pull may be writing). Renames only: nothing is lost,
/// and the journal entry left without its file makes the next pull fetch
/// the message again.
fn repair(account: &Account, av: &mut AccountVerify) {
    // A damaged file's other names (Gmail label links) go with it, so the
    // next pull links the message fetched again into their folders.
    let damaged: Vec<std::path::PathBuf> = av
        .problems
        .iter()
        .filter(|p| DAMAGE.contains(&p.kind))
        .flat_map(|p| {
            std::iter::once(p.path.clone())
                .chain(av.other_names.get(&p.path).into_iter().flatten().cloned())
        })
        .collect();
    if damaged.is_empty() {
        return;
    }
    let archive = Archive::at(&account.archive);
    let _lock = match archive.lock() {
        Ok(l) => l,
        Err(e) => {
            av.problems.push(Problem {
                path: archive.root().to_path_buf(),
                kind: "repair",
                detail: format!(
                    "not repaired: {e}\nhint: run verify --repair again when the other run is done"
                ),
            });
            return;
        }
    };
    let mail = archive.mail_dir();
    for from in damaged {
        // mail/[.Folder/]{cur,new}/NAME -> state/damaged/{INBOX,.Folder}/NAME
        let Some(name) = from.file_name() else {
            continue;
        };
        let folder = from
            .parent()
            .and_then(|sub| sub.parent())
            .and_then(|f| f.strip_prefix(&mail).ok())
            .map(|f| f.to_string_lossy().into_owned())
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| "INBOX".into());
        let dir = archive.state_dir().join("damaged").join(&folder);
        let to = dir.join(name);
        use std::os::unix::fs::DirBuilderExt;
        let moved = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::rename(&from, &to));
        match moved {
            Ok(()) => {
                lower_floor(&archive, &folder, name.to_str().unwrap_or(""));
                av.repaired.push(Repaired { from, to })
            }
            Err(e) => av.problems.push(Problem {
                path: from,
                kind: "repair",
                detail: format!("cannot move it to `{}`: {e}", to.display()),
            }),
        }
    }
}

/// Lowers the folder's status floor below the moved message's UID, so the
/// next pull does not take the mailbox for unchanged and lists that UID
/// again (the journal entry without its file makes it fetch it).
fn lower_floor(archive: &Archive, folder: &str, name: &str) {
    use crate::archive::journal::{load_status, save_status};
    let Some(n) = crate::archive::FileName::parse(name) else {
        return;
    };
    let dir = if folder == "INBOX" { "" } else { folder };
    let f = archive.folder(dir);
    let state = f.state_dir();
    if let Ok(mut st) = load_status(state) {
        if st.uidvalidity == n.uidvalidity && st.floor > n.uid {
            st.floor = n.uid;
            let _ = save_status(state, &st);
        }
    }
}

/// Compares the server's listing with the archive, mailbox by mailbox.
fn verify_server(account: &Account, av: &mut AccountVerify) {
    let connector = match Connector::new(Arc::new(account.clone())) {
        Ok(c) => c,
        Err(e) => {
            av.server_error = Some(crate::report::error_text(&e));
            av.code = Some(ExitCode::Usage);
            return;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            av.server_error = Some(crate::report::error_text(&e));
            av.code = Some(ExitCode::Internal);
            return;
        }
    };
    let archive = Archive::at(&account.archive);
    rt.block_on(async {
        let mut conn = match connector.connect().await {
            Ok(c) => c,
            Err(e) => {
                av.server_error = Some(connect_error(account, &e));
                av.code = Some(ExitCode::Connection);
                return;
            }
        };
        let listed = match conn.list().await {
            Ok(l) => l,
            Err(e) => {
                av.server_error = Some(format!("cannot list mailboxes: {e}"));
                av.code = Some(ExitCode::Connection);
                return;
            }
        };
        let naming = Naming::for_archive(conn.namespace().as_ref(), &Archive::at(&account.archive));
        // Gmail mode: messages are archived from All Mail (and Spam and
        // Trash when asked); label folders hold links under All Mail's UIDs.
        let targets = if account.gmail && gmail::is_gmail(|c| conn.has_capability(c)) {
            match gmail::layout(
                &listed,
                &naming,
                |n| account.wants(n),
                account.gmail_spam_and_trash,
            ) {
                Ok(l) => l.targets(),
                Err(e) => {
                    av.server_error = Some(e);
                    av.code = Some(ExitCode::Partial);
                    return;
                }
            }
        } else {
            choose_mailboxes_in(&listed, &naming, |n| account.wants(n)).0
        };
        let mut views: HashMap<String, FolderView> = HashMap::new();
        let mut out = Vec::new();
        for t in targets {
            let mut sm = ServerMailbox {
                mailbox: t.mailbox.name.clone(),
                folder: t.folder.clone(),
                ..Default::default()
            };
            let listing = async {
                let sel = conn.examine(&t.mailbox.raw).await?;
                let sizes = if sel.exists == 0 {
                    Vec::new()
                } else {
                    conn.uid_sizes(1).await?
                };
                Ok::<_, crate::sync::remote::RemoteError>((sel.uidvalidity, sizes))
            }
            .await;
            let (uv, sizes) = match listing {
                Ok(v) => v,
                Err(e) => {
                    let lost = e.is_connection_level();
                    sm.error = Some(format!("cannot list `{}`: {e}", t.mailbox.name));
                    out.push(sm);
                    if lost {
                        break;
                    }
                    continue;
                }
            };
            let view = views
                .entry(t.folder.clone())
                .or_insert_with(|| read_folder(&archive, &t.folder).unwrap_or_default());
            let archived: Vec<(u32, u32, u64)> = view
                .messages()
                .iter()
                .map(|m| (m.uidvalidity, m.uid, view.files[m.file].name.size))
                .collect();
            sm.uidvalidity = uv;
            sm.messages = sizes.len() as u64;
            sm.diff = compare_server(&sizes, uv, &archived);
            out.push(sm);
        }
        conn.logout().await;
        out.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
        av.server = Some(out);
    });
}

/// The text output: (problems for stderr, summary for stdout).
fn human(report: &VerifyReport) -> (String, String) {
    use std::fmt::Write;
    // What is wrong goes to stderr, the per-account summary to stdout, as
    // in every command: cron mails stderr, scripts read stdout.
    let mut err = String::new();
    let mut out = String::new();
    for a in &report.accounts {
        for p in &a.problems {
            let _ = writeln!(err, "{p}");
        }
        for m in a.server.iter().flatten() {
            if let Some(e) = &m.error {
                let _ = writeln!(err, "server: {e}");
            }
            for (uid, size) in &m.diff.not_archived {
                let _ = writeln!(
                    err,
                    "server: `{}` UID {uid} ({}) is on the server but not in the archive",
                    m.mailbox,
                    human_bytes(*size as u64)
                );
            }
            for (uid, server, have) in &m.diff.size_differs {
                let _ = writeln!(
                    err,
                    "server: `{}` UID {uid}: the server says {server} bytes, the archive holds {have}",
                    m.mailbox
                );
            }
        }
        if let Some(e) = &a.error {
            let _ = writeln!(err, "error: account `{}`: {e}", a.account);
            continue;
        }
        for r in &a.repaired {
            let _ = writeln!(
                out,
                "repaired: moved `{}` to `{}`; the next pull fetches this message again if the server still has it",
                r.from.display(),
                r.to.display()
            );
        }
        let n = a.problems.len();
        let _ = writeln!(
            out,
            "account `{}`: {} message file{}{} in {} mailbox{} read ({}): {}",
            a.account,
            a.files,
            if a.files == 1 { "" } else { "s" },
            if a.links > 0 {
                format!(
                    " (and {} label link{} to them)",
                    a.links,
                    if a.links == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            },
            a.mailboxes,
            if a.mailboxes == 1 { "" } else { "es" },
            human_bytes(a.bytes),
            match n {
                0 => "all whole".to_string(),
                1 => "1 problem".to_string(),
                n => format!("{n} problems"),
            }
        );
        if let Some(server) = &a.server {
            let missing: usize = server.iter().map(|m| m.diff.not_archived.len()).sum();
            let differ: usize = server.iter().map(|m| m.diff.size_differs.len()).sum();
            let gone: usize = server.iter().map(|m| m.diff.archive_only).sum();
            let older: usize = server.iter().map(|m| m.diff.other_generations).sum();
            let mut line = format!(
                "account `{}`: server compared ({} mailbox{}): {}",
                a.account,
                server.len(),
                if server.len() == 1 { "" } else { "es" },
                if missing == 0 {
                    "everything on the server is archived".to_string()
                } else {
                    format!(
                        "{missing} message(s) on the server not archived yet (run `imapbak pull`)"
                    )
                }
            );
            if differ > 0 {
                let _ = write!(line, "; {differ} size difference(s)");
            }
            if gone > 0 || older > 0 {
                let _ = write!(
                    line,
                    "; for information: {gone} archived message(s) no longer on the server, {older} from earlier UIDVALIDITYs"
                );
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(e) = &a.server_error {
            let _ = writeln!(
                err,
                "error: account `{}`: the files were checked, the server was not compared: {e}",
                a.account
            );
        }
    }
    (err, out)
}
