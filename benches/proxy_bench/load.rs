//! The load generator: client connections on the client runtime that drive each figure's
//! load — closed loop (throughput), paced open loop (latency), connection churn (new
//! connections/s) and idle connections (memory).

use std::collections::VecDeque;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::wire::{
    connect_ws, one_connection, reserve, round_trip, submission_frame, take_replies, ws_close,
};

/// How long one connection step may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Closed loop: throughput

/// What the closed-loop connections share with the thread that measures.
struct Closed {
    frame: Vec<u8>,
    inflight: usize,
    stop: AtomicBool,
    /// Submission Results received.
    done: AtomicU64,
    /// Connections upgraded.
    ready: AtomicU64,
}

/// Closed-loop load: connections that each keep a number of Submissions in flight.
pub struct ClosedLoop {
    shared: Arc<Closed>,
    handles: Vec<JoinHandle<io::Result<()>>>,
}

impl ClosedLoop {
    /// Opens `conns` connections, each keeping `inflight` Submissions in flight; returns
    /// once they are connected.
    pub fn start(rt: &Runtime, addr: SocketAddr, conns: usize, inflight: usize) -> ClosedLoop {
        let shared = Arc::new(Closed {
            frame: submission_frame(),
            inflight,
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        });
        let handles: Vec<_> = (0..conns)
            .map(|_| rt.spawn(closed_conn(addr, shared.clone())))
            .collect();
        wait_connected(&shared.ready, conns, &handles);
        ClosedLoop { shared, handles }
    }

    /// Submission Results received so far.
    pub fn results(&self) -> u64 {
        self.shared.done.load(Ordering::Relaxed)
    }

    /// Stops sending, lets the connections drain and close; returns how many failed.
    pub fn finish(self, rt: &Runtime) -> usize {
        self.shared.stop.store(true, Ordering::Relaxed);
        join_all(rt, self.handles)
    }
}

async fn closed_conn(addr: SocketAddr, sh: Arc<Closed>) -> io::Result<()> {
    let (mut s, mut buf) = connect_ws(addr).await?;
    sh.ready.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(sh.frame.len() * sh.inflight);
    let mut outstanding = 0usize;
    loop {
        if !sh.stop.load(Ordering::Relaxed) {
            while outstanding < sh.inflight {
                out.extend_from_slice(&sh.frame);
                outstanding += 1;
            }
            if !out.is_empty() {
                s.write_all(&out).await?;
                out.clear();
            }
        }
        if outstanding == 0 {
            break;
        }
        reserve(&mut buf, 1024);
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("EOF"));
        }
        let r = take_replies(&mut buf)?;
        outstanding -= r.results;
        sh.done.fetch_add(r.results as u64, Ordering::Relaxed);
        if r.closed {
            return Err(io::Error::other("closed by peer"));
        }
    }
    ws_close(&mut s, &mut buf).await
}

// ---------------------------------------------------------------------------------------
// Open loop at a fixed rate: latency

/// What the paced connections share with the pacer.
struct Open {
    frame: Vec<u8>,
    stop: AtomicBool,
    /// Connections upgraded.
    ready: AtomicU64,
    /// Submissions sent in this window count: (from, to).
    window: OnceLock<(Instant, Instant)>,
}

/// One connection's share of the pacer's messages.
struct Paced {
    due: AtomicU32,
    notify: Notify,
}

/// Open-loop load: the pacer hands out Submissions at a fixed total rate, round-robin over
/// the connections; each connection records its round trips.
pub struct OpenLoop {
    shared: Arc<Open>,
    paced: Vec<Arc<Paced>>,
    handles: Vec<JoinHandle<io::Result<Vec<u32>>>>,
}

impl OpenLoop {
    /// Opens `conns` connections; returns once they are connected.
    pub fn start(rt: &Runtime, addr: SocketAddr, conns: usize) -> OpenLoop {
        let shared = Arc::new(Open {
            frame: submission_frame(),
            stop: AtomicBool::new(false),
            ready: AtomicU64::new(0),
            window: OnceLock::new(),
        });
        let paced: Vec<Arc<Paced>> = (0..conns)
            .map(|_| {
                Arc::new(Paced {
                    due: AtomicU32::new(0),
                    notify: Notify::new(),
                })
            })
            .collect();
        let handles: Vec<_> = paced
            .iter()
            .map(|p| rt.spawn(open_conn(addr, shared.clone(), p.clone())))
            .collect();
        wait_connected(&shared.ready, conns, &handles);
        OpenLoop {
            shared,
            paced,
            handles,
        }
    }

