//! The pull executor: gathers what the planner needs (the archive's index,
//! EXAMINE, the flags and sizes `plan.rs` says to ask for), plans the
//! mailbox, then applies the plan: flag renames first, then the fetches,
//! streamed to a writer thread; the status is saved last.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::plan::{
    fetch_from, flag_query, gmail_query, needs_listing, next_floor, plan_mailbox, speculate,
    speculation_holds, unchanged, Examined, FlagQuery, MailboxPlan,
};
use super::report::{AccountReport, MailboxReport};
use super::state;
use super::PullOptions;
use crate::archive::headers::HeaderRecord;
use crate::archive::{flags_to_letters, Archive, ArchiveError, Folder, FolderIndex, JournalEntry};
use crate::archive::{sha256_hex, Compressor, Keywords, Staged, Status, UnchangedRun};
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::progress::Progress;
use crate::sync::gmail::{self, Layout};
use crate::sync::mailboxes::{choose_mailboxes_in, record, Naming, Target};
use crate::sync::pool::{self, Slot, Step, Task};
use crate::sync::remote::{
    ErrorKind, FetchedMessage, MessageSink, Remote, RemoteError, RemoteFlags,
};

struct Ctx {
    /// Gmail mode: where bodies come from and where labels go.
    gmail: Option<Layout>,
    archive: Archive,
    account: Arc<Account>,
    opts: PullOptions,
    progress: Arc<dyn Progress>,
    budget: Arc<Semaphore>,
    budget_kib: u32,
    /// The daily download budget, when there is one.
    daily: Option<Daily>,
}

/// What is left of the daily download budget (`daily-download-limit`).
struct Daily {
    limit: u64,
    /// Fetched today before this run.
    before: u64,
    /// Fetched (asked for) by this run.
    now: std::sync::atomic::AtomicU64,
    /// Bytes the budget kept this run from fetching.
    left: std::sync::atomic::AtomicU64,
}

