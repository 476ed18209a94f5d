//! What bounds a command's memory: a byte budget shared by all its
//! connections ([`Budget`]), and glibc told to give freed message buffers
//! back ([`bound_allocator`]). Restore reads a batch of archived messages
//! only once its bytes are reserved and gives them back once the server
//! has answered the batch, so what is read and not yet sent never exceeds
//! the budget, or the one message larger than it (which then goes alone).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A byte budget, counted in KiB: each reservation waits until its bytes
/// are free and holds them until the permit is dropped. Reservations are
/// served first come, first served, so a large one is not starved by
/// small ones.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    kib: u32,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Budget {
        let kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize) as u64);
        Budget {
            sem: Arc::new(Semaphore::new(kib as usize)),
            kib: kib as u32,
        }
    }

    /// Waits until `bytes` are free and holds them until the permit is
    /// dropped. More than the whole budget reserves all of it: such a
    /// message waits until nothing else is held, then goes alone.
    pub async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        self.sem
            .clone()
            .acquire_many_owned(kib_of(bytes).min(self.kib))
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Bytes held by reservations now (in whole KiB).
    pub fn held(&self) -> u64 {
        (self.kib as u64 - self.sem.available_permits() as u64) * 1024
    }

    /// The budget's size in bytes (in whole KiB).
    pub fn limit(&self) -> u64 {
        self.kib as u64 * 1024
    }
}

/// Budget units (KiB, at least 1) for `bytes`.
pub fn kib_of(bytes: u64) -> u32 {
    (bytes / 1024).min(u32::MAX as u64 - 1) as u32 + 1
}

/// Makes glibc return freed message buffers to the system at once. By
/// default glibc raises its mmap threshold to the largest block freed so
/// far (up to 32 MiB), after which every message buffer comes from heap
/// arenas that fragment and hold on to the memory: measured on the bench
/// corpus, pull's peak RSS 136-144 MB with the default, 75-86 MB with this.
/// Buffers are allocated on one thread and freed on another (pull: network
/// threads and writer threads; restore: archive readers and network
/// threads); one arena keeps that from spreading over several (twice the
/// corpus: 88-97 MB with the default arenas, 66 MB with one; same CPU time).
pub fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator tuning; called before
            // the worker threads start.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[tokio::test]
    async fn reservations_never_hold_more_than_the_budget() {
        let b = Budget::new(8 * MIB);
        let first = b.reserve(3 * MIB).await;
        let second = b.reserve(3 * MIB).await;
        assert_eq!(b.held(), 6 * MIB + 2 * 1024);
        // A third would pass the limit: it waits until one is given back.
        let third = b.reserve(3 * MIB);
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        assert!(b.held() <= b.limit());
        drop(first);
        let third = third.await;
        assert!(b.held() <= b.limit());
        drop((second, third));
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_goes_alone() {
        let b = Budget::new(8 * MIB);
        let small = b.reserve(MIB).await;
        let huge = b.reserve(30 * MIB);
        tokio::pin!(huge);
        assert!(futures::poll!(huge.as_mut()).is_pending(), "not alone yet");
        // Served in order: a small one asked for later waits behind it.
        let later = b.reserve(MIB);
        tokio::pin!(later);
        drop(small);
        let huge = huge.await;
        assert_eq!(b.held(), b.limit(), "the huge one holds everything");
        assert!(futures::poll!(later.as_mut()).is_pending());
        drop(huge);
        let _later = later.await;
        assert!(b.held() <= b.limit());
    }
}
