//! `http:`: requests on the public port that are not HTTP/1.1 WebSocket upgrades, and
//! HTTP/2 on the TLS listener.

use serde::Deserialize;

use super::DurationStr;

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
    /// From the end of a plain request's body to the relay's response head (504 after).
    #[serde(default = "default_response_timeout")]
    pub response_timeout: DurationStr,
    /// Larger request bodies are refused with 413 (announced by `Content-Length`, or
    /// counted while they stream).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            http2: default_http2(),
            http2_max_streams: default_http2_max_streams(),
            response_timeout: default_response_timeout(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

fn default_http2() -> bool {
    true
}

fn default_http2_max_streams() -> u32 {
    100
}

fn default_response_timeout() -> DurationStr {
    DurationStr(std::time::Duration::from_secs(60))
}

fn default_max_body_bytes() -> u64 {
    100 * 1024 * 1024
}

/// Above this, one client connection could hold more streams than the default
/// `limits.max_connections_per_ip` lets one address open: a typo more likely than a plan.
const MAX_STREAMS_CEILING: u32 = 10_000;

impl HttpConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.response_timeout.0.is_zero() {
            errs.push("http.response_timeout: must be more than 0".into());
        }
        if self.max_body_bytes == 0 {
            errs.push("http.max_body_bytes: must be at least 1".into());
        }
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