impl Daily {
    fn remaining(&self) -> u64 {
        self.limit
            .saturating_sub(self.before + self.now.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// A failure while pulling one mailbox.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// No connection could be opened for it.
    #[error(transparent)]
    Unreached(RemoteError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The daily download budget is spent: the rest waits for the next run.
    #[error("daily download limit reached")]
    Budget,
}

/// Pulls one account. Never panics on server input; every failure ends up
/// in the report with its scope.
pub async fn pull_account<R, F, Fut>(
    account: Arc<Account>,
    opts: PullOptions,
    progress: Arc<dyn Progress>,
    connect: F,
) -> AccountReport
where
    R: Remote + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, RemoteError>> + Send,
{
    crate::sync::memory::bound_allocator();
    let archive = Archive::at(&account.archive);
    let mut report = AccountReport {
        account: account.name.clone(),
        archive: account.archive.display().to_string(),
        ..Default::default()
    };
    let mut first = match connect().await {
        Ok(c) => c,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(connect_error(&account, &e));
            return report;
        }
    };
    let listed = match first.list().await {
        Ok(l) => l,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(format!("cannot list mailboxes: {e}"));
            return report;
        }
    };
    // Nothing is written before the server has accepted us.
    let _lock = if opts.dry_run {
        None
    } else {
        match archive.create().and_then(|_| archive.lock()) {
            Ok(lock) => Some(lock),
            Err(e) => {
                report.code = Some(match e {
                    ArchiveError::Locked { .. } => ExitCode::Locked,
                    ArchiveError::Foreign { .. } => ExitCode::Usage,
                    _ => ExitCode::Partial,
                });
                report.error = Some(with_hint(&e));
                first.logout().await;
                return report;
            }
        }
    };
    let namespace = first.namespace();
    let naming = Naming::for_archive(namespace.as_ref(), &archive);
    if !opts.dry_run {
        if let Err(e) = archive.save_namespace(&record(namespace.as_ref())) {
            log::warn!("cannot record the server's namespace: {e}");
        }
    }
    let gmail = if account.gmail && gmail::is_gmail(|c| first.has_capability(c)) {
        match gmail::layout(
            &listed,
            &naming,
            |n| account.wants(n),
            account.gmail_spam_and_trash,
        ) {
            Ok(layout) => Some(layout),
            Err(e) => {
                report.code = Some(ExitCode::Partial);
                report.error = Some(e);
                first.logout().await;
                return report;
            }
        }
    } else {
        None
    };
    let (targets, refused) = match &gmail {
        Some(layout) => {
            for w in &layout.warnings {
                log::warn!("{w}");
            }
            (layout.targets(), Vec::new())
        }
        None => choose_mailboxes_in(&listed, &naming, |n| account.wants(n)),
    };
    for r in refused {
        report.mailboxes.push(MailboxReport {
            name: r.name,
            outcome: "failed",
            errors: vec![format!("not archived: {}", r.reason)],
            ..Default::default()
        });
    }
    let daily =
        gmail::daily_download_limit(account.daily_download_limit, gmail.is_some()).map(|limit| {
            Daily {
                limit,
                before: state::used_today(&archive.state_dir()).unwrap_or(0),
                now: Default::default(),
                left: Default::default(),
            }
        });
    let mut opts = opts;
    if gmail.is_some() {
        // Gmail ends sessions mid-run (`BYE Session expired`, PROVIDERS.md
        // "Limits"): reconnect with backoff and go on.
        opts.attempts_after_close = opts.attempts_after_close.max(8);
    }
    let budget_kib = (opts.memory_budget / 1024).clamp(1, u32::MAX as u64) as u32;
    let jobs = opts.jobs;
    let task = Arc::new(PullTask {
        carried: Default::default(),
        ctx: Ctx {
            gmail,
            archive,
            account: account.clone(),
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            daily,
            opts,
            progress,
        },
        connect,
        _conn: PhantomData,
    });
    let done = pool::run(jobs, first, targets, task.clone()).await;
    report.mailboxes.extend(done.reports);
    for e in done.panics {
        report.mailboxes.push(MailboxReport {
            name: "(worker)".into(),
            outcome: "failed",
            errors: vec![format!("internal error: {e}")],
            ..Default::default()
        });
    }
    // Whatever no worker could reach (every connection lost, or Ctrl-C)
    // is reported.
    let why = if crate::sync::interrupt::requested().is_some() {
        "not pulled: interrupted; the next run pulls it"
    } else {
        "not pulled: no connection to the server"
    };
    for t in done.left {
        report.mailboxes.push(MailboxReport {
            name: t.mailbox.name,
            folder: t.folder,
            outcome: "failed",
            errors: vec![why.into()],
            ..Default::default()
        });
    }
    if _lock.is_some() {
        // Folders proved unchanged kept their status untouched; one record
        // says they were pulled now.
        let run = UnchangedRun {
            time: chrono::Utc::now().timestamp(),
            folders: report
                .mailboxes
                .iter()
                .filter(|m| m.outcome == "unchanged")
                .map(|m| m.folder.clone())
                .collect(),
        };
        if let Err(e) = task.ctx.archive.save_unchanged(&run) {
            log::warn!("cannot record the unchanged mailboxes: {e}");
        }
    }
    if let Some(d) = &task.ctx.daily {
        let now = d.now.load(std::sync::atomic::Ordering::SeqCst);
        if !task.ctx.opts.dry_run && now > 0 {
            if let Err(e) = state::save_used(&task.ctx.archive.state_dir(), d.before + now) {
                log::warn!("cannot record today's downloads: {e}");
            }
        }
        let left = d.left.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            report.incomplete = true;
            report.download_left = Some(left);
            report.daily_limit = Some(d.limit);
            if report.code.is_none() && report.mailboxes.iter().all(|m| m.errors.is_empty()) {
                report.code = Some(ExitCode::DailyLimit);
            }
        }
    }
    report.mailboxes.sort_by(|a, b| a.name.cmp(&b.name));
    report
}

