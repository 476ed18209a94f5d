//! Mailbox name -> Maildir++ folder directory name, and back.
//!
//! The archive is laid out so that a stock Dovecot 2.3 with Maildir++ and the
//! listescape plugin (escape char `\`) can serve it. Each server mailbox gets
//! one directory directly under `mail/`, named `.` + its hierarchy levels
//! joined by `.`, each level escaped as listescape does (`\` + two lowercase
//! hex digits) and then encoded as modified UTF-7; INBOX is the Maildir root.
//!
//! The folder name is computed from a name the server sent, so it is treated
//! as hostile: the result never contains `/` or NUL, is never `.` or `..`, and
//! always starts with `.`, so joining it under `mail/` cannot leave that
//! directory or land on the root's `cur`/`new`/`tmp`. The mapping is also
//! one-to-one (escaping and modified UTF-7 are both strict), so two server
//! mailboxes never share a folder, and [`levels_for`] can undo it.
//!
//! Two escapes go beyond what Dovecot itself writes: `~` is escaped at the
//! start of every level (Dovecot: only of the whole name) and control
//! characters are escaped too. Dovecot unescapes any `\xx`, so it still shows
//! these folders under the server's names.

use crate::mutf7;

/// The longest directory name most filesystems accept (NAME_MAX).
const MAX_DIR_LEN: usize = 255;

/// Dovecot's listescape escape character.
const ESCAPE: char = '\\';

/// Why a mailbox name cannot be given a folder in the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "mailbox name `{0}` has an empty hierarchy level\n\
         hint: rename the mailbox on the server, or leave it out of the backup"
    )]
    EmptyLevel(String),
    #[error(
        "mailbox name `{0}` is too long for a folder name (over {MAX_DIR_LEN} bytes once encoded)\n\
         hint: rename the mailbox on the server, or leave it out of the backup"
    )]
    TooLong(String),
}

/// Whether listescape must escape `c` within a level; `at_start` says whether
/// `c` is the first character of the level.
fn needs_escape(c: char, at_start: bool) -> bool {
    matches!(c, ESCAPE | '.' | '/') || (at_start && c == '~') || c.is_ascii_control()
}

