//! Finding archived messages by their headers without decompressing them:
//! the header index of each folder, checked against the tree (records of
//! files that are gone are ignored, files without a record are read and
//! parsed), and a query matched against the records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::headers::{self, HeaderRecord};
use super::view::{read_head, ArchivedMessage, FolderView};
use super::{Archive, ArchiveError};

/// What to look for. Text fields match case-insensitively as substrings of
/// the decoded header; dates are seconds since the epoch, `since`
/// inclusive, `before` exclusive, on the `Date:` header (INTERNALDATE when
/// it has none).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub since: Option<i64>,
    pub before: Option<i64>,
}

impl Query {
    /// The query with its text lowered once, so matching does not.
    pub fn new(
        from: Option<&str>,
        to: Option<&str>,
        subject: Option<&str>,
        since: Option<i64>,
        before: Option<i64>,
    ) -> Query {
        let low = |s: Option<&str>| s.map(str::to_lowercase);
        Query {
            from: low(from),
            to: low(to),
            subject: low(subject),
            since,
            before,
        }
    }

    pub fn matches(&self, r: &HeaderRecord) -> bool {
        let date = r.effective_date();
        if self.since.is_some_and(|s| date < s) || self.before.is_some_and(|b| date >= b) {
            return false;
        }
        let has = |needle: &Option<String>, hay: &str| match needle {
            None => true,
            Some(n) => contains_lower(hay, n),
        };
        has(&self.from, &r.from) && has(&self.to, &r.to) && has(&self.subject, &r.subject)
    }
}

/// Whether `hay`, lowered, contains `needle` (already lowered). ASCII text,
/// the common case, is compared without allocating.
fn contains_lower(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.as_bytes());
        return h.len() >= n.len()
            && h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b));
    }
    hay.to_lowercase().contains(needle)
}

/// The header records of a folder's messages, in the order of
/// [`FolderView::messages`], and the records that had to be rebuilt from
/// the message files.
#[derive(Debug, Default)]
pub struct FolderHeaders {
    pub messages: Vec<(ArchivedMessage, HeaderRecord)>,
    pub rebuilt: Vec<HeaderRecord>,
    /// The index file was of another version or damaged.
    pub unclean: bool,
    /// Files whose headers could not be read (damaged): path and reason.
    pub unreadable: Vec<String>,
}

/// The records of every message of `view`: from the index where it has a
/// current one, else parsed from the file (in parallel on `threads`). A
/// damaged file still gets a record with what its name says.
///
/// The journal is not read: a message is a file in the tree (under the
/// UIDVALIDITY and UID of its name), plus any index record that names an
/// existing file under another (UIDVALIDITY, UID), which is how pull
/// records a message that a UIDVALIDITY change brought back.
pub fn folder_headers(view: &FolderView, threads: usize) -> Result<FolderHeaders, ArchiveError> {
    let loaded = headers::load(&view.state)?;
    let mut out = FolderHeaders {
        unclean: !loaded.clean,
        ..Default::default()
    };
    let by_base: HashMap<&str, usize> = view
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.base.as_str(), i))
        .collect();
    let mut covered = vec![false; view.files.len()];
    let mut found: Vec<(ArchivedMessage, HeaderRecord)> = Vec::with_capacity(view.files.len());
    for ((uidvalidity, uid), r) in loaded.records {
        let Some(&i) = by_base.get(r.base.as_str()) else {
            continue;
        };
        let name = &view.files[i].name;
        if (name.uidvalidity, name.uid) == (uidvalidity, uid) {
            covered[i] = true;
        }
        let m = ArchivedMessage {
            uidvalidity,
            uid,
            file: i,
            sha256: None,
        };
        found.push((m, r));
    }
    let mut msgs: Vec<ArchivedMessage> = Vec::new();
    let mut todo = Vec::new();
    for (i, f) in view.files.iter().enumerate() {
        if !covered[i] && by_base.get(f.base.as_str()).is_none_or(|&j| j == i) {
            todo.push(msgs.len());
            msgs.push(ArchivedMessage {
                uidvalidity: f.name.uidvalidity,
                uid: f.name.uid,
                file: i,
                sha256: None,
            });
        }
    }
    let results = parallel_map(&todo, threads, |&i| {
        let m = &msgs[i];
        let file = &view.files[m.file];
        let head = read_head(&file.path);
        let (head, err) = match head {
            Ok(h) => (h, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut r =
            HeaderRecord::from_message(m.uidvalidity, m.uid, file.name.secs, &file.base, &head);
        r.size = file.name.size;
        (i, r, err)
    });
    for (i, r, err) in results {
        match err {
            Some(e) => out.unreadable.push(e),
            // Only what was read is worth keeping in the index.
            None => out.rebuilt.push(r.clone()),
        }
        found.push((msgs[i].clone(), r));
    }
    found.sort_unstable_by_key(|(m, _)| (m.uidvalidity, m.uid));
    out.messages = found;
    Ok(out)
}

/// Writes what [`folder_headers`] rebuilt back to the index, if the
/// archive's lock can be had at once (a running pull is left alone: it
/// writes its own records). A failure only costs the next query a rebuild,
/// so it is logged, not returned.
pub fn persist(archive: &Archive, view: &FolderView, fh: &FolderHeaders) {
    if fh.rebuilt.is_empty() && !fh.unclean {
        return;
    }
    let _lock = match archive.lock() {
        Ok(l) => l,
        Err(e) => {
            log::info!("header index of `{}` not updated: {e}", view.mailbox);
            return;
        }
    };
    let result = if fh.unclean {
        let all: Vec<HeaderRecord> = fh.messages.iter().map(|(_, r)| r.clone()).collect();
        headers::rewrite(&view.state, &all)
    } else {
        headers::append(&view.state, &fh.rebuilt)
    };
    if let Err(e) = result {
        log::info!("header index of `{}` not updated: {e}", view.mailbox);
    }
}

/// Applies `f` to every item on up to `threads` threads; results come back
/// in no particular order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    if items.is_empty() {
        return Vec::new();
    }
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push(f(item));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker thread panicked"))
            .collect()
    })
}

