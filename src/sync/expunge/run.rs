//! The executor: applies the expunge plan to one account through an
//! [`ExpungeRemote`] and the archive, recording pending UIDs before each
//! STORE ("intended") and after its acknowledgement ("stored").

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use super::plan::{
    bytes_to_free, decide_pending, order_candidates, plan_mailbox, ArchivedCopy, Candidate, Chosen,
    ExpungeAction, ExpungeOptions, Limits, MailboxFacts, PendingDecision, Pick, Selection,
    SkipReason,
};
use super::report::{AccountExpunge, MailboxExpunge, QuotaUsage};
use super::state::{load_pending, save_pending, MarkState, Pending, PendingMark};
use super::{ExpungeRemote, ServerMeta, StoreOutcome};
use crate::archive::{hash_file, Archive, ArchiveError, Folder};
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::progress::Progress;
use crate::sync::gmail::{
    self,
    expunge::{confirm_in_trash, load_trash_pending, save_trash_pending, TrashEntry},
};
use crate::sync::mailboxes::{choose_mailboxes_in, Naming, Target};
use crate::sync::remote::{ListedMailbox, RemoteError};

/// A failure in one mailbox.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl Failure {
    fn connection_lost(&self) -> bool {
        matches!(self, Failure::Remote(e) if e.is_connection_level())
    }
}

/// One mailbox of the run, as gathered in the first pass.
struct Box_ {
    name: String,
    raw: String,
    folder: Folder,
    uidvalidity: u32,
    pending: Pending,
}

/// UIDs per command, so a command line stays far below server limits.
const CHUNK: usize = 500;

/// Expunges one account over `conn`. Never panics on server input; every
/// failure ends up in the report with its scope.
pub async fn expunge_account<R: ExpungeRemote>(
    account: &Account,
    opts: &ExpungeOptions,
    progress: Arc<dyn Progress>,
    mut conn: R,
) -> AccountExpunge {
    let report = AccountExpunge::new(account);
    let archive = Archive::at(&account.archive);
    if !archive.state_dir().is_dir() {
        conn.logout().await;
        return report.fail(
            ExitCode::Usage,
            format!(
                "no archive at `{}`: nothing can be verified, so nothing is expunged\nhint: run `imapbak pull --account {}` first",
                account.archive.display(),
                account.name
            ),
        );
    }
    let _lock = match archive.lock() {
        Ok(l) => l,
        Err(e) => {
            conn.logout().await;
            let code = match e {
                ArchiveError::Locked { .. } => ExitCode::Locked,
                _ => ExitCode::Partial,
            };
            return report.fail(
                code,
                format!(
                    "{e}\nhint: wait for the other run to finish; expunge never runs during a pull"
                ),
            );
        }
    };
    if !conn.has_capability("UIDPLUS") && !conn.has_capability("IMAP4REV2") {
        conn.logout().await;
        return report.fail(
            ExitCode::Partial,
            format!(
                "server `{}` offers neither UIDPLUS nor IMAP4rev2, so it cannot expunge single messages; refusing (a plain EXPUNGE would also remove messages other clients marked \\Deleted)\nhint: nothing was deleted; ask the provider for UIDPLUS, or delete old mail with a mail client",
                account.host
            ),
        );
    }
    let gmail = account.gmail && gmail::is_gmail(|c| conn.has_capability(c));
    if gmail && !conn.has_capability("MOVE") {
        conn.logout().await;
        // Without MOVE, Trash is reached only by a label STORE, which this
        // run does not attempt (PROVIDERS.md, "Gmail").
        return report.fail(
            ExitCode::Usage,
            format!(
                "server `{}` is Gmail but offers no MOVE, so mail cannot be moved to Trash (the one way Gmail frees quota); nothing was deleted\nhint: delete old mail in Gmail itself (search `older_than:1y`), it is safe in the archive",
                account.host
            ),
        );
    }
    if opts.free_to.is_some() && !conn.has_capability("QUOTA") {
        conn.logout().await;
        return report.fail(
            ExitCode::Usage,
            format!(
                "server `{}` does not offer QUOTA, so `--free-to` has no usage to aim at\nhint: use `--older-than` instead",
                account.host
            ),
        );
    }
    let mut run = Run {
        account,
        opts,
        progress,
        report,
        boxes: HashMap::new(),
        gmail: gmail.then(GmailRun::default),
        throttle: gmail::Throttle::default(),
    };
    match run.go(&mut conn).await {
        Ok(()) => {}
        Err(e) => {
            let msg = e.to_string();
            if run.report.error.is_none() {
                run.report.code = Some(
                    if matches!(e, Failure::Remote(ref i) if i.is_connection_level()) {
                        ExitCode::Connection
                    } else {
                        ExitCode::Partial
                    },
                );
                run.report.error = Some(msg);
            }
        }
    }
    warn_left_alone(&mut run.report);
    conn.logout().await;
    run.report
}

struct Run<'a> {
    account: &'a Account,
    opts: &'a ExpungeOptions,
    progress: Arc<dyn Progress>,
    report: AccountExpunge,
    boxes: HashMap<usize, Box_>,
    /// Gmail mode: candidates come from `\All`, and go through Trash.
    gmail: Option<GmailRun>,
    /// The pause after a batch the server answered `[THROTTLED]`.
    throttle: gmail::Throttle,
}

/// What a Gmail run knows beyond the generic one.
#[derive(Default)]
struct GmailRun {
    /// Label -> mailbox name, for `--mailbox`.
    names: HashMap<String, String>,
    /// `\Trash`'s name as the server sends it.
    trash: String,
    /// All Mail's X-GM-MSGIDs as recorded at pull, by UID.
    ids: HashMap<u32, u64>,
}

