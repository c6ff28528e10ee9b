//! The HTTP answers the gateway writes itself: refusals of an upgrade ([`Rejection`], counted
//! in `handshake_rejections_total`) and the 101, written through hyper or straight onto the
//! socket on the upgrade fast path.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::metrics::Metrics;
use crate::protocol::reason::{Reason, Rejection};
use crate::rate_limit::admission::LimitHit;
use crate::rate_limit::Refused;

/// Response bodies of the public listener.
pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

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
