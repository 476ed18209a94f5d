//! Restore's executor: reads the archive, then applies the plan through
//! [`RestoreTarget`] on `jobs` connections, retrying and stopping by scope.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::future::Future;
use std::io::Read;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

use super::plan::{
    is_quota, is_throttle, match_messages, message_id_of, plan_mailboxes, surplus_copies,
    target_uids_to_hash, upload_batches, upload_flags, MailboxPlan, MessageKey, RestoreOptions,
    SourceMailbox, SourceMessage, Unanswered,
};
use super::report::{RestoreMailboxReport, RestoreReport};
use super::state::{Intent, RestoreState};
use super::{RestoreTarget, TargetMessage, Upload};
use crate::archive::names::levels_for;
use crate::archive::{hash_file, read_message_sized, Archive, Keywords};
use crate::exit_codes::ExitCode;
use crate::progress::Progress;
use crate::sync::gmail;
use crate::sync::gmail::restore::LabelsPending;
use crate::sync::interrupt;
use crate::sync::memory::{self, Budget};
use crate::sync::pool::{self, Slot, Step, Task};
use crate::sync::remote::{ErrorKind, RemoteError, Selected};

/// Lists every archived mailbox and its messages, reading nothing but
/// directory entries and `dovecot-keywords`. Folders whose name is not one
/// imapbak writes are skipped with a warning.
pub fn read_archive(archive: &Archive) -> Result<Vec<SourceMailbox>, crate::archive::ArchiveError> {
    use crate::archive::ArchiveError;
    let mail = archive.mail_dir();
    let mut dirs = vec![String::new()];
    let rd = fs::read_dir(&mail).map_err(ArchiveError::io("cannot read directory", &mail))?;
    for e in rd {
        let e = e.map_err(ArchiveError::io("cannot read directory", &mail))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(name);
        }
    }
    dirs.sort();
    let source_prefix = archive
        .load_namespace()
        .map(|n| n.levels())
        .unwrap_or_default();
    let mut out = Vec::new();
    for dir in dirs {
        let Some(mut levels) = levels_for(&dir) else {
            log::warn!(
                "folder `{}` is not one imapbak writes; not restored",
                mail.join(&dir).display()
            );
            continue;
        };
        // A folder pulled before namespace prefixes were stripped
        // (`.INBOX.Sent` from Courier) is restored under the user's name.
        let prefix = source_prefix.as_slice();
        if !prefix.is_empty()
            && levels.len() > prefix.len()
            && levels
                .iter()
                .zip(prefix)
                .all(|(l, p)| l.eq_ignore_ascii_case(p))
        {
            levels.drain(..prefix.len());
        }
        let folder = archive.folder(&dir);
        if !folder.exists() {
            continue;
        }
        let found = folder.files()?;
        let foreign = found.strays.len();
        let mut messages: Vec<SourceMessage> = found
            .files
            .into_iter()
            .map(|f| SourceMessage {
                path: f.path,
                base: f.base,
                secs: f.name.secs,
                size: f.name.size,
                letters: f.name.flags,
            })
            .collect();
        if foreign > 0 {
            log::warn!(
                "{foreign} file(s) in `{}` are not imapbak's; not restored",
                folder.path().display()
            );
        }
        // Dovecot assigns UIDs in append order: oldest first keeps the order.
        messages.sort_by(|a, b| (a.secs, &a.base).cmp(&(b.secs, &b.base)));
        messages.dedup_by(|a, b| a.base == b.base);
        out.push(SourceMailbox {
            keywords: folder.load_keywords()?,
            dir,
            levels,
            messages,
        });
    }
    Ok(out)
}

/// The first header block of an archived message (at most 256 KiB are
/// decompressed).
fn read_header(path: &Path) -> Result<Vec<u8>, crate::archive::ArchiveError> {
    use crate::archive::ArchiveError;
    let file = File::open(path).map_err(ArchiveError::io("cannot open", path))?;
    let mut dec =
        zstd::stream::Decoder::new(file).map_err(ArchiveError::io("cannot open", path))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = dec.read(&mut buf).map_err(|e| ArchiveError::Damaged {
            path: path.to_path_buf(),
            reason: format!("does not decompress: {e}"),
        })?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = header_end(&out) {
            out.truncate(end);
            break;
        }
        if out.len() > 256 * 1024 {
            break;
        }
    }
    Ok(out)
}

