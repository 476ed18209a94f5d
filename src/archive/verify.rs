//! Checking an archive without changing it: every message file is one whole
//! zstd frame that decompresses to exactly its `S=` size and to the hash
//! recorded at pull time; the journal and the tree agree; nothing foreign
//! sits among the messages. Also the pure comparison of a server's UID/size
//! listing with a folder, for `verify --server`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::search::parallel_map;
use super::view::FolderView;

/// One thing wrong with an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file (or, for a journal entry without a file, the path it
    /// would have).
    pub path: PathBuf,
    /// A short stable word for scripts: `damaged`, `size`, `hash`,
    /// `missing`, `unjournaled`, `stray`, `duplicate`, `journal`.
    pub kind: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.detail)
    }
}

/// One file to check.
#[derive(Debug, Clone)]
pub struct FileCheck {
    pub path: PathBuf,
    /// `S=` from the name.
    pub size: u64,
    /// Hashes the journal records for this file (several when a
    /// UIDVALIDITY change aliased it); empty when unjournaled.
    pub sha256: Vec<String>,
}

/// The tree-and-journal disagreements of a folder (no file is read), and
/// the files to check.
pub fn plan_folder(view: &FolderView) -> (Vec<Problem>, Vec<FileCheck>) {
    let mut problems = Vec::new();
    if !view.journal_clean {
        problems.push(Problem {
            path: view.state.join("journal"),
            kind: "journal",
            detail: "the journal has a torn or damaged line".into(),
        });
    }
    let mut hashes: HashMap<&str, Vec<String>> = HashMap::new();
    for e in &view.journal {
        let h = hashes.entry(e.base.as_str()).or_default();
        if !h.contains(&e.sha256) {
            h.push(e.sha256.clone());
        }
    }
    let mut bases: HashSet<String> = HashSet::new();
    let mut checks = Vec::new();
    for f in &view.files {
        let base = f.base.clone();
        if !bases.insert(base.clone()) {
            problems.push(Problem {
                path: f.path.clone(),
                kind: "duplicate",
                detail: "a second file of the same message (cur/ and new/)".into(),
            });
        }
        let sha256 = hashes.get(base.as_str()).cloned().unwrap_or_default();
        if sha256.is_empty() {
            problems.push(Problem {
                path: f.path.clone(),
                kind: "unjournaled",
                detail: format!(
                    "no journal entry (UIDVALIDITY {} UID {}); its content cannot be checked against the hash taken at pull time",
                    f.name.uidvalidity, f.name.uid
                ),
            });
        }
        checks.push(FileCheck {
            path: f.path.clone(),
            size: f.name.size,
            sha256,
        });
    }
    let mut reported: HashSet<&str> = HashSet::new();
    for e in &view.journal {
        if !bases.contains(&e.base) && reported.insert(e.base.as_str()) {
            problems.push(Problem {
                // The flags part of the name is not journaled: name the base.
                path: view.path.join("cur").join(&e.base),
                kind: "missing",
                detail: format!(
                    "journaled message (UIDVALIDITY {} UID {}) has no file `{}:2,*` in cur/ or new/",
                    e.uidvalidity, e.uid, e.base
                ),
            });
        }
    }
    for s in &view.strays {
        problems.push(Problem {
            path: s.clone(),
            kind: "stray",
            detail: "not a message file imapbak wrote (left alone)".into(),
        });
    }
    (problems, checks)
}

