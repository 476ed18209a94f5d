//! A proxy in front of the real Dovecot that sees imapbak's commands in
//! clear text, for faults that must land between two particular commands
//! (the byte-counting `fakes::Proxy` sees only TLS records). It terminates
//! imapbak's TLS with the test CA's certificate (`fakes::certs()`), talks
//! plain IMAP to Dovecot's loopback port (plaintext LOGIN is allowed there),
//! and shows every command line to a hook before forwarding it: the hook
//! can cut the connection so that the command never reaches the server, or
//! act on the mailbox through another client first.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::fakes::certs;
use crate::support::{dovecot, TestEnv, User};

/// What the proxy does with one command line.
pub enum Line {
    /// Forward it to the server.
    Forward,
    /// Drop it and close both directions: the server never sees it.
    Cut,
}

type HookFn = dyn Fn(usize, &str) -> Line + Send + Sync;

pub struct CommandProxy {
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for CommandProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl CommandProxy {
    /// Listens on a free loopback port; `hook(connection index, line)` sees
    /// each command line (CRLF stripped) of each connection, in order,
    /// before it is forwarded. It runs on a blocking thread, so it may talk
    /// to Dovecot itself.
    pub fn start(hook: impl Fn(usize, &str) -> Line + Send + Sync + 'static) -> CommandProxy {
        CommandProxy::start_to(dovecot().imap_port, hook)
    }

    /// Like [`CommandProxy::start`], in front of the plain IMAP port
    /// `target` (another private Dovecot than the default one).
    pub fn start_to(
        target: u16,
        hook: impl Fn(usize, &str) -> Line + Send + Sync + 'static,
    ) -> CommandProxy {
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hook: Arc<HookFn> = Arc::new(hook);
        runtime.spawn(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            let acceptor = TlsAcceptor::from(certs().valid.clone());
            let mut n = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, hook) = (acceptor.clone(), hook.clone());
                let index = n;
                n += 1;
                tokio::spawn(async move {
                    let _ = relay(index, client, target, acceptor, hook).await;
                });
            }
        });
        CommandProxy {
            port,
            runtime: Some(runtime),
        }
    }

    /// Account `name` for `user`, reaching Dovecot through this proxy (the
    /// test CA written into `env`'s directory). COMPRESS is off: the proxy
    /// reads commands in clear text, and its per-line hook makes the link
    /// slow enough for `compress = "auto"` to turn deflate on.
    pub fn account_toml(&self, env: &TestEnv, name: &str, user: &User, extra: &str) -> String {
        let ca = ca_file(env.path());
        let extra = format!("compress = false\n{extra}");
        env.account_toml(name, user, &extra)
            .replace(
                &format!("port = {}", dovecot().imaps_port),
                &format!("port = {}", self.port),
            )
            .replace(
                &format!("ca-file = {}", toml_path(&dovecot().cert)),
                &format!("ca-file = {}", toml_path(&ca)),
            )
    }
}

fn toml_path(p: &Path) -> String {
    crate::support::toml_str(&p.display().to_string())
}

/// The test CA the proxy's certificate is signed by, written into `dir`.
pub fn ca_file(dir: &Path) -> PathBuf {
    let path = dir.join("proxy-ca.pem");
    std::fs::write(&path, &certs().ca_pem).unwrap();
    path
}

async fn relay(
    index: usize,
    client: TcpStream,
    target: u16,
    acceptor: TlsAcceptor,
    hook: Arc<HookFn>,
) -> std::io::Result<()> {
    let tls = acceptor.accept(client).await?;
    let server = TcpStream::connect(("127.0.0.1", target)).await?;
    let (mut server_r, mut server_w) = server.into_split();
    let (client_r, mut client_w) = tokio::io::split(tls);
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
    });
    let mut client_r = BufReader::new(client_r);
    let mut line = Vec::new();
    loop {
        line.clear();
        if client_r.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let h = hook.clone();
        let verdict = tokio::task::spawn_blocking(move || h(index, &text))
            .await
            .expect("proxy hook panicked");
        match verdict {
            Line::Forward => server_w.write_all(&line).await?,
            Line::Cut => break,
        }
    }
    // Closing the server side first: whatever was not forwarded is lost.
    let _ = server_w.shutdown().await;
    drop(server_w);
    down.abort();
    Ok(())
}
