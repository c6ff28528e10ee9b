//! The gateway's shared state and the public listener: accept, the PROXY header, TLS.
//!
//! A connection then goes through three layers, one module each: [`crate::front`] reads its
//! first request, [`crate::upgrade`] completes the upstream's handshake before the client
//! hears 101 (so every failure is an HTTP status and retries stay invisible), and
//! [`crate::connection`] relays it until it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Config, UpstreamUrl};
use crate::front::serve_first_request;
use crate::listener::{Limits, TrustedProxies};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::relay::pump::{DrainSignal, DrainState};
use crate::tls::TlsTerminator;

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
    pub(crate) next_id: AtomicU64,
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
    pub(crate) fn register(&self, id: u64) -> Arc<DrainSignal> {
        let signal = Arc::new(DrainSignal::default());
        lock(&self.conns).insert(id, signal.clone());
        // Checked after inserting: a drain that started meanwhile has either seen this
        // connection in the map or is seen here.
        if let Some(close_by) = *lock(&self.draining) {
            signal.fire(close_by);
        }
        signal
    }

    pub(crate) fn unregister(&self, id: u64) {
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
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) client_key: Option<[u8; 32]>,
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
    // Boxed: the TLS handshake and stream make this future four times larger, and every
    // plain connection would pay for copying that size when its task is spawned.
    Box::pin(serve_tls(app, gw, tcp, peer, tls, deadline)).await;
}

/// The TLS handshake, then the first request over TLS.
async fn serve_tls(
    app: Arc<App>,
    gw: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<TlsTerminator>,
    deadline: tokio::time::Instant,
) {
    match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
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
