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
use crate::sync::gmail::view::takeout_labels;

const LONG_HELP: &str = "\
     --mbox writes mboxrd: each message after a `From ` line, lines that start \
     with `From ` (after any number of `>`) quoted with one more `>`, a blank \
     line after each; the message bytes are otherwise exactly as archived (CRLF \
     line ends kept). Mail clients (Thunderbird, mutt) and Python's \
     `mailbox.mbox` read it. --eml writes \
     DIR/ACCOUNT/MAILBOX/NNNNNN-YYYYMMDD-HHMMSS-UID.eml, numbered in date order \
     within each mailbox, each file the exact archived bytes with its mtime set \
     to the arrival time. Messages are ordered by mailbox, then date. Existing \
     files are not overwritten unless --force is given (they are counted and \
     the run exits 1). When nothing is selected no file is created; a \
     --mailbox that matches no archived mailbox is a warning naming the \
     archived ones, and exits 1. Files are created 0600 and directories 0700, \
     as private as the archive (a stricter umask still applies).\n\n\
     From an archive pulled in Gmail mode each message is exported once, from \
     All Mail (or the first label folder --mailbox matched). In an mbox it has \
     its labels in an `X-Gmail-Labels:` header (comma-separated, as Google \
     Takeout writes them) before its own first line; an .eml file holds the \
     message's exact bytes.";

/// Write archived messages out as an mbox file or as .eml files.
#[derive(Debug, clap::Args)]
#[command(after_long_help = LONG_HELP, group(clap::ArgGroup::new("target").required(true).args(["mbox", "eml"])))]
pub struct ExportCmd {
    #[command(flatten)]
    accounts: AccountArgs,

    #[command(flatten)]
    filters: Filters,

    /// Write one mboxrd file (`-` for stdout); it must not exist yet,
    /// unless --force
    #[arg(long, value_name = "FILE")]
    mbox: Option<PathBuf>,

    /// Write one .eml file per message under this directory (created if
    /// missing)
    #[arg(long, value_name = "DIR")]
    eml: Option<PathBuf>,

    /// Overwrite an existing mbox file or existing .eml files
    #[arg(long)]
    force: bool,
}

/// What an export did; `existed` files were left alone (not --force).
#[derive(Default)]
struct Written {
    done: u64,
    bytes: u64,
    unreadable: u64,
    existed: u64,
}

pub fn run(cmd: ExportCmd, config: Option<&Path>) -> Result<ExitCode> {
    let mut sel = select(config, &cmd.accounts, &cmd.filters)?;
    for w in &sel.warnings {
        eprintln!("warning: {w}");
    }
    let mut hits = std::mem::take(&mut sel.hits);
    hits.sort_by(|a, b| {
        (&a.account, &a.levels, a.when, a.uidvalidity, a.uid).cmp(&(
            &b.account,
            &b.levels,
            b.when,
            b.uidvalidity,
            b.uid,
        ))
    });
    let target = match (&cmd.mbox, &cmd.eml) {
        (Some(file), _) => file,
        (None, Some(dir)) => dir,
        (None, None) => unreachable!("clap requires --mbox or --eml"),
    };
    if hits.is_empty() {
        // An empty file would only make the corrected rerun fail.
        eprintln!(
            "no archived message matched; nothing written to `{}`",
            target.display()
        );
        return Ok(sel.exit_code(true));
    }
    let w = match &cmd.mbox {
        Some(file) => export_mbox(&hits, file, cmd.force)?,
        None => export_eml(&hits, target, cmd.force)?,
    };
    let mut notes = Vec::new();
    if w.unreadable > 0 {
        notes.push(format!(
            "{} could not be read (run `imapbak verify`)",
            w.unreadable
        ));
    }
    if w.existed > 0 {
        notes.push(format!(
            "{} not overwritten because the file exists (pass --force, or export into a fresh directory)",
            w.existed
        ));
    }
    eprintln!(
        "exported {} message{} ({}) to `{}`{}",
        w.done,
        if w.done == 1 { "" } else { "s" },
        human_bytes(w.bytes),
        target.display(),
        notes.iter().map(|n| format!("; {n}")).collect::<String>()
    );
    Ok(if w.unreadable > 0 || w.existed > 0 {
        sel.exit_code(true).max(ExitCode::Partial)
    } else {
        sel.exit_code(true)
    })
}