/// Reads every file on up to `threads` threads; `done` is called after each
/// file with its `S=` size (for progress). Returns the problems found.
pub fn check_files(
    checks: &[FileCheck],
    threads: usize,
    done: &(dyn Fn(u64) + Sync),
) -> Vec<Problem> {
    parallel_map(checks, threads, |c| {
        let r = check_file(c);
        done(c.size);
        r
    })
    .into_iter()
    .flatten()
    .collect()
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Checks one file; `None` when it is whole.
pub fn check_file(c: &FileCheck) -> Option<Problem> {
    let problem = |kind, detail: String| {
        Some(Problem {
            path: c.path.clone(),
            kind,
            detail,
        })
    };
    let mut result = decode(&c.path);
    if let Err(Unreadable::Gone) = result {
        // A pull running meanwhile may have renamed it for a flag change.
        result = match renamed(&c.path) {
            Some(p) => decode(&p),
            None => Err(Unreadable::Gone),
        };
    }
    let (size, sha) = match result {
        Ok(v) => v,
        Err(Unreadable::Gone) => {
            return problem(
                "missing",
                "the file disappeared while verify ran".to_string(),
            )
        }
        Err(Unreadable::Damaged(reason)) => return problem("damaged", reason),
    };
    if size != c.size {
        return problem(
            "size",
            format!("decompresses to {size} bytes, its name says S={}", c.size),
        );
    }
    if !c.sha256.is_empty() && !c.sha256.contains(&sha) {
        return problem(
            "hash",
            format!(
                "content differs from what was archived (sha256 {sha}, journal {})",
                c.sha256.join(" or ")
            ),
        );
    }
    None
}

/// Why a file could not be checked.
enum Unreadable {
    /// It is not there (any more).
    Gone,
    Damaged(String),
}

impl From<String> for Unreadable {
    fn from(s: String) -> Unreadable {
        Unreadable::Damaged(s)
    }
}

impl From<&str> for Unreadable {
    fn from(s: &str) -> Unreadable {
        Unreadable::Damaged(s.to_string())
    }
}

/// The current path of a message file that was renamed (same base name,
/// other flags, `cur/` or `new/`).
fn renamed(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let prefix = format!("{}:2,", name.rsplit_once(":2,")?.0);
    let folder = path.parent()?.parent()?;
    ["cur", "new"].iter().find_map(|sub| {
        std::fs::read_dir(folder.join(sub))
            .ok()?
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .map(|e| e.path())
    })
}

/// Decompresses a file that must be exactly one zstd frame; its size and
/// SHA-256, or what is wrong.
fn decode(path: &Path) -> Result<(u64, String), Unreadable> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Unreadable::Gone,
        _ => Unreadable::Damaged(format!("cannot open: {e}")),
    })?;
    let mut reader = BufReader::with_capacity(128 * 1024, file);
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("cannot read: {e}").into()),
        }
    }
    if got < 4 || magic != ZSTD_MAGIC {
        return Err(if got == 0 {
            "empty file, not a zstd frame".into()
        } else {
            "not a zstd frame (bad magic number)".into()
        });
    }
    let reader = std::io::Read::chain(&magic[..], reader);
    let mut dec = zstd::stream::read::Decoder::with_buffer(reader)
        .map_err(|e| Unreadable::Damaged(format!("cannot start decompressing: {e}")))?
        .single_frame();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                size += n as u64;
                hasher.update(&buf[..n]);
            }
            Err(e) => return Err(format!("does not decompress: {e}").into()),
        }
    }
    let mut rest = dec.finish();
    let mut one = [0u8; 1];
    match rest.read(&mut one) {
        Ok(0) => Ok((size, hex::encode(hasher.finalize()))),
        Ok(_) => Err("more data after the zstd frame (not a single frame)".into()),
        Err(e) => Err(format!("cannot read: {e}").into()),
    }
}

/// How a server mailbox and its archive folder differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerDiff {
    /// (UID, RFC822.SIZE) on the server but not in the archive.
    pub not_archived: Vec<(u32, u32)>,
    /// (UID, server size, archived size) that disagree.
    pub size_differs: Vec<(u32, u32, u64)>,
    /// Archived messages of this UIDVALIDITY the server no longer has.
    pub archive_only: usize,
    /// Archived messages of other (earlier) UIDVALIDITYs.
    pub other_generations: usize,
}

