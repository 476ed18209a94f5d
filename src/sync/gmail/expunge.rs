//! Gmail's rules for expunge. An EXPUNGE in a label folder only removes
//! that label, and one in All Mail frees nothing under Gmail's default
//! settings (PROVIDERS.md, "Gmail"); the one way that frees quota whatever
//! the settings is to move the message to `\Trash` and there mark it
//! `\Deleted` and `UID EXPUNGE` it (imapsync FAQ.Gmail; gmvault
//! `erase_mailbox`). So candidates are chosen in `\All`, identified by
//! X-GM-MSGID (recorded at pull, checked again before the move and in
//! Trash), and only the UIDs COPYUID names in Trash are expunged.
//!
//! The move and the expunge are two commands: between them the messages
//! sit in Trash. `gmail-trash-pending.json` (in All Mail's state
//! directory) names them before the move and again with their Trash UIDs
//! after it, so a run killed in between is finished by the next.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;
use crate::sync::remote::{GmailMeta, ListedMailbox, SpecialUse};

/// Where X-GM-MSGIDs and X-GM-THRIDs of All Mail's messages are
/// recorded: in All Mail's Maildir folder, beside `dovecot-keywords`, so
/// they survive the loss of `state/` as the file names do (Dovecot ignores
/// the file). Lines `<uidvalidity> TAB <uid> TAB <msgid> TAB <thrid>`.
pub const IDS: &str = "imapbak-gmail-ids";
/// Where earlier versions kept them, in All Mail's state directory (read
/// for what the tree's record lacks).
pub const IDS_IN_STATE: &str = "gmail-ids";
/// Messages on their way through Trash.
pub const TRASH_PENDING: &str = "gmail-trash-pending.json";

/// One message moved (or about to be moved) from All Mail to Trash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashEntry {
    /// Its UID in All Mail.
    pub all_uid: u32,
    pub msgid: u64,
    pub size: u64,
    pub internaldate: i64,
    /// Its UID in Trash, from COPYUID; None until the MOVE answered.
    pub trash_uid: Option<u32>,
}

/// The record of messages between the MOVE and the EXPUNGE in Trash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrashPending {
    /// Trash's UIDVALIDITY when the Trash UIDs were recorded.
    pub trash_uidvalidity: u32,
    pub entries: Vec<TrashEntry>,
}

impl TrashPending {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads the record in All Mail's state directory `state`.
pub fn load_trash_pending(state: &Path) -> Result<TrashPending, ArchiveError> {
    crate::archive::read_record(&state.join(TRASH_PENDING))
}

/// Writes the record (removes it when empty), atomically.
pub fn save_trash_pending(state: &Path, p: &TrashPending) -> Result<(), ArchiveError> {
    crate::archive::write_record(&state.join(TRASH_PENDING), p, p.is_empty())
}

/// The X-GM-MSGIDs recorded for All Mail, whose Maildir folder is `tree`
/// and state directory `state`: (UIDVALIDITY, UID) -> MSGID.
pub fn load_ids(tree: &Path, state: &Path) -> Result<HashMap<(u32, u32), u64>, ArchiveError> {
    let mut ids: HashMap<(u32, u32), u64> = read_ids(&state.join(IDS_IN_STATE))?
        .into_iter()
        .map(|(k, (id, _))| (k, id))
        .collect();
    ids.extend(
        read_ids(&tree.join(IDS))?
            .into_iter()
            .map(|(k, (id, _))| (k, id)),
    );
    Ok(ids)
}

/// (UIDVALIDITY, UID) -> (MSGID, THRID; 0 when not recorded).
type Ids = HashMap<(u32, u32), (u64, u64)>;

/// Reads one record of ids (none when the file is not there).
fn read_ids(path: &Path) -> Result<Ids, ArchiveError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(ArchiveError::Io {
                what: "cannot read",
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let uv = f.next()?.parse().ok()?;
            let uid = f.next()?.parse().ok()?;
            let id = f.next()?.parse().ok()?;
            let thread = f.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            Some(((uv, uid), (id, thread)))
        })
        .collect())
}

