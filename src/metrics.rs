//! Prometheus metrics, all under `mosaic_gateway_`.
//!
//! No label ever carries a client address or key. The relay loop keeps its own counters per
//! connection and folds them in here when the connection ends, so the hot path touches no
//! shared atomics per message.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::reason::Reason;
use crate::relay::mosaic::{Direction, Violation};
use crate::relay::pump::{Stalled, SENT_CLOSE_CODES};
use crate::tls::{CLIENT_AUTH_LABELS, FAILURE_REASONS};

/// Every `upstream_failures_total{kind}` label, in the order of `UpstreamError::kind`
/// (the error's own module reads them from here, so the series preset cannot drift).
pub const UPSTREAM_FAILURE_KINDS: [&str; 4] = ["connect", "timeout", "refused", "bad_response"];
/// Every `http_requests_total{status}` label, in the order [`status_class`] picks them.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `http_requests_total{status}` label of an HTTP status code (anything odd is 5xx).
pub fn status_class(status: u16) -> &'static str {
    let i = match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    STATUS_CLASSES[i]
}

/// One route's and protocol's connection and traffic series, resolved from their vectors
/// once, when the route is built ([`Metrics::protocol_series`]).
///
/// Every connection updates six of them; looking each up by label would hash the labels
/// under the vector's lock, from every worker thread, on every connection.
pub struct ProtocolMetrics {
    /// `connections_active{route,protocol}`.
    pub connections_active: IntGauge,
    /// `connections_total{route,protocol}`.
    pub connections_total: IntCounter,
    /// `messages_total{route,protocol,direction}`: client to upstream, then upstream to client.
    pub messages: [IntCounter; 2],
    /// `bytes_total{route,protocol,direction}`, in the same order.
    pub bytes: [IntCounter; 2],
}

impl Metrics {
    /// Resolves (and so creates) the connection and traffic series of `protocol` on `route`.
    pub fn protocol_series(&self, route: &str, protocol: &str) -> ProtocolMetrics {
        let up = Direction::ClientToUpstream.label();
        let down = Direction::UpstreamToClient.label();
        ProtocolMetrics {
            connections_active: self
                .connections_active
                .with_label_values(&[route, protocol]),
            connections_total: self.connections_total.with_label_values(&[route, protocol]),
            messages: [
                self.messages_total
                    .with_label_values(&[route, protocol, up]),
                self.messages_total
                    .with_label_values(&[route, protocol, down]),
            ],
            bytes: [
                self.bytes_total.with_label_values(&[route, protocol, up]),
                self.bytes_total.with_label_values(&[route, protocol, down]),
            ],
        }
    }
}

