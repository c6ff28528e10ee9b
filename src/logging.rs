//! Log output: text or JSON lines through `tracing`, and a budget for lines anyone on the
//! internet can cause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides the configured level.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests starting several gateways) is harmless: the first one stays.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// At most one line per interval for an event a stranger can repeat at will (a failed TLS
/// handshake): a flood of garbage must not flood the log, while the metrics still count
/// every event. The line that passes carries how many were held back since the last one.
pub(crate) struct LogBudget {
    every_ms: u64,
    epoch: Instant,
    /// The mark (ms since `epoch`) from which the next line may pass.
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogBudget {
    /// One line per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        LogBudget {
            every_ms: every.as_millis() as u64,
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: write this line, saying `n` were held back since the last one; `None`:
    /// hold it back (counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Acquire);
        let mine = now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.every_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        if mine {
            Some(self.held_back.swap(0, Ordering::AcqRel))
        } else {
            self.held_back.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogBudget;
    use std::time::Duration;

    #[test]
    fn a_flood_gets_one_line_per_interval_and_the_count_of_the_rest() {
        let budget = LogBudget::new(Duration::from_secs(10));
        assert_eq!(budget.admit_at(0), Some(0), "the first line passes");
        let passed = (1..10_000).filter_map(|ms| budget.admit_at(ms)).count();
        assert_eq!(passed, 0, "nothing else within the interval");
        assert_eq!(
            budget.admit_at(10_000),
            Some(9_999),
            "the next says how many were held"
        );
        assert_eq!(budget.admit_at(15_000), None);
        assert_eq!(budget.admit_at(20_000), Some(1));
        assert_eq!(
            budget.admit_at(90_000),
            Some(0),
            "a quiet spell owes nothing"
        );
    }
}
