//! A connection's first request, and plain HTTP.
//!
//! The fast path parses the first request head itself: an upgrade is decided, answered and
//! handed to the relay without any HTTP machinery in between. Everything else (NIP-11, CORS
//! preflight, the relay's page, later requests on a keep-alive connection) is served by hyper,
//! starting from the bytes already read, and plain requests are passed to the nostr relay.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::handshake::{header_value, wants_websocket, ClientIdentity, Rejection};
use crate::listener::real_client;
use crate::relay::pump::DrainState;
use crate::server::{App, Body, ConnInfo, Gateway};

use crate::connection::{run_connection, ClientIo};
use crate::upgrade::{prepare_upgrade, upgrade};

/// A client stream the relay can take over once the upgrade is done.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_client_io(self) -> ClientIo;
}

impl ClientStream for TcpStream {
    fn into_client_io(self) -> ClientIo {
        ClientIo::Tcp(self)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_client_io(self) -> ClientIo {
        ClientIo::Tls(Box::new(self))
    }
}

/// Why a request head could not be read.
enum HeadError {
    /// Longer than `limits.max_request_header_bytes` (or too many header lines).
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
    /// The client went away.
    Closed,
}

/// Header lines accepted in one request head.
const MAX_HEADERS: usize = 96;

/// Reads one request head. Returns the request, every byte read so far and the head's
/// length (bytes after it are the client's first frames, or a body for hyper).
async fn read_request_head<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<(Request<()>, BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        buf.reserve(1024);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let req = owned_request(&parsed).ok_or(HeadError::Malformed)?;
                return Ok((req, buf, len));
            }
            Ok(httparse::Status::Partial) if buf.len() < max => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge)
            }
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

fn owned_request(p: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let version = match p.version? {
        1 => hyper::Version::HTTP_11,
        _ => hyper::Version::HTTP_10,
    };
    let mut req = Request::builder()
        .method(hyper::Method::from_bytes(p.method?.as_bytes()).ok()?)
        .uri(p.path?.parse::<hyper::Uri>().ok()?)
        .version(version)
        .body(())
        .ok()?;
    let h = req.headers_mut();
    h.reserve(p.headers.len());
    for x in p.headers.iter() {
        h.append(
            hyper::header::HeaderName::from_bytes(x.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(x.value).ok()?,
        );
    }
    Some(req)
}

/// A stream whose first bytes the fast path already read, handed to hyper.
struct Rewind<S> {
    pre: Bytes,
    inner: S,
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

/// The fast path for a connection's first request: an upgrade is parsed, decided and
/// answered here and the connection relayed in this same task, with no HTTP machinery in
/// between; anything else (NIP-11, CORS, the relay's page) goes to hyper.
pub(crate) async fn serve_first_request<S: ClientStream>(
    app: Arc<App>,
    gw: Arc<Gateway>,
    mut s: S,
    info: ConnInfo,
    deadline: tokio::time::Instant,
) {
    let max = gw.config.limits.max_request_header_bytes;
    let head = match tokio::time::timeout_at(deadline, read_request_head(&mut s, max)).await {
        Ok(h) => h,
        Err(_) => {
            tracing::debug!(client = %info.peer, "request head not complete in time: closed");
            return;
        }
    };
    let refuse = |answer: Answer| answer.to_bytes(true);
    let (req, mut buf, head_len) = match head {
        Ok(h) => h,
        Err(HeadError::Closed) => return,
        Err(e) => {
            let r = match e {
                HeadError::TooLarge => rejection(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                    "head_too_large",
                ),
                _ => rejection(
                    StatusCode::BAD_REQUEST,
                    "malformed HTTP request",
                    "malformed_request",
                ),
            };
            let _ = s.write_all(&refuse(reject(&app, r))).await;
            let _ = s.shutdown().await;
            return;
        }
    };
    if !wants_websocket(req.headers()) {
        let io = Rewind {
            pre: buf.freeze(),
            inner: s,
        };
        return Box::pin(serve_http(app, gw, TokioIo::new(io), info)).await;
    }
    let leftover = buf.split_off(head_len);
    drop(buf);
    // Boxed, like the relay below: the task that lives as long as the connection should not
    // carry the set-up's (or hyper's) state machine around.
    match Box::pin(prepare_upgrade(&app, info, &req)).await {
        Err(answer) => {
            let _ = s.write_all(&refuse(answer)).await;
            let _ = s.shutdown().await;
        }
        Ok(mut prepared) => {
            let answer = Answer {
                status: StatusCode::SWITCHING_PROTOCOLS,
                headers: std::mem::take(&mut prepared.accepted.response),
                body: Bytes::new(),
            };
            drop(req);
            if s.write_all(&answer.to_bytes(false)).await.is_err() {
                return;
            }
            drop(answer);
            // The relay gets a task of its own, sized for relaying only: this one, sized for
            // TLS and the set-up, ends here and gives its memory back.
            tokio::spawn(run_connection(
                app,
                info,
                prepared,
                s.into_client_io(),
                leftover,
            ));
        }
    }
}

async fn serve_http<I>(app: Arc<App>, gw: Arc<Gateway>, io: TokioIo<I>, info: ConnInfo)
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

pub(crate) fn reject(app: &App, r: Rejection) -> Answer {
    app.metrics
        .handshake_rejections_total
        .with_label_values(&[r.label])
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

pub(crate) fn rejection(
    status: StatusCode,
    reason: &'static str,
    label: &'static str,
) -> Rejection {
    Rejection {
        status,
        reason,
        label,
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
    let who = ClientIdentity {
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
