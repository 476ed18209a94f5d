//! `imapbak check`: prove the configuration works before cron relies on it.

use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::{load_accounts, runtime, AccountArgs, Connector};
use crate::archive::Archive;
use crate::exit_codes::ExitCode;
use crate::sync::mailboxes::{choose_mailboxes_in, Naming};
use crate::sync::pull::connect_error;
use crate::sync::remote::Remote;

/// Connect, log in, and show capabilities and the mailboxes pull would back up.
///
/// Nothing is written. Use it after editing the configuration.
#[derive(Debug, clap::Args)]
pub struct CheckCmd {
    #[command(flatten)]
    accounts: AccountArgs,
}

pub fn run(cmd: CheckCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let accounts = load_accounts(config, &cmd.accounts)?;
    let rt = runtime()?;
    let mut codes = Vec::new();
    for account in accounts {
        let account = Arc::new(account);
        let connector = match Connector::new(account.clone()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "error: account `{}`: {}",
                    account.name,
                    crate::report::error_text(&e)
                );
                codes.push(ExitCode::Usage);
                continue;
            }
        };
        let result = rt.block_on(async {
            let (mut conn, token) = connector
                .connect_reporting()
                .await
                .map_err(|e| anyhow!(connect_error(&account, &e)))?;
            let login = super::login::describe(conn.login_mechanism(), token.as_ref());
            let listed = conn.list().await?;
            let caps = conn.capabilities();
            let namespace = conn.namespace();
            conn.logout().await;
            Ok::<_, anyhow::Error>((listed, caps, namespace, login))
        });
        let (listed, caps, namespace, login) = match result {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "error: account `{}`: {}",
                    account.name,
                    crate::report::error_text(&e)
                );
                codes.push(ExitCode::Connection);
                continue;
            }
        };
        println!(
            "account `{}`: logged in to {}:{} as {}",
            account.name, account.host, account.port, account.user
        );
        if let Some(login) = login {
            println!("  {login}");
        }
        println!("  archive: {}", account.archive.display());
        println!("  capabilities: {}", caps.join(" "));
        if let Some(ns) = namespace.as_ref().filter(|n| !n.prefix.is_empty()) {
            println!(
                "  namespace: `{}` (not part of folder names in the archive)",
                ns.prefix
            );
        }
        let (targets, refused) = choose_mailboxes_in(
            &listed,
            &Naming::for_archive(namespace.as_ref(), &Archive::at(&account.archive)),
            |n| account.wants(n),
        );
        println!("  mailboxes ({} to back up):", targets.len());
        // Sorted (INBOX first), names padded so the counts line up.
        let mut listed: Vec<_> = listed.iter().collect();
        listed.sort_by_key(|m| (!m.name.eq_ignore_ascii_case("INBOX"), m.name.clone()));
        let width = listed
            .iter()
            .map(|m| m.name.chars().count())
            .max()
            .unwrap_or(0);
        for m in listed {
            let mark = if !m.selectable {
                "noselect"
            } else if targets.iter().any(|t| t.mailbox.raw == m.raw) {
                "backup"
            } else if refused.iter().any(|r| r.name == m.name) {
                "REFUSED"
            } else {
                "excluded"
            };
            let count = m
                .status
                .map(|s| format!("{:>7} messages", s.messages))
                .unwrap_or_default();
            let line = format!("    {mark:<9} {:<width$}  {count}", m.name);
            println!("{}", line.trim_end());
        }
        codes.push(ExitCode::Success);
        for r in refused {
            eprintln!(
                "warning: mailbox `{}` will not be archived: {}",
                r.name, r.reason
            );
        }
    }
    Ok(ExitCode::for_accounts(codes))
}
