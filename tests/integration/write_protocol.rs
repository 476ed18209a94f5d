//! The write protocol behind "Crash anywhere, lose nothing", checked on the
//! system calls of a real pull (strace): a message's bytes are made durable
//! (an fsync of its file, or a syncfs after its last write) before it is
//! renamed into `cur/`, and `cur/` is fsynced after the rename before the
//! journal names it. `kill -9` tests cannot see this order (the page cache
//! survives a killed process); a power cut would.
//!
//! strace is installed by scripts/dovecot.sh (called by scripts/test.sh);
//! without it a run outside CI skips with a message, and CI fails.

use std::collections::HashMap;
use std::process::Command;

use crate::support::{dovecot, mail, TestEnv};

/// One system call of the trace, placed where it counts: a sync where it
/// returned, a write or rename where it began (so an overlap never passes).
#[derive(Debug)]
enum Event {
    /// A write to the file at this path.
    Write(String),
    /// fsync or fdatasync of this path (a file or a directory) returned 0.
    Sync(String),
    /// syncfs returned 0.
    SyncFs,
    /// A successful rename.
    Rename { from: String, to: String },
}

/// The path strace -y prints in `name(FD</path>...`.
fn fd_path(args: &str) -> Option<String> {
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(args[start..end].to_string())
}

/// The quoted strings of `args`, in order (paths are printed in full).
fn quoted(args: &str) -> Vec<String> {
    args.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// `call(args) = result`, strace padding the result of resumed calls
/// with spaces: the arguments without their `)`, and the result.
fn split_result(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(" = ")?;
    let call = s[..i].trim_end().strip_suffix(')')?;
    Some((call, &s[i + 3..]))
}

fn succeeded(result: &str) -> bool {
    !result.trim_start().starts_with('-')
}

/// Parses `strace -f -y -qq` output into events in the order they count.
fn events(trace: &str) -> Vec<Event> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        // `name(args <unfinished ...>` ... `<... name resumed>rest) = r`
        let (call, result) = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            let name = head.split('(').next().unwrap_or("");
            if name.starts_with("write") || name.starts_with("pwrite") {
                if let Some(p) = fd_path(head) {
                    out.push(Event::Write(p));
                }
            }
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if let Some(tail) = rest.strip_prefix("<... ") {
            let Some(head) = pending.remove(pid) else {
                continue;
            };
            let Some((_, after)) = tail.split_once(" resumed>") else {
                continue;
            };
            let Some((more, result)) = split_result(after) else {
                continue;
            };
            let name = head.split('(').next().unwrap_or("");
            if name.starts_with("write") || name.starts_with("pwrite") {
                continue; // placed where it began
            }
            (format!("{head}{more}"), result.to_string())
        } else {
            let Some((call, result)) = split_result(rest) else {
                continue;
            };
            (call.to_string(), result.to_string())
        };
        if !succeeded(&result) {
            continue;
        }
        let name = call.split('(').next().unwrap_or("");
        let args = &call[name.len()..];
        match name {
            "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" => {
                if let Some(p) = fd_path(args) {
                    out.push(Event::Write(p));
                }
            }
            "fsync" | "fdatasync" => {
                if let Some(p) = fd_path(args) {
                    out.push(Event::Sync(p));
                }
            }
            "syncfs" => out.push(Event::SyncFs),
            "rename" | "renameat" | "renameat2" => {
                let q = quoted(args);
                if q.len() >= 2 {
                    out.push(Event::Rename {
                        from: q[0].clone(),
                        to: q[1].clone(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// `mail/F/cur/NAME` -> (`mail/F`, the journal `state/mailboxes/F/journal`,
/// INBOX's folder being `mail` itself).
fn folder_and_journal(archive: &str, cur_file: &str) -> Option<(String, String)> {
    let rel = cur_file.strip_prefix(&format!("{archive}/mail"))?;
    let (folder, _) = rel.rsplit_once("/cur/")?;
    let name = folder.trim_start_matches('/');
    let name = if name.is_empty() { "INBOX" } else { name };
    Some((
        format!("{archive}/mail{folder}"),
        format!("{archive}/state/mailboxes/{name}/journal"),
    ))
}

#[test]
fn every_message_is_durable_before_cur_and_cur_before_the_journal() {
    if !crate::support::have_tool("strace", "scripts/dovecot.sh") {
        return;
    }
    let user = dovecot().new_user("wproto");
    let mut imap = user.imap();
    imap.create("Work");
    for i in 0..40u32 {
        let mb = if i % 4 == 0 { "Work" } else { "INBOX" };
        imap.append(
            mb,
            &["\\Seen"],
            "05-Mar-2021 10:00:00 +0000",
            &mail::plain(i),
        );
    }
    imap.append("INBOX", &[], "06-Mar-2021 10:00:00 +0000", &mail::big(2));
    imap.logout();
    let env = TestEnv::new();
    env.write_config(&env.account_toml("w", &user, ""));
    let log = env.path().join("strace.log");
    let inner = env.std_cmd();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-s", "0", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=write,writev,pwrite64,pwritev,pwritev2,fsync,fdatasync,syncfs,rename,renameat,renameat2",
        ])
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(["pull", "-q"]);
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().expect("run strace");
    assert!(
        out.status.success(),
        "pull under strace failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&log).expect("read the trace");
    let archive = env.archive("w").display().to_string();
    let ev = events(&trace);
    let mut renames = 0;
    for (r, e) in ev.iter().enumerate() {
        let Event::Rename { from, to } = e else {
            continue;
        };
        if !to.starts_with(&format!("{archive}/mail")) || !to.contains("/cur/") {
            continue;
        }
        renames += 1;
        let last_write = ev[..r]
            .iter()
            .rposition(|e| matches!(e, Event::Write(p) if p == from))
            .unwrap_or_else(|| panic!("no write to {from} before its rename"));
        assert!(
            ev[last_write..r]
                .iter()
                .any(|e| matches!(e, Event::SyncFs) || matches!(e, Event::Sync(p) if p == from)),
            "{from} was renamed into cur/ before its bytes were synced"
        );
        let (folder, journal) = folder_and_journal(&archive, to).expect("a folder of the archive");
        let cur = format!("{folder}/cur");
        let j = r + ev[r..]
            .iter()
            .position(|e| matches!(e, Event::Write(p) if *p == journal))
            .unwrap_or_else(|| panic!("{to} was never journaled in {journal}"));
        assert!(
            ev[r..j]
                .iter()
                .any(|e| matches!(e, Event::SyncFs) || matches!(e, Event::Sync(p) if *p == cur)),
            "{to} was journaled before {cur} was synced after its rename"
        );
    }
    assert_eq!(renames, 41, "every message goes through tmp/ into cur/");
}
