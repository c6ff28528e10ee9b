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

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Open proxied connections by route and protocol.
    pub connections_active: IntGaugeVec,
    /// Proxied connections opened, by route and protocol.
    pub connections_total: IntCounterVec,
    /// Upgrades answered with an error, by route (empty before one is known) and reason.
    pub handshake_rejections_total: IntCounterVec,
    /// Messages relayed, by route, protocol and direction.
    pub messages_total: IntCounterVec,
    /// Bytes relayed (frames included), by route, protocol and direction.
    pub bytes_total: IntCounterVec,
    /// Mosaic rule violations, by kind.
    pub protocol_violations_total: IntCounterVec,
    /// 1 when a backend is healthy, by route, pool and backend.
    pub backend_up: IntGaugeVec,
    /// Time to connect and upgrade to a backend, by pool.
    pub backend_connect_duration_seconds: HistogramVec,
    /// TLS handshakes, by client_auth.
    pub tls_handshakes_total: IntCounterVec,
    /// TLS handshakes that failed, by reason.
    pub tls_handshake_failures_total: IntCounterVec,
    /// Expiry of each served certificate (Unix seconds), by name.
    pub tls_certificate_expiry_timestamp_seconds: GaugeVec,
    /// Closes the gateway sent to clients, by code.
    pub closes_sent_total: IntCounterVec,
    /// Relayed connections cut because a side stopped reading (`limits.write_timeout`),
    /// by that side.
    pub write_timeouts_total: IntCounterVec,
    /// Upstream handshake failures, by pool and kind.
    pub upstream_failures_total: IntCounterVec,
    /// Plain HTTP requests forwarded to the nostr relay, by status class.
    pub http_requests_total: IntCounterVec,
    /// Client header lines the gateway refused to pass on, by reason (`underscore`).
    pub headers_dropped_total: IntCounterVec,
    /// 1 while the gateway drains.
    pub draining: Gauge,
    /// 1 when `/readyz` answers 200 (set on every scrape).
    pub ready: IntGauge,
    /// Rate limits and access lists applied, by protocol and limit.
    pub rate_limited_total: IntCounterVec,
    /// Clients remembered by the rate limiters' shared tables, by table.
    pub rate_limiter_entries: IntGaugeVec,
    /// Bans and NIP-86 blocks in force.
    pub bans_active: IntGauge,
    /// WebSockets opened as HTTP/2 streams (RFC 8441), by protocol; each is also counted
    /// in `connections_total`.
    pub http2_websockets_total: IntCounterVec,
    /// Mosaic connections opened, by version (`2025`, `2024`).
    pub mosaic_connections_total: IntCounterVec,
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

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, name, IntCounterVec::new(opts(name, help), labels))
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, name, IntGaugeVec::new(opts(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(r, name, GaugeVec::new(opts(name, help), labels))
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
        let r = Registry::new();
        let connections_active = int_gauge(
            &r,
            "connections_active",
            "Open proxied WebSocket connections",
            &["route", "protocol"],
        );
        let connections_total = counter(
            &r,
            "connections_total",
            "Proxied WebSocket connections opened",
            &["route", "protocol"],
        );
        let messages_total = counter(
            &r,
            "messages_total",
            "WebSocket messages relayed",
            &["route", "protocol", "direction"],
        );
        let bytes_total = counter(
            &r,
            "bytes_total",
            "Bytes relayed after the upgrade",
            &["route", "protocol", "direction"],
        );
        let name = "backend_connect_duration_seconds";
        let help = "Time to connect to a backend and complete its upgrade";
        let backend_connect_duration_seconds = register(
            &r,
            name,
            HistogramVec::new(
                HistogramOpts::new(name, help)
                    .namespace("mosaic_gateway")
                    .buckets(CONNECT_BUCKETS.to_vec()),
                &["pool"],
            ),
        );
        gauge(
            &r,
            "build_info",
            "Always 1; the version label says which build runs",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
        let draining = register(
            &r,
            "draining",
            Gauge::with_opts(opts("draining", "1 while the gateway drains after SIGTERM")),
        );
        let ready = register(
            &r,
            "ready",
            IntGauge::with_opts(opts(
                "ready",
                "1 when /readyz answers 200: listening, a healthy backend in every pool, not draining",
            )),
        );
        let rate_limited_total = counter(
            &r,
            "rate_limited_total",
            "Connections, messages and bytes held back, answered or refused by a rate limit or access list",
            &["protocol", "limit"],
        );
        let rate_limiter_entries = int_gauge(
            &r,
            "rate_limiter_entries",
            "Clients (addresses or keys) the rate limiters' shared tables remember",
            &["table"],
        );
        let bans_active = register(
            &r,
            "bans_active",
            IntGauge::with_opts(opts(
                "bans_active",
                "Client addresses banned now (temporary bans and NIP-86 blocks)",
            )),
        );
        let mosaic_connections_total = counter(
            &r,
            "mosaic_connections_total",
            "Mosaic connections opened, by the version their subprotocol token names",
            &["version"],
        );
        for v in crate::relay::profile::MosaicVersion::ALL {
            mosaic_connections_total.with_label_values(&[v.label()]);
        }
        let m = Metrics {
            mosaic_connections_total,
            bans_active,
            rate_limited_total,
            rate_limiter_entries,
            connections_active,
            connections_total,
            handshake_rejections_total: counter(
                &r,
                "handshake_rejections_total",
                "Upgrade requests answered with an error",
                &["route", "reason"],
            ),
            messages_total,
            bytes_total,
            protocol_violations_total: counter(
                &r,
                "protocol_violations_total",
                "Mosaic protocol violations",
                &["kind"],
            ),
            backend_up: int_gauge(
                &r,
                "backend_up",
                "1 when the backend is healthy, 0 when down",
                &["route", "pool", "backend"],
            ),
            backend_connect_duration_seconds,
            tls_handshakes_total: counter(
                &r,
                "tls_handshakes_total",
                "Completed TLS handshakes",
                &["client_auth"],
            ),
            tls_handshake_failures_total: counter(
                &r,
                "tls_handshake_failures_total",
                "TLS handshakes that failed, by reason",
                &["reason"],
            ),
            tls_certificate_expiry_timestamp_seconds: gauge(
                &r,
                "tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix seconds)",
                &["name"],
            ),
            closes_sent_total: counter(
                &r,
                "closes_sent_total",
                "Close frames the gateway sent to clients",
                &["code"],
            ),
            write_timeouts_total: counter(
                &r,
                "write_timeouts_total",
                "Relayed connections cut because a side took nothing for limits.write_timeout",
                &["side"],
            ),
            upstream_failures_total: counter(
                &r,
                "upstream_failures_total",
                "Failed upstream connects or upgrades",
                &["pool", "kind"],
            ),
            http_requests_total: counter(
                &r,
                "http_requests_total",
                "Plain HTTP requests forwarded to the nostr relay",
                &["status"],
            ),
            headers_dropped_total: counter(
                &r,
                "headers_dropped_total",
                "Client header lines never passed upstream, by reason",
                &["reason"],
            ),
            http2_websockets_total: counter(
                &r,
                "http2_websockets_total",
                "WebSockets opened as HTTP/2 streams (RFC 8441 extended CONNECT)",
                &["protocol"],
            ),
            draining,
            ready,
            registry: r,
        };
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
