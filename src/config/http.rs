//! `http:`: requests on the public port that are not HTTP/1.1 WebSocket upgrades, and
//! HTTP/2 on the TLS listener.

use serde::Deserialize;

/// `http:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Offer `h2` by ALPN on the TLS listener, with extended CONNECT (RFC 8441) for
    /// WebSockets; `false`: HTTP/1.1 only.
    #[serde(default = "default_http2")]
    pub http2: bool,
    /// Concurrent streams one HTTP/2 connection may open (WebSockets and plain requests
    /// together), announced as SETTINGS_MAX_CONCURRENT_STREAMS.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            http2: default_http2(),
            http2_max_streams: default_http2_max_streams(),
        }
    }
}

fn default_http2() -> bool {
    true
}

fn default_http2_max_streams() -> u32 {
    100
}

/// Above this, one client connection could hold more streams than the default
/// `limits.max_connections_per_ip` lets one address open: a typo more likely than a plan.
const MAX_STREAMS_CEILING: u32 = 10_000;

impl HttpConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.http2_max_streams == 0 || self.http2_max_streams > MAX_STREAMS_CEILING {
            errs.push(format!(
                "http.http2_max_streams: must be from 1 to {MAX_STREAMS_CEILING} (got {})",
                self.http2_max_streams
            ));
        }
    }
}
