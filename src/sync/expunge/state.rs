//! The interrupted-run record: `expunge-pending.json` in a mailbox's state
//! directory names the UIDs this tool is about to mark `\Deleted`, and for
//! each whether its STORE was acknowledged. "Meant to mark" and "marked"
//! must stay apart: a message found `\Deleted` after an interruption is
//! only known to carry our mark if the STORE's tagged OK was recorded.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;

pub(super) const PENDING: &str = "expunge-pending.json";

/// How far our `\Deleted` mark on one message got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MarkState {
    /// Recorded before the STORE was sent: it may or may not have reached
    /// the server, so a `\Deleted` found later may be anyone's.
    Intended,
    /// The STORE was acknowledged (tagged OK, the UID not in `[MODIFIED]`).
    Stored,
}

/// One UID of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PendingMark {
    pub uid: u32,
    pub state: MarkState,
    /// On CONDSTORE servers, the MODSEQ the STORE's answer gave the
    /// message: while the message still has it, nobody touched it since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modseq: Option<u64>,
}

/// UIDs this tool is about to mark (or has marked) `\Deleted` in one
/// mailbox; written before the STORE, updated after its answer, removed
/// after the EXPUNGE. Sorted by UID, one entry per UID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", from = "RawPending")]
pub struct Pending {
    pub uidvalidity: u32,
    pub marks: Vec<PendingMark>,
}

/// What may be on disk: today's `marks`, or the bare `uids` of records
/// written before marks had a state.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
struct RawPending {
    uidvalidity: u32,
    marks: Vec<PendingMark>,
    uids: Vec<u32>,
}

impl From<RawPending> for Pending {
    fn from(r: RawPending) -> Pending {
        let mut p = Pending {
            uidvalidity: r.uidvalidity,
            marks: Vec::new(),
        };
        for m in r.marks {
            p.set(m);
        }
        // An old record cannot say whether the STORE happened: the
        // conservative reading is that it did not.
        for uid in r.uids {
            if p.get(uid).is_none() {
                p.set(PendingMark {
                    uid,
                    state: MarkState::Intended,
                    modseq: None,
                });
            }
        }
        p
    }
}

impl Pending {
    pub fn get(&self, uid: u32) -> Option<&PendingMark> {
        self.marks
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| &self.marks[i])
    }

    /// Inserts or replaces the entry of `mark.uid`.
    pub fn set(&mut self, mark: PendingMark) {
        match self.marks.binary_search_by_key(&mark.uid, |m| m.uid) {
            Ok(i) => self.marks[i] = mark,
            Err(i) => self.marks.insert(i, mark),
        }
    }

    pub fn remove(&mut self, uids: &[u32]) {
        self.marks.retain(|m| !uids.contains(&m.uid));
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    pub fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.marks.iter().map(|m| m.uid)
    }
}

/// Reads the pending record of the mailbox whose state directory is `state`.
pub fn load_pending(state: &Path) -> Result<Pending, ArchiveError> {
    crate::archive::read_record(&state.join(PENDING))
}

/// Writes the pending record (removes it when empty), atomically.
pub(super) fn save_pending(state: &Path, p: &Pending) -> Result<(), ArchiveError> {
    crate::archive::write_record(&state.join(PENDING), p, p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(uid: u32, state: MarkState, modseq: Option<u64>) -> PendingMark {
        PendingMark { uid, state, modseq }
    }

    #[test]
    fn pending_record_round_trips_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Pending {
            uidvalidity: 3,
            marks: Vec::new(),
        };
        p.set(mark(5, MarkState::Stored, Some(77)));
        p.set(mark(4, MarkState::Intended, None));
        save_pending(dir.path(), &p).unwrap();
        assert_eq!(load_pending(dir.path()).unwrap(), p);
        assert_eq!(p.uids().collect::<Vec<_>>(), [4, 5], "kept sorted");
        let text = std::fs::read_to_string(dir.path().join(PENDING)).unwrap();
        assert!(
            text.contains("\"state\":\"stored\",\"modseq\":77"),
            "{text}"
        );
        assert!(!text.contains("\"uids\""), "{text}");
        save_pending(dir.path(), &Pending::default()).unwrap();
        assert!(!dir.path().join(PENDING).exists());
        assert_eq!(load_pending(dir.path()).unwrap(), Pending::default());
    }

    #[test]
    fn a_record_of_the_old_format_loads_as_intended_marks_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(PENDING),
            br#"{"uidvalidity":3,"uids":[5,4]}"#,
        )
        .unwrap();
        let p = load_pending(dir.path()).unwrap();
        assert_eq!(p.uidvalidity, 3);
        assert_eq!(
            p.marks,
            [
                mark(4, MarkState::Intended, None),
                mark(5, MarkState::Intended, None)
            ]
        );
    }

    #[test]
    fn setting_a_mark_again_replaces_it() {
        let mut p = Pending::default();
        p.set(mark(4, MarkState::Intended, None));
        p.set(mark(4, MarkState::Stored, Some(9)));
        assert_eq!(p.marks, [mark(4, MarkState::Stored, Some(9))]);
        p.remove(&[4]);
        assert!(p.is_empty());
    }
}
