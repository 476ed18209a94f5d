//! The pure half of expunge: options, listing and archive facts in, a plan
//! out. No I/O here, so every rule is unit-tested without a server.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use globset::GlobSet;
use serde::Serialize;

use super::state::{MarkState, Pending, PendingMark};
use super::ServerMeta;
use crate::report::human_bytes;

// ---------------------------------------------------------------------------
// Options and their parsers
// ---------------------------------------------------------------------------

/// How an expunge runs (resolved from the command line).
#[derive(Debug, Clone, Default)]
pub struct ExpungeOptions {
    /// Only messages whose INTERNALDATE is before this (seconds since the epoch).
    pub cut: Option<i64>,
    /// Stop once quota usage is under this percentage of the limit.
    pub free_to: Option<f64>,
    /// Only mailboxes whose decoded name matches.
    pub mailboxes: Option<GlobSet>,
    pub keep_flagged: bool,
    pub keep_unseen: bool,
    /// At most this many deletions in the run.
    pub max: Option<u64>,
    /// Plan and report; change nothing on the server.
    pub dry_run: bool,
}

/// Parses an age such as `1y` (365 days), `6mo` (30 days each), `2w`,
/// `90d` into seconds.
pub fn parse_age(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("age `{s}` has no unit\nhint: write e.g. 1y, 6mo, 2w or 90d"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("age `{s}` does not start with a number\nhint: write e.g. 1y, 6mo, 2w or 90d")
    })?;
    let day = 86_400u64;
    let per = match unit {
        "y" => 365 * day,
        "mo" => 30 * day,
        "w" => 7 * day,
        "d" => day,
        "m" => {
            return Err(format!(
                "age `{s}`: `m` is ambiguous\nhint: write `mo` for months (30 days each)"
            ))
        }
        _ => {
            return Err(format!(
            "age `{s}` has an unknown unit `{unit}`\nhint: use y (365 days), mo (30 days), w or d"
        ))
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("age `{s}` is too large"))
}

/// Parses a quota target such as `80%` (or `80`) into a percentage in (0, 100).
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t);
    match t.parse::<f64>() {
        Ok(p) if p > 0.0 && p < 100.0 => Ok(p),
        _ => Err(format!(
            "quota target `{s}` is not a percentage between 0 and 100\nhint: write e.g. 80%"
        )),
    }
}

// ---------------------------------------------------------------------------
// The pure planner
// ---------------------------------------------------------------------------

/// Why a message that was otherwise due was not expunged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The mailbox's UIDVALIDITY is not the one archived.
    UidvalidityChanged,
    /// Another client marked it `\Deleted`; that mark is theirs.
    DeletedByAnotherClient,
    /// `--keep-flagged`.
    KeptFlagged,
    /// `--keep-unseen`.
    KeptUnseen,
    /// Not in the archive: it arrived after the last pull, or its archived
    /// copy was lost and the next pull fetches it again.
    NotArchived,
    /// Pulled once, but its archived file is gone.
    ArchivedCopyMissing,
    /// The server's size is not the archived size.
    SizeDiffers,
    /// The server's INTERNALDATE is not the archived one: not the same message.
    DateDiffers,
    /// The archived file does not decompress to the recorded size and hash.
    ArchivedCopyDamaged,
    /// Named in an interrupted run's record and now `\Deleted`, but that
    /// mark cannot be told to be ours: left marked, reported by UID.
    AmbiguousMark,
    /// Changed by another client between our last check and our STORE
    /// (`[MODIFIED]`): not marked, left for a later run.
    ChangedDuringRun,
    /// Gmail: the server's X-GM-MSGID is not the one recorded at pull (or
    /// none was recorded): not provably the archived message.
    MsgidDiffers,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::UidvalidityChanged => "UIDVALIDITY changed since the pull",
            SkipReason::DeletedByAnotherClient => "marked \\Deleted by another client",
            SkipReason::KeptFlagged => "flagged (--keep-flagged)",
            SkipReason::KeptUnseen => "unseen (--keep-unseen)",
            SkipReason::NotArchived => "not in the archive yet (the next pull fetches it)",
            SkipReason::ArchivedCopyMissing => "archived copy missing",
            SkipReason::SizeDiffers => "server size differs from the archived copy",
            SkipReason::DateDiffers => "server INTERNALDATE differs from the archived copy",
            SkipReason::ArchivedCopyDamaged => "archived copy damaged",
            SkipReason::AmbiguousMark => {
                "marked \\Deleted, but not provably by imapbak (left as it is)"
            }
            SkipReason::ChangedDuringRun => "changed by another client during the run",
            SkipReason::MsgidDiffers => {
                "X-GM-MSGID differs from the one recorded at pull (run `imapbak pull` first)"
            }
        }
    }

    /// True for reasons that point at a problem in the archive.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            SkipReason::ArchivedCopyMissing
                | SkipReason::SizeDiffers
                | SkipReason::DateDiffers
                | SkipReason::ArchivedCopyDamaged
        )
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The archived copy of one message, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedCopy {
    pub size: u64,
    /// INTERNALDATE from the archived file's name, where known: with UID and
    /// size it ties the server's message to this copy.
    pub internaldate: Option<i64>,
    pub sha256: String,
    pub path: PathBuf,
}

