//! A read-only view of an archive: the folders, the message files in their
//! `cur/` and `new/`, the journal and the status, exactly as they are.
//! `Folder::scan` reconciles (and rewrites the journal); verify, ls, search,
//! show and export must see disagreements instead of repairing them, and
//! must never write, so they read through this module.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::journal::{self, JournalEntry, Status};
use super::{names, Archive, ArchiveError};
use crate::mutf7;

pub use super::maildir::TreeFile;

/// One folder as it is on disk, nothing repaired.
#[derive(Debug, Clone, Default)]
pub struct FolderView {
    /// The Maildir++ directory under `mail/` (`""` is INBOX).
    pub dir: String,
    /// The mailbox name for people: the server's name from the last pull,
    /// else decoded from `dir`.
    pub mailbox: String,
    pub path: PathBuf,
    pub state: PathBuf,
    /// True when `cur/` exists.
    pub exists: bool,
    /// Our message files, sorted by (UIDVALIDITY, UID).
    pub files: Vec<TreeFile>,
    /// Names in `cur/` and `new/` that are not ours (or not plain files).
    pub strays: Vec<PathBuf>,
    pub journal: Vec<JournalEntry>,
    /// False when the journal had a torn or damaged line.
    pub journal_clean: bool,
    pub status: Status,
}

/// One archived message: a journal entry whose file exists, or a file that
/// no journal entry names.
#[derive(Debug, Clone)]
pub struct ArchivedMessage {
    pub uidvalidity: u32,
    pub uid: u32,
    /// Index into [`FolderView::files`].
    pub file: usize,
    /// The content hash recorded at pull time, if journaled.
    pub sha256: Option<String>,
}

impl FolderView {
    /// The id part that names this folder: `INBOX` for the root, else the
    /// directory name (which always starts with `.` and never holds `/`).
    pub fn id_part(&self) -> &str {
        if self.dir.is_empty() {
            "INBOX"
        } else {
            &self.dir
        }
    }

    /// The archived messages, sorted by (UIDVALIDITY, UID).
    pub fn messages(&self) -> Vec<ArchivedMessage> {
        let by_base: HashMap<&str, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.base.as_str(), i))
            .collect();
        let mut seen: HashMap<(u32, u32), ArchivedMessage> = HashMap::new();
        let mut named: HashSet<usize> = HashSet::new();
        for e in &self.journal {
            if let Some(&i) = by_base.get(e.base.as_str()) {
                named.insert(i);
                seen.insert(
                    (e.uidvalidity, e.uid),
                    ArchivedMessage {
                        uidvalidity: e.uidvalidity,
                        uid: e.uid,
                        file: i,
                        sha256: Some(e.sha256.clone()),
                    },
                );
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if !named.contains(&i) {
                seen.entry((f.name.uidvalidity, f.name.uid))
                    .or_insert(ArchivedMessage {
                        uidvalidity: f.name.uidvalidity,
                        uid: f.name.uid,
                        file: i,
                        sha256: None,
                    });
            }
        }
        let mut out: Vec<ArchivedMessage> = seen.into_values().collect();
        out.sort_by_key(|m| (m.uidvalidity, m.uid));
        out
    }

    /// The message with this (UIDVALIDITY, UID), if archived.
    pub fn find(&self, uidvalidity: u32, uid: u32) -> Option<ArchivedMessage> {
        self.messages()
            .into_iter()
            .find(|m| m.uidvalidity == uidvalidity && m.uid == uid)
    }
}

