//! Gmail done right, in one place that pull, expunge and restore ask: every label is a folder on Gmail, plus All Mail (`\All`), so
//! a tool that backs up every folder stores each message once per label.
//! In Gmail mode (the server announces X-GM-EXT-1; account key
//! `gmail = false` turns it off) bodies come from `\All` only, once each,
//! into its folder; every label is a folder of hard links to those files,
//! so a Dovecot serving the archive shows Gmail's folders and each
//! message's bytes are on disk once. Labels come from X-GM-LABELS, and
//! label changes are mirrored by adding, removing and renaming links,
//! never by downloading a body again.
//!
//! - `plan.rs`: pure: the listing -> [`Layout`]; labels + links -> changes
//! - `run.rs`: applies the link changes to the archive
//! - `expunge.rs`: expunge's rules (free quota through Trash) and its record
//! - `restore.rs`: restore's rules (append once into `\All`, then labels,
//!   with a record of labels still to set so a killed run is finished)
//! - `throttle.rs`: the pause after `[THROTTLED]`, for all three commands
//! - `view.rs`: the archive side for ls, search, export and verify: each
//!   message once (its files share one inode), with its labels
//!
//! Spam and Trash are not labels of `\All` messages; they are pulled as
//! ordinary folders only when the account asks (`gmail-spam-and-trash`).

pub mod expunge;
pub mod plan;
pub mod restore;
mod run;
pub mod throttle;
pub mod view;

pub use expunge::{load_ids, record_ids};
pub use plan::{layout, plan_links, Layout, LinkChange};
pub use run::apply_links;
pub use throttle::Throttle;

/// Gmail allows about 2,500 MB of IMAP download a day per account
/// (PROVIDERS.md, "Limits"): the default budget stays under it.
pub const DAILY_DOWNLOAD_LIMIT: u64 = 2_400 * 1_000_000;

/// The daily download budget of a pull: the configured one (0: none), else
/// Gmail mode's default, else none.
pub fn daily_download_limit(configured: Option<u64>, gmail_mode: bool) -> Option<u64> {
    match configured {
        Some(0) => None,
        Some(n) => Some(n),
        None => gmail_mode.then_some(DAILY_DOWNLOAD_LIMIT),
    }
}

/// The selectable mailbox with special-use attribute `role`: how Gmail's
/// All Mail, Trash, Spam... are found, never by their (localised) names.
pub fn special(
    listed: &[crate::sync::remote::ListedMailbox],
    role: crate::sync::remote::SpecialUse,
) -> Option<&crate::sync::remote::ListedMailbox> {
    listed
        .iter()
        .find(|m| m.selectable && m.special_use == Some(role))
}

/// Whether a server is Gmail (X-GM-EXT-1, per Google's "IMAP Extensions").
pub fn is_gmail(has_capability: impl Fn(&str) -> bool) -> bool {
    has_capability("X-GM-EXT-1")
}
