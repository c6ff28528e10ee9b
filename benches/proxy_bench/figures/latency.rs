//! Figure 2, latency: p50/p99 round trip under paced open-loop load, at half the direct
//! maximum and at a quarter of it.

use super::Run;
use crate::load::OpenLoop;
use crate::paths::RunningPath;

struct LatencyResult {
    p50_us: f64,
    p99_us: f64,
    achieved: f64,
    errors: usize,
}

impl Run<'_> {
    /// Both rates on every path; `rate` is the total over all connections (msg/s).
    pub fn latency(&mut self, running: &[RunningPath], rate: f64) {
        let set = self.set;
        println!(
            "\n[latency: {} msg/s total over {} connections, {} s after {} s warm-up]",
            rate, set.conns, set.secs, set.warmup
        );
        for s in running {
            let p = s.kind;
            let r = self.measure_latency(s, rate);
            println!(
                "  {:<15} p50 {:>7.0} µs   p99 {:>7.0} µs   ({:.0} replies/s measured{})",
                p.label(),
                r.p50_us,
                r.p99_us,
                r.achieved,
                if r.errors > 0 {
                    format!(", {} errors", r.errors)
                } else {
                    String::new()
                }
            );
            if r.achieved < 0.95 * rate {
                self.notes.push(format!(
                    "{}: latency run answered only {:.0} of {:.0} msg/s",
                    p.label(),
                    r.achieved,
                    rate
                ));
            }
            self.fig(p).p50 = Some(r.p50_us);
            self.fig(p).p99 = Some(r.p99_us);
            // Half the direct maximum is close to where every proxy saturates on a small
            // machine, so the added latency there is mostly queueing. A quarter of it shows
            // what a proxy adds when it keeps up.
            let profile = self.profile("latency", s, 0);
            let q = self.measure_latency(s, rate / 2.0);
            profile.stop();
            println!(
                "  {:<15} at {:.0} msg/s: p50 {:>7.0} µs   p99 {:>7.0} µs",
                "",
                rate / 2.0,
                q.p50_us,
                q.p99_us
            );
            self.fig(p).p50_quarter = Some(q.p50_us);
            self.fig(p).p99_quarter = Some(q.p99_us);
        }
    }

    fn measure_latency(&self, s: &RunningPath, rate: f64) -> LatencyResult {
        let set = self.set;
        let load = OpenLoop::start(self.rt, s.plain, set.conns);
        load.pace(rate, set.warmup, set.secs);
        let (mut all, errors) = load.finish(self.rt);
        all.sort_unstable();
        let pct = |p: f64| -> f64 {
            if all.is_empty() {
                return f64::NAN;
            }
            let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
            all[i] as f64 / 1000.0
        };
        LatencyResult {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            achieved: all.len() as f64 / set.secs,
            errors,
        }
    }
}