fn escape_level(level: &str) -> String {
    let mut out = String::with_capacity(level.len());
    for (i, c) in level.chars().enumerate() {
        if needs_escape(c, i == 0) {
            // Every escaped character is ASCII, so one byte.
            out.push(ESCAPE);
            out.push_str(&format!("{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`escape_level`]; `None` unless `escaped` is exactly what
/// it produces (lowercase hex, only for characters that need it, and every
/// character that needs it escaped).
fn unescape_level(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        let at_start = out.is_empty();
        let c = if c == ESCAPE {
            let hi = lower_hex_digit(chars.next()?)?;
            let lo = lower_hex_digit(chars.next()?)?;
            let c = char::from(hi << 4 | lo);
            if !needs_escape(c, at_start) {
                return None;
            }
            c
        } else if needs_escape(c, at_start) {
            return None;
        } else {
            c
        };
        out.push(c);
    }
    Some(out)
}

fn lower_hex_digit(c: char) -> Option<u8> {
    match c {
        '0'..='9' | 'a'..='f' => c.to_digit(16).map(|d| d as u8),
        _ => None,
    }
}

/// The Maildir++ directory name (relative to `mail/`) for a decoded mailbox
/// name whose hierarchy delimiter is `delimiter` (`None`: a flat namespace,
/// the name is one level); `""` for INBOX.
///
/// A first level of `INBOX` in any case is written as `INBOX`, since IMAP
/// treats it case-insensitively; all other levels keep their case.
pub fn folder_for(name: &str, delimiter: Option<char>) -> Result<String, NameError> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok(String::new());
    }
    let levels: Vec<&str> = match delimiter {
        Some(d) => name.split(d).collect(),
        None => vec![name],
    };
    let mut dir = String::with_capacity(name.len() + levels.len());
    for (i, level) in levels.into_iter().enumerate() {
        if level.is_empty() {
            return Err(NameError::EmptyLevel(name.to_string()));
        }
        let level = if i == 0 && level.eq_ignore_ascii_case("INBOX") {
            "INBOX"
        } else {
            level
        };
        dir.push('.');
        dir.push_str(&mutf7::encode(&escape_level(level)));
        // Checked as we go so a huge hostile name costs little.
        if dir.len() > MAX_DIR_LEN {
            return Err(NameError::TooLong(name.to_string()));
        }
    }
    Ok(dir)
}

/// The hierarchy levels of the decoded mailbox name that [`folder_for`] maps
/// to `dir`; `["INBOX"]` for `""`. `None` if `dir` is not a name
/// [`folder_for`] produces (a Maildir's `cur`, a stray file, a folder
/// created by hand with a non-canonical spelling).
pub fn levels_for(dir: &str) -> Option<Vec<String>> {
    if dir.is_empty() {
        return Some(vec!["INBOX".to_string()]);
    }
    if dir.len() > MAX_DIR_LEN {
        return None;
    }
    let rest = dir.strip_prefix('.')?;
    let mut levels = Vec::new();
    for (i, encoded) in rest.split('.').enumerate() {
        if encoded.is_empty() {
            return None;
        }
        let level = unescape_level(&mutf7::decode(encoded).ok()?)?;
        if i == 0 && level.eq_ignore_ascii_case("INBOX") && level != "INBOX" {
            return None;
        }
        levels.push(level);
    }
    // INBOX itself is the root, never `.INBOX`.
    if levels == ["INBOX"] {
        return None;
    }
    Some(levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> String {
        folder_for(name, Some('/')).expect(name)
    }

    fn levels(dir: &str) -> Option<Vec<String>> {
        levels_for(dir)
    }

    fn owned(levels: &[&str]) -> Option<Vec<String>> {
        Some(levels.iter().map(|s| s.to_string()).collect())
    }

    /// The properties that make `mail/<folder>` safe to create.
    fn assert_safe(dir: &str) {
        assert!(!dir.contains('/'), "{dir:?} contains '/'");
        assert!(!dir.contains('\0'), "{dir:?} contains NUL");
        assert!(dir != "." && dir != "..", "{dir:?} is a dot entry");
        assert!(dir.is_empty() || dir.starts_with('.'), "{dir:?}");
        assert!(dir.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{dir:?}");
        assert!(dir.len() <= MAX_DIR_LEN, "{dir:?} is too long");
        assert!(!dir.split('.').skip(1).any(str::is_empty), "{dir:?}");
    }

    #[test]
    fn inbox_in_any_case_is_the_maildir_root() {
        for name in ["INBOX", "inbox", "InBoX"] {
            assert_eq!(folder_for(name, Some('/')).as_deref(), Ok(""));
            assert_eq!(folder_for(name, Some('.')).as_deref(), Ok(""));
            assert_eq!(folder_for(name, None).as_deref(), Ok(""));
        }
        assert_eq!(levels(""), owned(&["INBOX"]));
    }

    #[test]
    fn hierarchy_levels_are_joined_with_dots() {
        assert_eq!(folder("Archive/2024/Q1"), ".Archive.2024.Q1");
        assert_eq!(
            folder_for("Archive.2024", Some('.')).unwrap(),
            ".Archive.2024"
        );
        assert_eq!(
            levels(".Archive.2024.Q1"),
            owned(&["Archive", "2024", "Q1"])
        );
    }

    #[test]
    fn inbox_as_first_level_is_normalised() {
        assert_eq!(folder("inbox/x"), ".INBOX.x");
        assert_eq!(folder("INBOX/x"), ".INBOX.x");
        assert_eq!(folder("Inbox/inbox"), ".INBOX.inbox");
        assert_eq!(folder("x/inbox"), ".x.inbox");
        assert_eq!(levels(".INBOX.x"), owned(&["INBOX", "x"]));
    }

    #[test]
    fn non_ascii_levels_are_modified_utf7() {
        assert_eq!(folder("Entwürfe"), ".Entw&APw-rfe");
        assert_eq!(folder("R&D"), ".R&-D");
        assert_eq!(folder("台北/日本語"), ".&U,BTFw-.&ZeVnLIqe-");
        assert_eq!(levels(".Entw&APw-rfe"), owned(&["Entwürfe"]));
    }

    #[test]
    fn dots_slashes_and_backslashes_are_escaped() {
        assert_eq!(folder("a.b"), ".a\\2eb");
        assert_eq!(folder_for("a/b", None).unwrap(), ".a\\2fb");
        assert_eq!(folder_for("a/b", Some('.')).unwrap(), ".a\\2fb");
        assert_eq!(folder("a\\b"), ".a\\5cb");
        assert_eq!(folder_for("a\\b", Some('\\')).unwrap(), ".a.b");
        assert_eq!(levels(".a\\2eb"), owned(&["a.b"]));
    }

    #[test]
    fn tilde_is_escaped_only_at_the_start_of_a_level() {
        assert_eq!(folder("~root"), ".\\7eroot");
        assert_eq!(folder("a/~b~"), ".a.\\7eb~");
        assert_eq!(levels(".a.\\7eb~"), owned(&["a", "~b~"]));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(folder("a\0b"), ".a\\00b");
        assert_eq!(folder("a\tb\u{7f}"), ".a\\09b\\7f");
        assert_eq!(levels(".a\\00b"), owned(&["a\0b"]));
    }

    #[test]
    fn empty_levels_are_errors() {
        for name in ["", "/", "/a", "a/", "a//b"] {
            assert_eq!(
                folder_for(name, Some('/')),
                Err(NameError::EmptyLevel(name.to_string())),
                "{name:?}"
            );
        }
        assert_eq!(
            folder_for("", None),
            Err(NameError::EmptyLevel(String::new()))
        );
        // Without a delimiter, '/' is just a character.
        assert_eq!(folder_for("/", None).unwrap(), ".\\2f");
    }

    #[test]
    fn overlong_name_is_too_long() {
        let name = "x".repeat(300);
        assert_eq!(
            folder_for(&name, None),
            Err(NameError::TooLong(name.clone()))
        );
        // 254 bytes + the leading '.' is the longest that fits.
        let name = "x".repeat(254);
        assert_eq!(folder_for(&name, None).unwrap().len(), 255);
        let name = "x".repeat(255);
        assert!(matches!(
            folder_for(&name, None),
            Err(NameError::TooLong(_))
        ));
        // Escaping counts: 100 dots become 300 bytes.
        let name = ".".repeat(100);
        assert!(matches!(
            folder_for(&name, None),
            Err(NameError::TooLong(_))
        ));
        assert_eq!(levels(&format!(".{}", "x".repeat(255))), None);
        let message = folder_for(&"x".repeat(300), None).unwrap_err().to_string();
        assert!(message.contains("over 255 bytes"), "{message}");
        assert!(message.contains("\nhint: "), "{message}");
    }

    #[test]
    fn hostile_names_stay_inside_mail_dir() {
        let hostile = [
            "cur",
            "new",
            "tmp",
            ".",
            "..",
            "../../etc/passwd",
            "~root",
            "~",
            "a\0b",
            "\0",
            "/etc/passwd",
            "..\\..",
            "dovecot-uidlist",
            ".hidden",
            "&",
        ];
        for name in hostile {
            for delimiter in [Some('/'), Some('.'), None] {
                match folder_for(name, delimiter) {
                    Ok(dir) => {
                        assert_safe(&dir);
                        assert!(!dir.is_empty(), "{name:?} must not be INBOX");
                        assert!(levels_for(&dir).is_some(), "{dir:?}");
                    }
                    Err(NameError::EmptyLevel(_)) => {}
                    Err(e) => panic!("{name:?}: {e}"),
                }
            }
        }
        assert_eq!(folder("cur"), ".cur");
        assert_eq!(folder_for("..", None).unwrap(), ".\\2e\\2e");
        assert_eq!(
            folder_for("../../etc/passwd", None).unwrap(),
            ".\\2e\\2e\\2f\\2e\\2e\\2fetc\\2fpasswd"
        );
        assert_eq!(folder("../x"), ".\\2e\\2e.x");
    }

    #[test]
    fn names_differing_by_case_or_escaping_get_different_folders() {
        let names = [
            "a.b",
            "a\\2eb",
            "a/b",
            "a\\b",
            "a\\5cb",
            "A.b",
            "A/b",
            "a.B",
            "ab",
            "R&D",
            "R&-D",
            "Entwürfe",
            "Entw&APw-rfe",
            "~a",
            "\\7ea",
            "Foo",
            "foo",
            "FOO",
            "x/INBOX",
            "x/inbox",
        ];
        let mut seen = std::collections::HashMap::new();
        for name in names {
            let dir = folder(name);
            if let Some(other) = seen.insert(dir.clone(), name) {
                panic!("{name:?} and {other:?} both map to {dir:?}");
            }
        }
    }

    #[test]
    fn rejects_dirs_folder_for_never_produces() {
        let not_ours = [
            "cur",
            "new",
            "tmp",
            ".",
            "..",
            ".a..b",
            ".a.",
            "..a",
            "a.b",
            "dovecot-uidlist",
            ".INBOX",   // INBOX is the root
            ".inbox.x", // first-level INBOX is always upper case
            ".a.b/c",   // raw '/'
            ".a\\",     // truncated escape
            ".a\\2",    // truncated escape
            ".a\\2E",   // upper-case hex
            ".a\\zz",   // not hex
            ".a\\41",   // 'A' needs no escape
            ".a\\7e",   // '~' escaped but not at a level start
            ".~a",      // '~' at a level start not escaped
            ".a\tb",    // raw control character
            ".a&AAk-b", // control character hidden in a shift
            ".a&AFw-b", // '\' hidden in a shift
        ];
        for dir in not_ours {
            assert_eq!(levels_for(dir), None, "{dir:?}");
        }
        assert_eq!(levels_for(".Entw&APw-rfe&-"), owned(&["Entwürfe&"]));
        for bad_mutf7 in [
            ".Entwürfe",
            ".a&AOQ",
            ".a&AOR-",
            ".&AGE-",
            ".&AOQ-&APY-",
            ".&2D0-",
        ] {
            assert_eq!(levels_for(bad_mutf7), None, "{bad_mutf7:?}");
        }
    }

    /// A small deterministic generator (xorshift64*).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn char(&mut self) -> char {
            const TRICKY: &[char] = &[
                '.', '/', '\\', '~', '&', '-', '\0', '\t', '\u{7f}', 'ä', 'ü', 'Б', '台', '📧',
                '\u{ffff}', 'I', 'N', 'B', 'O', 'X', 'i', 'n', 'b', 'o', 'x', '2', 'e', 'f',
            ];
            match self.below(3) {
                0 => TRICKY[self.below(TRICKY.len())],
                1 => char::from(0x20 + self.below(0x5f) as u8),
                _ => loop {
                    if let Some(c) = char::from_u32(self.below(0x11_0000) as u32) {
                        break c;
                    }
                },
            }
        }

        fn level(&mut self) -> String {
            if self.below(10) == 0 {
                return ["INBOX", "inbox", "Inbox"][self.below(3)].to_string();
            }
            let len = 1 + self.below(8);
            (0..len).map(|_| self.char()).collect()
        }
    }

    #[test]
    fn generated_names_round_trip_through_levels_for() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..20_000 {
            let delimiter = ['/', '.', '\\', '^'][g.below(4)];
            let count = 1 + g.below(4);
            let generated: Vec<String> = (0..count)
                .map(|_| g.level().replace(delimiter, "_"))
                .collect();
            let name = generated.join(&delimiter.to_string());
            let dir = match folder_for(&name, Some(delimiter)) {
                Ok(dir) => dir,
                Err(NameError::TooLong(_)) => continue,
                Err(e) => panic!("{name:?}: {e}"),
            };
            assert_safe(&dir);
            let mut expected = generated.clone();
            if expected[0].eq_ignore_ascii_case("INBOX") {
                expected[0] = "INBOX".to_string();
            }
            let back = levels_for(&dir).unwrap_or_else(|| panic!("{name:?} -> {dir:?}"));
            assert_eq!(back, expected, "{name:?} -> {dir:?}");
            // The flat spelling of one level gives the same folder back too.
            if count == 1 && !dir.is_empty() {
                assert_eq!(folder_for(&name, None).as_deref(), Ok(dir.as_str()));
            }
            checked += 1;
        }
        assert!(checked > 15_000, "only {checked} checked");
    }

    #[test]
    fn generated_dirs_that_parse_map_back_to_themselves() {
        let mut g = Gen(0x0123_4567_89ab_cdef);
        let alphabet = [
            '.', '\\', '2', 'e', 'f', '7', 'a', '~', '&', '-', 'A', 'O', 'Q', 'I', 'N',
        ];
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = g.below(10);
            let dir: String = (0..len)
                .map(|_| alphabet[g.below(alphabet.len())])
                .collect();
            if let Some(levels) = levels_for(&dir) {
                accepted += 1;
                // No level contains '\u{1}', so it is a safe delimiter.
                let name = levels.join("\u{1}");
                assert_eq!(
                    folder_for(&name, Some('\u{1}')).as_deref(),
                    Ok(dir.as_str())
                );
            }
        }
        assert!(accepted > 500, "only {accepted} accepted");
    }
}
