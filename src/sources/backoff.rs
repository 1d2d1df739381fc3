//! The delays between broker sessions: capped, doubling, jittered.

use std::time::Duration;

/// Capped exponential backoff with jitter: 100 ms, 200 ms, … up to `max`, each ±20 %, so a
/// fleet of bridges does not reconnect in lock-step after a broker restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms (or `max` if smaller).
    pub fn new(max: Duration) -> Self {
        Backoff { next: Duration::from_millis(100).min(max), max }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }

    /// Back to the first delay, after a successful connection.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100).min(self.max);
    }
}

/// The delay for attempt `n` (1-based) of a capped doubling backoff, with jitter.
pub fn backoff_delay(attempt: usize, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    jitter(base.min(max))
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(1));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] < Duration::from_millis(130));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1200)));
        assert!(backoff_delay(50, Duration::from_secs(5)) <= Duration::from_secs(6));
    }
}
