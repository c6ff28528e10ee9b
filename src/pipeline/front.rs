//! The hyper path: plain HTTP on the public listener (NIP-11, CORS preflight, the relay's
//! page, passed to a healthy nostr relay of the request's route) and upgrades that arrive
//! on a keep-alive connection after a plain request.
//!
//! A connection comes here when its first request is not an upgrade; hyper starts from the
//! bytes the fast path already read.

use std::convert::Infallible;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{HttpConfig, NostrConfig};
use crate::drain::DrainState;
use crate::error::Chain;
use crate::gateway::{App, ConnInfo, Gateway};
use crate::pipeline::answer::{full, refusal, reject, Body};
use crate::pipeline::body::Watched;
use crate::pipeline::connection::{run_connection, unwrap_client};
use crate::pipeline::upgrade::{misread, prepare_extended_connect, prepare_upgrade, Admission};
use crate::protocol::handshake::{header_value, wants_websocket, ForwardedClient, UpstreamFilter};
use crate::protocol::reason::Rejection;
use crate::protocol::request_head::{header_lines, settle, Head, Target};
use crate::rate_limit::admission::Permit;
use crate::rate_limit::client_addr::real_client;
use crate::rate_limit::{Asked, Refused};
use crate::routing::{NoRoute, RouteState};
use crate::upstreams::connect::MAX_RESPONSE_HEADERS;
use crate::upstreams::pool::{Backend, Pool};
use crate::upstreams::retry::{self, across_pool, Blame, Exhausted};

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

/// The connection's place in the limits while hyper serves it: the first WebSocket takes
/// it along into its relay (a keep-alive connection's upgrade, an HTTP/2 connection's
/// first stream); otherwise it is let go when the connection ends.
pub(crate) struct PermitSlot(Mutex<Option<Permit>>);

impl PermitSlot {
    pub(crate) fn new(permit: Option<Permit>) -> Arc<Self> {
        Arc::new(PermitSlot(Mutex::new(permit)))
    }

    /// The connection's place for a WebSocket, or a new one (each further WebSocket of an
    /// HTTP/2 connection is a connection of its own for the limits).
    pub(crate) fn take(&self, app: &App, info: &ConnInfo) -> Admission {
        let permit = self.0.lock().take();
        match permit {
            Some(p) => Ok(p),
            None => app.admit(&app.gateway(), info.peer.ip()),
        }
    }
}