/// Everything known about one mailbox, server side and archive side.
#[derive(Debug, Clone, Copy)]
pub struct MailboxFacts<'a> {
    pub server_uidvalidity: u32,
    /// UIDVALIDITY of the last pull (`status.json`).
    pub archived_uidvalidity: u32,
    /// Every UID below this was archived by a pull (or is gone).
    pub floor: u32,
    pub messages: &'a [ServerMeta],
    /// Archived copies of the server's generation, by UID.
    pub archived: &'a HashMap<u32, ArchivedCopy>,
    /// The interrupted run's record (`expunge-pending.json`).
    pub pending: &'a Pending,
    /// The server offers CONDSTORE, so MODSEQs are known.
    pub condstore: bool,
}

/// Which messages are due, independent of the archive.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection {
    pub cut: Option<i64>,
    pub keep_flagged: bool,
    pub keep_unseen: bool,
}

/// A message that passed every check but the re-hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index of its mailbox in the run.
    pub mailbox: usize,
    pub uid: u32,
    pub internaldate: i64,
    pub size: u64,
    pub sha256: String,
    pub path: PathBuf,
    /// Marked `\Deleted` by an interrupted earlier run: finished first.
    pub resumed: bool,
}

/// The plan for one mailbox.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MailboxPlan {
    pub candidates: Vec<Candidate>,
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Skips that point at the archive, for the warnings: (UID, reason).
    pub problems: Vec<(u32, SkipReason)>,
    /// Our own marks from an interrupted run on messages that no longer
    /// qualify: to be taken back.
    pub unmark: Vec<u32>,
    /// Recorded UIDs now `\Deleted` whose mark may not be ours: neither
    /// expunged nor unmarked, reported.
    pub ambiguous: Vec<u32>,
}

impl MailboxPlan {
    fn skip(&mut self, uid: u32, reason: SkipReason) {
        *self.skipped.entry(reason).or_default() += 1;
        if reason.is_warning() {
            self.problems.push((uid, reason));
        }
    }
}

/// What to do with a message an interrupted run recorded, given what the
/// server says about it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingDecision {
    /// Not recorded, or not `\Deleted` (so no mark of ours is there):
    /// judged like any other message.
    NotPending,
    /// The `\Deleted` mark is provably ours: finish the work (expunge if
    /// the archived copy verifies, otherwise take the mark back).
    Finish,
    /// `\Deleted`, but the mark may be another client's: neither expunge
    /// nor unmark; report the UID.
    LeaveAndReport,
}

