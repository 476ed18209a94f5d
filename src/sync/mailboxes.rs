//! Which of the listed mailboxes a run works on, and the archive folder
//! each maps to. Shared by pull, expunge, check and verify, so every
//! command refuses the same names for the same reasons.

use std::collections::HashMap;

use super::remote::ListedMailbox;
use crate::archive::names::{folder_for, NameError};

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
}
