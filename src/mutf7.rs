//! Modified UTF-7 (RFC 3501 section 5.1.3), the encoding IMAP uses for
//! mailbox names on the wire and Dovecot uses for Maildir++ folder names.
//!
//! The decoder is strict on purpose: it accepts only the canonical form the
//! encoder produces, so `encode(decode(x)?) == x` for every `x` it accepts.
//! That makes the mapping between wire names and Unicode names one-to-one,
//! which the archive relies on to never merge two mailboxes into one folder.

/// A mailbox name that is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid modified UTF-7 in mailbox name `{name}`: {reason}")]
pub struct Mutf7Error {
    pub name: String,
    pub reason: &'static str,
}

/// The modified base64 alphabet: RFC 2045 base64 with ',' instead of '/'.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Whether `c` stands for itself (printable US-ASCII) rather than being shifted.
fn is_direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

fn base64_value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b',' => Some(63),
        _ => None,
    }
}

/// Appends `&`, the modified base64 of `run` as UTF-16BE, and `-`.
fn push_shifted(out: &mut String, run: &[u16]) {
    out.push('&');
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for unit in run {
        for byte in unit.to_be_bytes() {
            bits = (bits << 8) | u32::from(byte);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(char::from(ALPHABET[((bits >> nbits) & 0x3f) as usize]));
            }
        }
    }
    if nbits > 0 {
        // Leftover bits are padded with zeros; no '=' padding.
        out.push(char::from(
            ALPHABET[((bits << (6 - nbits)) & 0x3f) as usize],
        ));
    }
    out.push('-');
}

/// Encodes a Unicode mailbox name as canonical modified UTF-7.
///
/// Printable ASCII stands for itself except `&`, which becomes `&-`; every
/// maximal run of other characters becomes one shifted base64 sequence.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + name.len() / 2);
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if is_direct(c) {
            if !run.is_empty() {
                push_shifted(&mut out, &run);
                run.clear();
            }
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    if !run.is_empty() {
        push_shifted(&mut out, &run);
    }
    out
}

/// Decodes a modified UTF-7 mailbox name, accepting only the canonical form
/// [`encode`] produces.
pub fn decode(name: &str) -> Result<String, Mutf7Error> {
    let err = |reason: &'static str| Mutf7Error {
        name: name.to_string(),
        reason,
    };
    let bytes = name.as_bytes();
    if bytes.iter().any(|b| !(0x20..=0x7e).contains(b)) {
        return Err(err("contains a character outside printable ASCII"));
    }
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    // Whether the previous token was a non-empty shift: two in a row must
    // have been one shift.
    let mut after_shift = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'&' {
            out.push(char::from(b));
            after_shift = false;
            i += 1;
            continue;
        }
        i += 1;
        let start = i;
        while i < bytes.len() && bytes[i] != b'-' {
            i += 1;
        }
        if i == bytes.len() {
            return Err(err("a `&` shift is not terminated by `-`"));
        }
        let shifted = &bytes[start..i];
        i += 1; // the '-'
        if shifted.is_empty() {
            out.push('&');
            after_shift = false;
            continue;
        }
        if after_shift {
            return Err(err("two adjacent shifts must be a single shift"));
        }
        out.push_str(&decode_shift(shifted).map_err(err)?);
        after_shift = true;
    }
    Ok(out)
}

