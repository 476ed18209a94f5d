//! IMAP flags <-> Maildir letters through a `dovecot-keywords` file read
//! from disk: no panic, letters come out sorted and unique, every letter
//! maps back to the flag it came from, and the keywords file survives a
//! write and a read.
#![no_main]

use imapbak::archive::{flags_to_letters, letters_to_flags, Keywords};
use libfuzzer_sys::fuzz_target;

fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

// Input, in sections separated by 0xFF (a byte UTF-8 never uses): the
// `dovecot-keywords` file, the IMAP flags separated by 0xFE, Maildir letters,
// and a character to look up as a letter.
fuzz_target!(|data: &[u8]| {
    let mut sections = data.splitn(4, |b| *b == 0xff);
    let file = text(sections.next());
    let flags: Vec<String> = sections
        .next()
        .unwrap_or_default()
        .split(|b| *b == 0xfe)
        .map(|f| text(Some(f)))
        .collect();
    let letters = text(sections.next());
    let letter = text(sections.next()).chars().next().unwrap_or('a');
    let (file, letters) = (file.as_str(), letters.as_str());
    let mut keywords = Keywords::parse(file);
    if keywords.name_of(letter).is_some() {
        assert!(letter.is_ascii_lowercase(), "{letter:?}");
    }
    let _ = letters_to_flags(letters, &keywords);

    let (out, dropped) = flags_to_letters(&flags, &mut keywords);
    let bytes = out.as_bytes();
    assert!(bytes.windows(2).all(|w| w[0] < w[1]), "{out:?}");
    assert!(
        out.bytes()
            .all(|b| b"DFRST".contains(&b) || b.is_ascii_lowercase()),
        "{out:?}"
    );
    for d in &dropped {
        assert!(flags.contains(d), "{d:?}");
    }
    // Each letter stands for a flag we were given (system flags in any case).
    let back = letters_to_flags(&out, &keywords);
    assert_eq!(back.len(), out.len(), "{out:?} -> {back:?}");
    for f in &back {
        assert!(
            flags
                .iter()
                .any(|g| g == f || (f.starts_with('\\') && g.eq_ignore_ascii_case(f))),
            "{f:?} not in {flags:?}"
        );
    }
    // And those flags give the same letters again.
    let (again, none) = flags_to_letters(&back, &mut keywords);
    assert_eq!(again, out);
    assert!(none.is_empty(), "{none:?}");
    // The keywords file we would write reads back to the same letters.
    let reread = Keywords::parse(&keywords.render());
    assert_eq!(
        letters_to_flags(&out, &reread),
        back,
        "{:?}",
        keywords.render()
    );
});
