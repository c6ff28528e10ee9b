//! HTTP/2 on the public TLS port (ALPN `h2`): another door into the same pipeline.
//!
//! An extended CONNECT (RFC 8441) with `:protocol websocket` goes through the same upgrade
//! as an HTTP/1.1 one (routes by `:authority` and path, limits, rate limits, the upstream's
//! HTTP/1.1 handshake with a key the gateway makes) and is answered 200 instead of 101; its
//! stream then becomes the client side of the relay, which does not know the difference.
//! Every other request goes to the nostr relay as on HTTP/1.1, over HTTP/1.1 upstream.
//!
//! hyper serves the connection. Each WebSocket stream holds a connection's place in the
//! limits and metrics; `http.http2_max_streams` caps the streams of one connection, and a
//! connection with no stream for a while is closed, as an idle HTTP/1.1 keep-alive is.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::drain::DrainState;
use crate::gateway::{App, ConnInfo, Gateway};
use crate::pipeline::answer::{reject, Body};
use crate::pipeline::front::{http_passthrough, hyper_websocket, Door, PermitSlot};
use crate::pipeline::upgrade::Admission;
use crate::protocol::reason::{Reason, Rejection};

/// Bytes one stream may have queued for the client beyond what its socket took.
const MAX_SEND_BUF: usize = 64 * 1024;

/// Serves one TLS connection that chose `h2` until the client closes it, it idles, or the
/// gateway drains (then in-flight requests are answered, and WebSocket streams close as
/// their relays drain).
pub(crate) async fn serve_h2<I>(
    app: Arc<App>,
    gw: Arc<Gateway>,
    io: I,
    info: ConnInfo,
    admission: Admission,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let streams = Arc::new(Streams::default());
    let over = admission.as_ref().err().copied();
    let slot = PermitSlot::new(admission.ok());
    let svc = {
        let (app, info, streams) = (app.clone(), info.clone(), streams.clone());
        service_fn(move |req| {
            let (app, info, slot) = (app.clone(), info.clone(), slot.clone());
            let guard = Streams::open(&streams);
            async move {
                match over {
                    // Over a connection limit: every request hears why.
                    Some(hit) => Ok(reject(&app.metrics, "", Rejection::from(hit)).into_response()),
                    None => handle(app, info, slot, guard, req).await,
                }
            }
        })
    };
    let limits = &gw.config.limits;
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_concurrent_streams(gw.config.http.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        // What a stream may queue towards a client that grants window but does not read:
        // hyper's 400 KiB, times every stream, would be tens of MiB per connection.
        .max_send_buf_size(MAX_SEND_BUF)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut drain = app.drain.subscribe();
    let draining = drain.wait_for(|d| matches!(d, DrainState::Draining { .. }));
    tokio::pin!(draining);
    let idle = streams.idle(limits.handshake_timeout.0);
    tokio::pin!(idle);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %info.peer, error = %crate::error::Chain(&e), "HTTP/2 connection ended with an error");
            }
            return;
        }
        _ = &mut draining => {}
        _ = &mut idle => {
            tracing::debug!(client = %info.peer, "HTTP/2 connection idle: closed");
        }
    }
    // GOAWAY: streams already open finish (WebSockets drain on their own), no new ones.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The streams of one connection in use: open now, and opened since it started.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    seen: AtomicU64,
}

impl Streams {
    fn open(this: &Arc<Self>) -> StreamGuard {
        this.open.fetch_add(1, Ordering::Relaxed);
        this.seen.fetch_add(1, Ordering::Relaxed);
        StreamGuard(this.clone())
    }

    /// Resolves once no stream was open nor opened for a whole `period` (between one and
    /// two periods of quiet).
    async fn idle(&self, period: Duration) {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
        tick.tick().await;
        let mut last = u64::MAX;
        loop {
            tick.tick().await;
            let seen = self.seen.load(Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) == 0 && seen == last {
                return;
            }
            last = seen;
        }
    }
}

