//! Where backends come from at run time: `dns:` entries (with an injected resolver serving
//! changing answers, and the real resolver on `localhost`), and SIGHUP reloads of the real
//! binary while clients stay connected.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use mosaic_gateway::dev::mosaic_backend::{wire, MosaicBackend, MosaicBackendOptions};
use mosaic_gateway::discovery::{Lookup, Resolve};
use mosaic_gateway::runtime::Running;

/// A resolver whose answer the test changes at will.
struct TestResolver {
    answer: Mutex<Result<Vec<SocketAddr>, String>>,
    lookups: Mutex<Vec<String>>,
}

impl TestResolver {
    fn new(addrs: &[SocketAddr]) -> Arc<Self> {
        Arc::new(TestResolver {
            answer: Mutex::new(Ok(addrs.to_vec())),
            lookups: Mutex::new(Vec::new()),
        })
    }

    fn set(&self, answer: Result<Vec<SocketAddr>, String>) {
        *self.answer.lock().unwrap() = answer;
    }

    fn lookups(&self) -> usize {
        self.lookups.lock().unwrap().len()
    }
}

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, entry: &'a str) -> Lookup<'a> {
        self.lookups.lock().unwrap().push(entry.to_string());
        let answer = self.answer.lock().unwrap().clone();
        Box::pin(async move { answer.map_err(io::Error::other) })
    }
}

async fn metrics(gw: &Running) -> String {
    admin_get(gw.admin_addr, "/metrics").await.1
}

fn dns_label(addr: SocketAddr, entry: &str) -> String {
    format!("mosaic_gateway_backend_up{{backend=\"ws://{addr}/ (dns {entry})\",pool=\"default\",route=\"default\"}}")
}

async fn submit_ok(ws: &mut Ws, seed: u8) {
    send(ws, wire::submission(&[seed; 40])).await;
    assert_eq!(recv(ws).await[0], wire::SUBMISSION_RESULT);
}

