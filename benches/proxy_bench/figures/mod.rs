//! What is measured: one module per figure (memory, throughput, latency, TLS data path,
//! scale, new connections), each a phase over the paths that fills in every path's
//! [`Figures`]; here what they share.

mod connections;
mod h2;
mod latency;
mod memory;
mod scale;
mod throughput;
mod tls;

use std::process::{Child, Command, Stdio};

use tokio::runtime::Runtime;

use crate::load::Shape;
use crate::paths::{PathKind, RunningPath, PATHS};
use crate::settings::Settings;

/// Round-trip percentiles at one rate (µs).
#[derive(Default, Clone, Copy)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// One load shape's figures on one path.
#[derive(Default, Clone, Copy)]
pub struct ShapeFigures {
    /// Closed loop, messages/s.
    pub throughput: Option<f64>,
    /// The proxy's CPU time per message in the closed loop (ns).
    pub cpu_per_msg: Option<f64>,
    /// Paced at half of direct's maximum in this shape.
    pub half: Percentiles,
    /// Paced at a quarter of it.
    pub quarter: Percentiles,
}

/// One path's figures; `None` where not measured.
#[derive(Default, Clone, Copy)]
pub struct Figures {
    pub pipelined: ShapeFigures,
    pub rr: ShapeFigures,
    /// `wss://` closed loop with 1 KiB Submissions, messages/s.
    pub tls_throughput: Option<f64>,
    pub tls_cpu_per_msg: Option<f64>,
    /// The same load with each WebSocket an HTTP/2 stream (RFC 8441), messages/s.
    pub h2_throughput: Option<f64>,
    pub h2_cpu_per_msg: Option<f64>,
    /// h2's messages/s over HTTP/1.1's, paired by round (when measured side by side).
    pub h2_over_h1: Option<f64>,
    pub conns_plain: Option<f64>,
    pub conns_tls: Option<f64>,
    pub mem_per_conn: Option<f64>,
    pub cpu_per_conn_plain: Option<f64>,
    pub cpu_per_conn_tls: Option<f64>,
    /// p99 with `CONNS` connections paced at the scale rate on the scale figure's fresh
    /// proxy (µs).
    pub scale_base_p99: Option<f64>,
    /// p99 with BENCH_SCALE_CONNS open, a tenth of them paced at the same rate (µs).
    pub scale_p99: Option<f64>,
    /// RSS per connection with BENCH_SCALE_CONNS open (bytes).
    pub scale_mem_per_conn: Option<f64>,
}

impl Figures {
    pub fn shape(&self, shape: Shape) -> &ShapeFigures {
        match shape {
            Shape::Pipelined => &self.pipelined,
            Shape::RequestResponse => &self.rr,
        }
    }

    fn shape_mut(&mut self, shape: Shape) -> &mut ShapeFigures {
        match shape {
            Shape::Pipelined => &mut self.pipelined,
            Shape::RequestResponse => &mut self.rr,
        }
    }
}

/// One benchmark run: what every figure's phase needs, and what they found.
pub struct Run<'a> {
    /// The load generator's runtime.
    rt: &'a Runtime,
    set: &'a Settings,
    /// Per path, indexed by [`PathKind::index`].
    pub figs: [Figures; PATHS],
    /// Anything that makes a figure less telling, for the report.
    pub notes: Vec<String>,
}

impl<'a> Run<'a> {
    pub fn new(rt: &'a Runtime, set: &'a Settings) -> Run<'a> {
        Run {
            rt,
            set,
            figs: [Figures::default(); PATHS],
            notes: Vec::new(),
        }
    }

    fn fig(&mut self, p: PathKind) -> &mut Figures {
        &mut self.figs[p.index()]
    }

    /// The latency figure's higher total rate in `shape`: BENCH_RATE (pipelined) or
    /// BENCH_RR_RATE (request/response), else half of direct's throughput in that shape.
    pub fn latency_rate(&self, shape: Shape) -> f64 {
        let (set, fallback) = match shape {
            Shape::Pipelined => (self.set.rate, 50_000.0),
            Shape::RequestResponse => (self.set.rr_rate, 20_000.0),
        };
        set.or(self.figs[PathKind::Direct.index()]
            .shape(shape)
            .throughput
            .map(|t| (t / 2.0).round()))
            .unwrap_or(fallback)
    }

    /// A note when fewer than `wanted` of a figure's `what` connections opened.
    fn note_opened(&mut self, p: PathKind, opened: usize, wanted: usize, what: &str) {
        if opened < wanted {
            self.notes.push(format!(
                "{}: only {opened} of {wanted} {what} connections opened",
                p.label()
            ));
        }
    }

    /// `perf` on `pids` (the path's processes) when BENCH_PERF asks for this window.
    fn profile(&self, figure: &str, s: &RunningPath, pids: &[u32], round: usize) -> Profile {
        if !self.set.profiles(figure, s.kind, round) {
            return Profile(None);
        }
        Profile::start(self.set, pids)
    }
}

/// BENCH_PERF: `perf BENCH_PERF_ARGS -o BENCH_PERF -p PIDS` for one window; inactive
/// (`None`) for every other window.
struct Profile(Option<Child>);

impl Profile {
    fn start(set: &Settings, pids: &[u32]) -> Profile {
        let Some(file) = &set.perf else {
            return Profile(None);
        };
        if pids.is_empty() {
            return Profile(None);
        }
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        let child = Command::new("perf")
            .args(set.perf_args.split_whitespace())
            .arg("-o")
            .arg(file)
            .arg("-p")
            .arg(pids.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        Profile(child)
    }

    fn stop(self) {
        let Some(mut child) = self.0 else {
            return;
        };
        // SAFETY: signal our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let _ = child.wait();
    }
}

/// One figure's samples per path, indexed by [`PathKind::index`].
#[derive(Default)]
struct Samples([Vec<f64>; PATHS]);

impl Samples {
    fn push(&mut self, p: PathKind, v: f64) {
        self.0[p.index()].push(v);
    }

    fn extend(&mut self, p: PathKind, v: Option<f64>) {
        self.0[p.index()].extend(v);
    }

    fn median(&self, p: PathKind) -> Option<f64> {
        median(&self.0[p.index()])
    }
}

/// `rounds` passes over `items` with their round number. Each pass starts from a different
/// item, so a slow spell of a shared machine spreads over every path instead of hitting one.
fn interleaved<T>(items: &[T], rounds: usize) -> impl Iterator<Item = (usize, &T)> {
    (0..rounds).flat_map(move |round| {
        (0..items.len()).map(move |k| (round, &items[(round + k) % items.len()]))
    })
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}
