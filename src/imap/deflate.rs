//! COMPRESS=DEFLATE (RFC 4978) on our side of the stream, swapped in under
//! async-imap's session once the server said OK (session.rs,
//! `Connection::compress`), so that a connection can turn it on when it
//! first has work rather than at login. Raw deflate both ways (no zlib
//! header), as the RFC says.
//!
//! Inflate reads the network through a 64 KiB buffer (async-imap's wrapper
//! uses tokio's 8 KiB default), so each call into the decompressor gets
//! about four TLS records' worth. The decompressor is flate2 on zlib-rs
//! (Cargo.toml says why not miniz_oxide). What we send is small commands,
//! and APPENDs on restore: deflated at level 2, the fastest with Huffman
//! tables of its own (zlib-rs's level 1 uses fixed ones, which leave
//! base64 attachments at over 90 %: a restore sent 48 of 52 MB; at level
//! 2, 115 of 183 MB over `scripts/bench.sh --link`, in 0.71 x the link's
//! limit).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::DeflateDecoder;
use async_compression::tokio::write::DeflateEncoder;
use async_compression::Level;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

/// Bytes read from the network per fill of the decompressor's input.
const READ_BUFFER: usize = 64 * 1024;

/// A stream that deflates what is written and inflates what is read.
#[derive(Debug)]
pub(crate) struct Deflate<T: AsyncRead + AsyncWrite + Unpin> {
    inner: DeflateDecoder<BufReader<DeflateEncoder<T>>>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Deflate<T> {
    pub(crate) fn new(stream: T) -> Self {
        let encoder = DeflateEncoder::with_quality(stream, Level::Precise(2));
        let reader = BufReader::with_capacity(READ_BUFFER, encoder);
        Deflate {
            inner: DeflateDecoder::new(reader),
        }
    }

    fn encoder(&mut self) -> Pin<&mut DeflateEncoder<T>> {
        Pin::new(self.inner.get_mut().get_mut())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Deflate<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Deflate<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.encoder().poll_write(cx, buf)
    }

    /// A sync flush: everything written so far reaches the server whole.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.encoder().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.encoder().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both directions against flate2's own raw deflate, as a server's
    /// zlib would produce and read it.
    #[tokio::test]
    async fn inflates_what_a_server_deflates_and_deflates_what_it_sends() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut ours = Deflate::new(ours);
        let body: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();

        let mut server =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        server.write_all(&body).unwrap();
        server.flush().unwrap();
        theirs.write_all(server.get_ref()).await.unwrap();
        let mut got = vec![0u8; body.len()];
        ours.read_exact(&mut got).await.unwrap();
        assert!(got == body, "inflated bytes differ");

        ours.write_all(b"a1 NOOP\r\n").await.unwrap();
        ours.flush().await.unwrap();
        let mut wire = vec![0u8; 64];
        let n = theirs.read(&mut wire).await.unwrap();
        let mut plain = Vec::new();
        // A sync flush ends a block but not the stream: read what is there.
        let _ = flate2::read::DeflateDecoder::new(&wire[..n]).read_to_end(&mut plain);
        assert_eq!(plain, b"a1 NOOP\r\n");
    }
}
