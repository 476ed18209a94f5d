//! `imapbak pull`: back up every configured account.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::expunge::{cut_for, expunge_one};
use super::{runtime, AccountArgs, Connector};
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::progress::Bars;
use crate::report::Summary;
use crate::sync::expunge::{parse_age, AccountExpunge, ExpungeOptions, ExpungeReport};
use crate::sync::pull::{monitor, pull_account, AccountReport, PullOptions, PullReport};

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

    /// Connections used at once: per account, or in all for the users of a
    /// users list (pulled side by side, each user with at most its
    /// `max-connections`, default 10)
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Also write a Prometheus node-exporter textfile here (atomically):
    /// per account its last success time, messages, bytes and errors
    #[arg(long, value_name = "FILE")]
    metrics: Option<std::path::PathBuf>,

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
  errors, incomplete, exit_code, and accounts: [{account, user (users of a
  table), outcome (ok|partial|failed|locked|incomplete), archive, error,
  hint, incomplete, download_left, daily_limit,
  mailboxes: [{mailbox, folder, outcome (fetched|unchanged|planned|failed|incomplete),
  fetched, bytes, bytes_on_disk, flag_updates, deduplicated,
  uidvalidity_changed, errors: [text], hints: [text|null]}]}]
Every `error` (null when all went well) has a `hint` beside it: what to
do about it, or null; every `errors` list a `hints` list of its length.
Each archive keeps its account's object, with `finished`, `last_success`
(Unix times) and `exit_code`, in ARCHIVE/state/last-pull.json (not on a
dry run, nor when another run holds the archive). --metrics FILE writes a
Prometheus node-exporter textfile: per account (labels account, user)
imapbak_pull_last_success_timestamp_seconds, _fetched_messages,
_fetched_bytes, _errors, _account_exit_code; per run
imapbak_pull_run_timestamp_seconds, _run_duration_seconds, _run_exit_code.

With a users list (`users-file` or `users-command`, see imapbak(1)), every
user of the table is pulled into its own archive, users side by side on
--jobs connections in all (one each while many are left; a user never
more than `max-connections`, default 10); `--user LOGIN` picks users,
`--shard K/N` the K-th of N disjoint shares (a hash of the login name:
adding a user moves no other), `--shard-count N` takes K from
$JOB_COMPLETION_INDEX (a Kubernetes Indexed Job with N completions;
example in contrib/kubernetes/). One user's failure (no such user, a
refused login, a cut connection, a name that cannot be a directory) is
reported with its name and the others go on; a user whose archive
another run holds is skipped (`skipped: account ...`, outcome `locked`).

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
    let selected = super::load_accounts_scoped(config, &cmd.accounts, &cmd.users)?;
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
    // Each account's report in the order of the configuration and the
    // users lists, whatever order the users finish in.
    let mut slots: Vec<Option<Pulled>> = Vec::new();
    let mut users = Vec::new();
    for item in selected {
        match item {
            Err(refused) => slots.push(Some(Pulled::refused(refused))),
            Ok(a) if a.table.is_some() => {
                users.push((slots.len(), a));
                slots.push(None);
            }
            Ok(a) => {
                let account = Arc::new(a);
                let connector = Connector::new(account.clone()).map(Arc::new);
                let mut opts = opts.clone();
                opts.jobs = opts.jobs.min(account.max_connections);
                slots.push(Some(rt.block_on(pull_one(
                    account,
                    connector,
                    opts,
                    progress.clone(),
                    None,
                ))));
            }
        }
    }
    if !users.is_empty() {
        let passwords = table_passwords(&users);
        for (i, pulled) in rt.block_on(pull_users(
            users,
            passwords,
            &opts,
            progress.clone(),
            expunge_opts.is_some(),
        )) {
            slots[i] = Some(pulled);
        }
    }
    let mut pulled: Vec<Pulled> = slots.into_iter().flatten().collect();
    let now = chrono::Utc::now().timestamp();
    let mut metrics = Vec::new();
    for p in pulled.iter_mut() {
        // Users of a table were recorded as each finished.
        let row = match p.metrics.take() {
            Some(row) => row,
            None => record(p, cmd.dry_run),
        };
        metrics.push(row);
        report.accounts.push(p.report.clone());
    }
    report.seconds = start.elapsed().as_secs_f64();
    let mut code = report.finish();
    if let (Some(path), false) = (&cmd.metrics, cmd.dry_run) {
        let text = monitor::metrics_text(&report, &metrics, now);
        if let Err(e) = monitor::write_metrics(path, &text) {
            eprintln!("error: cannot write the metrics file: {e}");
            code = code.max(ExitCode::Partial);
        }
    }
    if let Some(eopts) = &expunge_opts {
        for (p, r) in pulled.iter().zip(&report.accounts) {
            let (Some(account), Some(connector)) = (&p.account, &p.connector) else {
                continue;
            };
            let clean = r.error.is_none() && r.exit_code() == ExitCode::Success;
            expunge_report.accounts.push(if clean {
                expunge_one(&rt, account, connector, eopts, progress.clone())
            } else {
                AccountExpunge {
                    not_run: Some(
                        "the pull of this account had failures; nothing is expunged until a pull succeeds"
                            .into(),
                    ),
                    ..AccountExpunge::new(account)
                }
            });
        }
        drop(progress);
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
    drop(progress);
    report.print(cmd.json, cmd.quiet)?;
    Ok(code)
}

