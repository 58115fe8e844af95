//! Retry pacing for connections that must never give up (broker, node).

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exponential backoff between `min` and `max`, doubling per attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`, caps at `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            attempt: 0,
        }
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
        self.attempt = 0;
    }

    /// The delay before the next attempt, and the attempt's number (from 1).
    pub fn next_delay(&mut self) -> (Duration, u32) {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        (d, self.attempt)
    }
}

/// Sleeps for `d` unless `shutdown` fires first; returns `true` on shutdown.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        assert_eq!(b.next_delay(), (Duration::from_millis(100), 1));
        assert_eq!(b.next_delay(), (Duration::from_millis(200), 2));
        assert_eq!(b.next_delay(), (Duration::from_millis(350), 3));
        assert_eq!(b.next_delay(), (Duration::from_millis(350), 4));
        b.reset();
        assert_eq!(b.next_delay(), (Duration::from_millis(100), 1));
    }
}
