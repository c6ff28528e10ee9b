//! The hyper path: plain HTTP on the public listener (NIP-11, CORS preflight, the relay's
//! page, passed to the nostr relay) and upgrades that arrive on a keep-alive connection
//! after a plain request.
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

use crate::answer::{full, refusal};
use crate::client_addr::real_client;
use crate::connection::{run_connection, unwrap_client};
use crate::drain::DrainState;
use crate::gateway::{App, Body, ConnInfo, Gateway};
use crate::handshake::{header_value, wants_websocket, ForwardedClient};
use crate::rate_limit::{Asked, Refused};
use crate::upgrade::prepare_upgrade;

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
    let svc = service_fn(move |req| handle_request(svc_app.clone(), info, req));
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

async fn http_passthrough(
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
    let Some(url) = gw.nostr.clone() else {
        let mut r = Response::new(full(
            "not found: this endpoint serves WebSocket upgrades only\n",
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let timeout = gw.config.nostr_connect_timeout();
    let result = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let class = match status {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "5xx",
            };
            app.metrics
                .http_requests_total
                .with_label_values(&[class])
                .inc();
            resp.map(|b| b.boxed())
        }
        Ok(Err(e)) => {
            tracing::warn!(relay = %url, error = %e, "HTTP pass-through to the nostr relay failed");
            app.metrics
                .http_requests_total
                .with_label_values(&["5xx"])
                .inc();
            let mut r = Response::new(full("nostr relay unavailable\n"));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
        Err(_) => {
            app.metrics
                .http_requests_total
                .with_label_values(&["5xx"])
                .inc();
            let mut r = Response::new(full("nostr relay timed out\n"));
            *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            r
        }
    }
}

/// An upgrade that arrived through hyper (a keep-alive connection's later request).
pub(crate) async fn upgrade(
    app: Arc<App>,
    info: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let view = Request::from_parts(parts, ());
    let mut prepared = match prepare_upgrade(&app, info, &view).await {
        Ok(p) => p,
        Err(answer) => return answer.into_response(),
    };
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = std::mem::take(&mut prepared.accepted.response);
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
