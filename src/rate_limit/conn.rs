//! One connection's limits while it is relayed: its message, byte and Submission buckets,
//! its open-query cap, and the [`Gate`] the tracker asks at message boundaries.
//!
//! Only connections with a limit configured have one; the relay of the others never
//! reaches this code.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;

use super::bucket::{Bucket, Spec};
use super::config::LimitAction;
use super::table::{Key, Table};
use crate::relay::mosaic::{
    GatewayMessage, MosaicMessageType, QueryEvent, QUERY_CLOSED_TOO_OPEN, SUBMISSION_TOO_FAST,
};
use crate::relay::tracker::{Admit, Gate, HEAD_BYTES};

/// `rate_limited_total{protocol,limit}` for the limits a relayed connection applies.
#[derive(Clone)]
pub(crate) struct LimitCounters {
    pub(crate) messages: IntCounter,
    pub(crate) bytes: IntCounter,
    pub(crate) submissions: IntCounter,
    pub(crate) open_queries: IntCounter,
}

/// Whose bucket a Submission takes from.
#[derive(Clone)]
pub(crate) enum Submissions {
    /// The connection's own.
    Connection(Spec),
    /// One shared by every connection with this key.
    Shared {
        table: Arc<Table>,
        key: Key,
        spec: Spec,
        cap: usize,
    },
}

/// What limits one connection has, decided when it is set up.
#[derive(Clone)]
pub(crate) struct ConnPlan {
    pub(crate) messages: Option<(Spec, LimitAction)>,
    pub(crate) bytes: Option<Spec>,
    pub(crate) submissions: Option<Submissions>,
    pub(crate) open_queries: Option<usize>,
    pub(crate) counters: LimitCounters,
}

/// A connection's buckets, client to upstream.
pub(crate) struct ConnLimiter<'p> {
    plan: &'p ConnPlan,
    messages: Bucket,
    bytes: Bucket,
    submissions: Bucket,
    /// A message is being held by the message rate (counted once, however long it waits).
    message_held: bool,
    /// Bytes are being held by the byte rate (counted once per hold).
    bytes_held: bool,
}

/// Never wait for less than this many bytes of budget: a throttled connection wakes at
/// most about a hundred times a second, however low the rate.
const MAX_WAKEUPS_PER_SECOND: f64 = 100.0;

/// The longest frame header: a budget always lets the tracker read the next one, even a
/// budget of one byte (the few bytes over it are owed, and waited for next time).
const MAX_HEADER: usize = 14;

impl<'p> ConnLimiter<'p> {
    /// Full buckets for a new connection.
    pub(crate) fn new(plan: &'p ConnPlan, now: u64) -> Self {
        let full = |s: Option<&Spec>| s.map_or(Bucket::unused(), |s| Bucket::full(s, now));
        let submission_spec = match &plan.submissions {
            Some(Submissions::Connection(s)) => Some(s),
            _ => None,
        };
        ConnLimiter {
            plan,
            messages: full(plan.messages.as_ref().map(|m| &m.0)),
            bytes: full(plan.bytes.as_ref()),
            submissions: full(submission_spec),
            message_held: false,
            bytes_held: false,
        }
    }

    /// How far into a buffer of `len` bytes the tracker may scan, having scanned `scanned`.
    pub(crate) fn scan_limit(&mut self, scanned: usize, len: usize, now: u64) -> usize {
        let Some(spec) = &self.plan.bytes else {
            return len;
        };
        let budget = match usize::try_from(self.bytes.available(spec, now)) {
            Ok(0) => 0,
            Ok(b) => b.max(MAX_HEADER),
            Err(_) => usize::MAX,
        };
        scanned.saturating_add(budget).min(len)
    }

    /// Counts `n` bytes scanned (client to upstream).
    pub(crate) fn charge_bytes(&mut self, n: usize, now: u64) {
        if let (Some(spec), true) = (&self.plan.bytes, n > 0) {
            self.bytes.charge(spec, now, n as u64);
            self.bytes_held = false;
        }
    }

