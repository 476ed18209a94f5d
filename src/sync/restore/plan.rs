//! Restore's planning, pure: the archived mailboxes, the target's listing
//! and fingerprints and the options in, what to create and append out.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;

use globset::GlobSet;
use serde::Serialize;

use super::TargetMessage;
use crate::archive::{letters_to_flags, Keywords};
use crate::mutf7;
use crate::report::human_bytes;
use crate::sync::remote::ListedMailbox;

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

/// IMAP flags to upload for Maildir letters: everything but `\Deleted`.
pub fn upload_flags(letters: &str, keywords: &Keywords) -> Vec<String> {
    letters_to_flags(letters, keywords)
        .into_iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Deleted") && !f.eq_ignore_ascii_case("\\Recent"))
        .collect()
}

/// How a restore runs.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `--mailbox` globs on the archived name (levels joined by `/`); empty: all.
    pub mailboxes: Option<GlobSet>,
    /// Levels to put every restored mailbox under.
    pub prefix: Vec<String>,
    /// The target's personal namespace prefix (`INBOX.` on Courier), put
    /// before every name but INBOX's; filled in from the target's NAMESPACE.
    pub namespace_prefix: String,
    /// Only messages with INTERNALDATE >= this (seconds).
    pub since: Option<i64>,
    /// Only messages with INTERNALDATE < this (seconds).
    pub before: Option<i64>,
    pub dry_run: bool,
    pub jobs: usize,
    /// The archive was pulled in Gmail mode: its All Mail folder and labels.
    pub gmail_archive: Option<crate::sync::gmail::restore::GmailArchive>,
    /// The target account is in Gmail mode (`gmail` key); the server must
    /// also announce X-GM-EXT-1.
    pub gmail_target: bool,
    /// Into a server that is not Gmail: leave out All Mail's copy of
    /// messages that carry another label.
    pub skip_all_mail_duplicates: bool,
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

/// One line a mailbox: where it goes and what the filters chose. What would
/// actually be appended depends on what the target holds, so `--dry-run`
/// prints the run's [`RestoreMailboxReport`](super::RestoreMailboxReport).
impl fmt::Display for MailboxPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.messages.len();
        write!(
            f,
            "restore `{}` to `{}`{}: {n} archived message{} ({})",
            self.source,
            self.target,
            if self.create { " (new)" } else { "" },
            if n == 1 { "" } else { "s" },
            human_bytes(self.messages.iter().map(|m| m.size).sum())
        )
    }
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
            Ok(t) if t.eq_ignore_ascii_case("INBOX") => t,
            Ok(t) => format!("{}{t}", opts.namespace_prefix),
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
    message_id: impl FnMut(&SourceMessage) -> Result<Option<String>, E>,
    hash: impl FnMut(&SourceMessage) -> Result<String, E>,
) -> Result<Vec<usize>, E> {
    match_messages(source, target, recorded, target_hashes, message_id, hash).map(|(m, _)| m)
}

/// [`missing_messages`], and for each source message found on the target
/// (by index) the target UID it was matched to.
pub fn match_messages<E>(
    source: &[SourceMessage],
    target: &[TargetMessage],
    recorded: &HashMap<String, u32>,
    target_hashes: &HashMap<u32, String>,
    mut message_id: impl FnMut(&SourceMessage) -> Result<Option<String>, E>,
    mut hash: impl FnMut(&SourceMessage) -> Result<String, E>,
) -> Result<(Vec<usize>, HashMap<usize, u32>), E> {
    let mut found_at: HashMap<usize, u32> = HashMap::new();
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
            found_at.insert(i, t.uid);
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
            Some(j) => {
                used[j] = true;
                found_at.insert(i, target[j].uid);
            }
            None => missing.push(i),
        }
    }
    Ok((missing, found_at))
}

/// What tells one message from another on both sides: size, INTERNALDATE
/// and Message-ID, or the SHA-256 of the bytes when there is no Message-ID
/// (the same identity [`missing_messages`] matches by).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub size: u64,
    pub secs: i64,
    /// `id:<Message-ID>` or `sha256:<hex>`.
    pub ident: String,
}

impl MessageKey {
    pub fn new(
        size: u64,
        secs: i64,
        message_id: Option<&str>,
        sha256: Option<&str>,
    ) -> Option<MessageKey> {
        let ident = match (message_id, sha256) {
            (Some(id), _) => format!("id:{id}"),
            (None, Some(h)) => format!("sha256:{h}"),
            (None, None) => return None,
        };
        Some(MessageKey { size, secs, ident })
    }
}

/// One batch of APPENDs whose answer was never read (a killed run, a lost
/// connection): the keys of the archived messages it carried, and the
/// mailbox's UIDNEXT before it was sent, below which none of its copies can
/// be.
#[derive(Debug, Clone)]
pub struct Unanswered {
    pub uidnext: u32,
    pub keys: HashSet<MessageKey>,
}

