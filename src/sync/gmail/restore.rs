//! Gmail's rules for restore. An archive pulled in Gmail mode holds each
//! message once, in its All Mail folder, and every label as a folder of
//! hard links (same base name) to those files. Into a Gmail target each
//! message is APPENDed once into `\All`, then given its labels with
//! `UID STORE <uid> +X-GM-LABELS.SILENT (...)` from the APPENDUID; nested
//! labels are created level by level first, as STORE does not create them
//! (PROVIDERS.md, "Gmail"). Into any other server the folders go as a
//! Dovecot serving the archive shows them; `--skip-all-mail-duplicates`
//! leaves out the All Mail copy of messages that carry another label.
//!
//! The APPEND and its label STORE are two commands: a run killed (or cut
//! off) between them would leave the message in All Mail without labels,
//! and a rerun finds it present. So the APPENDUIDs whose labels are due are
//! written to [`LabelsPending`] (synced) before the STORE and crossed out
//! after it, and the next attempt or run sets them first. A message whose
//! APPEND answer never came back (its UID unknown) is labelled again once
//! the next run finds it on the target; a label STORE is idempotent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::plan::Layout;
use crate::archive::{Archive, ArchiveError};
use crate::sync::remote::{ListedMailbox, SpecialUse};
use crate::sync::restore::SourceMailbox;

/// Label -> archive folder, as the last Gmail-mode pull laid them out: in
/// All Mail's Maildir folder (it marks the archive as pulled in Gmail
/// mode, and survives the loss of `state/`; Dovecot ignores it).
pub const LABELS: &str = "imapbak-gmail-labels.json";
/// Where earlier versions kept it, in All Mail's state directory.
pub const LABELS_IN_STATE: &str = "gmail-labels.json";

/// Records, in All Mail's Maildir folder `tree`, which folder each label is.
pub fn record_layout(tree: &Path, layout: &Layout) -> Result<(), ArchiveError> {
    let map: BTreeMap<&String, &String> = layout.labels.iter().collect();
    let bytes = serde_json::to_vec_pretty(&map).expect("serialisable");
    if std::fs::read(tree.join(LABELS)).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    crate::archive::write_atomic(&tree.join(LABELS), &bytes)
}

/// What an archive pulled in Gmail mode says about itself.
#[derive(Debug, Clone, Default)]
pub struct GmailArchive {
    /// All Mail's folder under `mail/`.
    pub all_dir: String,
    /// Archive folder -> the label it shows.
    pub labels: HashMap<String, String>,
}

/// The Gmail layout of `archive`, if it was pulled in Gmail mode (its All
/// Mail folder carries the label record; an archive of an earlier version
/// has it in All Mail's state directory).
pub fn archive_info(archive: &Archive) -> Option<GmailArchive> {
    let places = [
        (archive.mail_dir(), LABELS),
        (archive.state_dir().join("mailboxes"), LABELS_IN_STATE),
    ];
    for (root, file) in places {
        let Ok(rd) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(bytes) = std::fs::read(e.path().join(file)) else {
                continue;
            };
            let Ok(map) = serde_json::from_slice::<HashMap<String, String>>(&bytes) else {
                continue;
            };
            let dir = e.file_name().to_string_lossy().into_owned();
            let all_dir = if dir == "INBOX" { String::new() } else { dir };
            return Some(GmailArchive {
                all_dir,
                labels: map.into_iter().map(|(l, d)| (d, l)).collect(),
            });
        }
    }
    None
}

/// The labels of each All Mail message (by base name): one per label
/// folder holding a link to it. Folders the record does not name carry
/// their own name as the label.
pub fn labels_by_base(
    sources: &[SourceMailbox],
    g: &GmailArchive,
) -> HashMap<String, BTreeSet<String>> {
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for s in sources.iter().filter(|s| s.dir != g.all_dir) {
        let label = g.labels.get(&s.dir).cloned().unwrap_or_else(|| s.name());
        for m in &s.messages {
            out.entry(m.base.clone()).or_default().insert(label.clone());
        }
    }
    out
}

