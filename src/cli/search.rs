//! `imapbak search`: find archived messages by decoded headers, from the
//! header index (no message is decompressed unless its record is missing).
//! The filters and the selection here are shared with `imapbak export`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Local, NaiveDate, TimeZone, Utc};
use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

use super::{load_accounts, AccountArgs};
use crate::archive::headers::clean;
use crate::archive::search::{default_threads, folder_headers, parallel_map, persist, Query};
use crate::archive::view::{folder_dirs, read_tree, FolderView};
use crate::archive::{Archive, FileName};
use crate::exit_codes::ExitCode;
use crate::sync::gmail::view::{display_label, GmailView};

const LONG_HELP: &str = "\
     Prints one line per hit: id, date, mailbox, from, subject (oldest first). \
     The id (`ACCOUNT/FOLDER/UIDVALIDITY/UID`, e.g. `work/INBOX/1700000000/42`) \
     never changes and is what `imapbak show` takes. Text filters match the \
     decoded headers (RFC 2047 encoded words undone) as substrings, in any case; \
     all filters given must match. Searches the header index kept in the \
     archive's state/ directory; what the index lacks is read from the message \
     files and added to it.\n\n\
     In an archive pulled in Gmail mode each message is one hit, under All Mail \
     (or the first label folder --mailbox matched), with its labels after the \
     mailbox (`[Inbox, Work]`; `labels` in --json).";

/// Find archived messages by sender, recipient, subject or date.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct SearchCmd {
    #[command(flatten)]
    pub(crate) accounts: AccountArgs,

    #[command(flatten)]
    pub(crate) filters: Filters,

    /// Print the hits as a JSON array on stdout
    #[arg(long)]
    json: bool,

    /// Print at most N hits (the oldest N)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// The filters of `search` and `export`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Filters {
    /// Only mailboxes whose name matches this glob (`*` also crosses
    /// hierarchy levels; any case), e.g. `INBOX` or `Archive/*`
    #[arg(long, value_name = "GLOB")]
    mailbox: Option<String>,

    /// From: contains S (name or address, any case)
    #[arg(long, value_name = "S")]
    from: Option<String>,

    /// To: or Cc: contains S (any case)
    #[arg(long, value_name = "S")]
    to: Option<String>,

    /// Subject: contains S (any case)
    #[arg(long, value_name = "S")]
    subject: Option<String>,

    /// Dated on or after DATE (YYYY-MM-DD, local time); the Date: header,
    /// or the arrival time when it has none
    #[arg(long, value_name = "DATE", value_parser = parse_day)]
    since: Option<NaiveDate>,

    /// Dated before DATE (YYYY-MM-DD, local time)
    #[arg(long, value_name = "DATE", value_parser = parse_day)]
    before: Option<NaiveDate>,
}

fn parse_day(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date\nhint: write it as YYYY-MM-DD, e.g. 2021-03-31"))
}

/// Local midnight at the start of `day`, as seconds since the epoch.
fn local_midnight(day: NaiveDate) -> i64 {
    let t = day.and_hms_opt(0, 0, 0).expect("midnight exists");
    Local
        .from_local_datetime(&t)
        .earliest()
        .map(|d| d.timestamp())
        .unwrap_or_else(|| t.and_utc().timestamp())
}

/// One message found, as printed by `search --json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Hit {
    /// `ACCOUNT/FOLDER/UIDVALIDITY/UID`: what `imapbak show` takes.
    pub id: String,
    pub account: String,
    pub mailbox: String,
    /// The Maildir++ folder under `mail/` (`""` for INBOX).
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
    /// The Date: header (RFC 3339, UTC), or INTERNALDATE when it has none.
    pub date: String,
    pub internaldate: String,
    pub size: u64,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    /// Gmail mode: the message's labels (X-GM-LABELS names, `\Inbox`);
    /// empty elsewhere. A message is one hit, under All Mail, whatever
    /// its labels.
    pub labels: Vec<String>,
    #[serde(skip)]
    pub when: i64,
    #[serde(skip)]
    pub internal_secs: i64,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub levels: Vec<String>,
}