/// One account's pull and what the steps after it need.
struct Pulled {
    report: AccountReport,
    /// The login name (the metrics' `user` label).
    user: String,
    archive: std::path::PathBuf,
    /// False when no archive may be written (a refused user name).
    has_archive: bool,
    account: Option<Arc<Account>>,
    connector: Option<Arc<Connector>>,
    /// Its metrics row, once [`record`] has written its last report.
    metrics: Option<monitor::AccountMetrics>,
}

/// Writes the account's `state/last-pull.json` (not on a dry run) and
/// gives its metrics row: done as each user finishes, so a run stopped
/// half-way leaves the reports of the users it did, and the fsyncs of
/// thousands of users overlap with the pulls of the others.
fn record(p: &mut Pulled, dry_run: bool) -> monitor::AccountMetrics {
    let now = chrono::Utc::now().timestamp();
    p.report.outcome = p.report.outcome_word();
    let archive = crate::archive::Archive::at(&p.archive);
    let before = p
        .has_archive
        .then(|| monitor::last_success(&archive))
        .flatten();
    let last = monitor::success_after(&p.report, before, now);
    if !dry_run && p.has_archive {
        if let Err(e) = monitor::save_last_pull(&archive, &p.report, last, now) {
            log::warn!("cannot record the last pull's report: {e}");
        }
    }
    monitor::AccountMetrics::of(&p.report, &p.user, last)
}

impl Pulled {
    fn refused(r: crate::org::Refused) -> Pulled {
        Pulled {
            report: AccountReport {
                account: r.account,
                user: Some(r.user.clone()),
                error: Some(crate::report::error_text(&r.error)),
                code: Some(ExitCode::Usage),
                ..Default::default()
            },
            user: r.user,
            archive: Default::default(),
            has_archive: false,
            account: None,
            connector: None,
            metrics: None,
        }
    }
}

/// Pulls one account; `first` is a permit of the shared connection budget
/// already taken for its first connection (users of a table), and then
/// every further connection takes one from `budget` too.
async fn pull_one(
    account: Arc<Account>,
    connector: Result<Arc<Connector>>,
    mut opts: PullOptions,
    progress: Arc<dyn crate::progress::Progress>,
    budget: Option<(Arc<Semaphore>, OwnedSemaphorePermit)>,
) -> Pulled {
    let user = account.table.as_ref().map(|_| account.user.clone());
    let mut pulled = Pulled {
        report: AccountReport::default(),
        user: account.user.clone(),
        archive: account.archive.clone(),
        has_archive: true,
        account: Some(account.clone()),
        connector: None,
        metrics: None,
    };
    let connector = match connector {
        Ok(c) => c,
        Err(e) => {
            pulled.report = AccountReport {
                account: account.name.clone(),
                user,
                archive: account.archive.display().to_string(),
                error: Some(crate::report::error_text(&e)),
                code: Some(ExitCode::Usage),
                ..Default::default()
            };
            return pulled;
        }
    };
    pulled.connector = Some(connector.clone());
    if account.oauth2.is_some() {
        // The server ends sessions when their token expires (Microsoft,
        // about an hour): reconnect with a fresh token and go on.
        opts.attempts_after_close = 8;
    }
    let mut report = match budget {
        None => {
            let connect = move || {
                let c = connector.clone();
                async move { c.connect().await }
            };
            pull_account(account.clone(), opts, progress, connect).await
        }
        Some((budget, first)) => {
            let first = Arc::new(std::sync::Mutex::new(Some(first)));
            let connect = move || {
                let (c, budget, first) = (connector.clone(), budget.clone(), first.clone());
                async move {
                    let taken = first.lock().expect("permit lock").take();
                    let permit = match taken {
                        Some(p) => p,
                        None => budget.acquire_owned().await.expect("the budget stays open"),
                    };
                    Ok(c.connect().await?.hold(permit))
                }
            };
            pull_account(account.clone(), opts, progress, connect).await
        }
    };
    report.user = user;
    pulled.report = report;
    pulled
}

