//! Gmail's layout, decided without I/O: which listed mailbox is `\All`
//! (the one place bodies come from), which archive folder each label
//! shows as, and, from X-GM-LABELS and the links a label folder holds now,
//! the links to add, remove or rename.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use crate::sync::mailboxes::{Naming, Target};
use crate::sync::remote::{GmailMeta, ListedMailbox, SpecialUse};

/// Gmail's folder size limits ("Folder size limits" in Gmail's IMAP
/// settings): a folder whose count sits exactly on one may be hiding mail.
pub const FOLDER_LIMITS: [u32; 4] = [1_000, 2_000, 5_000, 10_000];

/// How a Gmail account maps onto the archive.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `\All`: pulled like any mailbox, with labels.
    pub all: Target,
    /// Mailboxes pulled as ordinary folders (Spam and Trash, when asked).
    pub plain: Vec<Target>,
    /// Label (as X-GM-LABELS names it) -> the folder of hard links.
    pub labels: HashMap<String, String>,
    /// Label -> the mailbox name the server shows it as (`\Inbox` ->
    /// `INBOX`), so `--mailbox` can select by label.
    pub names: HashMap<String, String>,
    /// Warnings for the user (a label folder on a size limit).
    pub warnings: Vec<String>,
}

/// The system label Gmail gives messages of a special-use mailbox
/// (Google's "IMAP Extensions" page: `\Inbox`, `\Sent`, `\Draft`,
/// `\Starred`, `\Important`).
fn system_label(use_: SpecialUse) -> Option<&'static str> {
    Some(match use_ {
        SpecialUse::Sent => "\\Sent",
        SpecialUse::Drafts => "\\Draft",
        SpecialUse::Flagged => "\\Starred",
        SpecialUse::Important => "\\Important",
        _ => return None,
    })
}

impl Layout {
    /// The mailboxes Gmail mode archives: All Mail first, then the plain
    /// ones (Spam and Trash, when asked).
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.all.clone())
            .chain(self.plain.iter().cloned())
            .collect()
    }
}

/// Finds `\All` by its special-use attribute (never by name: Gmail
/// localises it) and maps every other selectable mailbox that `wants` to
/// the label it shows. `Err` with a hint when there is no `\All`.
pub fn layout(
    listed: &[ListedMailbox],
    naming: &Naming,
    wants: impl Fn(&str) -> bool,
    spam_and_trash: bool,
) -> Result<Layout, String> {
    let all = super::special(listed, SpecialUse::All).ok_or_else(|| {
            "the account shows no All Mail (`\\All`) mailbox, so its mail cannot be backed up once per message\n\
             hint: in Gmail's settings, Labels, tick \"Show in IMAP\" for All Mail; or set `gmail = false` to back up every folder as it is"
                .to_string()
        })?;
    let all = Target {
        folder: naming.folder(all).map_err(|e| e.to_string())?,
        mailbox: all.clone(),
    };
    let mut out = Layout {
        all,
        plain: Vec::new(),
        labels: HashMap::new(),
        names: HashMap::new(),
        warnings: Vec::new(),
    };
    for m in listed.iter().filter(|m| m.selectable) {
        if m.raw == out.all.mailbox.raw {
            continue;
        }
        if let Some(count) = m.status.map(|s| s.messages) {
            if FOLDER_LIMITS.contains(&count) {
                out.warnings.push(format!(
                    "`{}` holds exactly {count} messages, one of Gmail's folder size limits: it may be hiding mail\nhint: in Gmail's settings, Forwarding and POP/IMAP, set \"Folder size limits\" to \"Do not limit\"",
                    m.name
                ));
            }
        }
        let name = naming.user_name(&m.name);
        if !wants(name) {
            continue;
        }
        let Ok(folder) = naming.folder(m) else {
            continue;
        };
        match m.special_use {
            Some(SpecialUse::Junk | SpecialUse::Trash) => {
                if spam_and_trash {
                    out.plain.push(Target {
                        mailbox: m.clone(),
                        folder,
                    });
                }
            }
            Some(u) => {
                if let Some(label) = system_label(u) {
                    out.labels.insert(label.to_string(), folder);
                    out.names.insert(label.to_string(), name.to_string());
                }
            }
            None if m.name.eq_ignore_ascii_case("INBOX") => {
                out.labels.insert("\\Inbox".to_string(), folder);
                out.names.insert("\\Inbox".to_string(), name.to_string());
            }
            None => {
                out.labels.insert(m.name.clone(), folder);
                out.names.insert(m.name.clone(), name.to_string());
            }
        }
    }
    Ok(out)
}

impl Layout {
    /// The label folders a message with `labels` belongs in.
    pub fn folders_for(&self, labels: &[String]) -> BTreeSet<String> {
        labels
            .iter()
            .filter_map(|l| {
                self.labels.get(l).or_else(|| {
                    // System labels are case-insensitive atoms.
                    l.starts_with('\\')
                        .then(|| {
                            self.labels
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(l))
                                .map(|(_, v)| v)
                        })
                        .flatten()
                })
            })
            .cloned()
            .collect()
    }

    /// Every label folder.
    pub fn label_folders(&self) -> BTreeSet<String> {
        self.labels.values().cloned().collect()
    }
}

/// One change to a label folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LinkChange {
    /// Link All Mail's file (by its current name) into the folder.
    Add { folder: String, name: String },
    /// The label is gone: remove the folder's link (All Mail keeps it).
    Remove { folder: String, name: String },
    /// Flags changed: the folder's link gets All Mail's current name.
    Rename {
        folder: String,
        from: String,
        to: String,
    },
}

/// What a label folder holds now: base name -> full file name.
pub type FolderLinks = HashMap<String, String>;

