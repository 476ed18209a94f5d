//! The summary of a run: `Display` for people (one line when all went
//! well), `Serialize` for `--json` (the object documented in the man page).

use std::fmt;

use serde::Serialize;

use crate::exit_codes::ExitCode;

/// A run's summary as every subcommand prints it: problems to stderr, then
/// JSON (`--json`) or one human line to stdout (none with `--quiet`).
pub trait Summary: fmt::Display + Serialize {
    /// One `error:` (or `warning:`) line per problem, for stderr.
    fn problems(&self) -> Vec<String>;

    fn print(&self, json: bool, quiet: bool) -> serde_json::Result<()> {
        for line in self.problems() {
            eprintln!("{line}");
        }
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else if !quiet {
            println!("{self}");
        }
        Ok(())
    }
}

/// What happened to one mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxReport {
    /// The decoded mailbox name.
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
    pub archive: String,
    /// Set when the whole account failed (connection, login, lock).
    pub error: Option<String>,
    /// The exit code this account alone would give.
    #[serde(skip)]
    pub code: Option<ExitCode>,
    pub mailboxes: Vec<MailboxReport>,
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
    pub exit_code: i32,
}

impl AccountReport {
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
        let code = self
            .accounts
            .iter()
            .map(AccountReport::exit_code)
            .max()
            .unwrap_or(ExitCode::Success);
        self.exit_code = code.code();
        code
    }
}

/// An error chain as one `cause: cause: ...` line, with any `hint:` lines
/// (which context messages may carry) moved after it, so the hint is the
/// last thing the user reads.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut causes = Vec::new();
    let mut hints = Vec::new();
    for layer in e.chain() {
        for line in layer.to_string().lines() {
            if line.starts_with("hint:") {
                hints.push(line.to_string());
            } else if !line.trim().is_empty() {
                causes.push(line.to_string());
            }
        }
    }
    let mut out = causes.join(": ");
    for h in hints {
        out.push('\n');
        out.push_str(&h);
    }
    out
}

/// Bytes in human units (base 1000, as `ls -h --si`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl Summary for PullReport {
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.accounts {
            if let Some(e) = &a.error {
                out.push(format!("error: account `{}`: {e}", a.account));
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
        write!(
            f,
            "pull: {verb} {} ({}, {} on disk) in {}, {}, {} in {:.1} s",
            plural(self.fetched, "message"),
            human_bytes(self.bytes),
            human_bytes(self.bytes_on_disk),
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
    fn hints_come_after_the_whole_cause_chain() {
        let e = anyhow::anyhow!("no such file")
            .context("cannot read `x.toml`\nhint: pass --config PATH");
        assert_eq!(
            error_text(&e),
            "cannot read `x.toml`: no such file\nhint: pass --config PATH"
        );
    }

    #[test]
    fn human_bytes_uses_si_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
