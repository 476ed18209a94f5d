//! Gmail's `OK ... [THROTTLED]` (PROVIDERS.md, "Limits"): the server asks
//! the client to slow down. One pacing rule that pull, restore and expunge
//! all ask after each batch, so the three slow down alike.

use std::time::Duration;

/// The first pause after a batch the server answered `[THROTTLED]`; it
/// doubles while the server keeps saying so, up to [`MAX`], and is
/// forgotten after a batch without it.
pub const FIRST: Duration = Duration::from_millis(100);
pub const MAX: Duration = Duration::from_secs(5);

/// The pacing state of one connection's run of batches.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    pause: Duration,
}

impl Throttle {
    /// The pause owed after a batch; `throttled`: a command since the last
    /// batch completed `[THROTTLED]` (`Remote::take_throttled`).
    pub fn next(&mut self, throttled: bool) -> Duration {
        self.pause = if throttled {
            (self.pause * 2).clamp(FIRST, MAX)
        } else {
            Duration::ZERO
        };
        self.pause
    }

    /// [`Throttle::next`], then sleeps that long (logged with `what`, the
    /// mailbox or step being slowed).
    pub async fn pace(&mut self, throttled: bool, what: &str) {
        let pause = self.next(throttled);
        if !pause.is_zero() {
            log::info!("`{what}`: the server throttles; pausing {pause:?}");
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_while_throttled_and_resets_after() {
        let mut t = Throttle::default();
        assert_eq!(t.next(false), Duration::ZERO);
        assert_eq!(t.next(true), FIRST);
        assert_eq!(t.next(true), FIRST * 2);
        for _ in 0..10 {
            t.next(true);
        }
        assert_eq!(t.next(true), MAX);
        assert_eq!(t.next(false), Duration::ZERO);
        assert_eq!(t.next(true), FIRST);
    }
}
