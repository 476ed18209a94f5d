//! The journal reader: never panics, reads each intact line on its own, and
//! every entry it returns writes back as exactly the line it came from.
#![no_main]

use imapbak::archive::journal::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (entries, clean) = parse(data);
    let mut expected = Vec::new();
    let mut all_intact = data.is_empty() || data.ends_with(b"\n");
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    lines.pop(); // the torn tail, or "" after the last newline
    for line in lines {
        let mut one = line.to_vec();
        one.push(b'\n');
        match parse(&one) {
            (e, true) => {
                assert_eq!(e.len(), 1);
                assert_eq!(e[0].line().as_bytes(), &one[..], "{:?}", e[0]);
                assert!(!e[0].base.contains('/'), "{:?}", e[0]);
                expected.extend(e);
            }
            (e, false) => {
                assert!(e.is_empty());
                all_intact = false;
            }
        }
    }
    assert_eq!(entries, expected);
    assert_eq!(clean, all_intact);
});
