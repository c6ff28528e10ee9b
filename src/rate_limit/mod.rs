//! Abuse control at the edge (issue 14): access lists, and rate limits that answer in the
//! protocol and throttle without losing anything.
//!
//! This module decides; the stages of the pipeline act. Every limit is off unless
//! configured, and costs nothing when off: a [`Policy`] (one per configuration generation)
//! says which limits exist, and a connection that has none relays exactly as before.
//!
//! | limit | decided by | applied in | answer |
//! |---|---|---|---|
//! | `access.allow` / `deny` | [`Policy::refuses_at_accept`], [`Policy::refuses_forwarded`] | `server` (right after accept and the PROXY header, before TLS); `upgrade`, `front` per request behind a trusted X-Forwarded-For proxy | connection closed; 403 per request |
//! | `connections_per_ip` | [`Policy::admit_connection`] | `upgrade`, before routing | 429 with `Retry-After` |
//! | `messages_per_connection`, `bytes_per_connection`, `mosaic_submissions`, `mosaic_open_queries` | the connection's [`ConnLimiter`] | the relay, through its `Limiter` interface, at the tracker's message boundaries | throttle (stop reading), close 1008, Submission Result 0x12, Query Closed 0x11 |
//!
//! Buckets shared between connections (per address, per client key) live in [`Tables`],
//! which outlive configuration reloads and stay bounded (see `table`).

mod access;
mod bucket;
mod conn;
mod table;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::client_addr::{canonical, TrustedProxies};
use crate::config::LimitAction;
use crate::config::{Config, RateConfig, RateLimitsConfig, SubmissionScope};
use crate::metrics::{Metrics, RATE_LIMITER_TABLES};

use crate::relay::limiter::Limiter;
use access::AccessList;
use bucket::{now_ns, Spec};
use conn::ConnLimiter;
use table::{Key, Table};

/// The buckets shared between connections: per client address (or key). Process-wide, so a
/// reload neither forgets nor resets them.
pub(crate) struct Tables {
    connections: Table,
    submissions: Arc<Table>,
}

impl Tables {
    /// Empty tables for a route's own rate limits. Their sizes are not exported (the
    /// `rate_limiter_entries` series are the global tables'); their caps bound them alike.
    pub(crate) fn for_route(metrics: &Metrics) -> Tables {
        let size = |t: &str| {
            prometheus::IntGauge::new("route_rate_limiter_entries", "unexported")
                .unwrap_or_else(|_| metrics.rate_limiter_entries.with_label_values(&[t]))
        };
        Tables {
            connections: Table::new(size(RATE_LIMITER_TABLES[0])),
            submissions: Arc::new(Table::new(size(RATE_LIMITER_TABLES[1]))),
        }
    }

    /// Empty tables reporting their sizes in `rate_limiter_entries`.
    pub(crate) fn new(metrics: &Metrics) -> Tables {
        let size = |t: &str| metrics.rate_limiter_entries.with_label_values(&[t]);
        Tables {
            connections: Table::new(size(RATE_LIMITER_TABLES[0])),
            submissions: Arc::new(Table::new(size(RATE_LIMITER_TABLES[1]))),
        }
    }
}

/// `rate_limited_total{protocol,limit}` for the limits a relayed connection applies.
#[derive(Clone)]
struct LimitCounters {
    messages: IntCounter,
    bytes: IntCounter,
    submissions: IntCounter,
    open_queries: IntCounter,
}

/// Whose bucket a Submission takes from.
enum Submissions {
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

/// The limits one relayed connection applies, client to upstream, decided when it is set
/// up ([`ConnLimiter`] keeps their buckets).
struct ConnPlan {
    messages: Option<(Spec, LimitAction)>,
    bytes: Option<Spec>,
    submissions: Option<Submissions>,
    open_queries: Option<usize>,
    counters: LimitCounters,
}

/// Why a client is refused before its connection is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The access lists refuse its address (403).
    Denied,
    /// Over `connections_per_ip`; a token is there after this long (429, `Retry-After`).
    TooManyConnections(Duration),
}

/// The protocol label of a refusal: what the request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Mosaic,
    Nostr,
}

/// Counters resolved once per generation.
struct Series {
    mosaic: LimitCounters,
    nostr: LimitCounters,
    connections: [IntCounter; 2],
    /// Denied: mosaic, nostr, unknown.
    denied: [IntCounter; 3],
}

impl Series {
    fn new(m: &Metrics) -> Series {
        let c = |p: &str, l: &str| m.rate_limited_total.with_label_values(&[p, l]);
        let per = |p: &str| LimitCounters {
            messages: c(p, "messages"),
            bytes: c(p, "bytes"),
            submissions: c(p, "submissions"),
            open_queries: c(p, "open_queries"),
        };
        Series {
            mosaic: per("mosaic"),
            nostr: per("nostr"),
            connections: [c("mosaic", "connections"), c("nostr", "connections")],
            denied: [
                c("mosaic", "denied"),
                c("nostr", "denied"),
                c("unknown", "denied"),
            ],
        }
    }
}

/// One generation's limits, built from the validated config.
pub(crate) struct Policy {
    access: Option<AccessList>,
    connections: Option<Spec>,
    messages: Option<(Spec, LimitAction)>,
    bytes: Option<Spec>,
    submissions: Option<(Spec, SubmissionScope)>,
    open_queries: Option<usize>,
    ipv6_prefix: u8,
    table_size: usize,
    series: Series,
}

