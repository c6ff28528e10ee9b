//! The load generator: client connections on the client runtime that drive each figure's
//! load — closed loop (throughput), paced open loop (latency, scale), connection churn (new
//! connections/s) and idle connections (memory, scale) — and what they share.

mod churn;
mod closed;
mod idle;
mod paced;

use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

pub use churn::Churn;
pub use closed::ClosedLoop;
pub use idle::{close_idle, open_idle, warm_up};
pub use paced::OpenLoop;

/// How long one connection step may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection sends its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Many in flight: closed loop with BENCH_INFLIGHT each; paced, everything due goes out
    /// at once.
    Pipelined,
    /// One in flight, as a client that waits for each answer: closed loop with one each;
    /// paced, a due message waits for the reply to the one outstanding.
    RequestResponse,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::Pipelined => "pipelined",
            Shape::RequestResponse => "request/response",
        }
    }
}

/// Where load connections go: `ws://addr`, or `wss://addr` with this TLS client, over
/// HTTP/1.1 or as HTTP/2 streams.
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// `Some(n)`: WebSockets as HTTP/2 streams, `n` on each TLS connection (`tls` must
    /// offer `h2`).
    pub h2_streams: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// Waiting for connection tasks

/// Waits (up to 10 s) until `want` connections said they are ready, or every task ended.
fn wait_connected<T>(ready: &AtomicU64, want: usize, handles: &[JoinHandle<T>]) {
    let t = Instant::now();
    while (ready.load(Ordering::Relaxed) as usize) < want
        && t.elapsed() < Duration::from_secs(10)
        && !handles.iter().all(|h| h.is_finished())
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Why a connection task failed.
enum Failure {
    Error(String),
    /// Timed out (and aborted), or the task itself failed.
    TimedOut,
}

impl Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => f.write_str(e),
            Failure::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Connection tasks, joined.
struct Joined<T> {
    values: Vec<T>,
    errors: usize,
    /// The first failure.
    first: Option<Failure>,
}

/// Joins connection tasks, each within OP_TIMEOUT (aborted past it).
fn join_timed<T>(rt: &Runtime, handles: Vec<JoinHandle<io::Result<T>>>) -> Joined<T> {
    rt.block_on(async {
        let mut joined = Joined {
            values: Vec::new(),
            errors: 0,
            first: None,
        };
        for h in handles {
            let abort = h.abort_handle();
            let failure = match tokio::time::timeout(OP_TIMEOUT, h).await {
                Ok(Ok(Ok(v))) => {
                    joined.values.push(v);
                    continue;
                }
                Ok(Ok(Err(e))) => Failure::Error(e.to_string()),
                _ => {
                    abort.abort();
                    Failure::TimedOut
                }
            };
            joined.errors += 1;
            joined.first.get_or_insert(failure);
        }
        joined
    })
}

/// Joins connection tasks (bounded in time); returns how many failed.
fn join_all(rt: &Runtime, handles: Vec<JoinHandle<io::Result<()>>>) -> usize {
    let joined = join_timed(rt, handles);
    if let Some(first) = joined.first {
        print_failed(joined.errors, first);
    }
    joined.errors
}

/// The line that says connections failed, and why the first one did.
pub fn print_failed(count: impl Display, first: impl Display) {
    eprintln!("    {count} connection(s) failed, first: {first}");
}
