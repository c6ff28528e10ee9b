//! Starting and stopping a whole gateway: listeners, admin, health checks, DNS discovery.
//!
//! Used by `run`, by `dev` and by the integration tests, so all three start the gateway
//! the same way.
//!
//! The public listeners are served thread-per-core, as nginx's workers are: each worker
//! thread has its own socket on the same address (SO_REUSEPORT) and its own single-threaded
//! event loop, so a connection lives on one thread from accept to close and waking it never
//! crosses threads. Admin, health checks and discovery run on the caller's runtime.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::{App, BuildError, Gateway};
use crate::metrics::Metrics;
use crate::pipeline::accept::{serve, Place};
use crate::pipeline::workers::Workers;
use crate::tls::TlsTerminator;
use crate::upstreams::discovery::{Resolve, SystemResolver};

/// Why the gateway could not start; `Display` is the one line the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The first configuration generation could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listener could not be bound.
    #[error("{key}: cannot bind {addr}")]
    Bind {
        /// The config key of the listener (`listen`, `admin.listen`).
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread or its event loop could not start.
    #[error("cannot start worker {worker}")]
    Worker {
        /// The worker's number.
        worker: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started gateway.
pub struct Running {
    /// Shared state (metrics, pools, drain).
    pub app: Arc<App>,
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// Where the extra TLS listener is bound, when one was asked for.
    pub extra_tls_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// What every event loop calls once a second to give freed memory back; set by the binary,
/// which chose the allocator.
static MEMORY_UPKEEP: OnceLock<fn()> = OnceLock::new();

/// How often each event loop calls the memory upkeep.
const MEMORY_UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Sets the allocator's collect function, which every event loop then calls once a second.
///
/// mimalloc gives pages a thread freed back to the OS only when that thread calls into it
/// again, a delay (1 s) after they emptied: a worker that went idle after thousands of
/// connections closed kept their memory for as long as it stayed idle (issue 22: RSS 28 MB
/// with 9,000 idle connections open, 36–49 MB after they all closed, until traffic came).
/// A second call for the first does nothing.
pub fn set_memory_upkeep(collect: fn()) {
    let _ = MEMORY_UPKEEP.set(collect);
}

/// Calls the memory upkeep on this event loop once a second while it runs; `None` when the
/// binary set none (the tests' in-process gateways).
fn spawn_memory_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let collect = *MEMORY_UPKEEP.get()?;
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(MEMORY_UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            collect();
        }
    }))
}

/// Binds one socket of a SO_REUSEPORT group.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// `n` sockets on one address; with port 0 the first picks the port the others share.
fn bind_group(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_reuseport(actual)?);
    }
    Ok(all)
}

/// Starts one worker thread serving `listeners` until `stop` is set. Connections keep
/// running after their listener closes (the drain), until the stop.
fn spawn_worker(
    i: usize,
    rt: tokio::runtime::Runtime,
    workers: Workers,
    app: Arc<App>,
    listeners: Vec<(std::net::TcpListener, Option<Arc<TlsTerminator>>)>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), StartError> {
    let failed = |source| StartError::Worker { worker: i, source };
    std::thread::Builder::new()
        .name(format!("mosaic-gw-{i}"))
        .spawn(move || {
            rt.block_on(async move {
                spawn_memory_upkeep();
                for (l, tls) in listeners {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            let place = Place {
                                workers: workers.clone(),
                                me: i,
                            };
                            tokio::spawn(serve(app.clone(), l, tls, place));
                        }
                        Err(e) => tracing::error!(worker = i, error = %e, "listener lost"),
                    }
                }
                let _ = stop.wait_for(|s| *s).await;
            });
        })
        .map(|_| ())
        .map_err(failed)
}

/// Binds the listeners and starts serving. `extra_tls` adds a TLS listener (used by `dev`
/// to serve ws:// and wss:// at once).
pub async fn start(
    config: Config,
    extra_tls: Option<(SocketAddr, Arc<TlsTerminator>)>,
) -> Result<Running, StartError> {
    start_with(config, extra_tls, Arc::new(SystemResolver)).await
}

/// [`start`] with a chosen resolver for `dns:` backends (tests serve changing answers).
pub async fn start_with(
    config: Config,
    extra_tls: Option<(SocketAddr, Arc<TlsTerminator>)>,
    resolver: Arc<dyn Resolve>,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    metrics.preset_rejections("");
    let gateway = Gateway::build(config, &metrics)?;
    // A first answer for `dns:` backends before serving, so the pool is not empty at start.
    crate::upstreams::discovery::refresh(&gateway, resolver.as_ref()).await;
    let listeners = Listeners::bind(&gateway.config, extra_tls).await?;
    let app = App::new(gateway, metrics);
    // Expiry series from the first scrape on; the certificate task keeps them current.
    if let Some(tls) = app.gateway().tls.clone() {
        crate::tls::upkeep::publish_expiry(
            &app.metrics.tls_certificate_expiry_timestamp_seconds,
            &tls,
        );
    }
    let Listeners {
        per_worker,
        admin,
        acme_http,
        public_addr,
        admin_addr,
        extra_tls_addr,
    } = listeners;
    let workers = per_worker.len();
    let stop = start_workers(&app, per_worker)?;
    // The sockets are listening (the kernel queues connections) from here on.
    app.listening
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let tasks = spawn_tasks(&app, admin, acme_http, resolver);
    tracing::info!(%public_addr, %admin_addr, workers, "mosaic-gateway listening");
    Ok(Running {
        app,
        public_addr,
        admin_addr,
        extra_tls_addr,
        tasks,
        stop,
    })
}

