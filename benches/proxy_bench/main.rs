//! Proxy benchmark (issue 7): direct vs mosaic-gateway vs nginx vs HAProxy, one run.
//!
//! `cargo bench --bench proxy_bench` (or `bash bench/run.sh`). Everything runs on 127.0.0.1:
//! a fast echo-style Mosaic backend and a raw-frame WebSocket load generator, both in this
//! process on their own runtimes (one thread each), and every proxy as a foreground child
//! process with its own config in a temporary directory.
//!
//! Figures, for every path with the same backend and the same load:
//! 1. messages/s: `CONNS` connections, each keeping `INFLIGHT` 128-byte Submissions in
//!    flight (closed loop), measured for `SECS` after `WARMUP`, in `ROUNDS` interleaved
//!    rounds (every path once per round); the figure is the median, so one slow spell of a
//!    shared machine does not decide a ratio. The proxy's CPU time per message comes with it;
//! 2. p50/p99 round trip at a fixed total rate of half the direct maximum (open loop, paced
//!    by a 100 µs ticker spread round-robin over the same `CONNS` connections);
//! 3. new connections/s: connect (+ TLS 1.3) + upgrade + one round trip + close handshake,
//!    `CONN_WORKERS` in parallel, plain and TLS (the same self-signed ed25519 certificate
//!    on every path; the client does a full handshake every time, no resumption), median of
//!    `ROUNDS` interleaved rounds, with the proxy's CPU time per connection;
//! 4. RSS per idle proxied connection: proxy RSS after `IDLE_CONNS` upgraded connections
//!    (each made one round trip, then idles) minus RSS before, divided by `IDLE_CONNS`.
//!
//! Environment knobs (defaults in brackets): BENCH_SECS [3], BENCH_WARMUP [1],
//! BENCH_ROUNDS [3], BENCH_CONNS [64], BENCH_INFLIGHT [16], BENCH_CONN_SECS [2],
//! BENCH_CONN_WORKERS [32],
//! BENCH_IDLE_CONNS [5000], BENCH_PATHS [direct,gateway,nginx,haproxy; gateway-limits is
//! mosaic-gateway with every rate limit and an access list configured but never hit],
//! BENCH_GATEWAY_LIMITS [0] (1: add gateway-limits to the paths, and the idle-limiter
//! comparison to the report),
//! BENCH_FIGURES [memory,throughput,latency,connections], BENCH_RATE (latency rate when
//! direct throughput is not measured), BENCH_PERF (a file: run `perf BENCH_PERF_ARGS -o
//! FILE -p PIDS` on BENCH_PERF_PATH [gateway] during its BENCH_PERF_FIGURE [throughput;
//! connections: the plain new-connection window; latency: the quarter-rate window] window;
//! BENCH_PERF_ARGS
//! [record -e cpu-clock -F 999 --call-graph dwarf,16384], or e.g. `stat -e
//! syscalls:sys_enter_sendto,...` to count system calls), BENCH_GATEWAY_WRAPPER (a command prefix such as
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out`), BENCH_RESULTS (where
//! to write the table; bench/results.md), BENCH_IDLE_ROUND_TRIP [1] (0: idle connections
//! make no round trip before idling), BENCH_IDLE_WAIT [1.5] (seconds between opening the
//! idle connections and reading RSS).

mod backend;
mod figures;
mod load;
mod paths;
mod procfs;
mod report;
mod settings;
mod tls;
mod wire;

use std::time::Instant;

use tokio::runtime::Runtime;

use backend::Backend;
use figures::Run;
use paths::Setup;
use settings::Settings;
use tls::TlsFiles;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_mosaic-gateway");

fn main() {
    let set = Settings::from_env();
    raise_nofile();
    let started_at = Instant::now();
    paths::install_missing();
    let client_rt = single_thread_runtime("bench-client");
    let backend_rt = single_thread_runtime("bench-backend");

    // The run's directory: configs, logs, and the key and certificate of every TLS listener.
    let tmp = tempfile::Builder::new()
        .prefix("proxy-bench-")
        .tempdir()
        .expect("temp dir");
    let tls_files = TlsFiles::create(tmp.path());
    let backend = Backend::start(&backend_rt, &tls_files);
    let setup = Setup::new(tmp.path(), backend, tls_files, &set);
    let paths = paths::available(&set);
    let mut run = Run::new(&client_rt, &set);
    report::machine_state(&mut run.notes);

    // 4. Memory first, on fresh proxies.
    if set.wants("memory") {
        run.memory(&setup, &paths);
    }
    // Start every path for the load figures.
    let running = paths::start_all(&paths, &setup, &client_rt, set.wants("connections"));
    if set.wants("throughput") {
        run.throughput(&running);
    }
    let rate = run.latency_rate();
    if set.wants("latency") {
        run.latency(&running, rate);
    }
    if set.wants("connections") {
        run.connections(&running);
    }
    for path in running {
        path.stop();
    }

    let table = report::render(&run, &set, rate);
    println!("\n{table}");
    report::write_results(&set.results, &table, started_at);
}

fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn single_thread_runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}
