//! The worker threads' event loops, and the hand-off that keeps their loads even.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket, and the kernel spreads connections
//! over those sockets by a hash of their addresses, not by how busy each worker is: with 64
//! connections one worker measured 54 % of the relay's CPU time and the other 46 %, and
//! the busier one sets every tail latency. So a worker that holds more connections than the
//! least busy one (by more than [`SLACK`]) hands a new connection to it, as HAProxy's
//! listener threads do. The hand-off costs one cross-thread wake-up, and only connections
//! that would tip the balance pay it.

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// How many more tasks a worker may hold than the least busy one before it hands new
/// connections over. Two: a connection is a task, and a connection being set up may be a
/// second one for a moment.
const SLACK: usize = 2;

/// The event loops of every worker thread.
#[derive(Clone)]
pub struct Workers {
    handles: std::sync::Arc<[Handle]>,
}

impl Workers {
    /// The workers whose event loops are `handles`, in worker order.
    pub fn new(handles: Vec<Handle>) -> Self {
        Workers {
            handles: handles.into(),
        }
    }

    /// The worker a connection accepted by worker `me` should run on: `None` for `me`
    /// itself, or the least busy worker when `me` holds more than [`SLACK`] tasks more.
    pub fn pick(&self, me: usize) -> Option<&Handle> {
        let load = |h: &Handle| h.metrics().num_alive_tasks();
        let mine = load(self.handles.get(me)?);
        let (least, least_load) = self
            .handles
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(i, h)| (i, load(h)))
            .min_by_key(|(_, l)| *l)?;
        (least_load + SLACK < mine).then(|| &self.handles[least])
    }
}

/// Moves an accepted socket from this event loop's poller into `to`'s: a socket is
/// registered with one poller only, and its task must run on that loop.
pub fn move_to(to: &Handle, tcp: TcpStream) -> std::io::Result<TcpStream> {
    let tcp = tcp.into_std()?;
    let _in_other_loop = to.enter();
    TcpStream::from_std(tcp)
}

#[cfg(test)]
mod tests {
    use super::Workers;

    fn worker() -> (tokio::runtime::Runtime, tokio::runtime::Handle) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let h = rt.handle().clone();
        (rt, h)
    }

    #[test]
    fn a_worker_with_more_connections_hands_new_ones_to_the_least_busy() {
        let (rt0, h0) = worker();
        let (_rt1, h1) = worker();
        let workers = Workers::new(vec![h0.clone(), h1]);
        assert!(workers.pick(0).is_none(), "even loads stay where they are");
        // Tasks that stay alive, as open connections do.
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let _guard = rt0.enter();
        for _ in 0..3 {
            let stop = stop.clone();
            h0.spawn(async move { stop.notified().await });
        }
        let picked = workers.pick(0).expect("worker 0 is three tasks busier");
        assert!(std::ptr::eq(picked, &workers.handles[1]));
        assert!(workers.pick(1).is_none(), "the idle worker keeps its own");
    }

    #[test]
    fn a_connection_moved_to_another_worker_is_served_there() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The other worker: its own thread and event loop, as in the gateway.
        let (other_rt, other) = worker();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            other_rt.block_on(async {
                let _ = stop_rx.await;
            })
        });
        let (rt, _) = worker();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = l.accept().await.expect("accept");
            let moved = super::move_to(&other, accepted).expect("move");
            // An echo that runs on the other worker's loop only.
            other.spawn(async move {
                let mut moved = moved;
                let mut b = [0u8; 5];
                if moved.read_exact(&mut b).await.is_ok() {
                    let _ = moved.write_all(&b).await;
                }
            });
            client.write_all(b"hello").await.expect("write");
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.expect("echo");
            assert_eq!(&back, b"hello");
        });
        let _ = stop_tx.send(());
        thread.join().expect("other worker");
    }
}
