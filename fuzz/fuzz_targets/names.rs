//! Mailbox name -> Maildir++ folder: the folder is always safe to join under
//! `mail/`, `levels_for` undoes `folder_for`, and (so) two names never share
//! a folder.
#![no_main]

use imapbak::archive::names::{folder_for, levels_for, NameError};
use libfuzzer_sys::fuzz_target;

fn delimiter(selector: u8) -> Option<char> {
    match selector % 6 {
        0 => None,
        1 => Some('/'),
        2 => Some('.'),
        3 => Some('\\'),
        4 => Some('&'),
        _ => Some(char::from(selector)),
    }
}

/// The levels `folder_for` must keep for `name`: split on the delimiter, a
/// first level of INBOX in any case spelled `INBOX`.
fn expected_levels(name: &str, delimiter: Option<char>) -> Vec<String> {
    let mut levels: Vec<String> = match delimiter {
        Some(d) => name.split(d).map(str::to_string).collect(),
        None => vec![name.to_string()],
    };
    if levels[0].eq_ignore_ascii_case("INBOX") {
        levels[0] = "INBOX".to_string();
    }
    levels
}

fn check(name: &str, delimiter: Option<char>) -> Option<String> {
    let dir = match folder_for(name, delimiter) {
        Ok(dir) => dir,
        Err(NameError::EmptyLevel(_)) => {
            let levels = expected_levels(name, delimiter);
            assert!(levels.iter().any(String::is_empty), "{name:?}");
            return None;
        }
        Err(NameError::TooLong(_)) => return None,
    };
    assert!(!dir.contains('/') && !dir.contains('\0'), "{dir:?}");
    assert!(dir != "." && dir != "..", "{dir:?}");
    assert!(dir.is_empty() || dir.starts_with('.'), "{dir:?}");
    assert!(dir.len() <= 255, "{dir:?}");
    let back = levels_for(&dir).unwrap_or_else(|| panic!("{name:?} -> {dir:?}"));
    if name.eq_ignore_ascii_case("INBOX") {
        assert_eq!(back, ["INBOX"]);
    } else {
        assert_eq!(
            back,
            expected_levels(name, delimiter),
            "{name:?} -> {dir:?}"
        );
    }
    Some(dir)
}

// Input: a delimiter selector byte, then two names separated by 0xFF (a
// byte UTF-8 never uses), so seeds are readable files.
fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(2, |b| *b == 0xff);
    let a = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("x");
    let b = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("x");
    let delimiter = delimiter(selector);
    let dir_a = check(a, delimiter);
    let dir_b = check(b, delimiter);
    // One-to-one: two names share a folder only if they are the same
    // mailbox (INBOX as a first level is case-insensitive).
    if let (Some(x), Some(y)) = (&dir_a, &dir_b) {
        if x == y {
            let same_inbox = a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX");
            assert!(
                same_inbox || expected_levels(a, delimiter) == expected_levels(b, delimiter),
                "{a:?} and {b:?} both map to {x:?}"
            );
        }
    }
    // As a directory found on disk: what parses maps back to itself.
    if let Some(levels) = levels_for(a) {
        let delimiter = ['\u{1}', '/', '.', 'x', '\u{10ffff}']
            .into_iter()
            .find(|d| levels.iter().all(|l| !l.contains(*d)));
        if let Some(d) = delimiter {
            let name = levels.join(&d.to_string());
            assert_eq!(folder_for(&name, Some(d)).as_deref(), Ok(a), "{levels:?}");
        }
    }
});
