//! Abuse control at the edge (issue 14): access lists, rate limits that answer in the
//! protocol, and throttling that loses nothing.
//!
//! Every limit is off unless configured, and costs nothing when off: a [`Policy`] (one per
//! configuration generation) says which limits exist; a connection that has none relays
//! exactly as before. Where each limit acts:
//!
//! | limit | where | answer |
//! |---|---|---|
//! | `access.allow` / `deny` | right after accept (and the PROXY header), before TLS; per request behind a trusted X-Forwarded-For proxy | connection closed (403 per request) |
//! | `connections_per_ip` | the upgrade request, before routing | 429 with `Retry-After` |
//! | `messages_per_connection` | each message's first frame header (the tracker) | stop reading until tokens refill, or close 1008 |
//! | `bytes_per_connection` | what the tracker may scan of what was read | stop reading until tokens refill |
//! | `mosaic_submissions` | a Submission's judged head | Submission Result 0x12 from the gateway; not forwarded |
//! | `mosaic_open_queries` | a Query's judged head | Query Closed 0x11 from the gateway; not forwarded |
//!
//! Buckets shared between connections (per address, per client key) live in [`Tables`],
//! which outlive configuration reloads and stay bounded (see [`table`]).

mod access;
mod bucket;
pub mod config;
mod conn;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use prometheus::IntCounter;

use crate::answer::{reject, Answer, Rejection};
use crate::client_addr::canonical;
use crate::config::Config;
use crate::connection::Protocol;
use crate::gateway::{App, Body, ConnInfo, Gateway};
use crate::handshake::offered_protocols;
use crate::metrics::Metrics;

use access::AccessList;
pub(crate) use bucket::now_ns;
use bucket::Spec;
use config::{LimitAction, RateConfig, SubmissionScope};
pub(crate) use conn::{ConnGate, ConnLimiter, ConnPlan};
use conn::{LimitCounters, Submissions};
use table::{Key, Table};

/// The `limit` label values of `rate_limited_total`.
const LIMITS: [&str; 6] = [
    "connections",
    "messages",
    "bytes",
    "submissions",
    "open_queries",
    "denied",
];

/// Label values of `rate_limited_total{protocol,limit}` known in advance: both protocols
/// for every limit that applies to them, and `unknown` for connections refused before
/// their request said which protocol they speak.
pub(crate) fn known_series() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = LIMITS.iter().map(|l| ("mosaic", *l)).collect();
    v.extend(
        ["connections", "messages", "bytes", "denied"]
            .iter()
            .map(|l| ("nostr", *l)),
    );
    v.push(("unknown", "denied"));
    v
}

/// The `table` label values of `rate_limiter_entries`.
pub(crate) const TABLES: [&str; 2] = ["connections", "submissions"];

/// The buckets shared between connections: per client address (or key). Process-wide, so a
/// reload neither forgets nor resets them.
pub(crate) struct Tables {
    connections: Table,
    submissions: Arc<Table>,
}

