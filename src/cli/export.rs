//! `imapbak export`: archived messages out as one mboxrd file or as one
//! `.eml` file per message, chosen with the filters of `search`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::search::{select, Filters, Hit};
use super::AccountArgs;
use crate::archive::read_message;
use crate::exit_codes::ExitCode;
use crate::report::human_bytes;

const LONG_HELP: &str = "\
     --mbox writes mboxrd: each message after a `From ` line, lines that start \
     with `From ` (after any number of `>`) quoted with one more `>`, a blank \
     line after each; the message bytes are otherwise exactly as archived (CRLF \
     line ends kept). Mail clients (Thunderbird, mutt) and Python's \
     `mailbox.mbox` read it. --eml writes \
     DIR/ACCOUNT/MAILBOX/NNNNNN-YYYYMMDD-HHMMSS-UID.eml, numbered in date order \
     within each mailbox, each file the exact archived bytes with its mtime set \
     to the arrival time. Messages are ordered by mailbox, then date. Existing \
     files are never overwritten. Files are created 0600 and directories 0700, \
     as private as the archive (a stricter umask still applies).";

/// Write archived messages out as an mbox file or as .eml files.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP, group(clap::ArgGroup::new("target").required(true).args(["mbox", "eml"])))]
pub struct ExportCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    #[command(flatten)]
    filters: Filters,

    /// Write one mboxrd file (`-` for stdout); it must not exist yet
    #[arg(long, value_name = "FILE")]
    mbox: Option<PathBuf>,

    /// Write one .eml file per message under this directory (created if
    /// missing)
    #[arg(long, value_name = "DIR")]
    eml: Option<PathBuf>,
}

pub fn run(cmd: ExportCmd, config: Option<&Path>) -> Result<ExitCode> {
    let sel = select(config, &cmd.accounts, &cmd.filters)?;
    for w in &sel.warnings {
        eprintln!("warning: {w}");
    }
    let mut hits = sel.hits;
    hits.sort_by(|a, b| {
        (&a.account, &a.levels, a.when, a.uidvalidity, a.uid).cmp(&(
            &b.account,
            &b.levels,
            b.when,
            b.uidvalidity,
            b.uid,
        ))
    });
    let (done, bytes, failed, target) = match (&cmd.mbox, &cmd.eml) {
        (Some(file), _) => {
            let (d, b, f) = export_mbox(&hits, file)?;
            (d, b, f, file.display().to_string())
        }
        (None, Some(dir)) => {
            let (d, b, f) = export_eml(&hits, dir)?;
            (d, b, f, dir.display().to_string())
        }
        (None, None) => unreachable!("clap requires --mbox or --eml"),
    };
    eprintln!(
        "exported {done} message{} ({}) to `{target}`{}",
        if done == 1 { "" } else { "s" },
        human_bytes(bytes),
        if failed > 0 {
            format!("; {failed} could not be read (run `imapbak verify`)")
        } else {
            String::new()
        }
    );
    Ok(if failed > 0 || sel.failed {
        ExitCode::Partial
    } else {
        ExitCode::Success
    })
}

/// Reads one hit's message; a damaged file is reported and skipped.
fn read_hit(h: &Hit) -> Option<Vec<u8>> {
    match read_message(&h.path) {
        Ok(b) if b.len() as u64 == h.size => Some(b),
        Ok(b) => {
            eprintln!(
                "error: `{}` ({}) decompresses to {} bytes, its name says {}; not exported",
                h.path.display(),
                h.id,
                b.len(),
                h.size
            );
            None
        }
        Err(e) => {
            eprintln!("error: {e} ({}); not exported", h.id);
            None
        }
    }
}

fn export_mbox(hits: &[Hit], file: &Path) -> Result<(u64, u64, u64)> {
    let sink: Box<dyn Write> = if file == Path::new("-") {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_FILE)
                .open(file)
                .with_context(|| {
                    format!(
                        "cannot create `{}`\nhint: the file must not exist yet; choose another name or remove it",
                        file.display()
                    )
                })?,
        )
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, sink);
    let (mut done, mut bytes, mut failed) = (0, 0, 0);
    for h in hits {
        let Some(body) = read_hit(h) else {
            failed += 1;
            continue;
        };
        write_mboxrd(&mut out, &from_line(h), &body)
            .with_context(|| format!("cannot write `{}`", file.display()))?;
        done += 1;
        bytes += body.len() as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write `{}`", file.display()))?;
    Ok((done, bytes, failed))
}

/// The `From ` separator line: the sender's address when it is a plain
/// one, and the arrival time in asctime form (UTC).
fn from_line(h: &Hit) -> String {
    let addr = sender_address(&h.from).unwrap_or_else(|| "MAILER-DAEMON".into());
    let date = DateTime::<Utc>::from_timestamp(h.internal_secs, 0)
        .unwrap_or_default()
        .format("%a %b %e %H:%M:%S %Y");
    format!("From {addr} {date}\n")
}