/// Declares [`Metrics`]: one row per series, `field: Type[labels] = "help"`. The field's
/// name is the metric's (under `mosaic_gateway_`), and `Metrics::register_all` builds and
/// registers every row, so a new series is one row here.
macro_rules! metrics {
    ($($(#[doc = $doc:literal])* $field:ident: $kind:ident[$($label:literal),*] = $help:literal,)*) => {
        /// Every metric the gateway exports.
        pub struct Metrics {
            registry: Registry,
            $($(#[doc = $doc])* pub $field: $kind,)*
        }

        impl Metrics {
            /// Builds every series of the table and registers it in `r`.
            fn register_all(r: Registry) -> Self {
                Metrics {
                    $($field: register(&r, stringify!($field), $kind::build(
                        opts(stringify!($field), $help),
                        &[$($label),*],
                    )),)*
                    registry: r,
                }
            }
        }
    };
}

metrics! {
    /// Open proxied connections by route and protocol.
    connections_active: IntGaugeVec["route", "protocol"] = "Open proxied WebSocket connections",
    /// Proxied connections opened, by route and protocol.
    connections_total: IntCounterVec["route", "protocol"] = "Proxied WebSocket connections opened",
    /// Upgrades answered with an error, by route (empty before one is known) and reason.
    handshake_rejections_total: IntCounterVec["route", "reason"] =
        "Upgrade requests answered with an error",
    /// Messages relayed, by route, protocol and direction.
    messages_total: IntCounterVec["route", "protocol", "direction"] = "WebSocket messages relayed",
    /// Bytes relayed (frames included), by route, protocol and direction.
    bytes_total: IntCounterVec["route", "protocol", "direction"] =
        "Bytes relayed after the upgrade",
    /// Mosaic rule violations, by kind.
    protocol_violations_total: IntCounterVec["kind"] = "Mosaic protocol violations",
    /// 1 when a backend is healthy, by route, pool and backend.
    backend_up: IntGaugeVec["route", "pool", "backend"] =
        "1 when the backend is healthy, 0 when down",
    /// Time to connect and upgrade to a backend, by pool.
    backend_connect_duration_seconds: HistogramVec["pool"] =
        "Time to connect to a backend and complete its upgrade",
    /// TLS handshakes, by client_auth.
    tls_handshakes_total: IntCounterVec["client_auth"] = "Completed TLS handshakes",
    /// TLS handshakes that failed, by reason.
    tls_handshake_failures_total: IntCounterVec["reason"] =
        "TLS handshakes that failed, by reason",
    /// Expiry of each served certificate (Unix seconds), by name.
    tls_certificate_expiry_timestamp_seconds: GaugeVec["name"] =
        "When each served certificate expires (Unix seconds)",
    /// Closes the gateway sent to clients, by code.
    closes_sent_total: IntCounterVec["code"] = "Close frames the gateway sent to clients",
    /// Relayed connections cut because a side stopped reading (`limits.write_timeout`),
    /// by that side.
    write_timeouts_total: IntCounterVec["side"] =
        "Relayed connections cut because a side took nothing for limits.write_timeout",
    /// Upstream handshake failures, by pool and kind.
    upstream_failures_total: IntCounterVec["pool", "kind"] =
        "Failed upstream connects or upgrades",
    /// Plain HTTP requests forwarded to the nostr relay, by status class.
    http_requests_total: IntCounterVec["status"] =
        "Plain HTTP requests forwarded to the nostr relay",
    /// Client header lines the gateway refused to pass on, by reason (`underscore`).
    headers_dropped_total: IntCounterVec["reason"] =
        "Client header lines never passed upstream, by reason",
    /// 1 while the gateway drains.
    draining: Gauge[] = "1 while the gateway drains after SIGTERM",
    /// 1 when `/readyz` answers 200 (set on every scrape).
    ready: IntGauge[] =
        "1 when /readyz answers 200: listening, a healthy backend in every pool, not draining",
    /// Rate limits and access lists applied, by protocol and limit.
    rate_limited_total: IntCounterVec["protocol", "limit"] =
        "Connections, messages and bytes held back, answered or refused by a rate limit or access list",
    /// Clients remembered by the rate limiters' shared tables, by table.
    rate_limiter_entries: IntGaugeVec["table"] =
        "Clients (addresses or keys) the rate limiters' shared tables remember",
    /// Bans and NIP-86 blocks in force.
    bans_active: IntGauge[] = "Client addresses banned now (temporary bans and NIP-86 blocks)",
    /// WebSockets opened as HTTP/2 streams (RFC 8441), by protocol; each is also counted
    /// in `connections_total`.
    http2_websockets_total: IntCounterVec["protocol"] =
        "WebSockets opened as HTTP/2 streams (RFC 8441 extended CONNECT)",
    /// Mosaic connections opened, by version (`2025`, `2024`).
    mosaic_connections_total: IntCounterVec["version"] =
        "Mosaic connections opened, by the version their subprotocol token names",
}

/// Registers a metric built from a fixed definition. Names and labels are compile-time
/// constants, so a bad definition or a clash is a programming error the tests catch.
fn register<M>(r: &Registry, name: &str, built: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let m = built.unwrap_or_else(|e| panic!("metric {name} definition: {e}"));
    let _ = r.register(Box::new(m.clone()));
    m
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("mosaic_gateway")
}

/// How a row of the `metrics!` table is built from its options and labels.
trait Series: Sized {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self>;
}

impl Series for IntCounterVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        IntCounterVec::new(opts, labels)
    }
}

impl Series for IntGaugeVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        IntGaugeVec::new(opts, labels)
    }
}

impl Series for GaugeVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        GaugeVec::new(opts, labels)
    }
}

impl Series for Gauge {
    fn build(opts: Opts, _: &[&str]) -> prometheus::Result<Self> {
        Gauge::with_opts(opts)
    }
}

impl Series for IntGauge {
    fn build(opts: Opts, _: &[&str]) -> prometheus::Result<Self> {
        IntGauge::with_opts(opts)
    }
}

