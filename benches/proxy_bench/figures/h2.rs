//! Figure 7, WebSockets over HTTP/2: figure 5's load (`wss://`, 1 KiB Submissions, closed
//! loop) with every WebSocket an extended CONNECT stream (RFC 8441), BENCH_H2_STREAMS on
//! each TLS connection; messages/s and the proxy's CPU time per message, medians of
//! BENCH_ROUNDS rounds. Each round measures the same path over HTTP/1.1 next to it (figure
//! 5's rows) unless figure 5 ran, so both transports see the same machine.

use super::throughput::{ClosedFigures, ClosedSpec};
use super::{interleaved, median, Run};
use crate::paths::{PathKind, RunningPath};
use crate::tls::{tls_connector, tls_connector_h2};
use crate::wire::{submission_frame_of, TLS_SUBMISSION_BYTES};

/// The paths whose front end takes WebSockets over HTTP/2: nginx does not implement RFC
/// 8441, and direct's backend speaks HTTP/1.1 only.
fn serves_h2(p: PathKind) -> bool {
    matches!(
        p,
        PathKind::Gateway | PathKind::Haproxy | PathKind::GatewayLimits
    )
}

impl Run<'_> {
    pub fn h2(&mut self, running: &[RunningPath]) {
        let set = self.set;
        let served: Vec<&RunningPath> = running.iter().filter(|s| serves_h2(s.kind)).collect();
        let with_h1 = running
            .iter()
            .all(|s| self.figs[s.kind.index()].tls_throughput.is_none());
        println!(
            "\n[WebSockets over h2: {} streams ({} per TLS connection) × {} in flight, {}-byte Submissions, {} round(s) of {} s after {} s warm-up{}]",
            set.conns,
            set.h2_streams,
            set.inflight,
            TLS_SUBMISSION_BYTES,
            set.rounds,
            set.secs,
            set.warmup,
            if with_h1 { "; each next to HTTP/1.1" } else { "" }
        );
        let frame = submission_frame_of(TLS_SUBMISSION_BYTES);
        let h2 = ClosedSpec {
            perf: "h2",
            inflight: set.inflight,
            frame: frame.clone(),
            tls: Some(tls_connector_h2()),
            h2_streams: Some(set.h2_streams),
        };
        let h1 = ClosedSpec {
            perf: "tls",
            inflight: set.inflight,
            frame,
            tls: Some(tls_connector()),
            h2_streams: None,
        };
        let (mut got2, mut got1) = (ClosedFigures::default(), ClosedFigures::default());
        for (round, s) in interleaved(&served, set.rounds) {
            let label = |t: &str| format!("{} {t}", s.kind.label());
            self.closed_round(s, &h2, round, &label("h2"), &mut got2);
            if with_h1 {
                self.closed_round(s, &h1, round, &label("HTTP/1.1"), &mut got1);
            }
        }
        for s in &served {
            let f = self.fig(s.kind);
            f.h2_throughput = got2.rates.median(s.kind);
            f.h2_cpu_per_msg = got2.cpus.median(s.kind);
            if with_h1 {
                f.tls_throughput = got1.rates.median(s.kind);
                f.tls_cpu_per_msg = got1.cpus.median(s.kind);
                f.h2_over_h1 = paired_ratio(&got2, &got1, s.kind);
            }
        }
    }
}

/// The median over rounds of h2's messages/s over HTTP/1.1's in the same round, measured
/// back to back: steadier on a shared machine than the ratio of the two medians.
fn paired_ratio(h2: &ClosedFigures, h1: &ClosedFigures, p: PathKind) -> Option<f64> {
    let (a, b) = (&h2.rates.0[p.index()], &h1.rates.0[p.index()]);
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&ratios)
}
