//! The raw commands `expunge` and `quota` need: SELECT, metadata FETCH
//! (never a body), `UID STORE ... \Deleted` (conditional on CONDSTORE
//! servers, RFC 7162 3.1.3), `UID EXPUNGE` and GETQUOTAROOT.
//! No policy here; what to delete is decided in `sync::expunge`.

use std::collections::BTreeMap;

use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, ResponseCode};

use super::session::{completion, parse_internaldate};
use super::{quote, uid_set, Connection, ImapError};
use crate::sync::expunge::{ExpungeRemote, QuotaResource, QuotaRoot, ServerMeta, StoreOutcome};
use crate::sync::remote::{ListedMailbox, Namespace, Remote, RemoteError, Selected};

/// Responses one STORE may bring (its FETCHes, unsolicited updates)
/// before we call the server hostile.
const MAX_STORE_RESPONSES: usize = 1_000_000;

/// A FETCH response that carries every item `metadata` asked for;
/// unsolicited flag updates from other sessions yield `None`.
fn meta_of(attrs: &[AttributeValue<'_>]) -> Option<ServerMeta> {
    let (mut uid, mut size, mut flags, mut date) = (None, None, None, None);
    let mut modseq = None;
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::ModSeq(m) => modseq = Some(*m),
            AttributeValue::Rfc822Size(s) => size = Some(*s),
            AttributeValue::Flags(f) => flags = Some(f.iter().map(|s| s.to_string()).collect()),
            AttributeValue::InternalDate(d) => date = parse_internaldate(d).map(|d| d.timestamp()),
            _ => {}
        }
    }
    Some(ServerMeta {
        uid: uid?,
        internaldate: date?,
        size: size?,
        flags: flags?,
        modseq,
    })
}

/// UID and MODSEQ of a FETCH response, as a conditional STORE returns
/// them (`* 1 FETCH (UID 4 MODSEQ (12121231000))`).
fn modseq_of(attrs: &[AttributeValue<'_>]) -> Option<(u32, u64)> {
    let (mut uid, mut modseq) = (None, None);
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
            AttributeValue::ModSeq(m) => modseq = Some(*m),
            _ => {}
        }
    }
    Some((uid?, modseq?))
}

