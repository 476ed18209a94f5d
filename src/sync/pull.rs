//! The pull executor: lists the account's mailboxes, then pulls them on
//! `jobs` connections at once. Per mailbox: skip it if the listing proves
//! it unchanged, mirror flag changes by renaming, then stream new messages
//! to a writer thread that compresses, fsyncs, renames into `cur/`, syncs
//! the directory and only then journals. Memory is bounded by a byte budget
//! shared by all connections: a UID FETCH is sent only once the bytes it will
//! bring are reserved, and each message gives its share back once written,
//! so what is read but not yet on disk never exceeds the budget (or the one
//! message larger than it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::plan::{
    choose_mailboxes, fetch_batches, flag_changes, list_from, next_floor, unchanged, Target,
};
use super::remote::{FetchedMessage, MessageSink, Remote};
use crate::archive::headers::HeaderRecord;
use crate::archive::{flags_to_letters, Archive, ArchiveError, Folder, JournalEntry, Keywords};
use crate::archive::{sha256_hex, Status};
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::imap::ImapError;
use crate::progress::Progress;
use crate::report::{AccountReport, MailboxReport};

/// How a pull runs.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Connections used at once.
    pub jobs: usize,
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Upper bound of one UID FETCH, in bytes of RFC822.SIZE.
    pub batch_bytes: u64,
    /// Upper bound of one UID FETCH, in messages.
    pub batch_count: usize,
    /// Bytes of fetched messages that may wait for the writers at once.
    pub memory_budget: u64,
}

impl Default for PullOptions {
    // Measured with scripts/bench.sh on 2 cores (README, Performance): 4 jobs
    // beat 2 and match 6-8; batches of 4 MiB within a 32 MiB budget let all
    // four connections stream at once.
    fn default() -> Self {
        PullOptions {
            jobs: 4,
            dry_run: false,
            batch_bytes: 4 * 1024 * 1024,
            batch_count: 2000,
            memory_budget: 32 * 1024 * 1024,
        }
    }
}

struct Ctx {
    archive: Archive,
    account: Arc<Account>,
    opts: PullOptions,
    progress: Arc<dyn Progress>,
    budget: Arc<Semaphore>,
    budget_kib: u32,
}

/// A failure while pulling one mailbox.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
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
    Fut: Future<Output = Result<R, ImapError>> + Send,
{
    bound_allocator();
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
                    _ => ExitCode::Partial,
                });
                report.error = Some(with_hint(&e));
                first.logout().await;
                return report;
            }
        }
    };
    let (targets, refused) = choose_mailboxes(&listed, |n| account.wants(n));
    for r in refused {
        report.mailboxes.push(MailboxReport {
            name: r.name,
            outcome: "failed",
            errors: vec![format!("not archived: {}", r.reason)],
            ..Default::default()
        });
    }
    let budget_kib = (opts.memory_budget / 1024).clamp(1, u32::MAX as u64) as u32;
    let jobs = opts.jobs.clamp(1, targets.len().max(1));
    let ctx = Arc::new(Ctx {
        archive,
        account: account.clone(),
        budget: Arc::new(Semaphore::new(budget_kib as usize)),
        budget_kib,
        opts,
        progress,
    });
    let queue = Arc::new(Mutex::new(VecDeque::from(targets)));
    let connect = Arc::new(connect);
    let results = super::pool::run(jobs, first, |conn| {
        let (ctx, queue, connect) = (ctx.clone(), queue.clone(), connect.clone());
        async move { worker(conn, &ctx, &queue, &*connect).await }
    })
    .await;
    for w in results {
        match w {
            Ok(reports) => report.mailboxes.extend(reports),
            Err(e) => report.mailboxes.push(MailboxReport {
                name: "(worker)".into(),
                outcome: "failed",
                errors: vec![format!("internal error: {e}")],
                ..Default::default()
            }),
        }
    }
    // Whatever no worker could reach (every connection lost) is reported.
    for t in queue.lock().expect("queue lock").drain(..) {
        report.mailboxes.push(MailboxReport {
            name: t.mailbox.name,
            folder: t.folder,
            outcome: "failed",
            errors: vec!["not pulled: no connection to the server".into()],
            ..Default::default()
        });
    }
    report.mailboxes.sort_by(|a, b| a.name.cmp(&b.name));
    report
}

