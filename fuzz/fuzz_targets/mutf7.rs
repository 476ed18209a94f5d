//! Modified UTF-7: the decoder accepts only what the encoder writes, and the
//! encoder's output always decodes back to its input.
#![no_main]

use imapbak::mutf7::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // As a wire name: whatever decodes is canonical.
    if let Ok(name) = decode(text) {
        assert_eq!(encode(&name), text, "decoded to {name:?}");
    }
    // As a Unicode name: the encoding is printable ASCII and round-trips.
    let wire = encode(text);
    assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{wire:?}");
    assert_eq!(decode(&wire).as_deref(), Ok(text), "{wire:?}");
});
