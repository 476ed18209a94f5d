//! Restore: put an archive back on an IMAP server, exactly once, with flags
//! and INTERNALDATE. The archive is only read (never locked, scanned with
//! repair or written): message files are listed from `cur/` and `new/`.
//!
//! Exactly once rests on what the target holds, not on what we remember:
//! before appending into a mailbox we fingerprint its messages (size +
//! INTERNALDATE + Message-ID, or + SHA-256 of the bytes when there is no
//! Message-ID) and append only archive messages without a match, matching
//! one to one so that true duplicates in the archive stay duplicates.
//!
//! A killed run's APPENDs can still be on their way when the rerun
//! fingerprints, so the rerun appends those messages too. Before sending a
//! batch, a run records its intent (mailbox, UIDNEXT, the messages) outside
//! the archive, and removes the record once the answer is in. A run that
//! finds unanswered intents for a mailbox fingerprints it again after
//! appending and removes the surplus copies it can prove are restore's own
//! (a recorded APPENDUID, or a UID at or above the intent's UIDNEXT with
//! the key of a message the intent carried): [`surplus_copies`]. A copy
//! anyone else made is never removed. What we remember (APPENDUID, in a
//! state directory outside the archive) also saves reading archived headers
//! again for messages whose recorded UID still holds the same date.
//!
//! This file holds what restore needs from a server ([`RestoreTarget`] and
//! its plain types). Planning is pure, in `plan.rs` ([`plan_mailboxes`],
//! [`target_uids_to_hash`], [`missing_messages`]); `run.rs` reads the
//! archive ([`read_archive`]) and [`restore_account`] runs the plan on
//! `jobs` connections through [`RestoreTarget`]; `report.rs` says what
//! happened and `state.rs` keeps the APPENDUID record ([`RestoreState`]).

use std::future::Future;

use crate::sync::remote::Remote;
use crate::sync::remote::{RemoteError, Selected};

mod plan;
mod report;
mod run;
mod state;

pub use plan::{
    is_quota, is_throttle, message_id_of, missing_messages, plan_mailboxes, surplus_copies,
    target_uids_to_hash, upload_batches, upload_flags, MailboxPlan, MessageKey, Refused,
    RestoreOptions, SourceMailbox, SourceMessage, Unanswered,
};
pub use report::{RestoreMailboxReport, RestoreReport};
pub use run::{read_archive, restore_account};
pub use state::{Intent, RestoreState};

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
/// `RemoteError::is_connection_level` is false leave the connection usable.
pub trait RestoreTarget: Remote {
    /// The hierarchy delimiter of the personal namespace (`LIST "" ""`);
    /// `None` for a flat server.
    fn delimiter(&mut self) -> impl Future<Output = Result<Option<char>, RemoteError>> + Send;

    /// Creates `raw` (modified UTF-7); an existing mailbox is not an error.
    fn create(&mut self, raw: &str) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// EXAMINEs `raw` and returns what EXAMINE said (UIDVALIDITY, UIDNEXT)
    /// and every message's fingerprint, without marking anything seen.
    fn fingerprints(
        &mut self,
        raw: &str,
    ) -> impl Future<Output = Result<(Selected, Vec<TargetMessage>), RemoteError>> + Send;

    /// Removes exactly `uids` from `raw`: SELECT (refusing if UIDVALIDITY
    /// is no longer `uidvalidity`), `UID STORE +FLAGS.SILENT (\Deleted)`,
    /// `UID EXPUNGE` of those UIDs. Needs UIDPLUS (the caller checks); only
    /// ever called with copies restore itself appended.
    fn remove_copies(
        &mut self,
        raw: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;

    /// SHA-256 (hex) of the bytes of `uids` (sorted) of the selected mailbox.
    fn body_hashes(
        &mut self,
        uids: &[u32],
    ) -> impl Future<Output = Result<Vec<(u32, String)>, RemoteError>> + Send;

    /// The largest message the server accepts (APPENDLIMIT, RFC 7889).
    fn append_limit(&self) -> Option<u64> {
        None
    }

    /// Gmail only: SELECTs `raw` and gives each UID its labels with
    /// `UID STORE <uid> +X-GM-LABELS.SILENT (...)` (system labels as atoms
    /// such as `\Inbox`, user labels quoted).
    fn add_labels(
        &mut self,
        raw: &str,
        labels: &[(u32, Vec<String>)],
    ) -> impl Future<Output = Result<(), RemoteError>> + Send {
        let _ = (raw, labels);
        async { Err(RemoteError::broken("the server does not offer X-GM-EXT-1")) }
    }

    /// Appends `messages` to `raw` in order, pipelined. `on_result(i, r)`
    /// is called once per message as the server answers, with APPENDUID's
    /// (UIDVALIDITY, UID) when given; the call returns `Err` only when the
    /// connection is lost (messages without a result are then unknown).
    fn append<F>(
        &mut self,
        raw: &str,
        messages: &[Upload],
        on_result: F,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send
    where
        F: FnMut(usize, Result<Option<(u32, u32)>, RemoteError>) + Send;
}
