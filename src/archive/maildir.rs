//! Message files and folders: names that Dovecot understands and that carry
//! (UIDVALIDITY, UID), the write protocol (tmp, sync, rename, directory
//! fsync; per burst of messages), flag renames, and `dovecot-keywords`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::journal::{self, JournalEntry, Status};
use super::{digits, make_dir, sync_dir, write_atomic, ArchiveError};

/// The parsed name of one of our message files:
/// `<secs>.V<uidvalidity>U<uid>.imapbak,S=<size>,W=<size>:2,<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub secs: i64,
    pub uidvalidity: u32,
    pub uid: u32,
    pub size: u64,
    /// Maildir flag letters, in ASCII order.
    pub flags: String,
}

const HOST: &str = "imapbak";

impl FileName {
    /// The part before `:2,`, which never changes for a message.
    pub fn base(&self) -> String {
        format!(
            "{}.V{}U{}.{HOST},S={},W={}",
            self.secs, self.uidvalidity, self.uid, self.size, self.size
        )
    }

    pub fn full(&self) -> String {
        format!("{}:2,{}", self.base(), self.flags)
    }

    /// Parses a name we wrote; `None` for anything else (files of other
    /// tools, Dovecot's own deliveries, garbage).
    pub fn parse(name: &str) -> Option<FileName> {
        let (base, flags) = name.rsplit_once(":2,")?;
        if !flags.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let mut fields = base.split(',');
        let head = fields.next()?;
        let mut parts = head.split('.');
        let secs: i64 = parts.next()?.parse().ok()?;
        let unique = parts.next()?;
        if parts.next()? != HOST || parts.next().is_some() {
            return None;
        }
        let (uv, uid) = unique.strip_prefix('V')?.split_once('U')?;
        let (uidvalidity, uid): (u32, u32) = (digits(uv)?, digits(uid)?);
        let mut size = None;
        let mut wsize = None;
        for f in fields {
            if let Some(v) = f.strip_prefix("S=") {
                size = Some(digits::<u64>(v)?);
            } else if let Some(v) = f.strip_prefix("W=") {
                wsize = Some(digits::<u64>(v)?);
            } else {
                return None;
            }
        }
        let size = size?;
        if wsize != Some(size) {
            return None;
        }
        let parsed = FileName {
            secs,
            uidvalidity,
            uid,
            size,
            flags: flags.to_string(),
        };
        // Only canonical names are ours, so one message has one name.
        (parsed.full() == name).then_some(parsed)
    }
}

/// Maildir letters for IMAP flags, in ASCII order (Dovecot's rule): system
/// flags as D F R S T, keywords as their `dovecot-keywords` letters. `\Recent`
/// is session state and is never stored. Keywords beyond 26, and keywords
/// `dovecot-keywords` cannot hold (see [`Keywords::letter_for`]), are
/// returned as the second value.
pub fn flags_to_letters(flags: &[String], keywords: &mut Keywords) -> (String, Vec<String>) {
    let mut letters = Vec::new();
    let mut dropped = Vec::new();
    for f in flags {
        let letter = match f.to_ascii_lowercase().as_str() {
            "\\seen" => Some('S'),
            "\\answered" => Some('R'),
            "\\flagged" => Some('F'),
            "\\deleted" => Some('T'),
            "\\draft" => Some('D'),
            "\\recent" | "\\*" => None,
            _ if f.starts_with('\\') => None,
            _ => match keywords.letter_for(f) {
                Some(l) => Some(l),
                None => {
                    dropped.push(f.clone());
                    None
                }
            },
        };
        if let Some(l) = letter {
            letters.push(l);
        }
    }
    letters.sort_unstable();
    letters.dedup();
    (letters.into_iter().collect(), dropped)
}

/// IMAP flags for Maildir letters (the inverse of [`flags_to_letters`]).
pub fn letters_to_flags(letters: &str, keywords: &Keywords) -> Vec<String> {
    letters
        .chars()
        .filter_map(|c| match c {
            'S' => Some("\\Seen".to_string()),
            'R' => Some("\\Answered".to_string()),
            'F' => Some("\\Flagged".to_string()),
            'T' => Some("\\Deleted".to_string()),
            'D' => Some("\\Draft".to_string()),
            'a'..='z' => keywords.name_of(c).map(str::to_string),
            _ => None,
        })
        .collect()
}

