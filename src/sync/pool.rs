//! `jobs` tasks working through one queue, each on its own connection; the
//! first task gets the connection that listed the mailboxes, the others
//! connect when they take their first item. Used by pull and restore.

use std::future::Future;

/// Spawns `jobs` tasks made by `task(connection)` (Some for the first only)
/// and collects what each returns; a task that panicked yields its error.
pub async fn run<C, R, T, Fut>(
    jobs: usize,
    first: C,
    task: T,
) -> Vec<Result<Vec<R>, tokio::task::JoinError>>
where
    T: Fn(Option<C>) -> Fut,
    Fut: Future<Output = Vec<R>> + Send + 'static,
    R: Send + 'static,
{
    let mut first = Some(first);
    let handles: Vec<_> = (0..jobs.max(1))
        .map(|_| tokio::spawn(task(first.take())))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}
