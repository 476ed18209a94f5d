//! Applies link changes to the label folders: each new link is a hard link
//! of All Mail's file, made durable (directory fsync) before it is
//! journaled in the label folder, as pull's own write protocol does; a
//! removed link is unlinked, then forgotten by the journal.

use std::collections::{HashMap, HashSet};

use super::plan::{plan_links, FolderLinks, Layout, LinkChange};
use crate::archive::{Archive, ArchiveError, FileName, Keywords};
use crate::sync::remote::GmailMeta;

/// Brings the label folders in line with `meta` (what the server reported
/// this run); returns the number of changes made.
pub fn apply_links(
    archive: &Archive,
    layout: &Layout,
    meta: &[GmailMeta],
    uidvalidity: u32,
    keywords: &Keywords,
) -> Result<usize, ArchiveError> {
    if meta.is_empty() {
        return Ok(0);
    }
    let all = archive.folder(&layout.all.folder);
    let index = all.scan()?;
    let mut archived: HashMap<u32, (String, String)> = HashMap::new();
    let mut paths: HashMap<String, (std::path::PathBuf, FileName)> = HashMap::new();
    for m in meta {
        if let Some(f) = index.file_for(uidvalidity, m.uid) {
            archived.insert(m.uid, (f.name.base(), f.name.full()));
            paths.insert(
                f.name.full(),
                (
                    all.path().join(f.subdir).join(f.name.full()),
                    f.name.clone(),
                ),
            );
        }
    }
    let mut current: HashMap<String, FolderLinks> = HashMap::new();
    let mut files: HashMap<String, HashMap<String, crate::archive::TreeFile>> = HashMap::new();
    for dir in layout.label_folders() {
        let folder = archive.folder(&dir);
        folder.create()?;
        let mut kw = keywords.clone();
        folder.save_keywords(&mut kw)?;
        let found = folder.files()?;
        current.insert(
            dir.clone(),
            found
                .files
                .iter()
                .map(|f| (f.base.clone(), f.name.full()))
                .collect(),
        );
        files.insert(
            dir,
            found
                .files
                .into_iter()
                .map(|f| (f.name.full(), f))
                .collect(),
        );
    }
    let changes = plan_links(layout, meta, &archived, &current);
    let mut by_folder: HashMap<&str, Vec<&LinkChange>> = HashMap::new();
    for c in &changes {
        let folder = match c {
            LinkChange::Add { folder, .. }
            | LinkChange::Remove { folder, .. }
            | LinkChange::Rename { folder, .. } => folder.as_str(),
        };
        by_folder.entry(folder).or_default().push(c);
    }
    for (dir, changes) in by_folder {
        let folder = archive.folder(dir);
        let mut added = Vec::new();
        let mut removed: HashSet<(u32, u32)> = HashSet::new();
        for c in changes {
            match c {
                LinkChange::Add { name, .. } => {
                    let (src, parsed) = &paths[name];
                    if folder.link_from(src, parsed)? {
                        added.push(parsed.clone());
                    }
                }
                LinkChange::Remove { name, .. } => {
                    let f = &files[dir][name];
                    folder.unlink(&f.archived())?;
                    removed.insert((f.name.uidvalidity, f.name.uid));
                }
                LinkChange::Rename { from, to, .. } => {
                    let f = &files[dir][from];
                    let file = f.archived();
                    let flags = &paths[to].1.flags;
                    folder.set_flags(&file, flags)?;
                }
            }
        }
        folder.sync()?;
        if !removed.is_empty() {
            folder.forget(&removed)?;
        }
        let entries: Vec<_> = added
            .iter()
            .filter_map(|n| index.entries.get(&(n.uidvalidity, n.uid)).cloned())
            .collect();
        if !entries.is_empty() {
            folder.journal(&entries)?;
        }
    }
    Ok(changes.len())
}
