//! The raw commands `expunge` and `quota` need: SELECT, metadata FETCH
//! (never a body), `UID STORE ... \Deleted`, `UID EXPUNGE` and GETQUOTAROOT.
//! No policy here; what to delete is decided in `sync::expunge`.

use async_imap::imap_proto::rfc2087::QuotaResourceName;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, ResponseCode};

use super::session::parse_internaldate;
use super::{quote, uid_set, Connection, ImapError};
use crate::sync::expunge::{ExpungeRemote, QuotaResource, QuotaRoot, ServerMeta};
use crate::sync::remote::{ListedMailbox, Namespace, Remote, RemoteError, Selected};

/// A FETCH response that carries every item `metadata` asked for;
/// unsolicited flag updates from other sessions yield `None`.
fn meta_of(attrs: &[AttributeValue<'_>]) -> Option<ServerMeta> {
    let (mut uid, mut size, mut flags, mut date) = (None, None, None, None);
    for a in attrs {
        match a {
            AttributeValue::Uid(u) => uid = Some(*u),
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
    })
}

impl ExpungeRemote for Connection {
    fn has_capability(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    fn namespace(&self) -> Option<Namespace> {
        self.namespace.clone()
    }

    async fn list_mailboxes(&mut self) -> Result<Vec<ListedMailbox>, RemoteError> {
        Remote::list(self).await
    }

    async fn examine(&mut self, raw: &str) -> Result<Selected, RemoteError> {
        Remote::examine(self, raw).await
    }

    async fn select(&mut self, raw: &str) -> Result<Selected, RemoteError> {
        super::lift(async {
            let command = format!("SELECT {}", quote(raw)?);
            let mut sel = Selected::default();
            // Selected or not, nothing stays EXAMINEd (RFC 3501 6.3.1).
            self.examined = false;
            self.run(&command, |r| match r {
                Response::Data { outcome, .. } => match outcome.code {
                    Some(ResponseCode::UidValidity(v)) => sel.uidvalidity = v,
                    Some(ResponseCode::UidNext(v)) => sel.uidnext = v,
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
            let command = format!("UID FETCH {set} (UID FLAGS INTERNALDATE RFC822.SIZE)");
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

    async fn set_deleted(&mut self, uids: &[u32], mark: bool) -> Result<(), RemoteError> {
        super::lift(async {
            if uids.is_empty() {
                return Ok(());
            }
            let command = format!(
                "UID STORE {} {}FLAGS.SILENT (\\Deleted)",
                uid_set(uids),
                if mark { '+' } else { '-' }
            );
            self.run(&command, |_| {}).await
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

    async fn quota_roots(&mut self, mailbox: &str) -> Result<Vec<QuotaRoot>, RemoteError> {
        super::lift(async {
            let command = format!("GETQUOTAROOT {}", quote(mailbox)?);
            let mut names: Vec<String> = Vec::new();
            let mut roots: Vec<QuotaRoot> = Vec::new();
            self.run(&command, |r| match r {
                Response::QuotaRoot(q) => {
                    names.extend(q.quota_root_names.iter().map(|n| n.to_string()));
                }
                Response::Quota(q) => roots.push(QuotaRoot {
                    root: q.root_name.to_string(),
                    resources: q
                        .resources
                        .iter()
                        .map(|r| QuotaResource {
                            name: match &r.name {
                                QuotaResourceName::Storage => "STORAGE".to_string(),
                                QuotaResourceName::Message => "MESSAGE".to_string(),
                                QuotaResourceName::Atom(a) => a.to_ascii_uppercase(),
                            },
                            usage: r.usage,
                            limit: r.limit,
                        })
                        .collect(),
                }),
                _ => {}
            })
            .await?;
            // Roots named but not detailed have no limits; list them empty.
            for n in names {
                if !roots.iter().any(|r| r.root == n) {
                    roots.push(QuotaRoot {
                        root: n,
                        resources: Vec::new(),
                    });
                }
            }
            Ok(roots)
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
            })
        );
        let partial = b"* 1 FETCH (UID 7 FLAGS (\\Deleted))\r\n";
        let (_, r) = Response::parse(partial).unwrap();
        let Response::Fetch(_, attrs) = r else {
            panic!("not a FETCH")
        };
        assert_eq!(meta_of(&attrs), None);
    }
}