fn with_hint(e: &ArchiveError) -> String {
    match e {
        ArchiveError::Locked { .. } => format!(
            "{e}\nhint: wait for the other run to finish; a killed run releases the lock by itself"
        ),
        _ => e.to_string(),
    }
}

/// The account error for a failed connection, with a hint. It names the
/// server once and not the account: the line it goes on names that.
pub fn connect_error(account: &Account, e: &RemoteError) -> String {
    let hint = e.hint().unwrap_or("run `imapbak check` for details");
    let server = format!("{}:{}", account.host, account.port);
    if e.to_string().contains(&server) {
        format!("{e}\nhint: {hint}")
    } else {
        format!("{server}: {e}\nhint: {hint}")
    }
}

/// Pull's work on one mailbox for the pool: it connects only when the
/// listing cannot prove the mailbox unchanged.
struct PullTask<R, F> {
    ctx: Ctx,
    carried: std::sync::Mutex<std::collections::HashMap<String, MailboxReport>>,
    connect: F,
    _conn: PhantomData<fn() -> R>,
}

impl<R, F, Fut> Task for PullTask<R, F>
where
    R: Remote + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, RemoteError>> + Send,
{
    type Item = Target;
    type Conn = R;
    type Report = MailboxReport;

    fn connect(&self) -> impl Future<Output = Result<R, RemoteError>> + Send {
        (self.connect)()
    }

    async fn work(&self, slot: &mut Slot<R>, t: &mut Target, attempt: u32) -> Step<MailboxReport> {
        // What earlier attempts at this mailbox did (their counts add up).
        let carried = self.carried.lock().expect("carried lock").remove(&t.folder);
        let mut rep = carried.unwrap_or_else(|| MailboxReport {
            name: t.mailbox.name.clone(),
            folder: t.folder.clone(),
            outcome: "fetched",
            ..Default::default()
        });
        match pull_mailbox(slot, self, t, &self.ctx, &mut rep).await {
            Ok(()) => {
                log::info!(
                    "mailbox `{}`: {}, {} message(s) fetched ({} bytes)",
                    t.mailbox.name,
                    rep.outcome,
                    rep.fetched,
                    rep.bytes
                );
                Step::Done(rep)
            }
            Err(Failure::Budget) => {
                rep.outcome = "incomplete";
                Step::Done(rep)
            }
            Err(Failure::Unreached(e)) => Step::Unreached(e),
            Err(Failure::Remote(e))
                if matches!(e.kind(), ErrorKind::Closed | ErrorKind::Broken)
                    && attempt < self.ctx.opts.attempts_after_close =>
            {
                // What was archived is in the journal: the next attempt
                // plans again and fetches only the rest.
                log::info!(
                    "the server ended the session while pulling `{}` ({e}); reconnecting",
                    t.mailbox.name
                );
                self.carried
                    .lock()
                    .expect("carried lock")
                    .insert(t.folder.clone(), rep);
                Step::Retry(e.to_string())
            }
            Err(e) => {
                rep.outcome = "failed";
                rep.errors.push(e.to_string());
                match e {
                    Failure::Remote(e) if e.is_connection_level() => {
                        log::warn!("connection lost while pulling `{}`: {e}", t.mailbox.name);
                        Step::Lost(rep)
                    }
                    _ => Step::Done(rep),
                }
            }
        }
    }
}

