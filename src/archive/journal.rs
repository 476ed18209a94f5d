//! Per-mailbox state: an append-only journal of archived messages (UID,
//! size, content hash, file) and a small status file (UIDVALIDITY, UIDNEXT,
//! HIGHESTMODSEQ) that lets an unchanged mailbox be skipped. Both are
//! caches of the tree plus the hashes taken at pull time; losing them costs
//! a re-hash, never a download.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{digits, write_atomic, ArchiveError};

/// One archived message. Several entries may share a `base` when a
/// UIDVALIDITY change brought back bytes that were already archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub uidvalidity: u32,
    pub uid: u32,
    pub size: u64,
    pub sha256: String,
    pub base: String,
}

impl JournalEntry {
    /// The entry as a journal line, newline included.
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\n",
            self.uidvalidity, self.uid, self.size, self.sha256, self.base
        )
    }

    fn parse(line: &str) -> Option<JournalEntry> {
        let mut f = line.split('\t');
        // Numbers as `line` writes them (no sign, no leading zero), so an
        // entry is read back only from its own line.
        let e = JournalEntry {
            uidvalidity: digits(f.next()?)?,
            uid: digits(f.next()?)?,
            size: digits(f.next()?)?,
            sha256: f.next()?.to_string(),
            base: f.next()?.to_string(),
        };
        let hex_ok = e.sha256.len() == 64 && e.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        (f.next().is_none() && hex_ok && !e.base.contains('/')).then_some(e)
    }
}

/// What the last pull of a mailbox saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Status {
    /// The mailbox name as the server sent it.
    pub mailbox: String,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: Option<u64>,
    /// Every UID below this is archived or gone from the server.
    pub floor: u32,
    /// Unix time of the last successful pull.
    pub last_pull: i64,
}

const JOURNAL: &str = "journal";
const STATUS: &str = "status.json";

/// Reads the journal. The second value is false when a line was torn or
/// damaged (the caller then rewrites the journal).
pub fn read(state: &Path) -> Result<(Vec<JournalEntry>, bool), ArchiveError> {
    let path = state.join(JOURNAL);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), true)),
        Err(e) => {
            return Err(ArchiveError::Io {
                what: "cannot read journal",
                path,
                source: e,
            })
        }
    };
    let (entries, clean) = parse(&text);
    if !clean {
        log::warn!("skipping a torn or damaged line in `{}`", path.display());
    }
    Ok((entries, clean))
}

/// Parses a journal's bytes: the entries of its intact lines, and whether
/// every line was intact (false for a torn last line or a damaged line,
/// which are skipped). Pure, so it can be fuzzed.
pub fn parse(text: &[u8]) -> (Vec<JournalEntry>, bool) {
    let mut clean = true;
    let mut entries = Vec::new();
    let mut rest: &[u8] = text;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            // A torn last line: the write it belonged to never completed.
            clean = false;
            break;
        };
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        match std::str::from_utf8(line).ok().and_then(JournalEntry::parse) {
            Some(e) => entries.push(e),
            None => clean = false,
        }
    }
    (entries, clean)
}

/// Appends entries and fsyncs the journal.
pub fn append(state: &Path, entries: &[JournalEntry]) -> Result<(), ArchiveError> {
    if entries.is_empty() {
        return Ok(());
    }
    let path = state.join(JOURNAL);
    let mut buf = String::new();
    for e in entries {
        buf.push_str(&e.line());
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(ArchiveError::io("cannot open journal", &path))?;
    f.write_all(buf.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(ArchiveError::io("cannot write journal", &path))
}

/// Replaces the journal with exactly `entries` (write, sync, rename).
pub fn rewrite(state: &Path, entries: &[JournalEntry]) -> Result<(), ArchiveError> {
    let text: String = entries.iter().map(JournalEntry::line).collect();
    write_atomic(&state.join(JOURNAL), text.as_bytes())
}

pub fn load_status(state: &Path) -> Result<Status, ArchiveError> {
    super::read_record(&state.join(STATUS))
}

pub fn save_status(state: &Path, status: &Status) -> Result<(), ArchiveError> {
    super::write_record(&state.join(STATUS), status, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uid: u32) -> JournalEntry {
        JournalEntry {
            uidvalidity: 5,
            uid,
            size: 10,
            sha256: "ab".repeat(32),
            base: format!("1.V5U{uid}.imapbak,S=10,W=10"),
        }
    }

    #[test]
    fn journal_round_trips_and_ignores_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[entry(1), entry(2)]).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"5\t3\t10\tab").unwrap();
        let (entries, clean) = read(dir.path()).unwrap();
        assert_eq!(entries, vec![entry(1), entry(2)]);
        assert!(!clean);
    }

    #[test]
    fn journal_line_with_a_path_is_refused() {
        let mut e = entry(1);
        e.base = "../../x".into();
        assert_eq!(JournalEntry::parse(e.line().trim_end()), None);
    }

    #[test]
    fn journal_numbers_with_a_sign_or_leading_zero_are_damaged() {
        // Found by fuzzing: `+5` and `05` were read as 5, so the entry wrote
        // back as a different line than the one it came from.
        let line = entry(1).line();
        assert_eq!(parse(line.as_bytes()), (vec![entry(1)], true));
        for bad in [
            format!("+{line}"),
            format!("0{line}"),
            line.replace("\t1\t", "\t+1\t"),
            line.replace("\t10\t", "\t010\t"),
        ] {
            assert_eq!(parse(bad.as_bytes()), (vec![], false), "{bad:?}");
        }
    }

    #[test]
    fn journal_parse_keeps_intact_lines_around_damaged_ones() {
        let text = format!("{}garbage\n{}5\t3", entry(1).line(), entry(2).line());
        assert_eq!(parse(text.as_bytes()), (vec![entry(1), entry(2)], false));
        assert_eq!(parse(b""), (vec![], true));
    }

    #[test]
    fn status_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let st = Status {
            mailbox: "INBOX".into(),
            uidvalidity: 1,
            uidnext: 9,
            highestmodseq: Some(77),
            floor: 9,
            last_pull: 5,
        };
        save_status(dir.path(), &st).unwrap();
        assert_eq!(load_status(dir.path()).unwrap(), st);
    }
}
