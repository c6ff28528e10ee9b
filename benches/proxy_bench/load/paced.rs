//! Open-loop load at a fixed rate (the latency and scale figures): a pacer hands out due
//! Submissions round-robin over the connections, which send them in one of two shapes.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{join_timed, wait_connected, Failure, Shape};
use crate::wire::{connect_ws, reserve, submission_frame, take_replies, ws_close};

/// What the paced connections share with the pacer.
struct Open {
    frame: Vec<u8>,
    shape: Shape,
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

impl Paced {
    /// Takes one due message, if there is one.
    fn take_one(&self) -> bool {
        self.due
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1))
            .is_ok()
    }
}

/// Open-loop load: the pacer hands out Submissions at a fixed total rate, round-robin over
/// the connections; each connection records its round trips.
pub struct OpenLoop {
    shared: Arc<Open>,
    paced: Vec<Arc<Paced>>,
    handles: Vec<JoinHandle<io::Result<Vec<u32>>>>,
}

impl OpenLoop {
    /// Opens `conns` connections that send in `shape`; returns once they are connected.
    pub fn start(rt: &Runtime, addr: SocketAddr, conns: usize, shape: Shape) -> OpenLoop {
        let shared = Arc::new(Open {
            frame: submission_frame(),
            shape,
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

    /// How many connections opened (the rest failed to connect).
    pub fn connected(&self) -> usize {
        self.shared.ready.load(Ordering::Relaxed) as usize
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

/// One paced connection: its stream, what it has sent, and the round trips it measured.
struct Conn {
    s: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    /// When each Submission still unanswered went out.
    sent: VecDeque<Instant>,
    lat: Vec<u32>,
}

impl Conn {
    /// Sends `n` Submissions in one write; their round trips count from now.
    async fn send(&mut self, frame: &[u8], n: u32) -> io::Result<()> {
        for _ in 0..n {
            self.out.extend_from_slice(frame);
        }
        self.s.write_all(&self.out).await?;
        self.out.clear();
        let now = Instant::now();
        self.sent.extend(std::iter::repeat_n(now, n as usize));
        Ok(())
    }

    /// Matches `results` replies with what was sent; keeps the round trips of those sent in
    /// the measured window.
    fn answered(&mut self, results: usize, window: Option<(Instant, Instant)>) -> io::Result<()> {
        let now = Instant::now();
        for _ in 0..results {
            let Some(t) = self.sent.pop_front() else {
                return Err(io::Error::other("reply without request"));
            };
            if let Some((from, to)) = window {
                if t >= from && t < to {
                    self.lat
                        .push((now - t).as_nanos().min(u32::MAX as u128) as u32);
                }
            }
        }
        Ok(())
    }
}

async fn open_conn(addr: SocketAddr, sh: Arc<Open>, paced: Arc<Paced>) -> io::Result<Vec<u32>> {
    let (s, buf) = connect_ws(addr).await?;
    sh.ready.fetch_add(1, Ordering::Relaxed);
    let mut c = Conn {
        s,
        buf,
        out: Vec::with_capacity(sh.frame.len() * 16),
        sent: VecDeque::with_capacity(256),
        lat: Vec::with_capacity(1 << 12),
    };
    let one_at_a_time = sh.shape == Shape::RequestResponse;
    loop {
        let stopping = sh.stop.load(Ordering::Relaxed);
        if stopping && c.sent.is_empty() {
            break;
        }
        // Request/response: with one outstanding, due messages wait for its reply.
        let may_send = !stopping && (!one_at_a_time || c.sent.is_empty());
        reserve(&mut c.buf, 1024);
        tokio::select! {
            _ = paced.notify.notified(), if may_send => {
                let n = if one_at_a_time {
                    u32::from(paced.take_one())
                } else {
                    paced.due.swap(0, Ordering::Relaxed)
                };
                if n > 0 {
                    c.send(&sh.frame, n).await?;
                }
            }
            r = c.s.read_buf(&mut c.buf) => {
                if r? == 0 {
                    return Err(io::Error::other("EOF"));
                }
                let got = take_replies(&mut c.buf)?;
                c.answered(got.results, sh.window.get().copied())?;
                if got.closed {
                    return Err(io::Error::other("closed by peer"));
                }
                // The next due message goes out the moment the reply is in.
                if one_at_a_time
                    && c.sent.is_empty()
                    && !sh.stop.load(Ordering::Relaxed)
                    && paced.take_one()
                {
                    c.send(&sh.frame, 1).await?;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    ws_close(&mut c.s, &mut c.buf).await?;
    Ok(c.lat)
}