/// Compares the server's (UID, size) list of a mailbox whose UIDVALIDITY is
/// `uidvalidity` with the archived (UIDVALIDITY, UID, size) list.
pub fn compare_server(
    server: &[(u32, u32)],
    uidvalidity: u32,
    archived: &[(u32, u32, u64)],
) -> ServerDiff {
    let mut ours: HashMap<u32, u64> = HashMap::new();
    let mut diff = ServerDiff::default();
    for &(uv, uid, size) in archived {
        if uv == uidvalidity {
            ours.insert(uid, size);
        } else {
            diff.other_generations += 1;
        }
    }
    let mut on_server = HashSet::new();
    for &(uid, size) in server {
        on_server.insert(uid);
        match ours.get(&uid) {
            None => diff.not_archived.push((uid, size)),
            Some(&have) if have != size as u64 => diff.size_differs.push((uid, size, have)),
            Some(_) => {}
        }
    }
    diff.not_archived.sort_unstable();
    diff.size_differs.sort_unstable();
    diff.archive_only = ours.keys().filter(|u| !on_server.contains(u)).count();
    diff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::view::read_folder;
    use crate::archive::Archive;
    use std::fs;

    #[test]
    fn compare_server_finds_new_resized_and_gone_messages() {
        let server = [(1, 10), (2, 20), (4, 40), (3, 30)];
        let archived = [(7, 1, 10), (7, 2, 21), (7, 5, 50), (6, 1, 10)];
        let d = compare_server(&server, 7, &archived);
        assert_eq!(d.not_archived, vec![(3, 30), (4, 40)]);
        assert_eq!(d.size_differs, vec![(2, 20, 21)]);
        assert_eq!(d.archive_only, 1);
        assert_eq!(d.other_generations, 1);
        assert_eq!(compare_server(&[], 7, &[]), ServerDiff::default());
    }

    fn setup() -> (tempfile::TempDir, Archive) {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::at(dir.path());
        archive.create().unwrap();
        let folder = archive.folder("");
        folder.create().unwrap();
        let mut entries = Vec::new();
        for uid in 1..=4 {
            let body = format!("Subject: {uid}\r\n\r\n{}\r\n", "body ".repeat(200));
            entries.push(
                folder
                    .write_message(3, uid, 0, "", body.as_bytes(), 3)
                    .unwrap()
                    .entry,
            );
        }
        folder.journal(&entries).unwrap();
        (dir, archive)
    }

    fn all_problems(archive: &Archive) -> Vec<Problem> {
        let view = read_folder(archive, "").unwrap();
        let (mut p, checks) = plan_folder(&view);
        p.extend(check_files(&checks, 2, &|_| {}));
        p
    }

    #[test]
    fn a_whole_archive_has_no_problem() {
        let (_d, archive) = setup();
        assert_eq!(all_problems(&archive), vec![]);
    }

    #[test]
    fn flipped_truncated_deleted_stray_and_appended_are_each_named() {
        let (dir, archive) = setup();
        let view = read_folder(&archive, "").unwrap();
        let p: Vec<PathBuf> = view.files.iter().map(|f| f.path.clone()).collect();
        let mut bytes = fs::read(&p[0]).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        fs::write(&p[0], &bytes).unwrap();
        let bytes = fs::read(&p[1]).unwrap();
        fs::write(&p[1], &bytes[..bytes.len() - 5]).unwrap();
        fs::remove_file(&p[2]).unwrap();
        let mut bytes = fs::read(&p[3]).unwrap();
        bytes.extend_from_slice(&bytes.clone());
        fs::write(&p[3], &bytes).unwrap();
        let stray = dir.path().join("mail/new/notes.txt");
        fs::write(&stray, b"hello").unwrap();

        let mut found: Vec<(String, &str)> = all_problems(&archive)
            .iter()
            .map(|p| {
                let name = p.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, p.kind)
            })
            .collect();
        found.sort();
        // Matched on the base name: a missing file is named without flags.
        let kind_of = |i: usize| {
            let name = p[i].file_name().unwrap().to_string_lossy().into_owned();
            let base = name.split(":2,").next().unwrap().to_string();
            found
                .iter()
                .find(|(n, _)| n.split(":2,").next().unwrap() == base)
                .map(|(_, k)| *k)
        };
        assert!(matches!(kind_of(0), Some("damaged" | "hash")), "{found:?}");
        assert_eq!(kind_of(1), Some("damaged"), "{found:?}");
        assert_eq!(kind_of(2), Some("missing"), "{found:?}");
        assert_eq!(kind_of(3), Some("damaged"), "{found:?}");
        assert!(found.contains(&("notes.txt".into(), "stray")), "{found:?}");
        assert_eq!(found.len(), 5, "{found:?}");
    }

    #[test]
    fn a_file_renamed_for_a_flag_change_while_verify_runs_is_still_checked() {
        let (_d, archive) = setup();
        let view = read_folder(&archive, "").unwrap();
        let (_, checks) = plan_folder(&view);
        let old = &view.files[0].path;
        let new = old.with_file_name(format!("{}:2,FS", view.files[0].base));
        fs::rename(old, &new).unwrap();
        assert_eq!(check_file(&checks[0]), None);
        fs::remove_file(&new).unwrap();
        assert_eq!(check_file(&checks[0]).unwrap().kind, "missing");
    }

    #[test]
    fn a_plain_uncompressed_file_under_our_name_is_damaged() {
        let (_d, archive) = setup();
        let view = read_folder(&archive, "").unwrap();
        fs::write(&view.files[0].path, b"Subject: 1\r\n\r\n").unwrap();
        let p = all_problems(&archive);
        assert_eq!(p.len(), 1);
        assert!(p[0].detail.contains("not a zstd frame"), "{}", p[0]);
    }
}