/// Makes glibc return freed message buffers to the system at once. By
/// default glibc raises its mmap threshold to the largest block freed so
/// far (up to 32 MiB), after which every message buffer comes from heap
/// arenas that fragment and hold on to the memory: measured on the bench
/// corpus, peak RSS 136-144 MB with the default, 75-86 MB with this. Buffers
/// are allocated on the network threads and freed on the writer threads;
/// one arena keeps that from spreading over several (twice the corpus:
/// 88-97 MB with the default arenas, 66 MB with one; same CPU time).
fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning; called before
            // the worker threads start.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        });
    }
}

fn with_hint(e: &ArchiveError) -> String {
    match e {
        ArchiveError::Locked { .. } => format!(
            "{e}\nhint: wait for the other run to finish; a killed run releases the lock by itself"
        ),
        _ => e.to_string(),
    }
}

/// The one-line account error for a failed connection, with a hint.
pub fn connect_error(account: &Account, e: &ImapError) -> String {
    let hint = match e {
        ImapError::Connect { .. } | ImapError::Timeout { .. } => {
            "check `host` and `port`, and that the server is reachable"
        }
        ImapError::Handshake { .. } => {
            "if you trust this server's certificate, set `ca-file` to its CA, or `cert-fingerprint` to the sha256 value above"
        }
        ImapError::Auth { .. } => "check `user` and the password source",
        ImapError::NoStartTls(_) => "use `tls = \"implicit\"` (port 993) if the server offers it",
        _ => "run `imapbak check` for details",
    };
    format!(
        "{}:{} (account `{}`): {e}\nhint: {hint}",
        account.host, account.port, account.name
    )
}

async fn worker<R, F, Fut>(
    mut conn: Option<R>,
    ctx: &Ctx,
    queue: &Mutex<VecDeque<Target>>,
    connect: &F,
) -> Vec<MailboxReport>
where
    R: Remote,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<R, ImapError>>,
{
    let mut reports = Vec::new();
    loop {
        let Some(target) = queue.lock().expect("queue lock").pop_front() else {
            break;
        };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    log::warn!("extra connection failed: {e}");
                    queue.lock().expect("queue lock").push_front(target);
                    break;
                }
            },
        };
        let (rep, lost) = pull_mailbox(c, &target, ctx).await;
        reports.push(rep);
        if let Some(e) = lost {
            log::warn!(
                "connection lost while pulling `{}`: {e}",
                target.mailbox.name
            );
            conn = None;
        }
    }
    if let Some(c) = conn {
        c.logout().await;
    }
    reports
}

/// Pulls one mailbox. The second value is set when the connection is gone.
async fn pull_mailbox<R: Remote>(
    conn: &mut R,
    t: &Target,
    ctx: &Ctx,
) -> (MailboxReport, Option<ImapError>) {
    let mut rep = MailboxReport {
        name: t.mailbox.name.clone(),
        folder: t.folder.clone(),
        outcome: "fetched",
        ..Default::default()
    };
    match pull_mailbox_inner(conn, t, ctx, &mut rep).await {
        Ok(()) => (rep, None),
        Err(e) => {
            rep.outcome = "failed";
            rep.errors.push(e.to_string());
            match e {
                Failure::Imap(e) if e.is_connection_level() => (rep, Some(e)),
                _ => (rep, None),
            }
        }
    }
}