/// Threads for reading many files: the machine's cores, at least two.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::view::{read_folder, read_tree};

    fn rec(from: &str, subject: &str, date: Option<i64>) -> HeaderRecord {
        HeaderRecord {
            from: from.into(),
            subject: subject.into(),
            date,
            internaldate: 100,
            ..Default::default()
        }
    }

    #[test]
    fn query_matches_any_case_and_unicode_and_date_bounds() {
        let r = rec("Jürgen <j@example.invalid>", "Grüße aus KÖLN", Some(1000));
        assert!(Query::new(Some("JÜRGEN"), None, Some("köln"), None, None).matches(&r));
        assert!(Query::new(Some("J@EXAMPLE"), None, None, Some(1000), Some(1001)).matches(&r));
        assert!(!Query::new(None, None, None, Some(1001), None).matches(&r));
        assert!(!Query::new(None, None, None, None, Some(1000)).matches(&r));
        assert!(!Query::new(None, Some("x"), None, None, None).matches(&r));
        // Without a Date: header, INTERNALDATE decides.
        let r = rec("a", "b", None);
        assert!(Query::new(None, None, None, Some(100), Some(101)).matches(&r));
    }

    #[test]
    fn missing_index_is_rebuilt_from_the_files_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let folder = archive.folder("");
        folder.create().unwrap();
        let mut entries = Vec::new();
        for uid in 1..=5 {
            let body = format!("Subject: message {uid}\r\nFrom: a@b\r\n\r\nbody {uid}\r\n");
            entries.push(
                folder
                    .write_message(9, uid, 1000 + uid as i64, "", body.as_bytes(), 3)
                    .unwrap()
                    .entry,
            );
        }
        folder.journal(&entries).unwrap();
        // Only one record in the index: the other four are rebuilt.
        let three = folder_headers(&read_folder(&archive, "").unwrap(), 2).unwrap();
        headers::append(folder.state_dir(), &[three.messages[2].1.clone()]).unwrap();
        let view = read_folder(&archive, "").unwrap();
        let fh = folder_headers(&view, 2).unwrap();
        assert_eq!(fh.rebuilt.len(), 4);
        let subjects: Vec<&str> = fh
            .messages
            .iter()
            .map(|(_, r)| r.subject.as_str())
            .collect();
        assert_eq!(
            subjects,
            [
                "message 1",
                "message 2",
                "message 3",
                "message 4",
                "message 5"
            ]
        );
        persist(&archive, &view, &fh);
        let fh = folder_headers(&view, 2).unwrap();
        assert!(fh.rebuilt.is_empty());
        assert_eq!(fh.messages[4].1.internaldate, 1005);
    }

    #[test]
    fn an_alias_record_from_a_new_uidvalidity_is_a_message_too() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let folder = archive.folder("");
        folder.create().unwrap();
        let w = folder
            .write_message(1, 7, 5, "", b"Subject: s\r\n\r\nb", 3)
            .unwrap();
        // As pull records a message a UIDVALIDITY change brought back.
        let alias = HeaderRecord::from_message(2, 1, 5, &w.entry.base, b"Subject: s\r\n\r\n");
        headers::append(folder.state_dir(), &[alias]).unwrap();
        let fh = folder_headers(&read_tree(&archive, "").unwrap(), 2).unwrap();
        let keys: Vec<(u32, u32)> = fh
            .messages
            .iter()
            .map(|(m, _)| (m.uidvalidity, m.uid))
            .collect();
        assert_eq!(keys, [(1, 7), (2, 1)]);
        assert_eq!(fh.rebuilt.len(), 1);
    }

    #[test]
    fn parallel_map_visits_every_item_once() {
        let items: Vec<u32> = (0..1000).collect();
        let mut out = parallel_map(&items, 4, |x| x * 2);
        out.sort_unstable();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
    }
}