/// The `dovecot-keywords` file of a folder: keyword index 0..25 is letter a..z.
#[derive(Debug, Default, Clone)]
pub struct Keywords {
    names: Vec<Option<String>>,
    dirty: bool,
}

impl Keywords {
    /// Reads a `dovecot-keywords` file (`<index> <name>` lines); lines it
    /// cannot use are ignored, as Dovecot does.
    pub fn parse(text: &str) -> Keywords {
        let mut names: Vec<Option<String>> = Vec::new();
        for line in text.lines() {
            let Some((idx, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(idx) = idx.parse::<usize>() else {
                continue;
            };
            if idx < 26 && !name.is_empty() {
                if names.len() <= idx {
                    names.resize(idx + 1, None);
                }
                names[idx] = Some(name.to_string());
            }
        }
        Keywords {
            names,
            dirty: false,
        }
    }

    /// The `dovecot-keywords` file for these keywords.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.names.iter().enumerate() {
            if let Some(n) = n {
                out.push_str(&format!("{i} {n}\n"));
            }
        }
        out
    }

    /// The letter of `keyword`, assigning the next free one if needed;
    /// `None` when all 26 are taken or `keyword` cannot be stored.
    pub fn letter_for(&mut self, keyword: &str) -> Option<char> {
        // `dovecot-keywords` holds one `<index> <name>` per line: an empty
        // name or a line break would not read back as itself. Spaces and
        // control characters are never in an IMAP keyword (an atom), so one
        // holding them could not be restored either.
        if keyword.is_empty() || keyword.chars().any(|c| c == ' ' || c.is_control()) {
            return None;
        }
        if let Some(i) = self
            .names
            .iter()
            .position(|n| n.as_deref() == Some(keyword))
        {
            return Some((b'a' + i as u8) as char);
        }
        let i = match self.names.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.names.len() < 26 => {
                self.names.push(None);
                self.names.len() - 1
            }
            None => return None,
        };
        self.names[i] = Some(keyword.to_string());
        self.dirty = true;
        Some((b'a' + i as u8) as char)
    }

    pub fn name_of(&self, letter: char) -> Option<&str> {
        if !letter.is_ascii_lowercase() {
            return None;
        }
        let i = usize::from(letter as u8 - b'a');
        self.names.get(i)?.as_deref()
    }
}

/// One archived message as found in the tree.
#[derive(Debug, Clone)]
pub struct ArchivedFile {
    pub name: FileName,
    /// `cur` or `new`.
    pub subdir: &'static str,
}

/// One of our message files as found in `cur/` or `new/`.
#[derive(Debug, Clone)]
pub struct TreeFile {
    pub name: FileName,
    /// `name.base()`, computed once: every reader keys on it.
    pub base: String,
    /// `cur` or `new`.
    pub subdir: &'static str,
    pub path: PathBuf,
}

impl TreeFile {
    /// The (name, subdir) pair the reconciled index and renames work on.
    pub fn archived(&self) -> ArchivedFile {
        ArchivedFile {
            name: self.name.clone(),
            subdir: self.subdir,
        }
    }
}

/// What a folder's `cur/` and `new/` hold, in directory order: our message
/// files, and every other entry (foreign names, non-files), left alone.
#[derive(Debug, Clone, Default)]
pub struct FolderFiles {
    pub files: Vec<TreeFile>,
    pub strays: Vec<PathBuf>,
}

/// What a folder holds, keyed by (UIDVALIDITY, UID).
#[derive(Debug, Default)]
pub struct FolderIndex {
    /// Files in the tree, by their base name.
    pub files: HashMap<String, ArchivedFile>,
    /// Journal entries whose file exists, by (UIDVALIDITY, UID).
    pub entries: HashMap<(u32, u32), JournalEntry>,
    /// Names in cur/ and new/ that are not ours (left alone).
    pub foreign: usize,
    /// (UIDVALIDITY, UID) of journal entries whose file has disappeared.
    pub missing: Vec<(u32, u32)>,
}

