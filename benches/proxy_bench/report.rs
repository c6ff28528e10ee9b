//! The report: the machine the run is on, the table of figures with the gateway's ratios,
//! the targets, the notes, and bench/results.md (BENCH_RESULTS).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::figures::{Figures, Run};
use crate::paths::{which, PathKind, PATHS};
use crate::procfs::{cpu_busy_fraction, loadavg};
use crate::settings::Settings;

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

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b != 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The whole report: what ran where, the table, the targets and the notes.
pub fn render(run: &Run, set: &Settings, rate: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}.\nLoad: {} connections, {} × 128-byte Submissions in flight per connection \
         (throughput), {} s measured after {} s warm-up; latency open-loop at half the direct \
         maximum over the same connections; new connections with {} workers for {} s; \
         throughput and new connections are medians of {} interleaved rounds; \
         gateway `validate: strict`, log level warn.\n",
        machine(),
        set.conns,
        set.inflight,
        set.secs,
        set.warmup,
        set.conn_workers,
        set.conn_secs,
        set.rounds
    );
    out.push_str(&table(&run.figs, set, rate));
    out.push_str(&idle_limiter(&run.figs));
    out.push_str(&targets(&run.figs));
    if !run.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for n in &run.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn table(figs: &[Figures; PATHS], set: &Settings, rate: f64) -> String {
    let mut t = Table {
        out: String::new(),
        figs,
    };
    let _ = writeln!(
        t.out,
        "| figure | direct | mosaic-gateway | nginx | HAProxy | gw/nginx | gw/HAProxy | gw/direct |"
    );
    let _ = writeln!(t.out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    t.row("throughput, messages/s", |f| f.throughput, 0);
    t.row(
        "proxy CPU time per message (throughput run), ns",
        |f| f.cpu_per_msg,
        0,
    );
    t.row(
        &format!("latency p50 at {} msg/s, µs", fmt_num(Some(rate), 0)),
        |f| f.p50,
        0,
    );
    t.row("latency p99, µs", |f| f.p99, 0);
    t.added_row("added p99 (path − direct), µs", |f| f.p99);
    t.row(
        &format!(
            "latency p50 at {} msg/s (a quarter of direct), µs",
            fmt_num(Some(rate / 2.0), 0)
        ),
        |f| f.p50_quarter,
        0,
    );
    t.row(
        "latency p99 at a quarter of direct, µs",
        |f| f.p99_quarter,
        0,
    );
    t.added_row("added p99 at a quarter of direct, µs", |f| f.p99_quarter);
    t.row("new connections/s, plain", |f| f.conns_plain, 0);
    t.row("new connections/s, TLS 1.3", |f| f.conns_tls, 0);
    t.row(
        "proxy CPU time per new connection, plain, µs",
        |f| f.cpu_per_conn_plain.map(|v| v / 1000.0),
        1,
    );
    t.row(
        "proxy CPU time per new connection, TLS 1.3, µs",
        |f| f.cpu_per_conn_tls.map(|v| v / 1000.0),
        1,
    );
    t.row(
        &format!("RSS per idle connection ({} open), bytes", set.idle_conns),
        |f| f.mem_per_conn,
        0,
    );
    t.out
}

/// The cost of rate limits that are configured but never hit (BENCH_GATEWAY_LIMITS=1):
/// the gateway with and without them, figure by figure; empty when not measured.
fn idle_limiter(figs: &[Figures; PATHS]) -> String {
    let (g, l) = (
        &figs[PathKind::Gateway.index()],
        &figs[PathKind::GatewayLimits.index()],
    );
    type Pick = fn(&Figures) -> Option<f64>;
    let rows: [(&str, Pick); 6] = [
        ("throughput, messages/s", |f| f.throughput),
        ("proxy CPU time per message, ns", |f| f.cpu_per_msg),
        ("latency p99, µs", |f| f.p99),
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
    /// The figure on every path, then the gateway's ratios to nginx, HAProxy and direct.
    fn row(&mut self, name: &str, f: impl Fn(&Figures) -> Option<f64>, dec: usize) {
        let [d, g, n, h, _] = self.figs;
        let _ = writeln!(
            self.out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(f(d), dec),
            fmt_num(f(g), dec),
            fmt_num(f(n), dec),
            fmt_num(f(h), dec),
            ratio(f(g), f(n)),
            ratio(f(g), f(h)),
            ratio(f(g), f(d)),
        );
    }

    /// A proxy's figure minus direct's, with its ratios (no direct column).
    fn added_row(&mut self, name: &str, f: impl Fn(&Figures) -> Option<f64>) {
        let [d, g, n, h, _] = self.figs;
        let added = |x: &Figures| Some(f(x)? - f(d)?);
        let _ = writeln!(
            self.out,
            "| {name} | – | {} | {} | {} | {} | {} | – |",
            fmt_num(added(g), 0),
            fmt_num(added(n), 0),
            fmt_num(added(h), 0),
            ratio(added(g), added(n)),
            ratio(added(g), added(h)),
        );
    }
}

fn targets(figs: &[Figures; PATHS]) -> String {
    let [d, g, n, h, _] = figs;
    let mut tg = String::new();
    let _ = writeln!(tg, "\nTargets:\n");
    let best_tp = better(n.throughput, h.throughput, true);
    let what = "throughput ≥ 1.25 × better of nginx/HAProxy";
    ratio_target(&mut tg, what, g.throughput, best_tp, 1.25);
    let what = "throughput ≥ 0.65 × direct";
    ratio_target(&mut tg, what, g.throughput, d.throughput, 0.65);
    let added = |x: &Figures| Some(x.p99? - d.p99?);
    let lat = added(g).zip(better(added(n), added(h), false));
    target(
        &mut tg,
        "added p99 ≤ 0.8 × better proxy's added p99",
        lat.map(|(g, b)| g <= 0.8 * b),
        format!(
            "{} µs vs {} µs",
            show(lat.map(|x| x.0), 0),
            show(lat.map(|x| 0.8 * x.1), 0)
        ),
    );
    let mem = g.mem_per_conn;
    target(
        &mut tg,
        "≤ 4 KiB per idle proxied connection",
        mem.map(|m| m <= 4096.0),
        format!("{} bytes", show(mem, 0)),
    );
    for (label, gv, bv) in [
        (
            "plain",
            g.conns_plain,
            better(n.conns_plain, h.conns_plain, true),
        ),
        ("TLS", g.conns_tls, better(n.conns_tls, h.conns_tls, true)),
    ] {
        let what = format!("new connections/s {label} ≥ better proxy");
        ratio_target(&mut tg, &what, gv, bv, 1.0);
    }
    tg
}

/// The better of two figures (the higher when `higher`), or the one there is.
fn better(a: Option<f64>, b: Option<f64>, higher: bool) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if higher { a.max(b) } else { a.min(b) }),
        (x, None) | (None, x) => x,
    }
}

/// A target met when the gateway's figure `g` is at least `factor` × `b`.
fn ratio_target(out: &mut String, what: &str, g: Option<f64>, b: Option<f64>, factor: f64) {
    let c = g.zip(b).map(|(g, b)| (g / b, g >= factor * b));
    let detail = format!("{}×", show(c.map(|x| x.0), 2));
    target(out, what, c.map(|x| x.1), detail);
}

fn target(out: &mut String, what: &str, met: Option<bool>, detail: String) {
    let verdict = match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    };
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
