//! NAMESPACE (RFC 2342): the personal namespace's prefix and delimiter, so
//! that the engine can store `INBOX.Sent` (Courier, Debian's Cyrus) as
//! `Sent` and put it back under whatever prefix a target uses.
//!
//! imap-proto 0.17 cannot parse a NAMESPACE reply (the whole connection
//! would fail on it), nor Courier's `* QUOTA "ROOT"` without a resource
//! list, so such exchanges are done beside async-imap ([`raw_exchange`]):
//! sent and read raw on the session's stream when nothing else is in
//! flight. Bytes still go through the framing guard.

use std::collections::HashSet;

use tokio::time::timeout;

use super::session::{raw_flight, Connection};
use super::ImapError;
use crate::mutf7;
use crate::sync::remote::Namespace;

impl Connection {
    /// Right after a login through async-imap, in one flight: CAPABILITY
    /// (the session's own list) and NAMESPACE. NAMESPACE goes out before we
    /// know the server offers it: one that does not answers BAD, which costs
    /// nothing, while asking after CAPABILITY would cost a round trip on
    /// every connection. (A password LOGIN sends both in its own flight:
    /// session.rs, `login_in_one_flight`.)
    pub(crate) async fn capabilities_and_namespace(
        &mut self,
    ) -> Result<(HashSet<String>, Option<Namespace>), ImapError> {
        let replies = self.raw_exchange(&["CAPABILITY", "NAMESPACE"]).await?;
        let (_, cap_done) = &replies[0];
        if !tagged_ok(cap_done) {
            return Err(ImapError::No {
                command: "CAPABILITY".into(),
                text: cap_done.splitn(3, ' ').nth(2).unwrap_or("").to_string(),
            });
        }
        Ok(caps_and_namespace(&replies))
    }

    /// One command through [`Connection::raw_exchange`], its tagged NO or
    /// BAD turned into the error naming `verb`: the untagged lines and the
    /// tagged OK line.
    pub(crate) async fn raw_command(
        &mut self,
        command: &str,
        verb: &str,
    ) -> Result<(Vec<String>, String), ImapError> {
        let (untagged, tagged) = self
            .raw_exchange(&[command])
            .await?
            .pop()
            .expect("one reply per command");
        // `TAG STATUS text`
        let mut parts = tagged.splitn(3, ' ').skip(1);
        let status = parts.next().unwrap_or("").to_ascii_uppercase();
        let text = parts.next().unwrap_or("").to_string();
        let command = verb.to_string();
        match status.as_str() {
            "OK" => Ok((untagged, tagged)),
            "NO" => Err(ImapError::No { command, text }),
            _ => Err(ImapError::Bad { command, text }),
        }
    }

    /// Sends `commands` at once and reads their replies line by line, beside
    /// async-imap, for what imap-proto 0.17 cannot parse (a parse error would
    /// end the connection): per command, the untagged lines that came before
    /// its tagged one, and that tagged line ([`raw_flight`]). Only when
    /// nothing else is in flight; replies carrying literals are not
    /// supported (the commands using this never get one).
    pub(crate) async fn raw_exchange(
        &mut self,
        commands: &[&str],
    ) -> Result<Vec<(Vec<String>, String)>, ImapError> {
        let t = self.timeout;
        let what = commands.join(" + ");
        let replies = timeout(t, raw_flight(self.session.get_mut(), commands))
            .await
            .map_err(|_| ImapError::Timeout {
                what,
                secs: t.as_secs(),
            })??;
        if replies.len() < commands.len() {
            return Err(ImapError::ConnectionLost);
        }
        Ok(replies)
    }
}

/// The capabilities and the personal namespace in the replies to
/// CAPABILITY and NAMESPACE (any order, other replies beside them; a
/// `[CAPABILITY ...]` response code counts too). No namespace unless the
/// server announced NAMESPACE and answered it OK.
pub(crate) fn caps_and_namespace(
    replies: &[(Vec<String>, String)],
) -> (HashSet<String>, Option<Namespace>) {
    let mut caps = HashSet::new();
    let mut untagged_caps = false;
    for line in replies.iter().flat_map(|(l, _)| l) {
        if let Some(rest) = strip_word(line, "* CAPABILITY ") {
            untagged_caps = true;
            caps.extend(rest.split_ascii_whitespace().map(str::to_ascii_uppercase));
        }
    }
    if !untagged_caps {
        for (_, done) in replies {
            if let Some(code) = done
                .split_once(" [CAPABILITY ")
                .and_then(|(_, rest)| rest.split_once(']'))
            {
                caps.extend(code.0.split_ascii_whitespace().map(str::to_ascii_uppercase));
            }
        }
    }
    let namespace = if caps.contains("NAMESPACE") {
        replies
            .iter()
            .find_map(|(lines, done)| personal_in(lines, done))
    } else {
        None
    };
    (caps, namespace)
}

