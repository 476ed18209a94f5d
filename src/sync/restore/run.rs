//! Restore: put an archive back on an IMAP server, exactly once, with flags
//! and INTERNALDATE. The archive is only read (never locked, scanned with
//! repair or written): message files are listed from `cur/` and `new/`.
//!
//! Exactly once rests on what the target holds, not on what we remember:
//! before appending into a mailbox we fingerprint its messages (size +
//! INTERNALDATE + Message-ID, or + SHA-256 of the bytes when there is no
//! Message-ID) and append only archive messages without a match, matching
//! one to one so that true duplicates in the archive stay duplicates. A run
//! killed at any point leaves each message either on the server or not, and
//! the next run sees which. What we remember (APPENDUID, in a state
//! directory outside the archive) only saves reading archived headers again
//! for messages whose recorded UID still holds the same date.
//!
//! Planning is pure ([`plan_mailboxes`], [`target_uids_to_hash`],
//! [`missing_messages`]); [`restore_account`] runs the plan on `jobs`
//! connections through the [`RestoreTarget`] trait.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use globset::GlobSet;
use serde::Serialize;

use crate::archive::names::levels_for;
use crate::archive::{hash_file, letters_to_flags, read_message, Archive, FileName, Keywords};
use crate::exit_codes::ExitCode;
use crate::imap::{mutf7, ImapError};
use crate::progress::Progress;
use crate::report::human_bytes;
use crate::sync::remote::{ListedMailbox, Remote};

// ---------------------------------------------------------------------------
// What restore needs from a server
// ---------------------------------------------------------------------------

/// One message already on the target, as cheaply as it can be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetMessage {
    pub uid: u32,
    pub size: u64,
    /// INTERNALDATE, seconds since the epoch.
    pub secs: i64,
    /// The Message-ID header's value, unfolded and trimmed.
    pub message_id: Option<String>,
}

/// One message to append.
#[derive(Debug, Clone)]
pub struct Upload {
    /// IMAP flags and keywords; never `\Deleted` or `\Recent`.
    pub flags: Vec<String>,
    /// INTERNALDATE, seconds since the epoch.
    pub internaldate: i64,
    pub body: Vec<u8>,
}

/// The operations restore needs beyond [`Remote`]. Errors for which
/// `ImapError::is_connection_level` is false leave the connection usable.
pub trait RestoreTarget: Remote {
    /// The hierarchy delimiter of the personal namespace (`LIST "" ""`);
    /// `None` for a flat server.
    fn delimiter(&mut self) -> impl Future<Output = Result<Option<char>, ImapError>> + Send;

    /// Creates `raw` (modified UTF-7); an existing mailbox is not an error.
    fn create(&mut self, raw: &str) -> impl Future<Output = Result<(), ImapError>> + Send;

    /// EXAMINEs `raw` and returns its UIDVALIDITY and every message's
    /// fingerprint, without marking anything seen.
    fn fingerprints(
        &mut self,
        raw: &str,
    ) -> impl Future<Output = Result<(u32, Vec<TargetMessage>), ImapError>> + Send;

    /// SHA-256 (hex) of the bytes of `uids` (sorted) of the selected mailbox.
    fn body_hashes(
        &mut self,
        uids: &[u32],
    ) -> impl Future<Output = Result<Vec<(u32, String)>, ImapError>> + Send;

    /// Appends `messages` to `raw` in order, pipelined. `on_result(i, r)`
    /// is called once per message as the server answers, with APPENDUID's
    /// (UIDVALIDITY, UID) when given; the call returns `Err` only when the
    /// connection is lost (messages without a result are then unknown).
    fn append<F>(
        &mut self,
        raw: &str,
        messages: &[Upload],
        on_result: F,
    ) -> impl Future<Output = Result<(), ImapError>> + Send
    where
        F: FnMut(usize, Result<Option<(u32, u32)>, ImapError>) + Send;
}

/// The value of the first Message-ID field of a header block, unfolded and
/// trimmed; `None` when there is none or it is empty. The same function
/// reads the archive's and the target's headers, so both sides agree.
pub fn message_id_of(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim_end().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.to_string();
        for cont in lines.by_ref() {
            if cont.starts_with([' ', '\t']) {
                value.push(' ');
                value.push_str(cont);
            } else {
                break;
            }
        }
        let id = value.split_whitespace().collect::<Vec<_>>().join(" ");
        return (!id.is_empty()).then_some(id);
    }
    None
}

// ---------------------------------------------------------------------------
// The archive, read only
// ---------------------------------------------------------------------------

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMessage {
    pub path: PathBuf,
    /// The file's base name (stable across flag changes).
    pub base: String,
    /// INTERNALDATE, seconds since the epoch.
    pub secs: i64,
    pub size: u64,
    /// Maildir flag letters.
    pub letters: String,
}

/// One archived mailbox.
#[derive(Debug, Clone)]
pub struct SourceMailbox {
    /// Folder under `mail/` (`""` for INBOX).
    pub dir: String,
    /// Hierarchy levels of the archived mailbox's name.
    pub levels: Vec<String>,
    pub messages: Vec<SourceMessage>,
    pub keywords: Keywords,
}

impl SourceMailbox {
    /// The name shown to people and matched by `--mailbox`: levels joined by `/`.
    pub fn name(&self) -> String {
        self.levels.join("/")
    }
}

