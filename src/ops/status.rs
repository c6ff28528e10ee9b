//! The status page on the admin listener: `/` and `/status` (one HTML page that refreshes
//! itself, no script) and the same data as JSON at `/status.json`.
//!
//! Everything comes from state the gateway keeps anyway (the metrics, the pools, the
//! certificate store, the drain); rates and "recent" counts are differences against samples
//! of the counters taken every [`SAMPLE_EVERY`] by [`sample`].
//!
//! [`Status::report`] reads each section with its own function into a [`Report`], which
//! `/status.json` serialises as it is; [`html`] renders it with maud templates, one per
//! section of the page, so every value is escaped on its way in.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use maud::{html, Markup, PreEscaped, DOCTYPE};
use prometheus::core::Collector;
use prometheus::proto::MetricType;
use serde::Serialize;

use crate::config::Balance;
use crate::drain::DrainState;
use crate::gateway::App;
use crate::metrics::Metrics;
use crate::tls::TlsTerminator;
use crate::upstreams::pool::{Backend, Pool};

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// The window message and byte rates are averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The window of "recent" rejections.
pub const RECENT_WINDOW: Duration = Duration::from_secs(300);
/// Seconds between the HTML page's refreshes.
pub const REFRESH_SECONDS: u32 = 5;

/// A series' labels, in the family's order.
type LabelSet = Vec<(String, String)>;

/// One series: its labels and its value.
type Series = Vec<(LabelSet, f64)>;

/// Every series of one metric vector, counters and gauges alike.
fn series(c: &dyn Collector) -> Series {
    let mut out = Vec::new();
    for family in c.collect() {
        let kind = family.get_field_type();
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let value = match kind {
                MetricType::GAUGE => m.get_gauge().get_value(),
                MetricType::COUNTER => m.get_counter().get_value(),
                _ => continue,
            };
            out.push((labels, value));
        }
    }
    out
}

/// The counters the page shows as rates or recent counts, at one moment.
#[derive(Default)]
struct Counters {
    /// `messages_total`, `bytes_total` and `handshake_rejections_total` by family and
    /// label set.
    values: BTreeMap<(&'static str, LabelSet), f64>,
}

impl Counters {
    fn read(app: &App) -> Counters {
        let m = &app.metrics;
        let mut values = BTreeMap::new();
        for (name, c) in [
            ("messages", &m.messages_total),
            ("bytes", &m.bytes_total),
            ("rejections", &m.handshake_rejections_total),
        ] {
            for (labels, v) in series(c) {
                values.insert((name, labels), v);
            }
        }
        Counters { values }
    }

    fn get(&self, name: &'static str, labels: &[(String, String)]) -> f64 {
        self.values
            .get(&(name, labels.to_vec()))
            .copied()
            .unwrap_or(0.0)
    }
}

/// The sampled history behind rates and recent counts.
pub struct Status {
    started: Instant,
    started_at: SystemTime,
    history: Mutex<VecDeque<(Instant, Counters)>>,
}

impl Default for Status {
    fn default() -> Self {
        Status::new()
    }
}

impl Status {
    /// Starts the clock for the uptime; the history starts empty (all counters were 0).
    pub fn new() -> Self {
        let mut history = VecDeque::new();
        history.push_back((Instant::now(), Counters::default()));
        Status {
            started: Instant::now(),
            started_at: SystemTime::now(),
            history: Mutex::new(history),
        }
    }

    fn history(&self) -> parking_lot::MutexGuard<'_, VecDeque<(Instant, Counters)>> {
        self.history.lock()
    }

