//! The sync engine, one folder per command with the same files in each:
//! `plan.rs` (pure: listing + archive state + options -> a plan whose
//! actions implement `Display` and `Serialize`), `run.rs` (applies the plan
//! through traits), `report.rs`, and `state.rs` where the command keeps
//! state of its own. Shared: the [`remote::Remote`] trait and its plain
//! types, [`pool`] (queue, connect on demand, retry) and [`mailboxes`]
//! (which listed mailboxes a run works on), [`interrupt`] (the
//! Ctrl-C/SIGTERM flag every executor checks before a new command) and
//! [`memory`] (the byte budget and the allocator tuning that bound memory).
//!
//! Nothing here imports the IMAP layer: the engine sees traits and plain
//! types only (checked by `sync_and_archive_never_import_imap` in lib.rs).

pub mod expunge;
pub mod gmail;
pub mod interrupt;
pub mod mailboxes;
pub mod memory;
pub mod pool;
pub mod pull;
pub mod remote;
pub mod restore;
