//! The drain, as every relayed connection sees it: SIGTERM broadcasts [`DrainState`], and
//! each connection has its own [`DrainSignal`] so waiting for it costs no shared lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

/// Drain instructions, broadcast by the shutdown sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainState {
    /// Serving normally.
    Running,
    /// Close open queries now; close every connection with 1001 before `close_by`.
    Draining {
        /// The end of the window in which connections are closed; each connection picks its
        /// own point in it so clients do not reconnect in one burst.
        close_by: tokio::time::Instant,
    },
}

/// Tells one relayed connection that the gateway drains. Each connection has its own, so
/// waiting for the drain costs a relayed connection no shared lock on any wake-up.
///
/// The close-by instant is kept as milliseconds past [`EPOCH`] in one atomic word (0: no
/// drain): with the waker, 32 bytes, a 48-byte allocation per connection where a flag and a
/// locked `Option<Instant>` took 80.
#[derive(Default)]
pub struct DrainSignal {
    close_by_ms: AtomicU64,
    waker: AtomicWaker,
}

/// The instant drain deadlines are counted from.
static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl DrainSignal {
    /// Starts this connection's drain: close its queries now, the connection before `close_by`.
    pub fn fire(&self, close_by: tokio::time::Instant) {
        let since = close_by.into_std().saturating_duration_since(*EPOCH);
        // +1: a deadline at the epoch itself still reads as fired.
        let ms = (since.as_millis() as u64).saturating_add(1);
        self.close_by_ms.store(ms, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with the close-by instant once the drain started.
    pub(crate) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<tokio::time::Instant> {
        let get = || match self.close_by_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(tokio::time::Instant::from_std(
                *EPOCH + Duration::from_millis(ms - 1),
            )),
        };
        if let Some(at) = get() {
            return Poll::Ready(at);
        }
        self.waker.register(cx.waker());
        match get() {
            Some(at) => Poll::Ready(at),
            None => Poll::Pending,
        }
    }
}
