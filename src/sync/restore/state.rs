//! What restore remembers outside the archive: the APPENDUIDs of what it
//! appended, so a rerun need not read those archived headers again.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The record of APPENDUIDs for one (archive account, target account)
/// pair: one append-only file per target mailbox, lines
/// `<uidvalidity> <uid> <archived base name>`. It is a cache: losing it
/// costs a rerun some header reads, never a duplicate.
#[derive(Debug, Clone)]
pub struct RestoreState {
    dir: PathBuf,
}

impl RestoreState {
    /// `$XDG_STATE_HOME/imapbak/restore/<source>-><target>/` (or
    /// `~/.local/state/...`).
    pub fn for_accounts(source: &str, target: &str) -> Option<RestoreState> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                directories::BaseDirs::new().map(|b| b.home_dir().join(".local").join("state"))
            })?;
        Some(RestoreState {
            dir: base.join("imapbak").join("restore").join(format!(
                "{}->{}",
                safe(source),
                safe(target)
            )),
        })
    }

    pub fn at(dir: &Path) -> RestoreState {
        RestoreState {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, raw: &str) -> PathBuf {
        let h = crate::archive::sha256_hex(raw.as_bytes());
        self.dir.join(format!("{}.log", &h[..24]))
    }

    /// Creates the directory (0700) and takes its lock, so two restores of
    /// the same pair never append side by side.
    pub fn lock(&self) -> std::io::Result<Option<File>> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.dir.join("lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Marks a run as started; true if the previous run never finished (was
    /// killed), so appends it had sent may still be landing on the server.
    pub fn begin_run(&self) -> bool {
        let marker = self.dir.join("unfinished");
        let was = marker.exists();
        if let Err(e) = fs::write(&marker, format!("{}\n", std::process::id())) {
            log::warn!("cannot write `{}`: {e}", marker.display());
        }
        was
    }

    /// Marks the run as finished: nothing of ours is in flight any more.
    pub fn end_run(&self) {
        let _ = fs::remove_file(self.dir.join("unfinished"));
    }

    /// Recorded base name -> UID for `raw` under `uidvalidity`.
    pub fn load(&self, raw: &str, uidvalidity: u32) -> HashMap<String, u32> {
        let Ok(text) = fs::read_to_string(self.file(raw)) else {
            return HashMap::new();
        };
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut f = line.splitn(3, ' ');
            let (Some(uv), Some(uid), Some(base)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(uv), Ok(uid)) = (uv.parse::<u32>(), uid.parse::<u32>()) {
                if uv == uidvalidity {
                    out.insert(base.to_string(), uid);
                }
            }
        }
        out
    }

    /// Appends records; a failure only costs a rerun some work.
    pub fn record(&self, raw: &str, entries: &[(u32, u32, String)]) {
        if entries.is_empty() {
            return;
        }
        let mut text = String::new();
        for (uv, uid, base) in entries {
            text.push_str(&format!("{uv} {uid} {base}\n"));
        }
        let path = self.file(raw);
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = r {
            log::warn!(
                "cannot record restored messages in `{}`: {e}",
                path.display()
            );
        }
    }
}

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_records_round_trip_per_uidvalidity() {
        let dir = tempfile::tempdir().unwrap();
        let st = RestoreState::at(dir.path());
        assert!(st.lock().unwrap().is_some());
        st.record("INBOX", &[(5, 1, "a".into()), (6, 2, "b".into())]);
        assert_eq!(st.load("INBOX", 5), [("a".to_string(), 1)].into());
        assert!(st.load("Other", 5).is_empty());
    }
}
