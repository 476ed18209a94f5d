//! Gmail mode against a fake Gmail: what no real server here can be made to
//! do. The fake keeps one message store and shows it through label views,
//! as Gmail does; every fact it encodes is from ../shared/PROVIDERS.md
//! ("Gmail"), which cites Google's "IMAP Extensions" page, imapsync's
//! FAQ.Gmail and gmvault.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::fakes::{certs, parse_set, FakeServer, Greeting, Hook, Session};
use crate::support::{self, dovecot, TestEnv};

const PW: &str = "gmail-fake-pw";

/// Gmail's post-login capabilities (PROVIDERS.md, "Capabilities seen in
/// real sessions"); COMPRESS=DEFLATE left out: our client uses it only when
/// asked.
const CAPS: &str = "IMAP4rev1 UNSELECT IDLE QUOTA ID XLIST CHILDREN X-GM-EXT-1 UIDPLUS ENABLE MOVE CONDSTORE ESEARCH UTF8=ACCEPT LIST-EXTENDED LIST-STATUS LITERAL- SPECIAL-USE APPENDLIMIT=35651584";

struct Msg {
    /// X-GM-MSGID: the same in every folder (PROVIDERS.md).
    msgid: u64,
    thrid: u64,
    body: Vec<u8>,
    date: String,
    flags: BTreeSet<String>,
    /// System labels (`\Inbox`, `\Sent`, ...) and user labels.
    labels: BTreeSet<String>,
    modseq: u64,
    /// Deleted forever (expunged in Trash): gone from every view and from
    /// the quota (PROVIDERS.md, "Gmail", imapsync FAQ.Gmail).
    gone: bool,
}

/// One view: a mailbox as Gmail lists it.
struct View {
    name: &'static str,
    /// Special-use attribute (RFC 6154), `\All` for All Mail.
    attr: &'static str,
    /// The label whose messages it shows; None: All Mail (every message
    /// but Spam and Trash, PROVIDERS.md).
    label: Option<&'static str>,
}

/// Folder names are localised (PROVIDERS.md): the German ones, so the client
/// must find them by attribute, never by name.
const VIEWS: &[View] = &[
    View {
        name: "INBOX",
        attr: "",
        label: Some("\\Inbox"),
    },
    View {
        name: "[Google Mail]/Alle Nachrichten",
        attr: "\\All",
        label: None,
    },
    View {
        name: "[Google Mail]/Gesendet",
        attr: "\\Sent",
        label: Some("\\Sent"),
    },
    View {
        name: "[Google Mail]/Papierkorb",
        attr: "\\Trash",
        label: Some("\\Trash"),
    },
    View {
        name: "[Google Mail]/Spam",
        attr: "\\Junk",
        label: Some("\\Spam"),
    },
    View {
        name: "Work",
        attr: "",
        label: Some("Work"),
    },
    View {
        name: "Work/Projects",
        attr: "",
        label: Some("Work/Projects"),
    },
];

#[derive(Default)]
struct Store {
    messages: Vec<Msg>,
    modseq: u64,
    /// Per view: msgid -> UID, assigned when a message first shows there.
    uids: HashMap<&'static str, BTreeMap<u64, u32>>,
    /// Body bytes sent in FETCH BODY[] replies.
    body_bytes: u64,
    selected: HashMap<usize, usize>,
    /// "Show in IMAP" off for All Mail (PROVIDERS.md, "Hidden mail").
    hide_all: bool,
    /// `\Deleted` marks, per view (view name, msgid).
    deleted: BTreeSet<(&'static str, u64)>,
    /// QUOTA STORAGE limit in KiB.
    quota_limit_kib: u64,
    /// EXPUNGEs that removed a label (sent in a label folder).
    label_expunges: u32,
    /// End the session with BYE right after the next UID MOVE (a run
    /// killed between the move and the expunge).
    bye_after_move: bool,
    /// APPENDLIMIT to announce instead of Gmail's 35,651,584 (PROVIDERS.md),
    /// so a test need not send 35 MB; 0: Gmail's.
    append_limit: usize,
    /// User labels not created yet (an empty account): not listed, and a
    /// STORE of them fails, as STORE does not create labels (PROVIDERS.md).
    missing_labels: BTreeSet<String>,
    /// Labels CREATEd, in order.
    created: Vec<String>,
    /// Messages APPENDed (a merge included).
    appends: u32,
    /// Body bytes a day allows (0: no limit); past it every session ends
    /// with `BYE Session expired` (PROVIDERS.md, "Limits": about 2,500 MB).
    daily_byte_limit: u64,
    /// Body bytes sent today (a test turns the day by zeroing it).
    today_bytes: u64,
    /// One BYE mid-run once this many body bytes went out (0: never):
    /// Gmail's "Session expired" in the middle of a run.
    bye_once_at: u64,
    /// Every Nth tagged OK says `OK Success [THROTTLED]` (0: never;
    /// PROVIDERS.md, "Limits").
    throttle_every: u32,
    /// Tagged OKs sent, for `throttle_every`.
    oks: u32,
    /// While set, a `UID STORE +X-GM-LABELS` ends the connection before
    /// it is applied: a restore cut off (or killed) between an APPEND and
    /// its label STORE, as a lost connection does to any client.
    cut_stores: bool,
    /// The APPEND that makes `appends` reach this count is stored, then the
    /// connection ends before its answer (0: never; one-shot): a restore
    /// killed between sending an APPEND and reading its APPENDUID.
    cut_append_answer_at: u32,
}

impl Store {
    /// The text of a tagged OK: `Success`, now and then `[THROTTLED]`.
    fn ok(&mut self) -> &'static str {
        self.oks += 1;
        if self.throttle_every > 0 && self.oks.is_multiple_of(self.throttle_every) {
            "Success [THROTTLED]"
        } else {
            "Success"
        }
    }
}

impl Store {
    fn in_view(v: &View, m: &Msg) -> bool {
        if m.gone {
            return false;
        }
        match v.label {
            Some(l) => m.labels.contains(l),
            None => !m.labels.contains("\\Trash") && !m.labels.contains("\\Spam"),
        }
    }

    /// UID of each message in view `v`, assigning new ones in order.
    fn view(&mut self, v: &'static View) -> Vec<(u32, usize)> {
        let map = self.uids.entry(v.name).or_default();
        let mut out = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            if Self::in_view(v, m) {
                let next = map.values().max().copied().unwrap_or(0) + 1;
                let uid = *map.entry(m.msgid).or_insert(next);
                out.push((uid, i));
            }
        }
        out.sort();
        out
    }

    fn add(&mut self, body: Vec<u8>, date: &str, flags: &[&str], labels: &[&str]) {
        self.modseq += 1;
        let n = self.messages.len() as u64;
        self.messages.push(Msg {
            msgid: 1_600_000_000_000_000_000 + n,
            thrid: 1_600_000_000_000_000_000 + n / 2,
            body,
            date: date.to_string(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            modseq: self.modseq,
            gone: false,
        });
        for v in VIEWS {
            self.view(v);
        }
    }

    /// A label or flag change moves the message's MODSEQ (CONDSTORE works
    /// on Gmail, PROVIDERS.md).
    fn relabel(&mut self, i: usize, add: &[&str], remove: &[&str]) {
        self.modseq += 1;
        let m = &mut self.messages[i];
        for l in add {
            m.labels.insert(l.to_string());
        }
        for l in remove {
            m.labels.remove(*l);
        }
        m.modseq = self.modseq;
        for v in VIEWS {
            self.view(v);
        }
    }

    /// QUOTA usage in bytes: every message not deleted forever, Trash and
    /// Spam included (PROVIDERS.md, "Gmail": an EXPUNGE in a label folder
    /// or All Mail "keeps using quota").
    fn usage(&self) -> u64 {
        self.messages
            .iter()
            .filter(|m| !m.gone)
            .map(|m| m.body.len() as u64)
            .sum()
    }

    /// Flags of message `i` as view `v` shows them.
    fn flags_in(&self, v: &View, i: usize) -> String {
        let m = &self.messages[i];
        let mut f: Vec<&str> = m.flags.iter().map(String::as_str).collect();
        if self.deleted.contains(&(v.name, m.msgid)) {
            f.push("\\Deleted");
        }
        f.join(" ")
    }
}

