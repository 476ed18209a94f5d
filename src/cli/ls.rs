//! `imapbak ls`: what the archive holds, per mailbox and per account, read
//! from the tree without taking the lock or changing anything.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use super::search::{local_time, rfc3339};
use super::{load_accounts, AccountArgs};
use crate::archive::headers::clean;
use crate::archive::view::{folder_dirs, read_folder, FolderView};
use crate::archive::Archive;
use crate::exit_codes::ExitCode;
use crate::report::human_bytes;
use crate::sync::gmail::view::{display_label, GmailView};

const LONG_HELP: &str = "\
     Per mailbox: messages, their size as received (raw) and on disk \
     (compressed), the ratio, the oldest and newest arrival time, and when it was \
     last pulled; then the account's totals. Reads the archive only: safe while a \
     pull runs.\n\n\
     In an archive pulled in Gmail mode each label folder (LABEL column) lists \
     the messages with that label, as links to All Mail's files: the total \
     counts each message once, and its bytes once.";

/// List the archived mailboxes with counts, sizes and dates.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct LsCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    /// Print the listing as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// One mailbox (or an account's total) in `ls --json`.
#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    mailbox: String,
    /// The Maildir++ folder under mail/ (`""` for INBOX).
    folder: String,
    messages: u64,
    /// Uncompressed bytes (the `S=` sizes).
    bytes: u64,
    bytes_on_disk: u64,
    /// bytes / bytes_on_disk (0 when nothing is stored).
    ratio: f64,
    /// Oldest and newest INTERNALDATE (RFC 3339, UTC).
    oldest: Option<String>,
    newest: Option<String>,
    last_pull: Option<String>,
    /// Gmail mode: the label a label folder shows (`\Inbox`, `Work`);
    /// null for All Mail and every other folder.
    label: Option<String>,
    #[serde(skip)]
    times: (Option<i64>, Option<i64>, Option<i64>),
    /// What this folder adds to the account's total: in a Gmail archive a
    /// label folder's links are All Mail's messages, counted there once.
    #[serde(skip)]
    own: (u64, u64, u64),
}

#[derive(Debug, Serialize)]
struct AccountListing {
    account: String,
    archive: String,
    error: Option<String>,
    mailboxes: Vec<Row>,
    total: Row,
}

fn row(view: &FolderView, last_pull: i64, gmail: Option<&GmailView>) -> Row {
    let mut r = Row {
        mailbox: view.mailbox.clone(),
        folder: view.dir.clone(),
        messages: view.messages().len() as u64,
        label: gmail
            .filter(|g| !g.is_all_mail(&view.dir) && g.info.labels.contains_key(&view.dir))
            .map(|g| g.label_of_folder(&view.dir)),
        ..Default::default()
    };
    let mut seen = std::collections::HashSet::new();
    let mut links = 0;
    for f in &view.files {
        if !seen.insert(f.base.as_str()) {
            continue;
        }
        let size = f.name.size;
        let disk = std::fs::symlink_metadata(&f.path)
            .map(|m| m.len())
            .unwrap_or(0);
        r.bytes += size;
        r.bytes_on_disk += disk;
        if gmail.is_some_and(|g| g.is_link(&view.dir, &f.base)) {
            links += 1;
        } else {
            r.own.1 += size;
            r.own.2 += disk;
        }
        let s = f.name.secs;
        r.times.0 = Some(r.times.0.map_or(s, |o: i64| o.min(s)));
        r.times.1 = Some(r.times.1.map_or(s, |n: i64| n.max(s)));
    }
    r.own.0 = r.messages.saturating_sub(links);
    if last_pull > 0 {
        r.times.2 = Some(last_pull);
    }
    finish(&mut r);
    r
}

fn finish(r: &mut Row) {
    r.ratio = if r.bytes_on_disk > 0 {
        ((r.bytes as f64 / r.bytes_on_disk as f64) * 100.0).round() / 100.0
    } else {
        0.0
    };
    r.oldest = r.times.0.map(rfc3339);
    r.newest = r.times.1.map(rfc3339);
    r.last_pull = r.times.2.map(rfc3339);
}

