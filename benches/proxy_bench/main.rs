//! Proxy benchmark (issues 7 and 16): direct vs mosaic-gateway vs nginx vs HAProxy, one run.
//!
//! `cargo bench --bench proxy_bench` (or `bash bench/run.sh`). Everything runs on 127.0.0.1:
//! a fast echo-style Mosaic backend and a raw-frame WebSocket load generator, both in this
//! process on their own runtimes (one thread each), and every proxy as a foreground child
//! process with its own config in a temporary directory.
//!
//! Figures, for every path with the same backend and the same load, in two load shapes:
//! pipelined (many 128-byte Submissions in flight per connection) and request/response (one
//! in flight per connection, as a client that waits for each answer):
//! 1. messages/s: `CONNS` connections in a closed loop, each keeping `INFLIGHT`
//!    (pipelined) or one (request/response) Submission in flight, measured for `SECS` after
//!    `WARMUP`, in `ROUNDS` interleaved rounds (every path once per round); the figure is
//!    the median, so one slow spell of a shared machine does not decide a ratio. The proxy's
//!    CPU time per message comes with it;
//! 2. p50/p99 round trip, and what a proxy adds to direct's, at half and at a quarter of
//!    direct's maximum in the same shape: open loop over the same `CONNS` connections, paced
//!    by a 100 µs ticker that hands out due messages round-robin. Pipelined, a connection
//!    sends all that is due at once; request/response, a connection with one outstanding
//!    keeps its due count and sends the next the moment the reply arrives. A round trip
//!    counts from the actual send;
//! 3. new connections/s: connect (+ TLS 1.3) + upgrade + one round trip + close handshake,
//!    `CONN_WORKERS` in parallel, plain and TLS (the same ECDSA P-256 certificate on every
//!    path; the client does a full handshake every time, no resumption), median of `ROUNDS`
//!    interleaved rounds, with the proxy's CPU time per connection;
//! 4. RSS per idle proxied connection: proxy RSS after `IDLE_CONNS` upgraded connections
//!    (each made one round trip, then idles) minus RSS before, divided by `IDLE_CONNS`;
//! 5. the TLS data path: `CONNS` `wss://` connections × `INFLIGHT` 1 KiB Submissions in a
//!    closed loop, every proxy terminating TLS 1.3 (direct: the backend's own rustls
//!    listener), messages/s and the proxy's CPU time per message, median of `ROUNDS`;
//! 7. (listed here, run after 5) the TLS data path with every WebSocket an HTTP/2 stream
//!    (RFC 8441 extended CONNECT), `BENCH_H2_STREAMS` on each TLS connection, on the proxies
//!    that serve it (mosaic-gateway, HAProxy; nginx does not, direct's backend speaks
//!    HTTP/1.1 only), each round next to the same load over HTTP/1.1 (figure 5's rows,
//!    measured here when figure 5 is not run);
//! 6. scale: on a freshly started proxy, `CONNS` connections request/response at an eighth
//!    of direct's maximum in that shape, then `SCALE_CONNS` open with `SCALE_ACTIVE` of them
//!    paced at the same rate and the rest idle: the p99 against the first one's, and RSS per
//!    open connection; medians of `ROUNDS` interleaved rounds.
//!
//! Environment knobs (defaults in brackets): BENCH_MOSAIC [2024; 2025: every client speaks
//! `mosaic2025`, specification 0.8.0's Submission and Submission Result], BENCH_SECS [3],
//! BENCH_WARMUP [1],
//! BENCH_ROUNDS [3], BENCH_CONNS [64], BENCH_INFLIGHT [16], BENCH_CONN_SECS [2],
//! BENCH_CONN_WORKERS [32],
//! BENCH_IDLE_CONNS [5000], BENCH_PATHS [direct,gateway,nginx,haproxy; gateway-limits is
//! mosaic-gateway with every rate limit and an access list configured but never hit],
//! BENCH_GATEWAY_LIMITS [0] (1: add gateway-limits to the paths, and the idle-limiter
//! comparison to the report),
//! BENCH_FIGURES [memory,throughput,rr,latency,tls,scale,connections: `throughput` and
//! `latency` are the pipelined shape's figures 1 and 2, `rr` both of them in the
//! request/response shape, `tls` figure 5, `h2` figure 7, `scale` figure 6],
//! BENCH_H2_STREAMS [8], BENCH_RATE (the pipelined
//! latency figure's higher rate when direct's pipelined throughput is not measured),
//! BENCH_RR_RATE (likewise for request/response, and so the scale rate is a quarter of it),
//! BENCH_SCALE_RATE (the scale figure's rate),
//! BENCH_SCALE_CONNS [9000] (the bench process holds two descriptors per connection, so
//! this stays under half its open-file limit), BENCH_SCALE_ACTIVE [a tenth of
//! BENCH_SCALE_CONNS], BENCH_PERF (a file: run `perf BENCH_PERF_ARGS -o FILE -p PIDS` on
//! BENCH_PERF_PATH [gateway] during its BENCH_PERF_FIGURE [throughput] window: throughput
//! and rr: the closed loop of that shape; tls: the TLS closed loop; connections: the plain
//! new-connection window; latency and rr-latency: the quarter-rate window of that shape),
//! BENCH_PERF_ARGS
//! [record -e cpu-clock -F 999 --call-graph dwarf,16384], or e.g. `stat -e
//! syscalls:sys_enter_sendto,...` to count system calls), BENCH_GATEWAY_WRAPPER (a command prefix such as
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out`), BENCH_RESULTS (where
//! to write the table; bench/results.md), BENCH_IDLE_ROUND_TRIP [1] (0: idle connections,
//! in the memory and scale figures, make no round trip before idling), BENCH_IDLE_WAIT
//! [1.5] (seconds between opening the idle connections and reading RSS).

mod backend;
mod figures;
mod h2;
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
use load::Shape;
use paths::Setup;
use settings::Settings;
use tls::TlsFiles;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_mosaic-gateway");

fn main() {
    let set = Settings::from_env();
    let nofile = raise_nofile();
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
    // Start every path for the load figures; the gateway's TLS listener is a second instance.
    let gateway_tls = set.wants("connections") || set.wants("tls") || set.wants("h2");
    let running = paths::start_all(&paths, &setup, &client_rt, gateway_tls);
    if set.wants("throughput") {
        run.throughput(&running, Shape::Pipelined);
    }
    if set.wants("rr") {
        run.throughput(&running, Shape::RequestResponse);
    }
    // Each shape's latency rates come from direct's maximum in that shape.
    if set.wants("latency") {
        run.latency(
            &running,
            Shape::Pipelined,
            run.latency_rate(Shape::Pipelined),
        );
    }
    if set.wants("rr") {
        run.latency(
            &running,
            Shape::RequestResponse,
            run.latency_rate(Shape::RequestResponse),
        );
    }
    if set.wants("tls") {
        run.tls(&running);
    }
    if set.wants("h2") {
        run.h2(&running);
    }
    // Scale before the churn, whose closed connections linger in TIME_WAIT.
    if set.wants("scale") {
        run.scale(&setup, &paths, nofile);
    }
    if set.wants("connections") {
        run.connections(&running);
    }
    for path in running {
        path.stop();
    }

    let table = report::render(&run, &set);
    println!("\n{table}");
    report::write_results(&set.results, &table, started_at);
}

/// Raises the open-file soft limit to the hard limit (the scale figure holds 2 descriptors
/// per connection here); returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process, with a valid rlimit to fill in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r = raised;
            }
        }
    }
    r.rlim_cur
}

fn single_thread_runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}