/// X-GM-LABELS as Gmail sends them: system labels quoted with the
/// backslash escaped (`"\\Inbox"`), user labels quoted (PROVIDERS.md).
fn labels_item(m: &Msg) -> String {
    let l: Vec<String> = m
        .labels
        .iter()
        .map(|l| format!("\"{}\"", l.replace('\\', "\\\\")))
        .collect();
    format!("({})", l.join(" "))
}

fn handle(store: &Mutex<Store>, n: usize, tag: &str, cmd: &str, s: &mut Session) -> Hook {
    let mut st = store.lock().unwrap();
    let upper = cmd.to_ascii_uppercase();
    let caps = if st.append_limit == 0 {
        CAPS.to_string()
    } else {
        CAPS.replace(
            "APPENDLIMIT=35651584",
            &format!("APPENDLIMIT={}", st.append_limit),
        )
    };
    let reply = if upper.starts_with("LOGIN ") {
        format!("{tag} OK [CAPABILITY {caps}] me@gmail.com authenticated (Success)\r\n")
    } else if upper == "CAPABILITY" {
        format!("* CAPABILITY {caps}\r\n{tag} OK Success\r\n")
    } else if upper == "LIST \"\" \"\"" {
        format!("* LIST (\\Noselect) \"/\" \"\"\r\n{tag} OK Success\r\n")
    } else if upper == "UNSELECT" {
        st.selected.remove(&n);
        format!("{tag} OK Returned to authenticated state. (Success)\r\n")
    } else if upper.starts_with("CREATE ") {
        let name = cmd[7..].trim_matches('"').to_string();
        st.missing_labels.remove(&name);
        st.created.push(name);
        format!("{tag} OK Success\r\n")
    } else if upper.starts_with("APPEND ") {
        return append(&mut st, n, tag, cmd, s);
    } else if upper.starts_with("UID STORE ") && upper.contains("+X-GM-LABELS.SILENT") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        if st.cut_stores {
            return Hook::Close;
        }
        let uid: u32 = cmd
            .split(' ')
            .nth(2)
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        let list = &cmd[cmd.find('(').unwrap_or(0) + 1..cmd.rfind(')').unwrap_or(0)];
        let labels = store_labels(list);
        if let Some(l) = labels.iter().find(|l| st.missing_labels.contains(*l)) {
            // STORE does not create labels (PROVIDERS.md, "APPEND").
            return reply_and(s, format!("{tag} NO [NONEXISTENT] No label {l}\r\n"));
        }
        let view = st.view(&VIEWS[vi]);
        if let Some(&(_, i)) = view.iter().find(|(u, _)| *u == uid) {
            st.relabel(
                i,
                &labels.iter().map(String::as_str).collect::<Vec<_>>(),
                &[],
            );
        }
        format!("{tag} OK Success\r\n")
    } else if upper.starts_with("LIST ") {
        let mut r = String::new();
        for v in VIEWS {
            if st.hide_all && v.attr == "\\All" {
                continue;
            }
            if st.missing_labels.contains(v.name) {
                continue;
            }
            let attrs = if v.attr.is_empty() {
                "\\HasNoChildren".to_string()
            } else {
                format!("\\HasNoChildren {}", v.attr)
            };
            r.push_str(&format!("* LIST ({attrs}) \"/\" \"{}\"\r\n", v.name));
            if upper.contains("RETURN (STATUS") {
                let view = st.view(v);
                let uidnext = view.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                let modseq = view
                    .iter()
                    .map(|(_, i)| st.messages[*i].modseq)
                    .max()
                    .unwrap_or(1);
                r.push_str(&format!(
                    "* STATUS \"{}\" (MESSAGES {} UIDNEXT {uidnext} UIDVALIDITY 11 HIGHESTMODSEQ {modseq})\r\n",
                    v.name,
                    view.len()
                ));
            }
        }
        r.push_str(&format!("{tag} OK Success\r\n"));
        r
    } else if upper.starts_with("EXAMINE ") || upper.starts_with("SELECT ") {
        let read_only = upper.starts_with("EXAMINE ");
        let name = cmd[cmd.find(' ').unwrap() + 1..]
            .trim_end_matches(" (CONDSTORE)")
            .trim_matches('"');
        match VIEWS.iter().position(|v| v.name == name) {
            Some(i) => {
                st.selected.insert(n, i);
                let view = st.view(&VIEWS[i]);
                let uidnext = view.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                let modseq = view
                    .iter()
                    .map(|(_, i)| st.messages[*i].modseq)
                    .max()
                    .unwrap_or(1);
                format!(
                    "* {} EXISTS\r\n* OK [UIDVALIDITY 11] ok\r\n* OK [UIDNEXT {uidnext}] ok\r\n* OK [HIGHESTMODSEQ {modseq}] ok\r\n{tag} OK [{}] {name} selected. (Success)\r\n",
                    view.len(),
                    if read_only { "READ-ONLY" } else { "READ-WRITE" }
                )
            }
            None => format!("{tag} NO [NONEXISTENT] Unknown Mailbox\r\n"),
        }
    } else if upper.starts_with("UID FETCH ") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        let view = st.view(&VIEWS[vi]);
        let max = view.iter().map(|(u, _)| *u).max().unwrap_or(0);
        let set = cmd.split(' ').nth(2).unwrap_or("");
        let wanted: BTreeSet<u32> = parse_set(set, max).into_iter().collect();
        let since: Option<u64> = upper
            .split("CHANGEDSINCE ")
            .nth(1)
            .and_then(|x| x.trim_end_matches(')').parse().ok());
        let mut r: Vec<u8> = Vec::new();
        for (seq, (uid, i)) in view.iter().enumerate() {
            if !wanted.contains(uid) {
                continue;
            }
            let m = &st.messages[*i];
            if since.is_some_and(|s| m.modseq <= s) {
                continue;
            }
            let flags = st.flags_in(&VIEWS[vi], *i);
            let seq = seq + 1;
            if upper.contains("BODY.PEEK[]") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} RFC822.SIZE {} FLAGS ({flags}) INTERNALDATE \"{}\" BODY[] {{{}}}\r\n",
                        m.body.len(),
                        m.date,
                        m.body.len()
                    )
                    .as_bytes(),
                );
                r.extend_from_slice(&m.body);
                r.extend_from_slice(b")\r\n");
            } else if upper.contains("X-GM-LABELS") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} FLAGS ({flags}) X-GM-MSGID {} X-GM-THRID {} X-GM-LABELS {} MODSEQ ({}))\r\n",
                        m.msgid,
                        m.thrid,
                        labels_item(m),
                        m.modseq
                    )
                    .as_bytes(),
                );
            } else if upper.contains("HEADER.FIELDS") {
                let id = message_id(&m.body)
                    .map(|id| format!("Message-ID: {id}\r\n\r\n"))
                    .unwrap_or_else(|| "\r\n".into());
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} RFC822.SIZE {} INTERNALDATE \"{}\" BODY[HEADER.FIELDS (MESSAGE-ID)] {{{}}}\r\n{id})\r\n",
                        m.body.len(),
                        m.date,
                        id.len()
                    )
                    .as_bytes(),
                );
            } else if upper.contains("INTERNALDATE") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} FLAGS ({flags}) INTERNALDATE \"{}\" RFC822.SIZE {} MODSEQ ({}))\r\n",
                        m.date,
                        m.body.len(),
                        m.modseq
                    )
                    .as_bytes(),
                );
            } else if upper.contains("RFC822.SIZE") {
                r.extend_from_slice(
                    format!("* {seq} FETCH (UID {uid} RFC822.SIZE {})\r\n", m.body.len())
                        .as_bytes(),
                );
            } else if upper.contains("FLAGS") {
                r.extend_from_slice(
                    format!(
                        "* {seq} FETCH (UID {uid} FLAGS ({flags}) MODSEQ ({}))\r\n",
                        m.modseq
                    )
                    .as_bytes(),
                );
            } else {
                r.extend_from_slice(format!("* {seq} FETCH (UID {uid})\r\n").as_bytes());
            }
        }
        if upper.contains("BODY.PEEK[]") {
            let bytes: u64 = view
                .iter()
                .filter(|(u, _)| wanted.contains(u))
                .map(|(_, i)| st.messages[*i].body.len() as u64)
                .sum();
            let over_day = st.daily_byte_limit > 0 && st.today_bytes + bytes > st.daily_byte_limit;
            let mid_run = st.bye_once_at > 0 && st.today_bytes + bytes > st.bye_once_at;
            if over_day || mid_run {
                st.bye_once_at = 0;
                let _ = s.send(b"* BYE Session expired, please login again.\r\n");
                return Hook::Close;
            }
            st.body_bytes += bytes;
            st.today_bytes += bytes;
        }
        let ok = st.ok();
        r.extend_from_slice(format!("{tag} OK {ok}\r\n").as_bytes());
        let _ = s.send(&r);
        return Hook::Done;
    } else if upper.starts_with("UID MOVE ") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        let mut words = cmd.splitn(4, ' ');
        let set = words.nth(2).unwrap_or("");
        let to = words.next().unwrap_or("").trim_matches('"');
        let Some(ti) = VIEWS.iter().position(|v| v.name == to) else {
            return reply_and(s, format!("{tag} NO [TRYCREATE] No folder {to}\r\n"));
        };
        let view = st.view(&VIEWS[vi]);
        let max = view.iter().map(|(u, _)| *u).max().unwrap_or(0);
        let wanted: BTreeSet<u32> = parse_set(set, max).into_iter().collect();
        let moving: Vec<(u32, usize)> = view
            .into_iter()
            .filter(|(u, _)| wanted.contains(u))
            .collect();
        for (_, i) in &moving {
            // Into Trash, a message leaves every other label: All Mail
            // holds "every message except Spam and Trash" (PROVIDERS.md).
            let m = &mut st.messages[*i];
            if VIEWS[ti].label == Some("\\Trash") {
                m.labels.clear();
            } else if let Some(l) = VIEWS[vi].label {
                m.labels.remove(l);
            }
            if let Some(l) = VIEWS[ti].label {
                m.labels.insert(l.to_string());
            }
        }
        st.modseq += 1;
        let ms = st.modseq;
        for (_, i) in &moving {
            st.messages[*i].modseq = ms;
        }
        let trash_view = st.view(&VIEWS[ti]);
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for (u, i) in &moving {
            if let Some((tu, _)) = trash_view.iter().find(|(_, j)| j == i) {
                src.push(u.to_string());
                dst.push(tu.to_string());
            }
        }
        // UIDPLUS/MOVE: COPYUID in an untagged OK (RFC 6851).
        let mut r = format!(
            "* OK [COPYUID 11 {} {}] (Success)\r\n",
            src.join(","),
            dst.join(",")
        );
        if st.bye_after_move {
            st.bye_after_move = false;
            let _ = s.send(format!("{r}* BYE Session expired\r\n").as_bytes());
            return Hook::Close;
        }
        r.push_str(&format!(
            "{tag} OK [COPYUID 11 {} {}] (Success)\r\n",
            src.join(","),
            dst.join(",")
        ));
        r
    } else if upper.starts_with("UID STORE ") && upper.contains("FLAGS.SILENT (\\DELETED)") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        let view = st.view(&VIEWS[vi]);
        let max = view.iter().map(|(u, _)| *u).max().unwrap_or(0);
        let set = cmd.split(' ').nth(2).unwrap_or("");
        let wanted: BTreeSet<u32> = parse_set(set, max).into_iter().collect();
        let add = upper.contains("+FLAGS");
        for (u, i) in view {
            if wanted.contains(&u) {
                let key = (VIEWS[vi].name, st.messages[i].msgid);
                if add {
                    st.deleted.insert(key);
                } else {
                    st.deleted.remove(&key);
                }
            }
        }
        format!("{tag} OK Success\r\n")
    } else if upper.starts_with("UID EXPUNGE ") {
        let Some(&vi) = st.selected.get(&n) else {
            return reply_and(s, format!("{tag} BAD no mailbox selected\r\n"));
        };
        let v = &VIEWS[vi];
        let view = st.view(v);
        let max = view.iter().map(|(u, _)| *u).max().unwrap_or(0);
        let set = cmd.split(' ').nth(2).unwrap_or("");
        let wanted: BTreeSet<u32> = parse_set(set, max).into_iter().collect();
        let mut r = String::new();
        for (seq, (u, i)) in view.iter().enumerate().rev() {
            let key = (v.name, st.messages[*i].msgid);
            if !wanted.contains(u) || !st.deleted.remove(&key) {
                continue;
            }
            match v.label {
                // In Trash (and Spam) EXPUNGE deletes forever (imapsync
                // FAQ.Gmail; gmvault `erase_mailbox`).
                Some("\\Trash") | Some("\\Spam") => st.messages[*i].gone = true,
                // In a label folder it removes that label, nothing more.
                Some(l) => {
                    st.messages[*i].labels.remove(l);
                    st.label_expunges += 1;
                }
                // In All Mail, under the default setting, nothing visible
                // happens (PROVIDERS.md, "Gmail").
                None => continue,
            }
            r.push_str(&format!("* {} EXPUNGE\r\n", seq + 1));
        }
        r.push_str(&format!("{tag} OK Success\r\n"));
        r
    } else if upper.starts_with("GETQUOTAROOT ") {
        // QUOTA is in Gmail's capabilities (PROVIDERS.md); STORAGE in KiB
        // (RFC 9208).
        format!(
            "* QUOTAROOT \"INBOX\" \"\"\r\n* QUOTA \"\" (STORAGE {} {})\r\n{tag} OK Success\r\n",
            st.usage().div_ceil(1024),
            st.quota_limit_kib
        )
    } else if upper == "LOGOUT" {
        let _ = s.send(
            format!("* BYE LOGOUT Requested\r\n{tag} OK 73 good day (Success)\r\n").as_bytes(),
        );
        return Hook::Close;
    } else {
        format!("{tag} BAD Unknown command\r\n")
    };
    let done = format!("{tag} OK Success\r\n");
    let reply = if reply.ends_with(&done) {
        let ok = st.ok();
        format!("{}{tag} OK {ok}\r\n", &reply[..reply.len() - done.len()])
    } else {
        reply
    };
    reply_and(s, reply)
}

