//! What a restore did, per mailbox and in total: `Display` for people
//! (and for `--dry-run`), `Serialize` for `--json`.

use std::fmt;

use serde::Serialize;

use crate::exit_codes::ExitCode;
use crate::report::human_bytes;

/// What happened to one mailbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreMailboxReport {
    /// The archived mailbox (levels joined by `/`).
    pub source: String,
    /// The target mailbox (decoded).
    pub target: String,
    /// `restored`, `unchanged`, `planned` (dry run), `failed` or `skipped`.
    pub outcome: &'static str,
    /// The target mailbox was (or, on a dry run, would be) created.
    pub created: bool,
    /// Messages appended (or, on a dry run, that would be).
    pub appended: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Archived messages (after the filters) already on the target.
    pub present: u64,
    /// Extra copies removed: ones an interrupted run's APPENDs added after
    /// this run had looked (see `surplus_copies`).
    pub removed: u64,
    /// One line per failure, with the server's words.
    pub errors: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// The account whose archive was read.
    pub account: String,
    /// The account restored into.
    pub target: String,
    pub dry_run: bool,
    pub seconds: f64,
    /// Set when the whole run failed or stopped (connection, quota).
    pub error: Option<String>,
    pub mailboxes: Vec<RestoreMailboxReport>,
    pub created: u64,
    pub appended: u64,
    pub bytes: u64,
    pub present: u64,
    pub removed: u64,
    pub errors: u64,
    pub exit_code: i32,
    #[serde(skip)]
    pub code: Option<ExitCode>,
}

impl RestoreReport {
    /// Fills in the totals and the exit code.
    pub fn finish(&mut self) -> ExitCode {
        self.created = self.mailboxes.iter().filter(|m| m.created).count() as u64;
        self.appended = self.mailboxes.iter().map(|m| m.appended).sum();
        self.bytes = self.mailboxes.iter().map(|m| m.bytes).sum();
        self.present = self.mailboxes.iter().map(|m| m.present).sum();
        self.removed = self.mailboxes.iter().map(|m| m.removed).sum();
        self.errors = self
            .mailboxes
            .iter()
            .map(|m| m.errors.len() as u64)
            .sum::<u64>()
            + self.error.is_some() as u64;
        let code = match self.code {
            Some(c) => c,
            None if self.errors > 0 => ExitCode::Partial,
            None => ExitCode::Success,
        };
        self.exit_code = code.code();
        code
    }
}

impl fmt::Display for RestoreMailboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created {
            writeln!(f, "create `{}`", self.target)?;
        }
        write!(
            f,
            "append {} message{} ({}) from `{}` to `{}`, {} already there",
            self.appended,
            if self.appended == 1 { "" } else { "s" },
            human_bytes(self.bytes),
            self.source,
            self.target,
            self.present
        )
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            for m in &self.mailboxes {
                if m.outcome == "planned" {
                    writeln!(f, "{m}")?;
                }
            }
        }
        let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "restore: {} {} ({}) into `{}` from the archive of `{}`, {} {}, {} already there, {} in {:.1} s",
            if self.dry_run { "would append" } else { "appended" },
            plural(self.appended, "message"),
            human_bytes(self.bytes),
            self.target,
            self.account,
            plural(self.created, "mailbox").replace("mailboxs", "mailboxes"),
            if self.dry_run { "to create" } else { "created" },
            self.present,
            plural(self.errors, "error"),
            self.seconds
        )?;
        if self.removed > 0 {
            write!(
                f,
                " ({} left by an interrupted run removed)",
                plural(self.removed, "extra copy").replace("copys", "copies")
            )?;
        }
        Ok(())
    }
}

impl crate::report::Summary for RestoreReport {
    /// One `error:` line per failure, for stderr.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(e) = &self.error {
            out.push(format!("error: restore of `{}`: {e}", self.account));
        }
        for m in &self.mailboxes {
            for e in &m.errors {
                out.push(format!("error: mailbox `{}`: {e}", m.source));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Summary;

    #[test]
    fn dry_run_prints_each_planned_mailbox_then_the_totals() {
        let mut r = RestoreReport {
            account: "a".into(),
            target: "b".into(),
            dry_run: true,
            seconds: 1.5,
            mailboxes: vec![
                RestoreMailboxReport {
                    source: "INBOX".into(),
                    target: "Restored/INBOX".into(),
                    outcome: "planned",
                    created: true,
                    appended: 2,
                    bytes: 2048,
                    present: 1,
                    removed: 0,
                    errors: vec![],
                },
                RestoreMailboxReport {
                    source: "Junk".into(),
                    outcome: "skipped",
                    errors: vec!["not restored: why".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(r.finish(), ExitCode::Partial);
        assert_eq!(
            r.to_string(),
            "create `Restored/INBOX`\n\
             append 2 messages (2.0 kB) from `INBOX` to `Restored/INBOX`, 1 already there\n\
             restore: would append 2 messages (2.0 kB) into `b` from the archive of `a`, \
             1 mailbox to create, 1 already there, 1 error in 1.5 s"
        );
        assert_eq!(r.problems(), ["error: mailbox `Junk`: not restored: why"]);
    }
}
