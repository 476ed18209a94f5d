//! What an expunge run reports: `Display` for people, `Serialize` for
//! `--json`, and the `error:`/`warning:` lines for stderr.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::plan::{percent, ExpungeAction, SkipReason};
use super::QuotaRoot;
use crate::config::Account;
use crate::exit_codes::ExitCode;
use crate::report::human_bytes;

/// Quota usage of one root's STORAGE, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaUsage {
    pub root: String,
    pub usage_bytes: u64,
    pub limit_bytes: u64,
    pub percent: f64,
}

impl QuotaUsage {
    /// The STORAGE resource of the fullest root, if any.
    pub fn of(roots: &[QuotaRoot]) -> Option<QuotaUsage> {
        roots
            .iter()
            .filter_map(|r| {
                let s = r
                    .resources
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case("STORAGE"))?;
                Some(QuotaUsage {
                    root: r.root.clone(),
                    usage_bytes: s.usage * 1024,
                    limit_bytes: s.limit * 1024,
                    percent: percent(s.usage, s.limit),
                })
            })
            .max_by(|a, b| a.percent.total_cmp(&b.percent))
    }
}

/// What happened in one mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxExpunge {
    /// The decoded mailbox name (`mailbox` in JSON).
    #[serde(rename = "mailbox")]
    pub name: String,
    pub folder: String,
    pub expunged: u64,
    pub bytes_freed: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Our own `\Deleted` marks from an interrupted run taken back because
    /// the message no longer verifies.
    pub unmarked: u64,
    /// UIDs an interrupted run recorded that now carry `\Deleted`, where
    /// that mark cannot be shown to be ours: left as they are.
    pub ambiguous_marks: Vec<u32>,
    /// UIDs another client changed between our last check and our STORE
    /// (`[MODIFIED]`, or marked meanwhile): left as they are.
    pub changed_during_run: Vec<u32>,
    /// One line per message held back for a problem in the archive (or a
    /// mark left as it is).
    pub warnings: Vec<String>,
    pub errors: Vec<String>,
}

/// What happened to one account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountExpunge {
    pub account: String,
    pub archive: String,
    /// Set when nothing could be done for the account (refusal, connection, lock).
    pub error: Option<String>,
    /// Set when the expunge was deliberately not run (after a failed pull).
    pub not_run: Option<String>,
    #[serde(skip)]
    pub code: Option<ExitCode>,
    pub quota_before: Option<QuotaUsage>,
    pub quota_after: Option<QuotaUsage>,
    pub expunged: u64,
    pub bytes_freed: u64,
    /// Candidates left for a later run by `--max` or `--free-to`.
    pub beyond_limit: u64,
    pub skipped: BTreeMap<SkipReason, u64>,
    pub mailboxes: Vec<MailboxExpunge>,
    /// Every message expunged (or that would be, on a dry run), oldest first.
    pub messages: Vec<ExpungeAction>,
}

impl AccountExpunge {
    /// An empty report for `account`.
    pub fn new(account: &Account) -> AccountExpunge {
        AccountExpunge {
            account: account.name.clone(),
            archive: account.archive.display().to_string(),
            ..Default::default()
        }
    }

    /// The report of an account where nothing could be done.
    pub fn fail(mut self, code: ExitCode, msg: String) -> AccountExpunge {
        self.code = Some(code);
        self.error = Some(msg);
        self
    }

    pub fn exit_code(&self) -> ExitCode {
        if let Some(c) = self.code {
            return c;
        }
        if self.mailboxes.iter().any(|m| !m.errors.is_empty()) {
            ExitCode::Partial
        } else {
            ExitCode::Success
        }
    }
}

/// The whole run: `Display` for people, `Serialize` for `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpungeReport {
    pub dry_run: bool,
    pub seconds: f64,
    pub accounts: Vec<AccountExpunge>,
    pub expunged: u64,
    pub bytes_freed: u64,
    pub skipped: u64,
    pub errors: u64,
    pub exit_code: i32,
}