/// Whether a `\Deleted` mark on a recorded message is ours. A mark is ours
/// only if our STORE was acknowledged ("stored") and, on a CONDSTORE
/// server, the message still has the MODSEQ that STORE gave it (nobody has
/// touched it since). Without CONDSTORE the acknowledgement is all there
/// is, so "stored" is enough; an "intended" mark is never taken for ours.
pub fn decide_pending(
    mark: Option<&PendingMark>,
    now: &ServerMeta,
    condstore: bool,
) -> PendingDecision {
    let Some(mark) = mark else {
        return PendingDecision::NotPending;
    };
    if !now.has_flag("\\Deleted") {
        return PendingDecision::NotPending;
    }
    match (mark.state, condstore) {
        (MarkState::Intended, _) => PendingDecision::LeaveAndReport,
        (MarkState::Stored, false) => PendingDecision::Finish,
        (MarkState::Stored, true) => match (mark.modseq, now.modseq) {
            (Some(ours), Some(now)) if ours == now => PendingDecision::Finish,
            _ => PendingDecision::LeaveAndReport,
        },
    }
}

/// Decides, without I/O, which messages of one mailbox may go. Messages
/// newer than the cut are not mentioned at all; every other message that
/// is held back is counted with its reason.
pub fn plan_mailbox(facts: &MailboxFacts<'_>, sel: &Selection, mailbox: usize) -> MailboxPlan {
    let mut plan = MailboxPlan::default();
    let same_generation =
        facts.server_uidvalidity != 0 && facts.server_uidvalidity == facts.archived_uidvalidity;
    for m in facts.messages {
        let decision = decide_pending(facts.pending.get(m.uid), m, facts.condstore);
        let ours = decision == PendingDecision::Finish;
        if !same_generation {
            if sel.cut.is_none_or(|cut| m.internaldate < cut) {
                plan.skip(m.uid, SkipReason::UidvalidityChanged);
            }
            continue;
        }
        if decision == PendingDecision::LeaveAndReport {
            plan.skip(m.uid, SkipReason::AmbiguousMark);
            plan.ambiguous.push(m.uid);
            continue;
        }
        if !ours {
            if sel.cut.is_some_and(|cut| m.internaldate >= cut) {
                continue;
            }
            if m.has_flag("\\Deleted") {
                plan.skip(m.uid, SkipReason::DeletedByAnotherClient);
                continue;
            }
            if sel.keep_flagged && m.has_flag("\\Flagged") {
                plan.skip(m.uid, SkipReason::KeptFlagged);
                continue;
            }
            if sel.keep_unseen && !m.has_flag("\\Seen") {
                plan.skip(m.uid, SkipReason::KeptUnseen);
                continue;
            }
        }
        let reason = match facts.archived.get(&m.uid) {
            None if m.uid < facts.floor => Some(SkipReason::ArchivedCopyMissing),
            None => Some(SkipReason::NotArchived),
            Some(c) if c.size != m.size as u64 => Some(SkipReason::SizeDiffers),
            Some(c) if c.internaldate.is_some_and(|d| d != m.internaldate) => {
                Some(SkipReason::DateDiffers)
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            plan.skip(m.uid, reason);
            if ours {
                plan.unmark.push(m.uid);
            }
            continue;
        }
        let copy = &facts.archived[&m.uid];
        plan.candidates.push(Candidate {
            mailbox,
            uid: m.uid,
            internaldate: m.internaldate,
            size: copy.size,
            sha256: copy.sha256.clone(),
            path: copy.path.clone(),
            resumed: ours,
        });
    }
    plan
}

/// Oldest first across all mailboxes (the order `--free-to` and `--max`
/// take them in); resumed ones before everything else.
pub fn order_candidates(c: &mut [Candidate]) {
    c.sort_by_key(|c| (!c.resumed, c.internaldate, c.mailbox, c.uid));
}

/// Bytes to free so that usage falls under `percent` of the limit (STORAGE
/// is in KiB). `None` when the limit is unknown (0).
pub fn bytes_to_free(usage_kib: u64, limit_kib: u64, percent: f64) -> Option<u64> {
    if limit_kib == 0 {
        return None;
    }
    let usage = usage_kib as f64 * 1024.0;
    let target = limit_kib as f64 * 1024.0 * percent / 100.0;
    if usage < target {
        return Some(0);
    }
    // One KiB more, as the server rounds usage to whole KiB.
    Some((usage - target).ceil() as u64 + 1024)
}

/// Caps on one run: `--max` messages, and the bytes `--free-to` needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max: Option<u64>,
    pub bytes: Option<u64>,
}

