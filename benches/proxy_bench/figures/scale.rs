//! Figure 6, scale: on a freshly started proxy, `CONNS` connections paced request/response
//! at the scale rate (the baseline), then BENCH_SCALE_CONNS connections open with
//! BENCH_SCALE_ACTIVE of them paced at the same rate and the rest idle: both p99s and the
//! RSS per open connection; medians of BENCH_ROUNDS interleaved rounds, a fresh proxy each.
//!
//! The rate is an eighth of direct's request/response maximum (BENCH_SCALE_RATE overrides
//! it), not the latency figure's quarter: at the quarter (40,000 msg/s here) 900
//! one-in-flight connections overloaded this 2-core host on every path (HAProxy's p50 24 ms,
//! 34,000 of 40,000 msg/s answered) while 64 did not, so the figure measured the host, not
//! the number of connections. At an eighth every path answers all it is sent.

use std::net::SocketAddr;
use std::time::Duration;

use super::latency::LatencyResult;
use super::{interleaved, Run, Samples};
use crate::load::{close_idle, open_idle, warm_up, OpenLoop, Shape};
use crate::paths::{start_path, PathKind, Setup};
use crate::procfs::tree_rss_kib;

/// One round on one path.
struct ScaleResult {
    /// `CONNS` connections at the scale rate, nothing else open.
    base: LatencyResult,
    /// BENCH_SCALE_ACTIVE connections at the same rate among BENCH_SCALE_CONNS open.
    latency: LatencyResult,
    /// Connections open while paced: idle ones that opened plus active ones.
    open: usize,
    /// RSS per open connection (bytes), when there is a proxy.
    bytes_per_conn: Option<f64>,
}

/// Each round's figures, per path.
#[derive(Default)]
struct ScaleSamples {
    base_p99: Samples,
    p99: Samples,
    bytes_per_conn: Samples,
}

impl Run<'_> {
    /// The scale figure's total paced rate (msg/s): BENCH_SCALE_RATE, else an eighth of
    /// direct's request/response maximum (a quarter of that latency figure's higher rate).
    pub fn scale_rate(&self) -> f64 {
        self.set
            .scale_rate
            .unwrap_or_else(|| (self.latency_rate(Shape::RequestResponse) / 4.0).round())
    }

    /// Every path of `paths`, BENCH_ROUNDS interleaved rounds. The bench process holds both
    /// ends of a direct connection and the client end plus the backend end of a proxied
    /// one: 2 × BENCH_SCALE_CONNS descriptors (18,000 for 9,000) under a limit of `nofile`
    /// (20,000 here); each proxy holds 2 per connection in its own process.
    pub fn scale(&mut self, setup: &Setup, paths: &[PathKind], nofile: u64) {
        let set = self.set;
        let rate = self.scale_rate();
        println!(
            "\n[scale: {} connections, then {} open with {} of them request/response, at {:.0} msg/s in all, {} round(s) of {} s after {} s warm-up]",
            set.conns, set.scale_conns, set.scale_active, rate, set.rounds, set.secs, set.warmup
        );
        let need = 2 * set.scale_conns as u64 + 256;
        if need > nofile {
            self.notes.push(format!(
                "scale: the open-file limit {nofile} is below the {need} descriptors the bench \
                 process needs for {} connections; some did not open",
                set.scale_conns
            ));
        }
        let mut got = ScaleSamples::default();
        for (_, &p) in interleaved(paths, set.rounds) {
            let s = start_path(p, setup, self.rt);
            let r = self.measure_scale(s.plain, s.proxy_pid(), rate);
            s.stop();
            self.print_scale(p, &r);
            self.note_opened(p, r.open, set.scale_conns, "scale");
            self.note_shortfall(p.label(), Shape::RequestResponse, &r.base, rate);
            self.note_shortfall(p.label(), Shape::RequestResponse, &r.latency, rate);
            got.base_p99.push(p, r.base.p99_us);
            got.p99.push(p, r.latency.p99_us);
            got.bytes_per_conn.extend(p, r.bytes_per_conn);
        }
        for &p in paths {
            let f = self.fig(p);
            f.scale_base_p99 = got.base_p99.median(p);
            f.scale_p99 = got.p99.median(p);
            f.scale_mem_per_conn = got.bytes_per_conn.median(p);
        }
    }

    fn print_scale(&self, p: PathKind, r: &ScaleResult) {
        let (b, l) = (&r.base, &r.latency);
        println!(
            "  {:<15} {} conns: p99 {:>6.0} µs{}   {} open: p50 {:>6.0} µs   p99 {:>6.0} µs ({:.2}×)   {} bytes/conn   ({:.0} replies/s measured{})",
            p.label(),
            self.set.conns,
            b.p99_us,
            b.errors_note(),
            r.open,
            l.p50_us,
            l.p99_us,
            l.p99_us / b.p99_us,
            r.bytes_per_conn.map_or("–".into(), |b| format!("{b:.0}")),
            l.achieved,
            l.errors_note()
        );
    }

    /// The baseline, then the idle connections and the paced ones among them; RSS of
    /// `pid`'s process tree after the baseline and with all of them open, after the window.
    fn measure_scale(&self, addr: SocketAddr, pid: Option<u32>, rate: f64) -> ScaleResult {
        let set = self.set;
        warm_up(self.rt, addr);
        let base = OpenLoop::start(self.rt, addr, set.conns, Shape::RequestResponse);
        base.pace(rate, set.warmup, set.secs);
        let base = self.latency_of(base);
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
            base,
            latency,
            open,
            bytes_per_conn: before
                .zip(after)
                .map(|(b, a)| (a as f64 - b as f64) * 1024.0 / open.max(1) as f64),
        }
    }
}
