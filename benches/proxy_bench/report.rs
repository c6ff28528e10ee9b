//! The report: the machine the run is on, the table of figures with the gateway's ratios,
//! the targets, the notes, and bench/results.md (BENCH_RESULTS).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::figures::{Figures, Percentiles, Run, ShapeFigures};
use crate::load::Shape;
use crate::paths::{which, PathKind, PATHS};
use crate::procfs::{cpu_busy_fraction, loadavg};
use crate::settings::Settings;
use crate::wire::TLS_SUBMISSION_BYTES;

/// Prints the machine and how busy it is; notes when it was not idle.
pub fn machine_state(notes: &mut Vec<String>) {
    println!("proxy benchmark: {}", machine());
    let load0 = loadavg();
    let busy = cpu_busy_fraction(Duration::from_secs(1));
    println!(
        "load average at start: {load0}; CPU busy in the last second: {:.0}%",
        busy * 100.0
    );
    if busy > 0.15 {
        notes.push(format!(
            "the machine was not idle when the run started ({:.0}% of the CPUs busy with other \
             work): absolute figures are low and noisy; the ratios and the proxy CPU time per \
             message are the steadier figures",
            busy * 100.0
        ));
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = |cmd: &str, arg: &str| -> String {
        Command::new(which(cmd))
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let t = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                t.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "nproc {cores}, CPU {cpu}, kernel {kernel}; {}; {}",
        version("nginx", "-v"),
        version("haproxy", "-v")
    )
}

pub fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            let s = format!("{x:.decimals$}");
            // Thousands separators for big integers.
            if decimals == 0 && x.abs() >= 10_000.0 {
                let digits: Vec<char> = s.chars().collect();
                let mut out = String::new();
                for (i, c) in digits.iter().enumerate() {
                    if i > 0 && (digits.len() - i).is_multiple_of(3) {
                        out.push(' ');
                    }
                    out.push(*c);
                }
                out
            } else {
                s
            }
        }
        _ => "–".into(),
    }
}

/// `a / b`; none against a `b` at or below zero (an added latency that noise put below
/// direct's), where a ratio says nothing.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The whole report: what ran where, the table, the targets and the notes.
pub fn render(run: &Run, set: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}.\nLoad: {conns} connections sending 128-byte Submissions in two shapes: \
         pipelined ({inflight} in flight per connection in the closed loop for throughput; \
         paced open loop for latency, all that is due sent at once) and request/response \
         (one in flight per connection: closed loop with one each for throughput; paced, a \
         due message waits for the reply to the one outstanding, and its round trip counts \
         from when it is sent); each shape's latency at half and a quarter of direct's \
         maximum in that shape; TLS data path: {conns} `wss://` connections × {inflight} in \
         flight, {tls_bytes}-byte Submissions, TLS 1.3 with one ECDSA P-256 certificate on \
         every proxy (direct: the backend's own rustls listener); scale: on freshly started \
         proxies, {conns} connections request/response at {} msg/s, then {} connections open \
         with {} of them request/response at the same rate, the rest idle; {} s measured after \
         {} s warm-up; new connections with {} workers for {} s; throughput (both shapes and \
         TLS), scale and new connections are medians of {} interleaved rounds; gateway \
         `validate: strict`, log level warn.\n",
        machine(),
        fmt_num(Some(run.scale_rate()), 0),
        set.scale_conns,
        set.scale_active,
        set.secs,
        set.warmup,
        set.conn_workers,
        set.conn_secs,
        set.rounds,
        conns = set.conns,
        inflight = set.inflight,
        tls_bytes = TLS_SUBMISSION_BYTES,
    );
    if set.wants("h2") {
        let _ = writeln!(
            out,
            "WebSockets over h2: the TLS data path's load with every WebSocket an HTTP/2 stream \
             (RFC 8441 extended CONNECT), {} per TLS connection, each round next to the same \
             load over HTTP/1.1; on mosaic-gateway and HAProxy (`alpn h2,http/1.1`) only: nginx \
             does not take WebSockets over HTTP/2, direct's backend speaks HTTP/1.1.\n",
            set.h2_streams
        );
    }
    let rates = [Shape::Pipelined, Shape::RequestResponse].map(|s| run.latency_rate(s));
    out.push_str(&table(&run.figs, set, rates, run.scale_rate()));
    out.push_str(&idle_limiter(&run.figs));
    out.push_str(&targets(&run.figs, set));
    if !run.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for n in &run.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// Which way a figure is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// What picks the percentiles at one paced rate of a shape's figures.
type AtRate = fn(&ShapeFigures) -> Percentiles;

