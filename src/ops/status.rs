//! The status page on the admin listener: `/` and `/status` (one HTML page that refreshes
//! itself, no script) and the same data as JSON at `/status.json`.
//!
//! Everything comes from state the gateway keeps anyway (the metrics, the pools, the
//! certificate store, the drain); rates and "recent" counts are differences against samples
//! of the counters taken every [`SAMPLE_EVERY`] by [`sample`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use serde::Serialize;

use crate::config::Balance;
use crate::drain::DrainState;
use crate::gateway::App;
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

    /// Everything the page shows, as of now.
    pub fn report(&self, app: &App) -> Report {
        let now = Instant::now();
        let wall = SystemTime::now();
        let current = Counters::read(app);
        let history = self.history();
        // The oldest sample inside a window (the start, while the gateway is younger).
        let baseline = |window: Duration| {
            history
                .iter()
                .find(|(at, _)| now.duration_since(*at) <= window)
                .or(history.back())
        };
        let rate_base = baseline(RATE_WINDOW);
        let recent_base = baseline(RECENT_WINDOW);
        let gw = app.gateway();
        let m = &app.metrics;

        let totals = series(&m.connections_total);
        let connections = series(&m.connections_active)
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
            .collect();

        let mut traffic: BTreeMap<Vec<(String, String)>, TrafficRow> = BTreeMap::new();
        for ((name, labels), v) in &current.values {
            let slot = match *name {
                "messages" => 0,
                "bytes" => 2,
                _ => continue,
            };
            let up = labels
                .iter()
                .any(|(k, v)| k == "direction" && v == "client_to_upstream");
            let key: Vec<(String, String)> = labels
                .iter()
                .filter(|(k, _)| k != "direction")
                .cloned()
                .collect();
            let row = traffic.entry(key.clone()).or_insert_with(|| TrafficRow {
                labels: key.into_iter().collect(),
                ..TrafficRow::default()
            });
            let rate = rate_base.and_then(|(at, base)| {
                let secs = now.duration_since(*at).as_secs_f64();
                (secs >= 1.0).then(|| (v - base.get(name, labels)).max(0.0) / secs)
            });
            let i = slot + usize::from(!up);
            let cell = match i {
                0 => &mut row.messages_per_second_up,
                1 => &mut row.messages_per_second_down,
                2 => &mut row.bytes_per_second_up,
                _ => &mut row.bytes_per_second_down,
            };
            *cell = rate;
            if slot == 0 {
                if up {
                    row.messages_total_up = *v as u64;
                } else {
                    row.messages_total_down = *v as u64;
                }
            }
        }

        let mut rejections: Vec<RejectionRow> = current
            .values
            .iter()
            .filter(|((name, _), _)| *name == "rejections")
            .map(|((name, labels), v)| RejectionRow {
                labels: labels.iter().cloned().collect(),
                recent: recent_base.map_or(0.0, |(_, b)| (v - b.get(name, labels)).max(0.0)) as u64,
                total: *v as u64,
            })
            .collect();
        rejections.sort_by_key(|r| std::cmp::Reverse((r.recent, r.total)));
        drop(history);

        let pools = gw.pools().iter().map(|p| pool_report(p, wall)).collect();
        let certificates = gw
            .tls
            .as_ref()
            .map(|tls| {
                let mut out: Vec<CertificateRow> = tls
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
                    out.push(CertificateRow {
                        name: acme.label(),
                        source: "acme".into(),
                        names: Vec::new(),
                        not_after: at.map(unix),
                        days_left: at.map(|at| days_between(wall, at)),
                    });
                }
                out
            })
            .unwrap_or_default();
        let (draining, drain_seconds_left) = match *app.drain.borrow() {
            DrainState::Draining { close_by } => (
                true,
                Some(
                    close_by
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs_f64(),
                ),
            ),
            _ => (false, None),
        };
        let by = |c: &dyn Collector, label: &str| -> BTreeMap<String, u64> {
            series(c)
                .into_iter()
                .filter_map(|(labels, v)| {
                    let key = labels.into_iter().find(|(k, _)| k == label)?.1;
                    Some((key, v as u64))
                })
                .collect()
        };
        let readiness = app.readiness();
        let all_bans = app.standing().list();
        let bans_active = all_bans.len();
        let bans = all_bans
            .into_iter()
            .take(MAX_BANS_SHOWN)
            .map(|(net, ban)| BanRow::new(net, ban, unix(wall) * 1000))
            .collect();
        Report {
            bans_active,
            bans,
            version: env!("CARGO_PKG_VERSION"),
            started_at: unix(self.started_at),
            now: unix(wall),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready: readiness.is_ok(),
            not_ready: readiness.err().map(|e| e.to_string()),
            draining,
            drain_seconds_left,
            connections,
            traffic: traffic.into_values().collect(),
            rate_window_seconds: RATE_WINDOW.as_secs(),
            pools,
            rejections,
            recent_window_seconds: RECENT_WINDOW.as_secs(),
            tls: gw.tls.is_some(),
            certificates,
            tls_handshakes: by(&m.tls_handshakes_total, "client_auth"),
            tls_handshake_failures: by(&m.tls_handshake_failures_total, "reason"),
        }
    }
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
    /// Every Mosaic pool.
    pub pools: Vec<PoolReport>,
    /// The nostr relay, when served.
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

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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

