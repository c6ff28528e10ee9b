//! Figure 6, scale: BENCH_SCALE_CONNS connections open through a freshly started proxy,
//! BENCH_SCALE_ACTIVE of them paced request/response at the rate of the 64-connection
//! quarter-rate latency figure, the rest idle; the p99 and the RSS per open connection.

use std::net::SocketAddr;
use std::time::Duration;

use super::latency::LatencyResult;
use super::Run;
use crate::load::{close_idle, open_idle, warm_up, OpenLoop, Shape};
use crate::paths::{start_path, PathKind, Setup};
use crate::procfs::tree_rss_kib;

struct ScaleResult {
    latency: LatencyResult,
    /// Connections open while paced: idle ones that opened plus active ones.
    open: usize,
    /// RSS per open connection (bytes), when there is a proxy.
    bytes_per_conn: Option<f64>,
}

impl Run<'_> {
    /// Every path of `paths`; `rate` is the total paced rate (msg/s). The bench process
    /// holds both ends of a direct connection and the client end plus the backend end of a
    /// proxied one: 2 × BENCH_SCALE_CONNS descriptors (18,000 for 9,000) under a limit of
    /// `nofile` (20,000 here); each proxy holds 2 per connection in its own process.
    pub fn scale(&mut self, setup: &Setup, paths: &[PathKind], rate: f64, nofile: u64) {
        let set = self.set;
        println!(
            "\n[scale: {} connections open, {} of them request/response at {:.0} msg/s in all, {} s after {} s warm-up]",
            set.scale_conns, set.scale_active, rate, set.secs, set.warmup
        );
        let need = 2 * set.scale_conns as u64 + 256;
        if need > nofile {
            self.notes.push(format!(
                "scale: the open-file limit {nofile} is below the {need} descriptors the bench \
                 process needs for {} connections; some did not open",
                set.scale_conns
            ));
        }
        for &p in paths {
            let s = start_path(p, setup, self.rt);
            let r = self.measure_scale(s.plain, s.proxy_pid(), rate);
            s.stop();
            let l = &r.latency;
            let at_64 = self.figs[p.index()].rr.quarter.p99;
            println!(
                "  {:<15} p50 {:>7.0} µs   p99 {:>7.0} µs ({}× the 64-connection p99)   {} bytes/conn   ({} open, {:.0} replies/s measured{})",
                p.label(),
                l.p50_us,
                l.p99_us,
                at_64.map_or("–".into(), |v| format!("{:.2}", l.p99_us / v)),
                r.bytes_per_conn.map_or("–".into(), |b| format!("{b:.0}")),
                r.open,
                l.achieved,
                l.errors_note()
            );
            self.note_opened(p, r.open, set.scale_conns, "scale");
            self.note_shortfall(p.label(), Shape::RequestResponse, l, rate);
            let f = self.fig(p);
            f.scale_p99 = Some(l.p99_us);
            f.scale_mem_per_conn = r.bytes_per_conn;
        }
    }

    /// Opens the idle connections, then paces the active ones; RSS of `pid`'s process tree
    /// before the connections and with all of them open, after the paced window.
    fn measure_scale(&self, addr: SocketAddr, pid: Option<u32>, rate: f64) -> ScaleResult {
        let set = self.set;
        warm_up(self.rt, addr);
        std::thread::sleep(Duration::from_millis(500));
        let before = pid.map(tree_rss_kib);
        let idle_count = set.scale_conns.saturating_sub(set.scale_active);
        let idle = open_idle(self.rt, addr, idle_count, set.idle_round_trip);
        let load = OpenLoop::start(self.rt, addr, set.scale_active, Shape::RequestResponse);
        let open = idle.len() + load.connected();
        load.pace(rate, set.warmup, set.secs);
        let after = pid.map(tree_rss_kib);
        let latency = self.latency_of(load);
        close_idle(self.rt, idle);
        std::thread::sleep(Duration::from_millis(300));
        ScaleResult {
            latency,
            open,
            bytes_per_conn: before
                .zip(after)
                .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / open.max(1) as f64),
        }
    }
}