/// Plans the mailbox, then applies the plan; connects only past the
/// listing's proof of no change.
async fn pull_mailbox<T: Task>(
    slot: &mut Slot<T::Conn>,
    task: &T,
    t: &Target,
    ctx: &Ctx,
    rep: &mut MailboxReport,
) -> Result<(), Failure> {
    let dry = ctx.opts.dry_run;
    let folder = ctx.archive.folder(&t.folder);
    let prior = folder.load_status()?;
    if !dry {
        // Every selectable mailbox gets its folder, even when empty.
        folder.create()?;
    }
    if unchanged(t.mailbox.status, &prior) {
        if rep.fetched == 0 {
            rep.outcome = "unchanged";
        }
        return Ok(());
    }
    let index = tokio::task::block_in_place(|| {
        if dry {
            Ok(Default::default())
        } else {
            folder.scan()
        }
    })?;
    let mut keywords = folder.load_keywords()?;
    let conn = slot.get(task).await.map_err(Failure::Unreached)?;
    let gmail = ctx.gmail.as_ref().filter(|l| l.all.folder == t.folder);
    let examined = examine(conn, &t.mailbox.raw, &prior, &index, gmail.is_some()).await?;
    let plan = plan_mailbox(
        &t.mailbox.name,
        &prior,
        &index,
        &mut keywords,
        &examined,
        &ctx.opts,
    );
    log::debug!("plan: {plan}");
    if plan.uidvalidity_changed {
        rep.uidvalidity_changed = true;
        log::warn!(
            "UIDVALIDITY of `{}` changed ({} -> {}): keeping every archived message and starting a new generation",
            t.mailbox.name,
            prior.uidvalidity,
            plan.uidvalidity
        );
    }
    let applied = apply(
        conn, t, ctx, rep, &folder, &index, keywords, &examined, plan,
    )
    .await;
    match gmail {
        Some(layout) if !dry => {
            let linked = tokio::task::block_in_place(|| {
                let keywords = folder.load_keywords()?;
                // Expunge checks a message's X-GM-MSGID against this record.
                gmail::record_ids(
                    folder.path(),
                    examined.selected.uidvalidity,
                    &examined.gmail,
                )?;
                // Restore reads which folder is which label from here.
                gmail::restore::record_layout(folder.path(), layout)?;
                gmail::apply_links(
                    &ctx.archive,
                    layout,
                    &examined.gmail,
                    examined.selected.uidvalidity,
                    &keywords,
                )
            });
            if applied.is_err() || linked.is_err() {
                // Labels of what failed are asked for again next time.
                let mut status = folder.load_status()?;
                status.highestmodseq = prior.highestmodseq;
                folder.save_status(&status)?;
            }
            if let Ok(n) = linked {
                rep.flag_updates += n as u64;
            }
            applied?;
            linked?;
            Ok(())
        }
        _ => applied,
    }
}

/// Asks the server what the planner needs: EXAMINE, then the flags and
/// the UIDs and sizes that [`flag_query`] and [`needs_listing`] call for.
async fn examine<R: Remote>(
    conn: &mut R,
    raw: &str,
    prior: &Status,
    index: &FolderIndex,
    gmail: bool,
) -> Result<Examined, Failure> {
    let selected = if gmail {
        conn.examine(raw).await?
    } else {
        // EXAMINE, the flags and the sizes in one flight when the guess of
        // the generation holds (round trips are what a real link costs).
        let ex = conn.examine_with(raw, speculate(prior, index)).await?;
        if speculation_holds(prior, &ex.selected) {
            let sel = ex.selected;
            let nothing_held = index.uids(sel.uidvalidity).next().is_none();
            let flags = match flag_query(prior, &sel, nothing_held) {
                FlagQuery::Skip => Vec::new(),
                _ => ex.flags,
            };
            let from = fetch_from(prior, index, sel.uidvalidity);
            let sizes = if needs_listing(&sel, from) {
                ex.sizes
            } else {
                Vec::new()
            };
            return Ok(Examined {
                selected: sel,
                flags,
                sizes,
                from,
                gmail: Vec::new(),
            });
        }
        ex.selected
    };
    let uv = selected.uidvalidity;
    let nothing_held = index.uids(uv).next().is_none();
    let mut meta = Vec::new();
    let flags = if gmail {
        // Labels, flags and ids in one FETCH; new messages need their labels too.
        meta = match gmail_query(prior, &selected, index) {
            FlagQuery::Skip => Vec::new(),
            FlagQuery::All => conn.gmail_meta(None).await?,
            FlagQuery::ChangedSince(modseq) => conn.gmail_meta(Some(modseq)).await?,
        };
        meta.iter()
            .map(|m| RemoteFlags {
                uid: m.uid,
                flags: m.flags.clone(),
            })
            .collect()
    } else {
        match flag_query(prior, &selected, nothing_held) {
            FlagQuery::Skip => Vec::new(),
            FlagQuery::All => conn.flags(None).await?,
            FlagQuery::ChangedSince(modseq) => conn.flags(Some(modseq)).await?,
        }
    };
    let from = fetch_from(prior, index, uv);
    let sizes = if needs_listing(&selected, from) {
        conn.uid_sizes(from).await?
    } else {
        Vec::new()
    };
    Ok(Examined {
        selected,
        flags,
        sizes,
        from,
        gmail: meta,
    })
}