/// The Message-ID header's value of a message.
fn message_id(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let head = text.split("\r\n\r\n").next()?;
    head.lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .map(str::to_string)
}

/// The labels of a `+X-GM-LABELS.SILENT (...)` list: system labels as
/// atoms (`\Inbox`), user labels quoted (PROVIDERS.md, "X-GM-EXT-1").
fn store_labels(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '"' => {
                let mut l = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => l.extend(chars.next()),
                        c => l.push(c),
                    }
                }
                out.push(l);
            }
            c => {
                let mut l = c.to_string();
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    l.push(c);
                    chars.next();
                }
                out.push(l);
            }
        }
    }
    out
}

/// `APPEND "mailbox" (flags) "date" {n}` or `{n+}`.
fn append(st: &mut Store, n: usize, tag: &str, cmd: &str, s: &mut Session) -> Hook {
    let _ = n;
    let open = cmd.rfind('{').unwrap_or(0);
    let spec = cmd[open + 1..].trim_end_matches('}');
    let plus = spec.ends_with('+');
    let len: usize = spec.trim_end_matches('+').parse().unwrap_or(0);
    let limit = if st.append_limit == 0 {
        35_651_584
    } else {
        st.append_limit
    };
    if plus && len > 4096 {
        // LITERAL-: a non-synchronizing literal over 4096 bytes is an
        // error (PROVIDERS.md, "literals"; RFC 7888): the bytes that follow
        // would be read as commands, so the session ends.
        let _ = s.send(format!("{tag} BAD [TOOBIG] Literal too large\r\n* BYE\r\n").as_bytes());
        return Hook::Close;
    }
    if len > limit {
        // APPENDLIMIT (PROVIDERS.md): refused before the literal is sent.
        return reply_and(s, format!("{tag} NO [TOOBIG] Message too large\r\n"));
    }
    if !plus && s.send(b"+ go ahead\r\n").is_err() {
        return Hook::Close;
    }
    let Ok((body, _)) = s.read_literal(len) else {
        return Hook::Close;
    };
    let head = &cmd[7..open];
    let name = head.split('"').nth(1).unwrap_or("").to_string();
    let Some(vi) = VIEWS.iter().position(|v| v.name == name) else {
        return reply_and(s, format!("{tag} NO [TRYCREATE] No folder {name}\r\n"));
    };
    let flags: Vec<String> = head
        .find('(')
        .map(|a| head[a + 1..head.find(')').unwrap_or(a + 1)].to_string())
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let date = head.split('"').nth(3).unwrap_or("").to_string();
    st.appends += 1;
    let view_label: Vec<&str> = VIEWS[vi].label.into_iter().collect();
    // Gmail de-duplicates an APPEND of a message it already has (same
    // Message-ID): it merges labels and keeps one copy (PROVIDERS.md).
    let known = message_id(&body).and_then(|id| {
        st.messages
            .iter()
            .position(|m| !m.gone && message_id(&m.body).as_deref() == Some(id.as_str()))
    });
    let i = match known {
        Some(i) => {
            st.relabel(i, &view_label, &[]);
            i
        }
        None => {
            let f: Vec<&str> = flags.iter().map(String::as_str).collect();
            st.add(body, &date, &f, &view_label);
            st.messages.len() - 1
        }
    };
    let view = st.view(&VIEWS[vi]);
    let uid = view
        .iter()
        .find(|(_, j)| *j == i)
        .map(|(u, _)| *u)
        .unwrap_or(0);
    if st.cut_append_answer_at > 0 && st.appends == st.cut_append_answer_at {
        st.cut_append_answer_at = 0;
        return Hook::Close;
    }
    // APPEND completes like any command, `[THROTTLED]` included (PROVIDERS.md, "Limits").
    let ok = st.ok();
    reply_and(s, format!("{tag} OK [APPENDUID 11 {uid}] {ok}\r\n"))
}