    fn record(&self, app: &App) {
        let now = Instant::now();
        let counters = Counters::read(app);
        let mut h = self.history();
        h.push_back((now, counters));
        while h
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RECENT_WINDOW + SAMPLE_EVERY)
        {
            h.pop_front();
        }
    }

    /// Everything the page shows, as of now: each section read by its own function.
    pub fn report(&self, app: &App) -> Report {
        let wall = SystemTime::now();
        let gw = app.gateway();
        let m = &app.metrics;
        let (traffic, rejections) = self.rates_and_recent(app);
        let (draining, drain_seconds_left) = drain_state(app);
        let readiness = app.readiness();
        let (bans_active, bans) = ban_rows(app, wall);
        Report {
            version: env!("CARGO_PKG_VERSION"),
            started_at: unix(self.started_at),
            now: unix(wall),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready: readiness.is_ok(),
            not_ready: readiness.err().map(|e| e.to_string()),
            draining,
            drain_seconds_left,
            connections: connection_rows(m),
            traffic,
            rate_window_seconds: RATE_WINDOW.as_secs(),
            pools: gw.pools().iter().map(|p| pool_report(p, wall)).collect(),
            rejections,
            recent_window_seconds: RECENT_WINDOW.as_secs(),
            tls: gw.tls.is_some(),
            certificates: gw
                .tls
                .as_deref()
                .map(|tls| certificate_rows(tls, wall))
                .unwrap_or_default(),
            tls_handshakes: totals_by(&m.tls_handshakes_total, "client_auth"),
            tls_handshake_failures: totals_by(&m.tls_handshake_failures_total, "reason"),
            bans_active,
            bans,
        }
    }

    /// The traffic rates and the recent rejections: the counters now against the samples
    /// at the start of each window.
    fn rates_and_recent(&self, app: &App) -> (Vec<TrafficRow>, Vec<RejectionRow>) {
        let now = Instant::now();
        let current = Counters::read(app);
        let history = self.history();
        // The oldest sample inside a window (the start, while the gateway is younger).
        let baseline = |window: Duration| {
            history
                .iter()
                .find(|(at, _)| now.duration_since(*at) <= window)
                .or(history.back())
        };
        let rate_base = baseline(RATE_WINDOW).map(|(at, c)| (now.duration_since(*at), c));
        let recent_base = baseline(RECENT_WINDOW).map(|(_, c)| c);
        (
            traffic_rows(&current, rate_base),
            rejection_rows(&current, recent_base),
        )
    }
}

/// `connections_active` beside `connections_total`, by label set.
fn connection_rows(m: &Metrics) -> Vec<ConnectionRow> {
    let totals = series(&m.connections_total);
    series(&m.connections_active)
        .into_iter()
        .map(|(labels, active)| {
            let total = totals
                .iter()
                .find(|(l, _)| *l == labels)
                .map_or(0.0, |(_, v)| *v);
            ConnectionRow {
                labels: labels.into_iter().collect(),
                active: active as i64,
                total: total as u64,
            }
        })
        .collect()
}

/// Messages and bytes by label set, both directions in one row; `base` is the sample at
/// the start of the rate window and how long ago it was taken.
fn traffic_rows(current: &Counters, base: Option<(Duration, &Counters)>) -> Vec<TrafficRow> {
    let mut rows: BTreeMap<LabelSet, TrafficRow> = BTreeMap::new();
    for ((name, labels), v) in &current.values {
        if !matches!(*name, "messages" | "bytes") {
            continue;
        }
        let up = labels
            .iter()
            .any(|(k, v)| k == "direction" && v == "client_to_upstream");
        let key: LabelSet = labels
            .iter()
            .filter(|(k, _)| k != "direction")
            .cloned()
            .collect();
        let row = rows.entry(key.clone()).or_insert_with(|| TrafficRow {
            labels: key.into_iter().collect(),
            ..TrafficRow::default()
        });
        // Under a second of history a difference says more about timing than traffic.
        let rate = base.and_then(|(ago, base)| {
            let secs = ago.as_secs_f64();
            (secs >= 1.0).then(|| (v - base.get(name, labels)).max(0.0) / secs)
        });
        row.set(name, up, rate, *v);
    }
    rows.into_values().collect()
}

impl TrafficRow {
    /// Puts one direction of `messages` or `bytes` into its cells.
    fn set(&mut self, name: &str, up: bool, rate: Option<f64>, total: f64) {
        match (name, up) {
            ("messages", true) => {
                self.messages_per_second_up = rate;
                self.messages_total_up = total as u64;
            }
            ("messages", false) => {
                self.messages_per_second_down = rate;
                self.messages_total_down = total as u64;
            }
            (_, true) => self.bytes_per_second_up = rate,
            (_, false) => self.bytes_per_second_down = rate,
        }
    }
}

