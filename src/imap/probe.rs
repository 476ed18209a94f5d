//! Telling a port and TLS mode mismatch, the most common IMAP configuration
//! mistake, from a slow or broken server, within a second:
//!
//! - implicit TLS on a plain port (143): the server greets with `* OK` at
//!   once, and the TLS handshake reads that where a ServerHello belongs.
//!   [`FirstBytes`] keeps what arrived, so the handshake's failure can say
//!   which mistake it was.
//! - STARTTLS on an implicit-TLS port (993): both sides wait, the server
//!   for our ClientHello, we for its greeting, until the timeout (60 s by
//!   default). [`await_greeting`] waits half a second for the greeting; when
//!   the server stays silent it asks the port, on a second connection,
//!   whether it answers a ClientHello. Only a TLS answer fails the run: a
//!   plain server that is merely slow is waited for as before, so the probe
//!   costs a healthy server nothing and a slow one one extra connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::ImapError;

/// How long a STARTTLS server may keep its greeting before we ask whether
/// the port speaks TLS (issue 18: a mismatch is named within a second).
/// Real servers greet within milliseconds; one slower than this costs a
/// probe connection and is then waited for as before.
pub(crate) const SILENCE: Duration = Duration::from_millis(500);

/// How long the probe connection waits for the port's answer.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// The first byte of a TLS handshake record, and of an alert.
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_ALERT: u8 = 0x15;

/// How many of the server's first bytes [`FirstBytes`] keeps.
const KEEP: usize = 8;

/// A stream that remembers the first bytes read from it.
#[derive(Debug)]
pub(crate) struct FirstBytes<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Set once `KEEP` bytes are kept: later reads skip the lock.
    full: bool,
}

impl<S> FirstBytes<S> {
    /// The wrapper, and a handle on the bytes it will have seen.
    pub(crate) fn new(inner: S) -> (FirstBytes<S>, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::with_capacity(KEEP)));
        (
            FirstBytes {
                inner,
                seen: seen.clone(),
                full: false,
            },
            seen,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), false) = (&poll, this.full) {
            let mut seen = this.seen.lock().unwrap_or_else(|p| p.into_inner());
            let new = &buf.filled()[before..];
            let n = new.len().min(KEEP - seen.len());
            seen.extend_from_slice(&new[..n]);
            this.full = seen.len() == KEEP;
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// True if a server's first bytes open a plain-text IMAP response
/// (`* OK`, `* PREAUTH`, `* BYE`), not a TLS record.
pub(crate) fn is_plain_imap(first: &[u8]) -> bool {
    first.starts_with(b"* ")
}

/// Waits until the server has sent the first byte of its plain-text
/// greeting (it stays unread for the caller), or fails with
/// [`ImapError::TlsPort`] when the port turns out to speak TLS.
pub(crate) async fn await_greeting(
    tcp: &TcpStream,
    host: &str,
    port: u16,
    tls: &Arc<ClientConfig>,
) -> Result<(), ImapError> {
    let tls_port = || ImapError::TlsPort {
        host: host.to_string(),
        port,
    };
    let mut first = [0u8; 1];
    match timeout(SILENCE, tcp.peek(&mut first)).await {
        // A TLS record where a greeting belongs (a server that opens with an alert).
        Ok(Ok(1..)) if first[0] == TLS_HANDSHAKE || first[0] == TLS_ALERT => Err(tls_port()),
        // Data or end of stream: the greeting reader deals with either.
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ImapError::Io(e)),
        Err(_) => {
            let addr = tcp.peer_addr()?;
            if speaks_tls(addr, host, tls).await {
                Err(tls_port())
            } else {
                log::debug!("{host}:{port} is slow to greet; waiting for it");
                Ok(())
            }
        }
    }
}

/// Asks `addr` on a new connection whether it answers a ClientHello with
/// a TLS record. Any failure means "not shown to speak TLS".
async fn speaks_tls(addr: SocketAddr, host: &str, tls: &Arc<ClientConfig>) -> bool {
    let Ok(name) = ServerName::try_from(host.to_string()) else {
        return false;
    };
    let Ok(mut client) = rustls::ClientConnection::new(tls.clone(), name) else {
        return false;
    };
    let mut hello = Vec::new();
    if client.write_tls(&mut hello).is_err() {
        return false;
    }
    let answer = timeout(PROBE_WAIT, async {
        let mut probe = TcpStream::connect(addr).await?;
        probe.write_all(&hello).await?;
        let mut first = [0u8; 1];
        let n = probe.read(&mut first).await?;
        Ok::<_, io::Error>((n == 1).then_some(first[0]))
    })
    .await;
    matches!(answer, Ok(Ok(Some(TLS_HANDSHAKE | TLS_ALERT))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_greeting_is_told_from_a_tls_record() {
        assert!(is_plain_imap(b"* OK [CAPABILITY IMAP4rev1] ready"));
        assert!(is_plain_imap(b"* PREAUTH"));
        assert!(!is_plain_imap(&[TLS_HANDSHAKE, 3, 3, 0, 0x7a]));
        assert!(!is_plain_imap(b""));
    }

    #[tokio::test]
    async fn first_bytes_keeps_only_the_start_of_the_stream() {
        let data: &[u8] = b"* OK hello there\r\n";
        let (mut s, seen) = FirstBytes::new(data);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(&seen.lock().unwrap()[..], &data[..KEEP]);
    }
}
