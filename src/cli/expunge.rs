//! `imapbak expunge`: free server space by deleting old mail that the
//! archive provably holds (see `sync::expunge` for the rules).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{runtime, AccountArgs, Connector};
use crate::archive::names::levels_for;
use crate::archive::view::folder_dirs;
use crate::archive::Archive;
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::progress::{Bars, Progress};
use crate::report::Summary;
use crate::sync::expunge::{
    expunge_account, parse_age, parse_percent, AccountExpunge, ExpungeOptions, ExpungeReport,
};
use crate::sync::pull::connect_error;

const LONG_ABOUT: &str = "\
Delete old mail from the server, but only messages whose archived copy is
verified now. A message is expunged only if its mailbox still has the
UIDVALIDITY of the last pull, its UID is in the archive's journal, the
server's RFC822.SIZE equals the archived size, and the archived file
decompresses to the size and SHA-256 recorded at pull time (every candidate
is re-read). Anything else is skipped and counted, with the reason, in the
summary. Nothing is downloaded: run `imapbak pull` first, or use
`imapbak pull --expunge-older-than AGE` to do both.

Deletion is `UID STORE +FLAGS.SILENT (\\Deleted)` then `UID EXPUNGE` of the
same UIDs, so the server needs UIDPLUS (or IMAP4rev2); without it expunge
refuses. Messages another client marked \\Deleted are left alone. On a
server with CONDSTORE the STORE carries UNCHANGEDSINCE (the MODSEQ of the
check made just before it), so a message another client changes in between
is not marked; it is left and reported by UID (changed_during_run).

The UIDs about to be marked are recorded in the archive's state first, as
`intended`, and again once the server acknowledges the STORE, as
`stored` with the MODSEQ its answer gave. The next run finishes an
interrupted one (expunges after re-verifying, or takes the mark back) only
where the mark is provably its own: `stored` and, with CONDSTORE, the
MODSEQ unchanged. Any other recorded message that carries \\Deleted
(`intended`: the STORE may never have reached the server; or a MODSEQ that
moved) is neither expunged nor unmarked, and is reported once by UID
(ambiguous_mark). Records of older versions are read as `intended`.
Without CONDSTORE, a mark another client sets in the one round trip between
the last check and the STORE cannot be told from ours.

Give --older-than, --free-to, or both. With --free-to, the oldest verified
messages of all selected mailboxes go first, until the STORAGE usage that
GETQUOTAROOT reports for INBOX is under the target.

--json prints one object: `dry_run`, `seconds`, `expunged`, `bytes_freed`,
`skipped`, `errors`, `exit_code`, and per account `account`, `archive`,
`error` and `hint` (what to do about it; null when none), `not_run`, `quota_before` / `quota_after` (`root`, `usage_bytes`,
`limit_bytes`, `percent`), `expunged`, `bytes_freed`, `beyond_limit`,
`skipped` (count per reason: uidvalidity_changed,
deleted_by_another_client, kept_flagged, kept_unseen, not_archived,
archived_copy_missing, size_differs, archived_copy_damaged, ambiguous_mark,
changed_during_run), `mailboxes` (the same per mailbox, with `mailbox`, `folder`, `unmarked`,
`ambiguous_marks` and `changed_during_run` (UIDs left as they are),
`warnings`, `errors`) and
`messages` (`mailbox`, `uid`, `internaldate`, `size`, `resumed`).

Gmail (the server announces X-GM-EXT-1; `gmail = false` turns this
off): an EXPUNGE in a label folder only removes the label and one in All
Mail frees nothing, so candidates are chosen in All Mail (--mailbox, and
the account's include/exclude, select by label: a message with an excluded
label is left alone), verified as above plus the X-GM-MSGID recorded at
pull, moved to Trash with UID MOVE, found there by COPYUID and checked by
X-GM-MSGID, and only those UIDs are marked \\Deleted and UID EXPUNGEd in
Trash. Nothing else in Trash is touched; nothing is expunged in a label
folder. The moved messages are recorded first
(gmail-trash-pending.json), so a run killed between the move and the
expunge is finished by the next. --free-to reads Gmail's QUOTA. After a
batch answered `[THROTTLED]` expunge pauses, longer while it lasts.
Skip reason msgid_differs: the X-GM-MSGID is not the one recorded.

Exit status: 0 when everything due was expunged or there was nothing to do
(skips, including marks left as they are, are reported, not failures); 1
when a mailbox failed or the server lacks UIDPLUS, or one account failed
while another was expunged; 2 for a usage error (including --free-to
without a storage limit); 3 connection; 4 the archive is locked by a pull;
2-4 only when no account got anywhere.";

