//! Signals, reload and the drain sequence.
//!
//! SIGTERM or SIGINT starts the drain: readiness goes 503 at once, the public listener
//! stops accepting, every open Mosaic query hears Query Closed 0x30, then each connection is
//! closed with 1001 at its own moment in the first half of `drain_timeout` (so clients do
//! not reconnect in one burst); whatever is still open at `drain_timeout` is cut.
//! SIGHUP re-reads the config file; an invalid file is logged and ignored.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::drain::DrainState;
use crate::gateway::{App, Gateway};

/// Why the process is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM.
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// Waits for SIGTERM or SIGINT, reloading `config_path` on each SIGHUP meanwhile.
pub async fn wait_for_stop(
    app: Arc<App>,
    config_path: Option<PathBuf>,
) -> std::io::Result<StopReason> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(StopReason::Terminate),
            _ = int.recv() => return Ok(StopReason::Interrupt),
            _ = hup.recv() => match &config_path {
                Some(p) => reload(&app, p),
                None => tracing::info!("SIGHUP ignored: no config file to re-read"),
            },
        }
    }
}

/// Re-reads the config; a valid one becomes the generation for new connections.
pub fn reload(app: &App, path: &std::path::Path) {
    let cfg = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in &e.0 {
                tracing::error!(problem = %line, "reload ignored: invalid config");
            }
            return;
        }
    };
    let old = app.gateway();
    if cfg.listen != old.config.listen || cfg.admin.listen != old.config.admin.listen {
        tracing::warn!("reload: listen addresses only change on restart");
    }
    match Gateway::rebuild(cfg, &old, &app.metrics) {
        Ok(g) => {
            app.swap(g);
            tracing::info!(config = %path.display(), "config reloaded");
        }
        Err(e) => tracing::error!(error = %crate::error::Chain(&e), "reload ignored"),
    }
}

/// Drains: closes queries and connections, waits at most `drain_timeout`.
pub async fn drain(app: &App) {
    let timeout = app.gateway().config.shutdown.drain_timeout.0;
    let start = tokio::time::Instant::now();
    let close_by = start + timeout / 2;
    app.metrics.draining.set(1.0);
    let _ = app.drain.send(DrainState::Draining { close_by });
    app.relayed.drain_all(close_by);
    tracing::info!(
        open = app.limits.total(),
        drain_timeout_ms = timeout.as_millis() as u64,
        "draining"
    );
    let deadline = start + timeout;
    loop {
        let changed = app.limits.changed.notified();
        if app.limits.total() == 0 {
            break;
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(open = app.limits.total(), "drain timeout: cutting what is still open");
                break;
            }
            // A missed wake-up costs at most this much.
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    tracing::info!(
        elapsed_ms = start.elapsed().as_millis() as u64,
        "drain complete"
    );
}
