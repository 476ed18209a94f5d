//! The archive side of Gmail mode, for the commands that only read it
//! (`ls`, `search`, `export`, `verify`). In an archive pulled in Gmail
//! mode every label folder holds hard links to All Mail's files, under All
//! Mail's own file names, so a message with three labels has four names.
//! Those commands count and show each message once, under All Mail, with
//! its labels: the label folders that hold its name. A file in another
//! folder whose base name All Mail does not have (Spam and Trash, pulled on
//! request) is a message of its own.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::restore::{archive_info, GmailArchive};
use crate::archive::view::folder_dirs;
use crate::archive::{names, Archive, ArchiveError};

/// An archive pulled in Gmail mode, as the read-only commands see it.
#[derive(Debug, Clone, Default)]
pub struct GmailView {
    pub info: GmailArchive,
    /// Base names of All Mail's files.
    all_bases: HashSet<String>,
    /// Base name -> the labels (X-GM-LABELS names) of the message.
    labels: HashMap<String, BTreeSet<String>>,
}

impl GmailView {
    /// Reads the directory entries of All Mail and of every other folder
    /// (no message file is opened). `None`: not a Gmail-mode archive (no
    /// label record in All Mail's state directory).
    pub fn read(archive: &Archive) -> Result<Option<GmailView>, ArchiveError> {
        let Some(info) = archive_info(archive) else {
            return Ok(None);
        };
        let all_bases: HashSet<String> = bases(archive, &info.all_dir)?.collect();
        let mut view = GmailView {
            info,
            all_bases,
            labels: HashMap::new(),
        };
        for dir in folder_dirs(archive)? {
            if dir == view.info.all_dir {
                continue;
            }
            let label = view.label_of_folder(&dir);
            for base in bases(archive, &dir)? {
                if view.all_bases.contains(&base) {
                    view.labels.entry(base).or_default().insert(label.clone());
                }
            }
        }
        Ok(Some(view))
    }

    /// The label a folder shows: as the last pull recorded it, else (a
    /// label gone from the server since) the folder's own name.
    pub fn label_of_folder(&self, dir: &str) -> String {
        self.info.labels.get(dir).cloned().unwrap_or_else(|| {
            names::levels_for(dir)
                .map(|l| l.join("/"))
                .unwrap_or_else(|| dir.to_string())
        })
    }

    /// Whether `dir` is the All Mail folder.
    pub fn is_all_mail(&self, dir: &str) -> bool {
        dir == self.info.all_dir
    }

    /// Whether the file `base` in folder `dir` is another name of an All
    /// Mail message (a label link), to be counted under All Mail only.
    pub fn is_link(&self, dir: &str, base: &str) -> bool {
        !self.is_all_mail(dir) && self.all_bases.contains(base)
    }

    /// The labels of the message whose file is `base`, sorted; empty for
    /// a message no label folder holds (or not All Mail's).
    pub fn labels_of(&self, base: &str) -> Vec<String> {
        self.labels
            .get(base)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The base names (before `:2,`) in a folder's `cur/` and `new/`: only
/// the directory entries, nothing parsed, as this runs before every `ls`
/// and `search` (a name that is not imapbak's matches no All Mail base).
fn bases(archive: &Archive, dir: &str) -> Result<impl Iterator<Item = String>, ArchiveError> {
    let folder = archive.folder(dir);
    let mut out = Vec::new();
    for sub in ["cur", "new"] {
        let path = folder.path().join(sub);
        let rd = match std::fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ArchiveError::Io {
                    what: "cannot read directory",
                    path,
                    source: e,
                })
            }
        };
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                let base = name.split_once(":2,").map_or(name, |(b, _)| b);
                out.push(base.to_string());
            }
        }
    }
    Ok(out.into_iter())
}

/// A label for people: a system label without its backslash (`\Inbox`
/// -> `Inbox`), a user label as it is.
pub fn display_label(label: &str) -> &str {
    label.strip_prefix('\\').unwrap_or(label)
}

/// The value of an `X-Gmail-Labels:` header, as Google Takeout writes it
/// into the mbox files it exports ("each message's labels are preserved
/// in a special X-Gmail-Labels header, in CSV format", Takeout's archive
/// notes): labels separated by commas, one that holds a comma or a quote
/// in double quotes.
pub fn takeout_labels(labels: &[String]) -> String {
    labels
        .iter()
        .map(|l| {
            let l = display_label(l);
            if l.contains(',') || l.contains('"') {
                format!("\"{}\"", l.replace('"', "\"\""))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_takeout_writes_them() {
        let l = [
            "\\Inbox".to_string(),
            "Work/Projects".to_string(),
            "a, \"b\"".to_string(),
        ];
        assert_eq!(takeout_labels(&l), "Inbox,Work/Projects,\"a, \"\"b\"\"\"");
        assert_eq!(display_label("\\Starred"), "Starred");
    }

    #[test]
    fn label_links_are_counted_under_all_mail_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let all = archive.folder(".[Gmail].All Mail");
        all.create().unwrap();
        let w = all
            .write_message(11, 1, 0, "S", b"A: 1\r\n\r\na", 3)
            .unwrap();
        let src = all.path().join("cur").join(w.entry.base.clone() + ":2,S");
        let name = crate::archive::FileName::parse(&(w.entry.base.clone() + ":2,S")).unwrap();
        for d in ["", ".Work"] {
            let f = archive.folder(d);
            f.create().unwrap();
            assert!(f.link_from(&src, &name).unwrap());
        }
        // Trash, pulled as an ordinary folder: a message of its own.
        let trash = archive.folder(".[Gmail].Trash");
        trash.create().unwrap();
        let t = trash
            .write_message(12, 1, 0, "", b"A: 2\r\n\r\nb", 3)
            .unwrap();
        let layout: HashMap<String, String> = [
            ("\\Inbox".to_string(), String::new()),
            ("Work".to_string(), ".Work".to_string()),
        ]
        .into();
        let json = serde_json::to_vec(&layout).unwrap();
        std::fs::write(all.path().join(super::super::restore::LABELS), json).unwrap();

        let v = GmailView::read(&archive).unwrap().unwrap();
        assert!(v.is_link("", &w.entry.base) && v.is_link(".Work", &w.entry.base));
        assert!(!v.is_link(".[Gmail].All Mail", &w.entry.base));
        assert!(!v.is_link(".[Gmail].Trash", &t.entry.base));
        assert_eq!(v.labels_of(&w.entry.base), ["Work", "\\Inbox"]);
        assert!(v.labels_of(&t.entry.base).is_empty());
    }
}