/// Delete old mail from the server, only what is verified in the archive.
#[derive(Debug, clap::Args)]
#[command(
    long_about = LONG_ABOUT,
    group(clap::ArgGroup::new("what").required(true).multiple(true).args(["older_than", "free_to"]))
)]
pub struct ExpungeCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    #[command(flatten)]
    users: super::UserArgs,

    /// Expunge messages whose INTERNALDATE is older than AGE: 1y (365 days), 6mo (30 days each), 2w, 90d
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<u64>,

    /// Expunge the oldest verified mail first until quota usage is under PERCENT of the limit (e.g. 80%)
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    free_to: Option<f64>,

    /// Only mailboxes whose name matches GLOB (repeatable), e.g. 'Archive/*'
    #[arg(long = "mailbox", value_name = "GLOB")]
    mailboxes: Vec<String>,

    /// Keep messages flagged \Flagged on the server
    #[arg(long)]
    keep_flagged: bool,

    /// Keep messages not yet \Seen on the server
    #[arg(long)]
    keep_unseen: bool,

    /// Expunge at most N messages per account in this run (oldest first)
    #[arg(long, value_name = "N")]
    max: Option<u64>,

    /// List what would be expunged and the space it would free; change nothing
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print the summary as JSON on stdout (see the man page for the fields)
    #[arg(long)]
    json: bool,

    /// No progress bars and no summary; only warnings and errors
    #[arg(short, long)]
    quiet: bool,
}

/// Resolves the age, mailbox globs and limits into options for the engine.
fn options(cmd: &ExpungeCmd) -> Result<ExpungeOptions> {
    let mailboxes = if cmd.mailboxes.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for p in &cmd.mailboxes {
            b.add(Glob::new(p).with_context(|| format!("invalid --mailbox pattern `{p}`"))?);
        }
        Some(b.build()?)
    };
    Ok(ExpungeOptions {
        cut: cmd.older_than.map(cut_for),
        free_to: cmd.free_to,
        mailboxes,
        keep_flagged: cmd.keep_flagged,
        keep_unseen: cmd.keep_unseen,
        max: cmd.max,
        dry_run: cmd.dry_run,
    })
}

/// The warning for `--mailbox` globs that match no mailbox archived for
/// `account`, naming the ones there are. Expunge only ever touches archived
/// mailboxes, so such a run expunges nothing, and says why.
fn unmatched(account: &Account, globs: &GlobSet, patterns: &[String]) -> Option<String> {
    let archive = Archive::at(&account.archive);
    let names: Vec<String> = folder_dirs(&archive)
        .ok()?
        .iter()
        .filter_map(|d| levels_for(d))
        .map(|levels| levels.join("/"))
        .collect();
    if names.iter().any(|n| globs.is_match(n)) {
        return None;
    }
    Some(super::search::no_match_warning(
        &patterns.join("` `"),
        names,
    ))
}

/// The INTERNALDATE before which a message is older than `age` seconds.
pub(crate) fn cut_for(age: u64) -> i64 {
    chrono::Utc::now().timestamp() - age.min(i64::MAX as u64 / 2) as i64
}

/// Fills in the report's totals; its exit status is that of a run over
/// several accounts (`ExitCode::for_accounts`), which an account failing
/// beside a good one makes 1, not the failed account's own code.
pub(crate) fn finish(report: &mut ExpungeReport) -> ExitCode {
    report.finish();
    let code = ExitCode::for_accounts(report.accounts.iter().map(|a| a.exit_code()));
    report.exit_code = code.code();
    code
}

/// Connects and expunges one account; a connection failure is reported
/// in the account's report.
pub(crate) fn expunge_one(
    rt: &tokio::runtime::Runtime,
    account: &Account,
    connector: &Connector,
    opts: &ExpungeOptions,
    progress: Arc<dyn Progress>,
) -> AccountExpunge {
    rt.block_on(async {
        match connector.connect().await {
            Ok(conn) => expunge_account(account, opts, progress, conn).await,
            Err(e) => {
                AccountExpunge::new(account).fail(ExitCode::Connection, connect_error(account, &e))
            }
        }
    })
}

pub fn run(cmd: ExpungeCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let opts = options(&cmd)?;
    let accounts = super::load_accounts_scoped(config, &cmd.accounts, &cmd.users)?;
    let start = Instant::now();
    let progress: Arc<dyn Progress> = Arc::from(Bars::for_terminal(cmd.quiet || cmd.json));
    let rt = runtime()?;
    let mut report = ExpungeReport {
        dry_run: cmd.dry_run,
        ..Default::default()
    };
    for account in accounts {
        // A user whose name cannot be archived has no archive to expunge
        // against: refused by name, the others go on.
        let account = match account {
            Ok(a) => a,
            Err(refused) => {
                report.accounts.push(
                    AccountExpunge {
                        account: refused.account,
                        ..Default::default()
                    }
                    .fail(ExitCode::Usage, crate::report::error_text(&refused.error)),
                );
                continue;
            }
        };
        if let Some(globs) = &opts.mailboxes {
            if let Some(warning) = unmatched(&account, globs, &cmd.mailboxes) {
                eprintln!("warning: account `{}`: {warning}", account.name);
            }
        }
        let account = Arc::new(account);
        let r = match Connector::new(account.clone()) {
            Ok(c) => expunge_one(&rt, &account, &c, &opts, progress.clone()),
            Err(e) => {
                AccountExpunge::new(&account).fail(ExitCode::Usage, crate::report::error_text(&e))
            }
        };
        report.accounts.push(r);
    }
    drop(progress);
    report.seconds = start.elapsed().as_secs_f64();
    let code = finish(&mut report);
    report.print(cmd.json, cmd.quiet)?;
    Ok(code)
}