impl Tables {
    /// Empty tables reporting their sizes in `rate_limiter_entries`.
    pub(crate) fn new(metrics: &Metrics) -> Tables {
        let size = |t: &str| metrics.rate_limiter_entries.with_label_values(&[t]);
        Tables {
            connections: Table::new(size(TABLES[0])),
            submissions: Arc::new(Table::new(size(TABLES[1]))),
        }
    }
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
        let r = &config.rate_limits;
        Policy {
            access: AccessList::new(&config.access.allow, &config.access.deny),
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

    /// The limits a relayed connection applies, or `None` when it has none (its relay then
    /// does no limiter work at all).
    pub(crate) fn connection_plan(
        &self,
        tables: &Tables,
        protocol: Protocol,
        client: IpAddr,
        client_key: Option<&[u8; 32]>,
    ) -> Option<Box<ConnPlan>> {
        let mosaic = protocol == Protocol::Mosaic;
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
        let counters = match protocol {
            Protocol::Mosaic => &self.series.mosaic,
            Protocol::Nostr => &self.series.nostr,
        };
        Some(Box::new(ConnPlan {
            messages: self.messages,
            bytes: self.bytes,
            submissions,
            open_queries,
            counters: counters.clone(),
        }))
    }

    fn denied(&self, protocol: Option<Protocol>) -> &IntCounter {
        &self.series.denied[match protocol {
            Some(Protocol::Mosaic) => 0,
            Some(Protocol::Nostr) => 1,
            None => 2,
        }]
    }
}

/// Stage 1 of the pipeline: whether the connection from `real` (the address the PROXY
/// header gave, else the peer `accepted`) is refused by `access`, right after accept and
/// before TLS. Behind a trusted proxy that sends X-Forwarded-For instead, the client's
/// address comes with each request ([`admit_upgrade`], [`refuse_request`]).
pub(crate) fn refused_at_accept(gw: &Gateway, accepted: SocketAddr, real: SocketAddr) -> bool {
    let Some(access) = &gw.rate.access else {
        return false;
    };
    let forwarded_later = !gw.config.forwarded.proxy_protocol && gw.trusted.contains(accepted.ip());
    if forwarded_later || access.permits(real.ip()) {
        return false;
    }
    gw.rate.denied(None).inc();
    tracing::debug!(client = %real, "access: address refused, connection closed");
    true
}

/// The protocol an upgrade asks for, for the metrics of a refusal before routing.
fn asked_protocol(gw: &Gateway, req: &Request<()>) -> Protocol {
    let tokens = &gw.config.mosaic.subprotocols;
    if offered_protocols(req.headers())
        .iter()
        .any(|t| tokens.contains(t))
    {
        Protocol::Mosaic
    } else {
        Protocol::Nostr
    }
}

/// Whether `client` was told by a trusted proxy's X-Forwarded-For (then the access lists
/// were not applied at accept).
fn forwarded(info: &ConnInfo, client: IpAddr) -> bool {
    canonical(info.peer.ip()) != client
}

/// The limits on a new WebSocket connection from `client`, checked before routing: the
/// access lists for an address a trusted proxy forwarded (403), then
/// `connections_per_ip` (429 with `Retry-After`). `Some`: the refusal to answer.
pub(crate) fn admit_upgrade(
    app: &App,
    gw: &Gateway,
    info: &ConnInfo,
    client: IpAddr,
    req: &Request<()>,
) -> Option<Answer> {
    let policy = &gw.rate;
    if let Some(access) = &policy.access {
        if forwarded(info, client) && !access.permits(client) {
            policy.denied(Some(asked_protocol(gw, req))).inc();
            tracing::debug!(%client, "access: forwarded address refused");
            return Some(reject(&app.metrics, forbidden()));
        }
    }
    let spec = policy.connections.as_ref()?;
    let key = Key::ip(client, policy.ipv6_prefix);
    let wait = app
        .rate_tables
        .connections
        .take(key, spec, policy.table_size, now_ns())
        .err()?;
    let protocol = asked_protocol(gw, req);
    policy.series.connections[usize::from(protocol == Protocol::Nostr)].inc();
    tracing::debug!(%client, "connections_per_ip: over the rate, 429");
    let mut answer = reject(
        &app.metrics,
        Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many new connections from this address",
            "connections_per_ip",
        ),
    );
    // Whole seconds, rounded up: a client that waits that long gets a token.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    answer
        .headers
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    Some(answer)
}

fn forbidden() -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "this address is not served here",
        "access_denied",
    )
}

/// A plain HTTP request (NIP-11, the relay's page) from an address a trusted proxy
/// forwarded and the access lists refuse: its 403.
pub(crate) fn refuse_request(
    app: &App,
    gw: &Gateway,
    info: &ConnInfo,
    client: IpAddr,
) -> Option<Response<Body>> {
    let access = gw.rate.access.as_ref()?;
    if !forwarded(info, client) || access.permits(client) {
        return None;
    }
    gw.rate.denied(Some(Protocol::Nostr)).inc();
    Some(reject(&app.metrics, forbidden()).into_response())
}
