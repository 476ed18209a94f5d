//! `imapbak pull`: back up every configured account.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::expunge::{cut_for, expunge_one};
use super::{runtime, AccountArgs, Connector};
use crate::exit_codes::ExitCode;
use crate::progress::Bars;
use crate::report::Summary;
use crate::sync::expunge::{parse_age, AccountExpunge, ExpungeOptions, ExpungeReport};
use crate::sync::pull::{pull_account, AccountReport, PullOptions, PullReport};

/// Download what is new in every mailbox and mirror flag changes.
///
/// Safe to run from cron: a second run downloads nothing and says so in
/// one line; nothing but warnings, errors and that line is printed when
/// stderr is not a terminal.
#[derive(Debug, clap::Args)]
#[command(after_long_help = PULL_AFTER_HELP)]
pub struct PullCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    #[command(flatten)]
    users: super::UserArgs,

    /// Connections per account used at once
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Show what would be fetched; write nothing
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print the summary as JSON on stdout (see the man page for the fields)
    #[arg(long)]
    json: bool,

    /// No progress bars and no summary line; only warnings and errors
    #[arg(short, long)]
    quiet: bool,

    /// After pulling an account without any failure, expunge its messages
    /// older than AGE (1y, 6mo, 2w, 90d) that are verified in the archive,
    /// as `imapbak expunge --older-than AGE` does; an account whose pull
    /// failed anywhere is not expunged. With --json the output becomes
    /// {"pull": ..., "expunge": ...}
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    expunge_older_than: Option<u64>,
}

const PULL_AFTER_HELP: &str = "\
Per mailbox, pull opens it read-only and downloads only UIDs it has not
archived (BODY.PEEK[], so \\Seen is never set); a mailbox whose
UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ are unchanged is not even opened.
Flag changes on the server rename archived files. Mail deleted on the
server stays in the archive. After a UIDVALIDITY change every archived
message is kept, a new generation starts, and bytes already archived are
not stored twice.

--json prints one object on stdout:
  dry_run, seconds, mailboxes, fetched, bytes, bytes_on_disk, flag_updates,
  errors, incomplete, exit_code, and accounts: [{account, archive, error,
  hint, incomplete, download_left, daily_limit,
  mailboxes: [{mailbox, folder, outcome (fetched|unchanged|planned|failed|incomplete),
  fetched, bytes, bytes_on_disk, flag_updates, deduplicated,
  uidvalidity_changed, errors: [text], hints: [text|null]}]}]
Every `error` (null when all went well) has a `hint` beside it: what to
do about it, or null; every `errors` list a `hints` list of its length.

With a users list (`users-file` or `users-command`, see imapbak(1)), every
user of the table is pulled into its own archive, one user after another,
each with up to --jobs connections; `--user LOGIN` picks users, `--shard
K/N` the K-th of N disjoint shares (a hash of the login name: adding a user
moves no other), `--shard-count N` takes K from $JOB_COMPLETION_INDEX (a
Kubernetes Indexed Job with N completions; example in contrib/k8s/). One
user's failure is reported with its name and the others go on; a user whose
archive another run holds is skipped as locked.

Ctrl-C or SIGTERM stops after the FETCH in flight (at most 10 s; a second
Ctrl-C quits at once); what arrived is stored and the next run fetches the
rest.

Exit status: 0 success, 1 some mailboxes, messages or accounts failed
(one account of two failing is 1), 2 usage or configuration error, 3
connection/TLS/login failure, 4 archive locked; 2-4 only when no account
could be pulled at all; 7 stopped at the daily-download-limit (Gmail
mode: 2,400 MB a day by default; everything fetched is saved, the
summary says INCOMPLETE and how much is left, the next run continues);
130 stopped by Ctrl-C, 143 stopped by SIGTERM.";

pub fn run(cmd: PullCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let accounts = super::load_accounts_for(config, &cmd.accounts, &cmd.users)?;
    let start = Instant::now();
    let progress: Arc<dyn crate::progress::Progress> =
        Arc::from(Bars::for_terminal(cmd.quiet || cmd.json));
    let opts = PullOptions {
        jobs: cmd.jobs as usize,
        dry_run: cmd.dry_run,
        ..Default::default()
    };
    let rt = runtime()?;
    let mut report = PullReport {
        dry_run: cmd.dry_run,
        ..Default::default()
    };
    let expunge_opts = cmd.expunge_older_than.map(|age| ExpungeOptions {
        cut: Some(cut_for(age)),
        dry_run: cmd.dry_run,
        ..Default::default()
    });
    let mut expunge_report = ExpungeReport {
        dry_run: cmd.dry_run,
        ..Default::default()
    };
    for account in accounts {
        let account = Arc::new(account);
        let connector = match Connector::new(account.clone()) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                report.accounts.push(AccountReport {
                    account: account.name.clone(),
                    archive: account.archive.display().to_string(),
                    error: Some(crate::report::error_text(&e)),
                    code: Some(ExitCode::Usage),
                    ..Default::default()
                });
                continue;
            }
        };
        let for_expunge = connector.clone();
        let connect = move || {
            let c = connector.clone();
            async move { c.connect().await }
        };
        let mut opts = opts.clone();
        if account.oauth2.is_some() {
            // The server ends sessions when their token expires (Microsoft,
            // about an hour): reconnect with a fresh token and go on.
            opts.attempts_after_close = 8;
        }
        let r = rt.block_on(pull_account(
            account.clone(),
            opts,
            progress.clone(),
            connect,
        ));
        if let Some(eopts) = &expunge_opts {
            let clean = r.error.is_none() && r.exit_code() == ExitCode::Success;
            expunge_report.accounts.push(if clean {
                expunge_one(&rt, &account, &for_expunge, eopts, progress.clone())
            } else {
                AccountExpunge {
                    not_run: Some(
                        "the pull of this account had failures; nothing is expunged until a pull succeeds"
                            .into(),
                    ),
                    ..AccountExpunge::new(&account)
                }
            });
        }
        report.accounts.push(r);
    }
    drop(progress);
    report.seconds = start.elapsed().as_secs_f64();
    let mut code = report.finish();
    if expunge_opts.is_some() {
        expunge_report.seconds = start.elapsed().as_secs_f64() - report.seconds;
        code = code.max(super::expunge::finish(&mut expunge_report));
        for line in report.problems() {
            eprintln!("{line}");
        }
        if cmd.json {
            let both = serde_json::json!({ "pull": &report, "expunge": &expunge_report });
            println!("{}", crate::report::json_text(&both)?);
            for line in expunge_report.problems() {
                eprintln!("{line}");
            }
        } else {
            if !cmd.quiet {
                println!("{report}");
            }
            expunge_report.print(false, cmd.quiet)?;
        }
        return Ok(code);
    }
    report.print(cmd.json, cmd.quiet)?;
    Ok(code)
}