/// Applies a mailbox's plan: flag renames, then the fetches, then the
/// status (whose floor stops below the first UID not stored).
#[allow(clippy::too_many_arguments)]
async fn apply<R: Remote>(
    conn: &mut R,
    t: &Target,
    ctx: &Ctx,
    rep: &mut MailboxReport,
    folder: &Folder,
    index: &FolderIndex,
    mut keywords: Keywords,
    examined: &Examined,
    plan: MailboxPlan,
) -> Result<(), Failure> {
    let dry = ctx.opts.dry_run;
    let sel = &examined.selected;
    let uv = plan.uidvalidity;
    if !plan.dropped_keywords.is_empty() {
        log::warn!(
            "`{}`: keywords not stored in file names (more than 26, or not valid keywords): {}",
            t.mailbox.name,
            plan.dropped_keywords.join(" ")
        );
    }
    let changes = &plan.flag_changes;
    rep.flag_updates = changes.len() as u64;
    if !dry && !changes.is_empty() {
        tokio::task::block_in_place(|| -> Result<(), ArchiveError> {
            folder.save_keywords(&mut keywords)?;
            let mut renamed = HashSet::new();
            for c in changes {
                let Some(file) = index.file_for(uv, c.uid) else {
                    continue;
                };
                // Entries that share a file (after a UIDVALIDITY change) rename it once.
                if renamed.insert(file.name.base()) {
                    folder.set_flags(file, &c.to)?;
                }
            }
            folder.sync()
        })?;
    }

    let planned = plan.planned();
    if dry {
        rep.outcome = "planned";
        rep.fetched = planned.len() as u64;
        rep.bytes = plan.bytes;
        return Ok(());
    }
    let mut failed: Vec<u32> = Vec::new();
    let mut first_error: Option<Failure> = None;
    if planned.is_empty() {
        if changes.is_empty() && rep.fetched == 0 {
            rep.outcome = "unchanged";
        }
    } else {
        ctx.progress
            .mailbox_started(&t.mailbox.name, planned.len() as u64, plan.bytes);
        let (out, not_sent, fetch_error) =
            fetch_planned(conn, t, ctx, folder, index, &keywords, &plan).await;
        first_error = fetch_error;
        ctx.progress.mailbox_finished(&t.mailbox.name);
        // `+=`: an attempt after a reconnect adds to the earlier ones.
        rep.fetched += out.stored.len() as u64;
        rep.bytes += out.bytes;
        rep.bytes_on_disk += out.compressed;
        rep.deduplicated += out.dedup;
        if let Some(e) = out.error {
            // The writer's failure is the cause; the fetch error it caused is noise.
            first_error = Some(e.into());
        }
        if first_error.is_some() {
            let stored: HashSet<u32> = out.stored.iter().copied().collect();
            failed = planned
                .iter()
                .copied()
                .filter(|u| !stored.contains(u))
                .collect();
        }
        if !not_sent.is_empty() {
            let list: Vec<String> = not_sent.iter().map(u32::to_string).collect();
            rep.errors.push(format!(
                "the server left UID {} out of its answer although it still holds it; it is asked for again on the next run",
                list.join(", ")
            ));
            failed.extend(&not_sent);
        }
    }
    let status = Status {
        mailbox: t.mailbox.raw.clone(),
        uidvalidity: uv,
        uidnext: sel.uidnext,
        highestmodseq: sel.highestmodseq,
        floor: next_floor(plan.from, sel.uidnext, &planned, &failed),
        last_pull: chrono::Utc::now().timestamp(),
    };
    folder.save_status(&status)?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Streams the plan's batches to a writer thread, each batch sent only
/// once the memory budget holds its bytes. Returns what the writer stored,
/// the UIDs the server left out although it still holds them, and the
/// first error.
async fn fetch_planned<R: Remote>(
    conn: &mut R,
    t: &Target,
    ctx: &Ctx,
    folder: &Folder,
    index: &FolderIndex,
    keywords: &Keywords,
    plan: &MailboxPlan,
) -> (WriteOutcome, Vec<u32>, Option<Failure>) {
    let uv = plan.uidvalidity;
    let sizes = &plan.sizes;
    let mut first_error: Option<Failure> = None;
    let old: HashMap<String, String> = index
        .entries
        .values()
        .filter(|e| e.uidvalidity != uv)
        .map(|e| (e.sha256.clone(), e.base.clone()))
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = {
        let folder = folder.clone();
        let level = ctx.account.compression_level;
        let progress = ctx.progress.clone();
        let name = t.mailbox.name.clone();
        let keywords = keywords.clone();
        std::thread::spawn(move || {
            write_loop(folder, uv, level, keywords, old, rx, &*progress, &name)
        })
    };
    let sink = WriterSink {
        tx,
        reserved: AsyncMutex::new(None),
    };
    let mut not_sent: Vec<u32> = Vec::new();
    let mut throttle = gmail::Throttle::default();
    for (bi, batch) in plan.batches.iter().enumerate() {
        if crate::sync::interrupt::requested().is_some() {
            // What is not stored stays below the floor for the next run.
            first_error = Some(Failure::Remote(RemoteError::new(
                crate::sync::remote::ErrorKind::Refused,
                "interrupted; the rest is fetched by the next run",
            )));
            break;
        }
        // The daily budget: fetch what fits, leave the rest for the next run.
        let mut batch = &batch[..];
        if let Some(d) = &ctx.daily {
            let wanted: Vec<u64> = batch.iter().map(|u| sizes[u] as u64).collect();
            let n = state::fitting(&wanted, d.remaining());
            if n < batch.len() {
                let rest: u64 = wanted[n..].iter().sum::<u64>()
                    + plan.batches[bi + 1..]
                        .iter()
                        .flatten()
                        .map(|u| sizes[u] as u64)
                        .sum::<u64>();
                d.left.fetch_add(rest, std::sync::atomic::Ordering::SeqCst);
                first_error = Some(Failure::Budget);
                if n == 0 {
                    break;
                }
                batch = &batch[..n];
            }
            let take: u64 = wanted[..n].iter().sum();
            d.now.fetch_add(take, std::sync::atomic::Ordering::SeqCst);
        }
        // Reserve what the batch will bring before asking for it.
        let kib = batch
            .iter()
            .map(|u| kib_of(sizes[u] as usize))
            .sum::<u32>()
            .min(ctx.budget_kib);
        let Ok(permit) = ctx.budget.clone().acquire_many_owned(kib).await else {
            break;
        };
        *sink.reserved.lock().await = Some(permit);
        let limit = literal_limit(batch, sizes, ctx.account.max_message_size);
        let result = conn.fetch(batch, limit, &sink).await;
        // What the batch did not use (messages gone from the server) goes back.
        sink.reserved.lock().await.take();
        let delivered: HashSet<u32> = match result {
            Ok(d) => d.into_iter().collect(),
            Err(e) => {
                first_error = Some(e.into());
                break;
            }
        };
        let budget_spent = matches!(first_error, Some(Failure::Budget));
        // A server may answer OK and still leave messages out (some
        // cannot convert every item). Gone is fine; still there is not:
        // those stay below the floor and are asked for again.
        let left_out: Vec<u32> = batch
            .iter()
            .copied()
            .filter(|u| !delivered.contains(u))
            .collect();
        if !left_out.is_empty() {
            match conn.still_there(&left_out).await {
                Ok(present) => not_sent.extend(present),
                Err(e) => {
                    first_error = Some(e.into());
                    break;
                }
            }
        }
        if budget_spent {
            break;
        }
        // `[THROTTLED]`: slow down, more each time it comes back.
        throttle.pace(conn.take_throttled(), &t.mailbox.name).await;
    }
    drop(sink);
    let out = tokio::task::block_in_place(|| writer.join()).unwrap_or_else(|_| WriteOutcome {
        error: Some(ArchiveError::Damaged {
            path: folder.path().to_path_buf(),
            reason: "the writer thread panicked".into(),
        }),
        ..Default::default()
    });
    (out, not_sent, first_error)
}

/// The largest body a batch may bring: the server's own RFC822.SIZE with
/// room for servers that report it loosely, never above the configured cap.
fn literal_limit(batch: &[u32], sizes: &HashMap<u32, u32>, cap: u64) -> u64 {
    let largest = batch.iter().map(|u| sizes[u] as u64).max().unwrap_or(0);
    (2 * largest + 1024 * 1024).min(cap)
}

fn letters(flags: &[String], keywords: &mut Keywords, mailbox: &str) -> String {
    let (letters, dropped) = flags_to_letters(flags, keywords);
    if !dropped.is_empty() {
        log::warn!(
            "`{mailbox}`: keywords not stored in file names (more than 26, or not valid keywords): {}",
            dropped.join(" ")
        );
    }
    letters
}

/// Budget units (KiB, at least 1) for a message of `bytes`.
fn kib_of(bytes: usize) -> u32 {
    (bytes / 1024).min(u32::MAX as usize - 1) as u32 + 1
}

/// Hands messages to the writer thread, each with its share of the batch's
/// reservation; the writer drops the share once the message is on disk.
struct WriterSink {
    tx: UnboundedSender<(FetchedMessage, Option<OwnedSemaphorePermit>)>,
    reserved: AsyncMutex<Option<OwnedSemaphorePermit>>,
}

impl MessageSink for WriterSink {
    async fn send(&self, msg: FetchedMessage) -> Result<(), RemoteError> {
        let share = {
            let mut reserved = self.reserved.lock().await;
            reserved.as_mut().and_then(|r| {
                let n = (kib_of(msg.size as usize) as usize).min(r.num_permits());
                r.split(n)
            })
        };
        self.tx
            .send((msg, share))
            .map_err(|_| RemoteError::broken("protocol error: the archive writer stopped"))
    }
}

#[derive(Debug, Default)]
struct WriteOutcome {
    /// UIDs written and journaled.
    stored: Vec<u32>,
    bytes: u64,
    compressed: u64,
    dedup: u64,
    error: Option<ArchiveError>,
}

/// Runs on its own thread: compress and write each message to `tmp/`;
/// then, whenever the queue runs dry (or every 512 messages), the whole
/// burst at once: one sync of the files, their renames into `cur/`, one
/// directory fsync and one journal append.
#[allow(clippy::too_many_arguments)]
fn write_loop(
    folder: Folder,
    uidvalidity: u32,
    level: i32,
    mut keywords: Keywords,
    old: HashMap<String, String>,
    mut rx: UnboundedReceiver<(FetchedMessage, Option<OwnedSemaphorePermit>)>,
    progress: &dyn Progress,
    mailbox: &str,
) -> WriteOutcome {
    let mut out = WriteOutcome::default();
    let mut z = match Compressor::new(level) {
        Ok(z) => z,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let mut burst = Burst::default();
    loop {
        let item = match rx.try_recv() {
            Ok(item) => Some(item),
            Err(TryRecvError::Empty) => {
                if let Err(e) = burst.commit(&folder, &mut out) {
                    out.error = Some(e);
                    return out;
                }
                rx.blocking_recv()
            }
            Err(TryRecvError::Disconnected) => None,
        };
        let Some((msg, permit)) = item else { break };
        let result = write_one(
            &folder,
            &mut z,
            uidvalidity,
            &mut keywords,
            &old,
            &msg,
            mailbox,
        );
        match result {
            Ok(written) => {
                let headers = HeaderRecord::from_message(
                    uidvalidity,
                    msg.uid,
                    msg.internaldate.timestamp(),
                    written.base(),
                    &msg.body,
                );
                burst.push(written, headers);
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
        progress.message_written(mailbox, msg.body.len() as u64);
        drop(msg);
        drop(permit);
        if burst.len() >= 512 {
            if let Err(e) = burst.commit(&folder, &mut out) {
                out.error = Some(e);
                return out;
            }
        }
    }
    // What was written before a failure is still made durable and journaled.
    if let Err(e) = burst.commit(&folder, &mut out) {
        out.error.get_or_insert(e);
    }
    out
}

/// A message of a burst: written to `tmp/`, or already archived under an
/// earlier UIDVALIDITY (journaled, not copied).
enum Pending {
    Staged(Staged),
    Alias(JournalEntry),
}

impl Pending {
    fn base(&self) -> &str {
        match self {
            Pending::Staged(s) => &s.written.entry.base,
            Pending::Alias(e) => &e.base,
        }
    }
}

/// What the writer has written and not yet made durable and journaled.
#[derive(Default)]
struct Burst {
    staged: Vec<(Staged, HeaderRecord)>,
    aliases: Vec<(JournalEntry, HeaderRecord)>,
}

impl Burst {
    fn len(&self) -> usize {
        self.staged.len() + self.aliases.len()
    }

    fn push(&mut self, p: Pending, headers: HeaderRecord) {
        match p {
            Pending::Staged(s) => self.staged.push((s, headers)),
            Pending::Alias(e) => self.aliases.push((e, headers)),
        }
    }

    /// Files durable, renamed into `cur/`, the directory durable, then the
    /// journal: in that order, so a crash at any point leaves nothing
    /// journaled that is not whole on disk. What reached `cur/` before a
    /// failure is still journaled.
    fn commit(&mut self, folder: &Folder, out: &mut WriteOutcome) -> Result<(), ArchiveError> {
        if self.len() == 0 {
            return Ok(());
        }
        let (staged, mut headers): (Vec<_>, Vec<_>) = self.staged.drain(..).unzip();
        let mut done = Vec::with_capacity(staged.len());
        let settled = folder.settle(staged, &mut done);
        headers.truncate(done.len());
        let mut entries = Vec::with_capacity(done.len() + self.aliases.len());
        for w in done {
            out.bytes += w.entry.size;
            out.compressed += w.compressed;
            entries.push(w.entry);
        }
        for (e, h) in self.aliases.drain(..) {
            out.bytes += e.size;
            out.dedup += 1;
            entries.push(e);
            headers.push(h);
        }
        folder.journal(&entries)?;
        out.stored.extend(entries.iter().map(|e| e.uid));
        // The header index is a cache (rebuildable from the tree): a failure
        // to update it is worth a warning, not a failed message.
        if let Err(e) = folder.record_headers(&headers) {
            log::warn!("header index not updated: {e}");
        }
        settled
    }
}

fn write_one(
    folder: &Folder,
    z: &mut Compressor,
    uidvalidity: u32,
    keywords: &mut Keywords,
    old: &HashMap<String, String>,
    msg: &FetchedMessage,
    mailbox: &str,
) -> Result<Pending, ArchiveError> {
    if !old.is_empty() {
        let sha256 = sha256_hex(&msg.body);
        if let Some(base) = old.get(&sha256) {
            // Already archived under an earlier UIDVALIDITY: record, don't copy.
            return Ok(Pending::Alias(JournalEntry {
                uidvalidity,
                uid: msg.uid,
                size: msg.body.len() as u64,
                sha256,
                base: base.clone(),
            }));
        }
    }
    let flags = letters(&msg.flags, keywords, mailbox);
    folder.save_keywords(keywords)?;
    let staged = folder.stage(
        z,
        uidvalidity,
        msg.uid,
        msg.internaldate.timestamp(),
        &flags,
        &msg.body,
    )?;
    Ok(Pending::Staged(staged))
}
