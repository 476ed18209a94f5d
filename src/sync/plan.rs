//! Pure planning: no I/O here, so every rule is unit-tested without a
//! server or a disk.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::remote::{ListedMailbox, MailboxStatus};
use crate::archive::names::{folder_for, NameError};
use crate::archive::Status;

/// A mailbox chosen for the run, with the folder it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mailbox: ListedMailbox,
    pub folder: String,
}

/// A mailbox that cannot be archived, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

/// Chooses the selectable mailboxes that pass `wants` and maps each to its
/// folder. Names that cannot be mapped, or that would share a folder with
/// another, are refused (reported, never merged).
pub fn choose_mailboxes(
    listed: &[ListedMailbox],
    wants: impl Fn(&str) -> bool,
) -> (Vec<Target>, Vec<Refused>) {
    let mut targets: Vec<Target> = Vec::new();
    let mut refused = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for m in listed {
        if !m.selectable || !wants(&m.name) {
            continue;
        }
        match folder_for(&m.name, m.delimiter) {
            Ok(folder) => {
                if let Some(other) = seen.get(&folder) {
                    refused.push(Refused {
                        name: m.name.clone(),
                        reason: format!("maps to the same folder as `{other}`"),
                    });
                    continue;
                }
                seen.insert(folder.clone(), m.name.clone());
                targets.push(Target {
                    mailbox: m.clone(),
                    folder,
                });
            }
            Err(e) => refused.push(Refused {
                name: m.name.clone(),
                reason: describe(&e),
            }),
        }
    }
    // Largest first, so parallel workers finish together.
    targets.sort_by_key(|t| std::cmp::Reverse(t.mailbox.status.map(|s| s.messages).unwrap_or(0)));
    (targets, refused)
}

fn describe(e: &NameError) -> String {
    e.to_string()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, selectable: bool, messages: u32) -> ListedMailbox {
        ListedMailbox {
            raw: name.to_string(),
            name: name.to_string(),
            delimiter: Some('/'),
            selectable,
            status: Some(MailboxStatus {
                uidvalidity: 1,
                uidnext: messages + 1,
                messages,
                highestmodseq: Some(5),
            }),
        }
    }

    #[test]
    fn noselect_and_excluded_mailboxes_are_not_chosen() {
        let l = vec![
            listed("INBOX", true, 1),
            listed("Archive", false, 0),
            listed("Archive/2024", true, 9),
            listed("Junk", true, 3),
        ];
        let (t, r) = choose_mailboxes(&l, |n| n != "Junk");
        let names: Vec<&str> = t.iter().map(|t| t.mailbox.name.as_str()).collect();
        assert_eq!(names, vec!["Archive/2024", "INBOX"]);
        assert!(r.is_empty());
    }

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
}
