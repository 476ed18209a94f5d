//! The contract between the sync engine and a mail server. The engine sees
//! only this trait and these plain types, never the IMAP crate, so planners
//! and executors can be driven by a fake in unit tests (the shape follows
//! isync's `driver.h`: a table of store operations, each with its contract).

use std::borrow::Cow;
use std::future::Future;

use chrono::{DateTime, FixedOffset};

/// A failure reported through a remote trait. What the engine acts on is
/// the [`ErrorKind`] (whether the connection survives, whether it happened
/// while connecting) and, for NO and BYE, the server's own text; the rest is
/// for people. The IMAP layer converts its errors into this type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    kind: ErrorKind,
    message: String,
    server_text: Option<String>,
    hint: Option<Cow<'static, str>>,
}

/// What kind of failure a [`RemoteError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the command (NO); the connection is still usable.
    Refused,
    /// The server rejected the command as malformed (BAD); still usable.
    Rejected,
    /// The server ended the session (BYE).
    Closed,
    /// The server could not be reached.
    Unreachable,
    /// The server did not answer in time.
    Timeout,
    /// TLS could not be set up or the certificate was not trusted.
    Tls,
    /// The server would have us skip TLS or authentication.
    Insecure,
    /// The server refused the credentials.
    Auth,
    /// Anything else that ends the connection: lost, protocol error, I/O.
    Broken,
}

impl RemoteError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
            server_text: None,
            hint: None,
        }
    }

    /// A failure that ends the connection (the archive writer stopped, a
    /// fake's cut).
    pub fn broken(message: impl Into<String>) -> RemoteError {
        RemoteError::new(ErrorKind::Broken, message)
    }

    /// The server's text of a NO or BYE, for the engine to recognise
    /// quota and throttling replies by.
    pub fn with_server_text(mut self, text: impl Into<String>) -> RemoteError {
        self.server_text = Some(text.into());
        self
    }

    /// What the user can do about it, for the account-level error line.
    pub fn with_hint(mut self, hint: impl Into<Cow<'static, str>>) -> RemoteError {
        self.hint = Some(hint.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn server_text(&self) -> Option<&str> {
        self.server_text.as_deref()
    }

    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// True when the connection cannot be used any more.
    pub fn is_connection_level(&self) -> bool {
        !matches!(self.kind, ErrorKind::Refused | ErrorKind::Rejected)
    }
}

/// One mailbox as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMailbox {
    /// The name exactly as the server sent it (modified UTF-7): what we send back.
    pub raw: String,
    /// The decoded Unicode name, levels joined by `delimiter`.
    pub name: String,
    pub delimiter: Option<char>,
    /// False for `\Noselect` / `\NonExistent` entries.
    pub selectable: bool,
    /// Present when the server answered LIST-STATUS (RFC 5819) or STATUS.
    pub status: Option<MailboxStatus>,
    /// The special-use attribute the server gave it (RFC 6154), if any.
    pub special_use: Option<SpecialUse>,
}

/// What a mailbox is for (RFC 6154 and Gmail's `\Important`). Localised
/// servers name these mailboxes in the user's language: find them by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum SpecialUse {
    All,
    Archive,
    Drafts,
    Flagged,
    Junk,
    Sent,
    Trash,
    Important,
}

/// Gmail's view of one message of `\All` (X-GM-EXT-1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GmailMeta {
    pub uid: u32,
    /// X-GM-MSGID: the same for the message in every folder.
    pub msgid: u64,
    /// X-GM-THRID: its thread.
    pub thrid: u64,
    /// X-GM-LABELS, unescaped: system labels as `\Inbox`, `\Sent`,
    /// `\Draft`, `\Starred`, `\Important`; user labels by name.
    pub labels: Vec<String>,
    pub flags: Vec<String>,
}

/// The personal namespace (RFC 2342): `INBOX.` with `.` on Courier and
/// Debian's Cyrus, empty with `/` on most others.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Namespace {
    /// Decoded, delimiter included (`INBOX.`); empty for none.
    pub prefix: String,
    pub delimiter: Option<char>,
}

/// What STATUS says about a mailbox without selecting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailboxStatus {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: u32,
    /// Only from servers with CONDSTORE.
    pub highestmodseq: Option<u64>,
}

/// What EXAMINE says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selected {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub exists: u32,
    pub highestmodseq: Option<u64>,
}

/// What to ask together with an EXAMINE ([`Remote::examine_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlongWith {
    /// `Some(None)`: every message's flags; `Some(Some(m))`: those changed
    /// since MODSEQ `m`; `None`: no flags.
    pub flags: Option<Option<u64>>,
    /// UIDs and sizes from this UID on.
    pub sizes_from: Option<u32>,
}

/// The answers to [`Remote::examine_with`].
#[derive(Debug, Clone, Default)]
pub struct Examination {
    pub selected: Selected,
    pub flags: Vec<RemoteFlags>,
    pub sizes: Vec<(u32, u32)>,
}

