//! NAMESPACE (RFC 2342): the personal namespace's prefix and delimiter, so
//! that the engine can store `INBOX.Sent` (Courier, Debian's Cyrus) as
//! `Sent` and put it back under whatever prefix a target uses.
//!
//! imap-proto 0.17 cannot parse a NAMESPACE reply (the whole connection
//! would fail on it), nor Courier's `* QUOTA "ROOT"` without a resource
//! list, so such exchanges are done beside async-imap ([`raw_exchange`]):
//! sent and read raw on the session's stream when nothing else is in
//! flight. Bytes still go through the framing guard.

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::session::{read_line, Connection};
use super::ImapError;
use crate::mutf7;
use crate::sync::remote::Namespace;

/// Our own tag; async-imap's tags are `A` followed by digits.
const TAG: &str = "nsq1";

/// Lines to read at most before giving up on the reply.
const MAX_LINES: usize = 64;

impl Connection {
    /// Asks NAMESPACE when announced; `None` when not, or when the server
    /// has no personal namespace. A refusal is not an error: the names
    /// are then used as listed.
    pub(crate) async fn personal_namespace(&mut self) -> Result<Option<Namespace>, ImapError> {
        if !self.caps.contains("NAMESPACE") {
            return Ok(None);
        }
        let (untagged, _) = self.raw_exchange("NAMESPACE").await?;
        Ok(untagged.iter().find_map(|line| {
            let rest = line.strip_prefix("* ")?;
            (rest.len() > 10 && rest[..10].eq_ignore_ascii_case("NAMESPACE "))
                .then(|| parse_personal(&rest[10..]))
                .flatten()
        }))
    }

    /// Sends `command` and reads its reply line by line, beside async-imap,
    /// for the replies imap-proto 0.17 cannot parse (a parse error would
    /// end the connection): the untagged lines and the tagged one. Only
    /// when nothing else is in flight; replies carrying literals are not
    /// supported (the commands using this never get one).
    pub(crate) async fn raw_exchange(
        &mut self,
        command: &str,
    ) -> Result<(Vec<String>, String), ImapError> {
        log::debug!("> {TAG} {command}");
        let t = self.timeout;
        let stream = self.session.get_mut();
        let exchange = async {
            stream
                .write_all(format!("{TAG} {command}\r\n").as_bytes())
                .await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let mut untagged = Vec::new();
            for _ in 0..MAX_LINES {
                let line = read_line(stream, &mut buf).await?;
                let line = line.trim_end().to_string();
                log::debug!("< {line}");
                if line.starts_with(&format!("{TAG} ")) {
                    return Ok((untagged, line));
                }
                untagged.push(line);
            }
            Err(ImapError::Protocol(format!(
                "no end to the reply to {}",
                command.split(' ').next().unwrap_or(command)
            )))
        };
        timeout(t, exchange).await.map_err(|_| ImapError::Timeout {
            what: command.split(' ').next().unwrap_or(command).to_string(),
            secs: t.as_secs(),
        })?
    }
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