/// Adds what the server reported this run to the record in All Mail's
/// Maildir folder `tree`.
pub fn record_ids(tree: &Path, uidvalidity: u32, meta: &[GmailMeta]) -> Result<(), ArchiveError> {
    let path = tree.join(IDS);
    let mut ids = read_ids(&path)?;
    let mut changed = false;
    for m in meta {
        let v = (m.msgid, m.thrid);
        if ids.insert((uidvalidity, m.uid), v) != Some(v) {
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    let mut rows: Vec<_> = ids.into_iter().collect();
    rows.sort_unstable();
    let mut text = String::new();
    for ((uv, uid), (id, thread)) in rows {
        text.push_str(&format!("{uv}\t{uid}\t{id}\t{thread}\n"));
    }
    crate::archive::write_atomic(&path, text.as_bytes())
}

/// The `\Trash` mailbox, found by special use (its name is localised).
pub fn trash(listed: &[ListedMailbox]) -> Option<&ListedMailbox> {
    super::special(listed, SpecialUse::Trash)
}

/// Whether a message with `labels` is selected by `--mailbox`: one of its
/// labels, named as its mailbox is (`names`: label -> mailbox name), or
/// All Mail's own name, matches.
pub fn selected_by_labels(
    labels: &[String],
    names: &HashMap<String, String>,
    all_name: &str,
    matches: impl Fn(&str) -> bool,
) -> bool {
    matches(all_name)
        || labels
            .iter()
            .any(|l| matches(names.get(l).map(String::as_str).unwrap_or(l)))
}

/// Whether the account's `include`/`exclude` let expunge take a message
/// with `labels`. On Gmail a message shows in All Mail and in the folder of
/// each of its labels, so it is left alone when any of those folders is
/// excluded, and taken only when one of them is included (the default
/// `include = ["*"]` takes All Mail, so everything).
pub fn wanted_by_account(
    labels: &[String],
    names: &HashMap<String, String>,
    all_name: &str,
    include: impl Fn(&str) -> bool,
    exclude: impl Fn(&str) -> bool,
) -> bool {
    let folders: Vec<&str> = std::iter::once(all_name)
        .chain(
            labels
                .iter()
                .map(|l| names.get(l).map(String::as_str).unwrap_or(l)),
        )
        .collect();
    !folders.iter().any(|f| exclude(f)) && folders.iter().any(|f| include(f))
}

/// Which Trash UIDs are provably ours: those COPYUID named whose
/// X-GM-MSGID is the one moved; for entries whose Trash UID is unknown (a
/// run killed before the MOVE answered), the Trash message with that
/// MSGID. Returns (trash UID, entry index).
pub fn confirm_in_trash(pending: &TrashPending, trash_meta: &[GmailMeta]) -> Vec<(u32, usize)> {
    let by_msgid: HashMap<u64, usize> = pending
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.msgid, i))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in trash_meta {
        let Some(&i) = by_msgid.get(&m.msgid) else {
            continue;
        };
        let e = &pending.entries[i];
        if e.trash_uid.is_some_and(|u| u != m.uid) || !seen.insert(i) {
            continue;
        }
        out.push((m.uid, i));
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: u32, msgid: u64) -> GmailMeta {
        GmailMeta {
            uid,
            msgid,
            ..Default::default()
        }
    }

    fn entry(all_uid: u32, msgid: u64, trash_uid: Option<u32>) -> TrashEntry {
        TrashEntry {
            all_uid,
            msgid,
            size: 10,
            internaldate: 0,
            trash_uid,
        }
    }

    #[test]
    fn only_trash_uids_with_the_moved_msgid_are_confirmed() {
        let p = TrashPending {
            trash_uidvalidity: 1,
            entries: vec![
                entry(4, 100, Some(7)),
                entry(5, 200, None),
                entry(6, 300, Some(9)),
            ],
        };
        // 7 is ours; 8 carries 200 (found by MSGID); 9 carries another
        // message's MSGID (not ours); 3 was in Trash before.
        let trash = [meta(3, 999), meta(7, 100), meta(8, 200), meta(9, 555)];
        assert_eq!(confirm_in_trash(&p, &trash), vec![(7, 0), (8, 1)]);
    }

    #[test]
    fn labels_select_by_their_mailbox_names() {
        let names: HashMap<String, String> = [("\\Inbox".to_string(), "INBOX".to_string())].into();
        let labels = vec!["\\Inbox".to_string(), "Work".to_string()];
        assert!(selected_by_labels(
            &labels,
            &names,
            "[Gmail]/All Mail",
            |n| n == "INBOX"
        ));
        assert!(selected_by_labels(
            &labels,
            &names,
            "[Gmail]/All Mail",
            |n| n == "Work"
        ));
        assert!(!selected_by_labels(
            &labels,
            &names,
            "[Gmail]/All Mail",
            |n| n == "Sent"
        ));
    }

    #[test]
    fn include_and_exclude_apply_to_every_folder_a_message_shows_in() {
        let names: HashMap<String, String> = [("\\Inbox".to_string(), "INBOX".to_string())].into();
        let all = "[Gmail]/All Mail";
        let work = vec!["\\Inbox".to_string(), "Work".to_string()];
        let inbox = vec!["\\Inbox".to_string()];
        let none: Vec<String> = Vec::new();
        let everything = |_: &str| true;
        let nothing = |_: &str| false;
        // Defaults: everything.
        assert!(wanted_by_account(&none, &names, all, everything, nothing));
        // exclude = ["Work"]: a message labelled Work stays, wherever else it is.
        let not_work = |n: &str| n == "Work";
        assert!(!wanted_by_account(&work, &names, all, everything, not_work));
        assert!(wanted_by_account(&inbox, &names, all, everything, not_work));
        // include = ["INBOX"]: only what INBOX shows.
        let only_inbox = |n: &str| n == "INBOX";
        assert!(wanted_by_account(&inbox, &names, all, only_inbox, nothing));
        assert!(!wanted_by_account(&none, &names, all, only_inbox, nothing));
    }

    #[test]
    fn recorded_ids_survive_and_merge_with_an_older_record_in_state() {
        let (tree, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(state.path().join(IDS_IN_STATE), "5\t9\t90\n5\t2\t1\n").unwrap();
        record_ids(tree.path(), 5, &[meta(1, 10), meta(2, 20)]).unwrap();
        record_ids(tree.path(), 5, &[meta(3, 30)]).unwrap();
        let ids = load_ids(tree.path(), state.path()).unwrap();
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[&(5, 2)], 20, "the tree's record wins");
        assert_eq!(ids[&(5, 9)], 90);
        let text = std::fs::read_to_string(tree.path().join(IDS)).unwrap();
        assert!(text.starts_with("5\t1\t10\t0\n"), "{text}");
    }
}
