//! The interrupted-run record: `expunge-pending.json` in a mailbox's state
//! directory names the UIDs this tool is about to mark `\Deleted`.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;

pub(super) const PENDING: &str = "expunge-pending.json";

/// UIDs this tool is about to mark (or has marked) `\Deleted` in one
/// mailbox; written before the STORE, removed after the EXPUNGE.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Pending {
    pub uidvalidity: u32,
    pub uids: Vec<u32>,
}

/// Reads the pending record of the mailbox whose state directory is `state`.
pub fn load_pending(state: &Path) -> Result<Pending, ArchiveError> {
    let path = state.join(PENDING);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
            log::warn!("ignoring unreadable `{}`: {e}", path.display());
            Pending::default()
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Pending::default()),
        Err(e) => Err(ArchiveError::Io {
            what: "cannot read",
            path,
            source: e,
        }),
    }
}

pub(super) fn save_pending(state: &Path, p: &Pending) -> Result<(), ArchiveError> {
    if p.uids.is_empty() {
        let path = state.join(PENDING);
        return match std::fs::remove_file(&path) {
            Ok(()) => crate::archive::sync_dir(state),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArchiveError::Io {
                what: "cannot remove",
                path,
                source: e,
            }),
        };
    }
    let bytes = serde_json::to_vec(p).expect("pending record serialises");
    crate::archive::write_atomic(&state.join(PENDING), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_record_round_trips_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending {
            uidvalidity: 3,
            uids: vec![4, 5],
        };
        save_pending(dir.path(), &p).unwrap();
        assert_eq!(load_pending(dir.path()).unwrap(), p);
        save_pending(dir.path(), &Pending::default()).unwrap();
        assert!(!dir.path().join(PENDING).exists());
        assert_eq!(load_pending(dir.path()).unwrap(), Pending::default());
    }
}