/// The UIDs of a `[MODIFIED <set>]` at the start of a tagged OK's text
/// (imap-proto does not know the code, so it arrives as text).
fn modified_of(text: &str) -> Result<Vec<u32>, ImapError> {
    let Some(rest) = text.trim_start().strip_prefix("[MODIFIED ") else {
        return Ok(Vec::new());
    };
    let bad = || ImapError::Protocol(format!("unreadable MODIFIED response code in `{text}`"));
    let set = rest.split(']').next().ok_or_else(bad)?;
    let mut out = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b): (u32, u32) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        let (lo, hi) = (a.min(b), a.max(b));
        // A set is only ever a subset of what we sent (at most a chunk).
        if hi - lo > 1_000_000 {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl ExpungeRemote for Connection {
    fn has_capability(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    fn namespace(&self) -> Option<Namespace> {
        self.personal_namespace()
    }

    async fn list_mailboxes(&mut self) -> Result<Vec<ListedMailbox>, RemoteError> {
        Remote::list(self).await
    }

    async fn examine(&mut self, raw: &str) -> Result<Selected, RemoteError> {
        Remote::examine(self, raw).await
    }

    async fn select(&mut self, raw: &str) -> Result<Selected, RemoteError> {
        super::lift(async {
            let condstore = self.caps.contains("CONDSTORE");
            let command = format!(
                "SELECT {}{}",
                quote(raw)?,
                if condstore { " (CONDSTORE)" } else { "" }
            );
            let mut sel = Selected::default();
            // Selected or not, nothing stays EXAMINEd (RFC 3501 6.3.1).
            self.examined = false;
            self.run(&command, |r| match r {
                Response::Data { outcome, .. } => match outcome.code {
                    Some(ResponseCode::UidValidity(v)) => sel.uidvalidity = v,
                    Some(ResponseCode::UidNext(v)) => sel.uidnext = v,
                    Some(ResponseCode::HighestModSeq(v)) => sel.highestmodseq = Some(v),
                    _ => {}
                },
                Response::MailboxData(MailboxDatum::Exists(n)) => sel.exists = *n,
                _ => {}
            })
            .await?;
            // A mailbox the server opens [READ-ONLY] refuses the STORE with NO,
            // which is reported for that mailbox.
            if sel.uidvalidity == 0 {
                return Err(ImapError::Protocol(format!(
                    "server sent no UIDVALIDITY for `{raw}`"
                )));
            }
            Ok(sel)
        })
        .await
    }

    async fn metadata(&mut self, uids: Option<&[u32]>) -> Result<Vec<ServerMeta>, RemoteError> {
        super::lift(async {
            let set = match uids {
                Some([]) => return Ok(Vec::new()),
                Some(u) => uid_set(u),
                None => "1:*".to_string(),
            };
            let wanted: Option<std::collections::HashSet<u32>> =
                uids.map(|u| u.iter().copied().collect());
            let modseq = if self.caps.contains("CONDSTORE") {
                " MODSEQ"
            } else {
                ""
            };
            let command = format!("UID FETCH {set} (UID FLAGS INTERNALDATE RFC822.SIZE{modseq})");
            let mut out = Vec::new();
            self.run(&command, |r| {
                if let Response::Fetch(_, attrs) = r {
                    if let Some(m) = meta_of(attrs) {
                        if wanted.as_ref().is_none_or(|w| w.contains(&m.uid)) {
                            out.push(m);
                        }
                    }
                }
            })
            .await?;
            out.sort_by_key(|m| m.uid);
            out.dedup_by_key(|m| m.uid);
            Ok(out)
        })
        .await
    }

    async fn set_deleted(
        &mut self,
        uids: &[u32],
        mark: bool,
        unchanged_since: Option<u64>,
    ) -> Result<StoreOutcome, RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(StoreOutcome::default());
            }
            let condition = unchanged_since
                .map(|m| format!(" (UNCHANGEDSINCE {m})"))
                .unwrap_or_default();
            let command = format!(
                "UID STORE {}{condition} {}FLAGS.SILENT (\\Deleted)",
                uid_set(uids),
                if mark { '+' } else { '-' }
            );
            // Like `run`, but the tagged OK's text is kept: it may carry
            // `[MODIFIED ...]`.
            let tag = self.send(&command).await?;
            let mut modseqs: BTreeMap<u32, u64> = BTreeMap::new();
            let mut unclear: Vec<u32> = Vec::new();
            for _ in 0..MAX_STORE_RESPONSES {
                let done = self
                    .next(|r| {
                        if let Some(result) = completion(r, &tag, &command) {
                            let text = match r {
                                Response::Done { outcome, .. } => {
                                    outcome.information.as_deref().unwrap_or("").to_string()
                                }
                                _ => String::new(),
                            };
                            return Some(result.map(|()| text));
                        }
                        if let Response::Fetch(_, attrs) = r {
                            if let Some((uid, m)) = modseq_of(attrs) {
                                if uids.contains(&uid) && *modseqs.entry(uid).or_insert(m) != m {
                                    // Changed again by someone else while we
                                    // stored: which MODSEQ is ours is unclear.
                                    unclear.push(uid);
                                }
                            }
                        }
                        None
                    })
                    .await?;
                if let Some(result) = done {
                    let modified = modified_of(&result?)?;
                    for u in modified.iter().chain(&unclear) {
                        modseqs.remove(u);
                    }
                    return Ok(StoreOutcome { modseqs, modified });
                }
            }
            Err(ImapError::Protocol(format!(
                "server sent more than {MAX_STORE_RESPONSES} responses to STORE"
            )))
        })
        .await
    }

    async fn uid_expunge(&mut self, uids: &[u32]) -> Result<(), RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(());
            }
            self.run(&format!("UID EXPUNGE {}", uid_set(uids)), |_| {})
                .await
        })
        .await
    }

    async fn uid_move(&mut self, uids: &[u32], to: &str) -> Result<Vec<(u32, u32)>, RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(Vec::new());
            }
            // Raw: imap-proto does not hand back COPYUID's sets.
            let command = format!("UID MOVE {} {}", uid_set(uids), quote(to)?);
            let (untagged, tagged) = self.raw_command(&command, "UID MOVE").await?;
            // RFC 6851: COPYUID comes in an untagged OK before the
            // EXPUNGEs, or in the tagged OK.
            let mut pairs = Vec::new();
            for line in untagged.iter().chain(std::iter::once(&tagged)) {
                pairs.extend(copyuid_of(line));
            }
            pairs.retain(|(s, _)| uids.contains(s));
            Ok(pairs)
        })
        .await
    }

    async fn gmail_meta(
        &mut self,
        uids: Option<&[u32]>,
    ) -> Result<Vec<crate::sync::remote::GmailMeta>, RemoteError> {
        super::lift(async {
            let set = match uids {
                Some([]) => return Ok(Vec::new()),
                Some(u) => uid_set(u),
                None => "1:*".to_string(),
            };
            let mut out = self.gmail_fetch(&set, None).await?;
            if let Some(u) = uids {
                out.retain(|m| u.contains(&m.uid));
            }
            out.sort_by_key(|m| m.uid);
            out.dedup_by_key(|m| m.uid);
            Ok(out)
        })
        .await
    }

    fn take_throttled(&mut self) -> bool {
        Remote::take_throttled(self)
    }

    async fn quota_roots(&mut self, mailbox: &str) -> Result<Vec<QuotaRoot>, RemoteError> {
        super::lift(async {
            // Raw: Courier answers `* QUOTA "ROOT"` with no resource list
            // for a user without a quota, which imap-proto cannot parse.
            let command = format!("GETQUOTAROOT {}", quote(mailbox)?);
            let (untagged, _) = self.raw_command(&command, "GETQUOTAROOT").await?;
            Ok(parse_quota(&untagged))
        })
        .await
    }

    async fn logout(self) {
        Remote::logout(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::imap_proto::Response;

    #[test]
    fn metadata_needs_every_item_so_unsolicited_flag_updates_are_ignored() {
        let full = b"* 1 FETCH (UID 7 FLAGS (\\Seen) INTERNALDATE \" 1-Feb-2024 10:11:12 +0100\" RFC822.SIZE 42)\r\n";
        let (_, r) = Response::parse(full).unwrap();
        let Response::Fetch(_, attrs) = r else {
            panic!("not a FETCH")
        };
        assert_eq!(
            meta_of(&attrs),
            Some(ServerMeta {
                uid: 7,
                internaldate: 1706778672,
                size: 42,
                flags: vec!["\\Seen".into()],
                modseq: None,
            })
        );
        let partial = b"* 1 FETCH (UID 7 FLAGS (\\Deleted))\r\n";
        let (_, r) = Response::parse(partial).unwrap();
        let Response::Fetch(_, attrs) = r else {
            panic!("not a FETCH")
        };
        assert_eq!(meta_of(&attrs), None);
    }

    #[test]
    fn a_conditional_stores_answers_give_modseqs_and_modified_uids() {
        let (_, r) = Response::parse(b"* 1 FETCH (UID 4 MODSEQ (12121231000))\r\n").unwrap();
        let Response::Fetch(_, attrs) = r else {
            panic!("not a FETCH")
        };
        assert_eq!(modseq_of(&attrs), Some((4, 12121231000)));
        let (_, r) =
            Response::parse(b"a1 OK [MODIFIED 7,9:11] Conditional STORE failed\r\n").unwrap();
        let Response::Done { outcome, .. } = r else {
            panic!("not tagged")
        };
        let text = outcome.information.as_deref().unwrap();
        assert_eq!(modified_of(text).unwrap(), [7, 9, 10, 11]);
        assert_eq!(modified_of("Store completed").unwrap(), Vec::<u32>::new());
        assert!(modified_of("[MODIFIED x] no").is_err());
    }
}

/// Expands one UID set (`4,7:9`) in order; None if unreadable or huge.
fn expand_set(set: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        if a.abs_diff(b) > 1_000_000 {
            return None;
        }
        // RFC 6851 pairs the sets in order; `9:7` counts down.
        if a <= b {
            out.extend(a..=b);
        } else {
            out.extend((b..=a).rev());
        }
    }
    Some(out)
}