impl ExpungeReport {
    /// Fills in the totals and the exit code.
    pub fn finish(&mut self) -> ExitCode {
        self.expunged = self.accounts.iter().map(|a| a.expunged).sum();
        self.bytes_freed = self.accounts.iter().map(|a| a.bytes_freed).sum();
        self.skipped = self.accounts.iter().flat_map(|a| a.skipped.values()).sum();
        self.errors = self
            .accounts
            .iter()
            .map(|a| {
                a.error.is_some() as u64
                    + a.mailboxes
                        .iter()
                        .map(|m| m.errors.len() as u64)
                        .sum::<u64>()
            })
            .sum();
        let code = self
            .accounts
            .iter()
            .map(AccountExpunge::exit_code)
            .max()
            .unwrap_or(ExitCode::Success);
        self.exit_code = code.code();
        code
    }
}

fn plural(n: u64, word: &str) -> String {
    let s = if n == 1 {
        word.to_string()
    } else if word.ends_with('x') {
        format!("{word}es")
    } else {
        format!("{word}s")
    };
    format!("{n} {s}")
}

fn quota_text(q: &QuotaUsage) -> String {
    format!(
        "{} of {} ({:.1}%)",
        human_bytes(q.usage_bytes),
        human_bytes(q.limit_bytes),
        q.percent
    )
}

impl fmt::Display for ExpungeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would expunge"
        } else {
            "expunged"
        };
        if self.dry_run {
            for a in &self.accounts {
                for m in &a.messages {
                    writeln!(f, "would expunge: {m}")?;
                }
            }
        }
        let mut lines = Vec::new();
        for a in &self.accounts {
            if let Some(why) = &a.not_run {
                lines.push(format!("expunge: account `{}`: not run: {why}", a.account));
                continue;
            }
            if a.error.is_some() {
                lines.push(format!("expunge: account `{}`: failed", a.account));
                continue;
            }
            let touched = a.mailboxes.iter().filter(|m| m.expunged > 0).count() as u64;
            let mut line = format!(
                "expunge: account `{}`: {verb} {} ({}) from {}",
                a.account,
                plural(a.expunged, "message"),
                human_bytes(a.bytes_freed),
                plural(touched, "mailbox"),
            );
            let skipped: u64 = a.skipped.values().sum();
            if skipped > 0 {
                let why: Vec<String> = a.skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
                line.push_str(&format!("; skipped {skipped}: {}", why.join(", ")));
            }
            if a.beyond_limit > 0 {
                line.push_str(&format!(
                    "; {} more not needed (--max / --free-to)",
                    a.beyond_limit
                ));
            }
            match (&a.quota_before, &a.quota_after) {
                (Some(b), Some(af)) if !self.dry_run => {
                    line.push_str(&format!(
                        "; quota `{}`: {} -> {}",
                        b.root,
                        quota_text(b),
                        quota_text(af)
                    ));
                }
                (Some(b), _) => {
                    line.push_str(&format!("; quota `{}`: {}", b.root, quota_text(b)));
                }
                _ => {}
            }
            lines.push(line);
        }
        lines.push(format!("expunge: done in {:.1} s", self.seconds));
        write!(f, "{}", lines.join("\n"))
    }
}

impl crate::report::Summary for ExpungeReport {
    /// `error:` and `warning:` lines for stderr.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.accounts {
            if let Some(e) = &a.error {
                out.push(format!("error: account `{}`: {e}", a.account));
            }
            for m in &a.mailboxes {
                for w in &m.warnings {
                    out.push(format!(
                        "warning: mailbox `{}` of account `{}`: {w}",
                        m.name, a.account
                    ));
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::expunge::QuotaResource;

    #[test]
    fn quota_usage_picks_the_fullest_storage_root() {
        let roots = vec![
            QuotaRoot {
                root: "a".into(),
                resources: vec![QuotaResource {
                    name: "MESSAGE".into(),
                    usage: 9,
                    limit: 10,
                }],
            },
            QuotaRoot {
                root: "b".into(),
                resources: vec![QuotaResource {
                    name: "STORAGE".into(),
                    usage: 50,
                    limit: 100,
                }],
            },
        ];
        let q = QuotaUsage::of(&roots).unwrap();
        assert_eq!(
            (q.root.as_str(), q.usage_bytes, q.percent),
            ("b", 50 * 1024, 50.0)
        );
    }
}
