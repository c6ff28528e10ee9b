//! Figure 1, throughput: messages/s under closed-loop load with the proxy's CPU time per
//! message; the median of BENCH_ROUNDS interleaved rounds.

use std::time::{Duration, Instant};

use super::{interleaved, Run, Samples};
use crate::load::ClosedLoop;
use crate::paths::RunningPath;
use crate::procfs::{cpu_ns, loadavg};
use crate::report::fmt_num;

struct ThroughputResult {
    msgs_per_sec: f64,
    errors: usize,
    /// CPU time the proxy's processes used per message in the window (ns), when known.
    proxy_ns_per_msg: Option<f64>,
}

impl Run<'_> {
    pub fn throughput(&mut self, running: &[RunningPath]) {
        let set = self.set;
        println!(
            "\n[throughput: {} connections × {} in flight, {} round(s) of {} s after {} s warm-up]",
            set.conns, set.inflight, set.rounds, set.secs, set.warmup
        );
        let (mut rates, mut cpus) = (Samples::default(), Samples::default());
        for (round, s) in interleaved(running, set.rounds) {
            let r = self.measure_throughput(s, round);
            println!(
                "  {:<15} {:>10.0} msg/s{}   proxy CPU {} ns/msg   load {}",
                s.kind.label(),
                r.msgs_per_sec,
                if r.errors > 0 {
                    format!(" ({} errors)", r.errors)
                } else {
                    String::new()
                },
                fmt_num(r.proxy_ns_per_msg, 0),
                loadavg()
            );
            rates.push(s.kind, r.msgs_per_sec);
            cpus.extend(s.kind, r.proxy_ns_per_msg);
        }
        for s in running {
            let f = self.fig(s.kind);
            f.throughput = rates.median(s.kind);
            f.cpu_per_msg = cpus.median(s.kind);
        }
    }

    /// One round on one path: `SECS` of closed-loop load after `WARMUP`.
    fn measure_throughput(&self, s: &RunningPath, round: usize) -> ThroughputResult {
        let set = self.set;
        let proxy_pids = s.pids();
        let load = ClosedLoop::start(self.rt, s.plain, set.conns, set.inflight);
        std::thread::sleep(Duration::from_secs_f64(set.warmup));
        let profile = self.profile("throughput", s, round);
        let cpu0 = cpu_ns(&proxy_pids);
        let c0 = load.results();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(set.secs));
        let c1 = load.results();
        let cpu1 = cpu_ns(&proxy_pids);
        let elapsed = t0.elapsed().as_secs_f64();
        profile.stop();
        let errors = load.finish(self.rt);
        ThroughputResult {
            msgs_per_sec: (c1 - c0) as f64 / elapsed,
            errors,
            proxy_ns_per_msg: (!proxy_pids.is_empty() && c1 > c0)
                .then(|| cpu1.saturating_sub(cpu0) as f64 / (c1 - c0) as f64),
        }
    }
}