/// Rejections by label set, the most recent first; `base` is the sample at the start of
/// the recent window.
fn rejection_rows(current: &Counters, base: Option<&Counters>) -> Vec<RejectionRow> {
    let mut rows: Vec<RejectionRow> = current
        .values
        .iter()
        .filter(|((name, _), _)| *name == "rejections")
        .map(|((name, labels), v)| RejectionRow {
            labels: labels.iter().cloned().collect(),
            recent: base.map_or(0.0, |b| (v - b.get(name, labels)).max(0.0)) as u64,
            total: *v as u64,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.recent, r.total)));
    rows
}

/// The certificates from files, then the ACME one.
fn certificate_rows(tls: &TlsTerminator, wall: SystemTime) -> Vec<CertificateRow> {
    let mut rows: Vec<CertificateRow> = tls
        .certificates()
        .current()
        .iter()
        .map(|c| CertificateRow {
            name: c.label.clone(),
            source: "file".into(),
            names: c.names.iter().map(|n| format!("{n}")).collect(),
            not_after: Some(unix(c.not_after)),
            days_left: Some(days_between(wall, c.not_after)),
        })
        .collect();
    if let Some(acme) = tls.acme() {
        let at = acme.not_after();
        rows.push(CertificateRow {
            name: acme.label(),
            source: "acme".into(),
            names: Vec::new(),
            not_after: at.map(unix),
            days_left: at.map(|at| days_between(wall, at)),
        });
    }
    rows
}

/// Whether the drain runs, and the seconds it has left.
fn drain_state(app: &App) -> (bool, Option<f64>) {
    match *app.drain.borrow() {
        DrainState::Draining { close_by } => {
            let left = close_by.saturating_duration_since(tokio::time::Instant::now());
            (true, Some(left.as_secs_f64()))
        }
        _ => (false, None),
    }
}

/// A metric vector's values by one of its labels.
fn totals_by(c: &dyn Collector, label: &str) -> BTreeMap<String, u64> {
    series(c)
        .into_iter()
        .filter_map(|(labels, v)| {
            let key = labels.into_iter().find(|(k, _)| k == label)?.1;
            Some((key, v as u64))
        })
        .collect()
}

/// How many bans are in force, and the first [`MAX_BANS_SHOWN`] of them.
fn ban_rows(app: &App, wall: SystemTime) -> (usize, Vec<BanRow>) {
    let all = app.standing().list();
    let active = all.len();
    let shown = all
        .into_iter()
        .take(MAX_BANS_SHOWN)
        .map(|(net, ban)| BanRow::new(net, ban, unix(wall) * 1000))
        .collect();
    (active, shown)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Days from `now` until `t`, negative once `t` has passed.
fn days_between(now: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs_f64() / 86_400.0,
        Err(e) => -e.duration().as_secs_f64() / 86_400.0,
    }
}

fn balance_name(b: Balance) -> &'static str {
    match b {
        Balance::RoundRobin => "round-robin",
        Balance::LeastConnections => "least-connections",
        Balance::ClientKeyHash => "client-key-hash",
        Balance::ClientIpHash => "client-ip-hash",
    }
}

fn backend_row(b: &Backend, now: SystemTime) -> BackendRow {
    let state = if b.is_draining() {
        "draining"
    } else if b.is_healthy() {
        "up"
    } else {
        "down"
    };
    BackendRow {
        backend: b.label.clone(),
        state,
        open_connections: b.active() as u64,
        weight: b.weight,
        last_check: b.last_check().map(|c| CheckRow {
            ok: c.ok,
            detail: c.detail,
            at: unix(c.at),
            seconds_ago: now.duration_since(c.at).map_or(0, |d| d.as_secs()),
        }),
    }
}

fn pool_report(p: &Pool, now: SystemTime) -> PoolReport {
    let mut backends: Vec<BackendRow> = p.backends().iter().map(|b| backend_row(b, now)).collect();
    backends.extend(p.draining_backends().iter().map(|b| backend_row(b, now)));
    PoolReport {
        route: p.route.to_string(),
        pool: p.name,
        balance: balance_name(p.balance()),
        healthy: backends.iter().filter(|b| b.state == "up").count(),
        backends,
    }
}

