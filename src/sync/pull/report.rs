//! What a pull did, per mailbox and per account, and the run's summary:
//! `Display` is the one line people and cron read, `Serialize` the `--json`
//! object documented in imapbak-pull(1).

use std::fmt;

use serde::Serialize;

use crate::exit_codes::ExitCode;
use crate::report::{human_bytes, Summary};

/// What happened to one mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxReport {
    /// The decoded mailbox name (`mailbox` in JSON, as in every other
    /// command's output).
    #[serde(rename = "mailbox")]
    pub name: String,
    /// Its folder under `mail/` (empty for INBOX).
    pub folder: String,
    /// `fetched`, `unchanged`, `planned` (dry run) or `failed`.
    pub outcome: &'static str,
    /// Messages downloaded and archived (or, on a dry run, that would be).
    pub fetched: u64,
    /// Their uncompressed size in bytes.
    pub bytes: u64,
    /// Their size on disk after compression.
    pub bytes_on_disk: u64,
    /// Archived files renamed because flags changed on the server.
    pub flag_updates: u64,
    /// Messages not stored again because their bytes were already archived
    /// (after a UIDVALIDITY change).
    pub deduplicated: u64,
    pub uidvalidity_changed: bool,
    pub errors: Vec<String>,
}

/// What happened to one account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountReport {
    pub account: String,
    /// For a user of a multi-user table: the login name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ok`, `failed` (nothing pulled), `partial` (some mailboxes or
    /// messages failed), `locked` (skipped: another run holds the archive)
    /// or `incomplete` (daily download limit); set by [`PullReport::finish`].
    pub outcome: &'static str,
    pub archive: String,
    /// Set when the whole account failed (connection, login, lock).
    pub error: Option<String>,
    /// The exit code this account alone would give.
    #[serde(skip)]
    pub code: Option<ExitCode>,
    pub mailboxes: Vec<MailboxReport>,
    /// Stopped at the daily download limit: the next run continues.
    pub incomplete: bool,
    /// Bytes the daily limit left for the next run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_left: Option<u64>,
    /// The daily download limit, when it stopped the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_limit: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullReport {
    pub dry_run: bool,
    pub seconds: f64,
    pub accounts: Vec<AccountReport>,
    pub mailboxes: u64,
    pub fetched: u64,
    pub bytes: u64,
    pub bytes_on_disk: u64,
    pub flag_updates: u64,
    pub errors: u64,
    /// Some account stopped at its daily download limit.
    pub incomplete: bool,
    pub exit_code: i32,
}

impl AccountReport {
    /// What [`AccountReport::outcome`] says, from the exit code.
    pub fn outcome_word(&self) -> &'static str {
        match self.exit_code() {
            ExitCode::Success => "ok",
            ExitCode::Partial => "partial",
            ExitCode::Locked => "locked",
            ExitCode::DailyLimit => "incomplete",
            _ => "failed",
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        if let Some(code) = self.code {
            return code;
        }
        if self.mailboxes.iter().any(|m| !m.errors.is_empty()) {
            ExitCode::Partial
        } else {
            ExitCode::Success
        }
    }
}

impl PullReport {
    /// Fills in the totals and the exit code from the accounts.
    pub fn finish(&mut self) -> ExitCode {
        let all = self.accounts.iter().flat_map(|a| a.mailboxes.iter());
        self.mailboxes = 0;
        for m in all {
            self.mailboxes += 1;
            self.fetched += m.fetched;
            self.bytes += m.bytes;
            self.bytes_on_disk += m.bytes_on_disk;
            self.flag_updates += m.flag_updates;
            self.errors += m.errors.len() as u64;
        }
        self.errors += self.accounts.iter().filter(|a| a.error.is_some()).count() as u64;
        self.incomplete = self.accounts.iter().any(|a| a.incomplete);
        for a in &mut self.accounts {
            a.outcome = a.outcome_word();
        }
        let code = ExitCode::for_accounts(self.accounts.iter().map(AccountReport::exit_code));
        self.exit_code = code.code();
        code
    }
}

