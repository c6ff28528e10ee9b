//! The public listener: accept, TLS, HTTP/1.1, routing and the upgrade into a relayed
//! connection.
//!
//! The order is fixed by the design: the upstream (backend or relay) must accept the
//! WebSocket upgrade before the client hears 101, so every failure before that point is an
//! HTTP status the client understands, and retries on another backend stay invisible.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, UpstreamUrl};
use crate::handshake::{
    feature_list, header_value, negotiate_features, offered_protocols, upstream_request_head,
    validate_upgrade, wants_websocket, ClientIdentity, Rejection, X_MOSAIC_FEATURES,
};
use crate::listener::{real_client, LimitHit, Limits, Permit, TrustedProxies};
use crate::metrics::Metrics;
use crate::pool::{Backend, BackendGuard, Pool};
use crate::relay::mosaic::Direction;
use crate::relay::pump::{
    relay, Buffered, DrainSignal, DrainState, PumpOptions, RelayReport, Source, Traffic,
};
use crate::relay::tracker::MosaicRules;
use crate::route::{route, Route};
use crate::tls::TlsTerminator;
use crate::upstream::{connect_and_upgrade, Upgraded, UpstreamStream};

/// Response bodies of the public listener.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// One configuration generation: what new connections use. A reload builds a new one;
/// open connections keep the one they started with.
pub struct Gateway {
    /// The validated config.
    pub config: Config,
    /// The pool for every Mosaic client.
    pub pool: Arc<Pool>,
    /// The pool for TLS-authenticated clients, when configured.
    pub auth_pool: Option<Arc<Pool>>,
    /// The nostr relay, when served.
    pub nostr: Option<UpstreamUrl>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted: TrustedProxies,
    /// TLS termination, when configured.
    pub tls: Option<Arc<TlsTerminator>>,
}

impl Gateway {
    /// Builds a generation from a validated config (loads the key, builds the pools).
    /// `dns:` backends join once the discovery task resolves them (`runtime::start` does a
    /// first lookup before serving).
    pub fn build(config: Config, metrics: &Arc<Metrics>) -> Result<Gateway, String> {
        Gateway::assemble(config, None, metrics)
    }

    /// Builds the next generation on reload. The pools are kept and reconfigured with the
    /// new backend list and balancing, so backends that stay keep their health and
    /// connection counts, DNS answers for names still listed stay, and removed backends
    /// drain (open connections keep running, no new ones). Nothing changes if it fails.
    pub fn rebuild(
        config: Config,
        old: &Gateway,
        metrics: &Arc<Metrics>,
    ) -> Result<Gateway, String> {
        Gateway::assemble(config, Some(old), metrics)
    }

    fn assemble(
        config: Config,
        old: Option<&Gateway>,
        metrics: &Arc<Metrics>,
    ) -> Result<Gateway, String> {
        // Everything that can fail comes first: the old generation must stay untouched
        // when a reload is refused.
        let tls = match &config.tls {
            Some(t) => {
                let key = crate::keys::load_signing_key(&t.key_file).map_err(|e| e.to_string())?;
                let term = TlsTerminator::new(&key, t.certificate, t.client_auth, t.min_version)
                    .map_err(|e| format!("tls: {e}"))?;
                Some(Arc::new(term))
            }
            None => None,
        };
        let m = &config.mosaic;
        let pool = match old {
            Some(o) => {
                o.pool.reconfigure(&m.backends, m.balance);
                o.pool.clone()
            }
            None => Arc::new(Pool::from_config(
                "default",
                &m.backends,
                m.balance,
                metrics.clone(),
            )),
        };
        let auth_pool = match (
            old.and_then(|o| o.auth_pool.clone()),
            m.authenticated_backends.is_empty(),
        ) {
            (Some(p), false) => {
                p.reconfigure(&m.authenticated_backends, m.balance);
                Some(p)
            }
            (Some(p), true) => {
                // The pool goes away: its backends drain like removed ones.
                p.reconfigure(&[], m.balance);
                None
            }
            (None, false) => Some(Arc::new(Pool::from_config(
                "authenticated",
                &m.authenticated_backends,
                m.balance,
                metrics.clone(),
            ))),
            (None, true) => None,
        };
        Ok(Gateway {
            nostr: config.nostr_upstream(),
            trusted: TrustedProxies::new(&config.forwarded.trusted_proxies),
            tls,
            pool,
            auth_pool,
            config,
        })
    }