impl Limits {
    /// True once `count` messages of `bytes` are enough.
    pub fn reached(&self, count: u64, bytes: u64) -> bool {
        self.max.is_some_and(|m| count >= m) || self.bytes.is_some_and(|b| bytes >= b)
    }
}

/// One verified message chosen to go.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pick {
    pub(super) uid: u32,
    pub(super) size: u64,
    pub(super) internaldate: i64,
    pub(super) resumed: bool,
}

/// Which UIDs of one mailbox go, and which of our old marks to take back.
#[derive(Debug, Default, Clone)]
pub(super) struct Chosen {
    pub(super) uids: Vec<Pick>,
    pub(super) unmark: Vec<u32>,
}

/// `usage` as a percentage of `limit` (0 when there is no limit).
pub fn percent(usage: u64, limit: u64) -> f64 {
    if limit == 0 {
        0.0
    } else {
        usage as f64 * 100.0 / limit as f64
    }
}

/// One message that was (or, on a dry run, would be) expunged.
#[derive(Debug, Clone, Serialize)]
pub struct ExpungeAction {
    pub mailbox: String,
    pub uid: u32,
    /// INTERNALDATE, RFC 3339.
    pub internaldate: String,
    pub size: u64,
    /// Marked by an interrupted earlier run and finished by this one.
    pub resumed: bool,
}