impl FolderIndex {
    /// UIDs archived for `uidvalidity`.
    pub fn uids(&self, uidvalidity: u32) -> impl Iterator<Item = u32> + '_ {
        self.entries
            .keys()
            .filter(move |(uv, _)| *uv == uidvalidity)
            .map(|(_, uid)| *uid)
    }

    /// Base name of an archived file whose content has this hash, if any.
    pub fn base_with_hash(&self, sha256: &str) -> Option<&str> {
        self.entries
            .values()
            .find(|e| e.sha256 == sha256)
            .map(|e| e.base.as_str())
    }

    pub fn file_for(&self, uidvalidity: u32, uid: u32) -> Option<&ArchivedFile> {
        let e = self.entries.get(&(uidvalidity, uid))?;
        self.files.get(&e.base)
    }
}

/// A mailbox's Maildir folder and its state directory.
#[derive(Debug, Clone)]
pub struct Folder {
    path: PathBuf,
    state: PathBuf,
    is_sub: bool,
}

/// A message that has been written and renamed into `cur/`, not yet
/// journaled.
#[derive(Debug, Clone)]
pub struct Written {
    pub entry: JournalEntry,
    pub compressed: u64,
}

/// A message written to `tmp/`, neither durable nor in `cur/` yet.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    pub written: Written,
}

/// One zstd context and output buffer, reused for every message a writer
/// compresses: a fresh context per message allocated and zeroed its
/// tables each time, which was a fifth of a full pull's CPU (perf, issue
/// 14). Bodies up to [`Compressor::ONE_SHOT`] are compressed in one call
/// into the buffer and written with one `write`; larger ones stream, so a
/// large message is never held twice.
pub struct Compressor {
    level: i32,
    cctx: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

impl Compressor {
    /// The largest body compressed in one call (and so the buffer's bound).
    pub const ONE_SHOT: usize = 1 << 20;

    pub fn new(level: i32) -> Result<Compressor, ArchiveError> {
        let fail = |e| ArchiveError::Io {
            what: "cannot start compressing",
            path: PathBuf::new(),
            source: e,
        };
        let mut cctx = zstd::bulk::Compressor::new(level).map_err(fail)?;
        cctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .map_err(fail)?;
        Ok(Compressor {
            level,
            cctx,
            out: Vec::new(),
        })
    }

