//! Pull: lists the account's mailboxes, then pulls them on
//! `jobs` connections at once. Per mailbox: skip it if the listing proves
//! it unchanged, mirror flag changes by renaming, then stream new messages
//! to a writer thread that compresses, fsyncs, renames into `cur/`, syncs
//! the directory and only then journals. Memory is bounded by a byte budget
//! shared by all connections: a UID FETCH is sent only once the bytes it will
//! bring are reserved, and each message gives its share back once written,
//! so what is read but not yet on disk never exceeds the budget (or the one
//! message larger than it).
//!
//! - `plan.rs`: pure: listing + archive index + options -> [`MailboxPlan`]
//! - `run.rs`: the executor, over the [`Remote`](crate::sync::remote::Remote)
//!   trait and the archive; the writer thread
//! - `report.rs`: what happened, per mailbox and account, and the summary
//!
//! Pull keeps no state of its own beyond the archive's journal and status.

pub mod monitor;
pub mod plan;
pub mod report;
mod run;
mod state;

pub use plan::MailboxPlan;
pub use report::{AccountReport, MailboxReport, PullReport};
pub use run::{connect_error, pull_account};

/// How a pull runs.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Connections used at once.
    pub jobs: usize,
    /// Plan and report, write nothing.
    pub dry_run: bool,
    /// Upper bound of one UID FETCH, in bytes of RFC822.SIZE.
    pub batch_bytes: u64,
    /// Upper bound of one UID FETCH, in messages.
    pub batch_count: usize,
    /// Bytes of fetched messages that may wait for the writers at once.
    pub memory_budget: u64,
    /// Attempts at a mailbox whose session the server ended (BYE, closed
    /// connection): 1 fails the mailbox at once; more reconnect and go on
    /// where it stopped. OAuth2 accounts need it: Microsoft ends every
    /// session when its access token expires.
    pub attempts_after_close: u32,
}

impl Default for PullOptions {
    // Measured with scripts/bench.sh on 2 cores (README, Performance): 4 jobs
    // beat 2 and match 6-8; batches of 4 MiB within a 32 MiB budget let all
    // four connections stream at once.
    fn default() -> Self {
        PullOptions {
            jobs: 4,
            dry_run: false,
            batch_bytes: 4 * 1024 * 1024,
            batch_count: 2000,
            memory_budget: 32 * 1024 * 1024,
            attempts_after_close: 1,
        }
    }
}
