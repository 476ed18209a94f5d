//! What pull does to one mailbox, decided without I/O: whether the listing
//! proves it unchanged, what to ask the server after EXAMINE, and then, from
//! the answers and the archive's index, the [`MailboxPlan`]: flag renames
//! and the batches of UIDs to fetch. Every rule is unit-tested here without
//! a server or a disk; `run.rs` gathers the facts and applies the plan.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::PullOptions;
use crate::archive::{flags_to_letters, FolderIndex, Keywords, Status};
use crate::report::human_bytes;
use crate::sync::remote::{AlongWith, GmailMeta, MailboxStatus, RemoteFlags, Selected};

/// True when the listing proves nothing changed since the last pull: same
/// UIDVALIDITY, no new UID, nothing left behind, and (with CONDSTORE) no
/// flag change. Without HIGHESTMODSEQ flags can't be proven unchanged.
pub fn unchanged(status: Option<MailboxStatus>, prior: &Status) -> bool {
    let Some(s) = status else { return false };
    prior.uidvalidity != 0
        && s.uidvalidity == prior.uidvalidity
        && s.uidnext != 0
        && s.uidnext == prior.uidnext
        && prior.floor >= s.uidnext
        && s.highestmodseq.is_some()
        && s.highestmodseq == prior.highestmodseq
}

/// Where to start listing new UIDs: the floor of the last pull of this
/// generation, or 1 after a UIDVALIDITY change.
pub fn list_from(prior: &Status, uidvalidity: u32) -> u32 {
    if prior.uidvalidity == uidvalidity {
        prior.floor.max(1)
    } else {
        1
    }
}