/// Flags of one message, as `UID FETCH (FLAGS)` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFlags {
    pub uid: u32,
    pub flags: Vec<String>,
}

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    pub flags: Vec<String>,
    pub internaldate: DateTime<FixedOffset>,
    /// RFC822.SIZE as the server reported it.
    pub size: u32,
    /// The exact bytes of `BODY[]`.
    pub body: Vec<u8>,
}

/// Where fetched messages go; `send` waits while the consumer is behind,
/// which is what bounds memory.
pub trait MessageSink {
    /// Hands over one message; an error means the consumer has stopped.
    fn send(&self, msg: FetchedMessage) -> impl Future<Output = Result<(), RemoteError>> + Send;
}

/// The operations pull needs from a server. Every call either completes or
/// returns an error; `RemoteError::is_connection_level` says whether the
/// connection survives it.
pub trait Remote: Send {
    /// True if the server announced `cap` (upper case, e.g. `CONDSTORE`).
    fn has_capability(&self, cap: &str) -> bool;

    /// The personal namespace, when the server told it (NAMESPACE).
    fn namespace(&self) -> Option<Namespace> {
        None
    }

    /// Turns on what is put off until a connection has work (COMPRESS on a
    /// slow link: a no-change run never needs it). Called by the pool
    /// before each item that uses the server; the default has nothing to do.
    fn prepare_for_work(&mut self) -> impl Future<Output = Result<(), RemoteError>> + Send {
        async { Ok(()) }
    }

    /// Every mailbox, with status when the server can give it in the same
    /// round trip (LIST-STATUS).
    fn list(&mut self) -> impl Future<Output = Result<Vec<ListedMailbox>, RemoteError>> + Send;

    /// Opens `raw` read-only (EXAMINE, with CONDSTORE when offered).
    fn examine(&mut self, raw: &str) -> impl Future<Output = Result<Selected, RemoteError>> + Send;

    /// EXAMINE, then what `along` asks, as one flight where the server
    /// allows (pipelined: one round trip instead of three). The flags and
    /// sizes are of the mailbox as it is now; a caller whose guess of the
    /// generation was wrong asks again. The default sends them one by one.
    fn examine_with(
        &mut self,
        raw: &str,
        along: AlongWith,
    ) -> impl Future<Output = Result<Examination, RemoteError>> + Send {
        async move {
            let selected = self.examine(raw).await?;
            let flags = match along.flags {
                Some(since) if selected.exists > 0 => self.flags(since).await?,
                _ => Vec::new(),
            };
            let sizes = match along.sizes_from {
                Some(from) if selected.exists > 0 => self.uid_sizes(from).await?,
                _ => Vec::new(),
            };
            Ok(Examination {
                selected,
                flags,
                sizes,
            })
        }
    }

    /// UIDs and RFC822.SIZE of the selected mailbox's messages with UID >= `from`.
    fn uid_sizes(
        &mut self,
        from: u32,
    ) -> impl Future<Output = Result<Vec<(u32, u32)>, RemoteError>> + Send;

    /// Flags of every message of the selected mailbox, or only of those
    /// changed since `changed_since` (CONDSTORE).
    fn flags(
        &mut self,
        changed_since: Option<u64>,
    ) -> impl Future<Output = Result<Vec<RemoteFlags>, RemoteError>> + Send;

    /// Fetches `uids` (sorted) of the selected mailbox, handing each to `sink`
    /// as it arrives. Responses for UIDs not asked for are ignored; a body
    /// larger than `max_size` is an error for the whole call.
    fn fetch<S: MessageSink + Sync>(
        &mut self,
        uids: &[u32],
        max_size: u64,
        sink: &S,
    ) -> impl Future<Output = Result<Vec<u32>, RemoteError>> + Send;

    /// Which of `uids` the selected mailbox still holds (asked after a
    /// FETCH left some out). The default claims all of them, which keeps
    /// them due for the next run.
    fn still_there(
        &mut self,
        uids: &[u32],
    ) -> impl Future<Output = Result<Vec<u32>, RemoteError>> + Send {
        let all = uids.to_vec();
        async move { Ok(all) }
    }

    /// True (once) when a command since the last call completed with
    /// `OK ... [THROTTLED]` (Gmail): the server asks the client to slow down.
    fn take_throttled(&mut self) -> bool {
        false
    }

    /// Gmail only: UID, flags, X-GM-MSGID, X-GM-THRID and X-GM-LABELS of
    /// every message of the selected mailbox, or of those changed since
    /// `changed_since` (CONDSTORE). Other servers: an error.
    fn gmail_meta(
        &mut self,
        changed_since: Option<u64>,
    ) -> impl Future<Output = Result<Vec<GmailMeta>, RemoteError>> + Send {
        let _ = changed_since;
        async { Err(RemoteError::broken("the server does not offer X-GM-EXT-1")) }
    }

    /// Ends the session politely; errors are ignored.
    fn logout(self) -> impl Future<Output = ()> + Send;
}