    /// Writes `body` as one zstd frame (content size and checksum in it) to
    /// `file`; returns the file and the compressed size.
    fn compress_into(
        &mut self,
        mut file: File,
        body: &[u8],
        path: &Path,
    ) -> Result<(File, u64), ArchiveError> {
        if body.len() <= Self::ONE_SHOT {
            self.out.clear();
            self.out
                .reserve(zstd::zstd_safe::compress_bound(body.len()));
            self.cctx
                .compress_to_buffer(body, &mut self.out)
                .map_err(ArchiveError::io("cannot compress", path))?;
            file.write_all(&self.out)
                .map_err(ArchiveError::io("cannot write", path))?;
            return Ok((file, self.out.len() as u64));
        }
        let mut enc = zstd::stream::Encoder::new(file, self.level)
            .map_err(ArchiveError::io("cannot start compressing", path))?;
        enc.include_checksum(true)
            .and_then(|_| enc.set_pledged_src_size(Some(body.len() as u64)))
            .map_err(ArchiveError::io("cannot start compressing", path))?;
        enc.write_all(body)
            .map_err(ArchiveError::io("cannot write", path))?;
        let file = enc
            .finish()
            .map_err(ArchiveError::io("cannot write", path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((file, size))
    }
}

/// Makes everything written to the filesystem holding `file` durable: one
/// syncfs(2), one flush of the disk, for a batch of files, where an fsync
/// each costs one flush each. Errors of any file written since the last
/// call are reported (Linux 5.8 and later).
fn sync_filesystem(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Folder {
    pub(crate) fn new(path: PathBuf, state: PathBuf, is_sub: bool) -> Folder {
        Folder {
            path,
            state,
            is_sub,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.join("cur").is_dir()
    }

    /// Creates the Maildir (cur, new, tmp; `maildirfolder` for a subfolder)
    /// and the state directory.
    pub fn create(&self) -> Result<(), ArchiveError> {
        make_dir(&self.path)?;
        for sub in ["cur", "new", "tmp"] {
            make_dir(&self.path.join(sub))?;
        }
        if self.is_sub {
            let marker = self.path.join("maildirfolder");
            if !marker.exists() {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .open(&marker)
                    .map_err(ArchiveError::io("cannot create", &marker))?;
            }
        }
        if let Some(parent) = self.state.parent() {
            make_dir(parent)?;
        }
        make_dir(&self.state)
    }

    pub fn load_keywords(&self) -> Result<Keywords, ArchiveError> {
        let path = self.path.join("dovecot-keywords");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Keywords::parse(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Keywords::default()),
            Err(e) => Err(ArchiveError::Io {
                what: "cannot read",
                path,
                source: e,
            }),
        }
    }

    pub fn save_keywords(&self, keywords: &mut Keywords) -> Result<(), ArchiveError> {
        if keywords.dirty {
            write_atomic(
                &self.path.join("dovecot-keywords"),
                keywords.render().as_bytes(),
            )?;
            keywords.dirty = false;
        }
        Ok(())
    }

    pub fn load_status(&self) -> Result<Status, ArchiveError> {
        journal::load_status(&self.state)
    }

    pub fn save_status(&self, status: &Status) -> Result<(), ArchiveError> {
        journal::save_status(&self.state, status)
    }

    /// The one walk of a folder's message files: `cur/` then `new/`, each
    /// entry parsed once. A missing `cur/` or `new/` is empty, not an error.
    pub fn files(&self) -> Result<FolderFiles, ArchiveError> {
        let mut out = FolderFiles::default();
        for subdir in ["cur", "new"] {
            let dir = self.path.join(subdir);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ArchiveError::Io {
                        what: "cannot read directory",
                        path: dir,
                        source: e,
                    })
                }
            };
            for ent in rd {
                let ent = ent.map_err(ArchiveError::io("cannot read directory", &dir))?;
                let name = ent.file_name();
                let parsed = name.to_str().and_then(FileName::parse);
                let is_file = ent.file_type().map(|t| t.is_file()).unwrap_or(false);
                match parsed {
                    Some(name) if is_file => out.files.push(TreeFile {
                        base: name.base(),
                        name,
                        subdir,
                        path: ent.path(),
                    }),
                    _ => out.strays.push(ent.path()),
                }
            }
        }
        Ok(out)
    }