/// The two paced rates of a shape's latency figure, and what picks each one's percentiles.
fn latency_rates(half_rate: f64) -> [(&'static str, f64, AtRate); 2] {
    [
        ("half", half_rate, |f| f.half),
        ("a quarter", half_rate / 2.0, |f| f.quarter),
    ]
}

/// What picks one percentile.
type Pct = fn(Percentiles) -> Option<f64>;

/// The two percentiles of a latency figure, and what picks each one.
const PERCENTILES: [(&str, Pct); 2] = [("p50", |p| p.p50), ("p99", |p| p.p99)];

fn table(figs: &[Figures; PATHS], set: &Settings, rates: [f64; 2], scale_rate: f64) -> String {
    let mut t = Table {
        out: String::new(),
        figs,
    };
    let _ = writeln!(
        t.out,
        "| figure | direct | mosaic-gateway | nginx | HAProxy | gw/nginx | gw/HAProxy | gw/better proxy | gw/direct |"
    );
    let _ = writeln!(t.out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (shape, half_rate) in [Shape::Pipelined, Shape::RequestResponse]
        .into_iter()
        .zip(rates)
    {
        let name = shape.label();
        let sf = move |f: &Figures| *f.shape(shape);
        t.row(
            &format!("{name}: throughput, messages/s"),
            |f| sf(f).throughput,
            0,
            Better::Higher,
        );
        t.row(
            &format!("{name}: proxy CPU time per message, ns"),
            |f| sf(f).cpu_per_msg,
            0,
            Better::Lower,
        );
        for (which, rate, at) in latency_rates(half_rate) {
            for (pct, pick) in PERCENTILES {
                t.row(
                    &format!(
                        "{name}: latency {pct} at {} msg/s ({which} of direct), µs",
                        fmt_num(Some(rate), 0)
                    ),
                    |f| pick(at(&sf(f))),
                    0,
                    Better::Lower,
                );
            }
            for (pct, pick) in PERCENTILES {
                t.added_row(
                    &format!("{name}: added {pct} at {which} of direct (path − direct), µs"),
                    |f| pick(at(&sf(f))),
                );
            }
        }
    }
    t.row(
        &format!(
            "TLS data path ({TLS_SUBMISSION_BYTES}-byte Submissions; direct: the backend's rustls), messages/s"
        ),
        |f| f.tls_throughput,
        0,
        Better::Higher,
    );
    t.row(
        "TLS data path: proxy CPU time per message, ns",
        |f| f.tls_cpu_per_msg,
        0,
        Better::Lower,
    );
    t.row(
        &format!(
            "WebSockets over h2 (RFC 8441; {} streams per TLS connection, same load as the TLS data path), messages/s",
            set.h2_streams
        ),
        |f| f.h2_throughput,
        0,
        Better::Higher,
    );
    t.row(
        "WebSockets over h2: proxy CPU time per message, ns",
        |f| f.h2_cpu_per_msg,
        0,
        Better::Lower,
    );
    t.row(
        "WebSockets over h2 / over HTTP/1.1 (TLS data path), throughput (median of per-round ratios)",
        |f| f.h2_over_h1.or_else(|| Some(f.h2_throughput? / f.tls_throughput?)),
        2,
        Better::Higher,
    );
    t.row(
        "new connections/s, plain",
        |f| f.conns_plain,
        0,
        Better::Higher,
    );
    t.row(
        "new connections/s, TLS 1.3",
        |f| f.conns_tls,
        0,
        Better::Higher,
    );
    t.row(
        "proxy CPU time per new connection, plain, µs",
        |f| f.cpu_per_conn_plain.map(|v| v / 1000.0),
        1,
        Better::Lower,
    );
    t.row(
        "proxy CPU time per new connection, TLS 1.3, µs",
        |f| f.cpu_per_conn_tls.map(|v| v / 1000.0),
        1,
        Better::Lower,
    );
    t.row(
        &format!("RSS per idle connection ({} open), bytes", set.idle_conns),
        |f| f.mem_per_conn,
        0,
        Better::Lower,
    );
    let scale_rate = fmt_num(Some(scale_rate), 0);
    t.row(
        &format!(
            "scale: latency p99 with {} connections at {scale_rate} msg/s, µs",
            set.conns
        ),
        |f| f.scale_base_p99,
        0,
        Better::Lower,
    );
    t.row(
        &format!(
            "scale: latency p99 with {} open, {} active at {scale_rate} msg/s, µs",
            set.scale_conns, set.scale_active,
        ),
        |f| f.scale_p99,
        0,
        Better::Lower,
    );
    t.row(
        &format!(
            "scale: p99 with {} open / p99 with {} connections",
            set.scale_conns, set.conns
        ),
        scale_ratio,
        2,
        Better::Lower,
    );
    t.row(
        &format!(
            "scale: RSS per connection ({} open), bytes",
            set.scale_conns
        ),
        |f| f.scale_mem_per_conn,
        0,
        Better::Lower,
    );
    t.out
}

/// A path's p99 at scale over its p99 with `CONNS` connections at the same rate.
fn scale_ratio(f: &Figures) -> Option<f64> {
    Some(f.scale_p99? / f.scale_base_p99?)
}

/// The cost of rate limits that are configured but never hit (BENCH_GATEWAY_LIMITS=1):
/// the gateway with and without them, figure by figure; empty when not measured.
fn idle_limiter(figs: &[Figures; PATHS]) -> String {
    let (g, l) = (
        &figs[PathKind::Gateway.index()],
        &figs[PathKind::GatewayLimits.index()],
    );
    let rows: [(&str, Pick); 7] = [
        ("pipelined throughput, messages/s", |f| {
            f.pipelined.throughput
        }),
        ("pipelined proxy CPU time per message, ns", |f| {
            f.pipelined.cpu_per_msg
        }),
        ("pipelined latency p99 at half of direct, µs", |f| {
            f.pipelined.half.p99
        }),
        ("request/response throughput, messages/s", |f| {
            f.rr.throughput
        }),
        ("new connections/s, plain", |f| f.conns_plain),
        ("new connections/s, TLS 1.3", |f| f.conns_tls),
        ("RSS per idle connection, bytes", |f| f.mem_per_conn),
    ];
    if rows.iter().all(|(_, f)| f(l).is_none()) {
        return String::new();
    }
    let mut out = String::from(
        "\nIdle limiter: mosaic-gateway with every rate limit and an access list configured \
         but never hit (gateway+limits), against none configured:\n\n\
         | figure | mosaic-gateway | gateway+limits | limits/none |\n|---|---:|---:|---:|\n",
    );
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            fmt_num(f(g), 0),
            fmt_num(f(l), 0),
            ratio(f(l), f(g))
        );
    }
    out
}

