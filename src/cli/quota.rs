//! `imapbak quota`: the server's quota usage and limits per quota root
//! (GETQUOTAROOT on INBOX), as a table or `--json`.

use std::fmt;
use std::sync::Arc;

use anyhow::Result;
use serde::Serialize;

use super::{load_accounts, runtime, AccountArgs, Connector};
use crate::exit_codes::ExitCode;
use crate::report::human_bytes;
use crate::sync::expunge::{percent, ExpungeRemote};
use crate::sync::pull::connect_error;

/// Show the server's quota usage and limits.
///
/// Asks GETQUOTAROOT for INBOX and prints every resource of every quota
/// root: STORAGE in bytes (the server counts KiB; imapbak converts) and
/// MESSAGE, a count of messages.
#[derive(Debug, clap::Args)]
pub struct QuotaCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    /// Print JSON on stdout: per account `supported`, `roots` (each with
    /// `resources`: `name`, `unit`, `usage`, `limit`, `percent`; STORAGE in
    /// bytes, MESSAGE in messages)
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Resource {
    name: String,
    /// `bytes` for STORAGE, `messages` for MESSAGE, else `units`: what
    /// `usage` and `limit` count.
    unit: &'static str,
    usage: u64,
    limit: u64,
    percent: f64,
}

#[derive(Debug, Serialize)]
struct Root {
    root: String,
    resources: Vec<Resource>,
}

#[derive(Debug, Serialize)]
struct AccountQuota {
    account: String,
    /// False when the server does not offer the QUOTA extension.
    supported: bool,
    roots: Vec<Root>,
    error: Option<String>,
    #[serde(skip)]
    code: ExitCode,
}

#[derive(Debug, Serialize)]
struct QuotaReport {
    accounts: Vec<AccountQuota>,
    exit_code: i32,
}

impl fmt::Display for QuotaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows = vec![[
            "ACCOUNT".to_string(),
            "QUOTA ROOT".into(),
            "RESOURCE".into(),
            "USAGE".into(),
            "LIMIT".into(),
            "USED".into(),
        ]];
        let mut notes = Vec::new();
        for a in &self.accounts {
            if a.error.is_some() {
                continue;
            }
            if !a.supported {
                notes.push(format!(
                    "account `{}`: the server does not offer QUOTA; it reports no usage or limits",
                    a.account
                ));
                continue;
            }
            if a.roots.is_empty() {
                notes.push(format!(
                    "account `{}`: no quota applies to INBOX",
                    a.account
                ));
            }
            for r in &a.roots {
                for x in &r.resources {
                    let amount = |n: u64| {
                        if x.unit == "bytes" {
                            human_bytes(n)
                        } else {
                            n.to_string()
                        }
                    };
                    rows.push([
                        a.account.clone(),
                        r.root.clone(),
                        x.name.clone(),
                        amount(x.usage),
                        amount(x.limit),
                        format!("{:.1}%", x.percent),
                    ]);
                }
            }
        }
        let mut out = Vec::new();
        if rows.len() > 1 {
            let widths: Vec<usize> = (0..6)
                .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            for r in &rows {
                let cells: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(i, (c, w))| {
                        if i >= 3 {
                            format!("{c:>w$}")
                        } else {
                            format!("{c:<w$}")
                        }
                    })
                    .collect();
                out.push(cells.join("  ").trim_end().to_string());
            }
        }
        out.extend(notes);
        write!(f, "{}", out.join("\n"))
    }
}

/// One resource as shown: STORAGE, which RFC 9208 counts in units of 1024
/// octets, converted to bytes like every other size in imapbak's output.
fn resource(x: crate::sync::expunge::QuotaResource) -> Resource {
    let (unit, scale) = match x.name.as_str() {
        "STORAGE" => ("bytes", 1024),
        "MESSAGE" => ("messages", 1),
        _ => ("units", 1),
    };
    Resource {
        percent: percent(x.usage, x.limit),
        unit,
        usage: x.usage.saturating_mul(scale),
        limit: x.limit.saturating_mul(scale),
        name: x.name,
    }
}

pub fn run(cmd: QuotaCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let accounts = load_accounts(config, &cmd.accounts)?;
    let rt = runtime()?;
    let mut report = QuotaReport {
        accounts: Vec::new(),
        exit_code: 0,
    };
    for account in accounts {
        let account = Arc::new(account);
        let mut q = AccountQuota {
            account: account.name.clone(),
            supported: false,
            roots: Vec::new(),
            error: None,
            code: ExitCode::Success,
        };
        let connector = match Connector::new(account.clone()) {
            Ok(c) => c,
            Err(e) => {
                q.error = Some(crate::report::error_text(&e));
                q.code = ExitCode::Usage;
                report.accounts.push(q);
                continue;
            }
        };
        rt.block_on(async {
            let mut conn = match connector.connect().await {
                Ok(c) => c,
                Err(e) => {
                    q.error = Some(connect_error(&account, &e));
                    q.code = ExitCode::Connection;
                    return;
                }
            };
            q.supported = conn.has_capability("QUOTA");
            if q.supported {
                match conn.quota_roots("INBOX").await {
                    Ok(roots) => {
                        q.roots = roots
                            .into_iter()
                            .map(|r| Root {
                                root: r.root,
                                resources: r.resources.into_iter().map(resource).collect(),
                            })
                            .collect();
                    }
                    Err(e) => {
                        q.error = Some(format!(
                            "GETQUOTAROOT failed: {e}\nhint: run `imapbak check` for details"
                        ));
                        q.code = ExitCode::Partial;
                    }
                }
            }
            conn.logout().await;
        });
        report.accounts.push(q);
    }
    let code = ExitCode::for_accounts(report.accounts.iter().map(|a| a.code));
    report.exit_code = code.code();
    for a in &report.accounts {
        if let Some(e) = &a.error {
            eprintln!("error: account `{}`: {e}", a.account);
        }
    }
    if cmd.json {
        println!("{}", crate::report::json_text(&report)?);
    } else {
        let text = report.to_string();
        if !text.is_empty() {
            println!("{text}");
        }
    }
    Ok(code)
}