/// Into Gmail: only All Mail is appended, under the target's `\All` name
/// (localised, found by special use). `Err` when the target shows none.
pub fn sources_for_gmail(
    mut sources: Vec<SourceMailbox>,
    g: &GmailArchive,
    listed: &[ListedMailbox],
) -> Result<Vec<SourceMailbox>, String> {
    let all = super::special(listed, SpecialUse::All).ok_or_else(|| {
            "the target shows no All Mail (`\\All`) mailbox, so messages cannot be restored once each with their labels\n\
             hint: in Gmail's settings, Labels, tick \"Show in IMAP\" for All Mail"
                .to_string()
        })?;
    sources.retain(|s| s.dir == g.all_dir);
    let delim = all.delimiter.unwrap_or('/');
    for s in &mut sources {
        s.levels = all.name.split(delim).map(str::to_string).collect();
    }
    Ok(sources)
}

/// The user labels (system labels start with `\`) missing on the target,
/// each parent before its children: STORE does not create them.
pub fn labels_to_create<'a>(
    labels: impl Iterator<Item = &'a String>,
    listed: &[ListedMailbox],
) -> Vec<String> {
    let have: HashSet<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    let mut want = BTreeSet::new();
    for l in labels.filter(|l| !l.starts_with('\\')) {
        let parts: Vec<&str> = l.split('/').collect();
        for n in 1..=parts.len() {
            want.insert(parts[..n].join("/"));
        }
    }
    // BTreeSet order puts `A` before `A/B`.
    want.into_iter()
        .filter(|l| !have.contains(l.as_str()))
        .collect()
}

/// Into another server, on request: leaves out All Mail's copy of every
/// message that some label folder also holds.
pub fn drop_all_mail_duplicates(sources: &mut [SourceMailbox], g: &GmailArchive) {
    let labelled: HashSet<String> = sources
        .iter()
        .filter(|s| s.dir != g.all_dir)
        .flat_map(|s| s.messages.iter().map(|m| m.base.clone()))
        .collect();
    for s in sources.iter_mut().filter(|s| s.dir == g.all_dir) {
        s.messages.retain(|m| !labelled.contains(&m.base));
    }
}

/// The restored messages whose labels are not set yet, for one target
/// mailbox: an append-only file in restore's state directory, lines
/// `+ <uidvalidity> <uid> <base>` (due) and `- <uidvalidity> <uid>` (set).
#[derive(Debug, Clone)]
pub struct LabelsPending {
    path: PathBuf,
}

impl LabelsPending {
    /// The record for target mailbox `raw` in restore's state `dir`.
    pub fn at(dir: &Path, raw: &str) -> LabelsPending {
        let key = &crate::archive::sha256_hex(raw.as_bytes())[..24];
        LabelsPending {
            path: dir.join(format!("{key}.labels")),
        }
    }

    /// (UID, base name) of every message still due under `uidvalidity`.
    pub fn load(&self, uidvalidity: u32) -> Vec<(u32, String)> {
        self.due()
            .into_iter()
            .filter(|((uv, _), _)| *uv == uidvalidity)
            .map(|((_, uid), base)| (uid, base))
            .collect()
    }