/// The gateway's one histogram is the upstream connect time, so histograms get its buckets.
impl Series for HistogramVec {
    fn build(opts: Opts, labels: &[&str]) -> prometheus::Result<Self> {
        HistogramVec::new(
            HistogramOpts::from(opts).buckets(CONNECT_BUCKETS.to_vec()),
            labels,
        )
    }
}

/// `rate_limited_total{protocol,limit}` series known in advance: both protocols for every
/// limit that applies to them, and `unknown` for connections refused before their request
/// said which protocol they speak.
pub const RATE_LIMITED_SERIES: [(&str, &str); 14] = [
    ("mosaic", "connections"),
    ("mosaic", "messages"),
    ("mosaic", "bytes"),
    ("mosaic", "submissions"),
    ("mosaic", "open_queries"),
    ("mosaic", "denied"),
    ("nostr", "connections"),
    ("nostr", "messages"),
    ("nostr", "bytes"),
    ("nostr", "denied"),
    ("unknown", "denied"),
    ("mosaic", "banned"),
    ("nostr", "banned"),
    ("unknown", "banned"),
];

/// The `protocol` label values of the WebSocket series.
pub const WEBSOCKET_PROTOCOLS: [&str; 2] = ["mosaic", "nostr"];

/// The `table` label values of `rate_limiter_entries`.
pub const RATE_LIMITER_TABLES: [&str; 2] = ["connections", "submissions"];

/// Upstream connect times: from half a millisecond on loopback to seconds across regions.
const CONNECT_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let m = Metrics::register_all(Registry::new());
        let build_info = GaugeVec::build(
            opts(
                "build_info",
                "Always 1; the version label says which build runs",
            ),
            &["version"],
        );
        register(&m.registry, "build_info", build_info)
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        m.preset();
        m
    }

    /// Makes every series whose label values are known without a config exist with 0, so
    /// the first scrape already has them (`rate()` and alerts see 0, not nothing). The
    /// rejection reasons are preset by [`Metrics::preset_rejections`], pools by
    /// [`Metrics::preset_pool`].
    fn preset(&self) {
        for (protocol, limit) in RATE_LIMITED_SERIES {
            self.rate_limited_total
                .with_label_values(&[protocol, limit]);
        }
        for table in RATE_LIMITER_TABLES {
            self.rate_limiter_entries.with_label_values(&[table]);
        }
        for v in Violation::ALL {
            self.protocol_violations_total
                .with_label_values(&[v.label()]);
        }
        for code in SENT_CLOSE_CODES {
            self.closes_sent_total
                .with_label_values(&[&code.to_string()]);
        }
        for side in [Stalled::Client, Stalled::Upstream] {
            self.write_timeouts_total.with_label_values(&[side.label()]);
        }
        for l in CLIENT_AUTH_LABELS {
            self.tls_handshakes_total.with_label_values(&[l]);
        }
        for r in FAILURE_REASONS {
            self.tls_handshake_failures_total.with_label_values(&[r]);
        }
        for c in STATUS_CLASSES {
            self.http_requests_total.with_label_values(&[c]);
        }
        self.headers_dropped_total
            .with_label_values(&["underscore"]);
        for p in WEBSOCKET_PROTOCOLS {
            self.http2_websockets_total.with_label_values(&[p]);
        }
        for v in crate::relay::profile::MosaicVersion::ALL {
            self.mosaic_connections_total
                .with_label_values(&[v.label()]);
        }
    }

    /// Counts the header lines with `_` in their names that a request carried: they are
    /// never passed on.
    pub fn dropped_underscored(&self, n: usize) {
        if n > 0 {
            self.headers_dropped_total
                .with_label_values(&["underscore"])
                .inc_by(n as u64);
        }
    }

    /// Makes every `handshake_rejections_total{route,reason}` series of `route` exist with 0
    /// (`""`: refusals before a route is known).
    pub fn preset_rejections(&self, route: &str) {
        for r in Reason::ALL {
            self.handshake_rejections_total
                .with_label_values(&[route, r]);
        }
    }

    /// The series of a Mosaic pool: its connect-time histogram and its failures.
    pub fn preset_pool(&self, pool: &str) {
        self.backend_connect_duration_seconds
            .with_label_values(&[pool]);
        self.preset_upstream_failures(pool);
    }

    /// `upstream_failures_total{pool,kind}` for every kind (the nostr relay is pool `nostr`).
    pub fn preset_upstream_failures(&self, pool: &str) {
        for kind in UPSTREAM_FAILURE_KINDS {
            self.upstream_failures_total
                .with_label_values(&[pool, kind]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
