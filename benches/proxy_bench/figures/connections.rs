//! Figure 3, new connections/s: connect (+ TLS 1.3) + upgrade + one round trip + close, plain
//! and TLS, with the proxy's CPU time per connection; medians of BENCH_ROUNDS interleaved
//! rounds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{interleaved, Run, Samples};
use crate::load::{print_failed, Churn};
use crate::paths::RunningPath;
use crate::procfs::cpu_ns;
use crate::tls::tls_connector;

struct ConnRateResult {
    per_sec: f64,
    errors: u64,
    /// CPU time the proxy's processes used per connection in the window (ns), when known.
    proxy_ns_per_conn: Option<f64>,
}

impl Run<'_> {
    pub fn connections(&mut self, running: &[RunningPath]) {
        let set = self.set;
        let connector = tls_connector();
        println!(
            "\n[new connections/s: {} workers, {} round(s) of {} s; connect + upgrade + 1 round trip + close]",
            set.conn_workers, set.rounds, set.conn_secs
        );
        let (mut plain_rates, mut tls_rates) = (Samples::default(), Samples::default());
        let (mut plain_cpu, mut tls_cpu) = (Samples::default(), Samples::default());
        for (round, s) in interleaved(running, set.rounds) {
            let p = s.kind;
            let pids = s.pids();
            // The gateway serves TLS from a second instance; the others from the same one.
            let tls_pids = s.tls_pids().unwrap_or_else(|| pids.clone());
            let profile = self.profile("connections", s, &pids, round);
            let plain = self.measure_conn_rate(s.plain, None, &pids);
            profile.stop();
            std::thread::sleep(Duration::from_millis(300));
            let tls = self.measure_conn_rate(s.tls, Some(connector.clone()), &tls_pids);
            println!(
                "  {:<15} plain {:>7.0}/s   TLS 1.3 {:>7.0}/s{}",
                p.label(),
                plain.per_sec,
                tls.per_sec,
                if plain.errors + tls.errors > 0 {
                    format!("   ({} + {} errors)", plain.errors, tls.errors)
                } else {
                    String::new()
                }
            );
            plain_rates.push(p, plain.per_sec);
            tls_rates.push(p, tls.per_sec);
            plain_cpu.extend(p, plain.proxy_ns_per_conn);
            tls_cpu.extend(p, tls.proxy_ns_per_conn);
            std::thread::sleep(Duration::from_millis(300));
        }
        for s in running {
            let (p, f) = (s.kind, self.fig(s.kind));
            f.conns_plain = plain_rates.median(p);
            f.conns_tls = tls_rates.median(p);
            f.cpu_per_conn_plain = plain_cpu.median(p);
            f.cpu_per_conn_tls = tls_cpu.median(p);
        }
    }

    /// `CONN_WORKERS` workers opening short sessions for 0.5 s + `CONN_SECS`; the last
    /// `CONN_SECS` count.
    fn measure_conn_rate(
        &self,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsConnector>,
        proxy_pids: &[u32],
    ) -> ConnRateResult {
        let warm = Duration::from_millis(500);
        let measure = Duration::from_secs_f64(self.set.conn_secs);
        let from = Instant::now() + warm;
        let to = from + measure;
        let churn = Churn::start(self.rt, addr, tls, self.set.conn_workers, (from, to));
        // The proxy's CPU time over the counted window, sampled beside the load.
        let cpu = {
            let pids = proxy_pids.to_vec();
            std::thread::spawn(move || {
                std::thread::sleep(from.saturating_duration_since(Instant::now()));
                let c0 = cpu_ns(&pids);
                std::thread::sleep(to.saturating_duration_since(Instant::now()));
                cpu_ns(&pids).saturating_sub(c0)
            })
        };
        let n = churn.finish(self.rt);
        let cpu = cpu.join().unwrap_or(0);
        if let Some(e) = n.first_error {
            print_failed(n.errors, e);
        }
        // Connections that started in the window and ended in it, over the window: a slight
        // undercount at the edges, the same for every path.
        let done = n.counted;
        ConnRateResult {
            per_sec: done as f64 / measure.as_secs_f64(),
            errors: n.errors,
            proxy_ns_per_conn: (!proxy_pids.is_empty() && done > 0)
                .then(|| cpu as f64 / done as f64),
        }
    }
}