/// Why a file could not be created, in the user's terms: the file is
/// there already, or its directory is not.
fn create_error(e: io::Error, file: &Path) -> anyhow::Error {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let text = match e.kind() {
        io::ErrorKind::AlreadyExists => format!(
            "`{}` exists\nhint: pass --force to overwrite it, or choose another name",
            file.display()
        ),
        io::ErrorKind::NotFound if !parent.is_dir() => format!(
            "cannot create `{}`: the directory `{}` does not exist\nhint: create it first, or choose another path",
            file.display(),
            parent.display()
        ),
        _ => return anyhow::Error::new(e).context(format!("cannot create `{}`", file.display())),
    };
    anyhow::anyhow!(text)
}

/// Opens `file` for writing: a new file, or (with `force`) truncated.
fn create_private(file: &Path, force: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).mode(PRIVATE_FILE);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    o.open(file)
}

/// Reads one hit's message; a damaged file is reported and skipped. With
/// `labels` (mbox), a message of a Gmail archive gets its labels in an
/// `X-Gmail-Labels:` header first, as Google Takeout's mbox has them; an
/// .eml file stays the exact archived bytes.
fn read_hit(h: &Hit, labels: bool) -> Option<Vec<u8>> {
    match read_message(&h.path) {
        Ok(b) if b.len() as u64 == h.size && labels => Some(with_labels(b, &h.labels)),
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

/// `body` with `X-Gmail-Labels: <labels>` before its first header line,
/// ended as the message's own first line is (CRLF or LF).
fn with_labels(body: Vec<u8>, labels: &[String]) -> Vec<u8> {
    if labels.is_empty() {
        return body;
    }
    let crlf = body
        .iter()
        .position(|&b| b == b'\n')
        .is_none_or(|i| i > 0 && body[i - 1] == b'\r');
    let mut out = format!(
        "X-Gmail-Labels: {}{}",
        takeout_labels(labels),
        if crlf { "\r\n" } else { "\n" }
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

fn export_mbox(hits: &[Hit], file: &Path, force: bool) -> Result<Written> {
    let sink: Box<dyn Write> = if file == Path::new("-") {
        Box::new(io::stdout().lock())
    } else {
        Box::new(create_private(file, force).map_err(|e| create_error(e, file))?)
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, sink);
    let mut w = Written::default();
    for h in hits {
        let Some(body) = read_hit(h, true) else {
            w.unreadable += 1;
            continue;
        };
        write_mboxrd(&mut out, &from_line(h), &body)
            .with_context(|| format!("cannot write `{}`", file.display()))?;
        w.done += 1;
        w.bytes += body.len() as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write `{}`", file.display()))?;
    Ok(w)
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

fn export_eml(hits: &[Hit], dir: &Path, force: bool) -> Result<Written> {
    create_private_dirs(dir)?;
    let mut w = Written::default();
    let mut seq = 0u64;
    let mut current: Option<(&str, &[String])> = None;
    for h in hits {
        let key = (h.account.as_str(), h.levels.as_slice());
        if current != Some(key) {
            current = Some(key);
            seq = 0;
        }
        seq += 1;
        let path = eml_path(dir, h, seq);
        if !force && path.exists() {
            w.existed += 1;
            continue;
        }
        let Some(body) = read_hit(h, false) else {
            w.unreadable += 1;
            continue;
        };
        if let Some(parent) = path.parent() {
            create_private_dirs(parent)?;
        }
        let mut f = match create_private(&path, force) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                w.existed += 1;
                continue;
            }
            Err(e) => return Err(create_error(e, &path)),
        };
        write_file(&mut f, &body, h.internal_secs)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        w.done += 1;
        w.bytes += body.len() as u64;
    }
    Ok(w)
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
    fn gmail_labels_go_first_with_the_message_s_own_line_ends() {
        let labels = vec!["\\Inbox".to_string(), "Work".to_string()];
        let crlf = with_labels(b"A: b\r\n\r\nx".to_vec(), &labels);
        assert_eq!(crlf, b"X-Gmail-Labels: Inbox,Work\r\nA: b\r\n\r\nx");
        let lf = with_labels(b"A: b\n\nx".to_vec(), &labels);
        assert_eq!(lf, b"X-Gmail-Labels: Inbox,Work\nA: b\n\nx");
        assert_eq!(with_labels(b"A: b\n".to_vec(), &[]), b"A: b\n");
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