/// The table being written: one row a figure, the paths in [`PathKind`] order.
///
/// [`PathKind`]: crate::paths::PathKind
struct Table<'a> {
    out: String,
    figs: &'a [Figures; PATHS],
}

impl Table<'_> {
    /// The figure on every path, then the gateway's ratios to nginx, HAProxy, the better of
    /// the two, and direct.
    fn row(&mut self, name: &str, f: impl Fn(&Figures) -> Option<f64>, dec: usize, b: Better) {
        let [d, g, n, h, _] = self.figs;
        let _ = writeln!(
            self.out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(f(d), dec),
            fmt_num(f(g), dec),
            fmt_num(f(n), dec),
            fmt_num(f(h), dec),
            ratio(f(g), f(n)),
            ratio(f(g), f(h)),
            ratio(f(g), better(f(n), f(h), b)),
            ratio(f(g), f(d)),
        );
    }

    /// A proxy's figure minus direct's, with its ratios (no direct column); lower is better.
    fn added_row(&mut self, name: &str, f: impl Fn(&Figures) -> Option<f64>) {
        let [d, g, n, h, _] = self.figs;
        let added = |x: &Figures| Some(f(x)? - f(d)?);
        let _ = writeln!(
            self.out,
            "| {name} | – | {} | {} | {} | {} | {} | {} | – |",
            fmt_num(added(g), 0),
            fmt_num(added(n), 0),
            fmt_num(added(h), 0),
            ratio(added(g), added(n)),
            ratio(added(g), added(h)),
            ratio(added(g), better(added(n), added(h), Better::Lower)),
        );
    }
}

