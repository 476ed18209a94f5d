//! The archive on disk: a Maildir++ tree that a stock Dovecot can serve
//! (`mail/`), plus imapbak's own per-mailbox journal and status (`state/`).
//! Knows nothing of IMAP. The tree is the truth: every file name carries
//! its (UIDVALIDITY, UID), so `state/` can be rebuilt from it.

pub mod headers;
pub mod journal;
mod maildir;
pub mod names;
pub mod search;
pub mod verify;
pub mod view;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use journal::{JournalEntry, Status};
pub use maildir::{
    flags_to_letters, hash_file, letters_to_flags, read_message, read_message_sized, sha256_hex,
    ArchivedFile, Compressor, FileName, Folder, FolderFiles, FolderIndex, Keywords, Staged,
    TreeFile, Written,
};

/// A failure in the archive, always naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{what} `{}`: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("archive `{}` is locked by another imapbak run (lock file `{}`)", root.display(), lock.display())]
    Locked { root: PathBuf, lock: PathBuf },
    #[error("archive file `{}` is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("`{}` is not empty and not an imapbak archive (no mail/ or state/ in it)\nhint: point `archive` at a new or empty directory, e.g. `{}`", root.display(), root.join("imapbak").display())]
    Foreign { root: PathBuf },
}

impl ArchiveError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { what, path, source }
    }
}

/// The folders the last pull proved unchanged from the listing alone, and
/// when. A no-change pull writes this one file instead of every folder's
/// status, so `ls` can show the last successful pull without a run of many
/// mailboxes paying one synced write each.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnchangedRun {
    /// Seconds since the epoch.
    pub time: i64,
    /// Maildir++ directory names (`""` is INBOX).
    pub folders: Vec<String>,
}

/// The source server's personal namespace as the last pull saw it, so a
/// restore can tell a prefix level (`INBOX` of `INBOX.Sent`) from a real one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceRecord {
    /// Decoded, delimiter included (`INBOX.`); empty for none.
    pub prefix: String,
    pub delimiter: Option<char>,
}

impl NamespaceRecord {
    /// The hierarchy levels of the prefix (`["INBOX"]` for `INBOX.`).
    pub fn levels(&self) -> Vec<String> {
        let trimmed = match self.delimiter {
            Some(d) => self.prefix.trim_end_matches(d),
            None => &self.prefix,
        };
        if trimmed.is_empty() {
            return Vec::new();
        }
        match self.delimiter {
            Some(d) => trimmed.split(d).map(str::to_string).collect(),
            None => vec![trimmed.to_string()],
        }
    }
}

/// One account's archive directory.
#[derive(Debug, Clone)]
pub struct Archive {
    root: PathBuf,
}