/// Lists every archived mailbox and its messages, reading nothing but
/// directory entries and `dovecot-keywords`. Folders whose name is not one
/// imapbak writes are skipped with a warning.
pub fn read_archive(archive: &Archive) -> Result<Vec<SourceMailbox>, crate::archive::ArchiveError> {
    use crate::archive::ArchiveError;
    let mail = archive.mail_dir();
    let mut dirs = vec![String::new()];
    let rd = fs::read_dir(&mail).map_err(ArchiveError::io("cannot read directory", &mail))?;
    for e in rd {
        let e = e.map_err(ArchiveError::io("cannot read directory", &mail))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(name);
        }
    }
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let Some(levels) = levels_for(&dir) else {
            log::warn!(
                "folder `{}` is not one imapbak writes; not restored",
                mail.join(&dir).display()
            );
            continue;
        };
        let folder = archive.folder(&dir);
        if !folder.exists() {
            continue;
        }
        let mut messages = Vec::new();
        let mut foreign = 0usize;
        for sub in ["cur", "new"] {
            let d = folder.path().join(sub);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ArchiveError::Io {
                        what: "cannot read directory",
                        path: d,
                        source: e,
                    })
                }
            };
            for e in rd {
                let e = e.map_err(ArchiveError::io("cannot read directory", &d))?;
                let parsed = e.file_name().to_str().and_then(FileName::parse);
                match parsed {
                    Some(n) if e.file_type().is_ok_and(|t| t.is_file()) => {
                        messages.push(SourceMessage {
                            path: e.path(),
                            base: n.base(),
                            secs: n.secs,
                            size: n.size,
                            letters: n.flags,
                        })
                    }
                    _ => foreign += 1,
                }
            }
        }
        if foreign > 0 {
            log::warn!(
                "{foreign} file(s) in `{}` are not imapbak's; not restored",
                folder.path().display()
            );
        }
        // Dovecot assigns UIDs in append order: oldest first keeps the order.
        messages.sort_by(|a, b| (a.secs, &a.base).cmp(&(b.secs, &b.base)));
        messages.dedup_by(|a, b| a.base == b.base);
        out.push(SourceMailbox {
            keywords: folder.load_keywords()?,
            dir,
            levels,
            messages,
        });
    }
    Ok(out)
}

/// The first header block of an archived message (at most 256 KiB are
/// decompressed).
fn read_header(path: &Path) -> Result<Vec<u8>, crate::archive::ArchiveError> {
    use crate::archive::ArchiveError;
    let file = File::open(path).map_err(ArchiveError::io("cannot open", path))?;
    let mut dec =
        zstd::stream::Decoder::new(file).map_err(ArchiveError::io("cannot open", path))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = dec.read(&mut buf).map_err(|e| ArchiveError::Damaged {
            path: path.to_path_buf(),
            reason: format!("does not decompress: {e}"),
        })?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = header_end(&out) {
            out.truncate(end);
            break;
        }
        if out.len() > 256 * 1024 {
            break;
        }
    }
    Ok(out)
}

fn header_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// IMAP flags to upload for Maildir letters: everything but `\Deleted`.
pub fn upload_flags(letters: &str, keywords: &Keywords) -> Vec<String> {
    letters_to_flags(letters, keywords)
        .into_iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Deleted") && !f.eq_ignore_ascii_case("\\Recent"))
        .collect()
}

// ---------------------------------------------------------------------------
// Planning (pure)
// ---------------------------------------------------------------------------

/// How a restore runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `--mailbox` globs on the archived name (levels joined by `/`); empty: all.
    pub mailboxes: Option<GlobSet>,
    /// Levels to put every restored mailbox under.
    pub prefix: Vec<String>,
    /// Only messages with INTERNALDATE >= this (seconds).
    pub since: Option<i64>,
    /// Only messages with INTERNALDATE < this (seconds).
    pub before: Option<i64>,
    pub dry_run: bool,
    pub jobs: usize,
}

/// One archived mailbox and where it goes.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxPlan {
    /// The archived mailbox (levels joined by `/`).
    pub source: String,
    /// The target mailbox, decoded, levels joined by the target's delimiter.
    pub target: String,
    /// The target mailbox as sent to the server (modified UTF-7).
    #[serde(skip)]
    pub raw: String,
    /// The target mailbox does not exist yet.
    pub create: bool,
    /// Archived messages chosen by the date filters.
    #[serde(skip)]
    pub messages: Vec<SourceMessage>,
    #[serde(skip)]
    pub keywords: Keywords,
}

/// An archived mailbox that cannot be restored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub source: String,
    pub reason: String,
}

/// Maps the chosen archived mailboxes to target names: `prefix` levels,
/// then the archived levels, joined by the target's `delimiter` and encoded
/// in modified UTF-7. A level that holds the delimiter would change the
/// hierarchy, so its mailbox is refused rather than silently split.
pub fn plan_mailboxes(
    sources: &[SourceMailbox],
    listed: &[ListedMailbox],
    delimiter: Option<char>,
    opts: &RestoreOptions,
) -> (Vec<MailboxPlan>, Vec<Refused>) {
    let mut plans = Vec::new();
    let mut refused = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for s in sources {
        let source = s.name();
        if let Some(globs) = &opts.mailboxes {
            if !globs.is_match(&source) {
                continue;
            }
        }
        let levels: Vec<&str> = opts
            .prefix
            .iter()
            .map(String::as_str)
            .chain(s.levels.iter().map(String::as_str))
            .collect();
        let target = match target_name(&levels, delimiter) {
            Ok(t) => t,
            Err(reason) => {
                refused.push(Refused { source, reason });
                continue;
            }
        };
        let raw = if target.eq_ignore_ascii_case("INBOX") {
            "INBOX".to_string()
        } else {
            mutf7::encode(&target)
        };
        let key = if raw.eq_ignore_ascii_case("INBOX") {
            "INBOX".to_string()
        } else {
            raw.clone()
        };
        if let Some(other) = seen.get(&key) {
            refused.push(Refused {
                source,
                reason: format!("maps to the same target mailbox `{target}` as `{other}`"),
            });
            continue;
        }
        seen.insert(key, source.clone());
        let exists = listed.iter().any(|m| {
            m.selectable
                && (m.raw == raw
                    || (m.raw.eq_ignore_ascii_case("INBOX") && raw.eq_ignore_ascii_case("INBOX")))
        });
        let messages = s
            .messages
            .iter()
            .filter(|m| opts.since.is_none_or(|t| m.secs >= t))
            .filter(|m| opts.before.is_none_or(|t| m.secs < t))
            .cloned()
            .collect();
        plans.push(MailboxPlan {
            source,
            target,
            raw,
            create: !exists,
            messages,
            keywords: s.keywords.clone(),
        });
    }
    // Parents before children for CREATE; then the biggest first, so
    // parallel workers finish together.
    plans.sort_by(|a, b| a.target.cmp(&b.target));
    (plans, refused)
}