/// Decodes the base64 between `&` and `-` of a non-empty shift.
fn decode_shift(shifted: &[u8]) -> Result<String, &'static str> {
    let mut bytes = Vec::with_capacity(shifted.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &b in shifted {
        let v = base64_value(b).ok_or("invalid base64 character in a shift")?;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            bytes.push((bits >> nbits) as u8);
        }
        bits &= (1 << nbits) - 1;
    }
    if nbits >= 6 {
        return Err("a shift has a base64 character too many");
    }
    if bits != 0 {
        return Err("a shift has non-zero leftover bits");
    }
    if bytes.len() % 2 != 0 {
        return Err("a shift holds an odd number of bytes");
    }
    let units = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
    let mut out = String::new();
    for c in char::decode_utf16(units) {
        let c = c.map_err(|_| "a shift holds an unpaired UTF-16 surrogate")?;
        if is_direct(c) {
            return Err("a shift encodes printable ASCII, which must stand for itself");
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> &'static str {
        decode(s).expect_err(s).reason
    }

    fn both_ways(unicode: &str, wire: &str) {
        assert_eq!(encode(unicode), wire, "encode {unicode:?}");
        assert_eq!(decode(wire).as_deref(), Ok(unicode), "decode {wire:?}");
    }

    #[test]
    fn rfc3501_example_round_trips() {
        both_ways("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
    }

    #[test]
    fn latin_umlaut_is_shifted_alone() {
        both_ways("Entwürfe", "Entw&APw-rfe");
    }

    #[test]
    fn cyrillic_word_is_one_shift() {
        both_ways("Отправленные", "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-");
    }

    #[test]
    fn ampersand_is_escaped_as_empty_shift() {
        both_ways("R&D", "R&-D");
        both_ways("&", "&-");
        both_ways("&&", "&-&-");
        both_ways("ä&ö", "&AOQ-&-&APY-");
    }

    #[test]
    fn emoji_is_a_surrogate_pair() {
        both_ways("📧", "&2D3c5w-");
        both_ways("a📧b😀", "a&2D3c5w-b&2D3eAA-");
    }

    #[test]
    fn plain_ascii_is_unchanged() {
        both_ways("INBOX", "INBOX");
        both_ways(" !~-,+/", " !~-,+/");
        both_ways("", "");
    }

    #[test]
    fn control_characters_are_shifted() {
        both_ways("a\tb", "a&AAk-b");
        both_ways("\u{7f}", "&AH8-");
        both_ways("\0", "&AAA-");
    }

    #[test]
    fn hyphen_right_after_shift_is_literal() {
        both_ways("ä-", "&AOQ--");
    }

    #[test]
    fn rejects_non_ascii_input() {
        assert_eq!(
            reason("Entwürfe"),
            "contains a character outside printable ASCII"
        );
        assert_eq!(
            reason("a\tb"),
            "contains a character outside printable ASCII"
        );
        assert_eq!(
            reason("a\u{7f}"),
            "contains a character outside printable ASCII"
        );
    }

    #[test]
    fn rejects_unterminated_shift() {
        assert_eq!(reason("&AOQ"), "a `&` shift is not terminated by `-`");
        assert_eq!(reason("a&"), "a `&` shift is not terminated by `-`");
    }

    #[test]
    fn rejects_bad_base64_character() {
        assert_eq!(reason("&AO/-"), "invalid base64 character in a shift");
        assert_eq!(reason("&AOQ=-"), "invalid base64 character in a shift");
        assert_eq!(reason("&A&Q-"), "invalid base64 character in a shift");
    }

    #[test]
    fn rejects_non_zero_leftover_bits() {
        // "&AOQ-" is U+00E4; the last character carries 2 padding bits.
        assert_eq!(reason("&AOR-"), "a shift has non-zero leftover bits");
    }

    #[test]
    fn rejects_superfluous_base64_character() {
        assert_eq!(reason("&A-"), "a shift has a base64 character too many");
        assert_eq!(reason("&AOQAA-"), "a shift has a base64 character too many");
    }

    #[test]
    fn rejects_odd_byte_count() {
        assert_eq!(reason("&AA-"), "a shift holds an odd number of bytes");
        assert_eq!(reason("&AOQA-"), "a shift holds an odd number of bytes");
    }

    #[test]
    fn rejects_shifted_printable_ascii() {
        // "&AGE-" is 'a'; "&ACY-" is '&'.
        let shifted = "a shift encodes printable ASCII, which must stand for itself";
        assert_eq!(reason("&AGE-"), shifted);
        assert_eq!(reason("&ACY-"), shifted);
        assert_eq!(reason("&AOQAYQ-"), shifted);
    }

    #[test]
    fn rejects_adjacent_shifts() {
        assert_eq!(
            reason("&AOQ-&APY-"),
            "two adjacent shifts must be a single shift"
        );
        assert_eq!(decode("&AOQA9g-").as_deref(), Ok("äö"));
    }

    #[test]
    fn rejects_unpaired_surrogates() {
        let unpaired = "a shift holds an unpaired UTF-16 surrogate";
        assert_eq!(reason("&2D0-"), unpaired); // lone high surrogate
        assert_eq!(reason("&3OcAQQ-"), unpaired); // lone low surrogate
        assert_eq!(reason("&2D0AQQ-"), unpaired); // high then non-low
    }

    #[test]
    fn error_names_the_input() {
        let e = decode("&AOR-").unwrap_err();
        assert_eq!(e.name, "&AOR-");
        assert!(e.to_string().contains("`&AOR-`"));
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

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn char(&mut self) -> char {
            let pools: [(u32, u32); 7] = [
                (0x20, 0x7e),
                (0x26, 0x26), // '&'
                (0x2d, 0x2d), // '-'
                (0x00, 0x1f),
                (0x80, 0x7ff),
                (0x800, 0xffff),
                (0x1_0000, 0x10_ffff),
            ];
            loop {
                let (lo, hi) = pools[self.below(pools.len() as u64) as usize];
                let cp = lo + self.below(u64::from(hi - lo + 1)) as u32;
                if let Some(c) = char::from_u32(cp) {
                    return c;
                }
            }
        }

        fn string(&mut self) -> String {
            let len = self.below(12);
            (0..len).map(|_| self.char()).collect()
        }
    }

    #[test]
    fn generated_strings_round_trip() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let s = g.string();
            let wire = encode(&s);
            assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{wire:?}");
            assert_eq!(decode(&wire).as_deref(), Ok(s.as_str()), "{wire:?}");
        }
    }

    #[test]
    fn generated_wire_strings_that_decode_are_canonical() {
        let mut g = Gen(0x0123_4567_89ab_cdef);
        // Single characters, plus whole shifts (valid, non-canonical and
        // invalid ones) so that adjacent and malformed shifts come up often.
        let pieces = [
            "&", "-", "A", "a", "B", "Q", ",", "+", "9", "/", "_", " ", "&-", "&AOQ-", "&APY-",
            "&AOR-", "&AGE-", "&2D0-", "&3Oc-", "&2D3c5w-", "&AOQA-",
        ];
        let mut accepted = 0;
        for _ in 0..50_000 {
            let len = g.below(8);
            let wire: String = (0..len)
                .map(|_| pieces[g.below(pieces.len() as u64) as usize])
                .collect();
            if let Ok(s) = decode(&wire) {
                accepted += 1;
                assert_eq!(encode(&s), wire, "decoded to {s:?}");
            }
        }
        assert!(accepted > 1_000, "only {accepted} accepted");
    }
}
