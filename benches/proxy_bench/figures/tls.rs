//! Figure 5, the TLS data path: `wss://` closed loop with 1 KiB Submissions, every proxy
//! terminating TLS 1.3 with the same ECDSA P-256 certificate; messages/s and the proxy's
//! CPU time per message, medians of BENCH_ROUNDS interleaved rounds. Direct is the
//! backend's own TLS listener (rustls in the bench process, so no proxy CPU).

use super::throughput::ClosedSpec;
use super::Run;
use crate::paths::RunningPath;
use crate::tls::tls_connector;
use crate::wire::{submission_frame_of, TLS_SUBMISSION_BYTES};

impl Run<'_> {
    pub fn tls(&mut self, running: &[RunningPath]) {
        let set = self.set;
        println!(
            "\n[TLS data path: {} wss:// connections × {} in flight, {}-byte Submissions, {} round(s) of {} s after {} s warm-up]",
            set.conns, set.inflight, TLS_SUBMISSION_BYTES, set.rounds, set.secs, set.warmup
        );
        let spec = ClosedSpec {
            perf: "tls",
            inflight: set.inflight,
            frame: submission_frame_of(TLS_SUBMISSION_BYTES),
            tls: Some(tls_connector()),
            h2_streams: None,
        };
        let got = self.closed_rounds(running, &spec);
        for s in running {
            let f = self.fig(s.kind);
            f.tls_throughput = got.rates.median(s.kind);
            f.tls_cpu_per_msg = got.cpus.median(s.kind);
        }
    }
}