fn target_name(levels: &[&str], delimiter: Option<char>) -> Result<String, String> {
    if levels.len() > 1 && delimiter.is_none() {
        return Err(format!(
            "the target server has no hierarchy, so nested name `{}` cannot be created",
            levels.join("/")
        ));
    }
    let d = delimiter.unwrap_or('/');
    for l in levels {
        if l.is_empty() {
            return Err("empty hierarchy level".into());
        }
        if l.contains(d) {
            return Err(format!(
                "level `{l}` contains the target's hierarchy delimiter `{d}`, which would split it into two levels\n\
                 hint: rename the mailbox in a copy of the archive, or restore to a server whose delimiter is not `{d}`"
            ));
        }
    }
    Ok(levels.join(&d.to_string()))
}

/// UIDs of target messages without Message-ID whose size and date equal an
/// archived message's: only their bytes can tell them apart.
pub fn target_uids_to_hash(source: &[SourceMessage], target: &[TargetMessage]) -> Vec<u32> {
    let keys: HashSet<(u64, i64)> = source.iter().map(|m| (m.size, m.secs)).collect();
    let mut uids: Vec<u32> = target
        .iter()
        .filter(|t| t.message_id.is_none() && keys.contains(&(t.size, t.secs)))
        .map(|t| t.uid)
        .collect();
    uids.sort_unstable();
    uids
}

/// Indices of `source` messages that the target does not hold, matching one
/// archived message to at most one target message: first by a recorded
/// APPENDUID whose UID still has the same date, then by size +
/// date + Message-ID, or size + date + SHA-256 for messages without one.
/// `message_id` and `hash` read the archived message and are only called
/// for messages whose size and date match something on the target.
pub fn missing_messages<E>(
    source: &[SourceMessage],
    target: &[TargetMessage],
    recorded: &HashMap<String, u32>,
    target_hashes: &HashMap<u32, String>,
    mut message_id: impl FnMut(&SourceMessage) -> Result<Option<String>, E>,
    mut hash: impl FnMut(&SourceMessage) -> Result<String, E>,
) -> Result<Vec<usize>, E> {
    let by_uid: HashMap<u32, usize> = target.iter().enumerate().map(|(i, t)| (t.uid, i)).collect();
    let mut used = vec![false; target.len()];
    let mut present = vec![false; source.len()];
    for (i, m) in source.iter().enumerate() {
        let Some(&j) = recorded.get(&m.base).and_then(|u| by_uid.get(u)) else {
            continue;
        };
        // A recorded UID under the same UIDVALIDITY is the message we
        // appended (UIDs are never reused). Its INTERNALDATE is ours too; its
        // size is not compared, since servers that rewrite MIME on APPEND
        // report another size, and a rerun would append it again.
        let t = &target[j];
        if !used[j] && t.secs == m.secs {
            used[j] = true;
            present[i] = true;
        }
    }
    let mut pool: HashMap<(u64, i64), Vec<usize>> = HashMap::new();
    for (j, t) in target.iter().enumerate() {
        if !used[j] {
            pool.entry((t.size, t.secs)).or_default().push(j);
        }
    }
    let mut missing = Vec::new();
    for (i, m) in source.iter().enumerate() {
        if present[i] {
            continue;
        }
        let candidates: Vec<usize> = pool
            .get(&(m.size, m.secs))
            .map(|c| c.iter().copied().filter(|&j| !used[j]).collect())
            .unwrap_or_default();
        if candidates.is_empty() {
            missing.push(i);
            continue;
        }
        let found = match message_id(m)? {
            Some(id) => candidates
                .into_iter()
                .find(|&j| target[j].message_id.as_deref() == Some(id.as_str())),
            None => {
                let no_id: Vec<usize> = candidates
                    .into_iter()
                    .filter(|&j| target[j].message_id.is_none())
                    .collect();
                if no_id.is_empty() {
                    None
                } else {
                    let h = hash(m)?;
                    no_id
                        .into_iter()
                        .find(|&j| target_hashes.get(&target[j].uid) == Some(&h))
                }
            }
        };
        match found {
            Some(j) => used[j] = true,
            None => missing.push(i),
        }
    }
    Ok(missing)
}

/// Splits messages to append into batches of at most `max_count` messages
/// and `max_bytes` (a larger message goes alone), keeping their order.
pub fn upload_batches(sizes: &[u64], max_bytes: u64, max_count: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && (bytes + s > max_bytes || i - start >= max_count) {
            out.push((start, i));
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push((start, sizes.len()));
    }
    out
}

// ---------------------------------------------------------------------------
// What was restored (outside the archive)
// ---------------------------------------------------------------------------

/// The record of APPENDUIDs for one (archive account, target account)
/// pair: one append-only file per target mailbox, lines
/// `<uidvalidity> <uid> <archived base name>`. It is a cache: losing it
/// costs a rerun some header reads, never a duplicate.
#[derive(Debug, Clone)]
pub struct RestoreState {
    dir: PathBuf,
}