/// What `/status.json` answers; the HTML page shows the same.
#[derive(Serialize)]
pub struct Report {
    /// The gateway's version.
    pub version: &'static str,
    /// Process start, Unix seconds.
    pub started_at: u64,
    /// When this report was made, Unix seconds.
    pub now: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// What `/readyz` says.
    pub ready: bool,
    /// Why not ready.
    pub not_ready: Option<String>,
    /// Whether SIGTERM started the drain.
    pub draining: bool,
    /// Seconds until the drain closes what is left.
    pub drain_seconds_left: Option<f64>,
    /// `connections_active` / `connections_total` by their labels.
    pub connections: Vec<ConnectionRow>,
    /// Message and byte rates by protocol (and route).
    pub traffic: Vec<TrafficRow>,
    /// The window the rates are averaged over.
    pub rate_window_seconds: u64,
    /// Every pool: the Mosaic pools, then the nostr relay's when served.
    pub pools: Vec<PoolReport>,
    /// `handshake_rejections_total` by reason: within the recent window and since start.
    pub rejections: Vec<RejectionRow>,
    /// The window of `rejections[].recent`.
    pub recent_window_seconds: u64,
    /// Whether the public listener terminates TLS.
    pub tls: bool,
    /// Served certificates.
    pub certificates: Vec<CertificateRow>,
    /// `tls_handshakes_total` by `client_auth`.
    pub tls_handshakes: BTreeMap<String, u64>,
    /// `tls_handshake_failures_total` by reason.
    pub tls_handshake_failures: BTreeMap<String, u64>,
    /// Bans and NIP-86 blocks in force.
    pub bans_active: usize,
    /// The first [`MAX_BANS_SHOWN`] of them, soonest to end first, blocks last.
    pub bans: Vec<BanRow>,
}

/// Bans listed on the page at most (the table may hold `bans.max_entries`).
pub const MAX_BANS_SHOWN: usize = 1000;

/// One ban in force.
#[derive(Serialize)]
pub struct BanRow {
    /// The address, or the network (IPv6 bans cover `rate_limits.ipv6_prefix`).
    pub address: String,
    /// `temporary` (limit trips, violations) or `blocked` (NIP-86, until unblocked).
    pub kind: &'static str,
    /// Seconds until a temporary ban ends.
    pub seconds_left: Option<u64>,
    /// Why.
    pub reason: String,
}

impl BanRow {
    fn new(net: ipnet::IpNet, ban: crate::rate_limit::Ban, now_ms: u64) -> BanRow {
        BanRow {
            address: crate::rate_limit::net_text(net),
            kind: if ban.until_ms.is_some() {
                "temporary"
            } else {
                "blocked"
            },
            seconds_left: ban
                .until_ms
                .map(|u| u.saturating_sub(now_ms).div_ceil(1000)),
            reason: ban.reason,
        }
    }
}

/// Connections of one label set (protocol, and route where routes exist).
#[derive(Serialize)]
pub struct ConnectionRow {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// Open now.
    pub active: i64,
    /// Opened since start.
    pub total: u64,
}

/// Traffic of one label set; rates are `None` until a sample is a second old.
#[derive(Serialize, Default)]
pub struct TrafficRow {
    /// The series' labels without `direction`.
    pub labels: BTreeMap<String, String>,
    /// Client to upstream.
    pub messages_per_second_up: Option<f64>,
    /// Upstream to client.
    pub messages_per_second_down: Option<f64>,
    /// Client to upstream.
    pub bytes_per_second_up: Option<f64>,
    /// Upstream to client.
    pub bytes_per_second_down: Option<f64>,
    /// Messages relayed since start, client to upstream.
    pub messages_total_up: u64,
    /// Messages relayed since start, upstream to client.
    pub messages_total_down: u64,
}

/// One pool.
#[derive(Serialize)]
pub struct PoolReport {
    /// The route the pool serves (`default`: the top-level sections).
    pub route: String,
    /// `default`, `authenticated` or `nostr`.
    pub pool: &'static str,
    /// The balancing algorithm.
    pub balance: &'static str,
    /// Backends up.
    pub healthy: usize,
    /// Its backends, then removed ones still draining.
    pub backends: Vec<BackendRow>,
}

