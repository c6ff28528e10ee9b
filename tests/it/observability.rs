//! What operators install next to the gateway (issue 15), checked against a real gateway:
//! every series whose label values are known in advance is on the first scrape with 0,
//! the scrape passes `promtool check metrics`, and every PromQL query in the Grafana
//! dashboard and the alert rules names only metrics the gateway exports.
//!
//! `promtool` is Debian's `prometheus` package; `.ci/run` installs it (and runs `promtool
//! check rules` / `promtool test rules` on deploy/prometheus). Without it these checks say
//! `skipped:`, except in CI, where a missing tool fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use crate::tls_edge::{master_key, tls_section, TestCa};
use serde_json::Value;

type Labels = BTreeMap<String, String>;

/// `name{labels} value` lines of a text exposition.
fn samples(text: &str) -> Vec<(String, Labels, f64)> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = Labels::new();
        // Label values here never contain `",`.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label pair");
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.push((name.to_string(), map, value.parse().expect("sample value")));
    }
    out
}

/// The metric names a scrape exposes, histograms as their `_bucket`, `_sum` and `_count`.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            out.insert(name.to_string());
        }
    }
    out
}

/// `promtool`, or `None` after a `skipped:` line; in CI a missing promtool fails.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI (.ci/run installs Debian's prometheus package)"
        );
        eprintln!(
            "skipped: promtool not installed (apt-get install --no-install-recommends prometheus)"
        );
    }
    found
}

