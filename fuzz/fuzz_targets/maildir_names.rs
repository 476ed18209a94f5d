//! Maildir file names: a name parses only if it is exactly the one we would
//! write for what it parses to, and every name we write parses back.
#![no_main]

use imapbak::archive::FileName;
use libfuzzer_sys::fuzz_target;

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fuzz_target!(|data: &[u8]| {
    // The input as a name found in cur/ or new/.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(parsed) = FileName::parse(text) {
            assert_eq!(parsed.full(), text, "{parsed:?}");
            assert!(!parsed.base().contains('/'), "{parsed:?}");
        }
    }
    // The same bytes as the fields of a name we write: numbers, then flag
    // letters (anything else is not a Maildir flag).
    let mut rest = data;
    let name = FileName {
        secs: i64::from_le_bytes(take(&mut rest)),
        uidvalidity: u32::from_le_bytes(take(&mut rest)),
        uid: u32::from_le_bytes(take(&mut rest)),
        size: u64::from_le_bytes(take(&mut rest)),
        flags: rest
            .iter()
            .filter(|b| b.is_ascii_alphabetic())
            .map(|b| char::from(*b))
            .collect(),
    };
    let full = name.full();
    assert_eq!(FileName::parse(&full), Some(name), "{full}");
});