impl RestoreState {
    /// `$XDG_STATE_HOME/imapbak/restore/<source>-><target>/` (or
    /// `~/.local/state/...`).
    pub fn for_accounts(source: &str, target: &str) -> Option<RestoreState> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                directories::BaseDirs::new().map(|b| b.home_dir().join(".local").join("state"))
            })?;
        Some(RestoreState {
            dir: base.join("imapbak").join("restore").join(format!(
                "{}->{}",
                safe(source),
                safe(target)
            )),
        })
    }

    pub fn at(dir: &Path) -> RestoreState {
        RestoreState {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, raw: &str) -> PathBuf {
        let h = crate::archive::sha256_hex(raw.as_bytes());
        self.dir.join(format!("{}.log", &h[..24]))
    }

    /// Creates the directory (0700) and takes its lock, so two restores of
    /// the same pair never append side by side.
    pub fn lock(&self) -> std::io::Result<Option<File>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Marks a run as started; true if the previous run never finished (was
    /// killed), so appends it had sent may still be landing on the server.
    pub fn begin_run(&self) -> bool {
        let marker = self.dir.join("unfinished");
        let was = marker.exists();
        if let Err(e) = fs::write(&marker, format!("{}\n", std::process::id())) {
            log::warn!("cannot write `{}`: {e}", marker.display());
        }
        was
    }

    /// Marks the run as finished: nothing of ours is in flight any more.
    pub fn end_run(&self) {
        let _ = fs::remove_file(self.dir.join("unfinished"));
    }

    /// Recorded base name -> UID for `raw` under `uidvalidity`.
    pub fn load(&self, raw: &str, uidvalidity: u32) -> HashMap<String, u32> {
        let Ok(text) = fs::read_to_string(self.file(raw)) else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut f = line.splitn(3, ' ');
            let (Some(uv), Some(uid), Some(base)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(uv), Ok(uid)) = (uv.parse::<u32>(), uid.parse::<u32>()) {
                if uv == uidvalidity {
                    out.insert(base.to_string(), uid);
                }
            }
        }
        out
    }

    /// Appends records; a failure only costs a rerun some work.
    pub fn record(&self, raw: &str, entries: &[(u32, u32, String)]) {
        if entries.is_empty() {
            return;
        }
        let mut text = String::new();
        for (uv, uid, base) in entries {
            text.push_str(&format!("{uv} {uid} {base}\n"));
        }
        let path = self.file(raw);
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = r {
            log::warn!(
                "cannot record restored messages in `{}`: {e}",
                path.display()
            );
        }
    }
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// What happened to one mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreMailboxReport {
    /// The archived mailbox (levels joined by `/`).
    pub source: String,
    /// The target mailbox (decoded).
    pub target: String,
    /// `restored`, `unchanged`, `planned` (dry run), `failed` or `skipped`.
    pub outcome: &'static str,
    /// The target mailbox was (or, on a dry run, would be) created.
    pub created: bool,
    /// Messages appended (or, on a dry run, that would be).
    pub appended: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Archived messages (after the filters) already on the target.
    pub present: u64,
    /// One line per failure, with the server's words.
    pub errors: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// The account whose archive was read.
    pub account: String,
    /// The account restored into.
    pub target: String,
    pub dry_run: bool,
    pub seconds: f64,
    /// Set when the whole run failed or stopped (connection, quota).
    pub error: Option<String>,
    pub mailboxes: Vec<RestoreMailboxReport>,
    pub created: u64,
    pub appended: u64,
    pub bytes: u64,
    pub present: u64,
    pub errors: u64,
    pub exit_code: i32,
    #[serde(skip)]
    pub code: Option<ExitCode>,
}

impl RestoreReport {
    /// Fills in the totals and the exit code.
    pub fn finish(&mut self) -> ExitCode {
        self.created = self.mailboxes.iter().filter(|m| m.created).count() as u64;
        self.appended = self.mailboxes.iter().map(|m| m.appended).sum();
        self.bytes = self.mailboxes.iter().map(|m| m.bytes).sum();
        self.present = self.mailboxes.iter().map(|m| m.present).sum();
        self.errors = self
            .mailboxes
            .iter()
            .map(|m| m.errors.len() as u64)
            .sum::<u64>()
            + self.error.is_some() as u64;
        let code = match self.code {
            Some(c) => c,
            None if self.errors > 0 => ExitCode::Partial,
            None => ExitCode::Success,
        };
        self.exit_code = code.code();
        code
    }
}

impl fmt::Display for RestoreMailboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created {
            writeln!(f, "create `{}`", self.target)?;
        }
        write!(
            f,
            "append {} message{} ({}) from `{}` to `{}`, {} already there",
            self.appended,
            if self.appended == 1 { "" } else { "s" },
            human_bytes(self.bytes),
            self.source,
            self.target,
            self.present
        )
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            for m in &self.mailboxes {
                if m.outcome == "planned" {
                    writeln!(f, "{m}")?;
                }
            }
        }
        let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "restore: {} {} ({}) into `{}` from the archive of `{}`, {} created, {} already there, {} in {:.1} s",
            if self.dry_run { "would append" } else { "appended" },
            plural(self.appended, "message"),
            human_bytes(self.bytes),
            self.target,
            self.account,
            plural(self.created, "mailbox").replace("mailboxs", "mailboxes"),
            self.present,
            plural(self.errors, "error"),
            self.seconds
        )
    }
}

// ---------------------------------------------------------------------------
// The executor
// ---------------------------------------------------------------------------

/// Attempts per mailbox when the connection drops or the server throttles.
const ATTEMPTS: u32 = 5;
/// Upper bounds of one APPEND batch (one MULTIAPPEND command where the
/// server offers it). Memory per job: about three batches.
const BATCH_BYTES: u64 = 8 * 1024 * 1024;
const BATCH_COUNT: usize = 256;

/// Why a mailbox attempt stopped.
#[derive(Debug)]
enum Stop {
    /// Connection lost or throttled: reconnect, back off, retry.
    Retry(String),
    /// The target is full: the whole run stops.
    Quota(String),
    /// This mailbox failed; go on with the next.
    Failed(String),
}

struct Ctx {
    opts: RestoreOptions,
    progress: Arc<dyn Progress>,
    state: Option<RestoreState>,
    /// Set when the target is over quota: every worker stops.
    stop: AtomicBool,
    quota: Mutex<Option<String>>,
    target_name: String,
    /// The previous run was killed: let the server finish what it had
    /// received before fingerprinting.
    settle_first: bool,
}

/// True for a refusal that says the target is full.
pub fn is_quota(text: &str) -> bool {
    text.contains("[OVERQUOTA]") || text.to_ascii_lowercase().contains("quota")
}

/// True for a refusal that asks us to slow down.
pub fn is_throttle(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("[limit]")
        || t.contains("[unavailable]")
        || t.contains("throttl")
        || t.contains("rate limit")
        || t.contains("too many")
        || t.contains("try again later")
}