impl fmt::Display for ExpungeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` UID {}  {}  {}{}",
            self.mailbox,
            self.uid,
            self.internaldate.get(..10).unwrap_or(&self.internaldate),
            human_bytes(self.size),
            if self.resumed {
                "  (finishing an interrupted run)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn meta(uid: u32, days_old: i64, size: u32, flags: &[&str]) -> ServerMeta {
        ServerMeta {
            uid,
            internaldate: 1_000 * DAY - days_old * DAY,
            size,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            modseq: None,
        }
    }

    fn copy(size: u64) -> ArchivedCopy {
        ArchivedCopy {
            size,
            internaldate: None,
            sha256: "ab".repeat(32),
            path: PathBuf::from("/x"),
        }
    }

    fn sel(days: i64) -> Selection {
        Selection {
            cut: Some(1_000 * DAY - days * DAY),
            ..Default::default()
        }
    }

    struct Fx {
        messages: Vec<ServerMeta>,
        archived: HashMap<u32, ArchivedCopy>,
        pending: Pending,
        condstore: bool,
        server_uv: u32,
        archived_uv: u32,
        floor: u32,
    }

    impl Fx {
        fn new(messages: Vec<ServerMeta>) -> Fx {
            let archived = messages
                .iter()
                .map(|m| (m.uid, copy(m.size as u64)))
                .collect();
            Fx {
                messages,
                archived,
                pending: Pending::default(),
                condstore: false,
                server_uv: 7,
                archived_uv: 7,
                floor: 100,
            }
        }

        fn plan(&self, s: &Selection) -> MailboxPlan {
            plan_mailbox(
                &MailboxFacts {
                    server_uidvalidity: self.server_uv,
                    archived_uidvalidity: self.archived_uv,
                    floor: self.floor,
                    messages: &self.messages,
                    archived: &self.archived,
                    pending: &self.pending,
                    condstore: self.condstore,
                },
                s,
                0,
            )
        }
    }

    fn uids(p: &MailboxPlan) -> Vec<u32> {
        p.candidates.iter().map(|c| c.uid).collect()
    }

    #[test]
    fn only_messages_older_than_the_cut_are_candidates() {
        let fx = Fx::new(vec![
            meta(1, 400, 10, &[]),
            meta(2, 10, 10, &[]),
            meta(3, 366, 10, &[]),
        ]);
        let p = fx.plan(&sel(365));
        assert_eq!(uids(&p), [1, 3]);
        assert!(p.skipped.is_empty(), "newer messages are not skips");
    }

    #[test]
    fn another_clients_deleted_mark_is_left_alone() {
        let fx = Fx::new(vec![
            meta(1, 400, 10, &["\\Deleted"]),
            meta(2, 400, 10, &["\\Seen"]),
        ]);
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [2]);
        assert_eq!(p.skipped[&SkipReason::DeletedByAnotherClient], 1);
    }

    #[test]
    fn a_message_not_in_the_journal_is_never_a_candidate_however_old() {
        let mut fx = Fx::new(vec![meta(1, 400, 10, &[]), meta(120, 4000, 10, &[])]);
        fx.archived.remove(&120);
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [1]);
        assert_eq!(p.skipped[&SkipReason::NotArchived], 1);
    }

    #[test]
    fn a_pulled_message_whose_file_is_gone_is_reported_as_missing() {
        let mut fx = Fx::new(vec![meta(1, 400, 10, &[]), meta(2, 400, 10, &[])]);
        fx.archived.remove(&2);
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [1]);
        assert_eq!(p.skipped[&SkipReason::ArchivedCopyMissing], 1);
        assert_eq!(p.problems, [(2, SkipReason::ArchivedCopyMissing)]);
    }

    #[test]
    fn a_size_mismatch_with_the_server_is_skipped() {
        let mut fx = Fx::new(vec![meta(1, 400, 10, &[])]);
        fx.archived.insert(1, copy(11));
        let p = fx.plan(&sel(1));
        assert!(p.candidates.is_empty());
        assert_eq!(p.skipped[&SkipReason::SizeDiffers], 1);
    }

    #[test]
    fn same_uid_and_size_but_another_internaldate_is_not_this_message() {
        let mut fx = Fx::new(vec![meta(1, 400, 10, &[]), meta(2, 400, 10, &[])]);
        let mut other = copy(10);
        other.internaldate = Some(meta(1, 400, 10, &[]).internaldate + 1);
        fx.archived.insert(1, other);
        let mut same = copy(10);
        same.internaldate = Some(meta(2, 400, 10, &[]).internaldate);
        fx.archived.insert(2, same);
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [2]);
        assert_eq!(p.skipped[&SkipReason::DateDiffers], 1);
    }

    #[test]
    fn a_changed_uidvalidity_protects_the_whole_mailbox() {
        let mut fx = Fx::new(vec![meta(1, 400, 10, &[]), meta(2, 400, 10, &[])]);
        fx.server_uv = 8;
        let p = fx.plan(&sel(1));
        assert!(p.candidates.is_empty());
        assert_eq!(p.skipped[&SkipReason::UidvalidityChanged], 2);
    }

    #[test]
    fn keep_flagged_and_keep_unseen_hold() {
        let fx = Fx::new(vec![
            meta(1, 400, 10, &["\\Flagged", "\\Seen"]),
            meta(2, 400, 10, &[]),
            meta(3, 400, 10, &["\\Seen"]),
        ]);
        let s = Selection {
            keep_flagged: true,
            keep_unseen: true,
            ..sel(1)
        };
        let p = fx.plan(&s);
        assert_eq!(uids(&p), [3]);
        assert_eq!(p.skipped[&SkipReason::KeptFlagged], 1);
        assert_eq!(p.skipped[&SkipReason::KeptUnseen], 1);
        // Without the options both go.
        assert_eq!(uids(&fx.plan(&sel(1))), [1, 2, 3]);
    }

    #[test]
    fn our_own_marks_from_an_interrupted_run_are_finished_or_taken_back() {
        let mut fx = Fx::new(vec![
            meta(1, 400, 10, &["\\Deleted"]),
            meta(2, 400, 10, &["\\Deleted"]),
            meta(3, 400, 10, &["\\Deleted"]),
        ]);
        fx.pending = stored(&[1, 2]);
        fx.archived.insert(2, copy(99));
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [1]);
        assert!(p.candidates[0].resumed);
        assert_eq!(
            p.unmark,
            [2],
            "our mark on a message that no longer verifies"
        );
        assert_eq!(p.skipped[&SkipReason::DeletedByAnotherClient], 1);
    }

    #[test]
    fn a_pending_uid_without_deleted_is_treated_like_any_other() {
        let mut fx = Fx::new(vec![meta(1, 10, 10, &[])]);
        fx.pending = stored(&[1]);
        let p = fx.plan(&sel(365));
        assert!(p.candidates.is_empty(), "not old enough, and not marked");
        fx.pending = intended(&[1]);
        let p = fx.plan(&sel(365));
        assert!(p.candidates.is_empty() && p.ambiguous.is_empty());
        let p = fx.plan(&sel(1));
        assert_eq!(uids(&p), [1], "an intent that never reached the server");
        assert!(!p.candidates[0].resumed);
    }

    fn marks(uids: &[u32], state: MarkState, modseq: Option<u64>) -> Pending {
        let mut p = Pending::default();
        for &uid in uids {
            p.set(PendingMark { uid, state, modseq });
        }
        p
    }

    fn stored(uids: &[u32]) -> Pending {
        marks(uids, MarkState::Stored, None)
    }

    fn intended(uids: &[u32]) -> Pending {
        marks(uids, MarkState::Intended, None)
    }

    fn with_modseq(mut m: ServerMeta, modseq: u64) -> ServerMeta {
        m.modseq = Some(modseq);
        m
    }

    #[test]
    fn only_an_acknowledged_store_makes_a_deleted_mark_ours() {
        use PendingDecision::*;
        let mark = |state, modseq| PendingMark {
            uid: 1,
            state,
            modseq,
        };
        let deleted = with_modseq(meta(1, 400, 10, &["\\Deleted"]), 50);
        let clean = with_modseq(meta(1, 400, 10, &["\\Seen"]), 50);
        let intended = mark(MarkState::Intended, None);
        let stored_50 = mark(MarkState::Stored, Some(50));
        let stored_49 = mark(MarkState::Stored, Some(49));
        let stored_unknown = mark(MarkState::Stored, None);
        for condstore in [false, true] {
            assert_eq!(decide_pending(None, &deleted, condstore), NotPending);
            // Not marked: whatever the record says, no mark of ours is there.
            for m in [&intended, &stored_50] {
                assert_eq!(decide_pending(Some(m), &clean, condstore), NotPending);
            }
            // The STORE may or may not have reached the server.
            assert_eq!(
                decide_pending(Some(&intended), &deleted, condstore),
                LeaveAndReport
            );
        }
        // CONDSTORE: ours while nobody touched it since our STORE.
        assert_eq!(decide_pending(Some(&stored_50), &deleted, true), Finish);
        assert_eq!(
            decide_pending(Some(&stored_49), &deleted, true),
            LeaveAndReport,
            "the MODSEQ moved: someone may have unmarked and marked it"
        );
        assert_eq!(
            decide_pending(Some(&stored_unknown), &deleted, true),
            LeaveAndReport
        );
        let mut no_modseq = deleted.clone();
        no_modseq.modseq = None;
        assert_eq!(
            decide_pending(Some(&stored_50), &no_modseq, true),
            LeaveAndReport
        );
        // Without CONDSTORE the acknowledgement is all there is.
        assert_eq!(decide_pending(Some(&stored_49), &deleted, false), Finish);
        assert_eq!(
            decide_pending(Some(&stored_unknown), &deleted, false),
            Finish
        );
    }

    #[test]
    fn an_ambiguous_mark_is_neither_expunged_nor_unmarked_and_is_reported() {
        let mut fx = Fx::new(vec![
            with_modseq(meta(1, 400, 10, &["\\Deleted"]), 10),
            with_modseq(meta(2, 400, 10, &["\\Deleted"]), 11),
            with_modseq(meta(3, 400, 10, &["\\Deleted"]), 12),
            with_modseq(meta(4, 400, 10, &[]), 13),
        ]);
        fx.condstore = true;
        let mut p = intended(&[1]);
        p.set(PendingMark {
            uid: 2,
            state: MarkState::Stored,
            modseq: Some(11),
        });
        p.set(PendingMark {
            uid: 3,
            state: MarkState::Stored,
            modseq: Some(9),
        });
        fx.pending = p;
        // UID 3's copy does not match either: still not ours to unmark.
        fx.archived.insert(3, copy(99));
        let plan = fx.plan(&sel(1));
        assert_eq!(uids(&plan), [2, 4]);
        assert!(plan.candidates[0].resumed && !plan.candidates[1].resumed);
        assert_eq!(plan.ambiguous, [1, 3]);
        assert!(plan.unmark.is_empty(), "{:?}", plan.unmark);
        assert_eq!(plan.skipped[&SkipReason::AmbiguousMark], 2);
        assert!(!plan.skipped.contains_key(&SkipReason::SizeDiffers));
    }

    #[test]
    fn candidates_are_ordered_oldest_first_with_resumed_ones_first() {
        let c = |mailbox, uid, internaldate, resumed| Candidate {
            mailbox,
            uid,
            internaldate,
            size: 1,
            sha256: String::new(),
            path: PathBuf::new(),
            resumed,
        };
        let mut v = vec![
            c(0, 5, 300, false),
            c(1, 9, 100, false),
            c(0, 6, 200, false),
            c(1, 2, 900, true),
        ];
        order_candidates(&mut v);
        let got: Vec<(usize, u32)> = v.iter().map(|c| (c.mailbox, c.uid)).collect();
        assert_eq!(got, [(1, 2), (1, 9), (0, 6), (0, 5)]);
    }

    #[test]
    fn bytes_to_free_reaches_just_under_the_target() {
        // 900 KiB of 1000 KiB, target 80%: 100 KiB plus the rounding KiB.
        assert_eq!(bytes_to_free(900, 1000, 80.0), Some(100 * 1024 + 1024));
        assert_eq!(bytes_to_free(700, 1000, 80.0), Some(0));
        assert_eq!(bytes_to_free(700, 0, 80.0), None);
    }

    #[test]
    fn limits_cap_count_and_bytes() {
        let l = Limits {
            max: Some(2),
            bytes: None,
        };
        assert!(!l.reached(1, 1_000_000));
        assert!(l.reached(2, 0));
        let l = Limits {
            max: None,
            bytes: Some(100),
        };
        assert!(!l.reached(50, 99));
        assert!(l.reached(1, 100));
        assert!(!Limits::default().reached(1_000_000, u64::MAX));
    }

    #[test]
    fn ages_parse_in_the_documented_units() {
        assert_eq!(parse_age("1y"), Ok(365 * 86_400));
        assert_eq!(parse_age("6mo"), Ok(180 * 86_400));
        assert_eq!(parse_age("2w"), Ok(14 * 86_400));
        assert_eq!(parse_age("90d"), Ok(90 * 86_400));
        assert!(parse_age("3m").unwrap_err().contains("mo"));
        assert!(parse_age("y").is_err());
        assert!(parse_age("12").is_err());
        assert!(parse_age("1x").is_err());
    }

    #[test]
    fn percentages_parse_and_refuse_nonsense() {
        assert_eq!(parse_percent("80%"), Ok(80.0));
        assert_eq!(parse_percent("75.5"), Ok(75.5));
        assert!(parse_percent("0%").is_err());
        assert!(parse_percent("100%").is_err());
        assert!(parse_percent("abc").is_err());
    }
}