fn header_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Attempts per mailbox when the connection drops or the server throttles.
const ATTEMPTS: u32 = 5;
/// Upper bounds of one APPEND batch (one MULTIAPPEND command where the
/// server offers it).
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
const BATCH_COUNT: usize = 256;
/// Bytes of archived messages read and not yet answered by the server, all
/// connections together ([`Budget`]): each job sends one batch while it
/// reads the next when the budget has room; a message larger than the
/// budget goes alone. As pull's, so restore's peak memory stays within 2 x
/// the largest message + 32 MB.
const MEMORY_BUDGET: u64 = 32 * 1024 * 1024;

/// Why a mailbox attempt stopped.
#[derive(Debug)]
enum Stop {
    /// Connection lost or throttled: reconnect, back off, retry.
    Retry(String),
    /// The target is full: the whole run stops.
    Quota(String),
    /// This mailbox failed; go on with the next.
    Failed(String),
}

struct Ctx {
    opts: RestoreOptions,
    progress: Arc<dyn Progress>,
    state: Option<RestoreState>,
    /// Set when the target is over quota: every worker stops.
    stop: AtomicBool,
    quota: Mutex<Option<String>>,
    target_name: String,
    /// Gmail target: each All Mail message's labels, by base name.
    labels: Option<HashMap<String, Vec<String>>>,
    /// The target's APPENDLIMIT.
    append_limit: Option<u64>,
    /// Shared by every job: bytes read ahead or in flight.
    budget: Budget,
}