/// Two backends on the same port of two loopback addresses, like two pods behind one name.
async fn two_hosts_one_port() -> (MosaicBackend, MosaicBackend) {
    for _ in 0..20 {
        let a = MosaicBackend::spawn(
            "127.0.0.2:0".parse().unwrap(),
            MosaicBackendOptions::default(),
        )
        .await
        .unwrap();
        let port = a.local_addr().port();
        let addr_b: SocketAddr = format!("127.0.0.3:{port}").parse().unwrap();
        if let Ok(b) = MosaicBackend::spawn(addr_b, MosaicBackendOptions::default()).await {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Polls /metrics until `cond` holds on its text.
async fn wait_metrics(gw: &Running, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = metrics(gw).await;
        if cond(&text) {
            return text;
        }
        assert!(start.elapsed() < T, "timed out waiting for {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn dns_answers_add_backends_and_vanished_ones_drain() {
    let (a, b) = two_hosts_one_port().await;
    let port = a.local_addr().port();
    let entry = format!("mosaic.test:{port}");
    let resolver = TestResolver::new(&[a.local_addr()]);
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nshutdown:\n  drain_timeout: 1s\n\
         mosaic:\n  balance: round-robin\n  dns_refresh: 200ms\n  \
         health_check: {{ interval: 10m, timeout: 1s }}\n  backends:\n    - dns: {entry}\n"
    );
    let cfg = mosaic_gateway::config::parse(&yaml).unwrap();
    let gw = mosaic_gateway::runtime::start_with(cfg, None, resolver.clone())
        .await
        .unwrap();
    // Resolved before serving: the first client already has a backend.
    let text = metrics(&gw).await;
    assert_eq!(
        metric(&text, &dns_label(a.local_addr(), &entry)),
        1.0,
        "{text}"
    );
    assert_eq!(admin_get(gw.admin_addr, "/readyz").await.0, 200);
    eventually("the check at start", || {
        !a.request_headers().is_empty() && a.connections() == 0
    })
    .await;
    let mut first = mosaic_client(gw.public_addr).await;
    submit_ok(&mut first, 1).await;
    assert_eq!(a.record_count(), 1);

    // A second address appears.
    resolver.set(Ok(vec![a.local_addr(), b.local_addr()]));
    let label_b = dns_label(b.local_addr(), &entry);
    wait_metrics(&gw, "the new address to join", |t| t.contains(&label_b)).await;
    let mut more = Vec::new();
    for i in 0..4 {
        let mut ws = mosaic_client(gw.public_addr).await;
        submit_ok(&mut ws, 10 + i).await;
        more.push(ws);
    }
    assert_eq!(b.record_count(), 2, "round-robin over both addresses");

    // The first address vanishes: it drains, its open client keeps working.
    resolver.set(Ok(vec![b.local_addr()]));
    let label_a = dns_label(a.local_addr(), &entry);
    wait_metrics(&gw, "the vanished address to leave", |t| {
        !t.contains(&label_a)
    })
    .await;
    let a_open = a.connections();
    assert!(
        a_open >= 3,
        "open connections on the drained backend stay: {a_open}"
    );
    submit_ok(&mut first, 2).await;
    assert_eq!(
        a.record_count(),
        4,
        "the drained backend still serves its client"
    );
    for i in 0..4 {
        let mut ws = mosaic_client(gw.public_addr).await;
        submit_ok(&mut ws, 20 + i).await;
        more.push(ws);
    }
    assert_eq!(
        a.record_count(),
        4,
        "no new client reached the drained backend"
    );
    assert_eq!(b.record_count(), 6);

    // A failing lookup keeps the last answer.
    let before = resolver.lookups();
    resolver.set(Err("SERVFAIL".into()));
    eventually("two failed lookups", || resolver.lookups() >= before + 2).await;
    let text = metrics(&gw).await;
    assert_eq!(metric(&text, &label_b), 1.0, "{text}");
    let mut ws = mosaic_client(gw.public_addr).await;
    submit_ok(&mut ws, 40).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_real_localhost_entry_resolves_to_a_working_backend() {
    let v4 = mosaic_backend().await;
    let port = v4.local_addr().port();
    // localhost may also resolve to ::1; serve there too when this host has IPv6.
    let v6 = MosaicBackend::spawn(
        format!("[::1]:{port}").parse().unwrap(),
        MosaicBackendOptions::default(),
    )
    .await
    .ok();
    eprintln!("IPv6 loopback backend: {}", v6.is_some());
    let entry = format!("localhost:{port}");
    let gw = gateway(&format!(
        "shutdown:\n  drain_timeout: 1s\nmosaic:\n  backends:\n    - dns: {entry}\n"
    ))
    .await;
    let text = metrics(&gw).await;
    let v4_label = dns_label(v4.local_addr(), &entry);
    let v6_label = dns_label(format!("[::1]:{port}").parse().unwrap(), &entry);
    assert!(
        text.contains(&v4_label) || text.contains(&v6_label),
        "localhost resolved to neither loopback address:\n{text}"
    );
    for l in text.lines().filter(|l| l.contains("(dns ")) {
        eprintln!("{l}");
    }
    for i in 0..4 {
        let mut ws = mosaic_client(gw.public_addr).await;
        submit_ok(&mut ws, i).await;
    }
    let served = v4.record_count() + v6.as_ref().map(|b| b.record_count()).unwrap_or(0);
    assert_eq!(served, 4);
    gw.shutdown().await;
}

/// The gateway binary, killed when the test ends however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config_text(listen: SocketAddr, admin: SocketAddr, backend: SocketAddr) -> String {
    format!(
        "listen: \"{listen}\"\nadmin:\n  listen: \"{admin}\"\nshutdown:\n  drain_timeout: 1s\n\
         mosaic:\n  health_check: {{ interval: 200ms, timeout: 200ms }}\n  backends:\n    - url: ws://{backend}\n"
    )
}

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

#[tokio::test]
async fn sighup_swaps_backends_without_touching_open_connections() {
    let a = mosaic_backend().await;
    let b = mosaic_backend().await;
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let log_path = dir.path().join("gateway.log");
    std::fs::write(&path, config_text(listen, admin, a.local_addr())).unwrap();
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && admin_get(admin, "/readyz").await.0 == 200
        {
            break;
        }
        assert!(start.elapsed() < T, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut open = mosaic_client(listen).await;
    submit_ok(&mut open, 1).await;
    assert_eq!(a.record_count(), 1);

    // Reload with a different backend list.
    std::fs::write(&path, config_text(listen, admin, b.local_addr())).unwrap();
    hup(pid);
    let label_a = format!("backend_up{{backend=\"ws://{}/\"", a.local_addr());
    let label_b = format!("backend_up{{backend=\"ws://{}/\"", b.local_addr());
    let start = Instant::now();
    loop {
        let text = admin_get(admin, "/metrics").await.1;
        if text.contains(&label_b) && !text.contains(&label_a) {
            break;
        }
        assert!(start.elapsed() < T, "reload never took effect:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open connection still reaches its (now removed) backend.
    submit_ok(&mut open, 2).await;
    assert_eq!(a.record_count(), 2);
    // New connections go to the new backend.
    for i in 0..3 {
        let mut ws = mosaic_client(listen).await;
        submit_ok(&mut ws, 10 + i).await;
    }
    assert_eq!((a.record_count(), b.record_count()), (2, 3));

    // An invalid file is logged and ignored.
    std::fs::write(&path, "mosaic:\n  backends: []\n  no_such_key: 1\n").unwrap();
    hup(pid);
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("reload ignored") {
            break;
        }
        assert!(
            start.elapsed() < T,
            "no log line for the invalid reload:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the gateway must survive a bad reload"
    );
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    let mut ws = mosaic_client(listen).await;
    submit_ok(&mut ws, 20).await;
    assert_eq!(b.record_count(), 4, "the old config stays in force");
    submit_ok(&mut open, 3).await;
    assert_eq!(a.record_count(), 3);

    drop((ws, open));
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < T, "gateway did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    eprintln!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
}

#[tokio::test]
async fn an_in_process_reload_takes_new_check_settings_and_new_dns_names_at_once() {
    let a = mosaic_backend().await;
    let b = mosaic_backend().await;
    let entry = "new.test:1";
    let resolver = TestResolver::new(&[b.local_addr()]);
    let base = "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nshutdown:\n  drain_timeout: 1s\n";
    // Ten-minute checks and DNS refreshes: only a reload can make anything happen soon.
    let first = format!(
        "{base}mosaic:\n  dns_refresh: 10m\n  health_check: {{ interval: 10m, timeout: 1s }}\n  \
         backends:\n    - url: ws://{}\n",
        a.local_addr()
    );
    let gw = mosaic_gateway::runtime::start_with(
        mosaic_gateway::config::parse(&first).unwrap(),
        None,
        resolver.clone(),
    )
    .await
    .unwrap();
    eventually("the check at start", || !a.request_headers().is_empty()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            "{base}mosaic:\n  dns_refresh: 10m\n  health_check: {{ interval: 200ms, timeout: 200ms, \
             unhealthy_threshold: 1, healthy_threshold: 1 }}\n  backends:\n    - url: ws://{}\n    - dns: {entry}\n",
            a.local_addr()
        ),
    )
    .unwrap();
    let reloaded = Instant::now();
    mosaic_gateway::shutdown::reload(&gw.app, &path);
    let label_b = dns_label(b.local_addr(), entry);
    wait_metrics(&gw, "the new DNS name to be resolved", |t| {
        t.contains(&label_b)
    })
    .await;
    eprintln!(
        "new dns entry resolved {:?} after the reload",
        reloaded.elapsed()
    );
    assert!(reloaded.elapsed() < Duration::from_secs(2));
    // The new 200ms interval is in force: a killed backend is noticed within a second.
    a.shutdown();
    let killed = Instant::now();
    let label_a = format!(
        "mosaic_gateway_backend_up{{backend=\"ws://{}/\",pool=\"default\",route=\"default\"}}",
        a.local_addr()
    );
    wait_metrics(&gw, "the killed backend to be marked down", |t| {
        t.lines().any(|l| l == format!("{label_a} 0"))
    })
    .await;
    eprintln!(
        "killed backend marked down {:?} after the kill",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_millis(1500));
    let mut ws = mosaic_client(gw.public_addr).await;
    submit_ok(&mut ws, 1).await;
    assert_eq!(b.record_count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_ipv6_dns_answer_is_a_working_backend() {
    let Ok(v6) =
        MosaicBackend::spawn("[::1]:0".parse().unwrap(), MosaicBackendOptions::default()).await
    else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let entry = "v6.test:1";
    let resolver = TestResolver::new(&[v6.local_addr()]);
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\nadmin:\n  listen: \"127.0.0.1:0\"\nshutdown:\n  drain_timeout: 1s\n\
         mosaic:\n  health_check: {{ interval: 200ms, timeout: 200ms }}\n  backends:\n    - dns: {entry}\n"
    );
    let gw = mosaic_gateway::runtime::start_with(
        mosaic_gateway::config::parse(&yaml).unwrap(),
        None,
        resolver,
    )
    .await
    .unwrap();
    let label = dns_label(v6.local_addr(), entry);
    assert!(label.contains("ws://[::1]:"), "{label}");
    // Several check rounds pass: it stays up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&metrics(&gw).await, &label), 1.0);
    let mut ws = mosaic_client(gw.public_addr).await;
    submit_ok(&mut ws, 1).await;
    assert_eq!(v6.record_count(), 1);
    gw.shutdown().await;
}
