//! imapbak backs up every mailbox of an IMAP account into a compressed,
//! Dovecot-servable Maildir, incrementally by UID; restores it to any IMAP
//! server; expunges from the server only what the archive verifiably holds;
//! and verifies, searches and exports the archive offline.
//!
//! ```text
//! cli/      clap definitions, one file per subcommand; maps errors to exit codes
//! config    TOML schema, password sources, resolved account settings
//! imap/     TLS, STARTTLS, login, raw commands (async-imap framing), the
//!           framing guard that bounds what a server can make us buffer;
//!           no policy
//! archive/  the compressed Maildir, file names, write protocol, journal,
//!           lock, header index, read-only views for verify/search/export
//! sync/     the Remote trait, pure planners, and the executors: pull,
//!           restore, expunge (sharing one worker pool)
//! progress  one trait; bars on a terminal, nothing elsewhere
//! report    the run summary: Display for people, Serialize for --json
//! ```
//!
//! The boundary that matters: `sync` sees the `Remote` trait and the archive,
//! never the IMAP crate, so planners are unit-tested without a server.

pub mod archive;
pub mod cli;
pub mod config;
pub mod exit_codes;
pub mod imap;
pub mod mutf7;
pub mod progress;
pub mod report;
pub mod sync;