fn reply_and(s: &mut Session, reply: String) -> Hook {
    match s.send(reply.as_bytes()) {
        Ok(()) => Hook::Done,
        Err(_) => Hook::Close,
    }
}

fn start(store: Arc<Mutex<Store>>) -> FakeServer {
    FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        Vec::new(),
        move |n, tag, cmd, s| handle(&store, n, tag, cmd, s),
    )
}

fn config(env: &TestEnv, port: u16, extra: &str) {
    let ca = env.path().join("ca.pem");
    fs::write(&ca, &certs().ca_pem).unwrap();
    env.write_config(&format!(
        "[accounts.g]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"me@gmail.com\"\n\
         password-env = \"IMAPBAK_FAKE_PW\"\nca-file = {}\narchive = {}\ntimeout = 10\n{extra}\n",
        support::toml_str(&ca.display().to_string()),
        support::toml_str(&env.archive("g").display().to_string()),
    ));
}

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imapbak {args:?} failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender {n} <s{n}@example.invalid>\r\nTo: me@gmail.com\r\nSubject: message {n}\r\n\
         Message-ID: <gmail-{n}@example.invalid>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n\
         Body of message {n}.\r\n{}\r\n",
        "x".repeat(200 + n as usize * 37)
    )
    .into_bytes()
}

/// 20 messages, 8 (40 %) with 2-4 labels, one in Trash, one in Spam.
fn seeded() -> Arc<Mutex<Store>> {
    let store = Arc::new(Mutex::new(Store::default()));
    let mut st = store.lock().unwrap();
    for n in 0..20u32 {
        let labels: &[&str] = match n % 5 {
            0 => &["\\Inbox", "Work"],
            1 => &["\\Inbox", "Work", "Work/Projects"],
            2 => &["\\Sent", "Work", "Work/Projects", "\\Inbox"],
            3 => &["\\Inbox"],
            _ => &[],
        };
        let labels = match n {
            18 => &["\\Trash"][..],
            19 => &["\\Spam"][..],
            _ => labels,
        };
        let flags: &[&str] = if n % 2 == 0 { &["\\Seen"] } else { &[] };
        st.add(message(n), "01-Jan-2024 10:00:00 +0000", flags, labels);
    }
    drop(st);
    store
}

fn folder_files(archive: &Path, folder: &str) -> Vec<PathBuf> {
    support::folder_files(archive, folder)
}

/// (inode, flags) of each file of a folder.
fn inodes(archive: &Path, folder: &str) -> BTreeSet<(u64, String)> {
    folder_files(archive, folder)
        .iter()
        .map(|p| (fs::metadata(p).unwrap().ino(), support::maildir_flags(p)))
        .collect()
}

/// The (sha256, flags) multiset of a view of the fake.
fn fake_view(store: &Mutex<Store>, view: &str) -> Vec<(String, String)> {
    let st = store.lock().unwrap();
    let v = VIEWS.iter().find(|v| v.name == view).unwrap();
    let mut out: Vec<(String, String)> = st
        .messages
        .iter()
        .filter(|m| Store::in_view(v, m))
        .map(|m| {
            let flags: Vec<&str> = m.flags.iter().map(String::as_str).collect();
            (sha(&m.body), flags.join(" "))
        })
        .collect();
    out.sort();
    out
}

fn sha(b: &[u8]) -> String {
    imapbak::archive::sha256_hex(b)
}

/// The (sha256, flags) multiset of a mailbox of a Dovecot serving a copy
/// of the archive.
fn served_view(user: &crate::support::User, mailbox: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = user
        .imap()
        .fetch_all(mailbox)
        .into_iter()
        .map(|m| {
            let mut f: Vec<String> = m.flags.into_iter().filter(|f| f != "\\Recent").collect();
            f.sort();
            (sha(&m.body), f.join(" "))
        })
        .collect();
    out.sort();
    out
}

fn serve_copy(archive: &Path) -> crate::support::User {
    let d = dovecot();
    let served = d.new_user("gserved");
    fs::remove_dir_all(&served.maildir).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(archive.join("mail"))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());
    let owner = fs::metadata(d.dir.join("mail")).unwrap();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", owner.uid(), owner.gid()))
        .arg(&served.maildir)
        .status()
        .unwrap();
    assert!(status.success());
    served
}

const ALL: &str = ".[Google Mail].Alle Nachrichten";