    /// Everything due, under any UIDVALIDITY.
    fn due(&self) -> BTreeMap<(u32, u32), String> {
        let mut due = BTreeMap::new();
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return due;
        };
        for line in text.lines() {
            let mut f = line.splitn(4, ' ');
            let (Some(op), Some(uv), Some(uid)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(uv), Ok(uid)) = (uv.parse::<u32>(), uid.parse::<u32>()) else {
                continue;
            };
            match (op, f.next()) {
                ("+", Some(base)) => {
                    due.insert((uv, uid), base.to_string());
                }
                ("-", _) => {
                    due.remove(&(uv, uid));
                }
                _ => {}
            }
        }
        due
    }

    /// Records, durably, that `entries` (UID, base) are about to be
    /// labelled; an error means the STORE must not be relied on alone.
    pub fn add(&self, uidvalidity: u32, entries: &[(u32, String)]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for (uid, base) in entries {
            text.push_str(&format!("+ {uidvalidity} {uid} {base}\n"));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    }

    /// The labels of `uids` are set. When nothing is due any more the
    /// record goes; a failure costs the next run a repeated (harmless)
    /// STORE, so it is only logged.
    pub fn done(&self, uidvalidity: u32, uids: &[u32]) {
        if uids.is_empty() {
            return;
        }
        let set: HashSet<(u32, u32)> = uids.iter().map(|u| (uidvalidity, *u)).collect();
        let r = if self.due().keys().all(|k| set.contains(k)) {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            let mut text = String::new();
            for uid in uids {
                text.push_str(&format!("- {uidvalidity} {uid}\n"));
            }
            std::fs::OpenOptions::new()
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
        };
        if let Err(e) = r {
            log::warn!("cannot update `{}`: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> ListedMailbox {
        ListedMailbox {
            raw: name.into(),
            name: name.into(),
            delimiter: Some('/'),
            selectable: true,
            status: None,
            special_use: None,
        }
    }

    fn source(dir: &str, name: &str, bases: &[&str]) -> SourceMailbox {
        SourceMailbox {
            dir: dir.into(),
            levels: name.split('/').map(str::to_string).collect(),
            messages: bases
                .iter()
                .map(|b| crate::sync::restore::SourceMessage {
                    path: b.into(),
                    base: b.to_string(),
                    secs: 0,
                    size: 1,
                    letters: String::new(),
                })
                .collect(),
            keywords: Default::default(),
        }
    }

    #[test]
    fn labels_come_from_the_links_and_all_mail_duplicates_can_be_left_out() {
        let g = GmailArchive {
            all_dir: ".[Gmail].All Mail".into(),
            labels: [("".to_string(), "\\Inbox".to_string())].into(),
        };
        let mut sources = vec![
            source("", "INBOX", &["a", "b"]),
            source(".[Gmail].All Mail", "[Gmail]/All Mail", &["a", "b", "c"]),
            source(".Work", "Work", &["b"]),
        ];
        let by_base = labels_by_base(&sources, &g);
        assert_eq!(by_base["b"].iter().collect::<Vec<_>>(), ["Work", "\\Inbox"]);
        assert!(!by_base.contains_key("c"));
        drop_all_mail_duplicates(&mut sources, &g);
        let all: Vec<&str> = sources[1]
            .messages
            .iter()
            .map(|m| m.base.as_str())
            .collect();
        assert_eq!(all, ["c"]);
    }

    #[test]
    fn labels_due_stay_until_set_and_per_uidvalidity() {
        let d = tempfile::tempdir().unwrap();
        let p = LabelsPending::at(d.path(), "[Gmail]/All Mail");
        assert!(p.load(11).is_empty());
        p.add(11, &[(4, "a".into()), (5, "b".into())]).unwrap();
        p.add(12, &[(4, "c".into())]).unwrap();
        assert_eq!(p.load(11), [(4, "a".to_string()), (5, "b".to_string())]);
        p.done(11, &[4]);
        assert_eq!(p.load(11), [(5, "b".to_string())]);
        assert_eq!(p.load(12), [(4, "c".to_string())]);
        // Another mailbox has its own record.
        assert!(LabelsPending::at(d.path(), "INBOX").load(11).is_empty());
        p.done(11, &[5]);
        p.done(12, &[4]);
        assert!(p.load(11).is_empty() && p.load(12).is_empty());
    }

    #[test]
    fn nested_labels_are_created_parents_first_and_system_labels_never() {
        let labels = [
            "Work/Projects/2024".to_string(),
            "\\Inbox".to_string(),
            "Home".to_string(),
        ];
        let got = labels_to_create(labels.iter(), &[listed("INBOX"), listed("Work")]);
        assert_eq!(got, ["Home", "Work/Projects", "Work/Projects/2024"]);
    }
}