/// The (source, destination) UID pairs of a `[COPYUID <uidvalidity>
/// <source set> <destination set>]` in `line` (RFC 4315).
fn copyuid_of(line: &str) -> Vec<(u32, u32)> {
    let upper = line.to_ascii_uppercase();
    let Some(at) = upper.find("[COPYUID ") else {
        return Vec::new();
    };
    let rest = &line[at + 9..];
    let rest = rest.split(']').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let [_, src, dst] = f.as_slice() else {
        return Vec::new();
    };
    match (expand_set(src), expand_set(dst)) {
        (Some(s), Some(d)) if s.len() == d.len() => s.into_iter().zip(d).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod copyuid_tests {
    use super::*;

    #[test]
    fn copyuid_pairs_sources_with_destinations_in_order() {
        assert_eq!(
            copyuid_of("* OK [COPYUID 11 4,7:8 20:22] Moved"),
            vec![(4, 20), (7, 21), (8, 22)]
        );
        assert_eq!(copyuid_of("A1 OK [COPYUID 11 4:5 9] x"), vec![]);
        assert_eq!(copyuid_of("* 3 EXPUNGE"), vec![]);
    }
}

/// The quota roots of a GETQUOTAROOT reply's untagged lines (RFC 2087 /
/// 9208): `* QUOTAROOT mailbox root...` and `* QUOTA root (NAME usage
/// limit ...)`, the list also accepted missing (Courier without a quota).
/// Roots named but not detailed have no limits and are listed empty.
pub fn parse_quota(lines: &[String]) -> Vec<QuotaRoot> {
    let mut names: Vec<String> = Vec::new();
    let mut roots: Vec<QuotaRoot> = Vec::new();
    for line in lines {
        let tokens = tokens(line);
        let [star, verb, rest @ ..] = tokens.as_slice() else {
            continue;
        };
        if star != "*" {
            continue;
        }
        if verb.eq_ignore_ascii_case("QUOTAROOT") {
            names.extend(rest.iter().skip(1).cloned());
        } else if verb.eq_ignore_ascii_case("QUOTA") {
            let Some(root) = rest.first() else { continue };
            let list: Vec<&String> = rest[1..]
                .iter()
                .filter(|t| *t != "(" && *t != ")")
                .collect();
            let resources = list
                .chunks(3)
                .filter_map(|c| match c {
                    [name, usage, limit] => Some(QuotaResource {
                        name: name.to_ascii_uppercase(),
                        usage: usage.parse().ok()?,
                        limit: limit.parse().ok()?,
                    }),
                    _ => None,
                })
                .collect();
            roots.push(QuotaRoot {
                root: root.clone(),
                resources,
            });
        }
    }
    for n in names {
        if !roots.iter().any(|r| r.root == n) {
            roots.push(QuotaRoot {
                root: n,
                resources: Vec::new(),
            });
        }
    }
    roots
}

/// Atoms, quoted strings (unescaped) and parentheses of one response line.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '(' | ')' => {
                out.push(c.to_string());
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => s.extend(chars.next()),
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '(' || c == ')' {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    #[test]
    fn quota_replies_with_and_without_a_resource_list() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = parse_quota(&lines(&[
            r#"* QUOTAROOT "INBOX" "" "User quota""#,
            r#"* QUOTA "" (STORAGE 10 512 MESSAGE 3 1000)"#,
            r#"* QUOTA "User quota" (storage 1 2)"#,
        ]));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].root, "");
        assert_eq!(r[0].resources[1].name, "MESSAGE");
        assert_eq!(
            (r[0].resources[0].usage, r[0].resources[0].limit),
            (10, 512)
        );
        assert_eq!(r[1].resources[0].name, "STORAGE");
        // Courier, a user without a quota file.
        let r = parse_quota(&lines(&[
            r#"* QUOTAROOT "INBOX" "ROOT""#,
            r#"* QUOTA "ROOT""#,
        ]));
        assert_eq!(r.len(), 1);
        assert!(r[0].resources.is_empty());
    }
}
