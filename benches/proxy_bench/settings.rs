//! The benchmark's settings: the BENCH_* environment variables (listed in the crate doc).

use std::path::{Path, PathBuf};

use crate::paths::PathKind;
use crate::MANIFEST_DIR;

pub struct Settings {
    pub secs: f64,
    pub warmup: f64,
    pub conns: usize,
    pub inflight: usize,
    pub conn_secs: f64,
    pub conn_workers: usize,
    pub idle_conns: usize,
    /// Each idle connection makes one round trip before it idles (BENCH_IDLE_ROUND_TRIP).
    pub idle_round_trip: bool,
    /// Seconds between opening the idle connections and reading RSS (BENCH_IDLE_WAIT).
    pub idle_wait: f64,
    pub paths: Vec<PathKind>,
    pub figures: Vec<String>,
    /// The pipelined latency figure's higher rate when direct's throughput is not measured.
    pub rate: Option<f64>,
    /// The request/response latency figure's higher rate, likewise (BENCH_RR_RATE).
    pub rr_rate: Option<f64>,
    /// Connections open in the scale figure (BENCH_SCALE_CONNS).
    pub scale_conns: usize,
    /// How many of them are paced; the rest idle (BENCH_SCALE_ACTIVE).
    pub scale_active: usize,
    /// The scale figure's total paced rate (BENCH_SCALE_RATE).
    pub scale_rate: Option<f64>,
    /// Rounds of the throughput, scale and new-connection figures; each figure is the median.
    pub rounds: usize,
    /// WebSockets per TLS connection in the h2 figure (BENCH_H2_STREAMS).
    pub h2_streams: usize,
    pub perf: Option<String>,
    /// What `perf` is told before `-o FILE -p PIDS` (BENCH_PERF_ARGS).
    pub perf_args: String,
    /// The path BENCH_PERF profiles.
    pub perf_path: PathKind,
    /// The figure whose window BENCH_PERF profiles (BENCH_PERF_FIGURE).
    pub perf_figure: String,
    pub wrapper: Option<String>,
    pub results: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Settings {
    pub fn from_env() -> Settings {
        let mut paths: Vec<PathKind> = std::env::var("BENCH_PATHS")
            .unwrap_or_else(|_| "direct,gateway,nginx,haproxy".into())
            .split(',')
            .filter_map(|p| PathKind::parse(p.trim()))
            .collect();
        if env_or("BENCH_GATEWAY_LIMITS", 0) != 0 && !paths.contains(&PathKind::GatewayLimits) {
            paths.push(PathKind::GatewayLimits);
        }
        let figures = std::env::var("BENCH_FIGURES")
            .unwrap_or_else(|_| "memory,throughput,rr,latency,tls,h2,scale,connections".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let scale_conns: usize = env_or("BENCH_SCALE_CONNS", 9000);
        Settings {
            secs: env_or("BENCH_SECS", 3.0),
            warmup: env_or("BENCH_WARMUP", 1.0),
            conns: env_or("BENCH_CONNS", 64),
            inflight: env_or("BENCH_INFLIGHT", 16),
            conn_secs: env_or("BENCH_CONN_SECS", 2.0),
            conn_workers: env_or("BENCH_CONN_WORKERS", 32),
            idle_conns: env_or("BENCH_IDLE_CONNS", 5000),
            idle_round_trip: env_or("BENCH_IDLE_ROUND_TRIP", 1) != 0,
            idle_wait: env_or("BENCH_IDLE_WAIT", 1.5),
            paths,
            figures,
            rate: std::env::var("BENCH_RATE")
                .ok()
                .and_then(|v| v.parse().ok()),
            rr_rate: std::env::var("BENCH_RR_RATE")
                .ok()
                .and_then(|v| v.parse().ok()),
            scale_conns,
            scale_active: env_or("BENCH_SCALE_ACTIVE", scale_conns / 10)
                .clamp(1, scale_conns.max(1)),
            scale_rate: std::env::var("BENCH_SCALE_RATE")
                .ok()
                .and_then(|v| v.parse().ok()),
            rounds: env_or("BENCH_ROUNDS", 3usize).max(1),
            h2_streams: env_or("BENCH_H2_STREAMS", 8usize).max(1),
            perf: std::env::var("BENCH_PERF").ok().filter(|s| !s.is_empty()),
            perf_args: std::env::var("BENCH_PERF_ARGS")
                .unwrap_or_else(|_| "record -e cpu-clock -F 999 --call-graph dwarf,16384".into()),
            perf_path: std::env::var("BENCH_PERF_PATH")
                .ok()
                .and_then(|p| PathKind::parse(p.trim()))
                .unwrap_or(PathKind::Gateway),
            perf_figure: std::env::var("BENCH_PERF_FIGURE").unwrap_or_else(|_| "throughput".into()),
            wrapper: std::env::var("BENCH_GATEWAY_WRAPPER")
                .ok()
                .filter(|s| !s.is_empty()),
            results: std::env::var("BENCH_RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(MANIFEST_DIR).join("bench/results.md")),
        }
    }

    pub fn wants(&self, figure: &str) -> bool {
        self.figures.iter().any(|f| f == figure)
    }

    /// Whether BENCH_PERF profiles this window: `figure` on `path` in `round` (the first
    /// round only).
    pub fn profiles(&self, figure: &str, path: PathKind, round: usize) -> bool {
        self.perf.is_some() && round == 0 && self.perf_figure == figure && path == self.perf_path
    }
}
