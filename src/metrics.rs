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
    /// Closes the gateway sent to clients, by code.
    pub closes_sent_total: IntCounterVec,
    /// Upstream handshake failures, by pool and kind.
    pub upstream_failures_total: IntCounterVec,
    /// Plain HTTP requests forwarded to the nostr relay, by status class.
    pub http_requests_total: IntCounterVec,
    /// 1 while the gateway drains.
    pub draining: Gauge,
    /// The Mosaic connections' series.
    pub mosaic: ProtocolMetrics,
    /// The nostr connections' series.
    pub nostr: ProtocolMetrics,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("mosaic_gateway"), labels)
        .unwrap_or_else(|e| panic!("metric {name} definition: {e}"));
    // Names are fixed at compile time; a clash would be a programming error caught by tests.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let connections_active = IntGaugeVec::new(
            Opts::new("connections_active", "Open proxied WebSocket connections")
                .namespace("mosaic_gateway"),
            &["protocol"],
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        let _ = r.register(Box::new(connections_active.clone()));
        let backend_up = IntGaugeVec::new(
            Opts::new("backend_up", "1 when the backend is healthy, 0 when down")
                .namespace("mosaic_gateway"),
            &["pool", "backend"],
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        let _ = r.register(Box::new(backend_up.clone()));
        let backend_connect_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "backend_connect_duration_seconds",
                "Time to connect to a backend and complete its upgrade",
            )
            .namespace("mosaic_gateway")
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["pool"],
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        let _ = r.register(Box::new(backend_connect_duration_seconds.clone()));
        let build_info = GaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version label says which build runs",
            )
            .namespace("mosaic_gateway"),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        let _ = r.register(Box::new(build_info));
        let draining = Gauge::with_opts(
            Opts::new("draining", "1 while the gateway drains after SIGTERM")
                .namespace("mosaic_gateway"),
        )
        .unwrap_or_else(|e| panic!("metric definition: {e}"));
        let _ = r.register(Box::new(draining.clone()));
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
        Metrics {
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
            backend_up,
            backend_connect_duration_seconds,
            tls_handshakes_total: counter(
                &r,
                "tls_handshakes_total",
                "Completed TLS handshakes",
                &["client_auth"],
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
