//! What monitoring reads after a pull, without parsing logs: each archive's
//! `state/last-pull.json` (that account's object of the `--json` report,
//! with when the run finished and when the account last pulled without a
//! failure), and `--metrics FILE`, a Prometheus node-exporter textfile with
//! a few gauges per account (the common way to alert on a cron job).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::report::{AccountReport, PullReport};
use crate::archive::{Archive, ArchiveError};
use crate::exit_codes::ExitCode;

/// The file in an archive's `state/` that holds its last pull's report.
pub const LAST_PULL: &str = "last-pull.json";

/// `state/last-pull.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LastPull {
    /// Unix time the pull of this account ended.
    pub finished: i64,
    /// Unix time of the last pull of this account without any failure
    /// (this one or an earlier one); null before the first.
    pub last_success: Option<i64>,
    /// The exit status this account alone would give.
    pub exit_code: i32,
    /// This account's object of `pull --json` (`accounts[i]`).
    pub account: serde_json::Value,
}

/// When `archive` last pulled without a failure, from its last report.
pub fn last_success(archive: &Archive) -> Option<i64> {
    let text = std::fs::read(archive.state_dir().join(LAST_PULL)).ok()?;
    serde_json::from_slice::<LastPull>(&text).ok()?.last_success
}

/// The account's last success after this run ended at `now`.
pub fn success_after(report: &AccountReport, before: Option<i64>, now: i64) -> Option<i64> {
    if report.exit_code() == ExitCode::Success {
        Some(now)
    } else {
        before
    }
}

/// Writes `state/last-pull.json` into an archive that exists and that no
/// other run holds (the lock is taken again for the write; a run that holds
/// it writes its own report). Returns whether it was written.
pub fn save_last_pull(
    archive: &Archive,
    report: &AccountReport,
    last_success: Option<i64>,
    now: i64,
) -> Result<bool, ArchiveError> {
    if !archive.state_dir().is_dir() {
        return Ok(false);
    }
    let Ok(_lock) = archive.lock() else {
        return Ok(false);
    };
    let record = LastPull {
        finished: now,
        last_success,
        exit_code: report.exit_code().code(),
        account: crate::report::json_value(report).expect("a report serialises"),
    };
    let mut value = serde_json::to_value(&record).expect("a report serialises");
    if let serde_json::Value::Object(map) = &mut value {
        map.shift_insert(0, "schema".into(), crate::report::JSON_SCHEMA.into());
        // The account object's own stamp is the file's.
        if let Some(serde_json::Value::Object(a)) = map.get_mut("account") {
            a.shift_remove("schema");
        }
    }
    let bytes = serde_json::to_vec_pretty(&value).expect("a report serialises");
    crate::archive::write_atomic(&archive.state_dir().join(LAST_PULL), &bytes)?;
    Ok(true)
}

/// One account's line of the metrics file.
#[derive(Debug, Clone)]
pub struct AccountMetrics {
    pub account: String,
    pub user: String,
    pub last_success: Option<i64>,
    pub fetched: u64,
    pub bytes: u64,
    pub errors: u64,
    pub exit_code: i32,
}

impl AccountMetrics {
    pub fn of(report: &AccountReport, user: &str, last_success: Option<i64>) -> AccountMetrics {
        AccountMetrics {
            account: report.account.clone(),
            user: user.to_string(),
            last_success,
            fetched: report.mailboxes.iter().map(|m| m.fetched).sum(),
            bytes: report.mailboxes.iter().map(|m| m.bytes).sum(),
            errors: report
                .mailboxes
                .iter()
                .map(|m| m.errors.len() as u64)
                .sum::<u64>()
                + u64::from(report.error.is_some()),
            exit_code: report.exit_code().code(),
        }
    }
}

