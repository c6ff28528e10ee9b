//! Token buckets: a burst at once, then a steady rate.
//!
//! Time is a plain count of nanoseconds on one monotonic clock, so a bucket is 16 bytes and
//! a caller reads the clock once for several decisions.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds on the clock every bucket runs on (monotonic, from the first call).
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A bucket's size and refill speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spec {
    /// Tokens added per nanosecond.
    per_ns: f64,
    /// Tokens at most, and at the start.
    burst: f64,
}

impl Spec {
    /// `rate` tokens every `per`, `burst` at most (at least 1).
    pub(crate) fn new(rate: f64, per: Duration, burst: f64) -> Spec {
        let ns = per.as_nanos().max(1) as f64;
        Spec {
            per_ns: rate / ns,
            burst: burst.max(1.0),
        }
    }

    /// Tokens per second.
    pub(crate) fn per_second(&self) -> f64 {
        self.per_ns * 1e9
    }

    /// The bucket's size.
    pub(crate) fn burst(&self) -> f64 {
        self.burst
    }

    /// How long `missing` tokens take to refill.
    fn time_for(&self, missing: f64) -> Duration {
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        // `as` saturates: a rate too slow to matter waits "forever" instead of wrapping.
        Duration::from_nanos((missing / self.per_ns).ceil() as u64)
    }
}

/// One bucket: full when made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (and the bucket last used).
    at: u64,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(spec: &Spec, now: u64) -> Bucket {
        Bucket {
            tokens: spec.burst,
            at: now,
        }
    }

    /// The bucket of a limit that is not configured; never asked.
    pub(crate) fn unused() -> Bucket {
        Bucket { tokens: 0.0, at: 0 }
    }

    fn refill(&mut self, spec: &Spec, now: u64) {
        if now > self.at {
            let grown = self.tokens + (now - self.at) as f64 * spec.per_ns;
            self.tokens = grown.min(spec.burst);
            self.at = now;
        }
    }

    /// Takes `cost` tokens if there are that many; otherwise says how long until there are
    /// (and takes nothing).
    pub(crate) fn take(&mut self, spec: &Spec, now: u64, cost: f64) -> Result<(), Duration> {
        self.refill(spec, now);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(spec.time_for(cost - self.tokens))
        }
    }

    /// Whole tokens available now.
    pub(crate) fn available(&mut self, spec: &Spec, now: u64) -> u64 {
        self.refill(spec, now);
        // Saturating: a huge burst is "plenty", never a wrap.
        self.tokens.max(0.0).floor() as u64
    }

    /// Takes `cost` tokens (the caller checked they were available).
    pub(crate) fn charge(&mut self, spec: &Spec, now: u64, cost: u64) {
        self.refill(spec, now);
        self.tokens -= cost as f64;
    }

    /// How long until `tokens` are available.
    pub(crate) fn wait_for(&mut self, spec: &Spec, now: u64, tokens: f64) -> Duration {
        self.refill(spec, now);
        spec.time_for(tokens - self.tokens)
    }

    /// Whether the bucket has refilled by `now`: then it is no different from a new one
    /// and can be forgotten.
    pub(crate) fn is_full(&self, spec: &Spec, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.at) as f64;
        self.tokens + elapsed * spec.per_ns >= spec.burst
    }

    /// When the bucket was last used.
    pub(crate) fn last_used(&self) -> u64 {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_the_rate() {
        let spec = Spec::new(10.0, Duration::from_secs(1), 5.0);
        let mut b = Bucket::full(&spec, 0);
        for _ in 0..5 {
            assert!(b.take(&spec, 0, 1.0).is_ok());
        }
        let wait = b.take(&spec, 0, 1.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(&spec, SEC / 10, 1.0).is_ok());
        assert!(b.take(&spec, SEC / 10, 1.0).is_err());
        // Over 10 s: the burst plus the rate, never more.
        let mut b = Bucket::full(&spec, 0);
        let mut passed = 0;
        for ms in 0..10_000u64 {
            while b.take(&spec, ms * 1_000_000, 1.0).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 5 + 100 - 1);
    }

    #[test]
    fn refilled_buckets_are_full_and_bytes_are_counted_in_whole_tokens() {
        let spec = Spec::new(1000.0, Duration::from_secs(1), 2000.0);
        let mut b = Bucket::full(&spec, 0);
        assert_eq!(b.available(&spec, 0), 2000);
        b.charge(&spec, 0, 1500);
        assert_eq!(b.available(&spec, 0), 500);
        assert!(!b.is_full(&spec, SEC));
        assert!(b.is_full(&spec, 3 * SEC / 2));
        assert_eq!(b.wait_for(&spec, 0, 600.0), Duration::from_millis(100));
        assert_eq!(b.last_used(), 0);
        assert_eq!(spec.per_second(), 1000.0);
    }
}