/// Held while a run works on an archive; the kernel drops the lock when the
/// process dies, so a killed holder never leaves it stale.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Archive {
    /// The archive at `root`, which may not exist yet.
    pub fn at(root: &Path) -> Archive {
        Archive {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.root.join("mail")
    }

    /// Why the offline commands find nothing to read here (with a hint),
    /// or `None` when an archive is there. Every command treats this the
    /// same way: an account-level error, exit 2 when no account had one.
    pub fn missing(&self) -> Option<String> {
        if self.root.exists() && !self.root.is_dir() {
            return Some(format!(
                "the archive path `{}` is not a directory\nhint: `archive` must name a directory (the first pull creates it)",
                self.root.display()
            ));
        }
        (!self.mail_dir().is_dir()).then(|| {
            format!(
                "no archive at `{}`\nhint: run `imapbak pull` first, or check `archive` in the configuration",
                self.root.display()
            )
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// Creates `mail/` and `state/` (0700) if missing. A non-empty
    /// directory that is not an archive is refused: mixing an archive into
    /// someone's files (a typo for `~`, say) is never what was meant.
    pub fn create(&self) -> Result<(), ArchiveError> {
        if !self.mail_dir().is_dir() && !self.state_dir().is_dir() {
            if let Ok(mut rd) = fs::read_dir(&self.root) {
                if rd.next().is_some() {
                    return Err(ArchiveError::Foreign {
                        root: self.root.clone(),
                    });
                }
            }
        }
        // The root may be a symlink the user made; below it, nothing is followed.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(ArchiveError::io("cannot create directory", &self.root))?;
        for dir in [self.mail_dir(), self.state_dir()] {
            make_dir(&dir)?;
        }
        Ok(())
    }

    /// Takes the archive's lock without waiting.
    pub fn lock(&self) -> Result<Lock, ArchiveError> {
        let path = self.state_dir().join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(ArchiveError::io("cannot open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {
                let mut f = &file;
                let _ = f.write_all(format!("{}\n", std::process::id()).as_bytes());
                Ok(Lock { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => Err(ArchiveError::Locked {
                root: self.root.clone(),
                lock: path,
            }),
            Err(fs::TryLockError::Error(e)) => Err(ArchiveError::Io {
                what: "cannot lock",
                path,
                source: e,
            }),
        }
    }

    /// Records the folders a pull found unchanged (replacing the last record).
    pub fn save_unchanged(&self, run: &UnchangedRun) -> Result<(), ArchiveError> {
        let json = serde_json::to_vec(run).expect("serializable");
        write_atomic(&self.state_dir().join("unchanged.json"), &json)
    }

    /// The last record of [`Archive::save_unchanged`]; empty when there is
    /// none or it cannot be read (it only ever adds to what `ls` shows).
    pub fn load_unchanged(&self) -> UnchangedRun {
        std::fs::read(self.state_dir().join("unchanged.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// The last successful pull of a folder: its status's time, or later
    /// when the last pull proved it unchanged.
    pub fn last_pull(&self, dir: &str, status: &Status, unchanged: &UnchangedRun) -> i64 {
        if unchanged.folders.iter().any(|f| f == dir) {
            status.last_pull.max(unchanged.time)
        } else {
            status.last_pull
        }
    }

    /// Records the source's namespace (written only when it changed).
    pub fn save_namespace(&self, ns: &NamespaceRecord) -> Result<(), ArchiveError> {
        if self.load_namespace().as_ref() == Some(ns) {
            return Ok(());
        }
        let json = serde_json::to_vec(ns).expect("serializable");
        write_atomic(&self.state_dir().join("namespace.json"), &json)
    }

    /// The namespace the last pull recorded, if any.
    pub fn load_namespace(&self) -> Option<NamespaceRecord> {
        std::fs::read(self.state_dir().join("namespace.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The folder for a Maildir++ directory name (`""` is INBOX).
    pub fn folder(&self, dir: &str) -> Folder {
        let key = if dir.is_empty() { "INBOX" } else { dir };
        Folder::new(
            self.mail_dir().join(dir),
            self.state_dir().join("mailboxes").join(key),
            !dir.is_empty(),
        )
    }
}

/// A decimal number as we write it: digits only, no leading zero.
pub(crate) fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Creates a directory with mode 0700 if it does not exist.
pub(crate) fn make_dir(dir: &Path) -> Result<(), ArchiveError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A symlink planted where a folder belongs is never followed.
            let meta = fs::symlink_metadata(dir).map_err(ArchiveError::io("cannot stat", dir))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(ArchiveError::Io {
                    what: "not a directory (refusing to follow)",
                    path: dir.to_path_buf(),
                    source: io::Error::other("exists and is not a plain directory"),
                })
            }
        }
        Err(e) => Err(ArchiveError::Io {
            what: "cannot create directory",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

/// fsyncs a directory so that renames into it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ArchiveError::io("cannot sync directory", dir))
}

/// Reads a JSON record of `state/`: the default when the file is missing,
/// and (with a warning) when it cannot be parsed; only an I/O error is an
/// error.
pub(crate) fn read_record<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> Result<T, ArchiveError> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("ignoring unreadable `{}`: {e}", path.display());
            T::default()
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(ArchiveError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Writes a JSON record atomically ([`write_atomic`]), or, when `empty`,
/// removes its file (durably: the directory is synced).
pub(crate) fn write_record<T: serde::Serialize>(
    path: &Path,
    record: &T,
    empty: bool,
) -> Result<(), ArchiveError> {
    if empty {
        return match fs::remove_file(path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArchiveError::Io {
                what: "cannot remove",
                path: path.to_path_buf(),
                source: e,
            }),
        };
    }
    let bytes = serde_json::to_vec(record).expect("a record serialises");
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// so readers see the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ArchiveError::io("cannot create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(ArchiveError::io("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(ArchiveError::io("cannot rename into place", path))?;
    sync_dir(dir)
}
