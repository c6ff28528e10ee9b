//! Why an upgrade is refused: the `handshake_rejections_total{reason}` labels, one table,
//! read by the rules that refuse and by the metrics that list every series up front.

use hyper::StatusCode;

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