/// The address in a From: value (`Name <a@b>` or `a@b`), if it is a
/// plain token fit for a `From ` line.
fn sender_address(from: &str) -> Option<String> {
    let addr = match (from.rfind('<'), from.rfind('>')) {
        (Some(l), Some(r)) if l < r => &from[l + 1..r],
        _ => from.trim(),
    };
    let ok = !addr.is_empty()
        && addr.contains('@')
        && addr
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '<' && c != '>');
    ok.then(|| addr.to_string())
}

/// One mboxrd entry: the `From ` line, the message with every line that
/// matches `^>*From ` given one more `>`, a final newline if it had none,
/// and the blank separator line.
pub(crate) fn write_mboxrd(out: &mut impl Write, from_line: &str, body: &[u8]) -> io::Result<()> {
    out.write_all(from_line.as_bytes())?;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let quoted = line.iter().position(|&b| b != b'>').map(|i| &line[i..]);
        if quoted.is_some_and(|rest| rest.starts_with(b"From ")) {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
    }
    if !body.is_empty() && !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// Exported mail is as private as the archive it came from (0600 files,
/// 0700 directories); a stricter umask still applies.
const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

/// `mkdir -p` with [`PRIVATE_DIR`] for the directories it creates.
fn create_private_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .with_context(|| format!("cannot create `{}`", dir.display()))
}

fn export_eml(hits: &[Hit], dir: &Path) -> Result<(u64, u64, u64)> {
    create_private_dirs(dir)?;
    let (mut done, mut bytes, mut failed) = (0, 0, 0);
    let mut seq = 0u64;
    let mut current: Option<(&str, &[String])> = None;
    for h in hits {
        let key = (h.account.as_str(), h.levels.as_slice());
        if current != Some(key) {
            current = Some(key);
            seq = 0;
        }
        seq += 1;
        let Some(body) = read_hit(h) else {
            failed += 1;
            continue;
        };
        let path = eml_path(dir, h, seq);
        if let Some(parent) = path.parent() {
            create_private_dirs(parent)?;
        }
        let mut f = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                eprintln!(
                    "error: `{}` exists; not overwritten\nhint: export into an empty directory",
                    path.display()
                );
                failed += 1;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create `{}`", path.display())),
        };
        write_file(&mut f, &body, h.internal_secs)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        done += 1;
        bytes += body.len() as u64;
    }
    Ok((done, bytes, failed))
}

fn write_file(f: &mut File, body: &[u8], mtime: i64) -> io::Result<()> {
    f.write_all(body)?;
    if mtime >= 0 {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
        f.set_modified(t)?;
    }
    Ok(())
}

/// DIR/ACCOUNT/LEVEL/.../NNNNNN-YYYYMMDD-HHMMSS-UID.eml
fn eml_path(dir: &Path, h: &Hit, seq: u64) -> PathBuf {
    let mut p = dir.join(safe_component(&h.account));
    for level in &h.levels {
        p.push(safe_component(level));
    }
    let date = DateTime::<Utc>::from_timestamp(h.when, 0)
        .unwrap_or_default()
        .format("%Y%m%d-%H%M%S");
    p.push(format!("{seq:06}-{date}-{}.eml", h.uid));
    p
}

/// A mailbox level as a file name: no `/`, NUL or control characters, no
/// leading `.` (no hidden or `..` directories), never empty.
fn safe_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_quotes_from_lines_at_any_depth_and_only_those() {
        let body = b"From: a@b\r\nSubject: x\r\n\r\nFrom here\r\n>From there\r\n>>From far\r\n From not\r\nFromage\r\n";
        let mut out = Vec::new();
        write_mboxrd(&mut out, "From a@b Thu Jan  1 00:00:00 1970\n", body).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "From a@b Thu Jan  1 00:00:00 1970\n\
             From: a@b\r\nSubject: x\r\n\r\n>From here\r\n>>From there\r\n>>>From far\r\n From not\r\nFromage\r\n\n"
        );
    }

    #[test]
    fn mboxrd_adds_a_final_newline_only_when_missing() {
        let mut out = Vec::new();
        write_mboxrd(&mut out, "From x\n", b"A: b\r\n\r\nno newline").unwrap();
        assert!(out.ends_with(b"no newline\n\n"));
    }

    #[test]
    fn sender_address_takes_plain_addresses_only() {
        assert_eq!(
            sender_address("Ada <ada@example.invalid>").as_deref(),
            Some("ada@example.invalid")
        );
        assert_eq!(sender_address("a@b").as_deref(), Some("a@b"));
        assert_eq!(sender_address("no address"), None);
        assert_eq!(sender_address("<a b@c>"), None);
        assert_eq!(sender_address(""), None);
    }

    #[test]
    fn mailbox_levels_become_safe_file_names() {
        assert_eq!(safe_component(".."), "_.");
        assert_eq!(safe_component("a/b\u{1b}"), "a_b_");
        assert_eq!(safe_component(""), "_");
        assert_eq!(safe_component("Entwürfe"), "Entwürfe");
    }
}