fn labels_text(labels: &BTreeMap<String, String>, first: &str) -> String {
    let mut parts: Vec<String> = labels.get(first).into_iter().cloned().collect();
    parts.extend(
        labels
            .iter()
            .filter(|(k, _)| k.as_str() != first)
            .map(|(k, v)| format!("{k}={v}")),
    );
    escape(&parts.join(" · "))
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"b {class}\">{}</span>", escape(text))
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

/// The status page.
pub fn html(r: &Report) -> String {
    let mut o = String::with_capacity(8 * 1024);
    let state = if r.draining {
        badge("draining", "draining")
    } else if r.ready {
        badge("up", "ready")
    } else {
        badge("down", "not ready")
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<title>mosaic-gateway status</title><style>{STYLE}</style></head><body>\
<header><h1>mosaic-gateway {}</h1>{state}\
<span class=\"meta\">up {} · refreshes every {REFRESH_SECONDS}s · <a href=\"/status.json\" style=\"color:#93c5fd\">JSON</a> · <a href=\"/metrics\" style=\"color:#93c5fd\">metrics</a></span></header><main>",
        escape(r.version),
        duration_text(r.uptime_seconds),
    );
    if let Some(why) = &r.not_ready {
        let _ = write!(
            o,
            "<section class=\"wide\"><h2>Readiness</h2><p class=\"bad\" id=\"not-ready\">not ready: {}</p>",
            escape(why)
        );
        if let Some(left) = r.drain_seconds_left {
            let _ = write!(
                o,
                "<p>Draining: open connections are closed within {left:.0}s.</p>"
            );
        }
        o.push_str("</section>");
    }

    o.push_str("<section><h2>Connections</h2><div class=\"scroll\"><table><tr><th>protocol</th><th class=\"n\">open</th><th class=\"n\">since start</th></tr>");
    for c in &r.connections {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            labels_text(&c.labels, "protocol"),
            c.active,
            c.total
        );
    }
    o.push_str("</table></div></section>");

    let _ = write!(
        o,
        "<section><h2>Traffic <span class=\"muted\">(last {}s)</span></h2><div class=\"scroll\"><table>\
<tr><th>protocol</th><th class=\"n\">msg/s ↑</th><th class=\"n\">msg/s ↓</th><th class=\"n\">bytes ↑</th><th class=\"n\">bytes ↓</th></tr>",
        r.rate_window_seconds
    );
    for t in &r.traffic {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            labels_text(&t.labels, "protocol"),
            rate_text(t.messages_per_second_up, false),
            rate_text(t.messages_per_second_down, false),
            rate_text(t.bytes_per_second_up, true),
            rate_text(t.bytes_per_second_down, true),
        );
    }
    o.push_str(
        "</table></div><p class=\"muted\">↑ client to upstream, ↓ upstream to client</p></section>",
    );

    o.push_str("<section class=\"wide\"><h2>Backends</h2>");
    for p in &r.pools {
        let _ = write!(
            o,
            "<h3>{} / {} <span class=\"muted\">{} · {} of {} up</span></h3><div class=\"scroll\"><table>\
<tr><th>backend</th><th>state</th><th class=\"n\">open</th><th class=\"n\">weight</th><th>last check</th></tr>",
            escape(&p.route),
            escape(p.pool),
            escape(p.balance),
            p.healthy,
            p.backends.len()
        );
        for b in &p.backends {
            let check = match &b.last_check {
                Some(c) => format!(
                    "<span class=\"{}\">{}</span> <span class=\"muted\">{} ago</span>",
                    if c.ok { "" } else { "bad" },
                    escape(&c.detail),
                    duration_text(c.seconds_ago)
                ),
                None => "<span class=\"muted\">not yet</span>".into(),
            };
            let _ = write!(
                o,
                "<tr data-backend=\"{}\" data-state=\"{}\"><td class=\"wrap\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{check}</td></tr>",
                escape(&b.backend),
                b.state,
                escape(&b.backend),
                badge(b.state, b.state),
                b.open_connections,
                b.weight,
            );
        }
        o.push_str("</table></div>");
    }
    o.push_str("</section>");

    let _ = write!(
        o,
        "<section><h2>Rejected upgrades</h2><div class=\"scroll\"><table><tr><th>reason</th><th class=\"n\">last {}m</th><th class=\"n\">since start</th></tr>",
        r.recent_window_seconds / 60
    );
    let mut shown = 0;
    for x in r.rejections.iter().filter(|x| x.total > 0) {
        shown += 1;
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            labels_text(&x.labels, "reason"),
            x.recent,
            x.total
        );
    }
    if shown == 0 {
        o.push_str("<tr><td colspan=\"3\" class=\"muted\">none since start</td></tr>");
    }
    o.push_str("</table></div></section>");

    bans_html(&mut o, r);
    o.push_str("<section><h2>TLS</h2>");
    if r.tls {
        let count = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        let failed: Vec<String> = r
            .tls_handshake_failures
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{} {n}", escape(k)))
            .collect();
        let _ = write!(
            o,
            "<p>handshakes since start: {} ({} authenticated) · failed: {}{}</p>",
            count(&r.tls_handshakes),
            r.tls_handshakes.get("authenticated").copied().unwrap_or(0),
            count(&r.tls_handshake_failures),
            if failed.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"muted\">({})</span>", failed.join(", "))
            }
        );
    }
    if !r.tls {
        o.push_str("<p class=\"muted\">plain ws:// (no TLS on the public listener)</p>");
    } else if r.certificates.is_empty() {
        o.push_str("<p class=\"muted\">the master key only (raw public key / self-signed)</p>");
    } else {
        o.push_str("<div class=\"scroll\"><table><tr><th>name</th><th>source</th><th class=\"n\">expires in</th></tr>");
        for c in &r.certificates {
            let left = match c.days_left {
                Some(d) if d < 0.0 => "<span class=\"bad\">expired</span>".to_string(),
                Some(d) if d < 14.0 => format!("<span class=\"warn\">{d:.1} days</span>"),
                Some(d) => format!("{:.0} days", d.floor()),
                None => "<span class=\"muted\">not issued yet</span>".into(),
            };
            let _ = write!(
                o,
                "<tr><td class=\"wrap\">{}</td><td>{}</td><td class=\"n\">{left}</td></tr>",
                escape(&c.name),
                escape(&c.source)
            );
        }
        o.push_str("</table></div>");
    }
    o.push_str("</section></main></body></html>\n");
    o
}

/// The bans section: what the table of standing holds against addresses now.
fn bans_html(o: &mut String, r: &Report) {
    let _ = write!(
        o,
        "<section><h2>Bans <span class=\"muted\">({} in force)</span></h2><div class=\"scroll\"><table id=\"bans\">\
<tr><th>address</th><th>kind</th><th class=\"n\">ends in</th><th>reason</th></tr>",
        r.bans_active
    );
    for b in &r.bans {
        let _ = write!(
            o,
            "<tr data-ban=\"{}\"><td class=\"wrap\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"wrap\">{}</td></tr>",
            escape(&b.address),
            escape(&b.address),
            b.kind,
            b.seconds_left.map_or_else(|| "unblocked by hand".into(), duration_text),
            escape(&b.reason),
        );
    }
    if r.bans.is_empty() {
        o.push_str("<tr><td colspan=\"4\" class=\"muted\">none</td></tr>");
    }
    o.push_str("</table></div>");
    if r.bans_active > r.bans.len() {
        let _ = write!(o, "<p class=\"muted\">the first {} shown</p>", r.bans.len());
    }
    o.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

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
}