    /// Every pool, for health checks and readiness.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v = vec![self.pool.clone()];
        v.extend(self.auth_pool.clone());
        v
    }
}

/// Process-wide state shared by the listeners, the admin endpoints and shutdown.
pub struct App {
    current: RwLock<Arc<Gateway>>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Connection counters.
    pub limits: Arc<Limits>,
    /// Drain broadcast to every relayed connection.
    pub drain: watch::Sender<DrainState>,
    /// Set once the public listener is bound.
    pub listening: AtomicBool,
    /// Drain signals of the relayed connections.
    pub relayed: Relayed,
    next_id: AtomicU64,
}

impl App {
    /// Wraps a first generation.
    pub fn new(gateway: Gateway, metrics: Arc<Metrics>) -> Arc<App> {
        let (drain, _) = watch::channel(DrainState::Running);
        Arc::new(App {
            current: RwLock::new(Arc::new(gateway)),
            metrics,
            limits: Arc::new(Limits::default()),
            drain,
            listening: AtomicBool::new(false),
            relayed: Relayed::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// The generation new connections use.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Makes `g` the generation for new connections.
    pub fn swap(&self, g: Gateway) {
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(g);
        }
    }

    /// Whether SIGTERM started the drain.
    pub fn is_draining(&self) -> bool {
        matches!(*self.drain.borrow(), DrainState::Draining { .. })
    }

    /// Readiness: listening, a healthy backend in every pool, not draining.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        if !self.listening.load(Ordering::Relaxed) {
            return Err("listener not bound yet".into());
        }
        for p in self.gateway().pools() {
            if !p.has_healthy() {
                return Err(format!("no healthy backend in pool {}", p.name));
            }
        }
        Ok(())
    }
}

/// The drain signal of every relayed connection, so the drain reaches each one without the
/// connections polling anything shared.
#[derive(Default)]
pub struct Relayed {
    draining: Mutex<Option<tokio::time::Instant>>,
    conns: Mutex<HashMap<u64, Arc<DrainSignal>>>,
}

impl Relayed {
    fn register(&self, id: u64) -> Arc<DrainSignal> {
        let signal = Arc::new(DrainSignal::default());
        lock(&self.conns).insert(id, signal.clone());
        // Checked after inserting: a drain that started meanwhile has either seen this
        // connection in the map or is seen here.
        if let Some(close_by) = *lock(&self.draining) {
            signal.fire(close_by);
        }
        signal
    }

