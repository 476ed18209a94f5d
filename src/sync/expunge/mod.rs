//! Expunge: delete from the server only what the archive provably holds.
//!
//! A message is a candidate only when its mailbox has the UIDVALIDITY of
//! the last pull, its UID is journaled, the server's RFC822.SIZE equals the
//! archived size, and (re-hashed now, never trusted from a cache) the
//! archived file decompresses to the size and SHA-256 recorded at pull time.
//! Nothing is downloaded. Messages another client marked `\Deleted` are
//! left alone, deletion is `UID STORE +FLAGS.SILENT (\Deleted)` (with
//! `UNCHANGEDSINCE` on CONDSTORE servers, so a mark set by someone else
//! after our last check fails the STORE for that message) then
//! `UID EXPUNGE` of the same UIDs (never `EXPUNGE` or `CLOSE`). The UIDs
//! about to be marked are written to `expunge-pending.json` in the
//! mailbox's state directory first ("intended"), and again once the STORE
//! is acknowledged ("stored", with the MODSEQ it gave), so the next run
//! finishes an interrupted one only where the `\Deleted` mark is provably
//! its own; anything it cannot tell is left as it is and reported.
//!
//! This file holds what expunge needs from a server: [`ExpungeRemote`] and
//! its plain types. `plan.rs` holds the pure, unit-tested parts (the options
//! and their parsers, `plan_mailbox`, `bytes_to_free`, `Limits`, the plan's
//! [`ExpungeAction`]); `state.rs` the `expunge-pending.json` record;
//! `run.rs` the executor, `expunge_account`, which runs the planner against
//! an [`ExpungeRemote`] and the archive; `report.rs` what a run reports.

use std::future::Future;

use serde::Serialize;

use super::remote::{GmailMeta, ListedMailbox, Namespace, Selected};
use crate::sync::remote::RemoteError;

mod plan;
mod report;
mod run;
mod state;

pub use plan::{
    bytes_to_free, decide_pending, order_candidates, parse_age, parse_percent, percent,
    plan_mailbox, ArchivedCopy, Candidate, ExpungeAction, ExpungeOptions, Limits, MailboxFacts,
    MailboxPlan, PendingDecision, Selection, SkipReason,
};
pub use report::{AccountExpunge, ExpungeReport, MailboxExpunge, QuotaUsage};
pub use run::expunge_account;
pub use state::{load_pending, MarkState, Pending, PendingMark};

/// Metadata of one message, as `UID FETCH (UID FLAGS INTERNALDATE
/// RFC822.SIZE)` reports it. Never the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMeta {
    pub uid: u32,
    /// INTERNALDATE, seconds since the epoch.
    pub internaldate: i64,
    pub size: u32,
    pub flags: Vec<String>,
    /// MODSEQ, from servers with CONDSTORE.
    pub modseq: Option<u64>,
}

impl ServerMeta {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// What a `UID STORE` of `\Deleted` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// The MODSEQ each stored message has now, from the FETCH responses
    /// of the STORE (CONDSTORE servers). A UID whose MODSEQ is not known
    /// for sure (none sent, or two different ones) is absent.
    pub modseqs: std::collections::BTreeMap<u32, u64>,
    /// UIDs the server reported in `[MODIFIED ...]`: changed since the
    /// `UNCHANGEDSINCE` value, so not stored.
    pub modified: Vec<u32>,
}

/// One quota root and its resources (GETQUOTAROOT, RFC 2087 / 9208).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaRoot {
    pub root: String,
    pub resources: Vec<QuotaResource>,
}

/// One resource of a quota root. `STORAGE` is counted in KiB (1024 bytes),
/// `MESSAGE` in messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuotaResource {
    pub name: String,
    pub usage: u64,
    pub limit: u64,
}

/// The operations expunge and quota need from a server; each either
/// completes or returns an error (`RemoteError::is_connection_level` says
/// whether the connection survives it).
pub trait ExpungeRemote: Send {
    /// True if the server announced `cap` (upper case).
    fn has_capability(&self, cap: &str) -> bool;

    /// The personal namespace, when the server told it (NAMESPACE).
    fn namespace(&self) -> Option<Namespace> {
        None
    }

    /// Every mailbox (statuses are not needed).
    fn list_mailboxes(
        &mut self,
    ) -> impl Future<Output = Result<Vec<ListedMailbox>, RemoteError>> + Send;

    /// Opens `raw` read-only.
    fn examine(&mut self, raw: &str) -> impl Future<Output = Result<Selected, RemoteError>> + Send;

    /// Opens `raw` read-write. Selecting another mailbox later deselects
    /// this one without expunging anything (RFC 3501 6.3.1).
    fn select(&mut self, raw: &str) -> impl Future<Output = Result<Selected, RemoteError>> + Send;

    /// Metadata of the selected mailbox's messages: all of them (`None`) or
    /// only `uids` (sorted). UIDs that no longer exist are simply absent.
    /// With CONDSTORE each carries its MODSEQ.
    fn metadata(
        &mut self,
        uids: Option<&[u32]>,
    ) -> impl Future<Output = Result<Vec<ServerMeta>, RemoteError>> + Send;

    /// `UID STORE <uids> +FLAGS.SILENT (\Deleted)` (`mark == true`) or
    /// `-FLAGS.SILENT (\Deleted)` on the selected mailbox; with
    /// `unchanged_since` (CONDSTORE) as `UID STORE <uids> (UNCHANGEDSINCE
    /// <m>) ...`, so messages changed after MODSEQ `m` are left untouched
    /// and come back in [`StoreOutcome::modified`].
    fn set_deleted(
        &mut self,
        uids: &[u32],
        mark: bool,
        unchanged_since: Option<u64>,
    ) -> impl Future<Output = Result<StoreOutcome, RemoteError>> + Send;

    /// `UID EXPUNGE <uids>` (UIDPLUS / IMAP4rev2): removes only those of
    /// `uids` that carry `\Deleted`, never anything else.
    fn uid_expunge(&mut self, uids: &[u32])
        -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// Gmail only: `UID MOVE <uids> <to>` from the selected mailbox (RFC
    /// 6851); returns the (source UID, destination UID) pairs of its
    /// COPYUID (empty when the server sent none).
    fn uid_move(
        &mut self,
        uids: &[u32],
        to: &str,
    ) -> impl Future<Output = Result<Vec<(u32, u32)>, RemoteError>> + Send {
        let _ = (uids, to);
        async { Err(RemoteError::broken("the server does not offer MOVE")) }
    }

    /// Gmail only: UID, flags, X-GM-MSGID, X-GM-THRID and X-GM-LABELS of
    /// the selected mailbox's messages: all (`None`) or only `uids`.
    fn gmail_meta(
        &mut self,
        uids: Option<&[u32]>,
    ) -> impl Future<Output = Result<Vec<GmailMeta>, RemoteError>> + Send {
        let _ = uids;
        async { Err(RemoteError::broken("the server does not offer X-GM-EXT-1")) }
    }

    /// True (once) when a command since the last call completed with
    /// `OK ... [THROTTLED]` (Gmail): the server asks the client to slow down.
    fn take_throttled(&mut self) -> bool {
        false
    }

    /// The quota roots of `mailbox` with their resources (GETQUOTAROOT).
    fn quota_roots(
        &mut self,
        mailbox: &str,
    ) -> impl Future<Output = Result<Vec<QuotaRoot>, RemoteError>> + Send;

    /// Ends the session politely; errors are ignored.
    fn logout(self) -> impl Future<Output = ()> + Send;
}