impl Summary for PullReport {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.accounts {
            if let Some(e) = &a.error {
                // Another run is pulling it: skipped, not lost.
                let what = if a.code == Some(ExitCode::Locked) {
                    "skipped"
                } else {
                    "error"
                };
                out.push(format!("{what}: account `{}`: {e}", a.account));
            }
            for m in &a.mailboxes {
                for e in &m.errors {
                    out.push(format!(
                        "error: mailbox `{}` of account `{}`: {e}",
                        m.name, a.account
                    ));
                }
            }
        }
        out
    }
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would fetch"
        } else {
            "fetched"
        };
        let accounts = self.accounts.len();
        for a in self.accounts.iter().filter(|a| a.incomplete) {
            writeln!(
                f,
                "pull: INCOMPLETE: account `{}` reached its daily download limit ({}); {} left for the next run",
                a.account,
                human_bytes(a.daily_limit.unwrap_or(0)),
                human_bytes(a.download_left.unwrap_or(0))
            )?;
        }
        let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        if self.fetched == 0 && self.flag_updates == 0 && self.errors == 0 {
            return write!(
                f,
                "pull: nothing new in {} ({}), {:.1} s",
                plural(self.mailboxes, "mailbox").replace("mailboxs", "mailboxes"),
                plural(accounts as u64, "account"),
                self.seconds
            );
        }
        // Where mail came from, of how many looked at; a dry run writes
        // nothing, so it has no size on disk to tell.
        let from = self
            .accounts
            .iter()
            .flat_map(|a| a.mailboxes.iter())
            .filter(|m| m.fetched > 0)
            .count() as u64;
        let size = if self.dry_run {
            human_bytes(self.bytes)
        } else {
            format!(
                "{}, {} on disk",
                human_bytes(self.bytes),
                human_bytes(self.bytes_on_disk)
            )
        };
        write!(
            f,
            "pull: {verb} {} ({size}) from {from} of {}, {}, {} in {:.1} s",
            plural(self.fetched, "message"),
            plural(self.mailboxes, "mailbox").replace("mailboxs", "mailboxes"),
            plural(self.flag_updates, "flag update"),
            plural(self.errors, "error"),
            self.seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_change_run_is_one_line_saying_so() {
        let mut r = PullReport {
            accounts: vec![AccountReport {
                account: "a".into(),
                mailboxes: vec![MailboxReport::default(), MailboxReport::default()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(r.finish(), ExitCode::Success);
        let text = r.to_string();
        assert!(
            text.starts_with("pull: nothing new in 2 mailboxes (1 account)"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn a_failed_mailbox_makes_a_partial_exit_and_is_named() {
        let mut r = PullReport {
            accounts: vec![AccountReport {
                account: "a".into(),
                mailboxes: vec![MailboxReport {
                    name: "Box".into(),
                    errors: vec!["boom".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(r.finish(), ExitCode::Partial);
        assert!(r.problems()[0].contains("`Box`"));
    }

    #[test]
    fn summary_counts_the_mailboxes_mail_came_from_and_a_dry_run_has_no_size_on_disk() {
        let fetched = |n| MailboxReport {
            fetched: n,
            bytes: 100 * n,
            ..Default::default()
        };
        let mut r = PullReport {
            accounts: vec![AccountReport {
                account: "a".into(),
                mailboxes: vec![fetched(2), fetched(0), fetched(1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        r.finish();
        let text = r.to_string();
        assert!(text.contains("from 2 of 3 mailboxes"), "{text}");
        assert!(text.contains("on disk"), "{text}");
        r.dry_run = true;
        let text = r.to_string();
        assert!(
            text.starts_with("pull: would fetch 3 messages (300 B) from 2 of 3"),
            "{text}"
        );
        assert!(!text.contains("on disk"), "{text}");
    }
}