pub(crate) fn rfc3339(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// What a selection found, and what went wrong on the way (for stderr).
pub(crate) struct Selection {
    pub hits: Vec<Hit>,
    pub warnings: Vec<String>,
    /// Some account or folder could not be read at all.
    pub failed: bool,
    /// `--mailbox` was given and matched no archived mailbox (a warning
    /// naming the archived mailboxes is in `warnings`).
    pub no_mailbox_matched: bool,
    /// Accounts chosen, and how many of them have no archive yet.
    pub accounts: usize,
    pub missing: usize,
}

impl Selection {
    /// The exit status, by the rule every offline command follows: an
    /// account without an archive is an account-level error (2 when no
    /// account had one, else 1); anything unreadable is 1.
    pub fn exit_code(&self, nothing_matched_fails: bool) -> ExitCode {
        if self.missing > 0 && self.missing == self.accounts {
            ExitCode::Usage
        } else if self.missing > 0
            || self.failed
            || (nothing_matched_fails && self.no_mailbox_matched)
        {
            ExitCode::Partial
        } else {
            ExitCode::Success
        }
    }
}

/// Every archived message of the chosen accounts that passes `filters`,
/// in date order.
pub(crate) fn select(
    config: Option<&std::path::Path>,
    accounts: &AccountArgs,
    filters: &Filters,
) -> Result<Selection> {
    let accounts = load_accounts(config, accounts)?;
    let glob: Option<GlobMatcher> = match &filters.mailbox {
        Some(g) => Some(
            GlobBuilder::new(g)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .with_context(|| format!("invalid mailbox glob `{g}`"))?
                .compile_matcher(),
        ),
        None => None,
    };
    let query = Query::new(
        filters.from.as_deref(),
        filters.to.as_deref(),
        filters.subject.as_deref(),
        filters.since.map(local_midnight),
        filters.before.map(local_midnight),
    );
    let threads = default_threads();
    let mut sel = Selection {
        hits: Vec::new(),
        warnings: Vec::new(),
        failed: false,
        no_mailbox_matched: false,
        accounts: 0,
        missing: 0,
    };
    // Every (account, folder) to read; the folders are then read in parallel.
    let mut work: Vec<(Arc<str>, Archive, String)> = Vec::new();
    let mut gmail: HashMap<String, GmailView> = HashMap::new();
    for account in accounts {
        let archive = Archive::at(&account.archive);
        sel.accounts += 1;
        if let Some(why) = archive.missing() {
            sel.warnings
                .push(format!("account `{}`: {why}", account.name));
            sel.missing += 1;
            continue;
        }
        match GmailView::read(&archive) {
            Ok(Some(g)) => {
                gmail.insert(account.name.clone(), g);
            }
            Ok(None) => {}
            Err(e) => {
                sel.warnings
                    .push(format!("account `{}`: {e}", account.name));
                sel.failed = true;
            }
        }
        match folder_dirs(&archive) {
            Ok(dirs) => {
                let name: Arc<str> = Arc::from(account.name.as_str());
                work.extend(dirs.into_iter().map(|d| (name.clone(), archive.clone(), d)));
            }
            Err(e) => {
                sel.warnings
                    .push(format!("account `{}`: {e}", account.name));
                sel.failed = true;
            }
        }
    }
    let results = parallel_map(&work, threads, |(account, archive, dir)| {
        let mut name = None;
        let r = read_tree(archive, dir)
            .map_err(anyhow::Error::from)
            .and_then(|view| {
                name = Some((
                    view.mailbox.clone(),
                    glob.as_ref().is_none_or(|g| g.is_match(&view.mailbox)),
                ));
                if !name.as_ref().is_some_and(|(_, m)| *m) {
                    return Ok((Vec::new(), Vec::new()));
                }
                folder_hits(archive, &view, account, &query, threads)
            });
        (account.clone(), name, r)
    });
    let mut archived: Vec<String> = Vec::new();
    let mut matched = false;
    for (account, name, r) in results {
        if let Some((name, m)) = name {
            matched |= m;
            archived.push(clean(&name));
        }
        match r {
            Ok((hits, warnings)) => {
                sel.hits.extend(hits);
                sel.warnings.extend(warnings);
            }
            Err(e) => {
                sel.warnings.push(format!(
                    "account `{account}`: {}",
                    crate::report::error_text(&e)
                ));
                sel.failed = true;
            }
        }
    }
    if let (Some(g), false) = (&filters.mailbox, matched) {
        sel.no_mailbox_matched = true;
        sel.warnings.push(no_match_warning(g, archived));
    }
    once_per_message(&mut sel.hits, &gmail);
    sel.hits
        .sort_by(|a, b| (a.when, &a.id).cmp(&(b.when, &b.id)));
    Ok(sel)
}

/// Gmail archives: one hit per message with its labels, under All Mail
/// when All Mail was searched, else under the first label folder that
/// matched (its other names are the label links, sync::gmail::view).
fn once_per_message(hits: &mut Vec<Hit>, gmail: &HashMap<String, GmailView>) {
    if gmail.is_empty() {
        return;
    }
    let in_all_mail = |h: &Hit| {
        gmail
            .get(&h.account)
            .is_some_and(|g| g.is_all_mail(&h.folder))
    };
    hits.sort_by_key(|h| (!in_all_mail(h), h.folder.clone()));
    let mut seen = HashSet::new();
    hits.retain_mut(|h| {
        let Some(g) = gmail.get(&h.account) else {
            return true;
        };
        let Some(base) = h
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(FileName::parse)
            .map(|n| n.base())
        else {
            return true;
        };
        h.labels = g.labels_of(&base);
        if !g.is_all_mail(&h.folder) && !g.is_link(&h.folder, &base) {
            return true;
        }
        seen.insert((h.account.clone(), base))
    });
}

/// The warning for a `--mailbox` glob that matched nothing: what there is
/// to match, so the rerun can be right.
pub(crate) fn no_match_warning(glob: &str, mut archived: Vec<String>) -> String {
    archived.sort();
    archived.dedup();
    if archived.is_empty() {
        return format!("--mailbox `{glob}` matched no archived mailbox: the archive has none");
    }
    format!(
        "--mailbox `{glob}` matched no archived mailbox\nhint: the archived mailboxes are: {}",
        archived
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn folder_hits(
    archive: &Archive,
    view: &FolderView,
    account: &str,
    query: &Query,
    threads: usize,
) -> Result<(Vec<Hit>, Vec<String>)> {
    let fh = folder_headers(view, threads)?;
    persist(archive, view, &fh);
    let warnings = fh
        .unreadable
        .iter()
        .map(|e| format!("{e}\nhint: run `imapbak verify`"))
        .collect();
    let levels =
        crate::archive::names::levels_for(&view.dir).unwrap_or_else(|| vec![view.dir.clone()]);
    let hits = fh
        .messages
        .iter()
        .filter(|(_, r)| query.matches(r))
        .map(|(m, r)| Hit {
            id: format!("{account}/{}/{}/{}", view.id_part(), m.uidvalidity, m.uid),
            account: account.to_string(),
            mailbox: view.mailbox.clone(),
            folder: view.dir.clone(),
            uidvalidity: m.uidvalidity,
            uid: m.uid,
            date: rfc3339(r.effective_date()),
            internaldate: rfc3339(r.internaldate),
            size: r.size,
            from: r.from.clone(),
            to: r.to.clone(),
            subject: r.subject.clone(),
            message_id: r.message_id.clone(),
            labels: Vec::new(),
            when: r.effective_date(),
            internal_secs: r.internaldate,
            path: view.files[m.file].path.clone(),
            levels: levels.clone(),
        })
        .collect();
    Ok((hits, warnings))
}

/// `s` as one word a POSIX shell reads back unchanged: as it is when it
/// holds only characters no shell treats specially, else in single quotes
/// (folder names in modified UTF-7 hold `&`, and names may hold spaces).
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=,:@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A date for people: local time, to the minute.
pub(crate) fn local_time(secs: i64) -> String {
    Local
        .timestamp_opt(secs, 0)
        .single()
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "????-??-?? ??:??".into())
}

pub fn run(cmd: SearchCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let mut sel = select(config, &cmd.accounts, &cmd.filters)?;
    for w in &sel.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(n) = cmd.limit {
        sel.hits.truncate(n);
    }
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if cmd.json {
        serde_json::to_writer_pretty(&mut out, &crate::report::json_value(&sel.hits)?)?;
        writeln!(out)?;
    } else {
        for h in &sel.hits {
            let mut mailbox = clean(&h.mailbox);
            if !h.labels.is_empty() {
                let labels: Vec<String> =
                    h.labels.iter().map(|l| clean(display_label(l))).collect();
                mailbox = format!("{mailbox} [{}]", labels.join(", "));
            }
            writeln!(
                out,
                "{}  {}  {}  {}  {}",
                shell_word(&h.id),
                local_time(h.when),
                mailbox,
                if h.from.is_empty() {
                    "(no From)"
                } else {
                    &h.from
                },
                if h.subject.is_empty() {
                    "(no Subject)"
                } else {
                    &h.subject
                },
            )?;
        }
    }
    out.flush()?;
    Ok(sel.exit_code(false))
}

#[cfg(test)]
mod shell_word_tests {
    use super::shell_word;

    #[test]
    fn ids_with_shell_characters_are_quoted_and_plain_ones_are_not() {
        assert_eq!(shell_word("w/INBOX/17/42"), "w/INBOX/17/42");
        assert_eq!(shell_word("w/.R&-D/1/2"), "'w/.R&-D/1/2'");
        assert_eq!(shell_word("w/.a b/1/2"), "'w/.a b/1/2'");
        assert_eq!(shell_word("w/.it's/1/2"), "'w/.it'\\''s/1/2'");
    }
}