/// The Maildir++ directories of an archive's folders (`""` is INBOX), from
/// the tree and from `state/` (a folder whose directory is gone but whose
/// journal is not must still be seen), sorted.
pub fn folder_dirs(archive: &Archive) -> Result<Vec<String>, ArchiveError> {
    let mut dirs: Vec<String> = Vec::new();
    let mail = archive.mail_dir();
    if mail.join("cur").is_dir() {
        dirs.push(String::new());
    }
    for (base, from_state) in [(mail, false), (archive.state_dir().join("mailboxes"), true)] {
        let rd = match fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ArchiveError::Io {
                    what: "cannot read directory",
                    path: base,
                    source: e,
                })
            }
        };
        for ent in rd {
            let ent = ent.map_err(ArchiveError::io("cannot read directory", &base))?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let dir = match (from_state, name.as_str()) {
                (true, "INBOX") => String::new(),
                (_, n) if n.starts_with('.') && n != "." && n != ".." => name,
                _ => continue,
            };
            dirs.push(dir);
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// Reads one folder without changing anything.
pub fn read_folder(archive: &Archive, dir: &str) -> Result<FolderView, ArchiveError> {
    let mut view = read_tree(archive, dir)?;
    let (journal, clean) = journal::read(&view.state)?;
    view.journal = journal;
    view.journal_clean = clean;
    Ok(view)
}

/// Like [`read_folder`] without the journal (left empty): what search
/// needs, at half the cost.
pub fn read_tree(archive: &Archive, dir: &str) -> Result<FolderView, ArchiveError> {
    let folder = archive.folder(dir);
    let path = folder.path().to_path_buf();
    let state = folder.state_dir().to_path_buf();
    let mut view = FolderView {
        dir: dir.to_string(),
        exists: path.join("cur").is_dir(),
        path,
        state,
        ..Default::default()
    };
    let found = folder.files()?;
    view.files = found.files;
    view.strays = found.strays;
    view.files.sort_by_key(|f| (f.name.uidvalidity, f.name.uid));
    view.strays.sort();
    view.journal_clean = true;
    view.status = journal::load_status(&view.state)?;
    view.mailbox = mailbox_name(dir, &view.status.mailbox);
    Ok(view)
}

/// The name people know a folder by.
fn mailbox_name(dir: &str, raw: &str) -> String {
    if !raw.is_empty() {
        if let Ok(name) = mutf7::decode(raw) {
            return name;
        }
    }
    match names::levels_for(dir) {
        Some(levels) => levels.join("/"),
        None => dir.to_string(),
    }
}

/// Decompresses the start of an archived file, enough for its headers
/// (up to the first empty line, at most `headers::HEADER_LIMIT` bytes).
pub fn read_head(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let file = fs::File::open(path).map_err(ArchiveError::io("cannot open", path))?;
    let damaged = |e: io::Error| ArchiveError::Damaged {
        path: path.to_path_buf(),
        reason: format!("does not decompress: {e}"),
    };
    let mut dec = zstd::stream::Decoder::new(file).map_err(damaged)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while out.len() < super::headers::HEADER_LIMIT {
        let n = dec.read(&mut buf).map_err(damaged)?;
        if n == 0 {
            break;
        }
        let from = out.len().saturating_sub(3);
        out.extend_from_slice(&buf[..n]);
        let tail = &out[from..];
        if tail.windows(2).any(|w| w == b"\n\n") || tail.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_sees_disagreements_without_repairing_them() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let folder = archive.folder("");
        folder.create().unwrap();
        let a = folder
            .write_message(5, 1, 0, "S", b"A: 1\r\n\r\na", 3)
            .unwrap();
        let b = folder
            .write_message(5, 2, 0, "", b"A: 2\r\n\r\nb", 3)
            .unwrap();
        let _c = folder
            .write_message(5, 3, 0, "", b"A: 3\r\n\r\nc", 3)
            .unwrap();
        // 1 and 2 journaled, 3 not; 2's file is deleted; a stray appears.
        folder.journal(&[a.entry.clone(), b.entry.clone()]).unwrap();
        let cur = dir.path().join("mail/cur");
        let two = fs::read_dir(&cur)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("V5U2."))
            .unwrap();
        fs::remove_file(two).unwrap();
        fs::write(cur.join("stray.txt"), b"x").unwrap();
        let journal_before = fs::read(dir.path().join("state/mailboxes/INBOX/journal")).unwrap();

        let view = read_folder(&archive, "").unwrap();
        assert_eq!(view.files.len(), 2);
        assert_eq!(view.strays.len(), 1);
        assert_eq!(view.journal.len(), 2);
        let msgs = view.messages();
        let ids: Vec<(u32, Option<bool>)> = msgs
            .iter()
            .map(|m| (m.uid, m.sha256.as_ref().map(|_| true)))
            .collect();
        assert_eq!(ids, vec![(1, Some(true)), (3, None)]);
        assert_eq!(view.mailbox, "INBOX");
        assert_eq!(folder_dirs(&archive).unwrap(), vec![String::new()]);
        // Nothing was repaired.
        assert_eq!(
            fs::read(dir.path().join("state/mailboxes/INBOX/journal")).unwrap(),
            journal_before
        );
    }

    #[test]
    fn read_head_stops_after_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let folder = archive.folder(".x");
        folder.create().unwrap();
        let mut body = b"Subject: s\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        folder.write_message(1, 1, 0, "", &body, 3).unwrap();
        let view = read_folder(&archive, ".x").unwrap();
        let head = read_head(&view.files[0].path).unwrap();
        assert!(head.len() < 64 * 1024 && head.starts_with(b"Subject: s\r\n\r\n"));
        assert_eq!(view.mailbox, "x");
    }
}
