//! What restore remembers outside the archive: the APPENDUIDs of what it
//! appended, so a rerun need not read those archived headers again, and
//! the batches it has sent without an answer yet ([`Intent`]), so a rerun
//! can tell the copies a killed run left in flight from anyone else's.

use std::collections::{HashMap, HashSet};
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
    /// Names this process's intent files apart from a dead run's.
    run: String,
}

/// A batch of APPENDs sent into one mailbox whose answer was never read:
/// written (synced) before the batch is sent, removed once its answer is
/// recorded. One that is still there when a run starts belongs to a run that
/// was killed or lost its connection, and its messages may still land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub path: PathBuf,
    pub uidvalidity: u32,
    /// No message of the batch can get a UID below this: the mailbox's
    /// UIDNEXT when the batch was planned.
    pub uidnext: u32,
    /// Base names of the archived messages in the batch.
    pub bases: Vec<String>,
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
        Some(RestoreState::at(
            &base.join("imapbak").join("restore").join(format!(
                "{}->{}",
                safe(source),
                safe(target)
            )),
        ))
    }

    pub fn at(dir: &Path) -> RestoreState {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        RestoreState {
            dir: dir.to_path_buf(),
            run: format!("{}-{nanos}", std::process::id()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, raw: &str) -> PathBuf {
        self.dir.join(format!("{}.log", mailbox_key(raw)))
    }

    fn intent_dir(&self) -> PathBuf {
        self.dir.join("intents")
    }

    /// Records, durably, that `bases` are about to be appended to `raw`
    /// (UIDVALIDITY `uidvalidity`, no UID below `uidnext`). Returns the
    /// record to pass to [`RestoreState::resolve`] once the answer is in;
    /// an error means the batch must not be sent, since a rerun could not
    /// tell its copies apart.
    pub fn intend(
        &self,
        raw: &str,
        uidvalidity: u32,
        uidnext: u32,
        bases: &[&str],
    ) -> std::io::Result<Intent> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = self.intent_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}.{}.{seq}", mailbox_key(raw), self.run);
        let mut text = format!("{uidvalidity} {uidnext}\n");
        for b in bases {
            text.push_str(b);
            text.push('\n');
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(&name);
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()?;
        Ok(Intent {
            path,
            uidvalidity,
            uidnext,
            bases: bases.iter().map(|b| b.to_string()).collect(),
        })
    }

    /// The batch's answer is recorded: its copies are known by APPENDUID
    /// (or it failed as a whole), so the intent is no longer needed.
    pub fn resolve(&self, intent: &Intent) {
        if let Err(e) = fs::remove_file(&intent.path) {
            log::warn!("cannot remove `{}`: {e}", intent.path.display());
        }
    }

    /// Unanswered batches into `raw` (of any run, this one included) under
    /// `uidvalidity`; those of another UIDVALIDITY cannot land any more and
    /// are dropped.
    pub fn intents(&self, raw: &str, uidvalidity: u32) -> Vec<Intent> {
        let prefix = format!("{}.", mailbox_key(raw));
        let Ok(rd) = fs::read_dir(self.intent_dir()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                continue;
            }
            let path = e.path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let mut lines = text.lines();
            let head: Vec<u32> = lines
                .next()
                .unwrap_or("")
                .split(' ')
                .filter_map(|v| v.parse().ok())
                .collect();
            let [uv, uidnext] = head[..] else {
                continue;
            };
            let intent = Intent {
                path,
                uidvalidity: uv,
                uidnext,
                bases: lines.map(str::to_string).collect(),
            };
            if uv == uidvalidity {
                out.push(intent);
            } else {
                self.resolve(&intent);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
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

    /// Recorded base name -> UID for `raw` under `uidvalidity`.
    pub fn load(&self, raw: &str, uidvalidity: u32) -> HashMap<String, u32> {
        self.records(raw, uidvalidity).into_iter().collect()
    }

    /// Every UID restore was given by APPENDUID in `raw` under
    /// `uidvalidity`, by any run: copies that are certainly restore's own.
    pub fn recorded_uids(&self, raw: &str, uidvalidity: u32) -> HashSet<u32> {
        self.records(raw, uidvalidity)
            .into_iter()
            .map(|(_, uid)| uid)
            .collect()
    }

    fn records(&self, raw: &str, uidvalidity: u32) -> Vec<(String, u32)> {
        let Ok(text) = fs::read_to_string(self.file(raw)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for line in text.lines() {
            let mut f = line.splitn(3, ' ');
            let (Some(uv), Some(uid), Some(base)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let (Ok(uv), Ok(uid)) = (uv.parse::<u32>(), uid.parse::<u32>()) {
                if uv == uidvalidity {
                    out.push((base.to_string(), uid));
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

fn mailbox_key(raw: &str) -> String {
    crate::archive::sha256_hex(raw.as_bytes())[..24].to_string()
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
        st.record("INBOX", &[(5, 9, "a".into())]);
        assert_eq!(st.load("INBOX", 5), [("a".to_string(), 9)].into());
        assert_eq!(st.recorded_uids("INBOX", 5), [1, 9].into());
    }

    #[test]
    fn intents_outlive_a_dead_run_until_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let dead = RestoreState::at(dir.path());
        let a = dead.intend("INBOX", 5, 10, &["a", "b"]).unwrap();
        dead.intend("Other", 5, 3, &["c"]).unwrap();
        let rerun = RestoreState::at(dir.path());
        let found = rerun.intents("INBOX", 5);
        assert_eq!(found, [a]);
        assert_eq!(found[0].uidnext, 10);
        assert_eq!(found[0].bases, ["a", "b"]);
        rerun.resolve(&found[0]);
        assert!(rerun.intents("INBOX", 5).is_empty());
        // Another UIDVALIDITY: the mailbox was recreated, nothing can land.
        assert!(rerun.intents("Other", 6).is_empty());
        assert!(rerun.intents("Other", 5).is_empty());
    }
}