/// Restores the archive of `source_name` (already read into `sources`)
/// into the server `connect` reaches. Never panics on server input; every
/// failure ends up in the report with its scope.
pub async fn restore_account<R, F, Fut>(
    source_name: &str,
    target_name: &str,
    sources: Vec<SourceMailbox>,
    state: Option<RestoreState>,
    opts: RestoreOptions,
    progress: Arc<dyn Progress>,
    connect: F,
) -> RestoreReport
where
    R: RestoreTarget + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, RemoteError>> + Send,
{
    memory::bound_allocator();
    let mut report = RestoreReport {
        account: source_name.to_string(),
        target: target_name.to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut first = match connect().await {
        Ok(c) => c,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(format!("cannot connect to `{target_name}`: {e}"));
            return report;
        }
    };
    let listing = async {
        let listed = first.list().await?;
        let delim = first.delimiter().await?;
        Ok::<_, RemoteError>((listed, delim))
    };
    let (listed, delimiter) = match listing.await {
        Ok(x) => x,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(format!("cannot list the mailboxes of `{target_name}`: {e}"));
            return report;
        }
    };
    let mut opts = opts;
    let namespace = first.namespace();
    opts.namespace_prefix = namespace
        .as_ref()
        .map(|n| n.prefix.clone())
        .unwrap_or_default();
    // The namespace's delimiter is the one its names use.
    let delimiter = namespace.and_then(|n| n.delimiter).or(delimiter);
    // Gmail's rules (sync::gmail::restore): into Gmail, All Mail once and
    // labels by STORE; elsewhere, optionally without All Mail's duplicates.
    let mut sources = sources;
    let mut labels = None;
    if let Some(g) = opts.gmail_archive.clone() {
        if opts.gmail_target && first.has_capability("X-GM-EXT-1") {
            let by_base = gmail::restore::labels_by_base(&sources, &g);
            sources = match gmail::restore::sources_for_gmail(sources, &g, &listed) {
                Ok(s) => s,
                Err(e) => {
                    report.code = Some(ExitCode::Usage);
                    report.error = Some(e);
                    return report;
                }
            };
            opts.prefix.clear();
            let wanted = by_base.values().flatten();
            for label in gmail::restore::labels_to_create(wanted, &listed) {
                if opts.dry_run {
                    continue;
                }
                let raw = crate::mutf7::encode(&label);
                if let Err(e) = first.create(&raw).await {
                    report.code = Some(ExitCode::Partial);
                    report.error = Some(format!(
                        "the target refused to create the label `{label}`: {e}\nhint: create it in Gmail, then run the same command again"
                    ));
                    return report;
                }
            }
            labels = Some(
                by_base
                    .into_iter()
                    .map(|(b, l)| (b, l.into_iter().collect()))
                    .collect(),
            );
        } else if opts.skip_all_mail_duplicates {
            gmail::restore::drop_all_mail_duplicates(&mut sources, &g);
        }
    }
    let (plans, refused) = plan_mailboxes(&sources, &listed, delimiter, &opts);
    for r in refused {
        report.mailboxes.push(RestoreMailboxReport {
            source: r.source,
            outcome: "skipped",
            errors: vec![format!("not restored: {}", r.reason)],
            ..Default::default()
        });
    }

    // Mailboxes are created one by one, parents first, before any append.
    let mut ready = Vec::new();
    for p in plans {
        if p.create && !opts.dry_run {
            if let Err(e) = first.create(&p.raw).await {
                let lost = e.is_connection_level();
                report.mailboxes.push(RestoreMailboxReport {
                    source: p.source.clone(),
                    target: p.target.clone(),
                    outcome: "failed",
                    errors: vec![format!(
                        "the target refused to create `{}`: {e}\nhint: pick another name with --prefix",
                        p.target
                    )],
                    ..Default::default()
                });
                if lost {
                    report.code = Some(ExitCode::Connection);
                    report.error = Some(format!("connection to `{target_name}` lost: {e}"));
                    return report;
                }
                continue;
            }
        }
        ready.push(p);
    }
    ready.sort_by_key(|p| std::cmp::Reverse(p.messages.len()));

    let append_limit = first.append_limit();
    let jobs = opts.jobs.clamp(1, ready.len().max(1));
    let jobs_list: Vec<Job> = ready
        .into_iter()
        .map(|plan| Job {
            rep: RestoreMailboxReport {
                source: plan.source.clone(),
                target: plan.target.clone(),
                created: plan.create,
                ..Default::default()
            },
            plan,
        })
        .collect();
    let task = Arc::new(RestoreTask {
        ctx: Ctx {
            opts,
            progress,
            state,
            stop: AtomicBool::new(false),
            quota: Mutex::new(None),
            target_name: target_name.to_string(),
            labels,
            append_limit,
            budget: Budget::new(MEMORY_BUDGET),
        },
        connect,
        _conn: PhantomData,
    });
    let done = pool::run(jobs, first, jobs_list, task.clone()).await;
    report.mailboxes.extend(done.reports);
    if let Some(e) = done.panics.into_iter().next() {
        report.error = Some(format!("internal error: {e}"));
    }
    let ctx = &task.ctx;
    let quota = ctx.quota.lock().expect("quota lock").clone();
    for p in done.left.into_iter().map(|j| j.plan) {
        let why = if quota.is_some() {
            "not restored: the target is over quota"
        } else if interrupt::requested().is_some() {
            "not restored: interrupted; run the same command again"
        } else {
            "not restored: no connection to the server"
        };
        report.mailboxes.push(RestoreMailboxReport {
            source: p.source,
            target: p.target,
            created: p.create,
            outcome: "skipped",
            errors: vec![why.into()],
            ..Default::default()
        });
    }
    if let Some(text) = quota {
        report.code = Some(ExitCode::QuotaFull);
        report.error = Some(format!(
            "the target `{target_name}` is over quota; restore stopped: {text}\n\
             hint: free space or raise the quota on the target, then run the same command again \
             (messages already restored are skipped)"
        ));
    }
    report.mailboxes.sort_by(|a, b| a.source.cmp(&b.source));
    report
}

/// One mailbox on its way through the pool: the plan and its report so
/// far (counts add up over attempts).
struct Job {
    plan: MailboxPlan,
    rep: RestoreMailboxReport,
}

