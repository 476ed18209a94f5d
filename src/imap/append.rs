//! What `restore` needs from a server that async-imap lacks: the personal
//! namespace's delimiter, CREATE that tolerates an existing mailbox, a cheap
//! fingerprint of every message (UID, size, INTERNALDATE, Message-ID), body
//! hashes for the few messages without Message-ID, and APPEND with flags and
//! INTERNALDATE, pipelined (LITERAL+ when offered, else waiting for each
//! continuation) and returning APPENDUID.

use std::collections::HashMap;

use async_imap::imap_proto::rfc4315::UidSetMember;
use async_imap::imap_proto::{
    AttributeValue, MailboxDatum, Outcome, RequestId, Response, ResponseCode, SectionPath, Status,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::session::{async_to_imap, done_status};
use super::{quote, uid_set, Connection, ImapError};
use crate::sync::remote::Remote;
use crate::sync::remote::{RemoteError, Selected};
use crate::sync::restore::{message_id_of, RestoreTarget, TargetMessage, Upload};

/// Appends sent but not answered yet; bounded so the server's replies never
/// pile up unread while we write.
const WINDOW: usize = 32;

/// One reply seen during a MULTIAPPEND.
enum Multi {
    Continue,
    /// The command's tagged answer: APPENDUID's UIDVALIDITY and UIDs.
    Done(Result<Option<(u32, Vec<u32>)>, ImapError>),
    Other,
}

/// One reply seen while appending.
enum Seen {
    Continue,
    Done(String, Result<Option<(u32, u32)>, ImapError>),
    Other,
}

impl RestoreTarget for Connection {
    async fn delimiter(&mut self) -> Result<Option<char>, RemoteError> {
        super::lift(async {
            let mut delim = None;
            self.run("LIST \"\" \"\"", |r| {
                if let Response::MailboxData(MailboxDatum::List(data)) = r {
                    delim = data.delimiter.as_deref().and_then(|d| d.chars().next());
                }
            })
            .await?;
            Ok(delim)
        })
        .await
    }

    async fn create(&mut self, raw: &str) -> Result<(), RemoteError> {
        super::lift(async {
            match self.run(&format!("CREATE {}", quote(raw)?), |_| {}).await {
                Err(ImapError::No { text, .. }) if text.contains("[ALREADYEXISTS]") => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn fingerprints(
        &mut self,
        raw: &str,
    ) -> Result<(Selected, Vec<TargetMessage>), RemoteError> {
        super::lift(async {
            let sel = self.examine(raw).await?;
            if sel.exists == 0 {
                return Ok((sel, Vec::new()));
            }
            let mut out = Vec::new();
            let mut bad = None;
            self.run(
                "UID FETCH 1:* (UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                |r| {
                    let Response::Fetch(_, attrs) = r else { return };
                    let (mut uid, mut size, mut date, mut header) = (None, None, None, None);
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::Rfc822Size(s) => size = Some(*s),
                            AttributeValue::InternalDate(d) => {
                                date = super::session::parse_internaldate(d)
                            }
                            AttributeValue::BodySection {
                                section: Some(SectionPath::Full(_)),
                                data,
                                ..
                            } => header = Some(data.as_deref().unwrap_or(b"").to_vec()),
                            _ => {}
                        }
                    }
                    match (uid, size, date) {
                        (Some(uid), Some(size), Some(date)) => out.push(TargetMessage {
                            uid,
                            size: size as u64,
                            secs: date.timestamp(),
                            message_id: header.as_deref().and_then(message_id_of),
                        }),
                        // A FETCH without these is an unsolicited flag update.
                        (Some(uid), _, None) if size.is_some() => {
                            bad = Some(format!("unreadable INTERNALDATE for UID {uid}"))
                        }
                        _ => {}
                    }
                },
            )
            .await?;
            if let Some(b) = bad {
                return Err(ImapError::Protocol(b));
            }
            out.sort_by_key(|m| m.uid);
            out.dedup_by_key(|m| m.uid);
            Ok((sel, out))
        })
        .await
    }

    async fn remove_copies(
        &mut self,
        raw: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<(), RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(());
            }
            let mut uv = 0;
            self.run(&format!("SELECT {}", quote(raw)?), |r| {
                if let Response::Data { outcome, .. } = r {
                    if let Some(ResponseCode::UidValidity(v)) = outcome.code {
                        uv = v;
                    }
                }
            })
            .await?;
            if uv != uidvalidity {
                // Another mailbox under the same name: these UIDs are not ours.
                return Err(ImapError::Protocol(format!(
                    "UIDVALIDITY of `{raw}` changed ({uidvalidity} -> {uv}); no copy removed"
                )));
            }
            let set = uid_set(uids);
            self.run(
                &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
                |_| {},
            )
            .await?;
            self.run(&format!("UID EXPUNGE {set}"), |_| {}).await
        })
        .await
    }

    async fn body_hashes(&mut self, uids: &[u32]) -> Result<Vec<(u32, String)>, RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            self.run(
                &format!("UID FETCH {} (UID BODY.PEEK[])", uid_set(uids)),
                |r| {
                    let Response::Fetch(_, attrs) = r else { return };
                    let mut uid = None;
                    let mut hash = None;
                    for a in attrs {
                        match a {
                            AttributeValue::Uid(u) => uid = Some(*u),
                            AttributeValue::BodySection {
                                section: None,
                                data: Some(d),
                                ..
                            } => hash = Some(hex::encode(Sha256::digest(d))),
                            _ => {}
                        }
                    }
                    if let (Some(u), Some(h)) = (uid, hash) {
                        out.push((u, h));
                    }
                },
            )
            .await?;
            Ok(out)
        })
        .await
    }

    fn append_limit(&self) -> Option<u64> {
        self.caps
            .iter()
            .find_map(|c| c.strip_prefix("APPENDLIMIT=")?.parse().ok())
    }

    async fn add_labels(
        &mut self,
        raw: &str,
        labels: &[(u32, Vec<String>)],
    ) -> Result<(), RemoteError> {
        super::lift(async {
            self.run(&format!("SELECT {}", quote(raw)?), |_| {}).await?;
            self.examined = false;
            for (uid, l) in labels {
                let list = l
                    .iter()
                    .map(|l| label_arg(l))
                    .collect::<Result<Vec<_>, _>>()?
                    .join(" ");
                self.run(
                    &format!("UID STORE {uid} +X-GM-LABELS.SILENT ({list})"),
                    |_| {},
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    async fn append<F>(
        &mut self,
        raw: &str,
        messages: &[Upload],
        mut on_result: F,
    ) -> Result<(), RemoteError>
    where
        F: FnMut(usize, Result<Option<(u32, u32)>, RemoteError>) + Send,
    {
        let mut on_result = |i: usize, r: Result<Option<(u32, u32)>, ImapError>| {
            on_result(i, r.map_err(RemoteError::from))
        };
        super::lift(async {
            let mailbox = quote(raw)?;
            self.leave_examined().await?;
            let plus_all = self.caps.contains("LITERAL+");
            // LITERAL- (RFC 7888, Gmail): non-synchronizing only up to 4096 bytes.
            let minus = self.caps.contains("LITERAL-");
            let plus = plus_all;
            if messages.len() > 1 && self.caps.contains("MULTIAPPEND") {
                // One command, one transaction: the server commits the batch at
                // once (one fsync instead of one per message), all or nothing.
                match self.multiappend(&mailbox, messages, plus).await? {
                    Ok(uids) => {
                        for i in 0..messages.len() {
                            on_result(i, Ok(uids.as_ref().map(|(uv, u)| (*uv, u[i]))));
                        }
                        return Ok(());
                    }
                    Err(e @ ImapError::No { .. }) if is_throttle_text(&e) => {
                        on_result(0, Err(e));
                        return Ok(());
                    }
                    // Nothing was appended: one by one, to learn which message
                    // the server refuses (too large, over quota, ...).
                    Err(e) => log::debug!("MULTIAPPEND refused ({e}); appending one by one"),
                }
            }
            let mut pending: HashMap<String, usize> = HashMap::new();
            'messages: for (i, m) in messages.iter().enumerate() {
                while pending.len() >= WINDOW {
                    self.settle_one(&mut pending, &mut on_result).await?;
                }
                let plus_one = plus_all || (minus && m.body.len() <= 4096);
                let command = format!(
                    "APPEND {mailbox} ({}) \"{}\" {{{}{}}}",
                    m.flags.join(" "),
                    imap_date(m.internaldate),
                    m.body.len(),
                    if plus_one { "+" } else { "" }
                );
                let tag = self.send_line(&command).await?;
                pending.insert(tag.clone(), i);
                if !plus_one {
                    // A synchronizing literal: the server may refuse it up front.
                    loop {
                        match self.read_seen().await? {
                            Seen::Continue => break,
                            Seen::Done(t, result) => {
                                if let Some(j) = pending.remove(&t) {
                                    on_result(j, result);
                                }
                                if t == tag {
                                    continue 'messages;
                                }
                            }
                            Seen::Other => {}
                        }
                    }
                }
                self.write_literal(&m.body, b"\r\n").await?;
            }
            while !pending.is_empty() {
                self.settle_one(&mut pending, &mut on_result).await?;
            }
            Ok(())
        })
        .await
    }
}

/// One label in a STORE: system labels as atoms (`\Inbox`), user labels
/// quoted, in modified UTF-7 (Google's "IMAP Extensions" page).
fn label_arg(l: &str) -> Result<String, ImapError> {
    if l.starts_with('\\') && l[1..].bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(l.to_string())
    } else {
        quote(&crate::mutf7::encode(l))
    }
}

fn is_throttle_text(e: &ImapError) -> bool {
    match e {
        ImapError::No { text, .. } => crate::sync::restore::is_throttle(text),
        _ => false,
    }
}

/// One message's part of an APPEND command: ` (flags) "date" {n}`.
fn append_args(m: &Upload, plus: bool) -> String {
    format!(
        "({}) \"{}\" {{{}{}}}",
        m.flags.join(" "),
        imap_date(m.internaldate),
        m.body.len(),
        if plus { "+" } else { "" }
    )
}

impl Connection {
    /// Appends `messages` in one MULTIAPPEND command (RFC 3502). The outer
    /// error means the connection is gone; the inner one is the server's
    /// refusal, after which nothing was appended. On success: APPENDUID's
    /// UIDVALIDITY and one UID per message, when the server gave them.
    #[allow(clippy::type_complexity)]
    async fn multiappend(
        &mut self,
        mailbox: &str,
        messages: &[Upload],
        plus: bool,
    ) -> Result<Result<Option<(u32, Vec<u32>)>, ImapError>, ImapError> {
        let tag = self
            .send_line(&format!(
                "APPEND {mailbox} {}",
                append_args(&messages[0], plus)
            ))
            .await?;
        for (i, m) in messages.iter().enumerate() {
            if !plus {
                loop {
                    match self.read_multi(&tag).await? {
                        Multi::Done(Ok(_)) => {
                            return Ok(Err(ImapError::Protocol(
                                "APPEND completed before all messages were sent".into(),
                            )))
                        }
                        Multi::Done(Err(e)) => return Ok(Err(e)),
                        Multi::Continue => break,
                        Multi::Other => {}
                    }
                }
            }
            let tail = match messages.get(i + 1) {
                Some(next) => format!(" {}\r\n", append_args(next, plus)),
                None => "\r\n".to_string(),
            };
            self.write_literal(&m.body, tail.as_bytes()).await?;
        }
        loop {
            match self.read_multi(&tag).await? {
                Multi::Done(Ok(uids)) => {
                    let uids = uids.filter(|(_, u)| u.len() == messages.len());
                    return Ok(Ok(uids));
                }
                Multi::Done(Err(e)) => return Ok(Err(e)),
                Multi::Continue | Multi::Other => {}
            }
        }
    }

    /// Leaves a mailbox selected with EXAMINE before an APPEND: RFC 3501
    /// allows no change to a read-only mailbox, and Courier refuses an APPEND
    /// into it (`Current box is selected READ-ONLY`; Dovecot and Cyrus
    /// allow it). UNSELECT where offered, else CLOSE, which never expunges
    /// a mailbox selected read-only (RFC 3501 6.4.2).
    async fn leave_examined(&mut self) -> Result<(), ImapError> {
        if !self.examined {
            return Ok(());
        }
        let command = if self.caps.contains("UNSELECT") || self.caps.contains("IMAP4REV2") {
            "UNSELECT"
        } else {
            "CLOSE"
        };
        self.run(command, |_| {}).await?;
        self.examined = false;
        Ok(())
    }

    /// Reads one response while a MULTIAPPEND runs.
    async fn read_multi(&mut self, tag: &str) -> Result<Multi, ImapError> {
        let r = self
            .next(|r| match r {
                Response::Continue(_) => Multi::Continue,
                Response::Done {
                    tag: t,
                    status,
                    outcome,
                } if t.0 == tag => {
                    let uids = match (status, &outcome.code) {
                        (Status::Ok, Some(ResponseCode::AppendUid(uv, set))) => {
                            Some((*uv, expand(set)))
                        }
                        _ => None,
                    };
                    Multi::Done(append_result(status, outcome).map(|_| uids))
                }
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => Multi::Done(Err(ImapError::Bye(
                    outcome.information.as_deref().unwrap_or("").to_string(),
                ))),
                _ => Multi::Other,
            })
            .await?;
        match r {
            Multi::Done(Err(e)) if e.is_connection_level() => Err(e),
            other => Ok(other),
        }
    }

    /// Sends one tagged command line and returns its tag.
    async fn send_line(&mut self, command: &str) -> Result<String, ImapError> {
        log::debug!("> {command}");
        let RequestId(tag) = timeout(self.timeout, self.session.run_command(command))
            .await
            .map_err(|_| ImapError::Timeout {
                what: "sending APPEND".into(),
                secs: self.timeout.as_secs(),
            })?
            .map_err(async_to_imap)?;
        Ok(tag)
    }

    /// Writes a literal's bytes and what follows it (the CRLF that ends the
    /// command, or the next message's arguments).
    async fn write_literal(&mut self, body: &[u8], tail: &[u8]) -> Result<(), ImapError> {
        // Large messages get time in proportion to their size (1 MB/s floor).
        let secs = self.timeout.as_secs() + body.len() as u64 / 1_000_000;
        let stream = self.session.get_mut();
        let write = async {
            stream.write_all(body).await?;
            stream.write_all(tail).await?;
            stream.flush().await
        };
        timeout(std::time::Duration::from_secs(secs), write)
            .await
            .map_err(|_| ImapError::Timeout {
                what: "sending a message".into(),
                secs,
            })??;
        Ok(())
    }

    async fn read_seen(&mut self) -> Result<Seen, ImapError> {
        let seen = self
            .next(|r| match r {
                Response::Continue(_) => Seen::Continue,
                Response::Done {
                    tag,
                    status,
                    outcome,
                } => Seen::Done(tag.0.clone(), append_result(status, outcome)),
                Response::Data {
                    status: Status::Bye,
                    outcome,
                } => Seen::Done(
                    String::new(),
                    Err(ImapError::Bye(
                        outcome.information.as_deref().unwrap_or("").to_string(),
                    )),
                ),
                _ => Seen::Other,
            })
            .await?;
        match seen {
            Seen::Done(t, Err(e)) if t.is_empty() => Err(e),
            other => Ok(other),
        }
    }

    /// Reads until one pending APPEND is answered and reports it.
    async fn settle_one<F>(
        &mut self,
        pending: &mut HashMap<String, usize>,
        on_result: &mut F,
    ) -> Result<(), ImapError>
    where
        F: FnMut(usize, Result<Option<(u32, u32)>, ImapError>),
    {
        loop {
            match self.read_seen().await? {
                Seen::Done(t, result) => {
                    if let Some(i) = pending.remove(&t) {
                        on_result(i, result);
                        return Ok(());
                    }
                }
                Seen::Continue => {
                    return Err(ImapError::Protocol(
                        "unexpected continuation request while appending".into(),
                    ))
                }
                Seen::Other => {}
            }
        }
    }
}

fn append_result(status: &Status, outcome: &Outcome<'_>) -> Result<Option<(u32, u32)>, ImapError> {
    let code = &outcome.code;
    // Gmail's `OK ... [THROTTLED]` (PROVIDERS.md, "Limits"), as `completion` notes it.
    if outcome
        .information
        .as_deref()
        .is_some_and(|i| i.contains("[THROTTLED]"))
    {
        super::session::THROTTLED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    if let (Status::Ok, Some(ResponseCode::AppendUid(uv, set))) = (status, code) {
        let uid = set.first().map(|m| match m {
            UidSetMember::Uid(u) => *u,
            UidSetMember::UidRange(r) => *r.start(),
        });
        return Ok(uid.map(|u| (*uv, u)));
    }
    match done_status("APPEND", status, outcome) {
        Ok(()) => Ok(None),
        // TRYCREATE is parsed into a code; put it back into the server's words.
        Err(ImapError::No { command, text }) if matches!(code, Some(ResponseCode::TryCreate)) => {
            Err(ImapError::No {
                command,
                text: format!("[TRYCREATE] {text}"),
            })
        }
        Err(e) => Err(e),
    }
}

/// The UIDs of a uid-set, in order.
fn expand(set: &[UidSetMember]) -> Vec<u32> {
    let mut out = Vec::new();
    for m in set {
        match m {
            UidSetMember::Uid(u) => out.push(*u),
            UidSetMember::UidRange(r) => out.extend(r.clone()),
        }
    }
    out
}

/// An IMAP date-time in UTC, e.g. `01-Feb-2024 10:11:12 +0000`.
pub(crate) fn imap_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_date_is_utc_with_english_month() {
        assert_eq!(imap_date(1706778672), "01-Feb-2024 09:11:12 +0000");
    }

    #[test]
    fn overquota_code_stays_in_the_servers_words() {
        let outcome = Outcome {
            code: None,
            information: Some(std::borrow::Cow::Borrowed("[OVERQUOTA] Quota exceeded")),
        };
        match append_result(&Status::No, &outcome) {
            Err(ImapError::No { text, .. }) => assert!(text.contains("[OVERQUOTA]")),
            other => panic!("{other:?}"),
        }
    }
}
