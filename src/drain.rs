//! The drain, as every relayed connection sees it: SIGTERM broadcasts [`DrainState`], and
//! each connection has its own [`DrainSignal`] so waiting for it costs no shared lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

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
#[derive(Default)]
pub struct DrainSignal {
    fired: AtomicBool,
    close_by: Mutex<Option<tokio::time::Instant>>,
    waker: AtomicWaker,
}

impl DrainSignal {
    /// Starts this connection's drain: close its queries now, the connection before `close_by`.
    pub fn fire(&self, close_by: tokio::time::Instant) {
        if let Ok(mut c) = self.close_by.lock() {
            *c = Some(close_by);
        }
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready with the close-by instant once the drain started.
    pub(crate) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<tokio::time::Instant> {
        let get = || {
            self.fired.load(Ordering::Acquire).then(|| {
                self.close_by
                    .lock()
                    .ok()
                    .and_then(|c| *c)
                    .unwrap_or_else(tokio::time::Instant::now)
            })
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
