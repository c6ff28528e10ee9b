//! The hyper path: plain HTTP on the public listener (NIP-11, CORS preflight, the relay's
//! page, passed to a healthy nostr relay of the request's route) and upgrades that arrive
//! on a keep-alive connection after a plain request.
//!
//! A connection comes here when its first request is not an upgrade; hyper starts from the
//! bytes the fast path already read.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::answer::{full, refusal, Body};
use crate::client_addr::real_client;
use crate::connection::{run_connection, unwrap_client};
use crate::drain::DrainState;
use crate::fields::Fields;
use crate::gateway::{App, ConnInfo, Gateway};
use crate::handshake::{header_value, wants_websocket, ForwardedClient};
use crate::pool::{affinity, Backend, Pool};
use crate::rate_limit::{Asked, Refused};
use crate::request_head::{header_lines, Head, Target};
use crate::routes::{NoRoute, RouteState};
use crate::upgrade::prepare_upgrade;
use crate::upstream::MAX_RESPONSE_HEADERS;

/// A stream whose first bytes the fast path already read, handed to hyper.
pub(crate) struct Rewind<S> {
    pub(crate) pre: Bytes,
    pub(crate) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let chunk = self.pre.split_to(n);
            buf.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) async fn serve_http<I>(app: Arc<App>, gw: Arc<Gateway>, io: TokioIo<I>, info: ConnInfo)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &gw.config.limits;
    let svc_app = app.clone();
    let svc_info = info.clone();
    let svc = service_fn(move |req| handle_request(svc_app.clone(), svc_info.clone(), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout.0)
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut drain = app.drain.subscribe();
    let draining = async move {
        let _ = drain
            .wait_for(|d| matches!(d, DrainState::Draining { .. }))
            .await
            .map(|_| ());
    };
    let finished = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %info.peer, error = %e, "HTTP connection ended with an error");
            }
            true
        }
        _ = draining => false,
    };
    if !finished {
        // Answer what is in flight, then close; upgraded connections drain on their own.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

async fn handle_request(
    app: Arc<App>,
    info: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if wants_websocket(req.headers()) {
        Ok(upgrade(app, info, req).await)
    } else {
        Ok(http_passthrough(app, info, req).await)
    }
}

pub(crate) async fn http_passthrough(
    app: Arc<App>,
    info: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let gw = app.gateway();
    // Identity and origin are the gateway's to assert, on plain HTTP as on upgrades.
    let (client_ip, chain) = real_client(info.peer.ip(), req.headers(), &gw.trusted);
    if gw
        .rate
        .refuses_forwarded(info.peer.ip(), client_ip, Asked::Nostr)
    {
        return refusal(&app.metrics, Refused::Denied).into_response();
    }
    let h = req.headers_mut();
    for name in [
        "x-mosaic-client-key",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "forwarded",
    ] {
        h.remove(name);
    }
    let who = ForwardedClient {
        addr: client_ip,
        forwarded_chain: chain,
        tls: info.tls,
        client_key: None,
    };
    h.insert("x-forwarded-for", header_value(&who.forwarded_for()));
    h.insert("x-real-ip", header_value(&client_ip.to_string()));
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if info.tls { "https" } else { "http" }),
    );
    if let Some(k) = info.client_key.as_ref() {
        h.insert(
            "x-mosaic-client-key",
            header_value(&crate::keys::user_key_string(k)),
        );
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().text("host"));
    let route = match gw.routes.select(info.sni.as_deref(), host, req.uri().path()) {
        Ok(r) => r,
        Err(NoRoute::Misdirected) => {
            return status_text(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected request: this host name belongs to another route than the TLS server name (SNI)\n",
            )
        }
        Err(NoRoute::Unknown) => {
            return status_text(
                StatusCode::NOT_FOUND,
                "not found: no route for this host name and path\n",
            )
        }
    };
    let Some(nostr) = route.nostr.as_ref() else {
        return status_text(
            StatusCode::NOT_FOUND,
            "not found: this endpoint serves WebSocket upgrades only\n",
        );
    };
    let timeout = nostr.config.connect_timeout.0;
    let result = tokio::time::timeout(timeout, async {
        let (relay, tcp) =
            connect_relay(&nostr.pool, nostr.config.max_tries, client_ip, &route).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| RelayError::Failed(relay.label.clone(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| RelayError::Failed(relay.label.clone(), e.to_string()))
    })
    .await;

    match result {
        Ok(Ok(resp)) => {
            let class = crate::metrics::status_class(resp.status().as_u16());
            app.metrics
                .http_requests_total
                .with_label_values(&[class])
                .inc();
            resp.map(|b| b.boxed())
        }
        Ok(Err(RelayError::NoneHealthy)) => {
            app.metrics
                .http_requests_total
                .with_label_values(&["5xx"])
                .inc();
            let mut r = status_text(StatusCode::SERVICE_UNAVAILABLE, "no healthy nostr relay\n");
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Ok(Err(RelayError::Failed(relay, e))) => {
            tracing::warn!(route = %route.name, relay = %relay, error = %e, "HTTP pass-through to the nostr relay failed");
            app.metrics
                .http_requests_total
                .with_label_values(&["5xx"])
                .inc();
            status_text(StatusCode::BAD_GATEWAY, "nostr relay unavailable\n")
        }
        Err(_) => {
            app.metrics
                .http_requests_total
                .with_label_values(&["5xx"])
                .inc();
            status_text(StatusCode::GATEWAY_TIMEOUT, "nostr relay timed out\n")
        }
    }
}

fn status_text(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r
}

/// Why a plain request reached no relay.
enum RelayError {
    /// No relay of the route is healthy: 503.
    NoneHealthy,
    /// The relay (label) failed: 502.
    Failed(String, String),
}

/// A connection to a healthy relay of the route: up to `max_tries` relays are tried, each
/// that refuses the connection is marked down.
async fn connect_relay(
    pool: &Pool,
    max_tries: u32,
    client_ip: std::net::IpAddr,
    route: &RouteState,
) -> Result<(Arc<Backend>, TcpStream), RelayError> {
    let hash_key = affinity(pool.balance(), None, client_ip);
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut last = RelayError::NoneHealthy;
    for _ in 0..max_tries {
        let Some(b) = pool.pick(&tried, hash_key.as_ref()) else {
            break;
        };
        match TcpStream::connect((b.url.host.as_str(), b.url.port)).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok((b, tcp));
            }
            Err(e) => {
                tracing::warn!(route = %route.name, pool = pool.name, backend = %b.label, error = %e, "nostr relay refused the connection");
                pool.mark_failed(&b);
                last = RelayError::Failed(b.label.clone(), e.to_string());
                tried.push(b);
            }
        }
    }
    Err(last)
}