    /// Reads the tree and the journal and reconciles them: files without a
    /// journal entry (a crash after the rename, or a deleted `state/`) are
    /// hashed and journaled; entries without a file are dropped.
    pub fn scan(&self) -> Result<FolderIndex, ArchiveError> {
        let mut index = FolderIndex::default();
        if !self.exists() {
            return Ok(index);
        }
        let found = self.files()?;
        index.foreign = found.strays.len();
        for f in found.files {
            index.files.insert(f.base.clone(), f.archived());
        }
        let (entries, clean) = journal::read(&self.state)?;
        let mut rewrite = !clean;
        for e in entries {
            if index.files.contains_key(&e.base) {
                index.entries.insert((e.uidvalidity, e.uid), e);
            } else {
                log::warn!(
                    "archived file `{}` of UID {} is gone; it will be downloaded again if the server still has it",
                    e.base,
                    e.uid
                );
                index.missing.push((e.uidvalidity, e.uid));
                rewrite = true;
            }
        }
        let journaled: std::collections::HashSet<&str> =
            index.entries.values().map(|e| e.base.as_str()).collect();
        let mut missing: Vec<ArchivedFile> = index
            .files
            .iter()
            .filter(|(base, _)| !journaled.contains(base.as_str()))
            .map(|(_, f)| f.clone())
            .collect();
        missing.sort_by_key(|f| (f.name.uidvalidity, f.name.uid));
        let mut recovered = Vec::new();
        for f in missing {
            let path = self.path.join(f.subdir).join(f.name.full());
            let (size, sha256) = hash_file(&path)?;
            if size != f.name.size {
                log::warn!(
                    "archived file `{}` holds {size} bytes, its name says {}; leaving it out of the index",
                    path.display(),
                    f.name.size
                );
                continue;
            }
            let e = JournalEntry {
                uidvalidity: f.name.uidvalidity,
                uid: f.name.uid,
                size,
                sha256,
                base: f.name.base(),
            };
            recovered.push(e.clone());
            index.entries.insert((e.uidvalidity, e.uid), e);
        }
        if !index.missing.is_empty() {
            // Before the journal forgets them: the next pull must list these
            // UIDs again, whichever command noticed they were gone.
            let mut status = journal::load_status(&self.state)?;
            let lowest = index
                .missing
                .iter()
                .filter(|(uv, _)| *uv == status.uidvalidity)
                .map(|(_, uid)| *uid)
                .min();
            if let Some(uid) = lowest.filter(|uid| *uid < status.floor) {
                status.floor = uid;
                journal::save_status(&self.state, &status)?;
            }
        }
        if rewrite {
            let mut all: Vec<JournalEntry> = index.entries.values().cloned().collect();
            all.sort_by_key(|e| (e.uidvalidity, e.uid));
            make_dir(&self.state)?;
            journal::rewrite(&self.state, &all)?;
        } else if !recovered.is_empty() {
            make_dir(&self.state)?;
            journal::append(&self.state, &recovered)?;
        }
        Ok(index)
    }

    /// Writes one message: compressed into `tmp/`, fsynced, mtime set to
    /// INTERNALDATE, renamed into `cur/` (never over an existing file). The
    /// caller syncs `cur/` and journals the result.
    /// Writes one message and makes it durable in `cur/` (not yet
    /// journaled): [`Folder::stage`] and [`Folder::settle`] for one. Tests
    /// build archives with it; pull stages and settles whole bursts.
    pub fn write_message(
        &self,
        uidvalidity: u32,
        uid: u32,
        internaldate: i64,
        flags: &str,
        body: &[u8],
        level: i32,
    ) -> Result<Written, ArchiveError> {
        let mut z = Compressor::new(level)?;
        let staged = self.stage(&mut z, uidvalidity, uid, internaldate, flags, body)?;
        let mut done = Vec::new();
        let result = self.settle(vec![staged], &mut done);
        result.map(|()| done.pop().expect("one settled"))
    }

    /// Writes one message, compressed, to `tmp/` with its INTERNALDATE as
    /// mtime; nothing is durable and nothing is in `cur/` until
    /// [`Folder::settle`].
    pub fn stage(
        &self,
        z: &mut Compressor,
        uidvalidity: u32,
        uid: u32,
        internaldate: i64,
        flags: &str,
        body: &[u8],
    ) -> Result<Staged, ArchiveError> {
        let name = FileName {
            secs: internaldate.max(0),
            uidvalidity,
            uid,
            size: body.len() as u64,
            flags: flags.to_string(),
        };
        let base = name.base();
        let tmp = self.path.join("tmp").join(&base);
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(ArchiveError::io("cannot create", &tmp))?;
        let (file, compressed) = z.compress_into(file, body, &tmp)?;
        let mtime = if internaldate >= 0 {
            UNIX_EPOCH + Duration::from_secs(internaldate as u64)
        } else {
            UNIX_EPOCH
        };
        file.set_times(
            fs::FileTimes::new()
                .set_modified(mtime)
                .set_accessed(SystemTime::now()),
        )
        .map_err(ArchiveError::io("cannot set mtime of", &tmp))?;
        drop(file);
        Ok(Staged {
            dest: self.path.join("cur").join(name.full()),
            tmp,
            written: Written {
                entry: JournalEntry {
                    uidvalidity,
                    uid,
                    size: body.len() as u64,
                    sha256: sha256_hex(body),
                    base,
                },
                compressed,
            },
        })
    }

