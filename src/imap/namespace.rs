//! NAMESPACE (RFC 2342): the personal namespace's prefix and delimiter, so
//! that the engine can store `INBOX.Sent` (Courier, Debian's Cyrus) as
//! `Sent` and put it back under whatever prefix a target uses.
//!
//! imap-proto 0.17 cannot parse a NAMESPACE reply (the whole connection
//! would fail on it), so this one exchange is done beside async-imap: sent
//! and read raw on the session's stream right after CAPABILITY, when
//! nothing else is in flight. Bytes still go through the framing guard.

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
        log::debug!("> {TAG} NAMESPACE");
        let t = self.timeout;
        let stream = self.session.get_mut();
        let exchange = async {
            stream
                .write_all(format!("{TAG} NAMESPACE\r\n").as_bytes())
                .await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let mut found = None;
            for _ in 0..MAX_LINES {
                let line = read_line(stream, &mut buf).await?;
                log::debug!("< {}", line.trim_end());
                if let Some(rest) = line.strip_prefix("* ") {
                    if rest.len() > 10 && rest[..10].eq_ignore_ascii_case("NAMESPACE ") {
                        found = parse_personal(&rest[10..]);
                    }
                } else if line.starts_with(&format!("{TAG} ")) {
                    return Ok(found);
                }
            }
            Err(ImapError::Protocol(
                "no end to the NAMESPACE reply".to_string(),
            ))
        };
        timeout(t, exchange).await.map_err(|_| ImapError::Timeout {
            what: "NAMESPACE".into(),
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