/// A stream in use: a request until its answer, a WebSocket until its relay ends.
struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    app: Arc<App>,
    info: ConnInfo,
    slot: Arc<PermitSlot>,
    guard: StreamGuard,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !as_http11_headers(&mut req) {
        let r = Rejection::bad(
            "Host names another authority than :authority",
            Reason::MALFORMED_REQUEST,
        );
        return Ok(reject(&app.metrics, "", r).into_response());
    }
    if req.method() != Method::CONNECT {
        *req.uri_mut() = origin_form(req.uri());
        *req.version_mut() = Version::HTTP_11;
        return Ok(http_passthrough(app, info, req).await);
    }
    let websocket = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !websocket {
        let r = Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is served only with :protocol websocket (RFC 8441)",
            Reason::BAD_METHOD,
        );
        return Ok(reject(&app.metrics, "", r).into_response());
    }
    let admission = slot.take(&app, &info);
    Ok(hyper_websocket(app, info, req, admission, Door::ExtendedConnect, guard).await)
}

/// Gives an HTTP/2 request the headers an HTTP/1.1 one carries: `Host` from `:authority`,
/// one `Cookie` line (RFC 9113 §8.2.3), no `TE`. The upstream hears HTTP/1.1, and the
/// rules after this (routes, forwarding) then read the same headers as on HTTP/1.1.
/// `false` when a `Host` the client sent names another authority (RFC 9113 §8.3.1: the
/// request is malformed; routing and the upstream would disagree about it).
fn as_http11_headers<B>(req: &mut Request<B>) -> bool {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let h = req.headers_mut();
    if let Some(a) = authority {
        match h.get(header::HOST) {
            Some(host) if !host.as_bytes().eq_ignore_ascii_case(a.as_bytes()) => return false,
            Some(_) => {}
            None => {
                if let Ok(v) = HeaderValue::from_str(&a) {
                    h.insert(header::HOST, v);
                }
            }
        }
    }
    h.remove(header::TE);
    join_cookies(h);
    true
}

fn join_cookies(h: &mut HeaderMap) {
    let mut values = h.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Each part was a valid value, and "; " is too.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// The request's path and query alone: HTTP/1.1 upstreams expect origin form.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_h2_request_gets_http11_headers() {
        let mut req = Request::builder()
            .uri("https://relay.example:8443/a?b=c")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .body(())
            .unwrap();
        assert!(as_http11_headers(&mut req));
        let h = req.headers();
        assert_eq!(h["host"], "relay.example:8443");
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2");
        assert!(!h.contains_key("te"));
        assert_eq!(origin_form(req.uri()), "/a?b=c");
        assert_eq!(origin_form(&Uri::from_static("https://x")), "/");
    }

    #[test]
    fn a_host_must_name_the_authority() {
        let req = |host| {
            Request::builder()
                .uri("https://a.example/")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert!(as_http11_headers(&mut req("A.example")));
        assert!(!as_http11_headers(&mut req("b.example")));
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_no_stream_open_for_a_whole_period() {
        let streams = Arc::new(Streams::default());
        let period = Duration::from_millis(20);
        let open = Streams::open(&streams);
        let waited = tokio::time::timeout(period * 10, streams.idle(period)).await;
        assert!(waited.is_err(), "idle while a stream was open");
        drop(open);
        tokio::time::timeout(Duration::from_secs(10), streams.idle(period))
            .await
            .expect("idle once the stream closed");
    }

    #[test]
    fn the_200_keeps_what_was_negotiated_and_drops_the_upgrade_mechanics() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: abc\r\nsec-websocket-protocol: mosaic2025\r\nx-mosaic-features: x\r\n\r\n";
        let r = crate::pipeline::front::extended_connect_accepted(answer);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["sec-websocket-protocol"], "mosaic2025");
        assert_eq!(h["x-mosaic-features"], "x");
        for gone in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }
}
