//! The benchmark floor (scripts/bench.sh): fetch every message of an account
//! the way `imapbak pull` does (same connections, same UID FETCH batches,
//! same parser), but write nothing: no compression, no files, no fsync.
//! The gap between this and a real pull is what the archive costs.
//!
//!     cargo run --release --example fetch_floor -- CONFIG [ACCOUNT] [JOBS]

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use imapbak::config::{Config, TlsMode};
use imapbak::imap::{tls, ConnectParams, Connection};
use imapbak::sync::mailboxes::choose_mailboxes;
use imapbak::sync::pull::plan::fetch_batches;
use imapbak::sync::pull::PullOptions;
use imapbak::sync::remote::{FetchedMessage, MessageSink, Remote, RemoteError};

#[derive(Default)]
struct Discard {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl MessageSink for Discard {
    async fn send(&self, msg: FetchedMessage) -> Result<(), RemoteError> {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(msg.body.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::load(
        args.first()
            .context("usage: fetch_floor CONFIG [ACCOUNT] [JOBS]")?
            .as_ref(),
    )?;
    let account = match args.get(1) {
        Some(name) => config.select(std::slice::from_ref(name))?.remove(0),
        None => config.accounts[0].clone(),
    };
    let jobs: usize = match args.get(2) {
        Some(j) => j.parse().context("JOBS must be a number")?,
        None => PullOptions::default().jobs,
    };
    let password = account.read_password()?;
    let tls = tls::client_config(account.ca_file.as_deref(), account.fingerprint)?;
    let opts = PullOptions::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = Instant::now();
    let sink = Arc::new(Discard::default());
    rt.block_on(async {
        let connect = || {
            let (account, password, tls) = (&account, &password, tls.clone());
            async move {
                let mut c = Connection::connect(&ConnectParams {
                    host: &account.host,
                    port: account.port,
                    starttls: account.tls == TlsMode::Starttls,
                    user: &account.user,
                    password,
                    bearer: None,
                    authcid: None,
                    tls,
                    timeout: account.timeout,
                    max_literal: account.max_message_size,
                    compress: account.compress,
                })
                .await?;
                // As the pull's pool does before a connection's first work.
                c.compress().await?;
                Ok::<_, imapbak::imap::ImapError>(c)
            }
        };
        let mut first = connect().await?;
        let listed = first.list().await?;
        let (targets, _) = choose_mailboxes(&listed, |n| account.wants(n));
        let queue = Arc::new(Mutex::new(VecDeque::from(targets)));
        let mut conns = vec![first];
        let extra = jobs.min(queue.lock().unwrap().len()).max(1) - 1;
        for _ in 0..extra {
            conns.push(connect().await?);
        }
        let mut tasks = Vec::new();
        for mut conn in conns {
            let (queue, sink, opts) = (queue.clone(), sink.clone(), opts.clone());
            let max = account.max_message_size;
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(t) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let sel = conn.examine(&t.mailbox.raw).await?;
                    if sel.exists == 0 {
                        continue;
                    }
                    let sizes = conn.uid_sizes(1).await?;
                    for batch in
                        fetch_batches(&sizes, &HashSet::new(), opts.batch_bytes, opts.batch_count)
                    {
                        conn.fetch(&batch, max, &*sink).await?;
                    }
                }
                conn.logout().await;
                Ok::<_, RemoteError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    println!(
        "fetched {} messages, {} bytes, in {:.2} s (nothing written)",
        sink.messages.load(Ordering::Relaxed),
        sink.bytes.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
