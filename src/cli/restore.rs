//! `imapbak restore`: put an archive back on an IMAP server.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use globset::{Glob, GlobSetBuilder};

use super::{runtime, Connector};
use crate::archive::Archive;
use crate::config::Config;
use crate::exit_codes::ExitCode;
use crate::progress::Bars;
use crate::report::Summary;
use crate::sync::restore::{read_archive, restore_account, RestoreOptions, RestoreState};

/// Put an archive back on an IMAP server, exactly once, with flags and dates.
#[derive(Debug, clap::Args)]
// The variant's doc comment in cli/mod.rs is the about text (clap lets it
// win over long_about here), so the description lives in after_long_help.
#[command(after_long_help = "\
Every archived message is appended with its exact bytes, its flags and
keywords (never \\Deleted) and its INTERNALDATE; missing mailboxes are
created (hierarchy delimiter translated, names in modified UTF-7, under
the target's namespace prefix such as Courier's INBOX.). Before
appending into a mailbox, imapbak fingerprints what the target already
holds (size + INTERNALDATE + Message-ID, or a hash of the bytes for
messages without one) and skips those: a second run appends nothing, and a
run that was killed or stopped over quota can simply be run again. The
archive is only read.

A killed run's APPENDs may still land after a rerun has looked. Each batch's
intent (mailbox, UIDNEXT, messages) is recorded before it is sent and
cleared when its answer is in; a rerun that finds one left fingerprints the
mailbox again after appending and removes (UID STORE \\Deleted + UID EXPUNGE
of exactly those UIDs; needs UIDPLUS, else only reported) the copies beyond
the archive's count that restore itself appended: UIDs it recorded from
APPENDUID, or UIDs at or above the intent's UIDNEXT carrying one of its
messages. Nothing else is ever removed.

What was restored is recorded (APPENDUID) under
$XDG_STATE_HOME/imapbak/restore/ARCHIVE->TARGET/ so reruns are cheap;
deleting it between runs loses nothing but the intents of a killed run.

Examples:
  imapbak restore --account work                 # back to the account's own server
  imapbak restore --account work --to newhost    # into another configured account
  imapbak restore --account work --mailbox 'Archive/*' --prefix Restored/ \\
      --since 2024-01-01 --before 2025-01-01
  imapbak restore --account work --dry-run       # what would be appended

Gmail: an archive pulled in Gmail mode restored into a Gmail account
(X-GM-EXT-1, `gmail` not false) is appended once into All Mail (found by
its \\All attribute), and each message then gets its labels with UID STORE
+X-GM-LABELS.SILENT from its APPENDUID; missing labels are created level
by level first. The labels due are recorded before the STORE, so a run
killed or cut off between an APPEND and its STORE is finished by the next
(labels set, nothing appended twice). Restored into any other server, the archive's folders go
as a Dovecot serving it shows them (All Mail included); use
--skip-all-mail-duplicates to leave out All Mail's copy of labelled
messages. A message over the target's APPENDLIMIT is reported and
skipped; the rest goes on.

A message the server rejects is reported with the server's words and the run
goes on (exit status 1). A full target (OVERQUOTA) stops the run with exit
status 6; raise the quota and run the same command again. A dropped
connection or throttling is retried with backoff (5 attempts per mailbox);
after a batch answered `[THROTTLED]` (Gmail) restore pauses, longer while it
lasts.
Ctrl-C or SIGTERM stops after the APPEND batch in flight is answered (at
most 10 s; a second Ctrl-C quits at once) with exit status 130 or 143; run
the same command again.")]
pub struct RestoreCmd {
    /// The account whose archive is restored
    #[arg(short, long, value_name = "NAME")]
    account: String,

    /// The account to restore into [default: the --account itself]
    #[arg(long, value_name = "NAME")]
    to: Option<String>,

    /// Only archived mailboxes matching GLOB (repeatable); names are
    /// matched decoded, levels joined by `/` (e.g. 'Archive/*')
    #[arg(short, long = "mailbox", value_name = "GLOB")]
    mailboxes: Vec<String>,

    /// Create the restored mailboxes under this mailbox (levels separated
    /// by `/`, e.g. `Restored/`); INBOX becomes PREFIX/INBOX
    #[arg(long, value_name = "P")]
    prefix: Option<String>,

    /// Only messages whose INTERNALDATE is on or after DATE (YYYY-MM-DD, UTC)
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    since: Option<i64>,

