//! `jobs` workers taking items from one queue, each with its own
//! connection, opened only when an item needs the server: the first worker
//! starts with the connection that listed the mailboxes, the others connect
//! when their item first asks ([`Slot::get`]). A connection that is lost is
//! dropped and the next item connects again; an item that asks for a retry
//! is tried again after a back-off. Used by pull and restore, which differ
//! only in what their [`Task`] does with an item.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::remote::{Remote, RemoteError};

/// What a worker did with one item.
#[derive(Debug)]
pub enum Step<R> {
    /// Finished with the item (whatever its outcome); the connection, if
    /// one was opened, is still good.
    Done(R),
    /// Finished with the item, and the connection is gone: the next item
    /// connects again.
    Lost(R),
    /// Try the same item again on a new connection after a back-off
    /// (`attempt` counts up; the task decides when to give up).
    Retry(String),
    /// Could not reach the server: the item goes back to the queue for the
    /// other workers and this worker stops.
    Unreached(RemoteError),
}

/// One command's work on one item.
pub trait Task: Send + Sync + 'static {
    type Item: Send + 'static;
    type Conn: Remote + 'static;
    type Report: Send + 'static;

    /// Opens a new, logged-in connection.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn, RemoteError>> + Send;

    /// Works on `item` (attempt 1, 2, ... after [`Step::Retry`]), getting
    /// the connection from `slot` only once it needs the server.
    fn work(
        &self,
        slot: &mut Slot<Self::Conn>,
        item: &mut Self::Item,
        attempt: u32,
    ) -> impl Future<Output = Step<Self::Report>> + Send;

    /// True once the whole run must stop (e.g. the target is over quota):
    /// no worker takes another item. Ctrl-C and SIGTERM
    /// ([`super::interrupt`]) stop every task the same way.
    fn stopped(&self) -> bool {
        false
    }
}

/// A worker's connection, opened on first use.
pub struct Slot<C> {
    conn: Option<C>,
}

impl<C: Remote> Slot<C> {
    /// The open connection, or a new one from `task.connect()`.
    /// It is made ready for work first ([`Remote::prepare_for_work`]: COMPRESS
    /// where wanted), so a connection that only listed never pays for that.
    pub async fn get<T: Task<Conn = C>>(&mut self, task: &T) -> Result<&mut C, RemoteError> {
        if self.conn.is_none() {
            self.conn = Some(task.connect().await?);
        }
        let conn = self.conn.as_mut().expect("just connected");
        if let Err(e) = conn.prepare_for_work().await {
            self.conn = None;
            return Err(e);
        }
        Ok(self.conn.as_mut().expect("still open"))
    }

    /// True when a connection is open.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }
}

/// What the workers left: their reports, and the items no worker could
/// reach (every connection failed) or that a stop left in the queue.
pub struct Finished<R, I> {
    pub reports: Vec<R>,
    /// One per worker that panicked.
    pub panics: Vec<String>,
    pub left: Vec<I>,
}

/// Works through `items` on up to `jobs` workers; `first` is the already
/// open connection (given to the first worker).
pub async fn run<T: Task>(
    jobs: usize,
    first: T::Conn,
    items: Vec<T::Item>,
    task: Arc<T>,
) -> Finished<T::Report, T::Item> {
    let jobs = jobs.clamp(1, items.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let mut first = Some(first);
    let handles: Vec<_> = (0..jobs)
        .map(|_| {
            let slot = Slot { conn: first.take() };
            // Each worker starts with an item of its own, so how many
            // connections open does not depend on how fast the first
            // workers get through the queue (issue 13).
            let own = queue.lock().expect("queue lock").pop_front();
            tokio::spawn(worker(slot, task.clone(), queue.clone(), own))
        })
        .collect();
    let mut out = Finished {
        reports: Vec::new(),
        panics: Vec::new(),
        left: Vec::new(),
    };
    for h in handles {
        match h.await {
            Ok(reports) => out.reports.extend(reports),
            Err(e) => out.panics.push(e.to_string()),
        }
    }
    out.left = queue.lock().expect("queue lock").drain(..).collect();
    out
}

async fn worker<T: Task>(
    mut slot: Slot<T::Conn>,
    task: Arc<T>,
    queue: Arc<Mutex<VecDeque<T::Item>>>,
    mut own: Option<T::Item>,
) -> Vec<T::Report> {
    let mut reports = Vec::new();
    'items: loop {
        if task.stopped() || super::interrupt::requested().is_some() {
            if let Some(item) = own.take() {
                queue.lock().expect("queue lock").push_front(item);
            }
            break;
        }
        let next = own
            .take()
            .or_else(|| queue.lock().expect("queue lock").pop_front());
        let Some(mut item) = next else {
            break;
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match task.work(&mut slot, &mut item, attempt).await {
                Step::Done(r) => {
                    reports.push(r);
                    continue 'items;
                }
                Step::Lost(r) => {
                    slot.conn = None;
                    reports.push(r);
                    continue 'items;
                }
                Step::Retry(why) => {
                    log::debug!("retrying after: {why}");
                    slot.conn = None;
                    backoff(attempt).await;
                }
                Step::Unreached(e) => {
                    log::warn!("extra connection failed: {e}");
                    slot.conn = None;
                    queue.lock().expect("queue lock").push_front(item);
                    break 'items;
                }
            }
        }
    }
    if let Some(c) = slot.conn.take() {
        c.logout().await;
    }
    reports
}

/// 1, 2, 4, 8, 16, 16 ... seconds.
async fn backoff(attempt: u32) {
    let secs = 1u64 << attempt.min(5).saturating_sub(1);
    tokio::time::sleep(Duration::from_secs(secs)).await;
}