    /// Makes staged messages durable, then renames them into `cur/` and
    /// makes the renames durable: the write protocol (tmp, fsync, rename,
    /// directory fsync) for a whole batch at once, so a batch costs two
    /// flushes of the disk instead of one per message. What reaches `cur/`
    /// is pushed to `done`, also when a later rename fails; a message left
    /// in `tmp/` is written again by the next run.
    pub fn settle(&self, staged: Vec<Staged>, done: &mut Vec<Written>) -> Result<(), ArchiveError> {
        let Some(first) = staged.first() else {
            return Ok(());
        };
        // Files are closed once staged (a batch may hold hundreds): the
        // sync goes through a descriptor opened for it.
        let sync = if staged.len() == 1 {
            File::open(&first.tmp).and_then(|f| f.sync_all())
        } else {
            File::open(self.path.join("tmp")).and_then(|d| sync_filesystem(&d))
        };
        sync.map_err(ArchiveError::io("cannot sync", &first.tmp))?;
        let mut result = Ok(());
        for s in staged {
            if let Err(e) = rename_noreplace(&s.tmp, &s.dest) {
                result = Err(e);
                break;
            }
            done.push(s.written);
        }
        self.sync()?;
        result
    }

    /// Renames an archived file to carry `flags` (and moves it to `cur/`).
    pub fn set_flags(&self, file: &ArchivedFile, flags: &str) -> Result<bool, ArchiveError> {
        if file.name.flags == flags && file.subdir == "cur" {
            return Ok(false);
        }
        let from = self.path.join(file.subdir).join(file.name.full());
        let mut to_name = file.name.clone();
        to_name.flags = flags.to_string();
        let to = self.path.join("cur").join(to_name.full());
        rename_noreplace(&from, &to)?;
        Ok(true)
    }

    /// Makes renames into `cur/` durable.
    pub fn sync(&self) -> Result<(), ArchiveError> {
        sync_dir(&self.path.join("cur"))
    }

    /// The state directory (journal, status, header index).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Appends to the header index that `search` reads.
    pub fn record_headers(
        &self,
        records: &[super::headers::HeaderRecord],
    ) -> Result<(), ArchiveError> {
        super::headers::append(&self.state, records)
    }

    /// Appends journal entries durably.
    pub fn journal(&self, entries: &[JournalEntry]) -> Result<(), ArchiveError> {
        journal::append(&self.state, entries)
    }

    /// Hard-links the archived file at `src` into `cur/` under `name` (a
    /// Gmail label folder holds links to All Mail's files, so each message's
    /// bytes are on disk once). False when that name is already there.
    pub fn link_from(&self, src: &Path, name: &FileName) -> Result<bool, ArchiveError> {
        let to = self.path.join("cur").join(name.full());
        match fs::hard_link(src, &to) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(ArchiveError::Io {
                what: "cannot link into",
                path: to,
                source: e,
            }),
        }
    }

    /// Removes one of this folder's files (a link whose label is gone; the
    /// message stays in All Mail).
    pub fn unlink(&self, file: &ArchivedFile) -> Result<(), ArchiveError> {
        let path = self.path.join(file.subdir).join(file.name.full());
        fs::remove_file(&path).map_err(ArchiveError::io("cannot remove", &path))
    }