/// Issue 16's targets, each met or not with its numbers.
fn targets(figs: &[Figures; PATHS], set: &Settings) -> String {
    let [d, g, ..] = figs;
    let mut tg = String::new();
    let _ = writeln!(tg, "\nTargets (against the better of nginx/HAProxy):\n");
    for shape in [Shape::Pipelined, Shape::RequestResponse] {
        let name = shape.label();
        let sf = |f: &Figures| *f.shape(shape);
        for (which, _, at) in latency_rates(0.0) {
            for (pct, pick) in PERCENTILES {
                let what =
                    format!("{name}: added {pct} at {which} of direct ≤ 0.8 × better proxy's");
                let added = |x: &Figures| Some(pick(at(&sf(x)))? - pick(at(&sf(d)))?);
                proxy_target(&mut tg, figs, &what, added, (0.8, Better::Lower), "µs");
            }
        }
        let what = format!("{name}: proxy CPU time per message ≤ 0.9 × better proxy");
        let cpu = move |f: &Figures| f.shape(shape).cpu_per_msg;
        proxy_target(&mut tg, figs, &what, cpu, (0.9, Better::Lower), "ns");
        let what = format!("{name}: throughput ≥ better proxy");
        let tp = move |f: &Figures| f.shape(shape).throughput;
        proxy_target(&mut tg, figs, &what, tp, (1.0, Better::Higher), "msg/s");
    }
    for (what, pick, bound, unit) in [
        (
            "TLS data path: throughput ≥ 1.1 × better proxy",
            (|f| f.tls_throughput) as Pick,
            (1.1, Better::Higher),
            "msg/s",
        ),
        (
            "TLS data path: proxy CPU time per message ≤ 0.9 × better proxy",
            |f| f.tls_cpu_per_msg,
            (0.9, Better::Lower),
            "ns",
        ),
        (
            "new plain connections/s ≥ 1.1 × better proxy",
            |f| f.conns_plain,
            (1.1, Better::Higher),
            "/s",
        ),
        (
            "proxy CPU time per new plain connection ≤ 0.9 × better proxy",
            |f| f.cpu_per_conn_plain.map(|ns| ns / 1000.0),
            (0.9, Better::Lower),
            "µs",
        ),
    ] {
        proxy_target(&mut tg, figs, what, pick, bound, unit);
    }
    let mem = g.mem_per_conn;
    target(
        &mut tg,
        "≤ 2 KiB (2048 bytes) per idle proxied connection",
        verdict(mem.map(|m| m <= MEMORY_TARGET)),
        format!("{} bytes", show(mem, 0)),
    );
    let sr = scale_ratio(g);
    target(
        &mut tg,
        &format!(
            "scale: p99 with {} open ≤ 1.2 × the gateway's 64-connection p99 at the same rate",
            set.scale_conns
        ),
        verdict(sr.map(|r| r <= 1.2)),
        format!(
            "{}×; {} µs vs {} µs; direct's own {}×",
            show(sr, 2),
            show(g.scale_p99, 0),
            show(g.scale_base_p99, 0),
            show(scale_ratio(d), 2),
        ),
    );
    let sm = g.scale_mem_per_conn;
    target(
        &mut tg,
        &format!(
            "scale: RSS per connection with {} open as at idle, ≤ 2 KiB",
            set.scale_conns
        ),
        verdict(sm.map(|m| m <= MEMORY_TARGET)),
        format!("{} bytes; idle: {} bytes", show(sm, 0), show(mem, 0)),
    );
    tg
}

/// The memory targets: bytes of RSS per proxied connection, idle and at scale.
const MEMORY_TARGET: f64 = 2048.0;

/// The better of two figures, or the one there is.
fn better(a: Option<f64>, b: Option<f64>, which: Better) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(match which {
            Better::Higher => a.max(b),
            Better::Lower => a.min(b),
        }),
        (x, None) | (None, x) => x,
    }
}

/// What picks one figure of a path.
type Pick = fn(&Figures) -> Option<f64>;

/// A target against the better of nginx/HAProxy: met when the gateway's figure is at least
/// (`Higher`) or at most (`Lower`) `factor` × theirs, with `(factor, which)` as `bound`.
fn proxy_target(
    out: &mut String,
    figs: &[Figures; PATHS],
    what: &str,
    pick: impl Fn(&Figures) -> Option<f64>,
    (factor, which): (f64, Better),
    unit: &str,
) {
    let [_, g, n, h, _] = figs;
    let (g, b) = (pick(g), better(pick(n), pick(h), which));
    let values = format!("{} {unit} vs {} {unit}", show(g, 0), show(b, 0));
    let (said, detail) = match g.zip(b) {
        None => (verdict(None), values),
        // An added latency at or below zero: direct's own round trip was the slower, so
        // the run's noise decides the figure, and there is nothing to be a multiple of.
        Some((_, b)) if b <= 0.0 => (
            "no verdict",
            format!("{values}; the better proxy's is not above zero"),
        ),
        Some((g, b)) => {
            let met = match which {
                Better::Higher => g >= factor * b,
                Better::Lower => g <= factor * b,
            };
            (verdict(Some(met)), format!("{:.2}×; {values}", g / b))
        }
    };
    target(out, what, said, detail);
}

/// A target's verdict: met, not met, or not measured (`None`).
fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn target(out: &mut String, what: &str, verdict: &str, detail: String) {
    let _ = writeln!(out, "- {what}: {verdict} ({detail})");
}

fn show(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or("–".into())
}

/// Writes the report to `path` (bench/results.md by default) under a heading with the time
/// and how long the run took.
pub fn write_results(path: &Path, table: &str, started_at: Instant) {
    let stamp = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let doc = format!(
        "# Proxy benchmark results\n\nLatest run: {stamp}, `cargo bench --bench proxy_bench` \
         ({:.0} s).\n\n{table}",
        started_at.elapsed().as_secs_f64()
    );
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(path, doc) {
        Ok(()) => println!("written to {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