/// Restores the archive of `source_name` (already read into `sources`)
/// into the server `connect` reaches. Never panics on server input; every
/// failure ends up in the report with its scope.
pub async fn restore_account<R, F, Fut>(
    source_name: &str,
    target_name: &str,
    sources: Vec<SourceMailbox>,
    state: Option<RestoreState>,
    opts: RestoreOptions,
    progress: Arc<dyn Progress>,
    connect: F,
) -> RestoreReport
where
    R: RestoreTarget + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ImapError>> + Send,
{
    let mut report = RestoreReport {
        account: source_name.to_string(),
        target: target_name.to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let mut first = match connect().await {
        Ok(c) => c,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(format!("cannot connect to `{target_name}`: {e}"));
            return report;
        }
    };
    let listing = async {
        let listed = first.list().await?;
        let delim = first.delimiter().await?;
        Ok::<_, ImapError>((listed, delim))
    };
    let (listed, delimiter) = match listing.await {
        Ok(x) => x,
        Err(e) => {
            report.code = Some(ExitCode::Connection);
            report.error = Some(format!("cannot list the mailboxes of `{target_name}`: {e}"));
            return report;
        }
    };
    let (plans, refused) = plan_mailboxes(&sources, &listed, delimiter, &opts);
    for r in refused {
        report.mailboxes.push(RestoreMailboxReport {
            source: r.source,
            outcome: "skipped",
            errors: vec![format!("not restored: {}", r.reason)],
            ..Default::default()
        });
    }

    // Mailboxes are created one by one, parents first, before any append.
    let mut ready = Vec::new();
    for p in plans {
        if p.create && !opts.dry_run {
            if let Err(e) = first.create(&p.raw).await {
                let lost = e.is_connection_level();
                report.mailboxes.push(RestoreMailboxReport {
                    source: p.source.clone(),
                    target: p.target.clone(),
                    outcome: "failed",
                    errors: vec![format!(
                        "the target refused to create `{}`: {e}\nhint: pick another name with --prefix",
                        p.target
                    )],
                    ..Default::default()
                });
                if lost {
                    report.code = Some(ExitCode::Connection);
                    report.error = Some(format!("connection to `{target_name}` lost: {e}"));
                    return report;
                }
                continue;
            }
        }
        ready.push(p);
    }
    ready.sort_by_key(|p| std::cmp::Reverse(p.messages.len()));

    let jobs = opts.jobs.clamp(1, ready.len().max(1));
    let settle_first = match &state {
        Some(s) if !opts.dry_run => s.begin_run(),
        _ => false,
    };
    if settle_first {
        log::warn!(
            "the previous restore into `{target_name}` did not finish; waiting for the server to settle before checking what it holds"
        );
    }
    let ctx = Arc::new(Ctx {
        settle_first,
        opts,
        progress,
        state,
        stop: AtomicBool::new(false),
        quota: Mutex::new(None),
        target_name: target_name.to_string(),
    });
    let queue = Arc::new(Mutex::new(VecDeque::from(ready)));
    let connect = Arc::new(connect);
    let results = crate::sync::pool::run(jobs, first, |conn| {
        let (ctx, queue, connect) = (ctx.clone(), queue.clone(), connect.clone());
        async move { worker(conn, &ctx, &queue, &*connect).await }
    })
    .await;
    for w in results {
        match w {
            Ok(reports) => report.mailboxes.extend(reports),
            Err(e) => report.error = Some(format!("internal error: {e}")),
        }
    }
    if let Some(s) = &ctx.state {
        if !ctx.opts.dry_run {
            s.end_run();
        }
    }
    let quota = ctx.quota.lock().expect("quota lock").clone();
    for p in queue.lock().expect("queue lock").drain(..) {
        let why = if quota.is_some() {
            "not restored: the target is over quota"
        } else {
            "not restored: no connection to the server"
        };
        report.mailboxes.push(RestoreMailboxReport {
            source: p.source,
            target: p.target,
            created: p.create,
            outcome: "skipped",
            errors: vec![why.into()],
            ..Default::default()
        });
    }
    if let Some(text) = quota {
        report.code = Some(ExitCode::QuotaFull);
        report.error = Some(format!(
            "the target `{target_name}` is over quota; restore stopped: {text}\n\
             hint: free space or raise the quota on the target, then run the same command again \
             (messages already restored are skipped)"
        ));
    }
    report.mailboxes.sort_by(|a, b| a.source.cmp(&b.source));
    report
}

async fn worker<R, F, Fut>(
    mut conn: Option<R>,
    ctx: &Ctx,
    queue: &Mutex<VecDeque<MailboxPlan>>,
    connect: &F,
) -> Vec<RestoreMailboxReport>
where
    R: RestoreTarget,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<R, ImapError>>,
{
    let mut reports = Vec::new();
    'plans: loop {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(plan) = queue.lock().expect("queue lock").pop_front() else {
            break;
        };
        let mut rep = RestoreMailboxReport {
            source: plan.source.clone(),
            target: plan.target.clone(),
            created: plan.create,
            ..Default::default()
        };
        let mut attempt = 0;
        let mut settle = ctx.settle_first;
        loop {
            attempt += 1;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect().await {
                    Ok(c) => conn.insert(c),
                    Err(e) if attempt < ATTEMPTS => {
                        log::warn!("cannot reconnect to `{}`: {e}; retrying", ctx.target_name);
                        backoff(attempt).await;
                        continue;
                    }
                    Err(e) => {
                        rep.outcome = "failed";
                        rep.errors
                            .push(format!("not restored: cannot connect to the server: {e}"));
                        reports.push(rep);
                        continue 'plans;
                    }
                },
            };
            rep.errors.clear();
            match restore_mailbox(c, &plan, ctx, &mut rep, settle).await {
                Ok(()) => break,
                Err(Stop::Retry(why)) if attempt < ATTEMPTS => {
                    // Appends sent on the lost connection may still land.
                    settle = true;
                    log::warn!(
                        "`{}`: {why}; retrying (attempt {} of {ATTEMPTS})",
                        plan.target,
                        attempt + 1
                    );
                    conn = None;
                    backoff(attempt).await;
                }
                Err(Stop::Retry(why)) => {
                    rep.outcome = "failed";
                    rep.errors
                        .push(format!("gave up after {ATTEMPTS} attempts: {why}"));
                    conn = None;
                    break;
                }
                Err(Stop::Quota(text)) => {
                    rep.outcome = "failed";
                    ctx.stop.store(true, Ordering::SeqCst);
                    ctx.quota
                        .lock()
                        .expect("quota lock")
                        .get_or_insert(text.clone());
                    rep.errors.push(format!("over quota: {text}"));
                    break;
                }
                Err(Stop::Failed(why)) => {
                    rep.outcome = "failed";
                    rep.errors.push(why);
                    break;
                }
            }
        }
        reports.push(rep);
    }
    if let Some(c) = conn {
        c.logout().await;
    }
    reports
}

