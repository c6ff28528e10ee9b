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

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n";

    #[test]
    fn http2_is_on_by_default_with_100_streams() {
        let c = parse(BASE).unwrap();
        assert!(c.http.http2);
        assert_eq!(c.http.http2_max_streams, 100);
        let c = parse(&format!("{BASE}http:\n  http2: false\n")).unwrap();
        assert!(!c.http.http2);
    }

    #[test]
    fn a_bad_stream_cap_names_its_key() {
        for bad in ["0", "10001"] {
            let e = parse(&format!("{BASE}http:\n  http2_max_streams: {bad}\n")).unwrap_err();
            assert!(
                e.0.iter()
                    .any(|l| l.starts_with("http.http2_max_streams: ")),
                "{e}"
            );
        }
        let e = parse(&format!("{BASE}http:\n  http2: maybe\n")).unwrap_err();
        assert!(e.to_string().contains("http2"), "{e}");
    }
}