    /// Only messages whose INTERNALDATE is before DATE (YYYY-MM-DD, UTC)
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    before: Option<i64>,

    /// Show what would be created and appended; change nothing on the server
    #[arg(short = 'n', long)]
    dry_run: bool,

    /// Print the summary as JSON on stdout
    #[arg(long)]
    json: bool,

    /// Connections to the target used at once
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// No progress bars and no summary line; only warnings and errors
    #[arg(short, long)]
    quiet: bool,

    /// For an archive pulled in Gmail mode restored into a server that is
    /// not Gmail: leave out the All Mail copy of every message that a
    /// label folder (INBOX, Sent, a label) also holds, so each such
    /// message is restored once per label, not once more in All Mail
    #[arg(long)]
    skip_all_mail_duplicates: bool,
}

fn parse_date(s: &str) -> Result<i64, String> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| {
            d.and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc()
                .timestamp()
        })
        .map_err(|e| format!("`{s}` is not a date like 2024-01-31: {e}"))
}

pub fn run(cmd: RestoreCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let path = crate::config::locate(config)?;
    let config = Config::load(&path)?;
    let source = config.select(std::slice::from_ref(&cmd.account))?.remove(0);
    let target_name = cmd.to.clone().unwrap_or_else(|| cmd.account.clone());
    let target = config.select(std::slice::from_ref(&target_name))?.remove(0);
    if let (Some(s), Some(b)) = (cmd.since, cmd.before) {
        if s >= b {
            bail!("--since must be before --before\nhint: the range is [since, before)");
        }
    }
    let mailboxes = if cmd.mailboxes.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for g in &cmd.mailboxes {
            b.add(Glob::new(g).with_context(|| format!("invalid --mailbox glob `{g}`"))?);
        }
        Some(b.build()?)
    };
    let prefix: Vec<String> = match cmd.prefix.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") => Vec::new(),
        Some(p) => p.split('/').map(str::to_string).collect(),
    };
    if prefix.iter().any(String::is_empty) {
        bail!("--prefix has an empty level\nhint: write it like `Restored/2024`");
    }

    let archive = Archive::at(&source.archive);
    if let Some(why) = archive.missing() {
        bail!("account `{}`: {why}", source.name);
    }
    let sources = read_archive(&archive)
        .with_context(|| format!("cannot read the archive of `{}`", source.name))?;
    if let Some(globs) = &mailboxes {
        if !sources.iter().any(|s| globs.is_match(s.name())) {
            let names = sources.iter().map(|s| s.name()).collect();
            eprintln!(
                "warning: {}",
                super::search::no_match_warning(&cmd.mailboxes.join("` `"), names)
            );
            return Ok(ExitCode::Partial);
        }
    }
    let state = RestoreState::for_accounts(&source.name, &target.name);
    let _lock = match (&state, cmd.dry_run) {
        (Some(st), false) => {
            let lock = st
                .lock()
                .with_context(|| format!("cannot open `{}`", st.dir().display()))?;
            match lock {
                Some(l) => Some(l),
                None => {
                    eprintln!(
                        "error: another `imapbak restore` from `{}` into `{}` is running\nhint: wait for it to finish",
                        source.name, target.name
                    );
                    return Ok(ExitCode::Locked);
                }
            }
        }
        _ => None,
    };

    let opts = RestoreOptions {
        mailboxes,
        prefix,
        since: cmd.since,
        before: cmd.before,
        dry_run: cmd.dry_run,
        jobs: cmd.jobs as usize,
        gmail_archive: crate::sync::gmail::restore::archive_info(&archive),
        gmail_target: target.gmail,
        skip_all_mail_duplicates: cmd.skip_all_mail_duplicates,
        ..Default::default()
    };
    let start = Instant::now();
    let progress: Arc<dyn crate::progress::Progress> =
        Arc::from(Bars::for_terminal(cmd.quiet || cmd.json));
    let connector = Arc::new(
        Connector::new(Arc::new(target.clone()))
            .with_context(|| format!("account `{}`", target.name))?,
    );
    let connect = move || {
        let c = connector.clone();
        async move { c.connect().await }
    };
    let rt = runtime()?;
    let mut report = rt.block_on(restore_account(
        &source.name,
        &target.name,
        sources,
        state,
        opts,
        progress.clone(),
        connect,
    ));
    drop(progress);
    report.seconds = start.elapsed().as_secs_f64();
    let code = report.finish();
    report.print(cmd.json, cmd.quiet)?;
    Ok(code)
}
