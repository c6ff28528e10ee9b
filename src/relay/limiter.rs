//! What the pump asks of a connection's rate limits (the client-to-upstream direction), and
//! the [`Gate`] the tracker consults at message boundaries on their behalf.
//!
//! The limits themselves (buckets, shared tables) live outside the relay, which only knows
//! this interface; a connection without limits has no [`Limiter`] at all.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::relay::mosaic::QueryEvent;
use crate::relay::tracker::{Admit, Gate, HEAD_BYTES};

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
    /// See [`Gate::mosaic_head`]; `queries` is the connection's set of open query ids,
    /// which the limiter keeps up to date.
    fn mosaic_head(
        &mut self,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
        queries: &Mutex<HashSet<[u8; 2]>>,
    ) -> Admit;
}

/// The [`Gate`] of one scan: the limiter and the connection's open queries.
pub(crate) struct ConnGate<'a> {
    pub(crate) limiter: &'a mut dyn Limiter,
    pub(crate) queries: &'a Mutex<HashSet<[u8; 2]>>,
}

impl Gate for ConnGate<'_> {
    // Submission Results echo a record's first 32 bytes.
    const HEAD_LEN: usize = HEAD_BYTES;

    fn message_start(&mut self) -> Admit {
        self.limiter.message_start()
    }

    fn mosaic_head(&mut self, head: &[u8], ended: bool, query: Option<QueryEvent>) -> Admit {
        self.limiter.mosaic_head(head, ended, query, self.queries)
    }
}