fn spec(r: &RateConfig) -> Spec {
    Spec::new(r.rate, r.per.0, r.burst())
}

impl Policy {
    /// The limits `config` sets (validated), counting into `metrics`.
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Policy {
        Policy {
            access: AccessList::new(&config.access.allow, &config.access.deny),
            ..Policy::limits_only(&config.rate_limits, metrics)
        }
    }

    /// A route's own rate limits (`routes[i].rate_limits`): no access lists, which stay
    /// global.
    pub(crate) fn limits_only(r: &RateLimitsConfig, metrics: &Metrics) -> Policy {
        Policy {
            access: None,
            connections: r.connections_per_ip.as_ref().map(spec),
            messages: r
                .messages_per_connection
                .as_ref()
                .map(|m| (spec(m), m.action.unwrap_or_default())),
            bytes: r.bytes_per_connection.as_ref().map(spec),
            submissions: r
                .mosaic_submissions
                .as_ref()
                .map(|s| (spec(s), s.scope.unwrap_or_default())),
            open_queries: r.mosaic_open_queries,
            ipv6_prefix: r.ipv6_prefix,
            table_size: r.table_size,
            series: Series::new(metrics),
        }
    }

    /// Stage 1: whether the connection from `real` (the address the PROXY header gave, else
    /// the peer `accepted`) is refused, right after accept and before TLS. Behind a trusted
    /// proxy that sends X-Forwarded-For instead (`proxy_protocol` off), the client's address
    /// comes with each request: see [`Policy::refuses_forwarded`].
    pub(crate) fn refuses_at_accept(
        &self,
        trusted: &TrustedProxies,
        proxy_protocol: bool,
        accepted: IpAddr,
        real: IpAddr,
    ) -> bool {
        let Some(access) = &self.access else {
            return false;
        };
        let forwarded_later = !proxy_protocol && trusted.contains(accepted);
        if forwarded_later || access.permits(real) {
            return false;
        }
        self.series.denied[2].inc();
        tracing::debug!(client = %real, "access: address refused, connection closed");
        true
    }

    /// Whether a request whose client address `client` a trusted proxy forwarded (the
    /// connection came from `peer`) is refused by the access lists.
    pub(crate) fn refuses_forwarded(&self, peer: IpAddr, client: IpAddr, asked: Asked) -> bool {
        let Some(access) = &self.access else {
            return false;
        };
        if canonical(peer) == client || access.permits(client) {
            return false;
        }
        self.series.denied[asked as usize].inc();
        tracing::debug!(%client, "access: forwarded address refused");
        true
    }

    /// The limits on a new WebSocket connection from `client` (through `peer`), before
    /// routing: the access lists for a forwarded address, then `connections_per_ip`.
    pub(crate) fn admit_connection(
        &self,
        tables: &Tables,
        peer: IpAddr,
        client: IpAddr,
        asked: impl FnOnce() -> Asked,
    ) -> Result<(), Refused> {
        if self.access.is_none() && self.connections.is_none() {
            return Ok(());
        }
        let asked = asked();
        if self.refuses_forwarded(peer, client, asked) {
            return Err(Refused::Denied);
        }
        let Some(spec) = &self.connections else {
            return Ok(());
        };
        let key = Key::ip(client, self.ipv6_prefix);
        let wait = match tables
            .connections
            .take(key, spec, self.table_size, now_ns())
        {
            Ok(()) => return Ok(()),
            Err(wait) => wait,
        };
        self.series.connections[asked as usize].inc();
        tracing::debug!(%client, "connections_per_ip: over the rate, 429");
        Err(Refused::TooManyConnections(wait))
    }

    /// The limiter of a relayed connection, its buckets full, or `None` when it has no
    /// limits (its relay then does no limiter work at all).
    pub(crate) fn connection_limiter(
        &self,
        tables: &Tables,
        mosaic: bool,
        client: IpAddr,
        client_key: Option<&[u8; 32]>,
    ) -> Option<Box<dyn Limiter>> {
        let submissions = self.submissions.filter(|_| mosaic).map(|(spec, scope)| {
            let shared = |key| Submissions::Shared {
                table: tables.submissions.clone(),
                key,
                spec,
                cap: self.table_size,
            };
            match (scope, client_key) {
                (SubmissionScope::Connection, _) => Submissions::Connection(spec),
                (SubmissionScope::ClientKey, Some(k)) => shared(Key::Client(*k)),
                (SubmissionScope::Ip | SubmissionScope::ClientKey, _) => {
                    shared(Key::ip(client, self.ipv6_prefix))
                }
            }
        });
        let open_queries = self.open_queries.filter(|_| mosaic);
        if self.messages.is_none()
            && self.bytes.is_none()
            && submissions.is_none()
            && open_queries.is_none()
        {
            return None;
        }
        let counters = if mosaic {
            &self.series.mosaic
        } else {
            &self.series.nostr
        };
        Some(Box::new(ConnLimiter::new(ConnPlan {
            messages: self.messages,
            bytes: self.bytes,
            submissions,
            open_queries,
            counters: counters.clone(),
        })))
    }
}