async fn backoff(attempt: u32) {
    let secs = 1u64 << attempt.min(5).saturating_sub(1);
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

fn classify(e: ImapError) -> Stop {
    match e {
        ImapError::No { ref text, .. } if is_quota(text) => Stop::Quota(text.clone()),
        ImapError::No { ref text, .. } | ImapError::Bye(ref text) if is_throttle(text) => {
            Stop::Retry(e.to_string())
        }
        e if e.is_connection_level() => Stop::Retry(e.to_string()),
        e => Stop::Failed(e.to_string()),
    }
}

/// One attempt at one mailbox; what was appended before a failure stays in
/// `rep` (and on the server, where the next attempt finds it).
async fn restore_mailbox<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
    settle: bool,
) -> Result<(), Stop> {
    let dry = ctx.opts.dry_run;
    if settle && !(plan.create && dry) {
        settle_mailbox(conn, &plan.raw).await.map_err(classify)?;
    }
    let (uv, target) = if plan.create && dry {
        (0, Vec::new())
    } else {
        conn.fingerprints(&plan.raw).await.map_err(classify)?
    };
    let recorded = match &ctx.state {
        Some(s) if uv != 0 => s.load(&plan.raw, uv),
        _ => HashMap::new(),
    };
    let to_hash = target_uids_to_hash(&plan.messages, &target);
    let hashes: HashMap<u32, String> = conn
        .body_hashes(&to_hash)
        .await
        .map_err(classify)?
        .into_iter()
        .collect();
    let missing = tokio::task::block_in_place(|| {
        missing_messages(
            &plan.messages,
            &target,
            &recorded,
            &hashes,
            |m| read_header(&m.path).map(|h| message_id_of(&h)),
            |m| hash_file(&m.path).map(|(_, h)| h),
        )
    })
    .map_err(|e| Stop::Failed(e.to_string()))?;
    let todo: Vec<&SourceMessage> = missing.iter().map(|&i| &plan.messages[i]).collect();
    // Messages appended by an earlier attempt of this run are on the target now.
    rep.present = ((plan.messages.len() - todo.len()) as u64).saturating_sub(rep.appended);
    if dry {
        rep.outcome = "planned";
        rep.appended = todo.len() as u64;
        rep.bytes = todo.iter().map(|m| m.size).sum();
        return Ok(());
    }
    if todo.is_empty() {
        if rep.outcome.is_empty() {
            rep.outcome = if rep.appended > 0 || plan.create {
                "restored"
            } else {
                "unchanged"
            };
        }
        return Ok(());
    }
    rep.outcome = "restored";
    let total: u64 = todo.iter().map(|m| m.size).sum();
    ctx.progress
        .mailbox_started(&plan.target, todo.len() as u64, total);
    let result = append_all(conn, plan, &todo, ctx, rep).await;
    ctx.progress.mailbox_finished(&plan.target);
    if !rep.errors.is_empty() && result.is_ok() {
        rep.outcome = "failed";
    }
    result
}

/// How long the mailbox must stay unchanged, and the most we wait.
const SETTLE_QUIET: Duration = Duration::from_secs(1);
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// Waits until `raw` stops growing. A server keeps executing the APPENDs a
/// killed or disconnected client had fully sent; fingerprinting before they
/// land would append those messages a second time.
async fn settle_mailbox<R: RestoreTarget>(conn: &mut R, raw: &str) -> Result<(), ImapError> {
    let start = std::time::Instant::now();
    let mut last = conn.examine(raw).await?;
    loop {
        tokio::time::sleep(SETTLE_QUIET).await;
        let now = conn.examine(raw).await?;
        if (now.uidnext, now.exists) == (last.uidnext, last.exists) {
            return Ok(());
        }
        if start.elapsed() > SETTLE_MAX {
            log::warn!("`{raw}` is still changing after {SETTLE_MAX:?}; going on");
            return Ok(());
        }
        last = now;
    }
}