/// Restore's work on one mailbox for the pool: up to [`ATTEMPTS`] tries,
/// reconnecting and backing off when the connection drops or the server
/// throttles.
struct RestoreTask<R, F> {
    ctx: Ctx,
    connect: F,
    _conn: PhantomData<fn() -> R>,
}

impl<R, F, Fut> Task for RestoreTask<R, F>
where
    R: RestoreTarget + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, RemoteError>> + Send,
{
    type Item = Job;
    type Conn = R;
    type Report = RestoreMailboxReport;

    fn connect(&self) -> impl Future<Output = Result<R, RemoteError>> + Send {
        (self.connect)()
    }

    fn stopped(&self) -> bool {
        self.ctx.stop.load(Ordering::SeqCst)
    }

    async fn work(
        &self,
        slot: &mut Slot<R>,
        job: &mut Job,
        attempt: u32,
    ) -> Step<RestoreMailboxReport> {
        let ctx = &self.ctx;
        let c = match slot.get(self).await {
            Ok(c) => c,
            Err(e) if attempt < ATTEMPTS => {
                log::warn!("cannot reconnect to `{}`: {e}; retrying", ctx.target_name);
                return Step::Retry(e.to_string());
            }
            Err(e) => {
                job.rep.outcome = "failed";
                job.rep
                    .errors
                    .push(format!("not restored: cannot connect to the server: {e}"));
                return Step::Done(std::mem::take(&mut job.rep));
            }
        };
        job.rep.errors.clear();
        match restore_mailbox(c, &job.plan, ctx, &mut job.rep).await {
            Ok(()) => Step::Done(std::mem::take(&mut job.rep)),
            Err(Stop::Retry(why)) if attempt < ATTEMPTS => {
                // Appends sent on the lost connection may still land: their
                // intent stays recorded and the next attempt removes any
                // copy of them beyond the first.
                log::warn!(
                    "`{}`: {why}; retrying (attempt {} of {ATTEMPTS})",
                    job.plan.target,
                    attempt + 1
                );
                Step::Retry(why)
            }
            Err(Stop::Retry(why)) => {
                job.rep.outcome = "failed";
                job.rep
                    .errors
                    .push(format!("gave up after {ATTEMPTS} attempts: {why}"));
                Step::Lost(std::mem::take(&mut job.rep))
            }
            Err(Stop::Quota(text)) => {
                job.rep.outcome = "failed";
                ctx.stop.store(true, Ordering::SeqCst);
                ctx.quota
                    .lock()
                    .expect("quota lock")
                    .get_or_insert(text.clone());
                job.rep.errors.push(format!("over quota: {text}"));
                Step::Done(std::mem::take(&mut job.rep))
            }
            Err(Stop::Failed(why)) => {
                job.rep.outcome = "failed";
                job.rep.errors.push(why);
                Step::Done(std::mem::take(&mut job.rep))
            }
        }
    }
}

fn classify(e: RemoteError) -> Stop {
    let refused = e.kind() == ErrorKind::Refused;
    let refused_or_closed = refused || e.kind() == ErrorKind::Closed;
    let text = e.server_text().unwrap_or_default();
    if refused && is_quota(text) {
        Stop::Quota(text.to_string())
    } else if (refused_or_closed && is_throttle(text)) || e.is_connection_level() {
        Stop::Retry(e.to_string())
    } else {
        Stop::Failed(e.to_string())
    }
}

