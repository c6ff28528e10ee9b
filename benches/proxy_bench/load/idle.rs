//! Idle connections (the memory and scale figures): upgraded connections that make one
//! round trip, then hold still.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

use super::OP_TIMEOUT;
use crate::wire::{connect_ws, one_connection, round_trip, submission_frame};

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