impl Run<'_> {
    async fn quota<R: ExpungeRemote>(&self, conn: &mut R) -> Result<Option<QuotaUsage>, Failure> {
        if !conn.has_capability("QUOTA") {
            return Ok(None);
        }
        Ok(QuotaUsage::of(&conn.quota_roots("INBOX").await?))
    }

    async fn go<R: ExpungeRemote>(&mut self, conn: &mut R) -> Result<(), Failure> {
        let before = self.quota(conn).await?;
        self.report.quota_before = before.clone();
        let mut need = match (self.opts.free_to, &before) {
            (Some(p), Some(q)) => {
                match bytes_to_free(q.usage_bytes / 1024, q.limit_bytes / 1024, p) {
                    Some(n) => Some(n),
                    None => {
                        self.report.code = Some(ExitCode::Usage);
                        self.report.error = Some(format!(
                        "quota root `{}` has no storage limit, so `--free-to` has nothing to aim at\nhint: use `--older-than` instead",
                        q.root
                    ));
                        return Ok(());
                    }
                }
            }
            (Some(_), None) => {
                self.report.code = Some(ExitCode::Usage);
                self.report.error = Some(
                    "the server reports no STORAGE quota for INBOX, so `--free-to` has nothing to aim at\nhint: use `--older-than` instead".into(),
                );
                return Ok(());
            }
            _ => None,
        };

        // Pass 1: read-only. What the server holds, what the archive holds.
        let listed = conn.list_mailboxes().await?;
        let globs = self.opts.mailboxes.clone();
        let archive = Archive::at(&self.account.archive);
        let naming = Naming::for_archive(conn.namespace().as_ref(), &archive);
        let (targets, refused) = if let Some(g) = &mut self.gmail {
            // Gmail: every message is in `\All` once; labels only select.
            let layout = match gmail::layout(&listed, &naming, |_| true, false) {
                Ok(l) => l,
                Err(e) => {
                    self.report.code = Some(ExitCode::Usage);
                    self.report.error = Some(e);
                    return Ok(());
                }
            };
            let Some(trash) = gmail::expunge::trash(&listed) else {
                self.report.code = Some(ExitCode::Usage);
                self.report.error = Some(
                    "the account shows no Trash (`\\Trash`) mailbox, and Gmail frees quota only through Trash; nothing was deleted\nhint: in Gmail's settings, Labels, tick \"Show in IMAP\" for Trash".into(),
                );
                return Ok(());
            };
            g.trash = trash.raw.clone();
            g.names = layout.names.clone();
            (vec![layout.all], Vec::new())
        } else {
            choose_mailboxes_in(&listed, &naming, |n| {
                self.account.wants(n) && globs.as_ref().is_none_or(|g| g.is_match(n))
            })
        };
        let targets: Vec<Target> = targets;
        for r in refused {
            log::info!(
                "mailbox `{}` is not archived ({}); left alone",
                r.name,
                r.reason
            );
        }
        let archive = Archive::at(&self.account.archive);
        let sel = Selection {
            cut: self.opts.cut,
            keep_flagged: self.opts.keep_flagged,
            keep_unseen: self.opts.keep_unseen,
        };
        let mut candidates = Vec::new();
        let mut unmark: HashMap<usize, Vec<u32>> = HashMap::new();
        let mut targets = targets;
        targets.sort_by(|a, b| a.mailbox.name.cmp(&b.mailbox.name));
        for t in targets {
            let folder = archive.folder(&t.folder);
            let idx = self.report.mailboxes.len();
            self.report.mailboxes.push(MailboxExpunge {
                name: t.mailbox.name.clone(),
                folder: t.folder.clone(),
                ..Default::default()
            });
            match self.gather(conn, &t.mailbox, folder, idx, &sel).await {
                Ok(Some((c, u))) => {
                    candidates.extend(c);
                    if !u.is_empty() {
                        unmark.insert(idx, u);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let lost = e.connection_lost();
                    self.report.mailboxes[idx].errors.push(e.to_string());
                    if lost {
                        return Err(e);
                    }
                }
            }
        }
        order_candidates(&mut candidates);

        // Pass 2: verify oldest first until the limits are met, then delete.
        // A server whose usage figure lags must not make every round free a
        // whole `need` again: all rounds together free at most the first
        // `need` plus a tenth (room for the server counting in its own units).
        let ceiling = need.map(|n| n + n / 10);
        let mut cursor = 0usize;
        let mut rounds = 0;
        loop {
            rounds += 1;
            let limits = Limits {
                max: self
                    .opts
                    .max
                    .map(|m| m.saturating_sub(self.report.messages.len() as u64)),
                bytes: need,
            };
            let chosen = self.verify_until(&candidates, &mut cursor, limits, &mut unmark);
            if self.opts.dry_run {
                self.record(&chosen);
                break;
            }
            self.apply(conn, chosen).await?;
            unmark.clear();
            if need.is_none() || cursor >= candidates.len() || rounds >= 10 {
                break;
            }
            // Quota is counted by the server in its own units: ask again.
            let now = self.quota(conn).await?;
            let freed: u64 = self.report.messages.iter().map(|m| m.size).sum();
            need = match (self.opts.free_to, now, ceiling) {
                (Some(p), Some(q), Some(c)) => {
                    bytes_to_free(q.usage_bytes / 1024, q.limit_bytes / 1024, p)
                        .map(|n| n.min(c.saturating_sub(freed)))
                }
                _ => None,
            };
            if need.is_none_or(|n| n == 0)
                || self
                    .opts
                    .max
                    .is_some_and(|m| self.report.messages.len() as u64 >= m)
            {
                break;
            }
        }
        self.report.beyond_limit = candidates.len().saturating_sub(cursor) as u64;
        for m in &self.report.mailboxes {
            for (r, n) in &m.skipped {
                *self.report.skipped.entry(*r).or_default() += n;
            }
        }
        self.report.expunged = self.report.messages.len() as u64;
        self.report.bytes_freed = self.report.messages.iter().map(|m| m.size).sum();
        if !self.opts.dry_run {
            self.report.quota_after = self.quota(conn).await?;
        }
        Ok(())
    }

    /// Pass 1 for one mailbox: EXAMINE, metadata, scan, plan.
    async fn gather<R: ExpungeRemote>(
        &mut self,
        conn: &mut R,
        mailbox: &ListedMailbox,
        folder: Folder,
        idx: usize,
        sel: &Selection,
    ) -> Result<Option<(Vec<Candidate>, Vec<u32>)>, Failure> {
        let status = folder.load_status()?;
        if status.uidvalidity == 0 || !folder.exists() {
            log::info!("mailbox `{}` was never pulled; left alone", mailbox.name);
            return Ok(None);
        }
        if self.gmail.is_some() && !self.opts.dry_run {
            // A run killed between the move and the expunge left these in
            // Trash: finish them before anything else.
            let mut trash = load_trash_pending(folder.state_dir())?;
            self.finish_trash(conn, folder.state_dir(), &mut trash, idx, true)
                .await?;
        }
        let selected = conn.examine(&mailbox.raw).await?;
        let index = tokio::task::block_in_place(|| folder.scan())?;
        let messages = if selected.exists == 0 {
            Vec::new()
        } else {
            conn.metadata(None).await?
        };
        let mut pending = load_pending(folder.state_dir())?;
        if pending.uidvalidity != selected.uidvalidity {
            pending.marks.clear();
        }
        // Only UIDs still on the server and still marked are left to finish
        // (or to report); an intent whose STORE never landed is forgotten.
        let before = pending.marks.len();
        pending.marks.retain(|p| {
            messages
                .iter()
                .any(|m| m.uid == p.uid && m.has_flag("\\Deleted"))
        });
        let mut changed = pending.marks.len() != before;
        let archived: HashMap<u32, ArchivedCopy> = index
            .entries
            .values()
            .filter(|e| e.uidvalidity == selected.uidvalidity)
            .filter_map(|e| {
                let f = index.files.get(&e.base)?;
                Some((
                    e.uid,
                    ArchivedCopy {
                        size: e.size,
                        internaldate: Some(f.name.secs),
                        sha256: e.sha256.clone(),
                        path: folder.path().join(f.subdir).join(f.name.full()),
                    },
                ))
            })
            .collect();
        let facts = MailboxFacts {
            server_uidvalidity: selected.uidvalidity,
            archived_uidvalidity: status.uidvalidity,
            floor: status.floor,
            messages: &messages,
            archived: &archived,
            pending: &pending,
            condstore: conn.has_capability("CONDSTORE"),
        };
        let mut plan = plan_mailbox(&facts, sel, idx);
        if let Some(g) = &mut self.gmail {
            // Gmail: the same X-GM-MSGID as recorded at pull, and, with
            // `--mailbox`, a label that matches.
            let ids = gmail::load_ids(folder.path(), folder.state_dir())?;
            let server: HashMap<u32, crate::sync::remote::GmailMeta> = if plan.candidates.is_empty()
            {
                HashMap::new()
            } else {
                conn.gmail_meta(None)
                    .await?
                    .into_iter()
                    .map(|m| (m.uid, m))
                    .collect()
            };
            let globs = &self.opts.mailboxes;
            let account = self.account;
            let mut kept = Vec::new();
            for c in plan.candidates.drain(..) {
                let Some(m) = server.get(&c.uid) else {
                    continue;
                };
                // include/exclude, like `--mailbox`, select by label.
                if !gmail::expunge::wanted_by_account(
                    &m.labels,
                    &g.names,
                    &mailbox.name,
                    |n| account.include.is_match(n),
                    |n| account.exclude.is_match(n),
                ) {
                    continue;
                }
                if let Some(globs) = globs {
                    if !gmail::expunge::selected_by_labels(
                        &m.labels,
                        &g.names,
                        &mailbox.name,
                        |n| globs.is_match(n),
                    ) {
                        continue;
                    }
                }
                if ids.get(&(selected.uidvalidity, c.uid)) != Some(&m.msgid) {
                    *plan.skipped.entry(SkipReason::MsgidDiffers).or_default() += 1;
                    continue;
                }
                g.ids.insert(c.uid, m.msgid);
                kept.push(c);
            }
            plan.candidates = kept;
        }
        // Reported once, then forgotten: from the next run on such a mark is
        // simply another client's, which is never touched either.
        if !plan.ambiguous.is_empty() {
            pending.remove(&plan.ambiguous);
            changed = true;
        }
        if !self.opts.dry_run && changed {
            save_pending(folder.state_dir(), &pending)?;
        }
        let rep = &mut self.report.mailboxes[idx];
        rep.skipped = plan.skipped.clone();
        rep.ambiguous_marks = plan.ambiguous.clone();
        for (uid, reason) in &plan.problems {
            rep.warnings.push(format!(
                "UID {uid} not expunged: {reason}\nhint: the server copy is kept; `imapbak verify` checks the archive"
            ));
        }
        if selected.uidvalidity != status.uidvalidity {
            rep.warnings.push(format!(
                "UIDVALIDITY changed since the pull ({} -> {}): nothing in this mailbox is expunged\nhint: run `imapbak pull` to archive the new generation first",
                status.uidvalidity, selected.uidvalidity
            ));
        }
        self.boxes.insert(
            idx,
            Box_ {
                name: mailbox.name.clone(),
                raw: mailbox.raw.clone(),
                folder,
                uidvalidity: selected.uidvalidity,
                pending,
            },
        );
        Ok(Some((plan.candidates, plan.unmark)))
    }

    /// Re-hashes candidates from `cursor` on until `limits` are met;
    /// resumed ones are always taken. A candidate that fails is skipped
    /// (and, if it carries our mark, queued for unmarking).
    fn verify_until(
        &mut self,
        candidates: &[Candidate],
        cursor: &mut usize,
        limits: Limits,
        unmark: &mut HashMap<usize, Vec<u32>>,
    ) -> HashMap<usize, Chosen> {
        let mut chosen: HashMap<usize, Chosen> = HashMap::new();
        for (i, u) in unmark.drain() {
            chosen.entry(i).or_default().unmark.extend(u);
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let todo: u64 = candidates[*cursor..].iter().map(|c| c.size).sum();
        self.progress
            .mailbox_started("verify", (candidates.len() - *cursor) as u64, todo);
        while *cursor < candidates.len() {
            let c = &candidates[*cursor];
            if !c.resumed && limits.reached(count, bytes) {
                break;
            }
            *cursor += 1;
            let verdict = tokio::task::block_in_place(|| verify(c));
            self.progress.message_written("verify", c.size);
            match verdict {
                Ok(()) => {
                    count += 1;
                    bytes += c.size;
                    chosen.entry(c.mailbox).or_default().uids.push(Pick {
                        uid: c.uid,
                        size: c.size,
                        internaldate: c.internaldate,
                        resumed: c.resumed,
                    });
                }
                Err((reason, detail)) => {
                    let rep = &mut self.report.mailboxes[c.mailbox];
                    *rep.skipped.entry(reason).or_default() += 1;
                    rep.warnings.push(format!(
                        "UID {} not expunged: {reason}: {detail}\nhint: the server copy is kept; `imapbak verify` checks the archive",
                        c.uid
                    ));
                    if c.resumed {
                        chosen.entry(c.mailbox).or_default().unmark.push(c.uid);
                    }
                }
            }
        }
        self.progress.mailbox_finished("verify");
        chosen
    }

    /// Records messages left as they are in mailbox `i`: `ambiguous`
    /// carry a `\Deleted` mark that may not be ours, `moved` were changed
    /// by another client between our last check and our STORE. Recorded at
    /// once, so a connection lost later does not hide them; the warnings
    /// come from [`warn_left_alone`] at the end of the run.
    fn left_alone(&mut self, i: usize, ambiguous: &mut Vec<u32>, moved: &mut Vec<u32>) {
        let rep = &mut self.report.mailboxes[i];
        for (list, into, reason) in [
            (
                ambiguous,
                &mut rep.ambiguous_marks,
                SkipReason::AmbiguousMark,
            ),
            (
                moved,
                &mut rep.changed_during_run,
                SkipReason::ChangedDuringRun,
            ),
        ] {
            list.sort_unstable();
            list.dedup();
            list.retain(|u| !into.contains(u));
            if list.is_empty() {
                continue;
            }
            *rep.skipped.entry(reason).or_default() += list.len() as u64;
            into.append(list);
            into.sort_unstable();
        }
    }

    fn action(
        &self,
        mailbox: usize,
        uid: u32,
        size: u64,
        date: i64,
        resumed: bool,
    ) -> ExpungeAction {
        ExpungeAction {
            mailbox: self.report.mailboxes[mailbox].name.clone(),
            uid,
            internaldate: chrono::DateTime::from_timestamp(date, 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default(),
            size,
            resumed,
        }
    }

    /// Dry run: records what would go.
    fn record(&mut self, chosen: &HashMap<usize, Chosen>) {
        let mut all: Vec<(usize, Pick)> = chosen
            .iter()
            .flat_map(|(i, ch)| ch.uids.iter().map(move |u| (*i, *u)))
            .collect();
        all.sort_by_key(|(i, u)| (!u.resumed, u.internaldate, *i, u.uid));
        for (i, p) in all {
            let a = self.action(i, p.uid, p.size, p.internaldate, p.resumed);
            self.report.messages.push(a);
            let m = &mut self.report.mailboxes[i];
            m.expunged += 1;
            m.bytes_freed += p.size;
        }
    }

    /// Deletes what was chosen, mailbox by mailbox.
    async fn apply<R: ExpungeRemote>(
        &mut self,
        conn: &mut R,
        chosen: HashMap<usize, Chosen>,
    ) -> Result<(), Failure> {
        let mut order: Vec<usize> = chosen.keys().copied().collect();
        order.sort_unstable();
        let mut chosen = chosen;
        for i in order {
            let ch = chosen.remove(&i).unwrap_or_default();
            if ch.uids.is_empty() && ch.unmark.is_empty() {
                continue;
            }
            match self.apply_mailbox(conn, i, ch).await {
                Ok(()) => {}
                Err(e) => {
                    let lost = e.connection_lost();
                    self.report.mailboxes[i].errors.push(e.to_string());
                    if lost {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    async fn apply_mailbox<R: ExpungeRemote>(
        &mut self,
        conn: &mut R,
        i: usize,
        ch: Chosen,
    ) -> Result<(), Failure> {
        if self.gmail.is_some() {
            return self.apply_gmail(conn, i, ch).await;
        }
        let Some(b) = self.boxes.get(&i) else {
            return Ok(());
        };
        let (raw, state, uv) = (
            b.raw.clone(),
            b.folder.state_dir().to_path_buf(),
            b.uidvalidity,
        );
        let mut pending = b.pending.clone();
        let selected = conn.select(&raw).await?;
        if selected.uidvalidity != uv {
            return Err(Failure::Remote(RemoteError::broken(format!(
                "UIDVALIDITY of `{}` changed during the run ({uv} -> {}); nothing expunged",
                b.name, selected.uidvalidity
            ))));
        }
        let condstore = conn.has_capability("CONDSTORE");
        let (mut ambiguous, mut moved) = (Vec::new(), Vec::new());
        // Take back our marks on messages that no longer verify, where the
        // mark is still provably ours.
        let mut unmark = ch.unmark.clone();
        unmark.sort_unstable();
        unmark.dedup();
        for chunk in unmark.chunks(CHUNK) {
            let now = by_uid(conn.metadata(Some(chunk)).await?);
            let mut mine = Vec::new();
            for &u in chunk {
                let Some(m) = now.get(&u) else { continue };
                match decide_pending(pending.get(u), m, condstore) {
                    PendingDecision::Finish => mine.push(u),
                    PendingDecision::LeaveAndReport => ambiguous.push(u),
                    PendingDecision::NotPending => {}
                }
            }
            // Reported, then forgotten, as in pass 1.
            pending.remove(&ambiguous);
            save_pending(&state, &pending)?;
            self.left_alone(i, &mut ambiguous, &mut moved);
            let since = unchanged_since(condstore, mine.iter().map(|u| &now[u]));
            let out = conn.set_deleted(&mine, false, since).await?;
            // Changed since our check: whose mark it carries now is unclear.
            ambiguous.extend(&out.modified);
            self.left_alone(i, &mut ambiguous, &mut moved);
            pending.remove(chunk);
            save_pending(&state, &pending)?;
            self.report.mailboxes[i].unmarked += (mine.len() - out.modified.len()) as u64;
        }
        let mut uids = ch.uids.clone();
        uids.sort_unstable_by_key(|u| u.uid);
        for chunk in uids.chunks(CHUNK) {
            // Ctrl-C / SIGTERM: no new marks; what is marked and recorded is
            // expunged below, or finished by the next run.
            if crate::sync::interrupt::requested().is_some() {
                break;
            }
            let set: Vec<u32> = chunk.iter().map(|u| u.uid).collect();
            // The world may have moved since pass 1: drop anything another
            // client marked or changed meanwhile, anything gone, anything
            // resized.
            let now = by_uid(conn.metadata(Some(&set)).await?);
            let (mut fresh, mut resumed) = (Vec::new(), Vec::new());
            for p in chunk {
                let Some(m) = now.get(&p.uid) else { continue };
                if m.size as u64 != p.size {
                    continue;
                }
                match decide_pending(pending.get(p.uid), m, condstore) {
                    PendingDecision::Finish => resumed.push(*p),
                    PendingDecision::LeaveAndReport => ambiguous.push(p.uid),
                    PendingDecision::NotPending if m.has_flag("\\Deleted") => moved.push(p.uid),
                    PendingDecision::NotPending => fresh.push(*p),
                }
            }
            pending.remove(&ambiguous);
            self.left_alone(i, &mut ambiguous, &mut moved);
            // Recorded before the STORE, so an interruption leaves a trace;
            // only "intended", as the STORE may never reach the server.
            pending.uidvalidity = uv;
            for p in &fresh {
                pending.set(PendingMark {
                    uid: p.uid,
                    state: MarkState::Intended,
                    modseq: None,
                });
            }
            save_pending(&state, &pending)?;
            let fresh_uids: Vec<u32> = fresh.iter().map(|p| p.uid).collect();
            // UNCHANGEDSINCE the newest MODSEQ we checked: any change after
            // our check gets a higher one and fails the STORE for that UID.
            let since = unchanged_since(condstore, fresh_uids.iter().map(|u| &now[u]));
            let out = if fresh_uids.is_empty() {
                StoreOutcome::default()
            } else {
                conn.set_deleted(&fresh_uids, true, since).await?
            };
            pending.remove(&out.modified);
            moved.extend(&out.modified);
            self.left_alone(i, &mut ambiguous, &mut moved);
            let mut go = resumed;
            for p in fresh.iter().filter(|p| !out.modified.contains(&p.uid)) {
                pending.set(PendingMark {
                    uid: p.uid,
                    state: MarkState::Stored,
                    modseq: out.modseqs.get(&p.uid).copied(),
                });
                go.push(*p);
            }
            save_pending(&state, &pending)?;
            go.sort_unstable_by_key(|p| p.uid);
            let go_uids: Vec<u32> = go.iter().map(|u| u.uid).collect();
            if go_uids.is_empty() {
                continue;
            }
            conn.uid_expunge(&go_uids).await?;
            let left: HashSet<u32> = conn
                .metadata(Some(&go_uids))
                .await?
                .into_iter()
                .map(|m| m.uid)
                .collect();
            for p in &go {
                if left.contains(&p.uid) {
                    continue;
                }
                let a = self.action(i, p.uid, p.size, p.internaldate, p.resumed);
                self.report.messages.push(a);
                let m = &mut self.report.mailboxes[i];
                m.expunged += 1;
                m.bytes_freed += p.size;
            }
            if !left.is_empty() {
                log::warn!(
                    "`{}`: {} marked message(s) were not expunged by the server",
                    self.report.mailboxes[i].name,
                    left.len()
                );
            }
            // Whatever is still there keeps its record, so the next run
            // finishes it (re-verified) or takes the mark back.
            let gone: Vec<u32> = go_uids
                .iter()
                .copied()
                .filter(|u| !left.contains(u))
                .collect();
            pending.remove(&gone);
            save_pending(&state, &pending)?;
            let name = self.report.mailboxes[i].name.clone();
            self.throttle.pace(conn.take_throttled(), &name).await;
        }
        if let Some(b) = self.boxes.get_mut(&i) {
            b.pending = pending;
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Gmail: moves what was chosen in `\All` to Trash and expunges it
    /// there, never in All Mail or a label folder (PROVIDERS.md, "Gmail").
    async fn apply_gmail<R: ExpungeRemote>(
        &mut self,
        conn: &mut R,
        i: usize,
        ch: Chosen,
    ) -> Result<(), Failure> {
        let Some(b) = self.boxes.get(&i) else {
            return Ok(());
        };
        let (raw, state, uv) = (
            b.raw.clone(),
            b.folder.state_dir().to_path_buf(),
            b.uidvalidity,
        );
        let trash_raw = self
            .gmail
            .as_ref()
            .map(|g| g.trash.clone())
            .unwrap_or_default();
        let mut uids = ch.uids.clone();
        uids.sort_unstable_by_key(|u| u.uid);
        for chunk in uids.chunks(CHUNK) {
            let selected = conn.select(&raw).await?;
            if selected.uidvalidity != uv {
                return Err(Failure::Remote(RemoteError::broken(format!(
                    "UIDVALIDITY of `{}` changed during the run ({uv} -> {}); nothing expunged",
                    self.report.mailboxes[i].name, selected.uidvalidity
                ))));
            }
            let set: Vec<u32> = chunk.iter().map(|u| u.uid).collect();
            // The world may have moved since pass 1: drop anything marked,
            // resized, gone, or no longer the same message.
            let now = by_uid(conn.metadata(Some(&set)).await?);
            let ids: HashMap<u32, u64> = conn
                .gmail_meta(Some(&set))
                .await?
                .into_iter()
                .map(|m| (m.uid, m.msgid))
                .collect();
            let mut moved = Vec::new();
            let mut trash = load_trash_pending(&state)?;
            for p in chunk {
                let Some(m) = now.get(&p.uid) else { continue };
                let want = self.gmail.as_ref().and_then(|g| g.ids.get(&p.uid));
                if m.size as u64 != p.size || m.has_flag("\\Deleted") {
                    moved.push(p.uid);
                    continue;
                }
                let (Some(&have), Some(&want)) = (ids.get(&p.uid), want) else {
                    continue;
                };
                if have != want {
                    continue;
                }
                trash.entries.push(TrashEntry {
                    all_uid: p.uid,
                    msgid: want,
                    size: p.size,
                    internaldate: p.internaldate,
                    trash_uid: None,
                });
            }
            self.left_alone(i, &mut Vec::new(), &mut moved);
            if trash.is_empty() {
                continue;
            }
            // Named before the MOVE, so a kill during it leaves a trace.
            save_trash_pending(&state, &trash)?;
            let go: Vec<u32> = trash
                .entries
                .iter()
                .filter(|e| e.trash_uid.is_none())
                .map(|e| e.all_uid)
                .collect();
            let pairs: HashMap<u32, u32> =
                conn.uid_move(&go, &trash_raw).await?.into_iter().collect();
            for e in &mut trash.entries {
                if e.trash_uid.is_none() {
                    e.trash_uid = pairs.get(&e.all_uid).copied();
                }
            }
            save_trash_pending(&state, &trash)?;
            self.finish_trash(conn, &state, &mut trash, i, false)
                .await?;
            let name = self.report.mailboxes[i].name.clone();
            self.throttle.pace(conn.take_throttled(), &name).await;
        }
        Ok(())
    }

    /// Expunges in Trash exactly the messages `trash` names: found by
    /// their COPYUID and checked by X-GM-MSGID (or, where the MOVE's
    /// answer was lost, found by X-GM-MSGID). Nothing else in Trash is
    /// touched. Entries not found in Trash are forgotten: their message is
    /// still in All Mail (the MOVE never happened) and is judged again.
    async fn finish_trash<R: ExpungeRemote>(
        &mut self,
        conn: &mut R,
        state: &std::path::Path,
        trash: &mut gmail::expunge::TrashPending,
        i: usize,
        resumed: bool,
    ) -> Result<(), Failure> {
        if trash.is_empty() {
            return Ok(());
        }
        let trash_raw = self
            .gmail
            .as_ref()
            .map(|g| g.trash.clone())
            .unwrap_or_default();
        let selected = conn.select(&trash_raw).await?;
        if trash.trash_uidvalidity != 0 && trash.trash_uidvalidity != selected.uidvalidity {
            for e in &mut trash.entries {
                e.trash_uid = None;
            }
        }
        trash.trash_uidvalidity = selected.uidvalidity;
        let known: Vec<u32> = {
            let mut u: Vec<u32> = trash.entries.iter().filter_map(|e| e.trash_uid).collect();
            u.sort_unstable();
            u
        };
        let meta = if trash.entries.iter().all(|e| e.trash_uid.is_some()) {
            conn.gmail_meta(Some(&known)).await?
        } else {
            conn.gmail_meta(None).await?
        };
        let confirmed = confirm_in_trash(trash, &meta);
        let uids: Vec<u32> = confirmed.iter().map(|(u, _)| *u).collect();
        if !uids.is_empty() {
            conn.set_deleted(&uids, true, None).await?;
            conn.uid_expunge(&uids).await?;
        }
        let left: HashSet<u32> = conn
            .metadata(Some(&uids))
            .await?
            .into_iter()
            .map(|m| m.uid)
            .collect();
        let mut keep = Vec::new();
        for (u, e) in &confirmed {
            let e = &trash.entries[*e];
            if left.contains(u) {
                keep.push(e.clone());
                continue;
            }
            let a = self.action(i, e.all_uid, e.size, e.internaldate, resumed);
            self.report.messages.push(a);
            let m = &mut self.report.mailboxes[i];
            m.expunged += 1;
            m.bytes_freed += e.size;
        }
        if !keep.is_empty() {
            log::warn!(
                "Trash: {} marked message(s) were not expunged by the server",
                keep.len()
            );
        }
        trash.entries = keep;
        save_trash_pending(state, trash)?;
        Ok(())
    }
}

fn by_uid(metas: Vec<ServerMeta>) -> HashMap<u32, ServerMeta> {
    metas.into_iter().map(|m| (m.uid, m)).collect()
}

/// The `UNCHANGEDSINCE` value for a STORE on messages last seen as `seen`:
/// the newest of their MODSEQs (none without CONDSTORE).
fn unchanged_since<'a>(condstore: bool, seen: impl Iterator<Item = &'a ServerMeta>) -> Option<u64> {
    if !condstore {
        return None;
    }
    seen.filter_map(|m| m.modseq).max()
}

/// `UID 4` or `UIDs 4, 7, 9`.
fn uid_list(uids: &[u32]) -> String {
    let mut s = String::from(if uids.len() == 1 { "UID " } else { "UIDs " });
    for (n, u) in uids.iter().enumerate() {
        if n > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{u}");
    }
    s
}

/// One warning per mailbox for the messages left as they are.
fn warn_left_alone(report: &mut AccountExpunge) {
    for m in &mut report.mailboxes {
        if !m.ambiguous_marks.is_empty() {
            m.warnings.push(format!(
                "{} left marked \\Deleted: named in an interrupted run's record, but the mark cannot be shown to be imapbak's own (it may be another client's)\nhint: neither expunged nor unmarked; if the mark is unwanted, remove it with a mail client",
                uid_list(&m.ambiguous_marks)
            ));
        }
        if !m.changed_during_run.is_empty() {
            m.warnings.push(format!(
                "{} not expunged: changed by another client between imapbak's last check and its STORE\nhint: left as it is; a later run looks at it again",
                uid_list(&m.changed_during_run)
            ));
        }
    }
}

/// Re-hashes an archived copy: it must decompress to the size and SHA-256
/// recorded when it was pulled.
fn verify(c: &Candidate) -> Result<(), (SkipReason, String)> {
    match hash_file(&c.path) {
        Ok((size, sha)) if size == c.size && sha == c.sha256 => Ok(()),
        Ok((size, _)) if size != c.size => Err((
            SkipReason::ArchivedCopyDamaged,
            format!(
                "`{}` decompresses to {size} bytes, {} were archived",
                c.path.display(),
                c.size
            ),
        )),
        Ok(_) => Err((
            SkipReason::ArchivedCopyDamaged,
            format!(
                "`{}` does not match the hash recorded at pull time",
                c.path.display()
            ),
        )),
        Err(ArchiveError::Io { source, path, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err((
                SkipReason::ArchivedCopyMissing,
                format!("`{}` is gone", path.display()),
            ))
        }
        Err(e) => Err((SkipReason::ArchivedCopyDamaged, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::expunge::state::PENDING;
    use crate::sync::expunge::{QuotaResource, QuotaRoot};
    use crate::sync::remote::Selected;
    use globset::GlobSet;
    use std::path::Path;

    // --- The executor against a fake server -------------------------------

    use std::sync::Mutex;

    /// What another client does to the server at a chosen moment.
    type OtherClient = Box<dyn FnOnce(&mut Server) + Send>;

    #[derive(Default)]
    struct Server {
        messages: Vec<ServerMeta>,
        /// The next UID EXPUNGE loses the connection (after the STORE).
        drop_on_expunge: bool,
        /// The next marking STORE is lost before it reaches the server.
        drop_on_store: bool,
        /// Another client acts just before the next marking STORE lands.
        before_store: Option<OtherClient>,
        commands: Vec<String>,
        /// STORAGE (usage, limit) in KiB, never updated: a lagging server.
        quota: Option<(u64, u64)>,
        /// HIGHESTMODSEQ: every change of a message's flags takes the next.
        modseq: u64,
    }

    impl Server {
        /// Changes the flags of `uid` as another client would.
        fn other_client(&mut self, uid: u32, add: &str) {
            self.modseq += 1;
            let modseq = self.modseq;
            let m = self.messages.iter_mut().find(|m| m.uid == uid).unwrap();
            m.flags.push(add.into());
            m.modseq = Some(modseq);
        }

        fn flags(&self, uid: u32) -> Vec<String> {
            let m = self.messages.iter().find(|m| m.uid == uid).unwrap();
            m.flags.clone()
        }
    }

    struct Fake {
        caps: Vec<&'static str>,
        server: Arc<Mutex<Server>>,
    }

    const UV: u32 = 9;

    impl ExpungeRemote for Fake {
        fn has_capability(&self, cap: &str) -> bool {
            self.caps.contains(&cap)
        }
        async fn list_mailboxes(&mut self) -> Result<Vec<ListedMailbox>, RemoteError> {
            Ok(vec![ListedMailbox {
                raw: "INBOX".into(),
                name: "INBOX".into(),
                delimiter: Some('/'),
                selectable: true,
                status: None,
                special_use: None,
            }])
        }
        async fn examine(&mut self, _: &str) -> Result<Selected, RemoteError> {
            let s = self.server.lock().unwrap();
            Ok(Selected {
                uidvalidity: UV,
                uidnext: 100,
                exists: s.messages.len() as u32,
                highestmodseq: None,
            })
        }
        async fn select(&mut self, raw: &str) -> Result<Selected, RemoteError> {
            self.server
                .lock()
                .unwrap()
                .commands
                .push(format!("SELECT {raw}"));
            self.examine(raw).await
        }
        async fn metadata(&mut self, uids: Option<&[u32]>) -> Result<Vec<ServerMeta>, RemoteError> {
            let s = self.server.lock().unwrap();
            let condstore = self.caps.contains(&"CONDSTORE");
            Ok(s.messages
                .iter()
                .filter(|m| uids.is_none_or(|u| u.contains(&m.uid)))
                .cloned()
                .map(|mut m| {
                    if !condstore {
                        m.modseq = None;
                    }
                    m
                })
                .collect())
        }
        async fn set_deleted(
            &mut self,
            uids: &[u32],
            mark: bool,
            unchanged_since: Option<u64>,
        ) -> Result<StoreOutcome, RemoteError> {
            let mut s = self.server.lock().unwrap();
            s.commands
                .push(format!("STORE {uids:?} {mark} since {unchanged_since:?}"));
            if mark && std::mem::take(&mut s.drop_on_store) {
                return Err(RemoteError::broken("connection lost"));
            }
            if mark {
                if let Some(f) = s.before_store.take() {
                    f(&mut s);
                }
            }
            let condstore = self.caps.contains(&"CONDSTORE");
            let mut out = StoreOutcome::default();
            let mut next = s.modseq;
            for m in s.messages.iter_mut().filter(|m| uids.contains(&m.uid)) {
                if unchanged_since.is_some_and(|u| m.modseq.unwrap_or(0) > u) {
                    out.modified.push(m.uid);
                    continue;
                }
                let had = m.has_flag("\\Deleted");
                m.flags.retain(|f| f != "\\Deleted");
                if mark {
                    m.flags.push("\\Deleted".into());
                }
                if had != mark {
                    next += 1;
                    m.modseq = Some(next);
                }
                if condstore {
                    out.modseqs.insert(m.uid, m.modseq.unwrap_or(0));
                }
            }
            s.modseq = next;
            Ok(out)
        }
        async fn uid_expunge(&mut self, uids: &[u32]) -> Result<(), RemoteError> {
            let mut s = self.server.lock().unwrap();
            if std::mem::take(&mut s.drop_on_expunge) {
                return Err(RemoteError::broken("connection lost"));
            }
            s.commands.push(format!("EXPUNGE {uids:?}"));
            s.messages
                .retain(|m| !(uids.contains(&m.uid) && m.has_flag("\\Deleted")));
            Ok(())
        }
        async fn quota_roots(&mut self, _: &str) -> Result<Vec<QuotaRoot>, RemoteError> {
            let s = self.server.lock().unwrap();
            Ok(s.quota
                .map(|(usage, limit)| QuotaRoot {
                    root: String::new(),
                    resources: vec![QuotaResource {
                        name: "STORAGE".into(),
                        usage,
                        limit,
                    }],
                })
                .into_iter()
                .collect())
        }
        async fn logout(self) {}
    }

    fn account(archive: &Path) -> Account {
        Account {
            name: "t".into(),
            host: "fake.invalid".into(),
            port: 993,
            tls: crate::config::TlsMode::Implicit,
            user: "u".into(),
            password: crate::config::PasswordSource::Literal(String::new()),
            oauth2: None,
            ca_file: None,
            fingerprint: None,
            archive: archive.to_path_buf(),
            include: globset::GlobSetBuilder::new()
                .add(globset::Glob::new("*").unwrap())
                .build()
                .unwrap(),
            exclude: GlobSet::empty(),
            compression_level: 1,
            timeout: std::time::Duration::from_secs(5),
            max_message_size: 1 << 20,
            compress: crate::config::Compress::Off,
            gmail: false,
            gmail_spam_and_trash: false,
            admin: None,
            daily_download_limit: None,
            max_connections: 10,
            table: None,
        }
    }

    /// An archive holding UIDs 1..=n of INBOX, all old, and the server's view.
    fn pulled(dir: &Path, n: u32, flags: &[&str]) -> (Account, Arc<Mutex<Server>>) {
        let archive = Archive::at(dir);
        archive.create().unwrap();
        let folder = archive.folder("");
        folder.create().unwrap();
        let mut server = Server::default();
        for uid in 1..=n {
            let body = format!("Subject: {uid}\r\n\r\nbody {uid}\r\n").into_bytes();
            let w = folder.write_message(UV, uid, 1_000, "", &body, 1).unwrap();
            folder.journal(&[w.entry]).unwrap();
            server.messages.push(ServerMeta {
                uid,
                internaldate: 1_000,
                size: body.len() as u32,
                flags: flags.iter().map(|f| f.to_string()).collect(),
                modseq: Some(uid as u64),
            });
        }
        server.modseq = n as u64;
        folder
            .save_status(&crate::archive::Status {
                mailbox: "INBOX".into(),
                uidvalidity: UV,
                uidnext: n + 1,
                floor: n + 1,
                ..Default::default()
            })
            .unwrap();
        (account(dir), Arc::new(Mutex::new(server)))
    }

    fn older_than_now() -> ExpungeOptions {
        ExpungeOptions {
            cut: Some(2_000),
            ..Default::default()
        }
    }

    async fn run_once(
        acc: &Account,
        server: &Arc<Mutex<Server>>,
        caps: &[&'static str],
    ) -> AccountExpunge {
        let fake = Fake {
            caps: caps.to_vec(),
            server: server.clone(),
        };
        expunge_account(
            acc,
            &older_than_now(),
            Arc::new(crate::progress::Silent),
            fake,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn free_to_against_a_lagging_quota_stops_near_the_first_need() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, server) = pulled(dir.path(), 200, &[]);
        // 10 of 10 KiB used, aim at 90%: 2 KiB to free; the usage figure
        // never moves, as on a server that updates it late.
        server.lock().unwrap().quota = Some((10, 10));
        let fake = Fake {
            caps: vec!["UIDPLUS", "QUOTA"],
            server: server.clone(),
        };
        let opts = ExpungeOptions {
            free_to: Some(90.0),
            ..Default::default()
        };
        let r = expunge_account(&acc, &opts, Arc::new(crate::progress::Silent), fake).await;
        let freed: u64 = r.messages.iter().map(|m| m.size).sum();
        assert!(freed >= 2048, "freed {freed}");
        assert!(
            freed <= 2048 + 204 + 64,
            "freed {freed}, far past what was asked"
        );
        assert!(server.lock().unwrap().messages.len() > 100);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_server_without_uidplus_is_refused_and_nothing_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, server) = pulled(dir.path(), 2, &[]);
        let r = run_once(&acc, &server, &[]).await;
        assert_eq!(r.exit_code(), ExitCode::Partial);
        assert!(r.error.unwrap().contains("UIDPLUS"));
        let s = server.lock().unwrap();
        assert!(s.commands.is_empty(), "{:?}", s.commands);
        assert_eq!(s.messages.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn uids_are_recorded_before_the_store_and_the_next_run_finishes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, server) = pulled(dir.path(), 3, &["\\Seen"]);
        server.lock().unwrap().drop_on_expunge = true;
        let r = run_once(&acc, &server, &["UIDPLUS"]).await;
        assert_eq!(r.exit_code(), ExitCode::Connection, "{r:?}");
        // Marked on the server, not expunged, and recorded.
        let state = Archive::at(dir.path()).folder("").state_dir().to_path_buf();
        let p = load_pending(&state).unwrap();
        assert_eq!(p.uids().collect::<Vec<_>>(), [1, 2, 3]);
        assert!(p.marks.iter().all(|m| m.state == MarkState::Stored));
        assert!(server
            .lock()
            .unwrap()
            .messages
            .iter()
            .all(|m| m.has_flag("\\Deleted")));

        // Meanwhile UID 3's copy is damaged: the next run finishes 1 and 2
        // and takes its own mark off 3.
        let path = Archive::at(dir.path())
            .folder("")
            .scan()
            .unwrap()
            .file_for(UV, 3)
            .map(|f| dir.path().join("mail").join(f.subdir).join(f.name.full()));
        std::fs::write(path.unwrap(), b"junk").unwrap();
        let r = run_once(&acc, &server, &["UIDPLUS"]).await;
        assert_eq!(r.exit_code(), ExitCode::Success, "{r:?}");
        assert_eq!(r.expunged, 2);
        assert!(r.messages.iter().all(|m| m.resumed));
        assert_eq!(r.mailboxes[0].unmarked, 1);
        let s = server.lock().unwrap();
        assert_eq!(s.messages.len(), 1);
        assert_eq!(s.messages[0].uid, 3);
        assert!(!s.messages[0].has_flag("\\Deleted"));
        assert!(!state.join(PENDING).exists());
        assert!(s.commands.iter().all(|c| !c.starts_with("CLOSE")));
    }

    fn state_of(dir: &Path) -> std::path::PathBuf {
        Archive::at(dir).folder("").state_dir().to_path_buf()
    }

    fn uids_on(server: &Arc<Mutex<Server>>) -> Vec<u32> {
        server
            .lock()
            .unwrap()
            .messages
            .iter()
            .map(|m| m.uid)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_mark_set_between_the_last_check_and_the_store_fails_unchangedsince_and_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, server) = pulled(dir.path(), 3, &["\\Seen"]);
        server.lock().unwrap().before_store =
            Some(Box::new(|s: &mut Server| s.other_client(2, "\\Deleted")));
        let r = run_once(&acc, &server, &["UIDPLUS", "CONDSTORE"]).await;
        assert_eq!(r.exit_code(), ExitCode::Success, "{r:?}");
        assert_eq!(r.expunged, 2);
        assert_eq!(r.mailboxes[0].changed_during_run, [2]);
        assert_eq!(r.mailboxes[0].skipped[&SkipReason::ChangedDuringRun], 1);
        assert!(r.mailboxes[0].warnings.iter().any(|w| w.contains("UID 2")));
        assert_eq!(uids_on(&server), [2]);
        let s = server.lock().unwrap();
        assert!(
            s.flags(2).contains(&"\\Deleted".to_string()),
            "theirs, kept"
        );
        assert!(
            s.commands.iter().any(|c| c.contains("true since Some(3)")),
            "UNCHANGEDSINCE the newest MODSEQ checked: {:?}",
            s.commands
        );
        assert!(!state_of(dir.path()).join(PENDING).exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_intent_cut_before_its_store_never_expunges_a_mark_another_client_set_later() {
        for caps in [&["UIDPLUS"][..], &["UIDPLUS", "CONDSTORE"][..]] {
            let dir = tempfile::tempdir().unwrap();
            let (acc, server) = pulled(dir.path(), 3, &["\\Seen"]);
            server.lock().unwrap().drop_on_store = true;
            let r = run_once(&acc, &server, caps).await;
            assert_eq!(r.exit_code(), ExitCode::Connection, "{caps:?} {r:?}");
            let p = load_pending(&state_of(dir.path())).unwrap();
            assert_eq!(p.uids().collect::<Vec<_>>(), [1, 2, 3]);
            assert!(p.marks.iter().all(|m| m.state == MarkState::Intended));

            server.lock().unwrap().other_client(2, "\\Deleted");
            let r = run_once(&acc, &server, caps).await;
            assert_eq!(r.exit_code(), ExitCode::Success, "{caps:?} {r:?}");
            assert_eq!(r.expunged, 2, "{caps:?}");
            assert!(r.messages.iter().all(|m| !m.resumed));
            assert_eq!(r.mailboxes[0].ambiguous_marks, [2], "{caps:?}");
            assert_eq!(r.mailboxes[0].unmarked, 0);
            assert_eq!(uids_on(&server), [2]);
            assert!(server
                .lock()
                .unwrap()
                .flags(2)
                .contains(&"\\Deleted".to_string()));
            assert!(!state_of(dir.path()).join(PENDING).exists());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn with_condstore_a_stored_mark_is_finished_only_while_its_modseq_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (acc, server) = pulled(dir.path(), 3, &["\\Seen"]);
        server.lock().unwrap().drop_on_expunge = true;
        let caps = &["UIDPLUS", "CONDSTORE"];
        let r = run_once(&acc, &server, caps).await;
        assert_eq!(r.exit_code(), ExitCode::Connection, "{r:?}");
        let p = load_pending(&state_of(dir.path())).unwrap();
        assert_eq!(
            p.marks
                .iter()
                .map(|m| (m.uid, m.state, m.modseq))
                .collect::<Vec<_>>(),
            [
                (1, MarkState::Stored, Some(4)),
                (2, MarkState::Stored, Some(5)),
                (3, MarkState::Stored, Some(6))
            ],
            "the MODSEQs the STORE answered with"
        );
        // Someone touched UID 2 after our STORE: whose is its mark now?
        server.lock().unwrap().other_client(2, "\\Flagged");
        let r = run_once(&acc, &server, caps).await;
        assert_eq!(r.exit_code(), ExitCode::Success, "{r:?}");
        assert_eq!(r.expunged, 2);
        assert!(r.messages.iter().all(|m| m.resumed));
        assert_eq!(r.mailboxes[0].ambiguous_marks, [2]);
        assert_eq!(r.mailboxes[0].unmarked, 0);
        assert_eq!(uids_on(&server), [2]);
        assert!(server
            .lock()
            .unwrap()
            .flags(2)
            .contains(&"\\Deleted".to_string()));
        assert!(!state_of(dir.path()).join(PENDING).exists());
    }
}