    /// Sends `rate` Submissions/s in all from now until `warmup + secs` seconds from now;
    /// the round trips of those sent after `warmup` are measured.
    pub fn pace(&self, rate: f64, warmup: f64, secs: f64) {
        let paced = &self.paced;
        // The pacer: every ~100 µs, hand out the messages that are due, round-robin.
        let start = Instant::now();
        let from = start + Duration::from_secs_f64(warmup);
        let to = from + Duration::from_secs_f64(secs);
        let _ = self.shared.window.set((from, to));
        let mut sent: u64 = 0;
        let mut next = 0usize;
        let mut touched = vec![false; paced.len()];
        loop {
            std::thread::sleep(Duration::from_micros(100));
            let now = Instant::now();
            if now >= to {
                break;
            }
            let due = ((now - start).as_secs_f64() * rate) as u64;
            while sent < due {
                paced[next].due.fetch_add(1, Ordering::Relaxed);
                touched[next] = true;
                next = (next + 1) % paced.len();
                sent += 1;
            }
            for (i, t) in touched.iter_mut().enumerate() {
                if *t {
                    paced[i].notify.notify_one();
                    *t = false;
                }
            }
        }
    }

    /// Stops sending, waits for the replies still due; returns the measured round trips (ns)
    /// and how many connections failed.
    pub fn finish(self, rt: &Runtime) -> (Vec<u32>, usize) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let joined = join_timed(rt, self.handles);
        if let Some(Failure::Error(e)) = &joined.first {
            eprintln!("    latency connection failed: {e}");
        }
        let all = joined.values.into_iter().flatten().collect();
        (all, joined.errors)
    }
}

async fn open_conn(addr: SocketAddr, sh: Arc<Open>, paced: Arc<Paced>) -> io::Result<Vec<u32>> {
    let (mut s, mut buf) = connect_ws(addr).await?;
    sh.ready.fetch_add(1, Ordering::Relaxed);
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(256);
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut out = Vec::with_capacity(sh.frame.len() * 16);
    loop {
        if sh.stop.load(Ordering::Relaxed) && sent.is_empty() {
            break;
        }
        reserve(&mut buf, 1024);
        tokio::select! {
            _ = paced.notify.notified(), if !sh.stop.load(Ordering::Relaxed) => {
                let n = paced.due.swap(0, Ordering::Relaxed);
                for _ in 0..n {
                    out.extend_from_slice(&sh.frame);
                }
                if n > 0 {
                    s.write_all(&out).await?;
                    out.clear();
                    let now = Instant::now();
                    for _ in 0..n {
                        sent.push_back(now);
                    }
                }
            }
            r = s.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err(io::Error::other("EOF"));
                }
                let got = take_replies(&mut buf)?;
                if got.results > 0 {
                    let now = Instant::now();
                    let w = sh.window.get().copied();
                    for _ in 0..got.results {
                        let Some(t) = sent.pop_front() else {
                            return Err(io::Error::other("reply without request"));
                        };
                        if let Some((from, to)) = w {
                            if t >= from && t < to {
                                lat.push((now - t).as_nanos().min(u32::MAX as u128) as u32);
                            }
                        }
                    }
                }
                if got.closed {
                    return Err(io::Error::other("closed by peer"));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    ws_close(&mut s, &mut buf).await?;
    Ok(lat)
}

// ---------------------------------------------------------------------------------------
// Connection churn: new connections per second

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

// ---------------------------------------------------------------------------------------
// Idle connections: memory

/// 64 short sessions at once (upgrade, one round trip, close).
pub fn warm_up(rt: &Runtime, addr: SocketAddr) {
    let frame = Arc::new(submission_frame());
    rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..64 {
            let frame = frame.clone();
            hs.push(tokio::spawn(async move {
                one_connection(addr, None, &frame).await
            }));
        }
        for h in hs {
            let _ = tokio::time::timeout(OP_TIMEOUT, h).await;
        }
    });
}

/// Opens `n` upgraded connections, 64 at a time, that then idle; each makes one round trip
/// first when `round_trip_first`. Returns the ones that opened.
pub fn open_idle(
    rt: &Runtime,
    addr: SocketAddr,
    n: usize,
    round_trip_first: bool,
) -> Vec<TcpStream> {
    let frame = Arc::new(submission_frame());
    let sem = Arc::new(Semaphore::new(64));
    rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..n {
            let (frame, sem) = (frame.clone(), sem.clone());
            hs.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                let r = tokio::time::timeout(OP_TIMEOUT, async {
                    let (mut s, mut buf) = connect_ws(addr).await?;
                    if round_trip_first {
                        round_trip(&mut s, &mut buf, &frame).await?;
                    }
                    io::Result::Ok(s)
                })
                .await;
                match r {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        eprintln!("    idle connection failed: {e}");
                        None
                    }
                    Err(_) => None,
                }
            }));
        }
        let mut out = Vec::new();
        for h in hs {
            if let Ok(Some(s)) = h.await {
                out.push(s);
            }
        }
        out
    })
}

/// Closes connections from [`open_idle`] (on the runtime that owns them).
pub fn close_idle(rt: &Runtime, conns: Vec<TcpStream>) {
    rt.block_on(async move { drop(conns) });
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
