//! The header index: per mailbox, the few decoded headers `search` needs
//! (date, from, to, subject, Message-ID, size), written at pull time so a
//! query never decompresses every message, and rebuildable from the tree.
//!
//! One file per mailbox, `state/mailboxes/<folder>/headers`: a version line,
//! then one tab-separated line per message, only ever appended to. It is a
//! cache: readers take the last record of each (UIDVALIDITY, UID), ignore
//! torn or damaged lines, and rebuild what is missing from the message files
//! (see `archive::view`). Tabs and newlines inside values are escaped, so a
//! hostile header cannot forge a record.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{write_atomic, ArchiveError};

/// The searchable headers of one archived message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRecord {
    pub uidvalidity: u32,
    pub uid: u32,
    /// INTERNALDATE, seconds since the epoch.
    pub internaldate: i64,
    pub size: u64,
    /// The archived file's base name (stable across flag changes).
    pub base: String,
    /// The `Date:` header, seconds since the epoch; `None` when absent or
    /// unreadable.
    pub date: Option<i64>,
    /// Decoded `From:` (display names and addresses, RFC 2047 undone).
    pub from: String,
    /// Decoded `To:` and `Cc:`, joined by `, `.
    pub to: String,
    pub subject: String,
    pub message_id: String,
}

/// At most this much of a message is looked at for headers: a message
/// without a blank line would otherwise be parsed whole as headers.
pub const HEADER_LIMIT: usize = 256 * 1024;

impl HeaderRecord {
    /// Extracts the record from a message's raw bytes. Never fails: what
    /// cannot be read is left empty.
    pub fn from_message(
        uidvalidity: u32,
        uid: u32,
        internaldate: i64,
        base: &str,
        body: &[u8],
    ) -> HeaderRecord {
        let mut rec = HeaderRecord {
            uidvalidity,
            uid,
            internaldate,
            size: body.len() as u64,
            base: base.to_string(),
            ..Default::default()
        };
        let mut to = Vec::new();
        for h in parse_headers_lenient(header_block(body)) {
            let key = h.get_key_ref();
            let slot = if key.eq_ignore_ascii_case("from") {
                &mut rec.from
            } else if key.eq_ignore_ascii_case("subject") {
                &mut rec.subject
            } else if key.eq_ignore_ascii_case("message-id") {
                &mut rec.message_id
            } else if key.eq_ignore_ascii_case("to") || key.eq_ignore_ascii_case("cc") {
                let v = clean(&h.get_value());
                if !v.is_empty() {
                    to.push(v);
                }
                continue;
            } else if key.eq_ignore_ascii_case("date") {
                if rec.date.is_none() {
                    rec.date = parse_date(&h.get_value());
                }
                continue;
            } else {
                continue;
            };
            // The first occurrence wins, as in most mail readers.
            if slot.is_empty() {
                *slot = clean(&h.get_value());
            }
        }
        rec.to = to.join(", ");
        rec
    }

    /// The date shown and searched: `Date:`, else INTERNALDATE.
    pub fn effective_date(&self) -> i64 {
        self.date.unwrap_or(self.internaldate)
    }

    fn line(&self) -> String {
        let date = self
            .date
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.uidvalidity,
            self.uid,
            self.internaldate,
            self.size,
            date,
            escape(&self.base),
            escape(&self.message_id),
            escape(&self.from),
            escape(&self.to),
            escape(&self.subject),
        )
    }

    fn parse(line: &str) -> Option<HeaderRecord> {
        let mut f = line.split('\t');
        let rec = HeaderRecord {
            uidvalidity: f.next()?.parse().ok()?,
            uid: f.next()?.parse().ok()?,
            internaldate: f.next()?.parse().ok()?,
            size: f.next()?.parse().ok()?,
            date: match f.next()? {
                "-" => None,
                d => Some(d.parse().ok()?),
            },
            base: unescape(f.next()?)?,
            message_id: unescape(f.next()?)?,
            from: unescape(f.next()?)?,
            to: unescape(f.next()?)?,
            subject: unescape(f.next()?)?,
        };
        f.next().is_none().then_some(rec)
    }
}