/// Splits the UIDs to download into batches of at most `max_bytes` (a
/// larger message goes alone) and `max_count` messages, in UID order.
pub fn fetch_batches(
    candidates: &[(u32, u32)],
    held: &HashSet<u32>,
    max_bytes: u64,
    max_count: usize,
) -> Vec<Vec<u32>> {
    let mut batches = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    let mut cur_bytes = 0u64;
    let mut sorted: Vec<(u32, u32)> = candidates
        .iter()
        .copied()
        .filter(|(uid, _)| !held.contains(uid))
        .collect();
    sorted.sort_unstable();
    sorted.dedup_by_key(|c| c.0);
    for (uid, size) in sorted {
        let size = size as u64;
        if !cur.is_empty() && (cur_bytes + size > max_bytes || cur.len() >= max_count) {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(uid);
        cur_bytes += size;
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// The new floor after a run: below the first UID that failed, else past
/// everything the server had when the mailbox was opened.
pub fn next_floor(from: u32, uidnext: u32, planned: &[u32], failed: &[u32]) -> u32 {
    if let Some(first_failed) = failed.iter().min() {
        return *first_failed;
    }
    let past_planned = planned.iter().max().map(|m| m + 1).unwrap_or(0);
    from.max(uidnext).max(past_planned)
}

/// One archived message whose flags differ from the server's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagChange {
    pub uid: u32,
    pub from: String,
    pub to: String,
}

/// Compares the server's flags (as Maildir letters) with the archive's.
pub fn flag_changes(remote: &[(u32, String)], archived: &HashMap<u32, String>) -> Vec<FlagChange> {
    let mut out: Vec<FlagChange> = remote
        .iter()
        .filter_map(|(uid, letters)| {
            let have = archived.get(uid)?;
            (have != letters).then(|| FlagChange {
                uid: *uid,
                from: have.clone(),
                to: letters.clone(),
            })
        })
        .collect();
    out.sort_by_key(|c| c.uid);
    out.dedup_by_key(|c| c.uid);
    out
}

/// Which flags to ask for after EXAMINE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagQuery {
    /// Nothing archived yet, or HIGHESTMODSEQ proves no flag changed.
    Skip,
    /// Every message's flags.
    All,
    /// Only those changed since this MODSEQ (CONDSTORE).
    ChangedSince(u64),
}

/// Which flags to ask for: none when nothing of this generation is archived
/// or the MODSEQ is the last pull's, only the changed ones when the server
/// keeps MODSEQs for this generation, else all.
pub fn flag_query(prior: &Status, sel: &Selected, nothing_held: bool) -> FlagQuery {
    let same_gen = prior.uidvalidity == sel.uidvalidity;
    let modseq_same =
        same_gen && prior.highestmodseq.is_some() && prior.highestmodseq == sel.highestmodseq;
    if nothing_held || modseq_same {
        return FlagQuery::Skip;
    }
    match prior.highestmodseq {
        Some(since) if same_gen && sel.highestmodseq.is_some() => FlagQuery::ChangedSince(since),
        _ => FlagQuery::All,
    }
}

/// What to ask in the same flight as EXAMINE, guessing that the mailbox
/// is still the generation of the last pull (almost always true): the flags
/// changed since its MODSEQ and the UIDs from its floor. Nothing on a first
/// pull, which has no generation to guess.
pub fn speculate(prior: &Status, index: &FolderIndex) -> AlongWith {
    if prior.uidvalidity == 0 {
        return AlongWith::default();
    }
    let held = index.uids(prior.uidvalidity).next().is_some();
    AlongWith {
        flags: held.then_some(prior.highestmodseq),
        sizes_from: Some(fetch_from(prior, index, prior.uidvalidity)),
    }
}

/// Whether the guess of [`speculate`] held: the same generation.
pub fn speculation_holds(prior: &Status, sel: &Selected) -> bool {
    prior.uidvalidity != 0 && prior.uidvalidity == sel.uidvalidity
}

/// Gmail's labels with flags ([`FlagQuery`] for `gmail_meta`): skipped
/// only when the MODSEQ proves nothing changed (a label change moves it),
/// never just because nothing is archived yet, since new messages need
/// their labels as much as their bodies; all of them when an archived file
/// of this generation is gone (`verify --repair`): fetched again, it needs
/// its links again, though its MODSEQ has not moved.
pub fn gmail_query(prior: &Status, sel: &Selected, index: &FolderIndex) -> FlagQuery {
    let same_gen = prior.uidvalidity == sel.uidvalidity;
    if index.missing.iter().any(|(v, _)| *v == sel.uidvalidity) {
        return FlagQuery::All;
    }
    match (prior.highestmodseq, sel.highestmodseq) {
        (Some(p), Some(s)) if same_gen && p == s => FlagQuery::Skip,
        (Some(p), Some(_)) if same_gen => FlagQuery::ChangedSince(p),
        _ => FlagQuery::All,
    }
}

/// Where to list UIDs from: the generation's floor, or lower when an
/// archived file of this generation has vanished (it is fetched again).
pub fn fetch_from(prior: &Status, index: &FolderIndex, uidvalidity: u32) -> u32 {
    let lowest_missing = index
        .missing
        .iter()
        .filter(|(v, _)| *v == uidvalidity)
        .map(|(_, u)| *u)
        .min();
    list_from(prior, uidvalidity).min(lowest_missing.unwrap_or(u32::MAX))
}

/// Whether UIDs and sizes from `from` on are worth asking for: not when the
/// mailbox is empty or its UIDNEXT shows nothing at or above `from`.
pub fn needs_listing(sel: &Selected, from: u32) -> bool {
    !(sel.exists == 0 || (sel.uidnext != 0 && sel.uidnext <= from))
}

/// What the server answered about one examined mailbox.
#[derive(Debug, Clone, Default)]
pub struct Examined {
    pub selected: Selected,
    /// The flags asked for by [`flag_query`] (empty when skipped).
    pub flags: Vec<RemoteFlags>,
    /// (UID, RFC822.SIZE) from `from` on (empty when not listed).
    pub sizes: Vec<(u32, u32)>,
    /// The UID the listing started at ([`fetch_from`]).
    pub from: u32,
    /// Gmail mode: labels and ids of the messages `flags` covers.
    pub gmail: Vec<GmailMeta>,
}

/// What pull will do to one mailbox. `Display` is the `--dry-run` line,
/// `Serialize` its JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxPlan {
    /// The decoded mailbox name.
    pub mailbox: String,
    pub uidvalidity: u32,
    /// The archive holds an earlier generation: every archived message is
    /// kept and a new one starts.
    pub uidvalidity_changed: bool,
    /// Archived files to rename because the server's flags changed.
    pub flag_changes: Vec<FlagChange>,
    /// UIDs to fetch, in UID order, one UID FETCH per batch.
    pub batches: Vec<Vec<u32>>,
    /// RFC822.SIZE of every listed UID.
    #[serde(skip)]
    pub sizes: HashMap<u32, u32>,
    /// Sum of the sizes of the UIDs to fetch.
    pub bytes: u64,
    /// The UID the listing started at.
    pub from: u32,
    /// Keywords that cannot be stored in a file name (more than 26, or not
    /// valid keywords).
    pub dropped_keywords: Vec<String>,
}

