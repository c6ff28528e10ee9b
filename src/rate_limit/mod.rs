//! Abuse control at the edge (issue 14): access lists, and rate limits that answer in the
//! protocol and throttle without losing anything.
//!
//! This module decides; the stages of the pipeline act. Every limit is off unless
//! configured, and costs nothing when off: a [`Policy`] (one per configuration generation)
//! says which limits exist, and a connection that has none relays exactly as before.
//!
//! | limit | decided by | applied in | answer |
//! |---|---|---|---|
//! | `access.allow` / `deny`, bans, NIP-86 blocks | [`Policy::refuses_at_accept`], [`Policy::refuses_forwarded`], reading the [`Standing`] | `pipeline::accept` (right after accept and the PROXY header, before TLS); `upgrade`, `front` per request behind a trusted X-Forwarded-For proxy; open connections after a change (`enforcer`) | connection closed; 403 per request; close 1008 |
//! | `connections_per_ip` | [`Policy::admit_connection`] | `upgrade`, before routing | 429 with `Retry-After` |
//! | `messages_per_connection`, `bytes_per_connection`, `mosaic_submissions`, `mosaic_open_queries` | the connection's [`ConnLimiter`] | the relay, through its `Limiter` interface, at the tracker's message boundaries | throttle (stop reading), close 1008, Submission Result 0x12, Query Closed 0x11 |
//!
//! Buckets shared between connections (per address, per client key) live in [`Tables`],
//! which outlive configuration reloads and stay bounded (see `table`). Beside them, the
//! table of standing ([`Standing`]) holds what the gateway has against an address: access
//! lists, exemptions, bans and their expiry. `rate_limits.exempt` addresses skip every limit
//! here; refusals (429, Submission and query answers, `action: close`) and client protocol
//! violations count as trips towards a ban. Throttling is pacing, not a trip.

mod access;
pub mod admission;
mod bans_file;
mod bucket;
pub mod client_addr;
mod conn;
mod standing;
mod table;

pub(crate) use bans_file::save as save_bans;
pub(crate) use standing::{net_text, Ban, BanKind, BlockError, Rules, Standing, Verdict};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use ipnet::IpNet;

use crate::config::LimitAction;
use crate::config::{ByteDirection, Config, RateConfig, RateLimitsConfig, SubmissionScope};
use crate::metrics::{Metrics, RATE_LIMITER_TABLES};
use crate::rate_limit::client_addr::{canonical, TrustedProxies};

use crate::relay::limiter::{Limiter, Limiters};
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

/// The limits one direction of a relayed connection applies, decided when it is set up
/// ([`ConnLimiter`] keeps their buckets).
struct ConnPlan {
    messages: Option<(Spec, LimitAction)>,
    bytes: Option<Spec>,
    submissions: Option<Submissions>,
    open_queries: Option<usize>,
    counters: LimitCounters,
    /// Where refusals count towards a ban of the client; `None`: automatic bans are off.
    trips: Option<Tripper>,
}

/// Counts one connection's refusals against its client's standing.
struct Tripper {
    standing: Arc<Standing>,
    client: IpAddr,
}

impl ConnPlan {
    /// A refusal: counted, and a trip towards a ban.
    fn refused(&self, counter: &IntCounter) {
        counter.inc();
        if let Some(t) = &self.trips {
            t.standing.trip(t.client);
        }
    }
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
    /// The table of standing, shared by every generation.
    pub(crate) standing: Arc<Standing>,
    /// The top-level policy's rules about addresses, which the standing adopts when this
    /// generation becomes current; `None` for a route's own limits.
    rules: Option<Arc<Rules>>,
    /// A route's own `rate_limits.exempt` (the top level's lives in the standing).
    exempt: Vec<IpNet>,
    connections: Option<Spec>,
    messages: Option<(Spec, LimitAction)>,
    bytes: Option<(Spec, ByteDirection)>,
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
    /// The limits `config` sets (validated), counting into `metrics`; `standing` is the
    /// process's table of standing.
    pub(crate) fn new(config: &Config, metrics: &Metrics, standing: Arc<Standing>) -> Policy {
        Policy {
            rules: Some(Arc::new(Rules::new(config))),
            // The top-level `exempt` is the standing's (it also exempts from bans).
            exempt: Vec::new(),
            ..Policy::limits_only(&config.rate_limits, metrics, standing)
        }
    }