/// The link changes for the messages in `meta` (the ones the server
/// reported, all or changed since the last pull): `archived` maps UID to
/// All Mail's (base, full name) now, `current` each label folder's links.
/// Messages the server no longer has are not in `meta` and keep the links
/// they had.
pub fn plan_links(
    layout: &Layout,
    meta: &[GmailMeta],
    archived: &HashMap<u32, (String, String)>,
    current: &HashMap<String, FolderLinks>,
) -> Vec<LinkChange> {
    let empty = FolderLinks::new();
    let mut out = Vec::new();
    for m in meta {
        let Some((base, name)) = archived.get(&m.uid) else {
            continue;
        };
        let want = layout.folders_for(&m.labels);
        for folder in layout.label_folders() {
            let links = current.get(&folder).unwrap_or(&empty);
            match (want.contains(&folder), links.get(base)) {
                (true, None) => out.push(LinkChange::Add {
                    folder,
                    name: name.clone(),
                }),
                (true, Some(have)) if have != name => out.push(LinkChange::Rename {
                    folder,
                    from: have.clone(),
                    to: name.clone(),
                }),
                (false, Some(have)) => out.push(LinkChange::Remove {
                    folder,
                    name: have.clone(),
                }),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::remote::MailboxStatus;

    fn mailbox(name: &str, use_: Option<SpecialUse>) -> ListedMailbox {
        ListedMailbox {
            raw: name.to_string(),
            name: name.to_string(),
            delimiter: Some('/'),
            selectable: true,
            status: Some(MailboxStatus {
                messages: 3,
                ..Default::default()
            }),
            special_use: use_,
        }
    }

    fn gmail_listing() -> Vec<ListedMailbox> {
        vec![
            mailbox("INBOX", None),
            mailbox("[Google Mail]/Alle Nachrichten", Some(SpecialUse::All)),
            mailbox("[Google Mail]/Gesendet", Some(SpecialUse::Sent)),
            mailbox("[Google Mail]/Papierkorb", Some(SpecialUse::Trash)),
            mailbox("[Google Mail]/Spam", Some(SpecialUse::Junk)),
            mailbox("[Google Mail]/Markiert", Some(SpecialUse::Flagged)),
            mailbox("Work/Projects", None),
        ]
    }

    #[test]
    fn all_mail_and_labels_are_found_by_special_use_not_by_name() {
        let l = layout(&gmail_listing(), &Naming::default(), |_| true, false).unwrap();
        assert_eq!(l.all.mailbox.name, "[Google Mail]/Alle Nachrichten");
        assert!(
            l.plain.is_empty(),
            "Spam and Trash are not pulled unless asked"
        );
        let folders = l.folders_for(&[
            "\\Inbox".into(),
            "\\Sent".into(),
            "\\Starred".into(),
            "Work/Projects".into(),
            "NotShown".into(),
        ]);
        let want: BTreeSet<String> = [
            "",
            ".[Google Mail].Gesendet",
            ".[Google Mail].Markiert",
            ".Work.Projects",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(folders, want);
        let with = layout(&gmail_listing(), &Naming::default(), |_| true, true).unwrap();
        assert_eq!(with.plain.len(), 2);
        let excluded = layout(
            &gmail_listing(),
            &Naming::default(),
            |n| n != "Work/Projects",
            false,
        )
        .unwrap();
        assert!(!excluded.label_folders().contains(".Work.Projects"));
    }

    #[test]
    fn no_all_mail_is_an_error_naming_the_gmail_setting() {
        let mut listing = gmail_listing();
        listing.retain(|m| m.special_use != Some(SpecialUse::All));
        let e = layout(&listing, &Naming::default(), |_| true, false).unwrap_err();
        assert!(e.contains("Show in IMAP"), "{e}");
    }

    #[test]
    fn a_folder_on_a_size_limit_is_warned_about() {
        let mut listing = gmail_listing();
        listing[0].status = Some(MailboxStatus {
            messages: 1_000,
            ..Default::default()
        });
        let l = layout(&listing, &Naming::default(), |_| true, false).unwrap();
        assert!(l.warnings.iter().any(|w| w.contains("Folder size limits")));
    }

    #[test]
    fn links_follow_labels_and_flags_and_stay_for_mail_gone_from_the_server() {
        let l = layout(&gmail_listing(), &Naming::default(), |_| true, false).unwrap();
        let meta = vec![GmailMeta {
            uid: 1,
            labels: vec!["\\Inbox".into(), "Work/Projects".into()],
            ..Default::default()
        }];
        let archived: HashMap<u32, (String, String)> = [
            (1, ("b1".to_string(), "b1:2,S".to_string())),
            (2, ("b2".to_string(), "b2:2,".to_string())),
        ]
        .into();
        let mut current: HashMap<String, FolderLinks> = HashMap::new();
        current.insert("".into(), [("b1".into(), "b1:2,".into())].into());
        current.insert(
            ".[Google Mail].Gesendet".into(),
            [("b1".into(), "b1:2,".into()), ("b2".into(), "b2:2,".into())].into(),
        );
        let changes = plan_links(&l, &meta, &archived, &current);
        assert!(changes.contains(&LinkChange::Rename {
            folder: "".into(),
            from: "b1:2,".into(),
            to: "b1:2,S".into()
        }));
        assert!(changes.contains(&LinkChange::Add {
            folder: ".Work.Projects".into(),
            name: "b1:2,S".into()
        }));
        assert!(changes.contains(&LinkChange::Remove {
            folder: ".[Google Mail].Gesendet".into(),
            name: "b1:2,".into()
        }));
        // UID 2 was not reported (gone from the server): its link stays.
        assert_eq!(changes.len(), 3, "{changes:?}");
    }
}
