//! The drain, as every relayed connection sees it: SIGTERM broadcasts [`DrainState`], and
//! each connection has its own [`DrainSignal`] so waiting for it costs no shared lock.
//!
//! The same signal carries the other close the gateway decides from outside a connection:
//! its client's address was denied or banned while it was open ([`Kick`]).

use std::net::{IpAddr, Ipv6Addr};
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

/// Why the gateway closes a connection whose client it no longer serves (1008; Mosaic
/// 2025 says which in its Closing message first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The access lists refuse the address now (a reload).
    Denied = 1,
    /// A temporary ban (limit trips, protocol violations): Mosaic 2025 IP_TEMP_BANNED 48.
    TempBanned = 2,
    /// An operator's block (NIP-86 `blockip`): Mosaic 2025 IP_PERM_BANNED 49.
    PermBanned = 3,
}

impl Kick {
    fn from_bits(b: u64) -> Option<Kick> {
        match b {
            1 => Some(Kick::Denied),
            2 => Some(Kick::TempBanned),
            3 => Some(Kick::PermBanned),
            _ => None,
        }
    }
}

/// Tells one relayed connection that the gateway drains, or that its client is refused
/// now. Each connection has its own, so waiting for either costs a relayed connection no
/// shared lock on any wake-up.
///
/// The close-by instant is kept as milliseconds past [`EPOCH`] in the low bits of one
/// atomic word (0: no drain), the [`Kick`] in its top byte; with the waker and the client's
/// address (so a change of standing finds the connections it concerns), 48 bytes, a
/// 64-byte allocation per connection.
pub struct DrainSignal {
    close_by_ms: AtomicU64,
    waker: AtomicWaker,
    client: [u8; 16],
}

/// Where the kick sits in the signal's word.
const KICK_SHIFT: u32 = 56;
const DRAIN_MASK: u64 = (1 << KICK_SHIFT) - 1;

/// The instant drain deadlines are counted from.
static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

impl DrainSignal {
    /// The signal of a connection whose client is `client`.
    pub fn new(client: IpAddr) -> Self {
        let client = match client {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        DrainSignal {
            close_by_ms: AtomicU64::new(0),
            waker: AtomicWaker::new(),
            client: client.octets(),
        }
    }

    /// The connection's client address.
    pub fn client(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.client);
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }

    /// Starts this connection's drain: close its queries now, the connection before `close_by`.
    pub fn fire(&self, close_by: tokio::time::Instant) {
        let since = close_by.into_std().saturating_duration_since(*EPOCH);
        // +1: a deadline at the epoch itself still reads as fired.
        let ms = (since.as_millis() as u64).saturating_add(1).min(DRAIN_MASK);
        let _ = self
            .close_by_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w & !DRAIN_MASK) | ms)
            });
        self.waker.wake();
    }

    /// Closes this connection because its client is refused now (the first kick stays).
    /// False if it was kicked already.
    pub fn kick(&self, why: Kick) -> bool {
        let bits = (why as u64) << KICK_SHIFT;
        let first = self
            .close_by_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w >> KICK_SHIFT == 0).then_some(w | bits)
            })
            .is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    /// Ready with the reason once the connection was kicked.
    pub(crate) fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<Kick> {
        self.poll_word(cx, |w| Kick::from_bits(w >> KICK_SHIFT))
    }

    /// Ready once `read` finds something in the signal's word; registers the waker
    /// otherwise (and reads again, so a signal sent meanwhile is not missed).
    fn poll_word<T>(&self, cx: &mut Context<'_>, read: impl Fn(u64) -> Option<T>) -> Poll<T> {
        let get = || read(self.close_by_ms.load(Ordering::Acquire));
        if let Some(v) = get() {
            return Poll::Ready(v);
        }
        self.waker.register(cx.waker());
        match get() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }

    /// Ready with the close-by instant once the drain started.
    pub(crate) fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<tokio::time::Instant> {
        self.poll_word(cx, |w| match w & DRAIN_MASK {
            0 => None,
            ms => Some(tokio::time::Instant::from_std(
                *EPOCH + Duration::from_millis(ms - 1),
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kick_and_the_drain_share_the_word_without_hiding_each_other() {
        let s = DrainSignal::new("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(s.client(), "192.0.2.7".parse::<IpAddr>().unwrap());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(s.poll_kicked(&mut cx).is_pending() && s.poll_fired(&mut cx).is_pending());
        let close_by = tokio::time::Instant::now() + Duration::from_secs(5);
        s.fire(close_by);
        assert!(s.poll_kicked(&mut cx).is_pending(), "a drain is not a kick");
        assert!(s.kick(Kick::TempBanned));
        assert!(!s.kick(Kick::PermBanned), "the first reason stays");
        assert_eq!(s.poll_kicked(&mut cx), Poll::Ready(Kick::TempBanned));
        match s.poll_fired(&mut cx) {
            Poll::Ready(at) => assert!(close_by.duration_since(at) < Duration::from_millis(2)),
            Poll::Pending => panic!("the drain was lost"),
        }
    }
}
