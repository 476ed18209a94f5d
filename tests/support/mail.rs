//! Deterministic test messages (CRLF line endings, invented addresses under
//! `example.invalid`, no real people's mail). Each kind exercises something
//! an archiver must keep byte for byte.

const DATE: &str = "Tue, 14 May 2024 09:30:00 +0200";

fn crlf(lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Plain 7-bit ASCII text; `n` makes Subject, Message-ID and body unique.
pub fn plain(n: u32) -> Vec<u8> {
    crlf(&[
        "From: Ada Tester <ada@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        &format!("Subject: Plain test message {n}"),
        &format!("Date: {DATE}"),
        &format!("Message-ID: <plain-{n}@imapbak.example.invalid>"),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        &format!("This is plain test message number {n}."),
        "It has a few lines,",
        "",
        "and a blank one above.",
    ])
}

/// A latin-1 body sent as raw 8-bit bytes (Content-Transfer-Encoding: 8bit).
pub fn latin1_8bit() -> Vec<u8> {
    let mut m = crlf(&[
        "From: Ada Tester <ada@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        "Subject: 8-bit latin-1 body",
        &format!("Date: {DATE}"),
        "Message-ID: <latin1@imapbak.example.invalid>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=iso-8859-1",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]);
    // "Grüße aus Köln, 20 °C, café" in ISO-8859-1.
    m.extend_from_slice(b"Gr\xfc\xdfe aus K\xf6ln, 20 \xb0C, caf\xe9.\r\n");
    m.extend_from_slice(b"\xc0 bient\xf4t.\r\n");
    m
}

/// multipart/mixed: a text part and a small base64 attachment.
pub fn multipart_attachment() -> Vec<u8> {
    let attachment: Vec<u8> = pseudo_random(0x5eed, 3000);
    let mut lines = vec![
        "From: Ada Tester <ada@example.invalid>".to_string(),
        "To: Bert Tester <bert@example.invalid>".into(),
        "Subject: Report with attachment".into(),
        format!("Date: {DATE}"),
        "Message-ID: <multipart@imapbak.example.invalid>".into(),
        "MIME-Version: 1.0".into(),
        "Content-Type: multipart/mixed; boundary=\"=-=imapbak-boundary-1=-=\"".into(),
        "".into(),
        "This is a multi-part message in MIME format.".into(),
        "--=-=imapbak-boundary-1=-=".into(),
        "Content-Type: text/plain; charset=utf-8".into(),
        "Content-Transfer-Encoding: 7bit".into(),
        "".into(),
        "The report is attached.".into(),
        "".into(),
        "--=-=imapbak-boundary-1=-=".into(),
        "Content-Type: application/octet-stream; name=\"report.bin\"".into(),
        "Content-Disposition: attachment; filename=\"report.bin\"".into(),
        "Content-Transfer-Encoding: base64".into(),
        "".into(),
    ];
    lines.extend(base64_lines(&attachment));
    lines.push("--=-=imapbak-boundary-1=-=--".into());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    crlf(&refs)
}

/// A non-ASCII subject as RFC 2047 encoded words (UTF-8, B and Q).
pub fn encoded_subject() -> Vec<u8> {
    let b = base64("Grüße aus Köln – Übersicht".as_bytes());
    crlf(&[
        "From: =?UTF-8?Q?J=C3=BCrgen_Tester?= <juergen@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        &format!("Subject: =?UTF-8?B?{b}?="),
        &format!("Date: {DATE}"),
        "Message-ID: <encoded-subject@imapbak.example.invalid>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "Sch=C3=B6ne Gr=C3=BC=C3=9Fe.",
    ])
}

/// The first header line starts with whitespace (mailparse refuses this).
pub fn leading_whitespace() -> Vec<u8> {
    crlf(&[
        " X-Broken-Fold: this line starts with a space",
        "From: Ada Tester <ada@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        "Subject: First header line starts with whitespace",
        &format!("Date: {DATE}"),
        "Message-ID: <leading-ws@imapbak.example.invalid>",
        "",
        "Body.",
    ])
}

/// No Message-ID header at all.
pub fn no_message_id() -> Vec<u8> {
    crlf(&[
        "From: Ada Tester <ada@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        "Subject: No Message-ID here",
        &format!("Date: {DATE}"),
        "",
        "This message has no Message-ID header.",
    ])
}

/// A message of more than `mb` MiB: a base64 attachment of pseudo-random
/// (incompressible) bytes.
pub fn big(mb: usize) -> Vec<u8> {
    // base64 with CRLF every 76 chars grows by 4/3 * 78/76 > 4/3.
    let raw = mb * 1024 * 1024 * 3 / 4 + 4096;
    let data = pseudo_random(mb as u64 + 1, raw);
    let mut m = crlf(&[
        "From: Ada Tester <ada@example.invalid>",
        "To: Bert Tester <bert@example.invalid>",
        &format!("Subject: Big message, over {mb} MiB"),
        &format!("Date: {DATE}"),
        &format!("Message-ID: <big-{mb}@imapbak.example.invalid>"),
        "MIME-Version: 1.0",
        "Content-Type: multipart/mixed; boundary=\"big-boundary\"",
        "",
        "--big-boundary",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "A big attachment follows.",
        "--big-boundary",
        "Content-Type: application/octet-stream; name=\"big.bin\"",
        "Content-Transfer-Encoding: base64",
        "",
    ]);
    for line in base64_lines(&data) {
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--big-boundary--\r\n");
    m
}

/// One of each kind above (except `big`), with a short name.
pub fn all_kinds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("plain", plain(1)),
        ("latin1-8bit", latin1_8bit()),
        ("multipart", multipart_attachment()),
        ("encoded-subject", encoded_subject()),
        ("leading-whitespace", leading_whitespace()),
        ("no-message-id", no_message_id()),
    ]
}

/// `len` bytes from xorshift64* seeded with `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, one line.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// base64 in lines of 76 characters (MIME).
fn base64_lines(data: &[u8]) -> Vec<String> {
    data.chunks(57).map(base64).collect()
}
