//! Closed-loop load (the throughput figures): connections that each keep a number of
//! Submissions in flight, over `ws://` or `wss://`.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{join_all, wait_connected, Dial};
use crate::h2::connect_h2_streams;
use crate::wire::{connect_ws, connect_wss, reserve, take_replies, ws_close};

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
    /// Opens `conns` connections to `dial`, each keeping `inflight` copies of `frame` in
    /// flight; returns once they are connected.
    pub fn start(
        rt: &Runtime,
        dial: &Dial,
        conns: usize,
        inflight: usize,
        frame: Vec<u8>,
    ) -> ClosedLoop {
        let shared = Arc::new(Closed {
            frame,
            inflight,
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        });
        let handles: Vec<_> = match dial.h2_streams {
            Some(n) => h2_connections(rt, dial, conns, n, &shared),
            None => http11_connections(rt, dial, conns, &shared),
        };
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

/// `conns` WebSockets, each on a TCP (and TLS) connection of its own.
fn http11_connections(
    rt: &Runtime,
    dial: &Dial,
    conns: usize,
    shared: &Arc<Closed>,
) -> Vec<JoinHandle<io::Result<()>>> {
    (0..conns)
        .map(|_| {
            let (dial, sh) = (dial.clone(), shared.clone());
            rt.spawn(async move {
                match &dial.tls {
                    None => {
                        let (s, buf) = connect_ws(dial.addr).await?;
                        closed_conn(s, buf, sh).await
                    }
                    Some(tls) => {
                        let (s, buf) = connect_wss(dial.addr, tls).await?;
                        closed_conn(s, buf, sh).await
                    }
                }
            })
        })
        .collect()
}

/// `conns` WebSockets as HTTP/2 streams, `per` on each TLS connection; one task per
/// connection, which runs its streams as tasks of their own.
fn h2_connections(
    rt: &Runtime,
    dial: &Dial,
    conns: usize,
    per: usize,
    shared: &Arc<Closed>,
) -> Vec<JoinHandle<io::Result<()>>> {
    let per = per.max(1);
    (0..conns.div_ceil(per))
        .map(|i| {
            let n = per.min(conns - i * per);
            let (dial, sh) = (dial.clone(), shared.clone());
            rt.spawn(async move {
                let tls = dial
                    .tls
                    .as_ref()
                    .ok_or_else(|| io::Error::other("h2 needs TLS"))?;
                let streams = connect_h2_streams(dial.addr, tls, n).await?;
                let tasks: Vec<_> = streams
                    .into_iter()
                    .map(|s| tokio::spawn(closed_conn(s, BytesMut::new(), sh.clone())))
                    .collect();
                for t in tasks {
                    t.await.map_err(io::Error::other)??;
                }
                Ok(())
            })
        })
        .collect()
}

async fn closed_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    mut buf: BytesMut,
    sh: Arc<Closed>,
) -> io::Result<()> {
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
        outstanding = outstanding
            .checked_sub(r.results)
            .ok_or_else(|| io::Error::other("reply without request"))?;
        sh.done.fetch_add(r.results as u64, Ordering::Relaxed);
        if r.closed {
            return Err(io::Error::other("closed by peer"));
        }
    }
    ws_close(&mut s, &mut buf).await
}