impl MailboxPlan {
    /// Every UID to fetch, in order.
    pub fn planned(&self) -> Vec<u32> {
        self.batches.concat()
    }

    /// Number of messages to fetch.
    pub fn messages(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }
}

impl fmt::Display for MailboxPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: fetch {} message(s) ({}), rename {} for flag changes",
            self.mailbox,
            self.messages(),
            human_bytes(self.bytes),
            self.flag_changes.len()
        )?;
        if self.uidvalidity_changed {
            write!(f, "; UIDVALIDITY changed: a new generation starts")?;
        }
        Ok(())
    }
}

/// Plans one mailbox from the server's answers and the archive's index.
/// New keywords get letters in `keywords` (saved by the executor).
pub fn plan_mailbox(
    mailbox: &str,
    prior: &Status,
    index: &FolderIndex,
    keywords: &mut Keywords,
    examined: &Examined,
    opts: &PullOptions,
) -> MailboxPlan {
    let uv = examined.selected.uidvalidity;
    let held: HashSet<u32> = index.uids(uv).collect();
    let mut dropped_keywords: Vec<String> = Vec::new();
    let remote_letters: Vec<(u32, String)> = examined
        .flags
        .iter()
        .filter(|f| held.contains(&f.uid))
        .map(|f| {
            let (letters, dropped) = flags_to_letters(&f.flags, keywords);
            dropped_keywords.extend(dropped);
            (f.uid, letters)
        })
        .collect();
    dropped_keywords.sort();
    dropped_keywords.dedup();
    let archived: HashMap<u32, String> = remote_letters
        .iter()
        .filter_map(|(uid, _)| Some((*uid, index.file_for(uv, *uid)?.name.flags.clone())))
        .collect();
    let batches = fetch_batches(&examined.sizes, &held, opts.batch_bytes, opts.batch_count);
    let sizes: HashMap<u32, u32> = examined.sizes.iter().copied().collect();
    let bytes = batches.iter().flatten().map(|u| sizes[u] as u64).sum();
    MailboxPlan {
        mailbox: mailbox.to_string(),
        uidvalidity: uv,
        uidvalidity_changed: prior.uidvalidity != 0 && prior.uidvalidity != uv,
        flag_changes: flag_changes(&remote_letters, &archived),
        batches,
        sizes,
        bytes,
        from: examined.from,
        dropped_keywords,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_needs_same_uidvalidity_uidnext_and_modseq() {
        let prior = Status {
            uidvalidity: 1,
            uidnext: 10,
            highestmodseq: Some(5),
            floor: 10,
            ..Default::default()
        };
        let same = MailboxStatus {
            uidvalidity: 1,
            uidnext: 10,
            messages: 9,
            highestmodseq: Some(5),
        };
        assert!(unchanged(Some(same), &prior));
        assert!(!unchanged(
            Some(MailboxStatus {
                uidnext: 11,
                ..same
            }),
            &prior
        ));
        assert!(!unchanged(
            Some(MailboxStatus {
                highestmodseq: Some(6),
                ..same
            }),
            &prior
        ));
        assert!(!unchanged(
            Some(MailboxStatus {
                uidvalidity: 2,
                ..same
            }),
            &prior
        ));
        assert!(!unchanged(
            Some(MailboxStatus {
                highestmodseq: None,
                ..same
            }),
            &prior
        ));
        assert!(!unchanged(None, &prior));
        let behind = Status {
            floor: 7,
            ..prior.clone()
        };
        assert!(!unchanged(Some(same), &behind));
    }

    #[test]
    fn pull_after_uidvalidity_change_lists_from_one() {
        let prior = Status {
            uidvalidity: 1,
            floor: 50,
            ..Default::default()
        };
        assert_eq!(list_from(&prior, 1), 50);
        assert_eq!(list_from(&prior, 2), 1);
    }

    #[test]
    fn batches_skip_held_uids_and_respect_bounds() {
        let c = vec![(1, 10), (2, 10), (3, 100), (4, 10), (5, 10)];
        let held: HashSet<u32> = [2].into_iter().collect();
        assert_eq!(
            fetch_batches(&c, &held, 50, 10),
            vec![vec![1], vec![3], vec![4, 5]]
        );
        assert_eq!(fetch_batches(&c, &HashSet::new(), 1000, 2).len(), 3);
    }

    #[test]
    fn floor_stops_below_the_first_failure() {
        assert_eq!(next_floor(1, 20, &[5, 6, 7], &[6]), 6);
        assert_eq!(next_floor(1, 20, &[5, 6, 7], &[]), 20);
        assert_eq!(next_floor(30, 20, &[], &[]), 30);
    }

    #[test]
    fn flag_changes_lists_only_differences_for_archived_uids() {
        let archived: HashMap<u32, String> = [(1, "S".to_string()), (2, "".to_string())].into();
        let remote = vec![
            (1, "S".to_string()),
            (2, "FS".to_string()),
            (3, "S".to_string()),
        ];
        assert_eq!(
            flag_changes(&remote, &archived),
            vec![FlagChange {
                uid: 2,
                from: "".into(),
                to: "FS".into()
            }]
        );
    }

    fn selected(uidvalidity: u32, uidnext: u32, modseq: Option<u64>) -> Selected {
        Selected {
            uidvalidity,
            uidnext,
            exists: uidnext - 1,
            highestmodseq: modseq,
        }
    }

    #[test]
    fn flags_are_asked_only_when_something_archived_may_have_changed() {
        let prior = Status {
            uidvalidity: 1,
            highestmodseq: Some(5),
            ..Default::default()
        };
        let q = |sel: Selected, none_held: bool| flag_query(&prior, &sel, none_held);
        assert_eq!(q(selected(1, 9, Some(5)), false), FlagQuery::Skip);
        assert_eq!(q(selected(1, 9, Some(7)), true), FlagQuery::Skip);
        assert_eq!(
            q(selected(1, 9, Some(7)), false),
            FlagQuery::ChangedSince(5)
        );
        assert_eq!(q(selected(2, 9, Some(7)), false), FlagQuery::All);
        assert_eq!(q(selected(1, 9, None), false), FlagQuery::All);
    }

    #[test]
    fn speculation_asks_what_the_last_generation_needs_and_holds_only_for_it() {
        let mut prior = Status::default();
        let mut index = FolderIndex::default();
        assert_eq!(speculate(&prior, &index), AlongWith::default());
        prior.uidvalidity = 4;
        prior.floor = 30;
        prior.highestmodseq = Some(9);
        assert_eq!(
            speculate(&prior, &index),
            AlongWith {
                flags: None,
                sizes_from: Some(30)
            }
        );
        index.entries.insert(
            (4, 1),
            crate::archive::JournalEntry {
                uidvalidity: 4,
                uid: 1,
                size: 1,
                sha256: String::new(),
                base: "b".into(),
            },
        );
        assert_eq!(speculate(&prior, &index).flags, Some(Some(9)));
        assert!(speculation_holds(&prior, &selected(4, 31, Some(9))));
        assert!(!speculation_holds(&prior, &selected(5, 31, Some(9))));
        assert!(!speculation_holds(
            &Status::default(),
            &selected(4, 31, None)
        ));
    }

    #[test]
    fn a_vanished_file_lowers_where_the_listing_starts() {
        let prior = Status {
            uidvalidity: 1,
            floor: 50,
            ..Default::default()
        };
        let mut index = FolderIndex::default();
        assert_eq!(fetch_from(&prior, &index, 1), 50);
        index.missing = vec![(1, 7), (9, 2)];
        assert_eq!(fetch_from(&prior, &index, 1), 7);
        assert!(!needs_listing(&selected(1, 50, None), 50));
        assert!(needs_listing(&selected(1, 51, None), 50));
    }

    #[test]
    fn plan_fetches_only_what_is_not_held_and_counts_its_bytes() {
        let examined = Examined {
            selected: selected(3, 6, None),
            sizes: vec![(1, 100), (4, 10), (5, 20)],
            from: 1,
            ..Default::default()
        };
        let prior = Status {
            uidvalidity: 2,
            ..Default::default()
        };
        let index = FolderIndex::default();
        let plan = plan_mailbox(
            "INBOX",
            &prior,
            &index,
            &mut Keywords::default(),
            &examined,
            &PullOptions::default(),
        );
        assert_eq!(plan.planned(), vec![1, 4, 5]);
        assert_eq!(plan.bytes, 130);
        assert!(plan.uidvalidity_changed);
        let line = plan.to_string();
        assert!(
            line.contains("fetch 3 message(s)") && line.contains("UIDVALIDITY"),
            "{line}"
        );
    }
}