fn total(rows: &[Row]) -> Row {
    let mut t = Row {
        mailbox: "(total)".into(),
        ..Default::default()
    };
    let pick = |a: Option<i64>, b: Option<i64>, f: fn(i64, i64) -> i64| match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    };
    for r in rows {
        t.messages += r.own.0;
        t.bytes += r.own.1;
        t.bytes_on_disk += r.own.2;
        t.times.0 = pick(t.times.0, r.times.0, i64::min);
        t.times.1 = pick(t.times.1, r.times.1, i64::max);
        t.times.2 = pick(t.times.2, r.times.2, i64::max);
    }
    finish(&mut t);
    t
}

pub fn run(cmd: LsCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let accounts = load_accounts(config, &cmd.accounts)?;
    let mut listings = Vec::new();
    let mut codes = Vec::new();
    for account in accounts {
        let archive = Archive::at(&account.archive);
        let mut l = AccountListing {
            account: account.name.clone(),
            archive: account.archive.display().to_string(),
            error: None,
            mailboxes: Vec::new(),
            total: Row::default(),
        };
        let mut account_code = ExitCode::Success;
        if let Some(why) = archive.missing() {
            l.error = Some(why);
            account_code = ExitCode::Usage;
        } else {
            match folder_dirs(&archive) {
                Ok(dirs) => {
                    let unchanged = archive.load_unchanged();
                    let gmail = GmailView::read(&archive).unwrap_or_else(|e| {
                        eprintln!("error: account `{}`: {e}", account.name);
                        account_code = ExitCode::Partial;
                        None
                    });
                    for dir in dirs {
                        match read_folder(&archive, &dir) {
                            Ok(v) => {
                                let last = archive.last_pull(&dir, &v.status, &unchanged);
                                l.mailboxes.push(row(&v, last, gmail.as_ref()))
                            }
                            Err(e) => {
                                eprintln!("error: account `{}`: {e}", account.name);
                                account_code = ExitCode::Partial;
                            }
                        }
                    }
                }
                Err(e) => l.error = Some(e.to_string()),
            }
        }
        if let Some(e) = &l.error {
            eprintln!("error: account `{}`: {e}", account.name);
            account_code = account_code.max(ExitCode::Partial);
        }
        codes.push(account_code);
        l.mailboxes.sort_by(|a, b| a.mailbox.cmp(&b.mailbox));
        l.total = total(&l.mailboxes);
        listings.push(l);
    }
    if cmd.json {
        println!("{}", crate::report::json_text(&listings)?);
    } else {
        print!("{}", table(&listings));
    }
    Ok(ExitCode::for_accounts(codes))
}

fn table(listings: &[AccountListing]) -> String {
    let gmail = listings
        .iter()
        .flat_map(|l| &l.mailboxes)
        .any(|r| r.label.is_some());
    let head = [
        "ACCOUNT",
        "MAILBOX",
        "MESSAGES",
        "RAW",
        "ON DISK",
        "RATIO",
        "OLDEST",
        "NEWEST",
        "LAST PULL",
        "LABEL",
    ];
    let day = |t: Option<i64>| {
        t.map(|s| local_time(s)[..10].to_string())
            .unwrap_or("-".into())
    };
    let mut rows: Vec<[String; 10]> = vec![head.map(String::from)];
    for l in listings {
        for r in l.mailboxes.iter().chain(std::iter::once(&l.total)) {
            rows.push([
                clean(&l.account),
                clean(&r.mailbox),
                r.messages.to_string(),
                human_bytes(r.bytes),
                human_bytes(r.bytes_on_disk),
                format!("{:.2}", r.ratio),
                day(r.times.0),
                day(r.times.1),
                r.times.2.map(local_time).unwrap_or("never".into()),
                r.label
                    .as_deref()
                    .map(|l| clean(display_label(l)))
                    .unwrap_or_default(),
            ]);
        }
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..10).map(width).collect();
    // The LABEL column only for Gmail archives.
    let columns = if gmail { 10 } else { 9 };
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().take(columns).enumerate() {
            let pad = widths[i] - cell.chars().count();
            // Numbers right-aligned, text left-aligned.
            if (2..=5).contains(&i) {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