/// One attempt at one mailbox; what was appended before a failure stays in
/// `rep` (and on the server, where the next attempt finds it).
async fn restore_mailbox<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
) -> Result<(), Stop> {
    let dry = ctx.opts.dry_run;
    let (sel, target) = if plan.create && dry {
        (Selected::default(), Vec::new())
    } else {
        conn.fingerprints(&plan.raw).await.map_err(classify)?
    };
    let uv = sel.uidvalidity;
    // Batches a killed run (or a lost connection) sent without reading the
    // answer; their copies may land at any moment, even after this look.
    let unanswered = match &ctx.state {
        Some(s) if uv != 0 && !dry => s.intents(&plan.raw, uv),
        _ => Vec::new(),
    };
    let recorded = match &ctx.state {
        Some(s) if uv != 0 => s.load(&plan.raw, uv),
        _ => HashMap::new(),
    };
    let to_hash = target_uids_to_hash(&plan.messages, &target);
    let hashes: HashMap<u32, String> = conn
        .body_hashes(&to_hash)
        .await
        .map_err(classify)?
        .into_iter()
        .collect();
    let (missing, found_at) = tokio::task::block_in_place(|| {
        match_messages(
            &plan.messages,
            &target,
            &recorded,
            &hashes,
            |m| read_header(&m.path).map(|h| message_id_of(&h)),
            |m| hash_file(&m.path).map(|(_, h)| h),
        )
    })
    .map_err(|e| Stop::Failed(e.to_string()))?;
    let todo: Vec<&SourceMessage> = missing.iter().map(|&i| &plan.messages[i]).collect();
    // Messages appended by an earlier attempt of this run are on the target now.
    rep.present = ((plan.messages.len() - todo.len()) as u64).saturating_sub(rep.appended);
    if dry {
        rep.outcome = "planned";
        rep.appended = todo.len() as u64;
        rep.bytes = todo.iter().map(|m| m.size).sum();
        return Ok(());
    }
    // Gmail: labels that an interrupted attempt or run left unset go first.
    if ctx.labels.is_some() {
        finish_labels(conn, plan, ctx, rep, uv, &unanswered, &found_at).await?;
    }
    if todo.is_empty() {
        if rep.outcome.is_empty() {
            rep.outcome = if rep.appended > 0 || plan.create {
                "restored"
            } else {
                "unchanged"
            };
        }
    } else {
        rep.outcome = "restored";
        let total: u64 = todo.iter().map(|m| m.size).sum();
        ctx.progress
            .mailbox_started(&plan.target, todo.len() as u64, total);
        let result = append_all(conn, plan, &todo, ctx, rep, sel).await;
        ctx.progress.mailbox_finished(&plan.target);
        result?;
    }
    if !unanswered.is_empty() && interrupt::requested().is_none() {
        remove_surplus(conn, plan, ctx, rep, uv, &unanswered).await?;
        if let Some(s) = &ctx.state {
            for i in &unanswered {
                s.resolve(i);
            }
        }
    }
    if !rep.errors.is_empty() {
        rep.outcome = "failed";
    }
    Ok(())
}

/// Gmail: sets the labels still due in `plan`'s mailbox: those recorded
/// as due before a STORE that never completed, and those of messages whose
/// APPEND was sent but never answered (an unanswered batch) and that are
/// on the target now (`found_at`: source index -> target UID). A label
/// STORE is idempotent, so setting them twice is harmless.
async fn finish_labels<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
    uv: u32,
    unanswered: &[Intent],
    found_at: &HashMap<usize, u32>,
) -> Result<(), Stop> {
    let (Some(labels), Some(state)) = (&ctx.labels, &ctx.state) else {
        return Ok(());
    };
    if uv == 0 {
        return Ok(());
    }
    let pending = LabelsPending::at(state.dir(), &plan.raw);
    let mut due: BTreeMap<u32, String> = pending.load(uv).into_iter().collect();
    let in_flight: HashSet<&str> = unanswered
        .iter()
        .flat_map(|i| i.bases.iter().map(String::as_str))
        .collect();
    for (&i, &uid) in found_at {
        let base = &plan.messages[i].base;
        if in_flight.contains(base.as_str()) {
            due.entry(uid).or_insert_with(|| base.clone());
        }
    }
    let set: Vec<(u32, Vec<String>)> = due
        .iter()
        .filter_map(|(uid, base)| Some((*uid, labels.get(base).filter(|l| !l.is_empty())?.clone())))
        .collect();
    if !set.is_empty() {
        if let Err(e) = conn.add_labels(&plan.raw, &set).await {
            if e.is_connection_level() {
                return Err(classify(e));
            }
            rep.errors.push(format!(
                "labels of {} restored message(s) not set: {e}\nhint: run the same command again; the messages are in All Mail",
                set.len()
            ));
            return Ok(());
        }
        log::info!(
            "`{}`: set the labels of {} message(s) an interrupted restore had left without them",
            plan.target,
            set.len()
        );
    }
    let uids: Vec<u32> = due.keys().copied().collect();
    pending.done(uv, &uids);
    Ok(())
}