async fn pull_mailbox_inner<R: Remote>(
    conn: &mut R,
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
        rep.outcome = "unchanged";
        return Ok(());
    }
    let index = tokio::task::block_in_place(|| {
        if dry {
            Ok(Default::default())
        } else {
            folder.scan()
        }
    })?;
    let sel = conn.examine(&t.mailbox.raw).await?;
    let uv = sel.uidvalidity;
    if prior.uidvalidity != 0 && prior.uidvalidity != uv {
        rep.uidvalidity_changed = true;
        log::warn!(
            "UIDVALIDITY of `{}` changed ({} -> {}): keeping every archived message and starting a new generation",
            t.mailbox.name,
            prior.uidvalidity,
            uv
        );
    }
    let held: HashSet<u32> = index.uids(uv).collect();
    let mut keywords = folder.load_keywords()?;

    // Flags: mirror the server's changes by renaming archived files.
    let same_gen = prior.uidvalidity == uv;
    let modseq_same =
        same_gen && prior.highestmodseq.is_some() && prior.highestmodseq == sel.highestmodseq;
    let remote_flags = if held.is_empty() || modseq_same {
        Vec::new()
    } else {
        let since = if same_gen && sel.highestmodseq.is_some() {
            prior.highestmodseq
        } else {
            None
        };
        conn.flags(since).await?
    };
    let remote_letters: Vec<(u32, String)> = remote_flags
        .iter()
        .filter(|f| held.contains(&f.uid))
        .map(|f| (f.uid, letters(&f.flags, &mut keywords, &t.mailbox.name)))
        .collect();
    let archived: HashMap<u32, String> = remote_letters
        .iter()
        .filter_map(|(uid, _)| Some((*uid, index.file_for(uv, *uid)?.name.flags.clone())))
        .collect();
    let changes = flag_changes(&remote_letters, &archived);
    rep.flag_updates = changes.len() as u64;
    if !dry && !changes.is_empty() {
        tokio::task::block_in_place(|| -> Result<(), ArchiveError> {
            folder.save_keywords(&mut keywords)?;
            let mut renamed = HashSet::new();
            for c in &changes {
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

    // New messages.
    // A file that vanished from the archive is fetched again.
    let lowest_missing = index
        .missing
        .iter()
        .filter(|(v, _)| *v == uv)
        .map(|(_, u)| *u)
        .min();
    let from = list_from(&prior, uv).min(lowest_missing.unwrap_or(u32::MAX));
    let candidates = if sel.exists == 0 || (sel.uidnext != 0 && sel.uidnext <= from) {
        Vec::new()
    } else {
        conn.uid_sizes(from).await?
    };
    let batches = fetch_batches(
        &candidates,
        &held,
        ctx.opts.batch_bytes,
        ctx.opts.batch_count,
    );
    let planned: Vec<u32> = batches.concat();
    let sizes: HashMap<u32, u32> = candidates.iter().copied().collect();
    let planned_bytes: u64 = planned.iter().map(|u| sizes[u] as u64).sum();
    if dry {
        rep.outcome = "planned";
        rep.fetched = planned.len() as u64;
        rep.bytes = planned_bytes;
        return Ok(());
    }
    let mut failed: Vec<u32> = Vec::new();
    let mut first_error: Option<Failure> = None;
    if planned.is_empty() {
        if changes.is_empty() {
            rep.outcome = "unchanged";
        }
    } else {
        ctx.progress
            .mailbox_started(&t.mailbox.name, planned.len() as u64, planned_bytes);
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
        for batch in &batches {
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
            let limit = literal_limit(batch, &sizes, ctx.account.max_message_size);
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
        }
        drop(sink);
        let out = tokio::task::block_in_place(|| writer.join()).unwrap_or_else(|_| WriteOutcome {
            error: Some(ArchiveError::Damaged {
                path: folder.path().to_path_buf(),
                reason: "the writer thread panicked".into(),
            }),
            ..Default::default()
        });
        ctx.progress.mailbox_finished(&t.mailbox.name);
        rep.fetched = out.stored.len() as u64;
        rep.bytes = out.bytes;
        rep.bytes_on_disk = out.compressed;
        rep.deduplicated = out.dedup;
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
        floor: next_floor(from, sel.uidnext, &planned, &failed),
        last_pull: chrono::Utc::now().timestamp(),
    };
    folder.save_status(&status)?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
    async fn send(&self, msg: FetchedMessage) -> Result<(), ImapError> {
        let share = {
            let mut reserved = self.reserved.lock().await;
            reserved.as_mut().and_then(|r| {
                let n = (kib_of(msg.size as usize) as usize).min(r.num_permits());
                r.split(n)
            })
        };
        self.tx
            .send((msg, share))
            .map_err(|_| ImapError::Protocol("the archive writer stopped".into()))
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

/// Runs on its own thread: compress, write, fsync, rename; then, whenever
/// the queue runs dry (or every 512 messages), one directory fsync and one
/// journal append for the whole burst.
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
    let mut pending: Vec<(JournalEntry, HeaderRecord)> = Vec::new();
    let commit = |pending: &mut Vec<(JournalEntry, HeaderRecord)>, out: &mut WriteOutcome| {
        if pending.is_empty() {
            return Ok(());
        }
        folder.sync()?;
        let (entries, headers): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
        folder.journal(&entries)?;
        out.stored.extend(entries.iter().map(|e| e.uid));
        // The header index is a cache (rebuildable from the tree): a failure
        // to update it is worth a warning, not a failed message.
        if let Err(e) = folder.record_headers(&headers) {
            log::warn!("header index not updated: {e}");
        }
        Ok::<(), ArchiveError>(())
    };
    loop {
        let item = match rx.try_recv() {
            Ok(item) => Some(item),
            Err(TryRecvError::Empty) => {
                if let Err(e) = commit(&mut pending, &mut out) {
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
            uidvalidity,
            level,
            &mut keywords,
            &old,
            &msg,
            mailbox,
        );
        match result {
            Ok((entry, compressed, alias)) => {
                out.bytes += entry.size;
                out.compressed += compressed;
                out.dedup += alias as u64;
                let headers = HeaderRecord::from_message(
                    entry.uidvalidity,
                    entry.uid,
                    msg.internaldate.timestamp(),
                    &entry.base,
                    &msg.body,
                );
                pending.push((entry, headers));
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
        progress.message_written(mailbox, msg.body.len() as u64);
        drop(msg);
        drop(permit);
        if pending.len() >= 512 {
            if let Err(e) = commit(&mut pending, &mut out) {
                out.error = Some(e);
                return out;
            }
        }
    }
    // What was written before a failure is still made durable and journaled.
    if let Err(e) = commit(&mut pending, &mut out) {
        out.error.get_or_insert(e);
    }
    out
}

fn write_one(
    folder: &Folder,
    uidvalidity: u32,
    level: i32,
    keywords: &mut Keywords,
    old: &HashMap<String, String>,
    msg: &FetchedMessage,
    mailbox: &str,
) -> Result<(JournalEntry, u64, bool), ArchiveError> {
    if !old.is_empty() {
        let sha256 = sha256_hex(&msg.body);
        if let Some(base) = old.get(&sha256) {
            // Already archived under an earlier UIDVALIDITY: record, don't copy.
            return Ok((
                JournalEntry {
                    uidvalidity,
                    uid: msg.uid,
                    size: msg.body.len() as u64,
                    sha256,
                    base: base.clone(),
                },
                0,
                true,
            ));
        }
    }
    let flags = letters(&msg.flags, keywords, mailbox);
    folder.save_keywords(keywords)?;
    let w = folder.write_message(
        uidvalidity,
        msg.uid,
        msg.internaldate.timestamp(),
        &flags,
        &msg.body,
        level,
    )?;
    Ok((w.entry, w.compressed, false))
}