/// The copies to remove so that each archived message is on the target
/// as many times as the archive holds it, and never more. Only copies that
/// restore itself appended are candidates: a UID it was told by APPENDUID
/// (`ours`, from this run or a recorded earlier one), or a UID at or above
/// an [`Unanswered`] batch's UIDNEXT whose key is one that batch carried
/// (a killed run's APPEND landing after the rerun looked). A key with more
/// copies than the archive holds loses its surplus, APPENDUID copies first
/// (certainly ours), newest first; copies that are not candidates are never
/// touched, so a duplicate someone else made stays.
///
/// `archive` holds the keys of the archived messages of the mailbox (only
/// the ones that matter need be there: those sharing a key with a
/// candidate); `target` the keys of the target's messages by UID (`None`:
/// not comparable, never removed).
pub fn surplus_copies(
    archive: &[MessageKey],
    target: &[(u32, Option<MessageKey>)],
    ours: &HashSet<u32>,
    unanswered: &[Unanswered],
) -> Vec<u32> {
    let mut wanted: HashMap<&MessageKey, usize> = HashMap::new();
    for k in archive {
        *wanted.entry(k).or_default() += 1;
    }
    let mut copies: HashMap<&MessageKey, Vec<u32>> = HashMap::new();
    for (uid, k) in target {
        if let Some(k) = k {
            copies.entry(k).or_default().push(*uid);
        }
    }
    let mut out = Vec::new();
    for (key, uids) in copies {
        // A key the archive does not hold is not restore's business.
        let Some(&want) = wanted.get(key) else {
            continue;
        };
        if uids.len() <= want {
            continue;
        }
        let landed = |u: u32| {
            unanswered
                .iter()
                .any(|b| u >= b.uidnext && b.keys.contains(key))
        };
        let mut sure: Vec<u32> = uids.iter().copied().filter(|u| ours.contains(u)).collect();
        let mut late: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|&u| !ours.contains(&u) && landed(u))
            .collect();
        sure.sort_unstable_by(|a, b| b.cmp(a));
        late.sort_unstable_by(|a, b| b.cmp(a));
        out.extend(sure.into_iter().chain(late).take(uids.len() - want));
    }
    out.sort_unstable();
    out
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
            special_use: None,
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
    fn a_plan_reads_as_one_line_per_mailbox() {
        let sources = vec![mailbox(&["Archive", "2024"], 2), mailbox(&["INBOX"], 1)];
        let (plans, _) = plan_mailboxes(
            &sources,
            &[listed("INBOX")],
            Some('/'),
            &RestoreOptions::default(),
        );
        let lines: Vec<String> = plans.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines,
            [
                "restore `Archive/2024` to `Archive/2024` (new): 2 archived messages (200 B)",
                "restore `INBOX` to `INBOX`: 1 archived message (100 B)",
            ]
        );
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

    fn key(n: u64) -> MessageKey {
        MessageKey::new(n, 1, Some(&format!("<{n}>")), None).unwrap()
    }

    fn late(uidnext: u32, keys: &[u64]) -> Unanswered {
        Unanswered {
            uidnext,
            keys: keys.iter().map(|&k| key(k)).collect(),
        }
    }

    #[test]
    fn a_killed_runs_late_copies_and_our_own_leave_one_copy() {
        // The dead run sent 1 and 2 (UIDNEXT was 1) and never heard back;
        // the rerun saw nothing, appended both (UIDs 1, 2), then the dead
        // run's copies landed (3, 4).
        let archive = [key(1), key(2)];
        let target = [
            (1, Some(key(1))),
            (2, Some(key(2))),
            (3, Some(key(1))),
            (4, Some(key(2))),
        ];
        let ours: HashSet<u32> = [1, 2].into();
        let remove = surplus_copies(&archive, &target, &ours, &[late(1, &[1, 2])]);
        assert_eq!(remove, [1, 2], "our own APPENDUID copies go first");
    }

    #[test]
    fn late_copies_are_removed_even_when_the_rerun_got_no_appenduid() {
        let archive = [key(1)];
        let target = [(5, Some(key(1))), (9, Some(key(1)))];
        let remove = surplus_copies(&archive, &target, &HashSet::new(), &[late(5, &[1])]);
        assert_eq!(remove, [9], "one copy stays, the newest goes");
    }

    #[test]
    fn a_duplicate_someone_else_made_is_never_removed() {
        let archive = [key(1), key(2)];
        // UID 2 existed before the dead batch (UIDNEXT 5); UID 7 carries a
        // key the batch did not carry; neither is ours.
        let target = [
            (2, Some(key(1))),
            (6, Some(key(1))),
            (7, Some(key(2))),
            (8, Some(key(2))),
        ];
        let remove = surplus_copies(&archive, &target, &HashSet::new(), &[late(5, &[1])]);
        assert_eq!(remove, [6]);
        // Without any unanswered batch or APPENDUID nothing is a candidate.
        assert!(surplus_copies(&archive, &target, &HashSet::new(), &[]).is_empty());
    }

    #[test]
    fn duplicates_the_archive_holds_are_kept_and_unknown_keys_ignored() {
        let archive = [key(1), key(1)];
        let target = [
            (1, Some(key(1))),
            (2, Some(key(1))),
            (3, None),
            (4, Some(key(3))),
        ];
        let ours: HashSet<u32> = [1, 2, 3, 4].into();
        assert!(surplus_copies(&archive, &target, &ours, &[late(1, &[1, 3])]).is_empty());
        let target = [(1, Some(key(1))), (2, Some(key(1))), (3, Some(key(1)))];
        assert_eq!(surplus_copies(&archive, &target, &ours, &[]), [3]);
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
}