/// One backend.
#[derive(Serialize)]
pub struct BackendRow {
    /// Its label (as in `backend_up{backend}`).
    pub backend: String,
    /// `up`, `down` or `draining`.
    pub state: &'static str,
    /// Open proxied connections.
    pub open_connections: u64,
    /// Balancing weight.
    pub weight: u32,
    /// The last health check, once one finished.
    pub last_check: Option<CheckRow>,
}

/// A health check's outcome.
#[derive(Serialize)]
pub struct CheckRow {
    /// Passed.
    pub ok: bool,
    /// What happened.
    pub detail: String,
    /// When, Unix seconds.
    pub at: u64,
    /// How long ago.
    pub seconds_ago: u64,
}

/// Rejections of one label set.
#[derive(Serialize)]
pub struct RejectionRow {
    /// The series' labels (`reason`, and `route` where routes exist).
    pub labels: BTreeMap<String, String>,
    /// Within the recent window.
    pub recent: u64,
    /// Since start.
    pub total: u64,
}

/// One served certificate.
#[derive(Serialize)]
pub struct CertificateRow {
    /// Its first name (the metric label).
    pub name: String,
    /// `file` or `acme`.
    pub source: String,
    /// The names it is served for.
    pub names: Vec<String>,
    /// Expiry, Unix seconds (`None`: ACME has not issued yet).
    pub not_after: Option<u64>,
    /// Days until expiry.
    pub days_left: Option<f64>,
}

/// Samples the counters every [`SAMPLE_EVERY`] until the task is aborted.
pub async fn sample(app: Arc<App>, status: Arc<Status>) {
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        status.record(&app);
    }
}

// ---------------------------------------------------------------------------
// HTML

fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn rate_text(r: Option<f64>, bytes: bool) -> String {
    let Some(r) = r else {
        return "–".into();
    };
    let (v, unit) = match (bytes, r) {
        (true, r) if r >= 1_048_576.0 => (r / 1_048_576.0, " MiB/s"),
        (true, r) if r >= 1024.0 => (r / 1024.0, " KiB/s"),
        (true, r) => (r, " B/s"),
        (false, r) => (r, "/s"),
    };
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// A series' labels as one line: the value of `first`, then `key=value` for the rest.
fn labels_text(labels: &BTreeMap<String, String>, first: &str) -> String {
    let mut parts: Vec<String> = labels.get(first).into_iter().cloned().collect();
    parts.extend(
        labels
            .iter()
            .filter(|(k, _)| k.as_str() != first)
            .map(|(k, v)| format!("{k}={v}")),
    );
    parts.join(" · ")
}

fn badge(class: &str, text: &str) -> Markup {
    html! { span.b.(class) { (text) } }
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f3f4f6;color:#111827}\
header{background:#111827;color:#f9fafb;padding:12px 16px;display:flex;flex-wrap:wrap;gap:6px 16px;align-items:center}\
header h1{font-size:18px;margin:0;font-weight:600}\
header .meta{color:#9ca3af;font-size:13px}\
main{padding:12px;max-width:1100px;margin:0 auto;display:grid;gap:12px}\
section{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}\
h2{font-size:14px;text-transform:uppercase;letter-spacing:.04em;color:#4b5563;margin:0 0 8px}\
h3{font-size:14px;margin:10px 0 4px}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:14px}\
th,td{text-align:left;padding:5px 8px 5px 0;border-bottom:1px solid #e5e7eb;vertical-align:top}\
th{color:#6b7280;font-weight:500;font-size:12px;white-space:nowrap}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\
.b{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;font-weight:600;line-height:18px}\
.up{background:#d1fae5;color:#065f46}.down{background:#fee2e2;color:#991b1b}\
.draining{background:#fef3c7;color:#92400e}.muted{color:#6b7280;font-size:13px}\
.warn{color:#b45309;font-weight:600}.bad{color:#b91c1c;font-weight:600}\
.wrap{word-break:break-all}\
@media(min-width:800px){main{grid-template-columns:1fr 1fr}.wide{grid-column:1/-1}}";

/// The status page. Every value reaches the page through a maud splice, which escapes it:
/// route and backend names, health-check details, ban reasons and certificate labels come
/// from operators and peers.
pub fn html(r: &Report) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                title { "mosaic-gateway status" }
                // Our own constant: CSS is raw text in HTML, so escaping would corrupt it.
                style { (PreEscaped(STYLE)) }
            }
            body {
                (header(r))
                main {
                    @if let Some(why) = &r.not_ready {
                        (readiness(why, r.drain_seconds_left))
                    }
                    (connections(&r.connections))
                    (traffic(r))
                    (backends(&r.pools))
                    (rejections(r))
                    (bans(r))
                    (tls(r))
                }
            }
        }
    };
    let mut out = page.into_string();
    out.push('\n');
    out
}

/// The dark bar: version, state, uptime and the other views.
fn header(r: &Report) -> Markup {
    let state = if r.draining {
        badge("draining", "draining")
    } else if r.ready {
        badge("up", "ready")
    } else {
        badge("down", "not ready")
    };
    html! {
        header {
            h1 { "mosaic-gateway " (r.version) }
            (state)
            span.meta {
                "up " (duration_text(r.uptime_seconds))
                " · refreshes every " (REFRESH_SECONDS) "s · "
                a href="/status.json" style="color:#93c5fd" { "JSON" }
                " · "
                a href="/metrics" style="color:#93c5fd" { "metrics" }
            }
        }
    }
}

/// Why `/readyz` fails, and how long the drain has left.
fn readiness(why: &str, drain_seconds_left: Option<f64>) -> Markup {
    html! {
        section.wide {
            h2 { "Readiness" }
            p.bad #not-ready { "not ready: " (why) }
            @if let Some(left) = drain_seconds_left {
                p { "Draining: open connections are closed within " (format!("{left:.0}")) "s." }
            }
        }
    }
}

fn connections(rows: &[ConnectionRow]) -> Markup {
    html! {
        section {
            h2 { "Connections" }
            div.scroll { table {
                tr { th { "protocol" } th.n { "open" } th.n { "since start" } }
                @for c in rows {
                    tr {
                        td { (labels_text(&c.labels, "protocol")) }
                        td.n { (c.active) }
                        td.n { (c.total) }
                    }
                }
            } }
        }
    }
}

fn traffic(r: &Report) -> Markup {
    html! {
        section {
            h2 { "Traffic " span.muted { "(last " (r.rate_window_seconds) "s)" } }
            div.scroll { table {
                tr {
                    th { "protocol" }
                    th.n { "msg/s ↑" }
                    th.n { "msg/s ↓" }
                    th.n { "bytes ↑" }
                    th.n { "bytes ↓" }
                }
                @for t in &r.traffic {
                    tr {
                        td { (labels_text(&t.labels, "protocol")) }
                        td.n { (rate_text(t.messages_per_second_up, false)) }
                        td.n { (rate_text(t.messages_per_second_down, false)) }
                        td.n { (rate_text(t.bytes_per_second_up, true)) }
                        td.n { (rate_text(t.bytes_per_second_down, true)) }
                    }
                }
            } }
            p.muted { "↑ client to upstream, ↓ upstream to client" }
        }
    }
}

/// One table per pool.
fn backends(pools: &[PoolReport]) -> Markup {
    html! {
        section.wide {
            h2 { "Backends" }
            @for p in pools {
                h3 {
                    (p.route) " / " (p.pool) " "
                    span.muted { (p.balance) " · " (p.healthy) " of " (p.backends.len()) " up" }
                }
                div.scroll { table {
                    tr {
                        th { "backend" }
                        th { "state" }
                        th.n { "open" }
                        th.n { "weight" }
                        th { "last check" }
                    }
                    @for b in &p.backends { (backend(b)) }
                } }
            }
        }
    }
}

fn backend(b: &BackendRow) -> Markup {
    html! {
        tr data-backend=(b.backend) data-state=(b.state) {
            td.wrap { (b.backend) }
            td { (badge(b.state, b.state)) }
            td.n { (b.open_connections) }
            td.n { (b.weight) }
            td {
                @if let Some(c) = &b.last_check {
                    span.bad[!c.ok] { (c.detail) }
                    " "
                    span.muted { (duration_text(c.seconds_ago)) " ago" }
                } @else {
                    span.muted { "not yet" }
                }
            }
        }
    }
}

/// Refused upgrades that happened at all, the most recent first.
fn rejections(r: &Report) -> Markup {
    let happened: Vec<&RejectionRow> = r.rejections.iter().filter(|x| x.total > 0).collect();
    html! {
        section {
            h2 { "Rejected upgrades" }
            div.scroll { table {
                tr {
                    th { "reason" }
                    th.n { "last " (r.recent_window_seconds / 60) "m" }
                    th.n { "since start" }
                }
                @for x in &happened {
                    tr {
                        td { (labels_text(&x.labels, "reason")) }
                        td.n { (x.recent) }
                        td.n { (x.total) }
                    }
                }
                @if happened.is_empty() {
                    tr { td colspan="3" class="muted" { "none since start" } }
                }
            } }
        }
    }
}

/// What the table of standing holds against addresses now.
fn bans(r: &Report) -> Markup {
    html! {
        section {
            h2 { "Bans " span.muted { "(" (r.bans_active) " in force)" } }
            div.scroll { table #bans {
                tr { th { "address" } th { "kind" } th.n { "ends in" } th { "reason" } }
                @for b in &r.bans {
                    tr data-ban=(b.address) {
                        td.wrap { (b.address) }
                        td { (b.kind) }
                        td.n { (b.seconds_left.map_or_else(|| "unblocked by hand".into(), duration_text)) }
                        td.wrap { (b.reason) }
                    }
                }
                @if r.bans.is_empty() {
                    tr { td colspan="4" class="muted" { "none" } }
                }
            } }
            @if r.bans_active > r.bans.len() {
                p.muted { "the first " (r.bans.len()) " shown" }
            }
        }
    }
}

fn tls(r: &Report) -> Markup {
    html! {
        section {
            h2 { "TLS" }
            @if !r.tls {
                p.muted { "plain ws:// (no TLS on the public listener)" }
            } @else {
                (handshakes(r))
                @if r.certificates.is_empty() {
                    p.muted { "the master key only (raw public key / self-signed)" }
                } @else {
                    (certificates(&r.certificates))
                }
            }
        }
    }
}

/// Handshakes since start, and the failures by reason.
fn handshakes(r: &Report) -> Markup {
    let count = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    let failed: Vec<String> = r
        .tls_handshake_failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let authenticated = r.tls_handshakes.get("authenticated").copied().unwrap_or(0);
    html! {
        p {
            "handshakes since start: " (count(&r.tls_handshakes))
            " (" (authenticated) " authenticated) · failed: " (count(&r.tls_handshake_failures))
            @if !failed.is_empty() {
                " " span.muted { "(" (failed.join(", ")) ")" }
            }
        }
    }
}

fn certificates(rows: &[CertificateRow]) -> Markup {
    html! {
        div.scroll { table {
            tr { th { "name" } th { "source" } th.n { "expires in" } }
            @for c in rows {
                tr {
                    td.wrap { (c.name) }
                    td { (c.source) }
                    td.n { (expires_in(c.days_left)) }
                }
            }
        } }
    }
}

/// Days left, marked once under two weeks.
fn expires_in(days_left: Option<f64>) -> Markup {
    html! {
        @match days_left {
            Some(d) if d < 0.0 => { span.bad { "expired" } }
            Some(d) if d < 14.0 => { span.warn { (format!("{d:.1} days")) } }
            Some(d) => { (format!("{:.0} days", d.floor())) }
            None => { span.muted { "not issued yet" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_read_well() {
        assert_eq!(duration_text(5), "5s");
        assert_eq!(duration_text(65), "1m 5s");
        assert_eq!(duration_text(3 * 3600 + 120), "3h 2m");
        assert_eq!(duration_text(2 * 86_400 + 3600), "2d 1h");
        assert_eq!(rate_text(None, false), "–");
        assert_eq!(rate_text(Some(2048.0), true), "2.0 KiB/s");
        assert_eq!(rate_text(Some(12.34), false), "12.3/s");
    }

    /// Markup and quotes, as an operator's or a peer's text may hold them.
    const HOSTILE: &str = "<script>alert(\"x\")</script> & 'q'";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn backend(name: &str, state: &'static str, check: Option<(bool, &str)>) -> BackendRow {
        BackendRow {
            backend: name.into(),
            state,
            open_connections: 3,
            weight: 2,
            last_check: check.map(|(ok, detail)| CheckRow {
                ok,
                detail: detail.into(),
                at: 1_700_000_000,
                seconds_ago: 75,
            }),
        }
    }

    fn certificate(name: &str, days_left: Option<f64>) -> CertificateRow {
        CertificateRow {
            name: name.into(),
            source: if days_left.is_some() { "file" } else { "acme" }.into(),
            names: vec![name.into()],
            not_after: days_left.map(|_| 1_800_000_000),
            days_left,
        }
    }

    /// A pool serving a [`HOSTILE`] route, one of whose backends failed with [`HOSTILE`].
    fn pool() -> PoolReport {
        PoolReport {
            route: HOSTILE.into(),
            pool: "default",
            balance: "round-robin",
            healthy: 1,
            backends: vec![
                backend("ws://a.example/?x=1&y=\"2\"", "up", Some((true, "ok"))),
                backend("ws://b.example/", "down", Some((false, HOSTILE))),
                backend("ws://c.example/", "draining", None),
            ],
        }
    }

    /// A draining gateway with every section filled and [`HOSTILE`] text in seven places.
    fn filled() -> Report {
        let ban = |reason: &str, seconds_left: Option<u64>| BanRow {
            address: "192.0.2.7".into(),
            kind: if seconds_left.is_some() {
                "temporary"
            } else {
                "blocked"
            },
            seconds_left,
            reason: reason.into(),
        };
        Report {
            version: "0.1.0",
            started_at: 1_700_000_000,
            now: 1_700_090_061,
            uptime_seconds: 90_061,
            ready: false,
            not_ready: Some("draining".into()),
            draining: true,
            drain_seconds_left: Some(12.4),
            connections: vec![ConnectionRow {
                labels: labels(&[("protocol", "mosaic"), ("route", HOSTILE)]),
                active: 2,
                total: 40,
            }],
            traffic: vec![TrafficRow {
                labels: labels(&[("protocol", "nostr")]),
                messages_per_second_up: Some(12.34),
                ..TrafficRow::default()
            }],
            rate_window_seconds: 60,
            pools: vec![pool()],
            rejections: vec![RejectionRow {
                labels: labels(&[("reason", "bad_ws_version"), ("route", HOSTILE)]),
                recent: 2,
                total: 5,
            }],
            recent_window_seconds: 300,
            tls: true,
            certificates: vec![
                certificate(HOSTILE, Some(61.7)),
                certificate("soon.example", Some(9.25)),
                certificate("gone.example", Some(-1.0)),
                certificate("acme.example", None),
            ],
            tls_handshakes: BTreeMap::from([("authenticated".into(), 2), ("anonymous".into(), 5)]),
            tls_handshake_failures: BTreeMap::from([
                (HOSTILE.into(), 2),
                ("client_hello".into(), 0),
            ]),
            bans_active: 3,
            bans: vec![ban(HOSTILE, None), ban("too fast", Some(3700))],
        }
    }

    #[test]
    fn every_section_escapes_what_operators_and_peers_wrote() {
        let page = html(&filled());
        assert!(!page.contains("<script"), "{page}");
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; 'q'";
        // Connections, pool heading, health check, rejections, certificate, TLS failure, ban.
        assert_eq!(page.matches(escaped).count(), 7, "{page}");
        assert!(page.contains(r#"data-backend="ws://a.example/?x=1&amp;y=&quot;2&quot;""#));
        for shown in [
            r#"<p class="bad" id="not-ready">not ready: draining</p>"#,
            "<p>Draining: open connections are closed within 12s.</p>",
            r#"<span class="b draining">draining</span>"#,
            r#"<span class="warn">9.2 days</span>"#,
            r#"<span class="bad">expired</span>"#,
            r#"<span class="muted">not issued yet</span>"#,
            "<td class=\"n\">1h 1m</td>",
            r#"<p class="muted">the first 2 shown</p>"#,
        ] {
            assert!(page.contains(shown), "{shown} missing: {page}");
        }
    }
}
