//! Figure 1, throughput: messages/s under closed-loop load in each shape (pipelined and
//! request/response) with the proxy's CPU time per message; the median of BENCH_ROUNDS
//! interleaved rounds. The TLS data-path figure runs its rounds here too.

use std::time::{Duration, Instant};

use super::{interleaved, Run, Samples};
use crate::load::{ClosedLoop, Dial, Shape};
use crate::paths::RunningPath;
use crate::procfs::{cpu_ns, loadavg};
use crate::report::fmt_num;
use crate::wire::submission_frame;

/// What one closed-loop figure sends, and over what.
pub(super) struct ClosedSpec {
    /// The figure's window for BENCH_PERF_FIGURE.
    pub perf: &'static str,
    pub inflight: usize,
    pub frame: Vec<u8>,
    /// `wss://` to each path's TLS listener with this client; `ws://` when `None`.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// WebSockets as HTTP/2 streams, this many per TLS connection (see [`Dial`]).
    pub h2_streams: Option<usize>,
}

/// One round's messages/s and proxy CPU time per message, per path.
#[derive(Default)]
pub(super) struct ClosedFigures {
    pub rates: Samples,
    pub cpus: Samples,
}

struct ThroughputResult {
    msgs_per_sec: f64,
    errors: usize,
    /// CPU time the proxy's processes used per message in the window (ns), when known.
    proxy_ns_per_msg: Option<f64>,
}

impl Run<'_> {
    pub fn throughput(&mut self, running: &[RunningPath], shape: Shape) {
        let set = self.set;
        let (perf, inflight) = match shape {
            Shape::Pipelined => ("throughput", set.inflight),
            Shape::RequestResponse => ("rr", 1),
        };
        println!(
            "\n[throughput, {}: {} connections × {} in flight, {} round(s) of {} s after {} s warm-up]",
            shape.label(),
            set.conns,
            inflight,
            set.rounds,
            set.secs,
            set.warmup
        );
        let spec = ClosedSpec {
            perf,
            inflight,
            frame: submission_frame(),
            tls: None,
            h2_streams: None,
        };
        let got = self.closed_rounds(running, &spec);
        for s in running {
            let f = self.fig(s.kind).shape_mut(shape);
            f.throughput = got.rates.median(s.kind);
            f.cpu_per_msg = got.cpus.median(s.kind);
        }
    }

    /// BENCH_ROUNDS interleaved rounds of `spec` over every path; prints each.
    pub(super) fn closed_rounds(
        &self,
        running: &[RunningPath],
        spec: &ClosedSpec,
    ) -> ClosedFigures {
        let mut got = ClosedFigures::default();
        for (round, s) in interleaved(running, self.set.rounds) {
            self.closed_round(s, spec, round, s.kind.label(), &mut got);
        }
        got
    }

    /// One round of `spec` on `s`, printed as `label` and added to `got`.
    pub(super) fn closed_round(
        &self,
        s: &RunningPath,
        spec: &ClosedSpec,
        round: usize,
        label: &str,
        got: &mut ClosedFigures,
    ) {
        let r = self.measure_throughput(s, spec, round);
        println!(
            "  {:<22} {:>10.0} msg/s{}   proxy CPU {} ns/msg   load {}",
            label,
            r.msgs_per_sec,
            if r.errors > 0 {
                format!(" ({} errors)", r.errors)
            } else {
                String::new()
            },
            fmt_num(r.proxy_ns_per_msg, 0),
            loadavg()
        );
        got.rates.push(s.kind, r.msgs_per_sec);
        got.cpus.extend(s.kind, r.proxy_ns_per_msg);
    }

    /// One round on one path: `SECS` of closed-loop load after `WARMUP`.
    fn measure_throughput(
        &self,
        s: &RunningPath,
        spec: &ClosedSpec,
        round: usize,
    ) -> ThroughputResult {
        let set = self.set;
        let (dial, proxy_pids) = match &spec.tls {
            None => (
                Dial {
                    addr: s.plain,
                    tls: None,
                    h2_streams: None,
                },
                s.pids(),
            ),
            // The gateway serves TLS from a second instance; the others from the same one.
            Some(c) => (
                Dial {
                    addr: s.tls,
                    tls: Some(c.clone()),
                    h2_streams: spec.h2_streams,
                },
                s.tls_pids().unwrap_or_else(|| s.pids()),
            ),
        };
        let load = ClosedLoop::start(self.rt, &dial, set.conns, spec.inflight, spec.frame.clone());
        std::thread::sleep(Duration::from_secs_f64(set.warmup));
        let profile = self.profile(spec.perf, s, &proxy_pids, round);
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