    /// A route's own rate limits (`routes[i].rate_limits`): the access lists and bans stay
    /// global (in the standing).
    pub(crate) fn limits_only(
        r: &RateLimitsConfig,
        metrics: &Metrics,
        standing: Arc<Standing>,
    ) -> Policy {
        Policy {
            standing,
            rules: None,
            exempt: standing::cidrs(&r.exempt),
            connections: r.connections_per_ip.as_ref().map(spec),
            messages: r
                .messages_per_connection
                .as_ref()
                .map(|m| (spec(m), m.action.unwrap_or_default())),
            bytes: r
                .bytes_per_connection
                .as_ref()
                .map(|b| (spec(b), b.direction.unwrap_or_default())),
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
        let forwarded_later = !proxy_protocol && trusted.contains(accepted);
        if forwarded_later {
            return false;
        }
        self.refused(real, 2)
    }

    /// Makes this generation's rules about addresses the standing's (it became current).
    pub(crate) fn adopt(&self) {
        if let Some(r) = &self.rules {
            self.standing.adopt(r.clone());
        }
    }

    /// Whether the standing refuses `client`, counted under protocol `label` (mosaic,
    /// nostr, unknown).
    fn refused(&self, client: IpAddr, label: usize) -> bool {
        self.counted(client, self.standing.verdict(client), label)
    }

    /// Counts `verdict` on `client` under protocol `label`; whether it refuses.
    fn counted(&self, client: IpAddr, verdict: Verdict, label: usize) -> bool {
        match verdict {
            Verdict::Served => false,
            Verdict::Denied => {
                self.series.denied[label].inc();
                tracing::debug!(%client, "access: address refused");
                true
            }
            Verdict::Banned(kind) => {
                self.standing.banned[label].inc();
                tracing::debug!(%client, ?kind, "bans: banned address refused");
                true
            }
        }
    }

    /// Whether `client` is exempt from this policy's limits (its own list or the top
    /// level's).
    fn exempt(&self, client: IpAddr) -> bool {
        standing::within(&self.exempt, client) || self.standing.exempt(client)
    }

    /// Whether the standing refuses the client of a request: an address a trusted proxy
    /// forwarded (the connection came from `peer`), or, for a direct client, a ban since
    /// its connection was accepted (a keep-alive connection's next request gets 403). A
    /// direct client's access lists were read at accept; a trusted proxy's own requests
    /// (no X-Forwarded-For) are not held to them.
    pub(crate) fn refuses_forwarded(&self, peer: IpAddr, client: IpAddr, asked: Asked) -> bool {
        self.counted(client, self.request_verdict(peer, client), asked as usize)
    }

    /// The standing of a request's `client` that came through `peer`.
    fn request_verdict(&self, peer: IpAddr, client: IpAddr) -> Verdict {
        if canonical(peer) == client {
            self.standing.ban_verdict(client)
        } else {
            self.standing.verdict(client)
        }
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
        // What the request asked for is worked out only for a refusal's label.
        let verdict = self.request_verdict(peer, client);
        if verdict != Verdict::Served {
            self.counted(client, verdict, asked() as usize);
            tracing::debug!(%client, %peer, "upgrade refused by the standing");
            return Err(Refused::Denied);
        }
        let Some(spec) = self.connections.as_ref().filter(|_| !self.exempt(client)) else {
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
        self.series.connections[asked() as usize].inc();
        self.standing.trip(client);
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
    ) -> Option<Limiters> {
        if self.exempt(client) {
            return None;
        }
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
        let (bytes_up, bytes_down) = match self.bytes {
            Some((spec, d)) => (d.client().then_some(spec), d.upstream().then_some(spec)),
            None => (None, None),
        };
        let counters = if mosaic {
            &self.series.mosaic
        } else {
            &self.series.nostr
        };
        let trips = || {
            self.standing.bans_on().then(|| Tripper {
                standing: self.standing.clone(),
                client,
            })
        };
        let up = (self.messages.is_some()
            || bytes_up.is_some()
            || submissions.is_some()
            || open_queries.is_some())
        .then(|| {
            Box::new(ConnLimiter::new(ConnPlan {
                messages: self.messages,
                bytes: bytes_up,
                submissions,
                open_queries,
                counters: counters.clone(),
                trips: trips(),
            })) as Box<dyn Limiter>
        });
        // The upstream's direction has only a byte budget: throttling it stops reading the
        // upstream, which is never a trip against the client.
        let down = bytes_down.map(|bytes| {
            Box::new(ConnLimiter::new(ConnPlan {
                messages: None,
                bytes: Some(bytes),
                submissions: None,
                open_queries: None,
                counters: counters.clone(),
                trips: None,
            })) as Box<dyn Limiter>
        });
        (up.is_some() || down.is_some()).then_some(Limiters { up, down })
    }
}