/// The admin password of each table whose users log in with one, read
/// once for all its users (a password-command runs once, not per user).
fn table_passwords(users: &[(usize, Account)]) -> HashMap<String, Result<String, String>> {
    let mut out = HashMap::new();
    for (_, a) in users {
        let table = a.table.clone().unwrap_or_default();
        if a.oauth2.is_none() && !out.contains_key(&table) {
            let pw = a.read_password().map_err(|e| crate::report::error_text(&e));
            out.insert(table, pw);
        }
    }
    out
}

/// Pulls the users of the tables side by side: `--jobs` connections in
/// all (a permit each, given back when the connection closes), each user
/// with its share of them (`--jobs` over the users left, at least one, at
/// most its `max-connections`). A user starts once a connection is free,
/// so at most `--jobs` users are in flight, and each user's mailboxes
/// share that user's connections. With `keep` the connectors stay in the
/// results (for `--expunge-older-than`); otherwise each goes with its user.
async fn pull_users(
    users: Vec<(usize, Account)>,
    passwords: HashMap<String, Result<String, String>>,
    opts: &PullOptions,
    progress: Arc<dyn crate::progress::Progress>,
    keep: bool,
) -> Vec<(usize, Pulled)> {
    let jobs = opts.jobs.max(1);
    let budget = Arc::new(Semaphore::new(jobs));
    // The byte budget is shared by a user's connections; users side by
    // side split it (with a floor that still lets one batch stream).
    let side_by_side = jobs.min(users.len()).max(1) as u64;
    let memory = (opts.memory_budget / side_by_side).max(opts.batch_bytes * 2);
    let mut out = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    let mut tls_of = HashMap::new();
    let total = users.len();
    for (started, (i, a)) in users.into_iter().enumerate() {
        let account = Arc::new(a);
        let permit = budget
            .clone()
            .acquire_owned()
            .await
            .expect("the budget stays open");
        if crate::sync::interrupt::requested().is_some() {
            let mut p = Pulled::refused(crate::org::Refused {
                account: account.name.clone(),
                user: account.user.clone(),
                error: anyhow::anyhow!("not pulled: interrupted; the next run pulls it"),
            });
            p.report.code = Some(ExitCode::Partial);
            p.report.archive = account.archive.display().to_string();
            out.push((i, p));
            continue;
        }
        let table = account.table.clone().unwrap_or_default();
        let tls = tls_of.get(&table).cloned();
        let connector = match passwords.get(&table) {
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            Some(Ok(pw)) => Connector::shared(account.clone(), Some(pw.clone()), tls),
            None => Connector::shared(account.clone(), None, tls),
        }
        .map(Arc::new);
        if let Ok(c) = &connector {
            tls_of.entry(table).or_insert_with(|| c.tls());
        }
        // Users side by side before mailboxes side by side: each login
        // costs a TLS handshake and an authentication, so while many users
        // are left each gets one connection; the last ones get more.
        let left = (total - started).min(jobs);
        let mut o = opts.clone();
        o.jobs = (jobs / left).clamp(1, account.max_connections);
        o.memory_budget = memory;
        let progress: Arc<dyn crate::progress::Progress> = Arc::new(OfUser {
            user: account.user.clone(),
            inner: progress.clone(),
        });
        let b = Some((budget.clone(), permit));
        let dry_run = opts.dry_run;
        running.spawn(async move {
            let mut pulled = pull_one(account, connector, o, progress, b).await;
            if !keep {
                pulled.connector = None;
            }
            let row = tokio::task::block_in_place(|| record(&mut pulled, dry_run));
            pulled.metrics = Some(row);
            (i, pulled)
        });
        // Reports of the users done so far are collected as they come.
        while let Some(done) = running.try_join_next() {
            out.push(joined(done));
        }
    }
    while let Some(done) = running.join_next().await {
        out.push(joined(done));
    }
    out
}

fn joined(done: Result<(usize, Pulled), tokio::task::JoinError>) -> (usize, Pulled) {
    done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The progress of one user among many: its mailboxes named `USER/NAME`,
/// so two users' INBOXes are two lines.
struct OfUser {
    user: String,
    inner: Arc<dyn crate::progress::Progress>,
}

impl crate::progress::Progress for OfUser {
    fn mailbox_started(&self, mailbox: &str, messages: u64, bytes: u64) {
        self.inner
            .mailbox_started(&format!("{}/{mailbox}", self.user), messages, bytes);
    }
    fn message_written(&self, mailbox: &str, bytes: u64) {
        self.inner
            .message_written(&format!("{}/{mailbox}", self.user), bytes);
    }
    fn mailbox_finished(&self, mailbox: &str) {
        self.inner
            .mailbox_finished(&format!("{}/{mailbox}", self.user));
    }
}