    /// Drops the journal entries of `keys` (UIDVALIDITY, UID), after their
    /// files were removed on purpose.
    pub fn forget(&self, keys: &std::collections::HashSet<(u32, u32)>) -> Result<(), ArchiveError> {
        let (entries, _) = journal::read(&self.state)?;
        let kept: Vec<JournalEntry> = entries
            .into_iter()
            .filter(|e| !keys.contains(&(e.uidvalidity, e.uid)))
            .collect();
        make_dir(&self.state)?;
        journal::rewrite(&self.state, &kept)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Decompresses an archived file, returning its size and SHA-256.
pub fn hash_file(path: &Path) -> Result<(u64, String), ArchiveError> {
    let file = File::open(path).map_err(ArchiveError::io("cannot open", path))?;
    let mut dec =
        zstd::stream::Decoder::new(file).map_err(ArchiveError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = dec.read(&mut buf).map_err(|e| ArchiveError::Damaged {
            path: path.to_path_buf(),
            reason: format!("does not decompress: {e}"),
        })?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Decompresses an archived file whole.
pub fn read_message(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    read_message_sized(path, 0)
}

/// [`read_message`] into a buffer made for `size` bytes (the size in the
/// file's name), so a large message is not grown by doubling: without it a
/// 30 MiB message took a 32 MiB buffer and, while it grew, a 16 MiB one
/// beside it. A wrong size only costs that growth again.
pub fn read_message_sized(path: &Path, size: u64) -> Result<Vec<u8>, ArchiveError> {
    let file = File::open(path).map_err(ArchiveError::io("cannot open", path))?;
    // Never trust a name for more than a sane first allocation.
    let mut out = Vec::with_capacity(size.min(1 << 30) as usize);
    zstd::stream::Decoder::new(file)
        .and_then(|mut d| d.read_to_end(&mut out))
        .map_err(|e| ArchiveError::Damaged {
            path: path.to_path_buf(),
            reason: format!("does not decompress: {e}"),
        })?;
    Ok(out)
}

/// rename(2) that fails instead of replacing an existing file, so an
/// archived message is never overwritten.
fn rename_noreplace(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("paths have no NUL");
    let (f, t) = (c(from), c(to));
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD with absolute or
    // relative paths is the plain rename(2) contract.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        // A filesystem without RENAME_NOREPLACE: link + unlink has the same effect.
        fs::hard_link(from, to).map_err(ArchiveError::io("cannot move into place", to))?;
        return fs::remove_file(from).map_err(ArchiveError::io("cannot remove", from));
    }
    Err(ArchiveError::Io {
        what: "cannot move into place",
        path: to.to_path_buf(),
        source: err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> FileName {
        FileName {
            secs: 1700000000,
            uidvalidity: 42,
            uid: 7,
            size: 1234,
            flags: "FSa".into(),
        }
    }

    #[test]
    fn file_name_round_trips_and_looks_like_dovecots() {
        let n = name();
        assert_eq!(n.full(), "1700000000.V42U7.imapbak,S=1234,W=1234:2,FSa");
        assert_eq!(FileName::parse(&n.full()), Some(n));
    }

    #[test]
    fn file_name_parse_rejects_foreign_and_non_canonical_names() {
        for bad in [
            "1700000000.M1P2.host,S=5,W=5:2,S",
            "1700000000.V42U7.imapbak,S=5,W=6:2,S",
            "1700000000.V042U7.imapbak,S=5,W=5:2,S",
            "1700000000.V42U7.imapbak,S=5,W=5:2,S.zst",
            "1700000000.V42U7.imapbak,S=5,W=5",
            "../x.V1U1.imapbak,S=1,W=1:2,",
            "",
        ] {
            assert_eq!(FileName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn flags_map_to_sorted_letters_and_back() {
        let mut kw = Keywords::default();
        let flags: Vec<String> = [
            "\\Seen",
            "$Important",
            "\\Flagged",
            "\\Recent",
            "\\Answered",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (letters, dropped) = flags_to_letters(&flags, &mut kw);
        assert_eq!(letters, "FRSa");
        assert!(dropped.is_empty());
        assert_eq!(
            letters_to_flags(&letters, &kw),
            vec!["\\Flagged", "\\Answered", "\\Seen", "$Important"]
        );
        assert_eq!(
            Keywords::parse(&kw.render()).name_of('a'),
            Some("$Important")
        );
    }

    #[test]
    fn keywords_beyond_26_are_reported_not_stored() {
        let mut kw = Keywords::default();
        let flags: Vec<String> = (0..30).map(|i| format!("kw{i}")).collect();
        let (letters, dropped) = flags_to_letters(&flags, &mut kw);
        assert_eq!(letters.len(), 26);
        assert_eq!(dropped.len(), 4);
    }

    #[test]
    fn keywords_that_would_not_read_back_are_reported_not_stored() {
        // Found by fuzzing: an empty keyword got letter `a` and was written
        // as `0 `, which reads back as nothing, so the flag vanished; a
        // newline in a keyword would have forged a second line.
        let mut kw = Keywords::default();
        let flags: Vec<String> = ["", "a b", "x\n25 forged", "y\r", "ok"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (letters, dropped) = flags_to_letters(&flags, &mut kw);
        assert_eq!(letters, "a");
        assert_eq!(dropped, &flags[..4]);
        let reread = Keywords::parse(&kw.render());
        assert_eq!(letters_to_flags(&letters, &reread), ["ok"]);
        assert_eq!(reread.name_of('z'), None);
    }

    #[test]
    fn only_lowercase_ascii_letters_name_keywords() {
        // Found by fuzzing: `name_of` cut the char to a byte, so U+0161 `š`
        // (0x161) answered for `a` (0x61).
        let kw = Keywords::parse("0 $Forwarded\n");
        assert_eq!(kw.name_of('a'), Some("$Forwarded"));
        for c in ['\u{161}', '\u{141}', 'A', '{', '`'] {
            assert_eq!(kw.name_of(c), None, "{c:?}");
        }
    }

    #[test]
    fn written_message_decompresses_to_the_same_bytes_and_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path().join("m"), dir.path().join("s"), false);
        folder.create().unwrap();
        let body = b"Subject: x\r\n\r\nhello\r\n".to_vec();
        let w = folder
            .write_message(9, 3, 1_600_000_000, "S", &body, 3)
            .unwrap();
        folder.sync().unwrap();
        folder.journal(std::slice::from_ref(&w.entry)).unwrap();
        let index = folder.scan().unwrap();
        let f = index.file_for(9, 3).unwrap();
        let path = folder.path().join("cur").join(f.name.full());
        assert_eq!(read_message(&path).unwrap(), body);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        // A second write of the same UID never replaces the first.
        assert!(
            folder
                .write_message(9, 3, 1_600_000_000, "S", b"other", 3)
                .is_err()
                || read_message(&path).unwrap() == body
        );
    }

    #[test]
    fn staged_messages_reach_cur_only_when_settled_and_a_failed_rename_stops_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path().join("m"), dir.path().join("s"), false);
        folder.create().unwrap();
        let mut z = Compressor::new(3).unwrap();
        let big = vec![b'x'; Compressor::ONE_SHOT + 1];
        let bodies: [&[u8]; 3] = [b"Subject: 1\r\n\r\none", &big, b"Subject: 3\r\n\r\nthree"];
        let staged: Vec<Staged> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| folder.stage(&mut z, 9, i as u32 + 1, 0, "S", b).unwrap())
            .collect();
        let count = |sub: &str| fs::read_dir(folder.path().join(sub)).unwrap().count();
        assert_eq!(
            (count("tmp"), count("cur")),
            (3, 0),
            "nothing in cur/ before settle"
        );
        let dests: Vec<PathBuf> = staged.iter().map(|s| s.dest.clone()).collect();
        // Something already holds the third message's name in cur/.
        fs::write(&dests[2], b"other").unwrap();
        let mut done = Vec::new();
        assert!(folder.settle(staged, &mut done).is_err());
        let uids: Vec<u32> = done.iter().map(|w| w.entry.uid).collect();
        assert_eq!(
            uids,
            [1, 2],
            "what reached cur/ is reported, the rest is not"
        );
        assert_eq!(count("tmp"), 1, "the third stays in tmp/ for the next run");
        for (dest, body) in dests.iter().zip(&bodies[..2]) {
            assert_eq!(&read_message(dest).unwrap(), body, "{}", dest.display());
        }
        assert_eq!(fs::read(&dests[2]).unwrap(), b"other", "never replaced");
    }

    #[test]
    fn scan_rebuilds_the_journal_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path().join("m"), dir.path().join("s"), false);
        folder.create().unwrap();
        let w = folder.write_message(9, 3, 0, "", b"abc", 3).unwrap();
        // No journal entry: as after a crash between rename and journal.
        let index = folder.scan().unwrap();
        assert_eq!(index.entries.get(&(9, 3)).unwrap().sha256, w.entry.sha256);
        let (entries, clean) = journal::read(&dir.path().join("s")).unwrap();
        assert!(clean);
        assert_eq!(entries.len(), 1);
    }
}
