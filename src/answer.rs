//! The HTTP answers the gateway writes itself: refusals of an upgrade ([`Rejection`], counted
//! in `handshake_rejections_total`) and the 101, written through hyper or straight onto the
//! socket on the upgrade fast path.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::admission::LimitHit;
use crate::metrics::Metrics;
use crate::rate_limit::Refused;

/// Response bodies of the public listener.
pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Declares every `handshake_rejections_total{reason}` label as a [`Reason`] constant and
/// lists them all in [`Reason::ALL`], from one table, so the series that exist from the
/// first scrape cannot drift from the reasons the gateway gives.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $label:literal,)*) => {
        impl Reason {
            $($(#[$doc])* pub const $name: Reason = Reason($label);)*
            /// Every label, in declaration order.
            pub const ALL: &'static [&'static str] = &[$($label),*];
        }
    };
}

/// A `handshake_rejections_total{reason}` label; only the constants below exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason(&'static str);

impl Reason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        self.0
    }
}

reasons! {
    /// Not a GET.
    BAD_METHOD = "bad_method",
    /// Not HTTP/1.1.
    BAD_VERSION = "bad_version",
    /// `Connection` lacks `Upgrade`.
    NO_CONNECTION_UPGRADE = "no_connection_upgrade",
    /// `Sec-WebSocket-Version` is not 13.
    BAD_WS_VERSION = "bad_ws_version",
    /// `Sec-WebSocket-Key` missing or malformed.
    BAD_KEY = "bad_key",
    /// SIGTERM started the drain.
    DRAINING = "draining",
    /// Over `limits.max_connections`.
    MAX_CONNECTIONS = "max_connections",
    /// Over `limits.max_connections_per_ip`.
    MAX_CONNECTIONS_PER_IP = "max_connections_per_ip",
    /// Neither Mosaic nor a served nostr relay.
    NO_ROUTE = "no_route",
    /// No healthy backend in the pool.
    NO_HEALTHY_BACKEND = "no_healthy_backend",
    /// Every upstream tried refused or failed the upgrade.
    UPSTREAM_FAILED = "upstream_failed",
    /// The upstream answered the upgrade with a 4xx, passed on to the client (the
    /// upstream stays healthy).
    UPSTREAM_REFUSED = "upstream_refused",
    /// The relay picked a subprotocol the client did not offer.
    UPSTREAM_BAD_PROTOCOL = "upstream_bad_protocol",
    /// A trusted peer sent a malformed PROXY header (the connection is closed).
    BAD_PROXY_HEADER = "bad_proxy_header",
    /// The request head exceeded `limits.max_request_header_bytes`.
    HEAD_TOO_LARGE = "head_too_large",
    /// No `Host`, two, or one that an absolute-form target contradicts (RFC 9112 3.2).
    BAD_HOST = "bad_host",
    /// A target form not served on this method, or a path escape that is refused.
    BAD_TARGET = "bad_target",
    /// The request head did not parse.
    MALFORMED_REQUEST = "malformed_request",
    /// The client's address is in `access.deny` or outside a non-empty `access.allow`.
    ACCESS_DENIED = "access_denied",
    /// Over `rate_limits.connections_per_ip` (429 with Retry-After).
    CONNECTIONS_PER_IP = "connections_per_ip",
    /// Over the matched route's `limits.max_connections`.
    ROUTE_MAX_CONNECTIONS = "route_max_connections",
    /// No route matches the Host and path, and there is no default route.
    UNKNOWN_ROUTE = "unknown_route",
    /// Over TLS, the Host names another route than the SNI did (421).
    MISDIRECTED = "misdirected",
    /// A Mosaic 2025 HELLO header the gateway must read is malformed.
    BAD_HELLO = "bad_hello",
}

/// Why an upgrade request is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// One-line reason, sent as the body.
    pub reason: &'static str,
    /// The `handshake_rejections_total{reason}` label.
    pub label: &'static str,
}

impl Rejection {
    /// A refusal with this status, one-line reason and metric label.
    pub(crate) fn new(status: StatusCode, reason: &'static str, label: Reason) -> Self {
        Rejection {
            status,
            reason,
            label: label.label(),
        }
    }

    /// A 400 refusal.
    pub(crate) fn bad(reason: &'static str, label: Reason) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, reason, label)
    }
}

impl From<LimitHit> for Rejection {
    fn from(hit: LimitHit) -> Self {
        match hit {
            LimitHit::Global => Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
                Reason::MAX_CONNECTIONS,
            ),
            LimitHit::PerIp => Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
                Reason::MAX_CONNECTIONS_PER_IP,
            ),
        }
    }
}

/// A whole body in one piece.
pub(crate) fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTTP answer the gateway writes itself: through hyper, or straight onto the socket
/// on the upgrade fast path.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(full(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }

    /// The serialized answer; `close` adds `Connection: close` (the fast path closes after
    /// a refusal).
    pub(crate) fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.status != StatusCode::SWITCHING_PROTOCOLS {
            out.extend_from_slice(format!("content-length: {}\r\n", self.body.len()).as_bytes());
            if close {
                out.extend_from_slice(b"connection: close\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The answer to a client the rate limits or access lists refuse before routing: 403, or
/// 429 with `Retry-After` in whole seconds (rounded up: a client that waits that long gets
/// a token). Counted in `handshake_rejections_total{reason}` too.
pub(crate) fn refusal(metrics: &Metrics, why: Refused) -> Answer {
    match why {
        Refused::Denied => reject(
            metrics,
            "",
            Rejection::new(
                StatusCode::FORBIDDEN,
                "this address is not served here",
                Reason::ACCESS_DENIED,
            ),
        ),
        Refused::TooManyConnections(wait) => {
            let mut answer = reject(
                metrics,
                "",
                Rejection::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many new connections from this address",
                    Reason::CONNECTIONS_PER_IP,
                ),
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            answer
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            answer
        }
    }
}

/// Makes every `handshake_rejections_total{route,reason}` series of `route` exist with 0
/// (`""`: refusals before a route is known).
pub(crate) fn preset_metrics(metrics: &Metrics, route: &str) {
    for r in Reason::ALL {
        metrics
            .handshake_rejections_total
            .with_label_values(&[route, r]);
    }
}

/// The answer to a refusal, counted in `handshake_rejections_total{route,reason}` (`route`
/// empty when the request was refused before it had one).
pub(crate) fn reject(metrics: &Metrics, route: &str, r: Rejection) -> Answer {
    metrics
        .handshake_rejections_total
        .with_label_values(&[route, r.label])
        .inc();
    let mut headers = HeaderMap::new();
    let h = &mut headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match r.status {
        StatusCode::UPGRADE_REQUIRED => {
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    Answer {
        status: r.status,
        headers,
        body: Bytes::from(format!("{}\n", r.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn reason_labels_are_distinct_metric_labels() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r), "{r} twice");
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
        assert!(Reason::ALL.contains(&Reason::NO_HEALTHY_BACKEND.label()));
    }
}
