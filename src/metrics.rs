//! Prometheus metrics, all under `mosaic_gateway_`.
//!
//! No label ever carries a client address or key. The relay loop keeps its own counters per
//! connection and folds them in here when the connection ends, so the hot path touches no
//! shared atomics per message.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::relay::mosaic::Direction;

/// One protocol's connection and traffic series, resolved from their vectors once.
///
/// Every connection updates six of them; looking each up by label would hash the labels
/// under the vector's lock, from every worker thread, on every connection.
pub struct ProtocolMetrics {
    /// `connections_active{protocol}`.
    pub connections_active: IntGauge,
    /// `connections_total{protocol}`.
    pub connections_total: IntCounter,
    /// `messages_total{protocol,direction}`: client to upstream, then upstream to client.
    pub messages: [IntCounter; 2],
    /// `bytes_total{protocol,direction}`, in the same order.
    pub bytes: [IntCounter; 2],
}

impl ProtocolMetrics {
    fn resolve(
        protocol: &str,
        active: &IntGaugeVec,
        total: &IntCounterVec,
        messages: &IntCounterVec,
        bytes: &IntCounterVec,
    ) -> Self {
        let up = Direction::ClientToUpstream.label();
        let down = Direction::UpstreamToClient.label();
        ProtocolMetrics {
            connections_active: active.with_label_values(&[protocol]),
            connections_total: total.with_label_values(&[protocol]),
            messages: [
                messages.with_label_values(&[protocol, up]),
                messages.with_label_values(&[protocol, down]),
            ],
            bytes: [
                bytes.with_label_values(&[protocol, up]),
                bytes.with_label_values(&[protocol, down]),
            ],
        }
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Open proxied connections by protocol.
    pub connections_active: IntGaugeVec,
    /// Proxied connections opened, by protocol.
    pub connections_total: IntCounterVec,
    /// Upgrades answered with an error, by reason.
    pub handshake_rejections_total: IntCounterVec,
    /// Messages relayed, by protocol and direction.
    pub messages_total: IntCounterVec,
    /// Bytes relayed (frames included), by protocol and direction.
    pub bytes_total: IntCounterVec,
    /// Mosaic rule violations, by kind.
    pub protocol_violations_total: IntCounterVec,
    /// 1 when a backend is healthy, by pool and backend.
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
    /// Upstream handshake failures, by pool and kind.
    pub upstream_failures_total: IntCounterVec,
    /// Plain HTTP requests forwarded to the nostr relay, by status class.
    pub http_requests_total: IntCounterVec,
    /// 1 while the gateway drains.
    pub draining: Gauge,
    /// Rate limits and access lists applied, by protocol and limit.
    pub rate_limited_total: IntCounterVec,
    /// Clients remembered by the rate limiters' shared tables, by table.
    pub rate_limiter_entries: IntGaugeVec,
    /// The Mosaic connections' series.
    pub mosaic: ProtocolMetrics,
    /// The nostr connections' series.
    pub nostr: ProtocolMetrics,
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
pub const RATE_LIMITED_SERIES: [(&str, &str); 11] = [
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
];

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
            &["protocol"],
        );
        let connections_total = counter(
            &r,
            "connections_total",
            "Proxied WebSocket connections opened",
            &["protocol"],
        );
        let messages_total = counter(
            &r,
            "messages_total",
            "WebSocket messages relayed",
            &["protocol", "direction"],
        );
        let bytes_total = counter(
            &r,
            "bytes_total",
            "Bytes relayed after the upgrade",
            &["protocol", "direction"],
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
        // Resolving the children also makes both protocols' series visible from the start.
        let [mosaic, nostr] = ["mosaic", "nostr"].map(|p| {
            ProtocolMetrics::resolve(
                p,
                &connections_active,
                &connections_total,
                &messages_total,
                &bytes_total,
            )
        });
        let rate_limited_total = counter(
            &r,
            "rate_limited_total",
            "Connections, messages and bytes held back, answered or refused by a rate limit or access list",
            &["protocol", "limit"],
        );
        for (protocol, limit) in RATE_LIMITED_SERIES {
            rate_limited_total.with_label_values(&[protocol, limit]);
        }
        let rate_limiter_entries = int_gauge(
            &r,
            "rate_limiter_entries",
            "Clients (addresses or keys) the rate limiters' shared tables remember",
            &["table"],
        );
        for table in RATE_LIMITER_TABLES {
            rate_limiter_entries.with_label_values(&[table]);
        }
        Metrics {
            rate_limited_total,
            rate_limiter_entries,
            connections_active,
            connections_total,
            handshake_rejections_total: counter(
                &r,
                "handshake_rejections_total",
                "Upgrade requests answered with an error",
                &["reason"],
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
                &["pool", "backend"],
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
            draining,
            registry: r,
            mosaic,
            nostr,
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