    fn unregister(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Tells every relayed connection, present and future, to drain by `close_by`.
    pub fn drain_all(&self, close_by: tokio::time::Instant) {
        *lock(&self.draining) = Some(close_by);
        for s in lock(&self.conns).values() {
            s.fire(close_by);
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the gateway knows about one accepted connection before HTTP starts.
#[derive(Clone, Copy)]
struct ConnInfo {
    peer: SocketAddr,
    tls: bool,
    client_key: Option<[u8; 32]>,
}

/// Accepts connections until the drain starts. `tls` overrides the config's TLS setting
/// for this listener (the `dev` stack serves ws:// and wss:// side by side).
pub async fn serve(app: Arc<App>, listener: TcpListener, tls: Option<Arc<TlsTerminator>>) {
    let mut drain = app.drain.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let app = app.clone();
                    let tls = tls.clone();
                    tokio::spawn(handle_connection(app, tcp, peer, tls));
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = drain.changed() => {
                if r.is_err() || matches!(*drain.borrow(), DrainState::Draining { .. }) {
                    break;
                }
            }
        }
    }
    tracing::info!("public listener closed");
}

async fn handle_connection(
    app: Arc<App>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
) {
    let _ = tcp.set_nodelay(true);
    let gw = app.gateway();
    // The PROXY header, TLS and the request head share one deadline.
    let deadline = tokio::time::Instant::now() + gw.config.limits.handshake_timeout.0;
    let mut peer = peer;
    if gw.config.forwarded.proxy_protocol && gw.trusted.contains(peer.ip()) {
        match tokio::time::timeout_at(deadline, read_proxy_header(&tcp)).await {
            Ok(Ok(Some(source))) => peer = source,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::info!(client = %peer, error = %e, "bad PROXY header: connection closed");
                app.metrics
                    .handshake_rejections_total
                    .with_label_values(&["bad_proxy_header"])
                    .inc();
                return;
            }
            Err(_) => {
                tracing::info!(client = %peer, "no PROXY header in time: connection closed");
                return;
            }
        }
    }
    let Some(tls) = tls.or_else(|| gw.tls.clone()) else {
        let info = ConnInfo {
            peer,
            tls: false,
            client_key: None,
        };
        return serve_first_request(app, gw, tcp, info, deadline).await;
    };
    match tokio::time::timeout_at(deadline, Box::pin(tls.accept(tcp))).await {
        Ok(Ok((stream, client_key))) => {
            let label = crate::tls::client_auth_label(client_key.as_ref());
            app.metrics
                .tls_handshakes_total
                .with_label_values(&[label])
                .inc();
            tracing::info!(client = %peer, client_auth = label, "TLS handshake");
            let info = ConnInfo {
                peer,
                tls: true,
                client_key,
            };
            serve_first_request(app, gw, stream, info, deadline).await;
        }
        Ok(Err(e)) => tracing::info!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::info!(client = %peer, "TLS handshake timed out"),
    }
}

/// Reads the PROXY v1/v2 header a trusted load balancer sends before anything else and
/// returns the original client's address (`None` for LOCAL/UNKNOWN: the peer is the client).
///
/// It peeks first and then consumes exactly the header, so the socket stays a plain
/// `TcpStream` for TLS and HTTP (and for the relay's zero-copy unwrapping).
async fn read_proxy_header(tcp: &TcpStream) -> Result<Option<SocketAddr>, String> {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER_LEN};
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the PROXY header".into());
        }
        match parse(&buf[..n]).map_err(|e| e.to_string())? {
            Parsed::Complete { header, consumed } => {
                let mut sink = vec![0u8; consumed];
                let mut got = 0;
                while got < consumed {
                    tcp.readable().await.map_err(|e| e.to_string())?;
                    match tcp.try_read(&mut sink[got..]) {
                        Ok(0) => return Err("connection closed inside the PROXY header".into()),
                        Ok(k) => got += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                return Ok(header.source);
            }
            Parsed::Incomplete => {
                if n == seen {
                    // peek returns at once while the partial header sits in the buffer;
                    // wait a little for the rest instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen = n;
            }
        }
    }
}

/// A client stream the relay can take over once the upgrade is done.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
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
async fn serve_first_request<S: ClientStream>(
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

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTTP answer the gateway writes itself: through hyper, or straight onto the socket
/// on the upgrade fast path.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(full(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }

    /// The serialized answer; `close` adds `Connection: close` (the fast path closes after
    /// a refusal).
    fn to_bytes(&self, close: bool) -> Vec<u8> {
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

fn reject(app: &App, r: Rejection) -> Answer {
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

fn rejection(status: StatusCode, reason: &'static str, label: &'static str) -> Rejection {
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

/// The protocol a relayed connection speaks, for metrics and logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Mosaic,
    Nostr,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Mosaic => "mosaic",
            Protocol::Nostr => "nostr",
        }
    }
}

/// Everything the relay task needs once the client's upgrade completes.
struct Accepted {
    protocol: Protocol,
    subprotocol: Option<String>,
    upstream: Upgraded,
    upstream_label: String,
    backend: Option<BackendGuard>,
    /// The 101's headers for the client.
    response: HeaderMap,
}

/// An upgrade the upstream accepted, waiting for the client's side to switch protocols.
struct Prepared {
    id: u64,
    who: ClientIdentity,
    accepted: Accepted,
    opts: PumpOptions,
    permit: Permit,
}

/// Decides an upgrade and completes the upstream's side of it: `Ok` when the upstream
/// answered 101 (the client is told next), `Err` with the HTTP answer otherwise.
async fn prepare_upgrade(
    app: &Arc<App>,
    info: ConnInfo,
    req: &Request<()>,
) -> Result<Box<Prepared>, Answer> {
    let gw = app.gateway();
    let key = match validate_upgrade(req) {
        Ok(k) => k,
        Err(r) => return Err(reject(app, r)),
    };
    if app.is_draining() {
        return Err(reject(
            app,
            rejection(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway is shutting down",
                "draining",
            ),
        ));
    }
    let (client_ip, chain) = real_client(info.peer.ip(), req.headers(), &gw.trusted);
    let limits = &gw.config.limits;
    let permit = match app.limits.try_acquire(
        client_ip,
        limits.max_connections,
        limits.max_connections_per_ip,
    ) {
        Ok(p) => p,
        Err(LimitHit::Global) => {
            return Err(reject(
                app,
                rejection(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections",
                    "max_connections",
                ),
            ))
        }
        Err(LimitHit::PerIp) => {
            return Err(reject(
                app,
                rejection(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                    "max_connections_per_ip",
                ),
            ))
        }
    };
    let who = ClientIdentity {
        addr: client_ip,
        forwarded_chain: chain,
        tls: info.tls,
        client_key: info.client_key.as_ref().map(crate::keys::user_key_string),
    };
    let offered = offered_protocols(req.headers());
    let accepted = match route(&offered, &gw.config.mosaic.subprotocols, gw.nostr.is_some()) {
        Route::Refuse => Err(rejection(
            StatusCode::BAD_REQUEST,
            "no Mosaic subprotocol offered and this endpoint serves no nostr relay",
            "no_route",
        )),
        Route::Nostr => upgrade_nostr(app, &gw, req, &key, &offered, &who).await,
        Route::Mosaic(token) => {
            upgrade_mosaic(
                app,
                &gw,
                req,
                &key,
                token.as_str(),
                &who,
                info.client_key.as_ref(),
            )
            .await
        }
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(r) => return Err(reject(app, r)),
    };
    let opts = PumpOptions {
        mosaic: (accepted.protocol == Protocol::Mosaic).then_some(MosaicRules {
            validation: gw.config.mosaic.validate,
            max_message_bytes: gw.config.mosaic.max_message_bytes,
        }),
        idle_timeout: gw.config.limits.idle_timeout.0,
    };
    Ok(Box::new(Prepared {
        id: app.next_id.fetch_add(1, Ordering::Relaxed),
        who,
        accepted,
        opts,
        permit,
    }))
}

/// An upgrade that arrived through hyper (a keep-alive connection's later request).
async fn upgrade(app: Arc<App>, info: ConnInfo, mut req: Request<Incoming>) -> Response<Body> {
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

/// The 101's headers: the upgrade mechanics; the caller adds the negotiated ones.
fn switching_protocols(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, header_value(&accept));
    h
}

async fn upgrade_nostr(
    app: &App,
    gw: &Gateway,
    req: &Request<()>,
    key: &str,
    offered: &[String],
    who: &ClientIdentity,
) -> Result<Accepted, Rejection> {
    let Some(url) = gw.nostr.as_ref() else {
        return Err(rejection(
            StatusCode::BAD_REQUEST,
            "nostr is not served here",
            "no_route",
        ));
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let head = upstream_request_head(
        path,
        req.headers(),
        key,
        offered,
        true,
        who,
        &url.authority(),
    );
    let timeout = gw
        .config
        .nostr
        .as_ref()
        .map(|n| n.connect_timeout.0)
        .unwrap_or(Duration::from_secs(5));
    let upstream = match connect_and_upgrade(url, None, &head, key, timeout).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(relay = %url, error = %e, "nostr relay refused or failed the upgrade");
            app.metrics
                .upstream_failures_total
                .with_label_values(&["nostr", failure_kind(&e)])
                .inc();
            return Err(rejection(
                StatusCode::BAD_GATEWAY,
                "nostr relay unavailable",
                "upstream_failed",
            ));
        }
    };
    let mut response = switching_protocols(key);
    // The relay's choice must be one the client offered; otherwise the client would fail.
    let chosen = upstream
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    if let Some(p) = &chosen {
        if !offered.iter().any(|o| o == p) {
            return Err(rejection(
                StatusCode::BAD_GATEWAY,
                "nostr relay chose a subprotocol the client did not offer",
                "upstream_bad_protocol",
            ));
        }
        response.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(p));
    }
    for v in upstream.headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        response.append(header::SEC_WEBSOCKET_EXTENSIONS, v.clone());
    }
    Ok(Accepted {
        protocol: Protocol::Nostr,
        subprotocol: chosen,
        upstream,
        upstream_label: url.to_string(),
        backend: None,
        response,
    })
}

