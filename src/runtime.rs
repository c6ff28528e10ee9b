//! Starting and stopping a whole gateway: listeners, admin, health checks, DNS discovery.
//!
//! Used by `run`, by `dev` and by the integration tests, so all three start the gateway
//! the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::discovery::{Resolve, SystemResolver};
use crate::metrics::Metrics;
use crate::server::{serve, App, Gateway};
use crate::tls::TlsTerminator;

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
}

/// Binds the listeners and starts serving. `extra_tls` adds a TLS listener (used by `dev`
/// to serve ws:// and wss:// at once).
pub async fn start(
    config: Config,
    extra_tls: Option<(SocketAddr, Arc<TlsTerminator>)>,
) -> Result<Running, String> {
    start_with(config, extra_tls, Arc::new(SystemResolver)).await
}

/// [`start`] with a chosen resolver for `dns:` backends (tests serve changing answers).
pub async fn start_with(
    config: Config,
    extra_tls: Option<(SocketAddr, Arc<TlsTerminator>)>,
    resolver: Arc<dyn Resolve>,
) -> Result<Running, String> {
    let metrics = Arc::new(Metrics::new());
    let public = config.listen_addr();
    let admin = config.admin_addr();
    let gateway = Gateway::build(config, &metrics)?;
    // A first answer for `dns:` backends before serving, so the pool is not empty at start.
    crate::discovery::refresh(&gateway, resolver.as_ref()).await;
    let public_l = TcpListener::bind(public)
        .await
        .map_err(|e| format!("listen: cannot bind {public}: {e}"))?;
    let admin_l = TcpListener::bind(admin)
        .await
        .map_err(|e| format!("admin.listen: cannot bind {admin}: {e}"))?;
    let extra = match extra_tls {
        Some((addr, tls)) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot bind TLS listener {addr}: {e}"))?;
            Some((l, tls))
        }
        None => None,
    };
    let app = App::new(gateway, metrics);
    let public_addr = public_l.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_l.local_addr().map_err(|e| e.to_string())?;
    let mut tasks = vec![
        tokio::spawn(crate::admin::serve(app.clone(), admin_l)),
        tokio::spawn(crate::health::run(app.clone())),
        tokio::spawn(crate::discovery::run(app.clone(), resolver)),
    ];
    let mut extra_tls_addr = None;
    if let Some((l, tls)) = extra {
        extra_tls_addr = l.local_addr().ok();
        tasks.push(tokio::spawn(serve(app.clone(), l, Some(tls))));
    }
    tasks.push(tokio::spawn(serve(app.clone(), public_l, None)));
    tracing::info!(%public_addr, %admin_addr, "mosaic-gateway listening");
    Ok(Running {
        app,
        public_addr,
        admin_addr,
        extra_tls_addr,
        tasks,
    })
}

impl Running {
    /// Drains (as on SIGTERM) and stops every task.
    pub async fn shutdown(self) {
        crate::shutdown::drain(&self.app).await;
        for t in self.tasks {
            t.abort();
        }
    }
}