#[test]
fn gmail_pull_stores_each_message_once_and_every_label_as_a_folder_of_links() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    let out = run(&env, &["pull", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archive = env.archive("g");

    // Bytes: each message once (not once per label), Trash and Spam not at all.
    let unique: u64 = {
        let st = store.lock().unwrap();
        st.messages[..18].iter().map(|m| m.body.len() as u64).sum()
    };
    let fetched = store.lock().unwrap().body_bytes;
    assert!(
        fetched as f64 <= 1.1 * unique as f64,
        "fetched {fetched} body bytes for {unique} unique"
    );
    assert_eq!(report["fetched"], 18, "{report}");
    assert_eq!(folder_files(&archive, ALL).len(), 18);
    assert!(!archive.join("mail/.[Google Mail].Papierkorb").exists());

    // Every label folder holds links to All Mail's files: the bytes are on disk once.
    let all: BTreeSet<u64> = inodes(&archive, ALL).into_iter().map(|(i, _)| i).collect();
    for folder in ["", ".[Google Mail].Gesendet", ".Work", ".Work.Projects"] {
        let files = inodes(&archive, folder);
        assert!(!files.is_empty(), "`{folder}` is empty");
        for (ino, _) in &files {
            assert!(all.contains(ino), "`{folder}` holds a copy, not a link");
        }
    }
    let nlinks: Vec<u64> = folder_files(&archive, ALL)
        .iter()
        .map(|p| fs::metadata(p).unwrap().nlink())
        .collect();
    assert!(nlinks.contains(&5), "a message with 4 labels: {nlinks:?}");

    // A stock Dovecot serving a copy shows Gmail's folders with Gmail's messages.
    let served = serve_copy(&archive);
    for (fake, served_name) in [
        ("INBOX", "INBOX"),
        (
            "[Google Mail]/Alle Nachrichten",
            "[Google Mail]/Alle Nachrichten",
        ),
        ("[Google Mail]/Gesendet", "[Google Mail]/Gesendet"),
        ("Work", "Work"),
        ("Work/Projects", "Work/Projects"),
    ] {
        assert_eq!(
            served_view(&served, served_name),
            fake_view(&store, fake),
            "`{served_name}` differs from Gmail's `{fake}`"
        );
    }

    // Labels and flags change on the server: no body is fetched again and
    // the served view matches again.
    {
        let mut st = store.lock().unwrap();
        st.relabel(3, &["Work"], &["\\Inbox"]);
        st.relabel(0, &[], &["Work"]);
        st.messages[5].flags.insert("\\Flagged".into());
        st.relabel(5, &["\\Sent"], &[]);
    }
    let before = store.lock().unwrap().body_bytes;
    let out = run(&env, &["pull", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["fetched"], 0, "{report}");
    assert_eq!(
        store.lock().unwrap().body_bytes,
        before,
        "a body was fetched again"
    );
    let served = serve_copy(&archive);
    for (fake, served_name) in [
        ("INBOX", "INBOX"),
        ("[Google Mail]/Gesendet", "[Google Mail]/Gesendet"),
        ("Work", "Work"),
        (
            "[Google Mail]/Alle Nachrichten",
            "[Google Mail]/Alle Nachrichten",
        ),
    ] {
        assert_eq!(
            served_view(&served, served_name),
            fake_view(&store, fake),
            "after the changes, `{served_name}` differs from Gmail's `{fake}`"
        );
    }
}

#[test]
fn gmail_mode_off_backs_up_every_folder_and_no_all_mail_is_an_error_with_the_setting() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "gmail = false");
    run(&env, &["pull"]);
    // Every view is a folder of its own copies, Trash and Spam included.
    assert!(env
        .archive("g")
        .join("mail/.[Google Mail].Papierkorb")
        .is_dir());
    let inbox = inodes(&env.archive("g"), "");
    let all: BTreeSet<u64> = inodes(&env.archive("g"), ALL)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert!(inbox.iter().all(|(i, _)| !all.contains(i)));

    // Gmail mode with All Mail hidden: an error naming the setting, nothing written.
    store.lock().unwrap().hide_all = true;
    let env = TestEnv::new();
    config(&env, server.port, "");
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .arg("pull")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Show in IMAP"), "{err}");
    assert!(!env.archive("g").join("mail/cur").exists());
}

/// Labels of `seeded`'s message `n`.
fn labels_of(n: u32) -> &'static [&'static str] {
    match n % 5 {
        0 => &["\\Inbox", "Work"],
        1 => &["\\Inbox", "Work", "Work/Projects"],
        2 => &["\\Sent", "Work", "Work/Projects", "\\Inbox"],
        3 => &["\\Inbox"],
        _ => &[],
    }
}

/// 20 messages labelled as in `seeded`: 0-9 from 2020, 10-19 from last
/// week; and message 20, old, already in Trash before imapbak runs.
fn seeded_by_age() -> Arc<Mutex<Store>> {
    let recent = (chrono::Utc::now() - chrono::Duration::days(7))
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string();
    let store = Arc::new(Mutex::new(Store::default()));
    let mut st = store.lock().unwrap();
    for n in 0..20u32 {
        let date = if n < 10 {
            "01-Jan-2020 10:00:00 +0000"
        } else {
            &recent
        };
        let flags: &[&str] = if n % 2 == 0 { &["\\Seen"] } else { &[] };
        st.add(message(n), date, flags, labels_of(n));
    }
    st.add(message(20), "01-Jan-2020 10:00:00 +0000", &[], &["\\Trash"]);
    st.quota_limit_kib = 100;
    drop(st);
    store
}