fn failure_kind(e: &crate::upstream::UpstreamError) -> &'static str {
    use crate::upstream::UpstreamError::*;
    match e {
        Connect(_) => "connect",
        Timeout => "timeout",
        Refused(_) => "refused",
        BadResponse(_) => "bad_response",
    }
}

#[allow(clippy::too_many_arguments)]
async fn upgrade_mosaic(
    app: &App,
    gw: &Gateway,
    req: &Request<()>,
    key: &str,
    token: &str,
    who: &ClientIdentity,
    client_key: Option<&[u8; 32]>,
) -> Result<Accepted, Rejection> {
    let m = &gw.config.mosaic;
    let pool = match (&gw.auth_pool, client_key) {
        (Some(auth), Some(_)) => auth.clone(),
        _ => gw.pool.clone(),
    };
    if !pool.has_healthy() {
        return Err(rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy Mosaic backend",
            "no_healthy_backend",
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let protocols = [token.to_string()];
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut found: Option<(Arc<Backend>, Upgraded)> = None;
    for _ in 0..m.max_tries {
        let Some(b) = pool.pick(&tried, client_key) else {
            break;
        };
        let head = upstream_request_head(
            path,
            req.headers(),
            key,
            &protocols,
            false,
            who,
            &b.url.authority(),
        );
        let started = Instant::now();
        let result =
            connect_and_upgrade(&b.url, b.tls.as_ref(), &head, key, m.connect_timeout.0).await;
        let result = result.and_then(|up| {
            let chosen = up
                .headers
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok());
            if chosen.map(str::trim) == Some(token) {
                Ok(up)
            } else {
                Err(crate::upstream::UpstreamError::BadResponse(
                    "backend did not select the Mosaic subprotocol",
                ))
            }
        });
        match result {
            Ok(up) => {
                app.metrics
                    .backend_connect_duration_seconds
                    .with_label_values(&[pool.name])
                    .observe(started.elapsed().as_secs_f64());
                found = Some((b, up));
                break;
            }
            Err(e) => {
                tracing::warn!(pool = pool.name, backend = %b.label, error = %e, "backend failed the upgrade");
                app.metrics
                    .upstream_failures_total
                    .with_label_values(&[pool.name, failure_kind(&e)])
                    .inc();
                pool.mark_failed(&b);
                tried.push(b);
            }
        }
    }
    let Some((backend, upstream)) = found else {
        return Err(if tried.is_empty() {
            rejection(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy Mosaic backend",
                "no_healthy_backend",
            )
        } else {
            rejection(
                StatusCode::BAD_GATEWAY,
                "no Mosaic backend accepted the upgrade",
                "upstream_failed",
            )
        });
    };
    let mut response = switching_protocols(key);
    let h = &mut response;
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(token));
    if token == "mosaic2024" {
        let client = feature_list(req.headers(), X_MOSAIC_FEATURES);
        let granted = feature_list(&upstream.headers, X_MOSAIC_FEATURES);
        if let Some(v) = negotiate_features(client.as_deref(), granted.as_deref(), &m.features) {
            h.insert(X_MOSAIC_FEATURES, header_value(&v));
        }
    } else {
        // Later Mosaic versions negotiate in X-Mosaic-* headers the gateway does not own.
        for (name, value) in upstream.headers.iter() {
            if name.as_str().starts_with("x-mosaic-") {
                h.append(name.clone(), value.clone());
            }
        }
    }
    Ok(Accepted {
        protocol: Protocol::Mosaic,
        subprotocol: Some(token.to_string()),
        upstream,
        upstream_label: backend.label.clone(),
        backend: Some(BackendGuard::new(backend)),
        response,
    })
}