/// An upgrade that arrived through hyper (a keep-alive connection's later request).
pub(crate) async fn upgrade(
    app: Arc<App>,
    info: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let lines = header_lines(&parts.headers);
    let head = Head {
        method: parts.method.as_str(),
        http11: parts.version == hyper::Version::HTTP_11,
        target: Target::Uri(parts.uri.clone()),
        headers: &lines,
    };
    let mut prepared = match prepare_upgrade(&app, &info, &head).await {
        Ok(p) => p,
        Err(answer) => return answer.into_response(),
    };
    let response = switching_protocols(&std::mem::take(&mut prepared.accepted.response));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (client, leftover) = unwrap_client(upgraded);
                run_connection(app, info, prepared, client, leftover).await
            }
            Err(e) => {
                tracing::debug!(conn = prepared.id, error = %e, "client upgrade did not complete")
            }
        }
    });
    response
}

/// The 101 the upgrade built as bytes for the fast path, as a hyper response.
pub(crate) fn switching_protocols(answer: &[u8]) -> Response<Body> {
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS + 8];
    // After the status line; the upgrade wrote every line itself, so they parse.
    let headers = answer
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|i| httparse::parse_headers(&answer[i + 1..], &mut lines).ok());
    if let Some(httparse::Status::Complete((_, lines))) = headers {
        let h = response.headers_mut();
        for l in lines {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(l.name.as_bytes()),
                HeaderValue::from_bytes(l.value),
            ) {
                h.append(n, v);
            }
        }
    }
    response
}