/// A fresh gateway with every kind of configured label: TLS with a certificate file, a
/// default and an authenticated pool, a nostr relay. Returns the first scrape.
async fn first_scrape() -> String {
    let ca = TestCa::new();
    let cert = ca.issue("relay", &["relay.example.com"], 60);
    let keys = tempfile::tempdir().unwrap();
    let (master, _) = master_key(keys.path());
    let (a, b) = (mosaic_backend().await, mosaic_backend().await);
    let relay = nostr_relay().await;
    let gw = gateway(&format!(
        "{}mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\n  \
         authenticated_backends:\n    - url: ws://{}\nnostr:\n  upstream: ws://{}\n",
        tls_section(Some(&master), &[&cert], "  client_auth: optional\n"),
        a.local_addr(),
        b.local_addr(),
        relay.local_addr()
    ))
    .await;
    let (status, text) = admin_get(gw.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    drop(gw);
    text
}

/// Every series the first scrape must have, as (name, labels), with the value 0 unless
/// the name is listed in `nonzero`. The lists are docs/operations.md's and CONTRACT.md's.
fn expected_zero_series() -> Vec<(String, Labels)> {
    let mut out = Vec::new();
    let mut add = |name: &str, labels: &[(&str, &str)]| {
        out.push((
            format!("mosaic_gateway_{name}"),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
    };
    // The fresh gateway has the top-level sections only: the route `default`.
    let route = ("route", "default");
    for protocol in ["mosaic", "nostr"] {
        add("connections_active", &[route, ("protocol", protocol)]);
        add("connections_total", &[route, ("protocol", protocol)]);
        for direction in ["client_to_upstream", "upstream_to_client"] {
            add(
                "messages_total",
                &[route, ("protocol", protocol), ("direction", direction)],
            );
            add(
                "bytes_total",
                &[route, ("protocol", protocol), ("direction", direction)],
            );
        }
    }
    for reason in [
        "bad_method",
        "bad_version",
        "no_connection_upgrade",
        "bad_ws_version",
        "bad_key",
        "draining",
        "max_connections",
        "max_connections_per_ip",
        "no_route",
        "no_healthy_backend",
        "upstream_failed",
        "upstream_refused",
        "upstream_bad_protocol",
        "bad_proxy_header",
        "head_too_large",
        "bad_host",
        "bad_target",
        "bad_hello",
        "malformed_request",
        "route_max_connections",
        "unknown_route",
        "misdirected",
    ] {
        // Before a route is known (route ""), and on the one route.
        for r in ["", "default"] {
            add(
                "handshake_rejections_total",
                &[("route", r), ("reason", reason)],
            );
        }
    }
    for kind in [
        "text_message",
        "wrong_direction",
        "malformed",
        "too_large",
        "framing",
    ] {
        add("protocol_violations_total", &[("kind", kind)]);
    }
    for code in ["1001", "1002", "1003", "1009", "1014"] {
        add("closes_sent_total", &[("code", code)]);
    }
    for client_auth in ["anonymous", "authenticated"] {
        add("tls_handshakes_total", &[("client_auth", client_auth)]);
    }
    for reason in ["client_hello", "no_certificate", "handshake", "timeout"] {
        add("tls_handshake_failures_total", &[("reason", reason)]);
    }
    for status in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        add("http_requests_total", &[("status", status)]);
    }
    for protocol in ["mosaic", "nostr"] {
        add("http2_websockets_total", &[("protocol", protocol)]);
    }
    for pool in ["default", "authenticated", "nostr"] {
        add("backend_connect_duration_seconds_count", &[("pool", pool)]);
        add("backend_connect_duration_seconds_sum", &[("pool", pool)]);
    }
    for pool in ["default", "authenticated", "nostr"] {
        for kind in ["connect", "timeout", "refused", "bad_response"] {
            add("upstream_failures_total", &[("pool", pool), ("kind", kind)]);
        }
    }
    add("headers_dropped_total", &[("reason", "underscore")]);
    add("draining", &[]);
    out
}

#[tokio::test]
async fn the_first_scrape_has_every_series_whose_labels_are_known_in_advance() {
    let text = first_scrape().await;
    let got = samples(&text);
    let value = |name: &str, labels: &Labels| {
        got.iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| *v)
    };
    let mut missing = Vec::new();
    for (name, labels) in expected_zero_series() {
        match value(&name, &labels) {
            Some(v) => assert_eq!(v, 0.0, "{name}{labels:?} on a fresh gateway"),
            None => missing.push(format!("{name}{labels:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "missing from the first scrape:\n{}",
        missing.join("\n")
    );
    // Series that are not 0 from the start: each backend's health, the build, readiness,
    // the certificate's expiry, the histogram's buckets.
    let backends: Vec<&Labels> = got
        .iter()
        .filter(|(n, _, v)| n == "mosaic_gateway_backend_up" && *v == 1.0)
        .map(|(_, l, _)| l)
        .collect();
    let pools: BTreeSet<&str> = backends.iter().map(|l| l["pool"].as_str()).collect();
    // The nostr relay is a pool of one, health-checked with NIP-11 like any backend.
    assert_eq!(
        pools,
        BTreeSet::from(["authenticated", "default", "nostr"]),
        "{text}"
    );
    assert_eq!(backends.len(), 3);
    let info = got
        .iter()
        .find(|(n, _, _)| n == "mosaic_gateway_build_info")
        .expect("build_info");
    assert_eq!(
        (info.1["version"].as_str(), info.2),
        (env!("CARGO_PKG_VERSION"), 1.0)
    );
    assert_eq!(value("mosaic_gateway_ready", &Labels::new()), Some(1.0));
    let expiry = got
        .iter()
        .find(|(n, _, _)| n == "mosaic_gateway_tls_certificate_expiry_timestamp_seconds")
        .expect("the certificate's expiry on the first scrape");
    assert_eq!(expiry.1["name"], "relay.example.com");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((expiry.2 - now - 60.0 * 86_400.0).abs() < 2.0 * 86_400.0);
    let buckets = got
        .iter()
        .filter(|(n, _, _)| n == "mosaic_gateway_backend_connect_duration_seconds_bucket")
        .count();
    assert_eq!(buckets, 3 * 14, "13 buckets and +Inf per pool");
}

#[tokio::test]
async fn the_first_scrape_passes_promtool_check_metrics() {
    let text = first_scrape().await;
    let Some(promtool) = promtool() else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// PromQL

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (in `{}`, `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`,
/// `group_left (…)`, `group_right (…)`), strings, ranges or Grafana variables.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 23] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
        // Aggregations, which may put `by (…)` before their parenthesis.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        let mut j = from;
        while j < chars.len() {
            if chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
            } else if chars[j] == open {
                depth += 1;
            } else if chars[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i, '{', '}'),
            '[' => i = skip_to(i, '[', ']'),
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if GROUPING.contains(&word.as_str()) {
                    if call {
                        i = skip_to(next, '(', ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let e = r#"histogram_quantile(0.99, sum by (le, pool) (rate(mosaic_gateway_backend_connect_duration_seconds_bucket{instance=~"$instance", pool!="x"}[$__rate_interval])))
        / on (pool) group_left (backend) max without (instance) (mosaic_gateway_backend_up offset 5m) > bool 0.5
        or (mosaic_gateway_tls_certificate_expiry_timestamp_seconds - time()) < 14 * 86400 and up{job="a b"} == 1e3"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(
        names,
        [
            "mosaic_gateway_backend_connect_duration_seconds_bucket",
            "mosaic_gateway_backend_up",
            "mosaic_gateway_tls_certificate_expiry_timestamp_seconds",
            "up"
        ]
    );
}

/// Every `expr` string anywhere in a Grafana dashboard, and the metric of each
/// `label_values(metric, label)` variable query.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("query" | "definition", Value::String(q))
                        if q.starts_with("label_values(") =>
                    {
                        let args = &q["label_values(".len()..];
                        out.push(args.split(',').next().unwrap_or_default().to_string());
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, out)),
        _ => {}
    }
}

fn deploy_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The `expr` of every rule in deploy/prometheus/alerts.yaml, by alert name.
fn alert_exprs() -> Vec<(String, String)> {
    let rules: Value = serde_saphyr::from_str(&deploy_file("prometheus/alerts.yaml")).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn dashboard_and_alert_queries_name_only_metrics_the_gateway_exports() {
    let exported = exported_names(&first_scrape().await);
    let dashboard: Value = serde_json::from_str(&deploy_file("grafana/mosaic-gateway.json"))
        .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "mosaic-gateway");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "dashboard query selects no metric: {q}");
        for name in names {
            assert!(
                exported.contains(&name),
                "dashboard query names {name}, which the gateway does not export: {q}"
            );
            used.insert(name);
        }
    }
    // The panels the issue asks for.
    for family in [
        "connections_active",
        "messages_total",
        "bytes_total",
        "handshake_rejections_total",
        "protocol_violations_total",
        "backend_up",
        "backend_connect_duration_seconds_bucket",
        "tls_handshakes_total",
        "tls_certificate_expiry_timestamp_seconds",
        "draining",
    ] {
        assert!(
            used.contains(&format!("mosaic_gateway_{family}")),
            "no panel shows {family}"
        );
    }
    let alerts = alert_exprs();
    assert_eq!(alerts.len(), 7);
    for (alert, expr) in alerts {
        for name in metric_names(&expr) {
            // `up` is Prometheus's own series for every scrape target.
            assert!(
                exported.contains(&name) || name == "up",
                "alert {alert} names {name}, which the gateway does not export: {expr}"
            );
        }
    }
}