/// The client side of an upgraded connection, unwrapped back to its socket.
enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

fn unwrap_client(upgraded: hyper::upgrade::Upgraded) -> (ClientIo, BytesMut) {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            return (
                ClientIo::Tcp(parts.io.into_inner()),
                BytesMut::from(&parts.read_buf[..]),
            )
        }
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
        Ok(parts) => (
            ClientIo::Tls(Box::new(parts.io.into_inner())),
            BytesMut::from(&parts.read_buf[..]),
        ),
        Err(u) => (ClientIo::Other(TokioIo::new(u)), BytesMut::new()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_to_upstream<CR, CW, F>(
    cr: CR,
    cw: CW,
    client_leftover: BytesMut,
    up: UpstreamStream,
    up_leftover: BytesMut,
    opts: PumpOptions,
    drain: &DrainSignal,
    fold: &F,
) -> RelayReport
where
    CR: Source,
    CW: AsyncWrite + Unpin,
    F: Fn(Traffic) + Sync,
{
    match up {
        UpstreamStream::Tcp(mut s) => {
            let (ur, uw) = s.split();
            // Boxed so the layers above hold a pointer, not another copy of the relay's state.
            Box::pin(relay(
                cr,
                cw,
                client_leftover,
                ur,
                uw,
                up_leftover,
                opts,
                drain,
                fold,
            ))
            .await
        }
        UpstreamStream::Tls(s) => {
            let (ur, uw) = tokio::io::split(*s);
            Box::pin(relay(
                cr,
                cw,
                client_leftover,
                Buffered(ur),
                uw,
                up_leftover,
                opts,
                drain,
                fold,
            ))
            .await
        }
    }
}

async fn run_connection(
    app: Arc<App>,
    info: ConnInfo,
    prepared: Box<Prepared>,
    client: ClientIo,
    client_leftover: BytesMut,
) {
    let Prepared {
        id,
        who,
        accepted,
        opts,
        permit,
    } = *prepared;
    // Only what the close log needs stays alive across the relay.
    let Accepted {
        protocol,
        subprotocol,
        upstream,
        upstream_label,
        backend,
        response,
    } = accepted;
    drop(response);
    let protocol = protocol.label();
    let m = &app.metrics;
    m.connections_total.with_label_values(&[protocol]).inc();
    let active = m.connections_active.with_label_values(&[protocol]);
    active.inc();
    let started = Instant::now();
    let subprotocol = subprotocol.as_deref().unwrap_or("");
    tracing::info!(
        conn = id,
        client = %who.addr,
        peer = %info.peer,
        protocol,
        subprotocol,
        upstream = %upstream_label,
        authenticated = who.client_key.is_some(),
        "connection opened"
    );
    let client_addr = who.addr;
    drop(who);
    let signal = app.relayed.register(id);
    let drain = &*signal;
    let up_dir = Direction::ClientToUpstream.label();
    let down_dir = Direction::UpstreamToClient.label();
    let counters = [
        m.messages_total.with_label_values(&[protocol, up_dir]),
        m.messages_total.with_label_values(&[protocol, down_dir]),
        m.bytes_total.with_label_values(&[protocol, up_dir]),
        m.bytes_total.with_label_values(&[protocol, down_dir]),
    ];
    let fold = |t: Traffic| {
        counters[0].inc_by(t.messages_up);
        counters[1].inc_by(t.messages_down);
        counters[2].inc_by(t.bytes_up);
        counters[3].inc_by(t.bytes_down);
    };
    // The 101's headers served their purpose; an idle connection should not keep them.
    let Upgraded {
        stream: up,
        leftover: up_left,
        headers,
    } = upstream;
    drop(headers);
    let report = match client {
        ClientIo::Tcp(mut s) => {
            // Borrowed halves: the stream lives in this task, no shared ownership needed.
            let (cr, cw) = s.split();
            relay_to_upstream(cr, cw, client_leftover, up, up_left, opts, drain, &fold).await
        }
        ClientIo::Tls(s) => {
            let (cr, cw) = tokio::io::split(*s);
            relay_to_upstream(
                Buffered(cr),
                cw,
                client_leftover,
                up,
                up_left,
                opts,
                drain,
                &fold,
            )
            .await
        }
        ClientIo::Other(s) => {
            let (cr, cw) = tokio::io::split(s);
            relay_to_upstream(
                Buffered(cr),
                cw,
                client_leftover,
                up,
                up_left,
                opts,
                drain,
                &fold,
            )
            .await
        }
    };
    if let Some((v, _)) = report.violation {
        m.protocol_violations_total
            .with_label_values(&[v.label()])
            .inc();
    }
    if let Some(code) = report.gateway_close_code {
        m.closes_sent_total
            .with_label_values(&[&code.to_string()])
            .inc();
    }
    // Last, so a scrape that sees the connection gone also sees its counters.
    active.dec();
    tracing::info!(
        conn = id,
        client = %client_addr,
        protocol,
        subprotocol,
        upstream = %upstream_label,
        close_code = report.gateway_close_code.map(i64::from).unwrap_or(-1),
        closed_by = report.closer.map(|c| c.label()).unwrap_or("gateway"),
        violation = report.violation.map(|(v, _)| v.label()).unwrap_or(""),
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_up = report.bytes_up,
        bytes_down = report.bytes_down,
        messages_up = report.messages_up,
        messages_down = report.messages_down,
        "connection closed"
    );
    app.relayed.unregister(id);
    drop(backend);
    drop(permit);
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
    let mut xff: Vec<String> = chain.iter().map(|a| a.to_string()).collect();
    xff.push(client_ip.to_string());
    h.insert("x-forwarded-for", header_value(&xff.join(", ")));
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
    let timeout = gw
        .config
        .nostr
        .as_ref()
        .map(|n| n.connect_timeout.0)
        .unwrap_or(Duration::from_secs(5));
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