/// Every `UID EXPUNGE` the fake saw, with the mailbox selected at the time.
fn expunged_in(server: &FakeServer) -> Vec<String> {
    let mut selected = String::new();
    let mut out = Vec::new();
    for c in server.commands() {
        let cmd = c.split_once(' ').map(|x| x.1).unwrap_or("");
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("SELECT ") || upper.starts_with("EXAMINE ") {
            selected = cmd.split_once(' ').unwrap().1.to_string();
        } else if upper.starts_with("UID EXPUNGE") || upper == "EXPUNGE" || upper == "CLOSE" {
            out.push(selected.clone());
        }
    }
    out
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn gmail_expunge_frees_quota_through_trash_and_a_killed_run_is_finished_by_the_next() {
    let store = seeded_by_age();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    run(&env, &["pull"]);
    let archive = env.archive("g");
    assert_eq!(folder_files(&archive, ALL).len(), 20);
    let (usage_before, old_bytes) = {
        let st = store.lock().unwrap();
        let old: u64 = st.messages[..10].iter().map(|m| m.body.len() as u64).sum();
        (st.usage(), old)
    };

    // Killed between the move and the expunge: the old mail sits in Trash.
    store.lock().unwrap().bye_after_move = true;
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(["expunge", "--older-than", "365d"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let st = store.lock().unwrap();
        for m in &st.messages[..10] {
            assert!(!m.gone);
            assert_eq!(m.labels, BTreeSet::from(["\\Trash".to_string()]));
        }
    }
    let pending = |archive: &Path| {
        walkdir::WalkDir::new(archive.join("state"))
            .into_iter()
            .flatten()
            .any(|d| d.file_name() == "gmail-trash-pending.json")
    };
    assert!(pending(&archive), "no record of the moved messages");

    // The next run finishes it, and there is nothing more to take.
    let out = run(&env, &["expunge", "--older-than", "365d", "--json"]);
    let v = json_of(&out);
    let acct = &v["accounts"][0];
    assert_eq!(acct["expunged"], 10, "{v:#}");
    assert_eq!(acct["bytes_freed"], old_bytes, "{v:#}");
    let st = store.lock().unwrap();
    // QUOTA falls by the old messages' bytes: gone everywhere.
    assert_eq!(st.usage(), usage_before - old_bytes);
    assert!(st.messages[..10].iter().all(|m| m.gone));
    // What was in Trash before is still there, untouched.
    assert!(!st.messages[20].gone);
    assert!(!st
        .deleted
        .iter()
        .any(|(_, id)| *id == st.messages[20].msgid));
    // Recent mail keeps its labels; no label was ever expunged.
    for (n, m) in st.messages[10..20].iter().enumerate() {
        let want: BTreeSet<String> = labels_of(n as u32 + 10)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(m.labels, want);
    }
    assert_eq!(st.label_expunges, 0);
    drop(st);
    let trash = "\"[Google Mail]/Papierkorb\"";
    let places = expunged_in(&server);
    assert!(!places.is_empty());
    assert!(
        places.iter().all(|p| p.starts_with(trash)),
        "expunged in {places:?}"
    );
    // The archive keeps everything; the record is gone.
    assert!(!pending(&archive));
    assert_eq!(folder_files(&archive, ALL).len(), 20);
    assert!(!folder_files(&archive, ".Work").is_empty());
}

#[test]
fn gmail_expunge_free_to_ends_under_target_and_mailbox_selects_by_label() {
    let store = seeded_by_age();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    run(&env, &["pull"]);
    // Usage at about 80 % of the limit.
    let usage = store.lock().unwrap().usage();
    store.lock().unwrap().quota_limit_kib = usage.div_ceil(1024) * 10 / 8;

    // `--mailbox` selects by label: only old mail labelled Work/Projects.
    let out = run(
        &env,
        &[
            "expunge",
            "--older-than",
            "365d",
            "--mailbox",
            "Work/Projects",
            "--json",
        ],
    );
    let v = json_of(&out);
    {
        let st = store.lock().unwrap();
        let gone: Vec<usize> = (0..21).filter(|&i| st.messages[i].gone).collect();
        // Old (0-9) messages n % 5 in {1, 2} carry Work/Projects.
        assert_eq!(gone, vec![1, 2, 6, 7], "{v:#}");
    }

    let limit = store.lock().unwrap().quota_limit_kib;
    let out = run(&env, &["expunge", "--free-to", "50%", "--json"]);
    let v = json_of(&out);
    let st = store.lock().unwrap();
    assert!(
        (st.usage().div_ceil(1024) as f64) < 0.5 * limit as f64 + 1.0,
        "usage {} of {limit} KiB: {v:#}",
        st.usage()
    );
    // Oldest first, never what was in Trash before.
    assert!(!st.messages[20].gone);
    assert_eq!(st.label_expunges, 0);
}

/// A second account, `h`, on the fake Gmail at `port`.
fn second_account(env: &TestEnv, port: u16) -> String {
    let ca = env.path().join("ca.pem");
    format!(
        "\n[accounts.h]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"new@gmail.com\"\n\
         password-env = \"IMAPBAK_FAKE_PW\"\nca-file = {}\narchive = {}\ntimeout = 10\n",
        support::toml_str(&ca.display().to_string()),
        support::toml_str(&env.path().join("h-archive").display().to_string()),
    )
}

/// An empty Gmail account: no mail, and no user label created yet.
fn empty_gmail() -> Arc<Mutex<Store>> {
    let store = Arc::new(Mutex::new(Store::default()));
    {
        let mut st = store.lock().unwrap();
        st.missing_labels = ["Work", "Work/Projects"].map(String::from).into();
    }
    store
}

fn internaldate(s: &str) -> i64 {
    chrono::DateTime::parse_from_str(s.trim(), "%d-%b-%Y %H:%M:%S %z")
        .unwrap_or_else(|e| panic!("`{s}`: {e}"))
        .timestamp()
}

/// (bytes, flags, date, labels) of every message All Mail shows.
type Seen = Vec<(String, BTreeSet<String>, i64, BTreeSet<String>)>;

fn all_mail(store: &Mutex<Store>) -> Seen {
    let st = store.lock().unwrap();
    let all = VIEWS.iter().find(|v| v.attr == "\\All").unwrap();
    let mut out: Seen = st
        .messages
        .iter()
        .filter(|m| Store::in_view(all, m))
        .map(|m| {
            (
                sha(&m.body),
                m.flags.clone(),
                internaldate(&m.date),
                m.labels.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn gmail_restore_appends_each_message_once_into_all_mail_with_its_labels() {
    let source = seeded();
    {
        // A 40 KB message (a synchronizing literal under LITERAL-) and one
        // over the target's APPENDLIMIT.
        let mut st = source.lock().unwrap();
        let mut big = message(40);
        big.extend(b"y".repeat(40 * 1024));
        big.extend(b"\r\n");
        st.add(
            big,
            "02-Jan-2024 10:00:00 +0000",
            &["\\Seen"],
            &["\\Inbox", "Work"],
        );
        let mut huge = message(70);
        huge.extend(b"z".repeat(70 * 1024));
        huge.extend(b"\r\n");
        st.add(huge, "03-Jan-2024 10:00:00 +0000", &[], &["\\Inbox"]);
    }
    let src = start(source.clone());
    let target = empty_gmail();
    target.lock().unwrap().append_limit = 60 * 1024;
    let dst = start(target.clone());
    let env = TestEnv::new();
    let extra = second_account(&env, dst.port);
    config(&env, src.port, &extra);
    run(&env, &["pull"]);

    let restore = |env: &TestEnv| {
        env.cmd()
            .env("IMAPBAK_FAKE_PW", PW)
            .args(["restore", "--account", "g", "--to", "h", "--json"])
            .timeout(Duration::from_secs(120))
            .output()
            .unwrap()
    };
    let out = restore(&env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The message over APPENDLIMIT is reported, the rest restored.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(
        stdout.contains("APPENDLIMIT") || err.contains("APPENDLIMIT"),
        "{stdout}\n{err}"
    );
    // Labels were created parents first.
    assert_eq!(target.lock().unwrap().created, ["Work", "Work/Projects"]);

    // All Mail holds each message once, with bytes, flags, date and labels.
    let mut want = all_mail(&source);
    let huge = {
        let st = source.lock().unwrap();
        sha(&st.messages.last().unwrap().body)
    };
    want.retain(|m| m.0 != huge);
    assert_eq!(all_mail(&target), want);
    let appends = target.lock().unwrap().appends;
    assert_eq!(appends as usize, want.len());

    // A rerun adds nothing.
    let out = restore(&env);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(all_mail(&target), want);
    assert_eq!(target.lock().unwrap().appends, appends, "a rerun appended");
}

/// The day turns: Gmail's daily counter and imapbak's budget record both
/// start afresh.
fn next_day(store: &Mutex<Store>, archive: &Path) {
    store.lock().unwrap().today_bytes = 0;
    let p = archive.join("state/download-budget.json");
    let text = fs::read_to_string(&p).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let moved = serde_json::json!({"day": "2000-01-01", "bytes": v["bytes"]});
    fs::write(&p, moved.to_string()).unwrap();
}

#[test]
fn gmail_daily_limit_stops_cleanly_and_the_next_run_completes_everything_once() {
    let store = seeded();
    let unique: u64 = {
        let st = store.lock().unwrap();
        st.messages[..18].iter().map(|m| m.body.len() as u64).sum()
    };
    // Gmail itself would end the session a little later.
    store.lock().unwrap().daily_byte_limit = unique / 2;
    let server = start(store.clone());
    let env = TestEnv::new();
    let limit = unique * 4 / 10;
    config(
        &env,
        server.port,
        &format!("daily-download-limit = {limit}"),
    );
    let archive = env.archive("g");

    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(["pull", "--json"])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    let v = json_of(&out);
    assert_eq!(out.status.code(), Some(7), "{v:#}");
    assert_eq!(v["incomplete"], true, "{v:#}");
    let acct = &v["accounts"][0];
    assert_eq!(acct["incomplete"], true);
    let left = acct["download_left"].as_u64().unwrap();
    let got = folder_files(&archive, ALL).len();
    assert!(got > 0 && got < 18, "{got} messages after the first day");
    let fetched = store.lock().unwrap().body_bytes;
    assert!(fetched <= limit, "fetched {fetched} of a {limit} budget");
    assert_eq!(fetched + left, unique, "{v:#}");
    // Everything fetched was saved, with its labels.
    assert_eq!(v["fetched"].as_u64().unwrap() as usize, got);

    // The same day: nothing more.
    let out = env
        .cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(["pull", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(store.lock().unwrap().body_bytes, fetched);

    // Next days: the rest, each message once.
    for _ in 0..3 {
        next_day(&store, &archive);
        let out = env
            .cmd()
            .env("IMAPBAK_FAKE_PW", PW)
            .args(["pull", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert_eq!(out.status.code(), Some(7));
    }
    assert_eq!(folder_files(&archive, ALL).len(), 18);
    assert_eq!(
        store.lock().unwrap().body_bytes,
        unique,
        "a body came twice"
    );
    let served = serve_copy(&archive);
    assert_eq!(served_view(&served, "Work"), fake_view(&store, "Work"));
}

#[test]
fn gmail_throttled_replies_and_a_bye_mid_run_still_complete() {
    let store = seeded();
    let unique: u64 = {
        let st = store.lock().unwrap();
        st.messages[..18].iter().map(|m| m.body.len() as u64).sum()
    };
    {
        let mut st = store.lock().unwrap();
        st.throttle_every = 3;
        st.bye_once_at = unique / 3;
    }
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    let out = run(&env, &["pull", "--json"]);
    let v = json_of(&out);
    assert_eq!(v["fetched"], 18, "{v:#}");
    assert_eq!(folder_files(&env.archive("g"), ALL).len(), 18);
    let logins = server
        .commands()
        .iter()
        .filter(|c| c.to_ascii_uppercase().contains(" LOGIN "))
        .count();
    assert!(logins >= 2, "no reconnect after the BYE");
}

/// `seeded`'s label folders, in the archive.
const LABEL_FOLDERS: [&str; 4] = ["", ".[Google Mail].Gesendet", ".Work", ".Work.Projects"];

/// A Message-ID without its angle brackets.
fn bare_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

fn output(env: &TestEnv, args: &[&str]) -> Output {
    env.cmd()
        .env("IMAPBAK_FAKE_PW", PW)
        .args(args)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap()
}

#[test]
fn gmail_ls_search_export_and_verify_count_each_message_once_with_its_labels() {
    let store = seeded();
    let server = start(store.clone());
    let env = TestEnv::new();
    config(&env, server.port, "");
    run(&env, &["pull"]);
    let archive = env.archive("g");
    let (unique, labels_by_id) = {
        let st = store.lock().unwrap();
        let all = VIEWS.iter().find(|v| v.attr == "\\All").unwrap();
        let in_all: Vec<&Msg> = st
            .messages
            .iter()
            .filter(|m| Store::in_view(all, m))
            .collect();
        let by_id: BTreeMap<String, BTreeSet<String>> = in_all
            .iter()
            .map(|m| (bare_id(&message_id(&m.body).unwrap()), m.labels.clone()))
            .collect();
        (
            in_all.iter().map(|m| m.body.len() as u64).sum::<u64>(),
            by_id,
        )
    };
    let links: usize = LABEL_FOLDERS
        .iter()
        .map(|f| folder_files(&archive, f).len())
        .sum();
    assert!(links > 18, "{links} label links");

    // ls: every label folder with its label; the total counts each message
    // once, and its bytes once.
    let v = json_of(&run(&env, &["ls", "--json"]));
    let total = &v[0]["total"];
    assert_eq!(total["messages"], 18, "{v:#}");
    assert_eq!(total["bytes"], unique, "{v:#}");
    let disk: u64 = folder_files(&archive, ALL)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(total["bytes_on_disk"], disk, "{v:#}");
    let rows = v[0]["mailboxes"].as_array().unwrap();
    let label_of = |folder: &str| {
        rows.iter()
            .find(|r| r["folder"] == folder)
            .unwrap_or_else(|| panic!("no row for `{folder}`: {v:#}"))["label"]
            .clone()
    };
    assert_eq!(label_of(""), "\\Inbox");
    assert_eq!(label_of(".Work.Projects"), "Work/Projects");
    assert_eq!(label_of(ALL), serde_json::Value::Null);
    let work_row = rows.iter().find(|r| r["folder"] == ".Work").unwrap();
    assert_eq!(work_row["messages"], fake_view(&store, "Work").len());
    let text = String::from_utf8(run(&env, &["ls"]).stdout).unwrap();
    assert!(text.lines().next().unwrap().ends_with("LABEL"), "{text}");

    // search: one hit per message, under All Mail, with its labels.
    let hits = json_of(&run(&env, &["search", "--json"]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 18, "{hits:#?}");
    let mut seen = BTreeMap::new();
    for h in hits {
        assert_eq!(h["folder"], ALL, "{h:#}");
        let labels: BTreeSet<String> = h["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        seen.insert(bare_id(h["message_id"].as_str().unwrap()), labels);
    }
    assert_eq!(seen, labels_by_id);
    // `--mailbox` picks a label: its messages, once each.
    let work = json_of(&run(&env, &["search", "--mailbox", "Work", "--json"]));
    assert_eq!(
        work.as_array().unwrap().len(),
        fake_view(&store, "Work").len()
    );
    let text = String::from_utf8(run(&env, &["search", "--subject", "message 2"]).stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("[Work, Work/Projects, Inbox, Sent]"),
        "{text}"
    );

    // export: each message once, its labels in X-Gmail-Labels as Google
    // Takeout writes them, the message's bytes after it.
    let mbox = env.path().join("all.mbox");
    run(&env, &["export", "--mbox", mbox.to_str().unwrap()]);
    let text = fs::read(&mbox).unwrap();
    let text = String::from_utf8_lossy(&text);
    assert_eq!(text.lines().filter(|l| l.starts_with("From ")).count(), 18);
    let labelled = labels_by_id.values().filter(|l| !l.is_empty()).count();
    assert_eq!(text.matches("\nX-Gmail-Labels: ").count(), labelled);
    let two = String::from_utf8(message(2)).unwrap();
    assert!(
        text.contains(&format!(
            "X-Gmail-Labels: Work,Work/Projects,Inbox,Sent\r\n{two}"
        )),
        "message 2 not exported with its labels"
    );
    // .eml files: once each, the exact bytes, no header added.
    let eml = env.path().join("eml");
    run(&env, &["export", "--eml", eml.to_str().unwrap()]);
    let files: Vec<Vec<u8>> = walkdir::WalkDir::new(&eml)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(files.len(), 18);
    assert_eq!(files.iter().filter(|b| **b == message(2)).count(), 1);
    assert!(files.iter().all(|b| !b.starts_with(b"X-Gmail-Labels")));

    // verify: each file read once, the label links counted apart.
    let v = json_of(&run(&env, &["verify", "--json"]));
    let a = &v["accounts"][0];
    assert_eq!(a["files"], 18, "{v:#}");
    assert_eq!(a["links"], links, "{v:#}");
    assert_eq!(a["problems"].as_array().unwrap().len(), 0, "{v:#}");

    // --server compares All Mail, where the messages are archived from
    // (a label folder's UIDs on Gmail are not All Mail's).
    let v = json_of(&run(&env, &["verify", "--server", "--json"]));
    let server = v["accounts"][0]["server"].as_array().unwrap();
    assert_eq!(server.len(), 1, "{v:#}");
    assert_eq!(server[0]["folder"], ALL);
    assert_eq!(server[0]["messages"], 18);
    assert_eq!(
        server[0]["not_archived"].as_array().unwrap().len(),
        0,
        "{v:#}"
    );

    // A damaged message is one problem, named with its labels, however
    // many labels it has.
    let victim = folder_files(&archive, ALL)
        .into_iter()
        .find(|p| fs::metadata(p).unwrap().nlink() == 5)
        .unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff;
    fs::write(&victim, bytes).unwrap();
    let out = output(&env, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    let problems = v["accounts"][0]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v:#}");
    assert_eq!(problems[0]["path"], victim.display().to_string());
    let detail = problems[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("labels: Work, Work/Projects, Inbox, Sent"),
        "{detail}"
    );

    // --repair moves every name of it; the next pull fetches the message
    // again and links it into its label folders.
    let out = output(&env, &["verify", "--repair", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(folder_files(&archive, ALL).len(), 17);
    let before = store.lock().unwrap().body_bytes;
    run(&env, &["pull"]);
    let size = imapbak::archive::FileName::parse(victim.file_name().unwrap().to_str().unwrap())
        .unwrap()
        .size;
    assert_eq!(
        store.lock().unwrap().body_bytes - before,
        size,
        "only the damaged message is fetched again"
    );
    let v = json_of(&run(&env, &["verify", "--json"]));
    assert_eq!(v["accounts"][0]["files"], 18, "{v:#}");
    assert_eq!(v["accounts"][0]["links"], links, "{v:#}");
    let served = serve_copy(&archive);
    for name in ["Work/Projects", "[Google Mail]/Gesendet", "INBOX"] {
        assert_eq!(
            served_view(&served, name),
            fake_view(&store, name),
            "`{name}`"
        );
    }

    // What pull records per message (X-GM-MSGID, X-GM-THRID, labels)
    // survives the loss of state/: the ids beside All Mail's files, the
    // labels as links.
    fs::remove_dir_all(archive.join("state")).unwrap();
    let ids = fs::read_to_string(archive.join("mail").join(ALL).join("imapbak-gmail-ids")).unwrap();
    let recorded: BTreeSet<(u64, u64)> = ids
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split('\t').map(|x| x.parse().unwrap()).collect();
            (f[2], f[3])
        })
        .collect();
    let want: BTreeSet<(u64, u64)> = store.lock().unwrap().messages[..18]
        .iter()
        .map(|m| (m.msgid, m.thrid))
        .collect();
    assert_eq!(recorded, want);
    let hits = json_of(&run(&env, &["search", "--json"]));
    let mut seen = BTreeMap::new();
    for h in hits.as_array().unwrap() {
        let labels: BTreeSet<String> = h["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        seen.insert(bare_id(h["message_id"].as_str().unwrap()), labels);
    }
    assert_eq!(seen, labels_by_id, "labels after the loss of state/");
    let before = store.lock().unwrap().body_bytes;
    run(&env, &["pull"]);
    assert_eq!(
        store.lock().unwrap().body_bytes,
        before,
        "a body came again"
    );
}

#[test]
fn gmail_restore_cut_between_append_and_label_store_is_labelled_by_the_next_run() {
    let source = seeded();
    let src = start(source.clone());
    let env = TestEnv::new();

    // Every label STORE is cut off: the messages land in All Mail
    // unlabelled, and the run fails after its attempts.
    let target = empty_gmail();
    target.lock().unwrap().cut_stores = true;
    let dst = start(target.clone());
    let extra = second_account(&env, dst.port);
    config(&env, src.port, &extra);
    run(&env, &["pull"]);
    let restore = ["restore", "--account", "g", "--to", "h", "--json"];
    let out = output(&env, &restore);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = all_mail(&source);
    let unlabelled = all_mail(&target);
    assert_eq!(unlabelled.len(), want.len());
    assert!(unlabelled.iter().all(|m| m.3.is_empty()), "{unlabelled:?}");
    let appends = target.lock().unwrap().appends;
    assert_eq!(appends as usize, want.len());

    // The next run sets the labels and appends nothing.
    target.lock().unwrap().cut_stores = false;
    let out = output(&env, &restore);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(all_mail(&target), want);
    assert_eq!(target.lock().unwrap().appends, appends, "a rerun appended");

    // An APPEND whose answer is lost (its UID unknown) in the middle of
    // the batch: the run reconnects, labels what landed, and goes on;
    // `[THROTTLED]` on every third reply slows it and it completes.
    let target = empty_gmail();
    {
        let mut t = target.lock().unwrap();
        t.cut_append_answer_at = 5;
        t.throttle_every = 3;
    }
    let dst = start(target.clone());
    let env = TestEnv::new();
    let extra = second_account(&env, dst.port);
    config(&env, src.port, &extra);
    run(&env, &["pull"]);
    let out = run(&env, &["-v", "restore", "--account", "g", "--to", "h"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the server throttles"), "{err}");
    assert_eq!(all_mail(&target), want);
    assert_eq!(target.lock().unwrap().appends as usize, want.len(), "{err}");
}

/// A Dovecot user that `env` can restore into, as account `d`.
fn dovecot_target(env: &TestEnv, name: &str) -> (crate::support::User, String) {
    let user = dovecot().new_user(name);
    let toml = env.account_toml("d", &user, "");
    (user, format!("\n{toml}"))
}

#[test]
fn gmail_archive_restores_into_dovecot_as_the_served_folders_and_all_mail_duplicates_can_be_left_out(
) {
    let store = seeded();
    let server = start(store.clone());
    for skip in [false, true] {
        let env = TestEnv::new();
        let (user, extra) = dovecot_target(&env, if skip { "gd-skip" } else { "gd-all" });
        config(&env, server.port, &extra);
        run(&env, &["pull"]);
        let mut args = vec!["restore", "--account", "g", "--to", "d"];
        if skip {
            args.push("--skip-all-mail-duplicates");
        }
        run(&env, &args);
        // Each label folder as a Dovecot serving the archive shows it.
        for name in ["INBOX", "[Google Mail]/Gesendet", "Work", "Work/Projects"] {
            assert_eq!(
                served_view(&user, name),
                fake_view(&store, name),
                "`{name}`"
            );
        }
        let all = served_view(&user, "[Google Mail]/Alle Nachrichten");
        let mut want = fake_view(&store, "[Google Mail]/Alle Nachrichten");
        if skip {
            // Only what no label folder holds.
            let st = store.lock().unwrap();
            let unlabelled: BTreeSet<String> = st.messages[..18]
                .iter()
                .filter(|m| m.labels.is_empty())
                .map(|m| sha(&m.body))
                .collect();
            want.retain(|(h, _)| unlabelled.contains(h));
            assert_eq!(want.len(), 3);
        }
        assert_eq!(all, want, "All Mail (skip: {skip})");
    }
}

#[test]
fn gmail_expunge_honours_exclude_by_label_and_slows_down_when_throttled() {
    let store = seeded_by_age();
    let server = start(store.clone());
    let env = TestEnv::new();
    // Leave alone whatever shows in Work (the folder need not be archived).
    config(&env, server.port, "exclude = [\"Work\"]");
    run(&env, &["pull"]);
    store.lock().unwrap().throttle_every = 3;
    let out = run(&env, &["-v", "expunge", "--older-than", "365d", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the server throttles"), "{err}");
    let st = store.lock().unwrap();
    let gone: Vec<usize> = (0..21).filter(|&i| st.messages[i].gone).collect();
    // Old (0-9) messages: n % 5 in {0, 1, 2} carry Work and stay.
    assert_eq!(gone, vec![3, 4, 8, 9], "{err}");
    for i in [0, 1, 2, 5, 6, 7] {
        let want: BTreeSet<String> = labels_of(i as u32).iter().map(|s| s.to_string()).collect();
        assert_eq!(st.messages[i].labels, want);
    }
    assert_eq!(st.label_expunges, 0);
}
