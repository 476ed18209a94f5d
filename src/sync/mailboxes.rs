//! Which of the listed mailboxes a run works on, and the archive folder
//! each maps to. Shared by pull, expunge, check and verify, so every
//! command maps and refuses the same names for the same reasons.
//!
//! Names in the archive are the user's names: the server's personal
//! namespace prefix (`INBOX.` on Courier and Debian's Cyrus) is not part of
//! a folder's name, so `INBOX.Sent` there and `Sent` on Dovecot are the same
//! folder `.Sent`. An archive that already holds a mailbox under its full
//! name (pulled before prefixes were stripped) keeps using that folder.

use std::collections::{HashMap, HashSet};

use super::remote::{ListedMailbox, Namespace};
use crate::archive::names::{folder_for, NameError};
use crate::archive::{Archive, NamespaceRecord};

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

/// How server names become archive folders.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// The personal namespace prefix to strip (decoded, `INBOX.`).
    prefix: String,
    /// Folders the archive already has (Maildir++ directory names).
    existing: HashSet<String>,
}

impl Naming {
    /// Strips `namespace`'s prefix, except where `existing` (the archive's
    /// folders) already holds the mailbox under its full name.
    pub fn new(
        namespace: Option<&Namespace>,
        existing: impl IntoIterator<Item = String>,
    ) -> Naming {
        Naming {
            prefix: namespace.map(|n| n.prefix.clone()).unwrap_or_default(),
            existing: existing.into_iter().collect(),
        }
    }

    /// [`Naming::new`] with the folders `archive` holds now (none if it
    /// cannot be read: then every name is stripped).
    pub fn for_archive(namespace: Option<&Namespace>, archive: &Archive) -> Naming {
        let existing = crate::archive::view::folder_dirs(archive).unwrap_or_default();
        Naming::new(namespace, existing)
    }

    /// The mailbox's name as the user knows it: without the prefix.
    pub fn user_name<'a>(&self, name: &'a str) -> &'a str {
        if self.prefix.is_empty() || name.eq_ignore_ascii_case("INBOX") {
            return name;
        }
        match name.get(..self.prefix.len()) {
            Some(p) if p.eq_ignore_ascii_case(&self.prefix) && name.len() > p.len() => {
                &name[p.len()..]
            }
            _ => name,
        }
    }

    /// The folder for a listed mailbox.
    pub fn folder(&self, m: &ListedMailbox) -> Result<String, NameError> {
        let short = self.user_name(&m.name);
        if short.len() != m.name.len() {
            if let Ok(full) = folder_for(&m.name, m.delimiter) {
                if self.existing.contains(&full) {
                    return Ok(full);
                }
            }
        }
        folder_for(short, m.delimiter)
    }
}

/// What the archive records of a namespace.
pub fn record(namespace: Option<&Namespace>) -> NamespaceRecord {
    namespace
        .map(|n| NamespaceRecord {
            prefix: n.prefix.clone(),
            delimiter: n.delimiter,
        })
        .unwrap_or_default()
}

/// [`choose_mailboxes_in`] with names used as listed (no namespace).
pub fn choose_mailboxes(
    listed: &[ListedMailbox],
    wants: impl Fn(&str) -> bool,
) -> (Vec<Target>, Vec<Refused>) {
    choose_mailboxes_in(listed, &Naming::default(), wants)
}

/// Chooses the selectable mailboxes whose user name (see [`Naming`])
/// passes `wants` and maps each to its folder. Names that cannot be mapped,
/// or that would share a folder with another, are refused (reported, never
/// merged).
pub fn choose_mailboxes_in(
    listed: &[ListedMailbox],
    naming: &Naming,
    wants: impl Fn(&str) -> bool,
) -> (Vec<Target>, Vec<Refused>) {
    let mut targets: Vec<Target> = Vec::new();
    let mut refused = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for m in listed {
        if !m.selectable || !wants(naming.user_name(&m.name)) {
            continue;
        }
        match naming.folder(m) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::remote::MailboxStatus;

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
            special_use: None,
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
    fn the_namespace_prefix_is_not_part_of_a_folder_name_unless_the_archive_has_it() {
        let mut l = vec![
            listed("INBOX", true, 1),
            listed("INBOX.Sent", true, 2),
            listed("INBOX.Archive.2024", true, 3),
            listed("INBOX.Old", true, 4),
        ];
        for m in &mut l {
            m.delimiter = Some('.');
        }
        let ns = Namespace {
            prefix: "INBOX.".into(),
            delimiter: Some('.'),
        };
        let naming = Naming::new(Some(&ns), [".INBOX.Old".to_string()]);
        let (t, r) = choose_mailboxes_in(&l, &naming, |n| n != "Sent");
        let mut folders: Vec<&str> = t.iter().map(|t| t.folder.as_str()).collect();
        folders.sort();
        assert_eq!(folders, vec!["", ".Archive.2024", ".INBOX.Old"]);
        assert!(r.is_empty());
        // `INBOX.INBOX` would become INBOX: refused, never merged.
        l.push(listed("INBOX.INBOX", true, 1));
        l.last_mut().unwrap().delimiter = Some('.');
        let (_, r) = choose_mailboxes_in(&l, &naming, |_| true);
        assert_eq!(r.len(), 1, "{r:?}");
    }
}
