//! Memory after a spike: 9,000 connections open on the real binary, each makes one round
//! trip and holds still, then all close at once. Closing them must not cost more than
//! holding them, and an idle gateway gives the memory back within a few seconds (issue 22,
//! item 11: before the fix, the release binary went from 31 MB with all of them open to
//! 35–50 MB after they closed, and stayed there while idle; now it is back at 12.5–13.3 MB,
//! near its start, after 3 s).

use std::time::{Duration, Instant};

use crate::common::*;
use mosaic_gateway::dev::mosaic_backend::wire;

/// The connections of the spike (fewer when the open-file limit cannot hold them).
const SPIKE: u64 = 9_000;

/// Raises this process's open-file limit to its hard limit (the gateway child inherits it)
/// and says how many spike connections fit: each costs a descriptor here (the client) and
/// one in the in-process backend, and two in the gateway.
fn spike_size() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        limit.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Room for the other scenarios running in this process meanwhile.
    SPIKE.min(soft.saturating_sub(1_500) / 2)
}

/// The lowest RSS seen over `within`, sampled every 250 ms: what the gateway settles at.
async fn settled_rss(pid: u32, within: Duration) -> u64 {
    let start = Instant::now();
    let mut low = rss_kib(pid);
    while start.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(250)).await;
        low = low.min(rss_kib(pid));
    }
    low
}

/// An upgraded connection that made one round trip (a Submission and its result), as the
/// bench's idle connections do, and now holds still.
async fn one_round_trip(gateway: std::net::SocketAddr) -> RawWs {
    let mut ws = RawWs::connect(gateway, &["Sec-WebSocket-Protocol: mosaic2024"])
        .await
        .expect("upgrade during the spike");
    ws.send_binary(&wire::submission(&[7u8; 64])).await;
    match ws.read().await {
        RawMessage::Binary(m) => assert_eq!(m[0], 0x83, "a Submission Result"),
        other => panic!("no Submission Result: {other:?}"),
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_nine_thousand_idle_connections_at_once_gives_the_memory_back() {
    let n = spike_size();
    assert!(
        n >= 1_000,
        "the open-file limit leaves room for {n} connections only"
    );
    let backend = mosaic_backend().await;
    let mut gw = spawn_child_gateway(&format!(
        "mosaic:\n  health_check: {{ interval: 60s }}\n  backends:\n    - url: ws://{}\nlimits:\n  max_connections_per_ip: 20000\n  max_connections: 20000\n",
        backend.local_addr()
    ));
    readyz_becomes(gw.admin, 200).await;
    let pid = gw.child.id();
    let start = settled_rss(pid, Duration::from_secs(1)).await;

    let mut open = Vec::with_capacity(n as usize);
    let mut next = 0;
    while next < n {
        let batch = (n - next).min(200);
        let conns =
            futures_util::future::join_all((0..batch).map(|_| one_round_trip(gw.public))).await;
        open.extend(conns);
        next += batch;
    }
    let held = settled_rss(pid, Duration::from_secs(2)).await;

    // All at once: every client socket closes in the same instant.
    drop(open);
    let text_closed = |t: &str| metric_sum(t, "mosaic_gateway_connections_active") == 0.0;
    let closing = Instant::now();
    loop {
        let (_, text) = admin_get(gw.admin, "/metrics").await;
        if text_closed(&text) {
            break;
        }
        assert!(
            closing.elapsed() < 6 * T,
            "the spike's connections never all closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak_after = rss_kib(pid);
    // A few idle seconds: nothing reaches the gateway now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = settled_rss(pid, Duration::from_secs(1)).await;
    let _ = gw.child.kill();
    let _ = gw.child.wait();

    eprintln!(
        "RSS (KiB): start {start}, {n} idle connections {held}, just after they all closed \
         {peak_after}, after 3 s idle {after}"
    );
    assert!(held > start, "the connections cost nothing?");
    // Near where it started: at most a quarter of what holding them cost stays.
    assert!(
        after <= start + (held - start) / 4,
        "after the spike the idle gateway keeps {after} KiB (start {start}, with {n} open {held})"
    );
}