/// The bytes before the first empty line (all of them when there is none),
/// at most [`HEADER_LIMIT`].
pub fn header_block(message: &[u8]) -> &[u8] {
    let m = &message[..message.len().min(HEADER_LIMIT)];
    let mut start = 0;
    while start < m.len() {
        let end = m[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(m.len(), |p| start + p + 1);
        let line = &m[start..end];
        if line == b"\n" || line == b"\r\n" {
            return &m[..end];
        }
        start = end;
    }
    m
}

/// Headers as mailparse reads them, but never an error: an orphan
/// continuation line (a first line starting with whitespace, which
/// mailparse refuses), a lone CR or a line mailparse rejects is skipped and
/// the rest is still read.
fn parse_headers_lenient(block: &[u8]) -> Vec<mailparse::MailHeader<'_>> {
    let mut out = Vec::new();
    let mut ix = 0;
    while ix < block.len() {
        let rest = &block[ix..];
        if rest[0] == b'\n' || rest.starts_with(b"\r\n") {
            break;
        }
        let line_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
        if matches!(rest[0], b' ' | b'\t' | b'\r') {
            ix += line_end;
            continue;
        }
        match mailparse::parse_header(rest) {
            Ok((h, n)) if n > 0 => {
                out.push(h);
                ix += n;
            }
            _ => ix += line_end,
        }
    }
    out
}

/// Seconds since the epoch of a `Date:` value; `None` for garbage (which
/// mailparse's `dateparse` may report as `Ok(0)`) and for dates no calendar
/// type can show.
pub fn parse_date(value: &str) -> Option<i64> {
    match mailparse::dateparse(value) {
        Ok(t) if t != 0 && (-62_135_596_800..=253_402_300_799).contains(&t) => Some(t),
        _ => None,
    }
}

/// One line of text: control characters (a hostile subject could carry
/// terminal escapes) become spaces, runs of whitespace collapse.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    if !s.contains('\\') {
        return Some(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(match chars.next()? {
                '\\' => '\\',
                't' => '\t',
                'n' => '\n',
                'r' => '\r',
                _ => return None,
            });
        } else {
            out.push(c);
        }
    }
    Some(out)
}

const FILE: &str = "headers";
const MAGIC: &str = "imapbak-headers 1\n";

/// The index file of the mailbox whose state directory is `state`.
pub fn index_path(state: &Path) -> PathBuf {
    state.join(FILE)
}

/// Appends records to the index of the mailbox whose state directory is `state`.
///
/// Not fsynced: the index is a cache that readers check against the tree,
/// and a pull should not wait for it.
pub fn append(state: &Path, records: &[HeaderRecord]) -> Result<(), ArchiveError> {
    if records.is_empty() {
        return Ok(());
    }
    let path = index_path(state);
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .map_err(ArchiveError::io("cannot open header index", &path))?;
    let len = f
        .metadata()
        .map_err(ArchiveError::io("cannot stat header index", &path))?
        .len();
    let mut buf = String::new();
    if len == 0 {
        buf.push_str(MAGIC);
    } else {
        // A torn last line (a crash mid-append) must not swallow the next record.
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))
            .and_then(|_| f.read_exact(&mut last))
            .map_err(ArchiveError::io("cannot read header index", &path))?;
        if last[0] != b'\n' {
            buf.push('\n');
        }
    }
    for r in records {
        buf.push_str(&r.line());
    }
    f.write_all(buf.as_bytes())
        .map_err(ArchiveError::io("cannot write header index", &path))
}

/// Replaces the index with exactly `records` (write, sync, rename).
pub fn rewrite(state: &Path, records: &[HeaderRecord]) -> Result<(), ArchiveError> {
    let mut buf = String::from(MAGIC);
    for r in records {
        buf.push_str(&r.line());
    }
    write_atomic(&index_path(state), buf.as_bytes())
}

/// What an index file holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last record of each (UIDVALIDITY, UID).
    pub records: HashMap<(u32, u32), HeaderRecord>,
    /// False when the file is of an unknown version (to be rebuilt whole)
    /// or had damaged lines.
    pub clean: bool,
    /// True when the file exists.
    pub exists: bool,
}