/// Reads messages on a thread (bounded: one batch ahead) and appends them
/// batch by batch, recording each APPENDUID.
async fn append_all<R: RestoreTarget>(
    conn: &mut R,
    plan: &MailboxPlan,
    todo: &[&SourceMessage],
    ctx: &Ctx,
    rep: &mut RestoreMailboxReport,
) -> Result<(), Stop> {
    let sizes: Vec<u64> = todo.iter().map(|m| m.size).collect();
    let batches = upload_batches(&sizes, BATCH_BYTES, BATCH_COUNT);
    type Batch = Vec<(SourceMessage, Result<Upload, String>)>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(1);
    let owned: Vec<SourceMessage> = todo.iter().map(|m| (*m).clone()).collect();
    let keywords = plan.keywords.clone();
    let reader = std::thread::spawn(move || {
        for (a, b) in batches {
            let batch: Batch = owned[a..b]
                .iter()
                .map(|m| {
                    let up = read_message(&m.path)
                        .map(|body| Upload {
                            flags: upload_flags(&m.letters, &keywords),
                            internaldate: m.secs,
                            body,
                        })
                        .map_err(|e| e.to_string());
                    (m.clone(), up)
                })
                .collect();
            if tx.blocking_send(batch).is_err() {
                return;
            }
        }
    });
    let mut outcome = Ok(());
    while let Some(batch) = rx.recv().await {
        let mut uploads = Vec::with_capacity(batch.len());
        let mut sources = Vec::with_capacity(batch.len());
        for (m, up) in batch {
            match up {
                Ok(u) => {
                    uploads.push(u);
                    sources.push(m);
                }
                Err(e) => rep
                    .errors
                    .push(format!("cannot read archived message: {e}")),
            }
        }
        let mut records = Vec::new();
        let mut stop: Option<Stop> = None;
        let r = conn
            .append(&plan.raw, &uploads, |i, result| match result {
                Ok(uid) => {
                    let m = &sources[i];
                    rep.appended += 1;
                    rep.bytes += m.size;
                    ctx.progress.message_written(&plan.target, m.size);
                    if let Some((uv, uid)) = uid {
                        records.push((uv, uid, m.base.clone()));
                    }
                }
                Err(e) => match classify(e) {
                    Stop::Failed(text) => rep.errors.push(format!(
                        "the server rejected `{}`: {text}",
                        sources[i].path.display()
                    )),
                    s => {
                        stop.get_or_insert(s);
                    }
                },
            })
            .await;
        if let Some(state) = &ctx.state {
            state.record(&plan.raw, &records);
        }
        if let Err(e) = r {
            outcome = Err(classify(e));
            break;
        }
        if let Some(s) = stop {
            outcome = Err(s);
            break;
        }
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
    }
    drop(rx);
    let _ = tokio::task::block_in_place(|| reader.join());
    outcome
}

