//! `imapbak show ID`: one archived message, decompressed, to stdout.

use anyhow::{bail, Context, Result};

use super::{load_accounts_for, AccountArgs};
use crate::archive::view::read_folder;
use crate::archive::{read_message, Archive};
use crate::exit_codes::ExitCode;

const LONG_HELP: &str = "\
     ID is what `imapbak search` prints: ACCOUNT/FOLDER/UIDVALIDITY/UID, e.g. \
     `work/INBOX/1700000000/42` or `work/.Archive.2024/1700000000/7` (FOLDER is \
     the Maildir++ folder under the archive's mail/, INBOX for the root). The \
     mailbox's own name works in place of FOLDER, levels separated by `/`, \
     e.g. `work/Archive/2024/1700000000/7` or `work/Entwürfe/1700000000/3`. \
     `search` prints ids quoted when they hold characters a shell would \
     read (`&`, spaces, ...), so a pasted id works as printed.";

/// Print one archived message, exactly as the server sent it, to stdout.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct ShowCmd {
    /// The message id, as `imapbak search` prints it
    #[arg(value_name = "ID")]
    id: String,
}

/// A parsed message id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MessageId<'a> {
    pub account: &'a str,
    /// Maildir++ directory under mail/ (`""` is INBOX).
    pub folder: &'a str,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// An id's account and the rest: the first part, or the first two for a
/// user of a multi-user table (`staff/joe/...`; a table's user name never
/// holds `/`, see [`crate::org::user_component`]).
fn split_account<'a>(id: &'a str, tables: &[String]) -> Option<(&'a str, &'a str)> {
    let (first, rest) = id.split_once('/')?;
    if tables.iter().any(|t| t == first) {
        let (user, rest) = rest.split_once('/')?;
        return (!user.is_empty()).then(|| (&id[..first.len() + 1 + user.len()], rest));
    }
    Some((first, rest))
}

/// Parses `ACCOUNT/FOLDER/UIDVALIDITY/UID`. Neither an account nor a folder
/// name can hold `/`, so the split is unambiguous.
#[cfg(test)]
pub(crate) fn parse_id(id: &str) -> Option<MessageId<'_>> {
    parse_id_in(id, &[])
}

/// [`parse_id`], ACCOUNT being `TABLE/USER` when it starts with one of
/// `tables` (multi-user tables).
pub(crate) fn parse_id_in<'a>(id: &'a str, tables: &[String]) -> Option<MessageId<'a>> {
    let (account, rest) = split_account(id, tables)?;
    let mut parts = rest.split('/');
    let account = Some(account).filter(|a| !a.is_empty())?;
    let folder = parts.next()?;
    let uidvalidity = parts.next()?.parse().ok()?;
    let uid = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let folder = match folder {
        "INBOX" => "",
        f if f.starts_with('.') && f.len() > 1 && f != ".." => f,
        _ => return None,
    };
    Some(MessageId {
        account,
        folder,
        uidvalidity,
        uid,
    })
}

/// Parses `ACCOUNT/MAILBOX/UIDVALIDITY/UID` where MAILBOX is a mailbox
/// name with `/` between its levels (what people read in `search`).
#[cfg(test)]
fn parse_named_id(id: &str) -> Option<(&str, &str, u32, u32)> {
    parse_named_id_in(id, &[])
}

fn parse_named_id_in<'a>(id: &'a str, tables: &[String]) -> Option<(&'a str, &'a str, u32, u32)> {
    let (account, rest) = split_account(id, tables)?;
    let mut tail = rest.rsplitn(3, '/');
    let uid = tail.next()?.parse().ok()?;
    let uidvalidity = tail.next()?.parse().ok()?;
    let mailbox = tail.next().filter(|m| !m.is_empty())?;
    (!account.is_empty()).then_some((account, mailbox, uidvalidity, uid))
}