/// Reads the index of the mailbox whose state directory is `state`; a
/// missing file is an empty index.
pub fn load(state: &Path) -> Result<Loaded, ArchiveError> {
    let path = index_path(state);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                clean: true,
                ..Default::default()
            })
        }
        Err(e) => {
            return Err(ArchiveError::Io {
                what: "cannot read header index",
                path,
                source: e,
            })
        }
    };
    let mut out = Loaded {
        records: HashMap::new(),
        clean: true,
        exists: true,
    };
    let Some(body) = bytes.strip_prefix(MAGIC.as_bytes()) else {
        out.clean = false;
        return Ok(out);
    };
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match std::str::from_utf8(line).ok().and_then(HeaderRecord::parse) {
            Some(r) => {
                out.records.insert((r.uidvalidity, r.uid), r);
            }
            None => out.clean = false,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(body: &[u8]) -> HeaderRecord {
        HeaderRecord::from_message(7, 3, 1_700_000_000, "b", body)
    }

    #[test]
    fn encoded_words_are_decoded_and_to_includes_cc() {
        let m: &[u8] = b"From: =?UTF-8?Q?J=C3=BCrgen_Tester?= <j@example.invalid>\r\n\
            To: a@example.invalid\r\nCc: b@example.invalid\r\n\
            Subject: =?UTF-8?B?R3LDvMOfZQ==?= und =?ISO-8859-1?Q?K=F6ln?=\r\n\
            Date: Tue, 14 May 2024 09:30:00 +0200\r\n\
            Message-ID: <x@y>\r\n\r\nbody\r\nSubject: not a header\r\n";
        let r = rec(m);
        assert_eq!(r.from, "Jürgen Tester <j@example.invalid>");
        assert_eq!(r.to, "a@example.invalid, b@example.invalid");
        assert_eq!(r.subject, "Grüße und Köln");
        assert_eq!(r.message_id, "<x@y>");
        assert_eq!(r.date, Some(1_715_671_800));
        assert_eq!(r.size, m.len() as u64);
    }

    #[test]
    fn a_first_line_starting_with_whitespace_does_not_hide_the_rest() {
        let r = rec(
            b" X-Broken: fold\r\n\tmore\r\nFrom: a@example.invalid\r\nSubject: still here\r\n\r\nx",
        );
        assert_eq!(r.from, "a@example.invalid");
        assert_eq!(r.subject, "still here");
    }

    #[test]
    fn garbage_never_panics_and_leaves_fields_empty() {
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\r\n\r\nno headers".to_vec(),
            b"just a line without colon".to_vec(),
            b"Subject: lone\rCR\r\nFrom:\r\n".to_vec(),
            b"Subject: \xff\xfe\x80 8-bit =?bogus?X?zz?=\r\nDate: not a date\r\n".to_vec(),
            b"Date: 99 Foo 99999999999\r\n".to_vec(),
            (0..=255u8).cycle().take(5000).collect(),
            b"Subject: x\x1b[31mred\x07\r\n".to_vec(),
        ];
        for m in inputs {
            let r = rec(&m);
            assert!(r.date.is_none(), "{r:?}");
            assert!(!r.subject.chars().any(char::is_control), "{r:?}");
        }
    }

    #[test]
    fn garbage_dates_are_none_not_the_epoch() {
        assert_eq!(parse_date("garbage"), None);
        assert_eq!(parse_date(""), None);
        assert_eq!(parse_date("1 Jan 1970 00:00:00 +0000"), None);
        assert_eq!(
            parse_date("Sun, 02 Oct 2016 07:06:22 -0700 (PDT)"),
            Some(1475417182)
        );
    }

    #[test]
    fn index_round_trips_escapes_and_survives_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = rec(b"Subject: tab\there\r\n\r\n");
        a.subject = "tab\there\nnew\\line".into();
        let mut b = a.clone();
        b.uid = 4;
        b.date = Some(5);
        append(dir.path(), std::slice::from_ref(&a)).unwrap();
        // A torn append, then a good one: the good one is still read.
        let mut f = OpenOptions::new()
            .append(true)
            .open(index_path(dir.path()))
            .unwrap();
        f.write_all(b"7\t9\t1").unwrap();
        append(dir.path(), std::slice::from_ref(&b)).unwrap();
        let l = load(dir.path()).unwrap();
        assert!(!l.clean);
        assert_eq!(l.records.len(), 2);
        assert_eq!(l.records[&(7, 3)], a);
        assert_eq!(l.records[&(7, 4)], b);
        rewrite(dir.path(), &[b.clone()]).unwrap();
        let l = load(dir.path()).unwrap();
        assert!(l.clean && l.exists);
        assert_eq!(l.records.len(), 1);
    }

    #[test]
    fn an_index_of_another_version_is_unclean() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(index_path(dir.path()), "imapbak-headers 99\n1\t2\n").unwrap();
        let l = load(dir.path()).unwrap();
        assert!(!l.clean && l.records.is_empty());
    }
}
