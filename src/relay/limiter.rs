//! What the pump asks of a connection's rate limits (the client-to-upstream direction, and
//! the upstream's bytes when `bytes_per_connection` says so), and
//! the [`Gate`] the tracker consults at message boundaries on their behalf.
//!
//! The limits themselves (buckets, shared tables) live outside the relay, which only knows
//! this interface; a connection without limits has no [`Limiter`] at all.

use std::time::Duration;

use crate::relay::mosaic::{OpenQueries, QueryEvent};
use crate::relay::profile::Profile;
use crate::relay::tracker::{Admit, Gate, HEAD_BYTES, HEAD_REST};

/// A connection's rate limits, as the relay applies them.
pub(crate) trait Limiter: Send {
    /// A pass over newly read bytes begins: the limiter reads its clock once for it.
    fn start_pass(&mut self);
    /// How far into a buffer of `len` bytes the tracker may scan, having scanned `scanned`.
    fn scan_limit(&mut self, scanned: usize, len: usize) -> usize;
    /// Counts `n` more bytes scanned.
    fn charge_bytes(&mut self, n: usize);
    /// How long to read nothing until the byte budget is worth scanning again.
    fn bytes_wait(&mut self) -> Duration;
    /// See [`Gate::message_start`].
    fn message_start(&mut self) -> Admit;
    /// See [`Gate::head_rest`]: the limiter keeps a message's head bytes past the eighth.
    fn head_rest(&mut self) -> &mut [u8; HEAD_REST];
    /// See [`Gate::mosaic_head`]; `queries` is the connection's set of open query ids,
    /// which the limiter keeps up to date.
    fn mosaic_head(
        &mut self,
        profile: Profile,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
        queries: &OpenQueries,
    ) -> Admit;
}

/// A connection's limiters: the client's direction (every limit) and the upstream's
/// (`bytes_per_connection` with `direction: upstream` or `both`).
pub(crate) struct Limiters {
    pub(crate) up: Option<Box<dyn Limiter>>,
    pub(crate) down: Option<Box<dyn Limiter>>,
}

/// Both directions' rate limits, behind one pointer in the connection (connections without
/// limits have none); each direction borrows its own half.
pub(crate) struct LimitState {
    /// Client to upstream.
    pub(crate) up: Option<DirLimits>,
    /// Upstream to client.
    pub(crate) down: Option<DirLimits>,
}

/// One direction's limiter and its throttle timer.
pub(crate) struct DirLimits {
    pub(crate) limiter: Box<dyn Limiter>,
    /// Made the first time the limits throttle the direction.
    pub(crate) throttle: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl LimitState {
    /// The state of a connection relayed with `limiters`.
    pub(crate) fn new(limiters: Limiters) -> Box<LimitState> {
        let dir = |limiter| DirLimits {
            limiter,
            throttle: None,
        };
        Box::new(LimitState {
            up: limiters.up.map(dir),
            down: limiters.down.map(dir),
        })
    }
}

/// The [`Gate`] of one scan: the limiter and the connection's open queries.
pub(crate) struct ConnGate<'a> {
    pub(crate) limiter: &'a mut dyn Limiter,
    pub(crate) queries: &'a OpenQueries,
}

impl Gate for ConnGate<'_> {
    // Submission Results echo a record's first 32 bytes.
    const HEAD_LEN: usize = HEAD_BYTES;

    fn head_rest(&mut self) -> Option<&mut [u8; HEAD_REST]> {
        Some(self.limiter.head_rest())
    }

    fn message_start(&mut self) -> Admit {
        self.limiter.message_start()
    }

    fn mosaic_head(
        &mut self,
        profile: Profile,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
    ) -> Admit {
        self.limiter
            .mosaic_head(profile, head, ended, query, self.queries)
    }
}