/// The second look, after appending into a mailbox for which unanswered
/// batches were recorded: fingerprints it again and removes the copies of
/// those batches' messages beyond the archive's count that restore can
/// prove it appended ([`surplus_copies`]). Without UIDPLUS (no UID EXPUNGE
/// of exactly those UIDs) the surplus is reported, never removed.
async fn remove_surplus<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
    uv: u32,
    unanswered: &[Intent],
) -> Result<(), Stop> {
    let (sel, target) = conn.fingerprints(&plan.raw).await.map_err(classify)?;
    if sel.uidvalidity != uv {
        // A new mailbox under the same name: nothing of those batches is in it.
        return Ok(());
    }
    let by_base: HashMap<&str, &SourceMessage> =
        plan.messages.iter().map(|m| (m.base.as_str(), m)).collect();
    let relevant: HashSet<(u64, i64)> = unanswered
        .iter()
        .flat_map(|i| i.bases.iter())
        .filter_map(|b| by_base.get(b.as_str()))
        .map(|m| (m.size, m.secs))
        .collect();
    let keyed: Vec<(&str, MessageKey)> = tokio::task::block_in_place(|| {
        plan.messages
            .iter()
            .filter(|m| relevant.contains(&(m.size, m.secs)))
            .map(|m| {
                let id = read_header(&m.path).map(|h| message_id_of(&h))?;
                let hash = match id {
                    Some(_) => None,
                    None => Some(hash_file(&m.path)?.1),
                };
                let key = MessageKey::new(m.size, m.secs, id.as_deref(), hash.as_deref())
                    .expect("an id or a hash");
                Ok((m.base.as_str(), key))
            })
            .collect::<Result<_, crate::archive::ArchiveError>>()
    })
    .map_err(|e| Stop::Failed(e.to_string()))?;
    let near: Vec<&TargetMessage> = target
        .iter()
        .filter(|t| relevant.contains(&(t.size, t.secs)))
        .collect();
    let to_hash: Vec<u32> = near
        .iter()
        .filter(|t| t.message_id.is_none())
        .map(|t| t.uid)
        .collect();
    let hashes: HashMap<u32, String> = conn
        .body_hashes(&to_hash)
        .await
        .map_err(classify)?
        .into_iter()
        .collect();
    let target_keys: Vec<(u32, Option<MessageKey>)> = near
        .iter()
        .map(|t| {
            let hash = hashes.get(&t.uid).map(String::as_str);
            (
                t.uid,
                MessageKey::new(t.size, t.secs, t.message_id.as_deref(), hash),
            )
        })
        .collect();
    let key_of: HashMap<&str, &MessageKey> = keyed.iter().map(|(b, k)| (*b, k)).collect();
    let batches: Vec<Unanswered> = unanswered
        .iter()
        .map(|i| Unanswered {
            uidnext: i.uidnext,
            keys: i
                .bases
                .iter()
                .filter_map(|b| key_of.get(b.as_str()).map(|k| (*k).clone()))
                .collect(),
        })
        .collect();
    let ours: HashSet<u32> = match &ctx.state {
        Some(s) => s.recorded_uids(&plan.raw, uv),
        None => HashSet::new(),
    };
    let archive_keys: Vec<MessageKey> = keyed.into_iter().map(|(_, k)| k).collect();
    let surplus = surplus_copies(&archive_keys, &target_keys, &ours, &batches);
    if surplus.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = surplus.iter().map(u32::to_string).collect();
    if !conn.has_capability("UIDPLUS") {
        rep.errors.push(format!(
            "UID {} are extra copies that an interrupted restore appended; not removed: the server lacks UIDPLUS, so they cannot be expunged alone\nhint: delete them with a mail client",
            list.join(", ")
        ));
        return Ok(());
    }
    conn.remove_copies(&plan.raw, uv, &surplus)
        .await
        .map_err(classify)?;
    log::info!(
        "`{}`: removed {} extra cop{} left by an interrupted restore (UID {})",
        plan.target,
        surplus.len(),
        if surplus.len() == 1 { "y" } else { "ies" },
        list.join(", ")
    );
    rep.removed += surplus.len() as u64;
    Ok(())
}

