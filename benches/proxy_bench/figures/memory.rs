//! Figure 4, memory: RSS per idle proxied connection, on a freshly started proxy.

use std::net::SocketAddr;
use std::time::Duration;

use super::Run;
use crate::load::{close_idle, open_idle, warm_up};
use crate::paths::{start_path, PathKind, Setup};
use crate::procfs::tree_rss_kib;

struct MemoryResult {
    bytes_per_conn: f64,
    before_kib: u64,
    after_kib: u64,
    opened: usize,
}

impl Run<'_> {
    /// Starts each proxy of `paths` (direct has none) on its own, measures, stops it.
    pub fn memory(&mut self, setup: &Setup, paths: &[PathKind]) {
        let set = self.set;
        println!(
            "\n[memory per idle connection, {} connections]",
            set.idle_conns
        );
        for &p in paths.iter().filter(|p| **p != PathKind::Direct) {
            let s = start_path(p, setup, self.rt);
            let pid = s.proxy_pid().expect("a proxy");
            let m = self.measure_idle_memory(s.plain, pid);
            println!(
                "  {:<15} {:>8.0} bytes/conn  (RSS {} KiB → {} KiB, {} connections)",
                p.label(),
                m.bytes_per_conn,
                m.before_kib,
                m.after_kib,
                m.opened
            );
            self.note_opened(p, m.opened, set.idle_conns, "idle");
            self.fig(p).mem_per_conn = Some(m.bytes_per_conn);
            s.stop();
        }
    }

    /// RSS of the proxy's process tree (`pid`) before and after `IDLE_CONNS` connections.
    fn measure_idle_memory(&self, addr: SocketAddr, pid: u32) -> MemoryResult {
        let set = self.set;
        // Warm up: first-use allocations (TLS-free here, but runtime, pools, buffers).
        warm_up(self.rt, addr);
        std::thread::sleep(Duration::from_millis(500));
        let before = tree_rss_kib(pid);
        // Each idle connection makes one round trip first (BENCH_IDLE_ROUND_TRIP=0: none), so
        // buffers a proxy keeps after traffic count too.
        let conns = open_idle(self.rt, addr, set.idle_conns, set.idle_round_trip);
        std::thread::sleep(Duration::from_secs_f64(set.idle_wait));
        let after = tree_rss_kib(pid);
        let opened = conns.len();
        close_idle(self.rt, conns);
        std::thread::sleep(Duration::from_millis(500));
        MemoryResult {
            bytes_per_conn: (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64,
            before_kib: before,
            after_kib: after,
            opened,
        }
    }
}
