//! `imapbak show ID`: one archived message, decompressed, to stdout.

use anyhow::{bail, Context, Result};

use super::{load_accounts, AccountArgs};
use crate::archive::view::read_folder;
use crate::archive::{read_message, Archive};
use crate::exit_codes::ExitCode;

const LONG_HELP: &str = "\
     ID is what `imapbak search` prints: ACCOUNT/FOLDER/UIDVALIDITY/UID, e.g. \
     `work/INBOX/1700000000/42` or `work/.Archive.2024/1700000000/7` (FOLDER is \
     the Maildir++ folder under the archive's mail/, INBOX for the root). Quote \
     it when the folder holds spaces.";

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

/// Parses `ACCOUNT/FOLDER/UIDVALIDITY/UID`. Neither an account nor a folder
/// name can hold `/`, so the split is unambiguous.
pub(crate) fn parse_id(id: &str) -> Option<MessageId<'_>> {
    let mut parts = id.split('/');
    let account = parts.next().filter(|a| !a.is_empty())?;
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

pub fn run(cmd: ShowCmd, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let Some(id) = parse_id(&cmd.id) else {
        bail!(
            "`{}` is not a message id\nhint: ids look like `work/INBOX/1700000000/42`; `imapbak search` prints them",
            cmd.id
        );
    };
    let args = AccountArgs {
        accounts: vec![id.account.to_string()],
    };
    let account = load_accounts(config, &args)?
        .pop()
        .context("no such account")?;
    let archive = Archive::at(&account.archive);
    if let Some(why) = archive.missing() {
        bail!("account `{}`: {why}", account.name);
    }
    let view = read_folder(&archive, id.folder)
        .with_context(|| format!("cannot read the archive of `{}`", account.name))?;
    let Some(m) = view.find(id.uidvalidity, id.uid) else {
        bail!(
            "no message `{}` in the archive `{}`\nhint: `imapbak search` prints the ids of archived messages",
            cmd.id,
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
}