pub(crate) async fn serve_http<I>(
    app: Arc<App>,
    gw: Arc<Gateway>,
    io: TokioIo<I>,
    info: ConnInfo,
    admission: Admission,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &gw.config.limits;
    let over = admission.as_ref().err().copied();
    let slot = PermitSlot::new(admission.ok());
    let svc_app = app.clone();
    let svc_info = info.clone();
    let svc = service_fn(move |req| {
        let (app, info, slot) = (svc_app.clone(), svc_info.clone(), slot.clone());
        async move {
            Ok::<_, Infallible>(match over {
                // Over a connection limit: the first request hears why, then the close.
                Some(hit) => reject(&app.metrics, "", Rejection::from(hit)).into_response(),
                None => handle_request(app, info, slot, req).await,
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(over.is_none())
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
                tracing::debug!(client = %info.peer, error = %Chain(&e), "HTTP connection ended with an error");
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
    slot: Arc<PermitSlot>,
    req: Request<Incoming>,
) -> Response<Body> {
    if wants_websocket(req.headers()) {
        let admission = slot.take(&app, &info);
        upgrade(app, info, req, admission).await
    } else {
        http_passthrough(app, info, req).await
    }
}

pub(crate) async fn http_passthrough(
    app: Arc<App>,
    info: ConnInfo,
    req: Request<Incoming>,
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
    let target = Target::Uri(req.uri().clone());
    let http11 = req.version() == hyper::Version::HTTP_11;
    let meaning = match settle(req.method().as_str(), http11, &target, req.headers()) {
        Ok(m) => m,
        Err(m) => return reject(&app.metrics, "", misread(m)).into_response(),
    };
    app.metrics.dropped_underscored(meaning.underscored);
    let route = match gw
        .routes
        .select(info.sni.as_deref(), meaning.host, &meaning.path)
    {
        Ok(r) => r,
        Err(e) => return no_route(e),
    };
    let Some(nostr) = route.nostr.as_ref() else {
        return status_text(
            StatusCode::NOT_FOUND,
            "not found: this endpoint serves WebSocket upgrades only\n",
        );
    };
    let who = ForwardedClient {
        addr: client_ip,
        forwarded_chain: chain,
        tls: info.tls,
        client_key: info.client_key.as_ref().map(crate::keys::user_key_string),
    };
    let (target, prefix) = route.upstream_target(&meaning.upstream_target);
    let outgoing = Outgoing {
        host: meaning.host.map(str::to_string),
        target: target.into_owned(),
        prefix: prefix.map(str::to_string),
        who,
    };
    let response = forward(&nostr.pool, &nostr.config, &gw.config.http, outgoing, req).await;
    relay_answer(&app, &route, response)
}

/// What a plain request carries upstream besides the client's end-to-end headers.
struct Outgoing {
    /// The host the client named (sent as `Host` and `X-Forwarded-Host`).
    host: Option<String>,
    /// The normalised target, in origin form (without a stripped prefix).
    target: String,
    /// The prefix `strip_prefix` removed (sent as `X-Forwarded-Prefix`).
    prefix: Option<String>,
    who: ForwardedClient,
}

/// Rewrites a plain request for the relay `authority`: the front's target, the client's
/// end-to-end headers only, and the gateway's own identity and forwarding headers.
fn rewrite<B>(req: &mut Request<B>, out: &Outgoing, authority: &str) {
    if let Ok(uri) = out.target.parse() {
        *req.uri_mut() = uri;
    }
    let h = req.headers_mut();
    let filter = UpstreamFilter::new(&*h, true);
    let dropped: Vec<HeaderName> = h
        .keys()
        .filter(|n| filter.drops(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in dropped {
        h.remove(name);
    }
    let host = out.host.as_deref().unwrap_or(authority);
    h.insert(hyper::header::HOST, header_value(host));
    if let Some(client_host) = &out.host {
        h.insert("x-forwarded-host", header_value(client_host));
    }
    if let Some(prefix) = &out.prefix {
        h.insert("x-forwarded-prefix", header_value(prefix));
    }
    let who = &out.who;
    h.insert("x-forwarded-for", header_value(&who.forwarded_for()));
    h.insert("x-real-ip", header_value(&who.addr.to_string()));
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if who.tls { "https" } else { "http" }),
    );
    if let Some(k) = &who.client_key {
        h.insert("x-mosaic-client-key", header_value(k));
    }
}

/// Removes the relay's hop-by-hop response headers: they were about its connection to
/// the gateway, not the client's.
fn strip_hop_by_hop(resp: &mut Response<Incoming>) {
    let h = resp.headers_mut();
    let named: Vec<String> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named.iter().map(String::as_str).chain([
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]) {
        h.remove(name);
    }
}

fn status_text(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r
}

/// A status answer that ends the connection: the rest of a body the gateway stopped reading
/// is still on the socket, so the next request could not be found in it.
fn closing(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = status_text(status, text);
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The answer to a plain request no route takes.
fn no_route(e: NoRoute) -> Response<Body> {
    match e {
        NoRoute::Misdirected => status_text(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected request: this host name belongs to another route than the TLS server name (SNI)\n",
        ),
        NoRoute::Unknown => status_text(
            StatusCode::NOT_FOUND,
            "not found: no route for this host name and path\n",
        ),
    }
}

/// Why a plain request got no response from a relay.
enum RelayError {
    /// No relay of the route is healthy: 503.
    NoneHealthy,
    /// The relay (label) failed: 502.
    Failed(String, String),
    /// No response head in time: 504.
    TimedOut,
    /// The body is over `http.max_body_bytes`: 413.
    TooLarge,
    /// The client stopped sending its body for `http.response_timeout`: 408.
    BodyStalled,
}

/// Passes a plain request to a healthy relay of the pool: the connection is made through
/// the one retry loop ([`across_pool`]; a relay that cannot be connected to within the
/// connect timeout is marked down and the next is tried), then the request is sent once
/// (its body streams, [`Watched`], and cannot be sent twice), and the response head is
/// awaited for `http.response_timeout` from the end of the body.
async fn forward(
    pool: &Pool,
    config: &NostrConfig,
    http: &HttpConfig,
    out: Outgoing,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, RelayError> {
    let announced = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > http.max_body_bytes) {
        return Err(RelayError::TooLarge);
    }
    let timeout = config.connect_timeout.0;
    let tries = retry::Tries {
        pool,
        max_tries: config.max_tries,
        client_key: None,
        client_ip: out.who.addr,
    };
    let attempt = |b: Arc<Backend>| async move {
        tokio::time::timeout(timeout, open_relay(&b))
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
            .map_err(|e| Blame::Upstream((b.label.clone(), e)))
    };
    let on_fault = |b: &Backend, (_, e): &(String, String)| {
        tracing::warn!(pool = pool.name, backend = %b.label, error = %e, "nostr relay failed a plain request's connection");
    };
    let (relay, mut sender) = across_pool(tries, attempt, on_fault)
        .await
        .map_err(|e| match e {
            Exhausted::NoneHealthy => RelayError::NoneHealthy,
            Exhausted::Failed((relay, e)) | Exhausted::Answered((relay, e)) => {
                RelayError::Failed(relay, e)
            }
        })?;
    let (parts, body) = req.into_parts();
    let (body, watch) = Watched::new(body, http.max_body_bytes);
    let mut req = Request::from_parts(parts, body);
    rewrite(&mut req, &out, &relay.url.authority());
    let period = http.response_timeout.0;
    let answered = async {
        if !watch.ended_or_stalled(period).await {
            return RelayError::BodyStalled;
        }
        tokio::time::sleep(period).await;
        RelayError::TimedOut
    };
    let result = tokio::select! {
        r = sender.send_request(req) => r,
        e = answered => return Err(e),
    };
    match result {
        Ok(mut resp) => {
            strip_hop_by_hop(&mut resp);
            Ok(resp)
        }
        Err(_) if watch.over_limit() => Err(RelayError::TooLarge),
        Err(e) => Err(RelayError::Failed(
            relay.label.clone(),
            Chain(&e).to_string(),
        )),
    }
}

/// A connection to the relay `b`, ready for one request.
async fn open_relay(b: &Backend) -> Result<SendRequest<Watched>, String> {
    let tcp = TcpStream::connect((b.url.host.as_str(), b.url.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Chain(&e).to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The relay's response, or the gateway's answer for why there is none; counted in
/// `http_requests_total{status}`.
fn relay_answer(
    app: &App,
    route: &RouteState,
    result: Result<Response<Incoming>, RelayError>,
) -> Response<Body> {
    let response = match result {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(RelayError::NoneHealthy) => {
            let mut r = status_text(StatusCode::SERVICE_UNAVAILABLE, "no healthy nostr relay\n");
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        Err(RelayError::Failed(relay, e)) => {
            tracing::warn!(route = %route.name, relay = %relay, error = %e, "HTTP pass-through to the nostr relay failed");
            status_text(StatusCode::BAD_GATEWAY, "nostr relay unavailable\n")
        }
        Err(RelayError::TimedOut) => {
            status_text(StatusCode::GATEWAY_TIMEOUT, "nostr relay timed out\n")
        }
        Err(RelayError::BodyStalled) => closing(
            StatusCode::REQUEST_TIMEOUT,
            "request body stopped arriving\n",
        ),
        Err(RelayError::TooLarge) => closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than this endpoint takes\n",
        ),
    };
    let class = crate::metrics::status_class(response.status().as_u16());
    app.metrics
        .http_requests_total
        .with_label_values(&[class])
        .inc();
    response
}

/// How a WebSocket asked through hyper: a keep-alive connection's later `GET` with
/// `Upgrade: websocket` (answered 101), or an HTTP/2 extended CONNECT (RFC 8441, answered
/// 200, counted in `http2_websockets_total`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    Http11,
    ExtendedConnect,
}

/// An upgrade that arrived through hyper (a keep-alive connection's later request).
pub(crate) async fn upgrade(
    app: Arc<App>,
    info: ConnInfo,
    req: Request<Incoming>,
    admission: Admission,
) -> Response<Body> {
    hyper_websocket(app, info, req, admission, Door::Http11, ()).await
}

/// A WebSocket through either hyper door: the same upgrade as the fast path, then the
/// relay once hyper hands over the stream. `held` lives as long as the relay (an HTTP/2
/// stream's place among its connection's streams).
pub(crate) async fn hyper_websocket(
    app: Arc<App>,
    info: ConnInfo,
    mut req: Request<Incoming>,
    admission: Admission,
    door: Door,
    held: impl Send + 'static,
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
    let prepared = match door {
        Door::Http11 => prepare_upgrade(&app, &info, &head, admission).await,
        Door::ExtendedConnect => prepare_extended_connect(&app, &info, &head, admission).await,
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(answer) => return answer.into_response(),
    };
    let answer = std::mem::take(&mut prepared.accepted.response);
    let response = match door {
        Door::Http11 => switching_protocols(&answer),
        Door::ExtendedConnect => extended_connect_accepted(&answer),
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if door == Door::ExtendedConnect {
                    app.metrics
                        .http2_websockets_total
                        .with_label_values(&[prepared.accepted.protocol.label()])
                        .inc();
                }
                let (client, leftover) = unwrap_client(upgraded);
                run_connection(app, info, prepared, client, leftover).await
            }
            Err(e) => {
                tracing::debug!(conn = prepared.id, error = %Chain(&e), "client upgrade did not complete")
            }
        }
        drop(held);
    });
    response
}

/// The 200 of RFC 8441 from the upgrade's 101: the negotiated headers (subprotocol,
/// extensions, Mosaic's), without HTTP/1.1's upgrade mechanics.
pub(crate) fn extended_connect_accepted(answer: &[u8]) -> Response<Body> {
    let mut response = switching_protocols(answer);
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    for name in [
        hyper::header::UPGRADE,
        hyper::header::CONNECTION,
        hyper::header::SEC_WEBSOCKET_ACCEPT,
    ] {
        h.remove(name);
    }
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