/// A worker's listening sockets: its own `listen` socket, and its socket of the extra TLS
/// listener with the terminator that serves it.
type WorkerListeners = Vec<(std::net::TcpListener, Option<Arc<TlsTerminator>>)>;

/// Every socket the gateway serves, bound before anything runs, so a port already taken
/// fails the start with the key that names it.
struct Listeners {
    per_worker: Vec<WorkerListeners>,
    admin: TcpListener,
    acme_http: Option<TcpListener>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    extra_tls_addr: Option<SocketAddr>,
}

impl Listeners {
    async fn bind(
        config: &Config,
        extra_tls: Option<(SocketAddr, Arc<TlsTerminator>)>,
    ) -> Result<Listeners, StartError> {
        let workers = config.worker_count();
        let bind_err = |key, addr| move |source| StartError::Bind { key, addr, source };
        let (public, admin) = (config.listen_addr(), config.admin_addr());
        let public_l = bind_group(public, workers).map_err(bind_err("listen", public))?;
        let admin_l = TcpListener::bind(admin)
            .await
            .map_err(bind_err("admin.listen", admin))?;
        let acme_http = match acme_http_addr(config) {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(bind_err("tls.acme.http_listen", addr))?,
            ),
            None => None,
        };
        let public_addr = public_l[0]
            .local_addr()
            .map_err(bind_err("listen", public))?;
        let admin_addr = admin_l
            .local_addr()
            .map_err(bind_err("admin.listen", admin))?;
        let mut per_worker: Vec<WorkerListeners> =
            public_l.into_iter().map(|l| vec![(l, None)]).collect();
        let mut extra_tls_addr = None;
        if let Some((addr, tls)) = extra_tls {
            let ls = bind_group(addr, workers).map_err(bind_err("TLS listener", addr))?;
            extra_tls_addr = Some(ls[0].local_addr().map_err(bind_err("TLS listener", addr))?);
            for (w, l) in per_worker.iter_mut().zip(ls) {
                w.push((l, Some(tls.clone())));
            }
        }
        Ok(Listeners {
            per_worker,
            admin: admin_l,
            acme_http,
            public_addr,
            admin_addr,
            extra_tls_addr,
        })
    }
}

/// `tls.acme.http_listen`, when ACME asks for an HTTP-01 listener.
fn acme_http_addr(config: &Config) -> Option<SocketAddr> {
    config
        .tls
        .as_ref()
        .and_then(|t| t.acme.as_ref())
        .and_then(|a| a.http_listen.as_deref())
        .and_then(|a| a.parse::<SocketAddr>().ok())
}

/// Starts one event loop per worker on its listeners; the sender stops them all.
fn start_workers(
    app: &Arc<App>,
    per_worker: Vec<WorkerListeners>,
) -> Result<tokio::sync::watch::Sender<bool>, StartError> {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // Every event loop exists before any worker accepts, so each can hand connections to
    // any other from the first one on.
    let runtimes = (0..per_worker.len())
        .map(|i| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| StartError::Worker { worker: i, source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let loops = Workers::new(runtimes.iter().map(|rt| rt.handle().clone()).collect());
    for (i, (listeners, rt)) in per_worker.into_iter().zip(runtimes).enumerate() {
        spawn_worker(
            i,
            rt,
            loops.clone(),
            app.clone(),
            listeners,
            stop_rx.clone(),
        )?;
    }
    Ok(stop)
}

/// The background tasks on the control loop: the admin listener, the status sampler,
/// health checks, DNS discovery, certificate upkeep, the enforcer, the ACME HTTP-01
/// listener and memory upkeep. The tasks of lower parts read the current generation
/// through the closures given here, not through `App`.
fn spawn_tasks(
    app: &Arc<App>,
    admin: TcpListener,
    acme_http: Option<TcpListener>,
    resolver: Arc<dyn Resolve>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let status = Arc::new(crate::ops::status::Status::new());
    let current = |app: &Arc<App>| {
        let app = app.clone();
        move || app.gateway()
    };
    let mut tasks = vec![
        tokio::spawn(crate::ops::admin::serve(app.clone(), status.clone(), admin)),
        tokio::spawn(crate::ops::status::sample(app.clone(), status)),
        tokio::spawn({
            let gw = current(app);
            crate::upstreams::health::run(move || gw().routes.health_targets())
        }),
        tokio::spawn(crate::upstreams::discovery::run(current(app), resolver)),
        tokio::spawn({
            let gw = current(app);
            let expiry = app.metrics.tls_certificate_expiry_timestamp_seconds.clone();
            crate::tls::upkeep::run(move || gw().tls_upkeep(), expiry)
        }),
        tokio::spawn(crate::ops::enforcer::run(app.clone())),
    ];
    if let Some(l) = acme_http {
        let gw = current(app);
        tasks.push(tokio::spawn(crate::tls::acme_http::serve(
            move || gw().acme_http(),
            l,
        )));
    }
    tasks.extend(spawn_memory_upkeep());
    tasks
}

impl Running {
    /// Drains (as on SIGTERM) and stops every task and worker.
    pub async fn shutdown(self) {
        crate::ops::shutdown::drain(&self.app).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Stopping a worker ends its event loop and with it every connection still on it.
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}