/// The folder under mail/ whose mailbox is `name` (levels joined by `/`;
/// exact, else ignoring case).
fn folder_named(archive: &Archive, name: &str) -> Option<String> {
    let dirs = crate::archive::view::folder_dirs(archive).ok()?;
    let named: Vec<(String, String)> = dirs
        .into_iter()
        .filter_map(|d| crate::archive::names::levels_for(&d).map(|l| (l.join("/"), d)))
        .collect();
    named
        .iter()
        .find(|(n, _)| n == name)
        .or_else(|| named.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
        .map(|(_, d)| d.clone())
}

pub fn run(cmd: ShowCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let path = crate::config::locate(config)?;
    let tables: Vec<String> = crate::config::Config::load(&path)?
        .orgs
        .into_keys()
        .collect();
    if parse_id_in(&cmd.id, &tables).is_none() {
        if let Some((account, mailbox, uv, uid)) = parse_named_id_in(&cmd.id, &tables) {
            return show_named(&cmd.id, account, mailbox, uv, uid, config);
        }
    }
    let Some(id) = parse_id_in(&cmd.id, &tables) else {
        bail!(
            "`{}` is not a message id\nhint: ids look like `work/INBOX/1700000000/42`; `imapbak search` prints them",
            cmd.id
        );
    };
    show_folder(
        &cmd.id,
        id.account,
        id.folder,
        id.uidvalidity,
        id.uid,
        config,
    )
}

/// `show` with the mailbox's name in the id instead of its folder.
fn show_named(
    text: &str,
    account: &str,
    mailbox: &str,
    uidvalidity: u32,
    uid: u32,
    config: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let acc = load_one(config, account)?;
    let archive = Archive::at(&acc.archive);
    if let Some(why) = archive.missing() {
        bail!("account `{}`: {why}", acc.name);
    }
    let Some(folder) = folder_named(&archive, mailbox) else {
        bail!(
            "no mailbox `{mailbox}` in the archive of `{account}`\nhint: `imapbak ls --account {account}` lists them; `imapbak search` prints ids"
        );
    };
    show_folder(text, account, &folder, uidvalidity, uid, config)
}

/// The account an id names: `NAME`, or `TABLE/USER` for one user of a
/// multi-user table.
fn load_one(config: Option<&std::path::Path>, account: &str) -> Result<crate::config::Account> {
    let (table, user) = match account.split_once('/') {
        Some((t, u)) => (t, Some(u)),
        None => (account, None),
    };
    let args = AccountArgs {
        accounts: vec![table.to_string()],
    };
    let users = super::UserArgs {
        users: user.map(str::to_string).into_iter().collect(),
        ..Default::default()
    };
    let mut found = load_accounts_for(config, &args, &users)?;
    match (found.pop(), found.is_empty()) {
        (Some(a), true) => Ok(a),
        _ => bail!("account `{table}` has a users list\nhint: name one user in the id: `{table}/USER/...`, as `imapbak search` prints it"),
    }
}

fn show_folder(
    text: &str,
    account: &str,
    folder: &str,
    uidvalidity: u32,
    uid: u32,
    config: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let account = load_one(config, account)?;
    let archive = Archive::at(&account.archive);
    if let Some(why) = archive.missing() {
        bail!("account `{}`: {why}", account.name);
    }
    let view = read_folder(&archive, folder)
        .with_context(|| format!("cannot read the archive of `{}`", account.name))?;
    let Some(m) = view.find(uidvalidity, uid) else {
        bail!(
            "no message `{}` in the archive `{}`\nhint: `imapbak search` prints the ids of archived messages",
            text,
            account.archive.display()
        );
    };
    let file = &view.files[m.file];
    let body = match read_message(&file.path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}\nhint: run `imapbak verify`");
            return Ok(ExitCode::Partial);
        }
    };
    if body.len() as u64 != file.name.size {
        eprintln!(
            "error: archive file `{}` is damaged: decompresses to {} bytes, its name says {}\nhint: run `imapbak verify`",
            file.path.display(),
            body.len(),
            file.name.size
        );
        return Ok(ExitCode::Partial);
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(&body)?;
    out.flush()?;
    Ok(ExitCode::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_odd_ones_are_refused() {
        assert_eq!(
            parse_id("work/INBOX/17/42"),
            Some(MessageId {
                account: "work",
                folder: "",
                uidvalidity: 17,
                uid: 42
            })
        );
        assert_eq!(parse_id("w/.with space/1/2").unwrap().folder, ".with space");
        for bad in [
            "",
            "work",
            "work/INBOX/17",
            "work/INBOX/x/1",
            "/INBOX/1/2",
            "work/../1/2",
            "work/./1/2",
            "work/cur/1/2",
            "work/INBOX/1/2/3",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn named_ids_take_the_last_two_parts_as_numbers_and_the_rest_as_the_mailbox() {
        assert_eq!(
            parse_named_id("w/Archive/2024/17/42"),
            Some(("w", "Archive/2024", 17, 42))
        );
        assert_eq!(
            parse_named_id("w/Entwürfe/1/2"),
            Some(("w", "Entwürfe", 1, 2))
        );
        assert_eq!(parse_named_id("w//1/2"), None);
        assert_eq!(parse_named_id("/x/1/2"), None);
        assert_eq!(parse_named_id("w/x/1"), None);
    }

    #[test]
    fn ids_of_a_tables_users_carry_table_and_user_as_the_account() {
        let tables = ["staff".to_string()];
        let id = parse_id_in("staff/joe/INBOX/17/42", &tables).unwrap();
        assert_eq!((id.account, id.folder, id.uid), ("staff/joe", "", 42));
        assert_eq!(
            parse_named_id_in("staff/joe/Archive/2024/17/42", &tables),
            Some(("staff/joe", "Archive/2024", 17, 42))
        );
        // Not a table: the first part alone is the account.
        assert_eq!(
            parse_id_in("work/INBOX/1/2", &tables).unwrap().account,
            "work"
        );
        assert_eq!(parse_id_in("staff//INBOX/1/2", &tables), None);
    }
}