/// The personal namespace in one reply to NAMESPACE: its untagged lines
/// and its tagged line, which must be OK.
pub(crate) fn personal_in(lines: &[String], done: &str) -> Option<Namespace> {
    if !tagged_ok(done) {
        return None;
    }
    lines
        .iter()
        .find_map(|line| parse_personal(strip_word(line, "* NAMESPACE ")?))
}

/// True for `TAG OK ...`.
pub(crate) fn tagged_ok(line: &str) -> bool {
    line.split(' ')
        .nth(1)
        .is_some_and(|s| s.eq_ignore_ascii_case("OK"))
}

/// `line` without its first words `prefix` (compared without case).
fn strip_word<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &line[prefix.len()..])
}

/// The first personal namespace of a NAMESPACE reply's arguments
/// (`(("INBOX." ".")) NIL NIL`), decoded; `None` for `NIL` or anything
/// not understood.
pub fn parse_personal(args: &str) -> Option<Namespace> {
    let rest = args.trim_start().strip_prefix("((")?;
    let (prefix, rest) = quoted(rest)?;
    let rest = rest.strip_prefix(' ')?;
    let delimiter = if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("NIL") {
        None
    } else {
        let (d, _) = quoted(rest)?;
        let mut chars = d.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c),
            _ => return None,
        }
    };
    let prefix = mutf7::decode(&prefix).ok()?;
    Some(Namespace { prefix, delimiter })
}

/// A quoted string at the start of `s` (RFC 3501: `\` escapes `"` and
/// `\`), and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            '\r' | '\n' => return None,
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str], done: &str) -> (Vec<String>, String) {
        (
            lines.iter().map(|l| l.to_string()).collect(),
            done.to_string(),
        )
    }

    #[test]
    fn login_flight_replies_give_capabilities_and_namespace() {
        // Dovecot's answers to LOGIN, CAPABILITY and NAMESPACE in one flight.
        let replies = [
            reply(&[], "rx0 OK [CAPABILITY IMAP4rev1 NAMESPACE] Logged in"),
            reply(
                &["* CAPABILITY IMAP4rev1 NAMESPACE COMPRESS=DEFLATE"],
                "rx1 OK Capability completed.",
            ),
            reply(&[r#"* NAMESPACE (("INBOX." ".")) NIL NIL"#], "rx2 OK done"),
        ];
        let (caps, ns) = caps_and_namespace(&replies);
        assert!(caps.contains("COMPRESS=DEFLATE"), "{caps:?}");
        assert_eq!(ns.map(|n| n.prefix), Some("INBOX.".to_string()));
        // CAPABILITY refused: the LOGIN reply's response code still counts;
        // no NAMESPACE announced, none taken.
        let replies = [
            reply(&[], "rx0 OK [CAPABILITY IMAP4rev1 IDLE] Logged in"),
            reply(&[], "rx1 BAD no"),
            reply(&[r#"* NAMESPACE (("x" "/")) NIL NIL"#], "rx2 OK done"),
        ];
        let (caps, ns) = caps_and_namespace(&replies);
        assert!(
            caps.contains("IDLE") && !caps.contains("NAMESPACE"),
            "{caps:?}"
        );
        assert_eq!(ns, None);
    }

    #[test]
    fn personal_namespace_of_courier_cyrus_and_dovecot_replies() {
        let ns = |p: &str, d: Option<char>| {
            Some(Namespace {
                prefix: p.to_string(),
                delimiter: d,
            })
        };
        assert_eq!(
            parse_personal(r##"(("INBOX." ".")) NIL (("#shared." "."))"##),
            ns("INBOX.", Some('.'))
        );
        assert_eq!(parse_personal(r#"(("" "/")) NIL NIL"#), ns("", Some('/')));
        assert_eq!(
            parse_personal(r#"(("" "/")("Other/" "/")) NIL NIL"#),
            ns("", Some('/'))
        );
        assert_eq!(
            parse_personal(r#"(("a\"b" NIL)) NIL NIL"#),
            ns("a\"b", None)
        );
        assert_eq!(parse_personal("NIL NIL NIL"), None);
        assert_eq!(parse_personal(r#"(("unterminated"#), None);
        assert_eq!(parse_personal(r#"(("x" "ab")) NIL NIL"#), None);
    }
}
