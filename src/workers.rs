//! The worker threads' event loops, and the hand-off that keeps their loads even.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket, and the kernel spreads connections
//! over those sockets by a hash of their addresses, not by how busy each worker is: with 64
//! connections one worker measured 54 % of the relay's CPU time and the other 46 %, and
//! the busier one sets every tail latency. So a worker that holds more connections than the
//! least busy one (by more than [`SLACK`]) hands a new connection to it, as HAProxy's
//! listener threads do. The hand-off costs one cross-thread wake-up, and only connections
//! that would tip the balance pay it.

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
}
