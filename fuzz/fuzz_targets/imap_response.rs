//! The IMAP response parser imapbak relies on (imap-proto, through
//! async-imap): any bytes from a server must give a response, an
//! incomplete-input or an error, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Known upstream bugs found by this target (imap-proto 0.17.0), skipped so
/// a run can look further; each panics the task reading the connection:
/// - `Outcome::parse` (src/rfc3501/mod.rs:1182) slices the text after a
///   response code at byte 1, assuming a space: `* OK [ALERT]é\r\n`.
/// - `msg_att_internal_date` (src/rfc3501/mod.rs:892) unwraps an nstring:
///   `* 1 FETCH (INTERNALDATE NIL)\r\n`.
fn hits_known_panic(data: &[u8]) -> bool {
    let after_code = data.windows(2).any(|w| w[0] == b']' && w[1] >= 0x80);
    let nil_date = data
        .windows(b"INTERNALDATE NIL".len())
        .any(|w| w.eq_ignore_ascii_case(b"INTERNALDATE NIL"));
    after_code || nil_date
}

fuzz_target!(|data: &[u8]| {
    if hits_known_panic(data) {
        return;
    }
    let _ = imap_proto::Response::parse(data);
});
