//! imapbak backs up every mailbox of an IMAP account into a compressed,
//! Dovecot-servable Maildir, incrementally by UID; restores it to any IMAP
//! server; expunges from the server only what the archive verifiably holds;
//! and verifies, searches and exports the archive offline.
//!
//! ```text
//! cli/        clap definitions, one file per subcommand; connects (the only
//!             place that joins imap/ to sync/) and maps errors to exit codes
//! config      TOML schema, password sources, resolved account settings
//! imap/       TLS, STARTTLS, login, raw commands (async-imap framing), the
//!             framing guard; implements the sync traits, converting its
//!             errors into sync::remote::RemoteError; no policy
//! oauth/      OAuth2: provider presets, token command, token store,
//!             flows (oauth2 crate over ureq); hands imap/ a bare token
//! org         organisations: a users list, an admin login, --user and
//!             --shard; expands one account table into one account a user
//! mutf7       modified UTF-7, shared by imap/ (wire names) and archive/
//!             (folder names)
//! archive/    the compressed Maildir: file names, write protocol, the one
//!             folder walk (Folder::files), journal, lock, header index,
//!             read-only views for verify/search/export
//! sync/       the engine; one folder per command, the same files in each:
//!   pull/       plan.rs (pure) · run.rs (executor, writer thread) · report.rs
//!   restore/    plan.rs · run.rs · report.rs · state.rs (APPENDUIDs, intents)
//!   expunge/    plan.rs · run.rs · report.rs · state.rs (expunge-pending.json)
//!   remote.rs   the Remote trait, its plain types and RemoteError
//!   pool.rs     queue, connect on demand, retry (pull and restore)
//!   interrupt.rs the Ctrl-C/SIGTERM flag executors check before a command
//!   mailboxes.rs which listed mailboxes a run works on
//!   gmail/      Gmail's rules, asked by pull (layout, label links),
//!               expunge (through Trash, its record) and restore (All
//!               Mail once, then labels, finished if cut off), the
//!               [THROTTLED] pause of all three, the archive view of ls,
//!               search, export and verify (once per message, with labels);
//!               the daily budget's default
//! progress    one trait; bars on a terminal, nothing elsewhere
//! report      the Summary trait every run report implements, error text
//! ```
//!
//! The boundary that matters: `sync/` and `archive/` never import
//! `crate::imap`. The engine sees the traits (`Remote`, `RestoreTarget`,
//! `ExpungeRemote`) and plain types, so planners are unit-tested without a
//! server and executors with fakes; `boundary::sync_and_archive_never_import_imap`
//! keeps it true. A provider whose rules differ (Gmail's labels) gets its
//! own planner beside the generic one and a trait method for what it needs
//! from the server, never IMAP code in the engine.

pub mod archive;
pub mod cli;
pub mod config;
pub mod exit_codes;
pub mod imap;
pub mod mutf7;
pub mod oauth;
pub mod org;
pub mod progress;
pub mod report;
pub mod sync;

#[cfg(test)]
mod boundary {
    use std::path::Path;

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn sync_and_archive_never_import_imap() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&root.join("sync"), &mut files);
        rust_files(&root.join("archive"), &mut files);
        assert!(files.len() > 10, "found only {files:?}");
        let offenders: Vec<String> = files
            .iter()
            .flat_map(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| l.contains("crate::imap") || l.contains("imapbak::imap"))
                    .map(|(i, l)| format!("{}:{}: {}", f.display(), i + 1, l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            offenders.is_empty(),
            "the engine imports imap/:\n{}",
            offenders.join("\n")
        );
    }
}
