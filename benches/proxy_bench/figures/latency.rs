//! Figure 2, latency: p50/p99 round trip under paced open-loop load in each shape, at half
//! of direct's maximum in that shape and at a quarter of it.

use std::net::SocketAddr;

use super::{Percentiles, Run};
use crate::load::{OpenLoop, Shape};
use crate::paths::RunningPath;

pub(super) struct LatencyResult {
    pub p50_us: f64,
    pub p99_us: f64,
    pub achieved: f64,
    pub errors: usize,
}

impl LatencyResult {
    fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: Some(self.p50_us),
            p99: Some(self.p99_us),
        }
    }

    /// `, N errors` when there were any.
    pub fn errors_note(&self) -> String {
        if self.errors > 0 {
            format!(", {} errors", self.errors)
        } else {
            String::new()
        }
    }
}

impl Run<'_> {
    /// Both rates on every path in `shape`; `rate` is the higher total over all
    /// connections (msg/s).
    pub fn latency(&mut self, running: &[RunningPath], shape: Shape, rate: f64) {
        let set = self.set;
        println!(
            "\n[latency, {}: {} msg/s total over {} connections, {} s after {} s warm-up]",
            shape.label(),
            rate,
            set.conns,
            set.secs,
            set.warmup
        );
        let perf = match shape {
            Shape::Pipelined => "latency",
            Shape::RequestResponse => "rr-latency",
        };
        for s in running {
            let p = s.kind;
            let r = self.measure_latency(s.plain, shape, rate);
            println!(
                "  {:<15} p50 {:>7.0} µs   p99 {:>7.0} µs   ({:.0} replies/s measured{})",
                p.label(),
                r.p50_us,
                r.p99_us,
                r.achieved,
                r.errors_note()
            );
            self.note_shortfall(p.label(), shape, &r, rate);
            self.fig(p).shape_mut(shape).half = r.percentiles();
            // Half the direct maximum is close to where every proxy saturates on a small
            // machine, so the added latency there is mostly queueing. A quarter of it shows
            // what a proxy adds when it keeps up.
            let profile = self.profile(perf, s, &s.pids(), 0);
            let q = self.measure_latency(s.plain, shape, rate / 2.0);
            profile.stop();
            println!(
                "  {:<15} at {:.0} msg/s: p50 {:>7.0} µs   p99 {:>7.0} µs{}",
                "",
                rate / 2.0,
                q.p50_us,
                q.p99_us,
                q.errors_note()
            );
            self.note_shortfall(p.label(), shape, &q, rate / 2.0);
            self.fig(p).shape_mut(shape).quarter = q.percentiles();
        }
    }

    /// A note when a paced run answered clearly less than it was asked to send.
    pub(super) fn note_shortfall(&mut self, who: &str, shape: Shape, r: &LatencyResult, rate: f64) {
        if r.achieved < 0.95 * rate {
            self.notes.push(format!(
                "{who}: {} latency run at {:.0} msg/s answered only {:.0} msg/s",
                shape.label(),
                rate,
                r.achieved
            ));
        }
    }

    /// `CONNS` connections to `addr` paced at `rate` in `shape`: the round trips sent in
    /// the `SECS` after `WARMUP`.
    fn measure_latency(&self, addr: SocketAddr, shape: Shape, rate: f64) -> LatencyResult {
        let set = self.set;
        let load = OpenLoop::start(self.rt, addr, set.conns, shape);
        load.pace(rate, set.warmup, set.secs);
        self.latency_of(load)
    }

    /// Ends a paced load; its percentiles, and the replies/s it measured over `SECS`.
    pub(super) fn latency_of(&self, load: OpenLoop) -> LatencyResult {
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
            achieved: all.len() as f64 / self.set.secs,
            errors,
        }
    }
}