/// A label value as the text format wants it: `\`, `"` and a line break
/// escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The textfile (Prometheus text exposition format 0.0.4): per account its
/// last success time, what this run fetched, its errors and exit status;
/// for the run, when it ended, how long it took and its exit status.
pub fn metrics_text(run: &PullReport, accounts: &[AccountMetrics], now: i64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let labels = |a: &AccountMetrics| {
        format!(
            "{{account=\"{}\",user=\"{}\"}}",
            label(&a.account),
            label(&a.user)
        )
    };
    let per = |f: &dyn Fn(&AccountMetrics) -> Option<String>| {
        accounts
            .iter()
            .filter_map(|a| f(a).map(|v| (labels(a), v)))
            .collect::<Vec<_>>()
    };
    family(
        "imapbak_pull_last_success_timestamp_seconds",
        "Unix time of the account's last pull without any failure.",
        per(&|a| a.last_success.map(|t| t.to_string())),
    );
    family(
        "imapbak_pull_fetched_messages",
        "Messages the last pull downloaded for the account.",
        per(&|a| Some(a.fetched.to_string())),
    );
    family(
        "imapbak_pull_fetched_bytes",
        "Bytes (uncompressed) the last pull downloaded for the account.",
        per(&|a| Some(a.bytes.to_string())),
    );
    family(
        "imapbak_pull_errors",
        "Failures of the last pull of the account (the account, its mailboxes, its messages).",
        per(&|a| Some(a.errors.to_string())),
    );
    family(
        "imapbak_pull_account_exit_code",
        "Exit status the last pull of the account alone would give (0 ok, 1 partial, 3 login, 4 locked).",
        per(&|a| Some(a.exit_code.to_string())),
    );
    family(
        "imapbak_pull_run_timestamp_seconds",
        "Unix time the last pull run ended.",
        vec![(String::new(), now.to_string())],
    );
    family(
        "imapbak_pull_run_duration_seconds",
        "How long the last pull run took.",
        vec![(String::new(), format!("{:.3}", run.seconds))],
    );
    family(
        "imapbak_pull_run_exit_code",
        "Exit status of the last pull run.",
        vec![(String::new(), run.exit_code.to_string())],
    );
    out
}

/// Writes `text` to `path` atomically (a temporary file beside it, which
/// the textfile collector ignores as it does not end in `.prom`, then a
/// rename), readable by all: node-exporter runs as a user of its own.
pub fn write_metrics(path: &Path, text: &str) -> Result<(), ArchiveError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("metrics");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(ArchiveError::io("cannot create", &tmp))?;
    // Whatever the umask (a unit's UMask=0077): node-exporter must read it.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(ArchiveError::io("cannot chmod", &tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(ArchiveError::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(ArchiveError::io("cannot rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::super::report::MailboxReport;
    use super::*;

    fn account(name: &str, fetched: u64, error: Option<&str>) -> AccountReport {
        AccountReport {
            account: name.into(),
            error: error.map(str::to_string),
            code: error.map(|_| ExitCode::Connection),
            mailboxes: vec![MailboxReport {
                fetched,
                bytes: 10 * fetched,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn metrics_hold_one_line_per_account_and_escape_labels() {
        let ok = account("staff/joe", 3, None);
        let bad = account("staff/a\"b", 0, Some("login failed"));
        let run = PullReport {
            seconds: 1.5,
            exit_code: 1,
            ..Default::default()
        };
        let rows = [
            AccountMetrics::of(&ok, "joe", Some(100)),
            AccountMetrics::of(&bad, "a\"b", None),
        ];
        let text = metrics_text(&run, &rows, 200);
        assert!(text.contains(
            "imapbak_pull_last_success_timestamp_seconds{account=\"staff/joe\",user=\"joe\"} 100\n"
        ));
        // No success yet: no sample, rather than a misleading 0.
        assert!(!text.contains("last_success_timestamp_seconds{account=\"staff/a"));
        assert!(
            text.contains("imapbak_pull_fetched_bytes{account=\"staff/joe\",user=\"joe\"} 30\n")
        );
        assert!(text.contains("imapbak_pull_errors{account=\"staff/a\\\"b\",user=\"a\\\"b\"} 1\n"));
        assert!(text.contains("imapbak_pull_run_exit_code 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn last_success_is_kept_across_a_failed_run() {
        let ok = account("a", 1, None);
        let bad = account("a", 0, Some("boom"));
        assert_eq!(success_after(&ok, Some(5), 9), Some(9));
        assert_eq!(success_after(&bad, Some(5), 9), Some(5));
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        // No archive yet: nothing is written.
        assert!(!save_last_pull(&archive, &bad, None, 1).unwrap());
        archive.create().unwrap();
        assert!(save_last_pull(&archive, &ok, Some(7), 7).unwrap());
        assert_eq!(last_success(&archive), Some(7));
        // Another run holding the archive keeps its own report.
        let _held = archive.lock().unwrap();
        assert!(!save_last_pull(&archive, &bad, Some(7), 8).unwrap());
    }
}
