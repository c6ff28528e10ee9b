//! One connection's rate limits while it is relayed: the buckets of its [`ConnPlan`]
//! (messages, bytes, Submissions) and its open-query cap, behind the relay's [`Limiter`].
//!
//! Only connections with a limit configured have one; the relay of the others never
//! reaches this code.

use std::time::Duration;

use super::bucket::{now_ns, Bucket, Spec};
use super::{ConnPlan, LimitAction, Submissions};
use crate::relay::limiter::Limiter;
use crate::relay::mosaic::{OpenQueries, QueryEvent, MAX_OPEN_QUERIES};
use crate::relay::profile::{Closed, Profile};
use crate::relay::tracker::{Admit, HEAD_REST};

/// A connection's buckets, client to upstream.
pub(crate) struct ConnLimiter {
    plan: ConnPlan,
    /// The clock, read once per pass of the relay.
    now: u64,
    messages: Bucket,
    bytes: Bucket,
    submissions: Bucket,
    /// A message is being held by the message rate (counted once, however long it waits).
    message_held: bool,
    /// Bytes are being held by the byte rate (counted once per hold).
    bytes_held: bool,
    /// The head bytes of the message being judged past the tracker's eight.
    head_rest: [u8; HEAD_REST],
}

/// Never wait for less than this many bytes of budget: a throttled connection wakes at
/// most about a hundred times a second, however low the rate.
const MAX_WAKEUPS_PER_SECOND: f64 = 100.0;

/// The longest frame header: a budget always lets the tracker read the next one, even a
/// budget of one byte (the few bytes over it are owed, and waited for next time).
const MAX_HEADER: usize = 14;

impl ConnLimiter {
    /// Full buckets for a new connection.
    pub(crate) fn new(plan: ConnPlan) -> Self {
        let now = now_ns();
        let full = |s: Option<&Spec>| s.map_or(Bucket::unused(), |s| Bucket::full(s, now));
        let submission_spec = match &plan.submissions {
            Some(Submissions::Connection(s)) => Some(s),
            _ => None,
        };
        ConnLimiter {
            messages: full(plan.messages.as_ref().map(|m| &m.0)),
            bytes: full(plan.bytes.as_ref()),
            submissions: full(submission_spec),
            plan,
            now,
            message_held: false,
            bytes_held: false,
            head_rest: [0; HEAD_REST],
        }
    }

    fn submission_passes(&mut self) -> bool {
        let now = self.now;
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
}

impl Limiter for ConnLimiter {
    fn start_pass(&mut self) {
        self.now = now_ns();
    }

    fn head_rest(&mut self) -> &mut [u8; HEAD_REST] {
        &mut self.head_rest
    }

    fn scan_limit(&mut self, scanned: usize, len: usize) -> usize {
        let now = self.now;
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

    fn charge_bytes(&mut self, n: usize) {
        let now = self.now;
        if let (Some(spec), true) = (&self.plan.bytes, n > 0) {
            self.bytes.charge(spec, now, n as u64);
            self.bytes_held = false;
        }
    }

    fn bytes_wait(&mut self) -> Duration {
        let now = self.now;
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

    fn message_start(&mut self) -> Admit {
        let now = self.now;
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
                    match action {
                        // Closing is a refusal; throttling only paces the client.
                        LimitAction::Close => self.plan.refused(&self.plan.counters.messages),
                        LimitAction::Throttle => self.plan.counters.messages.inc(),
                    }
                    tracing::debug!(action = ?action, "messages_per_connection: over the rate");
                }
                match action {
                    LimitAction::Throttle => Admit::Wait(wait),
                    LimitAction::Close => Admit::Close,
                }
            }
        }
    }

    fn mosaic_head(
        &mut self,
        profile: Profile,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
        queries: &OpenQueries,
    ) -> Admit {
        let submission = head.first().and_then(|&t| profile.submission_head(t));
        if let (Some(need), true) = (submission, self.plan.submissions.is_some()) {
            // The answer echoes the record's first bytes: wait for them before deciding.
            if head.len() < need && !ended {
                return Admit::NeedMore;
            }
            if !self.submission_passes() {
                self.plan.refused(&self.plan.counters.submissions);
                tracing::debug!("mosaic_submissions: answered too fast");
                return Admit::Skip(profile.too_fast(head));
            }
        }
        let Some(ev) = query else {
            return Admit::Pass;
        };
        // Without `mosaic_open_queries` the built-in cap still bounds the set.
        let max = self.plan.open_queries.unwrap_or(MAX_OPEN_QUERIES);
        if let QueryEvent::Opened(id) = ev {
            // Only this connection's task changes the set: nothing moves between the check
            // and `apply`.
            let open = queries.with(|open| (!open.contains(&id)).then_some(open.len()));
            if let Some(open) = open.filter(|&n| n >= max) {
                self.plan.refused(&self.plan.counters.open_queries);
                tracing::debug!(open, "mosaic_open_queries: answered Query Closed");
                return Admit::Skip(profile.query_closed(id, Closed::TooMany));
            }
        }
        queries.apply(ev);
        Admit::Pass
    }
}