/// Reads messages ahead, one batch at a time and each only once the shared
/// budget holds its bytes ([`read_ahead`]), and appends them batch by
/// batch: each batch's intent is recorded before it is sent and removed
/// once its answer (each APPENDUID) is recorded. A batch's bytes go back to
/// the budget once the server has answered it.
async fn append_all<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    todo: &[&SourceMessage],
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
    sel: Selected,
) -> Result<(), Stop> {
    // A message over APPENDLIMIT is reported and skipped; the rest goes on.
    let mut todo: Vec<&SourceMessage> = todo.to_vec();
    if let Some(limit) = ctx.append_limit {
        todo.retain(|m| {
            if m.size <= limit {
                return true;
            }
            rep.errors.push(format!(
                "`{}` is {} bytes, over the target's APPENDLIMIT of {limit}; not restored\nhint: the server accepts no message this large; export it with `imapbak export` instead",
                m.path.display(),
                m.size
            ));
            false
        });
    }
    let todo = todo.as_slice();
    // No copy of the next batch can get a UID below this.
    let mut floor = sel.uidnext;
    let sizes: Vec<u64> = todo.iter().map(|m| m.size).collect();
    let batches = upload_batches(&sizes, BATCH_BYTES, BATCH_COUNT);
    let owned: Vec<SourceMessage> = todo.iter().map(|m| (*m).clone()).collect();
    let (reader, mut rx) = read_ahead(owned, batches, plan.keywords.clone(), ctx.budget.clone());
    let mut outcome = Ok(());
    let mut throttle = gmail::Throttle::default();
    while let Some((batch, reserved)) = rx.recv().await {
        let mut uploads = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for (m, up) in batch {
            match up {
                Ok(u) => {
                    uploads.push(u);
                    sources.push(m);
                }
                Err(e) => rep
                    .errors
                    .push(format!("cannot read archived message: {e}")),
            }
        }
        if uploads.is_empty() {
            continue;
        }
        let intent = match &ctx.state {
            Some(state) => {
                let bases: Vec<&str> = sources.iter().map(|m| m.base.as_str()).collect();
                match state.intend(&plan.raw, sel.uidvalidity, floor, &bases) {
                    Ok(i) => Some(i),
                    Err(e) => {
                        // Unrecorded, a killed run's copies could not be told apart.
                        outcome = Err(Stop::Failed(format!(
                            "cannot record the batch about to be appended in `{}`: {e}\nhint: check that the state directory is writable",
                            state.dir().display()
                        )));
                        break;
                    }
                }
            }
            None => None,
        };
        let mut records = Vec::new();
        let mut stop: Option<Stop> = None;
        let r = conn
            .append(&plan.raw, &uploads, |i, result| match result {
                Ok(uid) => {
                    let m = &sources[i];
                    rep.appended += 1;
                    rep.bytes += m.size;
                    ctx.progress.message_written(&plan.target, m.size);
                    if let Some((uv, uid)) = uid {
                        records.push((uv, uid, m.base.clone()));
                    }
                }
                Err(e) => match classify(e) {
                    Stop::Failed(text) => rep.errors.push(format!(
                        "the server rejected `{}`: {text}",
                        sources[i].path.display()
                    )),
                    s => {
                        stop.get_or_insert(s);
                    }
                },
            })
            .await;
        // Answered (or lost): the bytes go back for the next batch.
        drop((uploads, reserved));
        if let Some(max) = records.iter().map(|(_, uid, _)| *uid).max() {
            floor = floor.max(max.saturating_add(1));
        }
        if let Some(state) = &ctx.state {
            state.record(&plan.raw, &records);
            if let (Some(i), Ok(())) = (&intent, &r) {
                // Every message of the batch was answered.
                state.resolve(i);
            }
        }
        // Gmail: labels by STORE from the APPENDUIDs, named as due first, so
        // a kill or a cut before the STORE completes is finished by the next
        // attempt or run ([`finish_labels`]).
        if let Some(labels) = &ctx.labels {
            let due: Vec<(u32, String)> = records
                .iter()
                .filter(|(_, _, base)| labels.get(base).is_some_and(|l| !l.is_empty()))
                .map(|(_, uid, base)| (*uid, base.clone()))
                .collect();
            let uv = records.first().map_or(sel.uidvalidity, |r| r.0);
            let pending = ctx
                .state
                .as_ref()
                .map(|s| LabelsPending::at(s.dir(), &plan.raw));
            if let (Some(p), false) = (&pending, due.is_empty()) {
                if let Err(e) = p.add(uv, &due) {
                    log::warn!("cannot record the labels about to be set: {e}");
                }
            }
            if r.is_ok() && !due.is_empty() {
                let set: Vec<(u32, Vec<String>)> = due
                    .iter()
                    .map(|(uid, base)| (*uid, labels[base].clone()))
                    .collect();
                match conn.add_labels(&plan.raw, &set).await {
                    Ok(()) => {
                        if let Some(p) = &pending {
                            let uids: Vec<u32> = due.iter().map(|(u, _)| *u).collect();
                            p.done(uv, &uids);
                        }
                    }
                    Err(e) if e.is_connection_level() => {
                        outcome = Err(classify(e));
                        break;
                    }
                    Err(e) => rep.errors.push(format!(
                        "labels of {} restored message(s) not set: {e}\nhint: run the same command again; the messages are in All Mail",
                        set.len()
                    )),
                }
            }
        }
        if let Err(e) = r {
            outcome = Err(classify(e));
            break;
        }
        if let Some(s) = stop {
            outcome = Err(s);
            break;
        }
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        if interrupt::requested().is_some() {
            rep.errors
                .push("interrupted; run the same command again to restore the rest".into());
            break;
        }
        throttle.pace(conn.take_throttled(), &plan.target).await;
    }
    drop(rx);
    reader.abort();
    let _ = reader.await;
    outcome
}

