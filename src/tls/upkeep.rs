//! Keeps the served certificates current while the gateway runs: operator certificate files
//! that changed on disk (renewals by certbot or cert-manager) are reloaded, the ACME manager
//! of the current generation runs, and `tls_certificate_expiry_timestamp_seconds` follows
//! whatever is served.
//!
//! A reload that fails keeps the old certificates and says so in one log line; open
//! connections are never touched, only new handshakes see a new chain.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::GaugeVec;
use tokio::sync::watch;

use crate::tls::acme::AcmeManager;
use crate::tls::certs::Reload;
use crate::tls::TlsTerminator;

/// The running ACME manager and the switch that stops it.
struct RunningAcme {
    manager: Arc<AcmeManager>,
    stop: watch::Sender<bool>,
}

/// What the upkeep reads of the current generation: its TLS terminator and
/// `tls.watch_interval` (`None` when it serves no TLS).
pub(crate) type Current = (Arc<TlsTerminator>, Duration);

/// Checks the certificates every `tls.watch_interval` of the current generation (`current`
/// reads it) until the task is aborted; `expiry` is
/// `tls_certificate_expiry_timestamp_seconds`.
pub(crate) async fn run(current: impl Fn() -> Option<Current>, expiry: GaugeVec) {
    let mut acme: Option<RunningAcme> = None;
    loop {
        let Some((tls, every)) = current() else {
            stop_acme(&mut acme);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        keep_acme_running(&mut acme, tls.acme());
        if let Reload::Failed(e) = tls.certificates().reload(false) {
            tracing::error!(error = %crate::error::Chain(&e), "certificate files changed but do not load: the old certificates stay");
        }
        publish_expiry(&expiry, &tls);
        drop(tls);
        tokio::time::sleep(every).await;
    }
}

/// Starts the current generation's ACME manager; stops one a reload replaced.
fn keep_acme_running(running: &mut Option<RunningAcme>, current: Option<&Arc<AcmeManager>>) {
    let same = match (running.as_ref(), current) {
        (Some(r), Some(c)) => Arc::ptr_eq(&r.manager, c),
        (None, None) => true,
        _ => false,
    };
    if same {
        return;
    }
    stop_acme(running);
    if let Some(manager) = current {
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(manager.clone().run(stop_rx));
        *running = Some(RunningAcme {
            manager: manager.clone(),
            stop,
        });
    }
}

fn stop_acme(running: &mut Option<RunningAcme>) {
    if let Some(r) = running.take() {
        let _ = r.stop.send(true);
    }
}

/// One expiry series per served certificate, named by its first name. Series are set, never
/// cleared first, so no scrape finds one missing; a certificate renamed by a reload leaves
/// its old series until restart.
pub(crate) fn publish_expiry(gauge: &GaugeVec, tls: &TlsTerminator) {
    let unix = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    for c in tls.certificates().current().iter() {
        gauge.with_label_values(&[&c.label]).set(unix(c.not_after));
    }
    if let Some(acme) = tls.acme() {
        if let Some(at) = acme.not_after() {
            gauge.with_label_values(&[&acme.label()]).set(unix(at));
        }
    }
}