    /// How long to stop reading until the byte budget is worth scanning again.
    pub(crate) fn bytes_wait(&mut self, now: u64) -> Duration {
        let Some(spec) = &self.plan.bytes else {
            return Duration::ZERO;
        };
        if !self.bytes_held {
            self.bytes_held = true;
            self.plan.counters.bytes.inc();
            tracing::debug!("bytes_per_connection: throttling a client");
        }
        let grant =
            (spec.per_second() / MAX_WAKEUPS_PER_SECOND).clamp(1.0, spec.burst().min(16_384.0));
        self.bytes.wait_for(spec, now, grant)
    }

    fn message_start(&mut self, now: u64) -> Admit {
        let Some((spec, action)) = &self.plan.messages else {
            return Admit::Pass;
        };
        match self.messages.take(spec, now, 1.0) {
            Ok(()) => {
                self.message_held = false;
                Admit::Pass
            }
            Err(wait) => {
                if !self.message_held {
                    self.message_held = true;
                    self.plan.counters.messages.inc();
                    tracing::debug!(action = ?action, "messages_per_connection: over the rate");
                }
                match action {
                    LimitAction::Throttle => Admit::Wait(wait),
                    LimitAction::Close => Admit::Close,
                }
            }
        }
    }

    fn submission_passes(&mut self, now: u64) -> bool {
        match &self.plan.submissions {
            None => true,
            Some(Submissions::Connection(spec)) => self.submissions.take(spec, now, 1.0).is_ok(),
            Some(Submissions::Shared {
                table,
                key,
                spec,
                cap,
            }) => table.take(*key, spec, *cap, now).is_ok(),
        }
    }

    fn mosaic_head(
        &mut self,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
        queries: &Mutex<HashSet<[u8; 2]>>,
        now: u64,
    ) -> Admit {
        let is_submission = head.first().copied().and_then(MosaicMessageType::from_byte)
            == Some(MosaicMessageType::Submission);
        if is_submission && self.plan.submissions.is_some() {
            // The answer echoes the record's first bytes: wait for them before deciding.
            if head.len() < HEAD_BYTES && !ended {
                return Admit::NeedMore;
            }
            if !self.submission_passes(now) {
                self.plan.counters.submissions.inc();
                tracing::debug!("mosaic_submissions: answered 0x12 (too fast)");
                return Admit::Skip(GatewayMessage::submission_result(SUBMISSION_TOO_FAST, head));
            }
        }
        let Some(ev) = query else {
            return Admit::Pass;
        };
        let mut open = queries.lock().unwrap_or_else(|p| p.into_inner());
        match ev {
            QueryEvent::Opened(id) => {
                if let Some(max) = self.plan.open_queries {
                    if !open.contains(&id) && open.len() >= max {
                        self.plan.counters.open_queries.inc();
                        tracing::debug!(
                            open = open.len(),
                            "mosaic_open_queries: answered 0x11 (too open)"
                        );
                        return Admit::Skip(GatewayMessage::query_closed(
                            id,
                            QUERY_CLOSED_TOO_OPEN,
                        ));
                    }
                }
                open.insert(id);
            }
            QueryEvent::Closed(id) => {
                open.remove(&id);
            }
        }
        Admit::Pass
    }
}

/// The [`Gate`] of one scan: the limiter, the connection's open queries, the scan's time.
pub(crate) struct ConnGate<'a, 'p> {
    pub(crate) limiter: &'a mut ConnLimiter<'p>,
    pub(crate) queries: &'a Mutex<HashSet<[u8; 2]>>,
    pub(crate) now: u64,
}

impl Gate for ConnGate<'_, '_> {
    fn message_start(&mut self) -> Admit {
        self.limiter.message_start(self.now)
    }

    fn mosaic_head(&mut self, head: &[u8], ended: bool, query: Option<QueryEvent>) -> Admit {
        self.limiter
            .mosaic_head(head, ended, query, self.queries, self.now)
    }
}