/// One batch read from the archive, with the budget's reservation for it.
type ReadBatch = (
    Vec<(SourceMessage, Result<Upload, String>)>,
    OwnedSemaphorePermit,
);

/// Reads `batches` of `messages` in order on the blocking pool, each once
/// `budget` holds its bytes (by the sizes in the file names), and hands
/// them over one at a time: at most one batch waits in the channel while
/// the next is reserved and read. The reservation travels with the batch
/// and is given back when the receiver drops it.
fn read_ahead(
    messages: Vec<SourceMessage>,
    batches: Vec<(usize, usize)>,
    keywords: Keywords,
    budget: Budget,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<ReadBatch>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<ReadBatch>(1);
    let messages = Arc::new(messages);
    let keywords = Arc::new(keywords);
    let reader = tokio::spawn(async move {
        for (a, b) in batches {
            let bytes: u64 = messages[a..b].iter().map(|m| m.size).sum();
            let reserved = budget.reserve(bytes).await;
            let (messages, keywords) = (messages.clone(), keywords.clone());
            // The reservation stays with the bytes even if this task is
            // aborted while the read runs.
            let read = tokio::task::spawn_blocking(move || {
                let batch = messages[a..b]
                    .iter()
                    .map(|m| {
                        let up = read_message_sized(&m.path, m.size)
                            .map(|body| Upload {
                                flags: upload_flags(&m.letters, &keywords),
                                internaldate: m.secs,
                                body,
                            })
                            .map_err(|e| e.to_string());
                        (m.clone(), up)
                    })
                    .collect();
                (batch, reserved)
            });
            let Ok(batch) = read.await else { return };
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    (reader, rx)
}