impl crate::report::Summary for RestoreReport {
    /// One `error:` line per failure, for stderr.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("error: restore of `{}`: {e}", self.account));
        }
        for m in &self.mailboxes {
            for e in &m.errors {
                out.push(format!("error: mailbox `{}`: {e}", m.source));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(base: &str, size: u64, secs: i64) -> SourceMessage {
        SourceMessage {
            path: PathBuf::from(base),
            base: base.into(),
            secs,
            size,
            letters: String::new(),
        }
    }

    fn tgt(uid: u32, size: u64, secs: i64, id: Option<&str>) -> TargetMessage {
        TargetMessage {
            uid,
            size,
            secs,
            message_id: id.map(str::to_string),
        }
    }

    fn listed(name: &str) -> ListedMailbox {
        ListedMailbox {
            raw: mutf7::encode(name),
            name: name.into(),
            delimiter: Some('/'),
            selectable: true,
            status: None,
        }
    }

    fn mailbox(levels: &[&str], n: usize) -> SourceMailbox {
        SourceMailbox {
            dir: String::new(),
            levels: levels.iter().map(|s| s.to_string()).collect(),
            messages: (0..n)
                .map(|i| src(&format!("m{i}"), 100, 1_700_000_000 + i as i64 * 86_400))
                .collect(),
            keywords: Keywords::default(),
        }
    }

    type Ids = HashMap<String, Option<String>>;

    fn run_missing(
        source: &[SourceMessage],
        target: &[TargetMessage],
        recorded: &HashMap<String, u32>,
        hashes: &HashMap<u32, String>,
        ids: &Ids,
        reads: &mut Vec<String>,
    ) -> Vec<usize> {
        let reads = std::cell::RefCell::new(reads);
        missing_messages::<()>(
            source,
            target,
            recorded,
            hashes,
            |m| {
                reads.borrow_mut().push(m.base.clone());
                Ok(ids.get(&m.base).cloned().flatten())
            },
            |m| Ok(format!("hash-{}", m.base)),
        )
        .unwrap()
    }

    #[test]
    fn message_id_is_unfolded_and_case_insensitive() {
        let h = b"Subject: x\r\nmessage-ID:\r\n  <a@b>\r\nTo: y\r\n\r\nMessage-ID: <no>\r\n";
        assert_eq!(message_id_of(h).as_deref(), Some("<a@b>"));
        assert_eq!(message_id_of(b"Subject: x\r\n\r\n"), None);
        assert_eq!(message_id_of(b"Message-ID: \r\n\r\n"), None);
    }

    #[test]
    fn nothing_on_the_target_means_everything_is_appended_without_reading_headers() {
        let source = vec![src("a", 10, 1), src("b", 20, 2)];
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &[],
            &HashMap::new(),
            &HashMap::new(),
            &Ids::new(),
            &mut reads,
        );
        assert_eq!(missing, [0, 1]);
        assert!(reads.is_empty());
    }

    #[test]
    fn second_restore_finds_every_message_by_message_id() {
        let source = vec![src("a", 10, 1), src("b", 20, 2)];
        let target = vec![tgt(1, 10, 1, Some("<a>")), tgt(2, 20, 2, Some("<b>"))];
        let ids: Ids = [("a", "<a>"), ("b", "<b>")]
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &HashMap::new(),
            &HashMap::new(),
            &ids,
            &mut reads,
        );
        assert!(missing.is_empty());
    }

    #[test]
    fn recorded_appenduid_spares_the_header_read() {
        let source = vec![src("a", 10, 1)];
        let target = vec![tgt(7, 10, 1, Some("<a>"))];
        let recorded: HashMap<String, u32> = [("a".to_string(), 7)].into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &recorded,
            &HashMap::new(),
            &Ids::new(),
            &mut reads,
        );
        assert!(missing.is_empty());
        assert!(reads.is_empty());
    }

    #[test]
    fn a_recorded_uid_whose_size_the_server_changed_is_still_present() {
        let source = vec![src("a", 10, 1)];
        let target = vec![tgt(7, 12, 1, Some("<a>"))];
        let recorded: HashMap<String, u32> = [("a".to_string(), 7)].into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &recorded,
            &HashMap::new(),
            &Ids::new(),
            &mut reads,
        );
        assert!(missing.is_empty());
    }

    #[test]
    fn a_record_whose_uid_now_holds_something_else_is_not_trusted() {
        let source = vec![src("a", 10, 1)];
        let target = vec![tgt(7, 99, 5, Some("<other>"))];
        let recorded: HashMap<String, u32> = [("a".to_string(), 7)].into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &recorded,
            &HashMap::new(),
            &Ids::new(),
            &mut reads,
        );
        assert_eq!(missing, [0]);
    }

    #[test]
    fn same_size_and_date_but_other_message_id_is_appended() {
        let source = vec![src("a", 10, 1)];
        let target = vec![tgt(1, 10, 1, Some("<x>"))];
        let ids: Ids = [("a".to_string(), Some("<a>".to_string()))].into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &HashMap::new(),
            &HashMap::new(),
            &ids,
            &mut reads,
        );
        assert_eq!(missing, [0]);
    }

    #[test]
    fn duplicates_in_the_archive_stay_duplicates() {
        // Two identical archived copies, one already on the target.
        let source = vec![src("a", 10, 1), src("a2", 10, 1)];
        let target = vec![tgt(1, 10, 1, Some("<a>"))];
        let ids: Ids = [
            ("a".to_string(), Some("<a>".to_string())),
            ("a2".to_string(), Some("<a>".to_string())),
        ]
        .into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &HashMap::new(),
            &HashMap::new(),
            &ids,
            &mut reads,
        );
        assert_eq!(missing, [1]);
    }

    #[test]
    fn messages_without_message_id_are_matched_by_hash() {
        let source = vec![src("a", 10, 1), src("b", 10, 1)];
        let target = vec![tgt(1, 10, 1, None), tgt(2, 10, 1, Some("<z>"))];
        assert_eq!(target_uids_to_hash(&source, &target), [1]);
        let hashes: HashMap<u32, String> = [(1, "hash-b".to_string())].into();
        let mut reads = Vec::new();
        let missing = run_missing(
            &source,
            &target,
            &HashMap::new(),
            &hashes,
            &Ids::new(),
            &mut reads,
        );
        assert_eq!(missing, [0]);
    }

    #[test]
    fn prefix_and_delimiter_shape_the_target_name() {
        let sources = vec![mailbox(&["INBOX"], 1), mailbox(&["Archive", "2024"], 1)];
        let opts = RestoreOptions {
            prefix: vec!["Restored".into()],
            ..Default::default()
        };
        let (plans, refused) = plan_mailboxes(&sources, &[listed("INBOX")], Some('.'), &opts);
        assert!(refused.is_empty());
        let names: Vec<(&str, bool)> = plans
            .iter()
            .map(|p| (p.target.as_str(), p.create))
            .collect();
        assert_eq!(
            names,
            [("Restored.Archive.2024", true), ("Restored.INBOX", true)]
        );
    }

    #[test]
    fn inbox_maps_to_the_existing_inbox_and_names_are_mutf7() {
        let sources = vec![mailbox(&["INBOX"], 1), mailbox(&["Entwürfe", "Ä&B"], 1)];
        let (plans, _) = plan_mailboxes(
            &sources,
            &[listed("INBOX")],
            Some('/'),
            &RestoreOptions::default(),
        );
        let inbox = plans.iter().find(|p| p.source == "INBOX").unwrap();
        assert!(!inbox.create);
        assert_eq!(inbox.raw, "INBOX");
        let nested = plans.iter().find(|p| p.source != "INBOX").unwrap();
        assert_eq!(nested.raw, "Entw&APw-rfe/&AMQ-&-B");
        assert!(nested.create);
    }

    #[test]
    fn a_level_holding_the_target_delimiter_is_refused_not_split() {
        let sources = vec![mailbox(&["v1.2"], 1)];
        let (plans, refused) = plan_mailboxes(&sources, &[], Some('.'), &RestoreOptions::default());
        assert!(plans.is_empty());
        assert!(refused[0].reason.contains("`v1.2`"), "{:?}", refused);
    }

    #[test]
    fn mailbox_globs_and_dates_filter() {
        let sources = vec![mailbox(&["Archive", "2024"], 5), mailbox(&["Other"], 5)];
        let mut b = globset::GlobSetBuilder::new();
        b.add(globset::Glob::new("Archive/*").unwrap());
        let opts = RestoreOptions {
            mailboxes: Some(b.build().unwrap()),
            since: Some(1_700_000_000 + 86_400),
            before: Some(1_700_000_000 + 3 * 86_400),
            ..Default::default()
        };
        let (plans, _) = plan_mailboxes(&sources, &[], Some('/'), &opts);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].source, "Archive/2024");
        let bases: Vec<&str> = plans[0].messages.iter().map(|m| m.base.as_str()).collect();
        assert_eq!(bases, ["m1", "m2"]);
    }

    #[test]
    fn deleted_is_never_uploaded() {
        let flags = upload_flags("DFRST", &Keywords::default());
        assert_eq!(flags, ["\\Draft", "\\Flagged", "\\Answered", "\\Seen"]);
    }

    #[test]
    fn batches_respect_count_and_bytes() {
        assert_eq!(
            upload_batches(&[5, 5, 5, 20, 1], 10, 10),
            [(0, 2), (2, 3), (3, 4), (4, 5)]
        );
        assert_eq!(upload_batches(&[1, 1, 1], 100, 2), [(0, 2), (2, 3)]);
        assert!(upload_batches(&[], 1, 1).is_empty());
    }

    #[test]
    fn quota_and_throttle_texts_are_recognised() {
        assert!(is_quota(
            "[OVERQUOTA] Quota exceeded (mailbox for user is full)"
        ));
        assert!(is_quota("Mailbox quota exceeded"));
        assert!(!is_quota("[TRYCREATE] Mailbox doesn't exist"));
        assert!(is_throttle("[LIMIT] Too many commands, slow down"));
        assert!(!is_throttle("Message too large"));
    }

    #[test]
    fn state_records_round_trip_per_uidvalidity() {
        let dir = tempfile::tempdir().unwrap();
        let st = RestoreState::at(dir.path());
        assert!(st.lock().unwrap().is_some());
        st.record("INBOX", &[(5, 1, "a".into()), (6, 2, "b".into())]);
        assert_eq!(st.load("INBOX", 5), [("a".to_string(), 1)].into());
        assert!(st.load("Other", 5).is_empty());
    }
}
