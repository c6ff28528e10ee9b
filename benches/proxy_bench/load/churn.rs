//! Connection churn (the new-connection figure): workers that each open one short session
//! after another.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::OP_TIMEOUT;
use crate::wire::{one_connection, submission_frame};

/// What the churn workers share.
struct ChurnShared {
    frame: Vec<u8>,
    tls: Option<tokio_rustls::TlsConnector>,
    counted: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// Workers that each open one short session after another.
pub struct Churn {
    shared: Arc<ChurnShared>,
    handles: Vec<JoinHandle<()>>,
}

/// What the churn did.
pub struct ChurnCount {
    /// Sessions that started and ended in the window.
    pub counted: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Churn {
    /// `workers` tasks, each running short sessions (connect, TLS when `tls` is given,
    /// upgrade, one round trip, close) one after another until `to`. A session counts
    /// when it starts at or after `from` and ends before `to`.
    pub fn start(
        rt: &Runtime,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsConnector>,
        workers: usize,
        (from, to): (Instant, Instant),
    ) -> Churn {
        let shared = Arc::new(ChurnShared {
            frame: submission_frame(),
            tls,
            counted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        });
        let handles = (0..workers)
            .map(|_| rt.spawn(churn_worker(addr, shared.clone(), from, to)))
            .collect();
        Churn { shared, handles }
    }

    /// Waits for every worker to end.
    pub fn finish(self, rt: &Runtime) -> ChurnCount {
        rt.block_on(async {
            for h in self.handles {
                let _ = h.await;
            }
        });
        ChurnCount {
            counted: self.shared.counted.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            first_error: self.shared.first_error.lock().unwrap().take(),
        }
    }
}

async fn churn_worker(addr: SocketAddr, sh: Arc<ChurnShared>, from: Instant, to: Instant) {
    loop {
        let now = Instant::now();
        if now >= to {
            break;
        }
        let r = tokio::time::timeout(OP_TIMEOUT, one_connection(addr, sh.tls.as_ref(), &sh.frame))
            .await
            .unwrap_or_else(|_| Err(io::Error::other("timed out")));
        let end = Instant::now();
        let counted = now >= from && end < to;
        match r {
            Ok(()) if counted => {
                sh.counted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {}
            Err(e) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                sh.first_error.lock().unwrap().get_or_insert(e.to_string());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
