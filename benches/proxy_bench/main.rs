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
//! BENCH_IDLE_CONNS [5000], BENCH_PATHS [direct,gateway,nginx,haproxy],
//! BENCH_FIGURES [memory,throughput,latency,connections], BENCH_RATE (latency rate when
//! direct throughput is not measured), BENCH_PERF (a file: run `perf BENCH_PERF_ARGS -o
//! FILE -p PIDS` on BENCH_PERF_PATH [gateway] during its BENCH_PERF_FIGURE [throughput;
//! connections: the plain new-connection window; latency: the quarter-rate window] window;
//! BENCH_PERF_ARGS
//! [record -e cpu-clock -F 999 --call-graph dwarf,16384], or e.g. `stat -e
//! syscalls:sys_enter_sendto,...` to count system calls), BENCH_GATEWAY_WRAPPER (a command prefix such as
//! `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out`), BENCH_RESULTS (where
//! to write the table; bench/results.md), BENCH_IDLE_ROUND_TRIP [1] (0: idle connections
//! make no round trip before idling).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_mosaic-gateway");
/// Total size of one Submission message (type, u24 length, record).
const SUBMISSION_BYTES: usize = 128;
const OP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Settings

struct Settings {
    secs: f64,
    warmup: f64,
    conns: usize,
    inflight: usize,
    conn_secs: f64,
    conn_workers: usize,
    idle_conns: usize,
    paths: Vec<PathKind>,
    figures: Vec<String>,
    rate: Option<f64>,
    /// Rounds of the throughput and new-connection figures; each figure is the median.
    rounds: usize,
    perf: Option<String>,
    /// The path BENCH_PERF profiles.
    perf_path: PathKind,
    /// The figure whose window BENCH_PERF profiles: throughput, connections or latency.
    perf_figure: String,
    wrapper: Option<String>,
    results: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Settings {
        let paths = std::env::var("BENCH_PATHS")
            .unwrap_or_else(|_| "direct,gateway,nginx,haproxy".into())
            .split(',')
            .filter_map(|p| PathKind::parse(p.trim()))
            .collect();
        let figures = std::env::var("BENCH_FIGURES")
            .unwrap_or_else(|_| "memory,throughput,latency,connections".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        Settings {
            secs: env_or("BENCH_SECS", 3.0),
            warmup: env_or("BENCH_WARMUP", 1.0),
            conns: env_or("BENCH_CONNS", 64),
            inflight: env_or("BENCH_INFLIGHT", 16),
            conn_secs: env_or("BENCH_CONN_SECS", 2.0),
            conn_workers: env_or("BENCH_CONN_WORKERS", 32),
            idle_conns: env_or("BENCH_IDLE_CONNS", 5000),
            paths,
            figures,
            rate: std::env::var("BENCH_RATE")
                .ok()
                .and_then(|v| v.parse().ok()),
            rounds: env_or("BENCH_ROUNDS", 3usize).max(1),
            perf: std::env::var("BENCH_PERF").ok().filter(|s| !s.is_empty()),
            perf_path: std::env::var("BENCH_PERF_PATH")
                .ok()
                .and_then(|p| PathKind::parse(p.trim()))
                .unwrap_or(PathKind::Gateway),
            perf_figure: std::env::var("BENCH_PERF_FIGURE").unwrap_or_else(|_| "throughput".into()),
            wrapper: std::env::var("BENCH_GATEWAY_WRAPPER")
                .ok()
                .filter(|s| !s.is_empty()),
            results: std::env::var("BENCH_RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(MANIFEST_DIR).join("bench/results.md")),
        }
    }

    fn wants(&self, figure: &str) -> bool {
        self.figures.iter().any(|f| f == figure)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    Direct,
    Gateway,
    Nginx,
    Haproxy,
}

impl PathKind {
    const ALL: [PathKind; 4] = [
        PathKind::Direct,
        PathKind::Gateway,
        PathKind::Nginx,
        PathKind::Haproxy,
    ];

    fn parse(s: &str) -> Option<PathKind> {
        match s {
            "direct" => Some(PathKind::Direct),
            "gateway" | "mosaic-gateway" => Some(PathKind::Gateway),
            "nginx" => Some(PathKind::Nginx),
            "haproxy" => Some(PathKind::Haproxy),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Gateway => "mosaic-gateway",
            PathKind::Nginx => "nginx",
            PathKind::Haproxy => "HAProxy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket bits (raw frames)

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The Submission every client sends: `[0x03, len u24 LE, record]`, 128 bytes in all.
fn submission_frame() -> Vec<u8> {
    let record_len = SUBMISSION_BYTES - 4;
    let mut msg = vec![0x03, record_len as u8, 0, 0];
    msg.extend((0..record_len).map(|i| (i * 7 + 1) as u8));
    client_frame(0x2, &msg, [0x37, 0xfa, 0x21, 0x3d])
}

fn close_frame() -> Vec<u8> {
    client_frame(0x8, &1000u16.to_be_bytes(), [1, 2, 3, 4])
}

/// A parsed frame header: (fin+opcode byte, mask, payload length, header length).
fn parse_header(buf: &[u8]) -> Option<(u8, Option<[u8; 4]>, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Some((buf[0], mask, len, pos))
}

#[derive(Default)]
struct Replies {
    results: usize,
    closed: bool,
}

/// Consumes complete server frames from `buf`; counts Submission Results.
fn take_replies(buf: &mut BytesMut) -> io::Result<Replies> {
    let mut r = Replies::default();
    while let Some((b0, _mask, len, hlen)) = parse_header(buf) {
        if buf.len() < hlen + len {
            break;
        }
        match b0 & 0x0F {
            0x2 => {
                if len != 36 || buf[hlen] != 0x83 || buf[hlen + 3] != 0x01 {
                    return Err(io::Error::other("unexpected reply"));
                }
                r.results += 1;
            }
            0x8 => r.closed = true,
            _ => {}
        }
        buf.advance(hlen + len);
        if r.closed {
            break;
        }
    }
    Ok(r)
}

fn upgrade_request(host: &str) -> String {
    let key = tungstenite::handshake::client::generate_key();
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mosaic2024\r\n\r\n"
    )
}

/// Sends the upgrade and reads the 101; returns bytes that followed the response head.
async fn ws_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
) -> io::Result<BytesMut> {
    s.write_all(upgrade_request(host).as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("EOF during upgrade"));
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = &buf[..end];
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
            if !lower.contains("sec-websocket-protocol: mosaic2024") {
                return Err(io::Error::other("no mosaic2024 in the 101"));
            }
            buf.advance(end + 4);
            return Ok(buf);
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn connect_ws(addr: SocketAddr) -> io::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let left = ws_upgrade(&mut s, &addr.to_string()).await?;
    Ok((s, left))
}

/// Sends one Submission and waits for its result.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    frame: &[u8],
) -> io::Result<()> {
    s.write_all(frame).await?;
    loop {
        let r = take_replies(buf)?;
        if r.results > 0 {
            return Ok(());
        }
        if r.closed {
            return Err(io::Error::other("closed by peer"));
        }
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::other("EOF"));
        }
    }
}

/// The close handshake from the client side: send close, read until the peer's close or EOF.
async fn ws_close<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> io::Result<()> {
    s.write_all(&close_frame()).await?;
    loop {
        if take_replies(buf)?.closed {
            break;
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            break;
        }
    }
    let _ = s.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The backend: answers every Submission with a Submission Result

async fn backend_serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    if let Ok(s) = acc.accept(tcp).await {
                        let _ = backend_conn(s).await;
                    }
                }
                None => {
                    let _ = backend_conn(tcp).await;
                }
            }
        });
    }
}

async fn backend_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    // The upgrade.
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mosaic2024\r\n\r\n"
    );
    s.write_all(resp.as_bytes()).await?;
    buf.advance(head_end + 4);
    // Frames.
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let mut closing = false;
        while let Some((b0, mask, len, hlen)) = parse_header(&buf) {
            if buf.len() < hlen + len {
                break;
            }
            let payload = &buf[hlen..hlen + len];
            let m = mask.unwrap_or([0; 4]);
            let byte = |i: usize| payload[i] ^ m[i % 4];
            match b0 & 0x0F {
                0x2 if len >= 4 && byte(0) == 0x03 => {
                    // Submission Result: [0x83, 0, 0, 0x01, first 32 bytes of the record].
                    out.extend_from_slice(&[0x82, 36, 0x83, 0, 0, 0x01]);
                    for i in 4..36 {
                        out.push(if i < len { byte(i) } else { 0 });
                    }
                }
                0x8 => {
                    out.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
                    closing = true;
                }
                0x9 => {
                    out.push(0x8A);
                    out.push(len as u8);
                    out.extend((0..len).map(byte));
                }
                _ => {}
            }
            buf.advance(hlen + len);
            if closing {
                break;
            }
        }
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if closing {
            let _ = s.shutdown().await;
            return Ok(());
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(16 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load: throughput

async fn throughput_conn(
    addr: SocketAddr,
    frame: Arc<Vec<u8>>,
    inflight: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    ready: Arc<AtomicU64>,
) -> io::Result<()> {
    let (mut s, mut buf) = connect_ws(addr).await?;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(frame.len() * inflight);
    let mut outstanding = 0usize;
    loop {
        if !stop.load(Ordering::Relaxed) {
            while outstanding < inflight {
                out.extend_from_slice(&frame);
                outstanding += 1;
            }
            if !out.is_empty() {
                s.write_all(&out).await?;
                out.clear();
            }
        }
        if outstanding == 0 {
            break;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("EOF"));
        }
        let r = take_replies(&mut buf)?;
        outstanding -= r.results;
        done.fetch_add(r.results as u64, Ordering::Relaxed);
        if r.closed {
            return Err(io::Error::other("closed by peer"));
        }
    }
    ws_close(&mut s, &mut buf).await
}

/// Waits (up to 10 s) until `want` connections said they are ready, or every task ended.
fn wait_connected<T>(ready: &AtomicU64, want: usize, handles: &[tokio::task::JoinHandle<T>]) {
    let t = Instant::now();
    while (ready.load(Ordering::Relaxed) as usize) < want
        && t.elapsed() < Duration::from_secs(10)
        && !handles.iter().all(|h| h.is_finished())
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct ThroughputResult {
    msgs_per_sec: f64,
    errors: usize,
    /// CPU time the proxy's processes used per message in the window (ns), when known.
    proxy_ns_per_msg: Option<f64>,
}

/// CPU time (ns) used so far by every thread of `pids` (from /proc/PID/task/TID/schedstat).
fn cpu_ns(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

fn measure_throughput(
    rt: &Runtime,
    addr: SocketAddr,
    set: &Settings,
    proxy_pids: &[u32],
    during: impl FnOnce() -> Option<Box<dyn FnOnce()>>,
) -> ThroughputResult {
    let frame = Arc::new(submission_frame());
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..set.conns)
        .map(|_| {
            rt.spawn(throughput_conn(
                addr,
                frame.clone(),
                set.inflight,
                stop.clone(),
                done.clone(),
                ready.clone(),
            ))
        })
        .collect();
    wait_connected(&ready, set.conns, &handles);
    std::thread::sleep(Duration::from_secs_f64(set.warmup));
    let finish = during();
    let cpu0 = cpu_ns(proxy_pids);
    let c0 = done.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(set.secs));
    let c1 = done.load(Ordering::Relaxed);
    let cpu1 = cpu_ns(proxy_pids);
    let elapsed = t0.elapsed().as_secs_f64();
    if let Some(f) = finish {
        f();
    }
    stop.store(true, Ordering::Relaxed);
    let errors = join_all(rt, handles);
    ThroughputResult {
        msgs_per_sec: (c1 - c0) as f64 / elapsed,
        errors,
        proxy_ns_per_msg: (!proxy_pids.is_empty() && c1 > c0)
            .then(|| cpu1.saturating_sub(cpu0) as f64 / (c1 - c0) as f64),
    }
}

/// Starts `perf BENCH_PERF_ARGS -o BENCH_PERF -p PIDS` when BENCH_PERF is set; the returned
/// closure stops it.
fn start_perf(set: &Settings, pids: &[u32]) -> Option<Box<dyn FnOnce()>> {
    let file = set.perf.clone()?;
    if pids.is_empty() {
        return None;
    }
    let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let args = std::env::var("BENCH_PERF_ARGS")
        .unwrap_or_else(|_| "record -e cpu-clock -F 999 --call-graph dwarf,16384".into());
    let child = Command::new("perf")
        .args(args.split_whitespace())
        .arg("-o")
        .arg(&file)
        .arg("-p")
        .arg(pids.join(","))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Box::new(move || {
        let mut child = child;
        // SAFETY: signal our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let _ = child.wait();
    }))
}

/// Joins connection tasks (bounded in time); returns how many failed.
fn join_all(rt: &Runtime, handles: Vec<tokio::task::JoinHandle<io::Result<()>>>) -> usize {
    rt.block_on(async {
        let mut errors = 0;
        let mut first: Option<String> = None;
        for h in handles {
            let abort = h.abort_handle();
            match tokio::time::timeout(OP_TIMEOUT, h).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    errors += 1;
                    first.get_or_insert(e.to_string());
                }
                _ => {
                    abort.abort();
                    errors += 1;
                    first.get_or_insert("timed out".into());
                }
            }
        }
        if let Some(e) = first {
            eprintln!("    {errors} connection(s) failed, first: {e}");
        }
        errors
    })
}

// ---------------------------------------------------------------------------------------
// Load: latency at a fixed rate

struct Paced {
    due: AtomicU32,
    notify: Notify,
}

#[allow(clippy::too_many_arguments)]
async fn latency_conn(
    addr: SocketAddr,
    frame: Arc<Vec<u8>>,
    paced: Arc<Paced>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
    window: Arc<std::sync::OnceLock<(Instant, Instant)>>,
) -> io::Result<Vec<u32>> {
    let (mut s, mut buf) = connect_ws(addr).await?;
    ready.fetch_add(1, Ordering::Relaxed);
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(256);
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
    let mut out = Vec::with_capacity(frame.len() * 16);
    loop {
        if stop.load(Ordering::Relaxed) && sent.is_empty() {
            break;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            _ = paced.notify.notified(), if !stop.load(Ordering::Relaxed) => {
                let n = paced.due.swap(0, Ordering::Relaxed);
                for _ in 0..n {
                    out.extend_from_slice(&frame);
                }
                if n > 0 {
                    s.write_all(&out).await?;
                    out.clear();
                    let now = Instant::now();
                    for _ in 0..n {
                        sent.push_back(now);
                    }
                }
            }
            r = s.read_buf(&mut buf) => {
                if r? == 0 {
                    return Err(io::Error::other("EOF"));
                }
                let got = take_replies(&mut buf)?;
                if got.results > 0 {
                    let now = Instant::now();
                    let w = window.get().copied();
                    for _ in 0..got.results {
                        let Some(t) = sent.pop_front() else {
                            return Err(io::Error::other("reply without request"));
                        };
                        if let Some((from, to)) = w {
                            if t >= from && t < to {
                                lat.push((now - t).as_nanos().min(u32::MAX as u128) as u32);
                            }
                        }
                    }
                }
                if got.closed {
                    return Err(io::Error::other("closed by peer"));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    ws_close(&mut s, &mut buf).await?;
    Ok(lat)
}

struct LatencyResult {
    p50_us: f64,
    p99_us: f64,
    achieved: f64,
    errors: usize,
}

fn measure_latency(rt: &Runtime, addr: SocketAddr, rate: f64, set: &Settings) -> LatencyResult {
    let frame = Arc::new(submission_frame());
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let window = Arc::new(std::sync::OnceLock::new());
    let paced: Vec<Arc<Paced>> = (0..set.conns)
        .map(|_| {
            Arc::new(Paced {
                due: AtomicU32::new(0),
                notify: Notify::new(),
            })
        })
        .collect();
    let handles: Vec<_> = paced
        .iter()
        .map(|p| {
            rt.spawn(latency_conn(
                addr,
                frame.clone(),
                p.clone(),
                stop.clone(),
                ready.clone(),
                window.clone(),
            ))
        })
        .collect();
    wait_connected(&ready, set.conns, &handles);
    // The pacer: every ~100 µs, hand out the messages that are due, round-robin.
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(set.warmup);
    let to = from + Duration::from_secs_f64(set.secs);
    let _ = window.set((from, to));
    let mut sent: u64 = 0;
    let mut next = 0usize;
    let mut touched = vec![false; paced.len()];
    loop {
        std::thread::sleep(Duration::from_micros(100));
        let now = Instant::now();
        if now >= to {
            break;
        }
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while sent < due {
            paced[next].due.fetch_add(1, Ordering::Relaxed);
            touched[next] = true;
            next = (next + 1) % paced.len();
            sent += 1;
        }
        for (i, t) in touched.iter_mut().enumerate() {
            if *t {
                paced[i].notify.notify_one();
                *t = false;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    rt.block_on(async {
        for h in handles {
            let abort = h.abort_handle();
            match tokio::time::timeout(OP_TIMEOUT, h).await {
                Ok(Ok(Ok(l))) => all.extend(l),
                Ok(Ok(Err(e))) => {
                    if errors == 0 {
                        eprintln!("    latency connection failed: {e}");
                    }
                    errors += 1;
                }
                _ => {
                    abort.abort();
                    errors += 1;
                }
            }
        }
    });
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    LatencyResult {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        achieved: all.len() as f64 / set.secs,
        errors,
    }
}

// ---------------------------------------------------------------------------------------
// Load: new connections per second

async fn one_connection(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    frame: &[u8],
) -> io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let host = addr.to_string();
    match tls {
        None => session(tcp, &host, frame).await,
        Some(c) => {
            let name = ServerName::try_from("localhost").expect("static name");
            let s = c.connect(name, tcp).await?;
            session(s, &host, frame).await
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    frame: &[u8],
) -> io::Result<()> {
    let mut buf = ws_upgrade(&mut s, host).await?;
    round_trip(&mut s, &mut buf, frame).await?;
    ws_close(&mut s, &mut buf).await
}

struct ConnRateResult {
    per_sec: f64,
    errors: u64,
    /// CPU time the proxy's processes used per connection in the window (ns), when known.
    proxy_ns_per_conn: Option<f64>,
}

fn measure_conn_rate(
    rt: &Runtime,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    set: &Settings,
    proxy_pids: &[u32],
) -> ConnRateResult {
    let frame = Arc::new(submission_frame());
    let tls = Arc::new(tls);
    let warm = Duration::from_millis(500);
    let measure = Duration::from_secs_f64(set.conn_secs);
    let start = Instant::now();
    let from = start + warm;
    let to = from + measure;
    let ok = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let first_err = Arc::new(std::sync::Mutex::new(None::<String>));
    let handles: Vec<_> = (0..set.conn_workers)
        .map(|_| {
            let (frame, tls, ok, errs, first_err) = (
                frame.clone(),
                tls.clone(),
                ok.clone(),
                errs.clone(),
                first_err.clone(),
            );
            rt.spawn(async move {
                loop {
                    let now = Instant::now();
                    if now >= to {
                        break;
                    }
                    let r = tokio::time::timeout(
                        OP_TIMEOUT,
                        one_connection(addr, tls.as_ref().as_ref(), &frame),
                    )
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("timed out")));
                    let end = Instant::now();
                    let counted = now >= from && end < to;
                    match r {
                        Ok(()) if counted => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            errs.fetch_add(1, Ordering::Relaxed);
                            first_err.lock().unwrap().get_or_insert(e.to_string());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    // The proxy's CPU time over the counted window, sampled beside the load.
    let cpu = {
        let pids = proxy_pids.to_vec();
        std::thread::spawn(move || {
            std::thread::sleep(from.saturating_duration_since(Instant::now()));
            let c0 = cpu_ns(&pids);
            std::thread::sleep(to.saturating_duration_since(Instant::now()));
            cpu_ns(&pids).saturating_sub(c0)
        })
    };
    rt.block_on(async {
        for h in handles {
            let _ = h.await;
        }
    });
    let cpu = cpu.join().unwrap_or(0);
    if let Some(e) = first_err.lock().unwrap().take() {
        eprintln!(
            "    {} connection(s) failed, first: {e}",
            errs.load(Ordering::Relaxed)
        );
    }
    // Connections that started in the window and ended in it, over the window: a slight
    // undercount at the edges, the same for every path.
    let done = ok.load(Ordering::Relaxed);
    ConnRateResult {
        per_sec: done as f64 / measure.as_secs_f64(),
        errors: errs.load(Ordering::Relaxed),
        proxy_ns_per_conn: (!proxy_pids.is_empty() && done > 0).then(|| cpu as f64 / done as f64),
    }
}

// ---------------------------------------------------------------------------------------
// Memory per idle connection

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `pid` and its descendants (nginx workers).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    if let Some(pp) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                        parents.push((p, pp));
                    }
                }
            }
        }
    }
    while i < all.len() {
        let cur = all[i];
        for &(p, pp) in &parents {
            if pp == cur && !all.contains(&p) {
                all.push(p);
            }
        }
        i += 1;
    }
    all
}

fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid).into_iter().filter_map(rss_kib).sum()
}

struct MemoryResult {
    bytes_per_conn: f64,
    before_kib: u64,
    after_kib: u64,
    opened: usize,
}

fn measure_idle_memory(rt: &Runtime, addr: SocketAddr, pid: u32, set: &Settings) -> MemoryResult {
    let frame = Arc::new(submission_frame());
    // Warm up: first-use allocations (TLS-free here, but runtime, pools, buffers).
    rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..64 {
            let frame = frame.clone();
            hs.push(tokio::spawn(async move {
                let (mut s, mut buf) = connect_ws(addr).await?;
                round_trip(&mut s, &mut buf, &frame).await?;
                ws_close(&mut s, &mut buf).await
            }));
        }
        for h in hs {
            let _ = tokio::time::timeout(OP_TIMEOUT, h).await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = tree_rss_kib(pid);
    let sem = Arc::new(Semaphore::new(64));
    // Each idle connection makes one round trip first (BENCH_IDLE_ROUND_TRIP=0: none), so
    // buffers a proxy keeps after traffic count too.
    let round_trip_first = env_or("BENCH_IDLE_ROUND_TRIP", 1) != 0;
    let conns: Vec<TcpStream> = rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..set.idle_conns {
            let (frame, sem) = (frame.clone(), sem.clone());
            hs.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                let r = tokio::time::timeout(OP_TIMEOUT, async {
                    let (mut s, mut buf) = connect_ws(addr).await?;
                    if round_trip_first {
                        round_trip(&mut s, &mut buf, &frame).await?;
                    }
                    io::Result::Ok(s)
                })
                .await;
                match r {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) => {
                        eprintln!("    idle connection failed: {e}");
                        None
                    }
                    Err(_) => None,
                }
            }));
        }
        let mut out = Vec::new();
        for h in hs {
            if let Ok(Some(s)) = h.await {
                out.push(s);
            }
        }
        out
    });
    std::thread::sleep(Duration::from_secs_f64(env_or("BENCH_IDLE_WAIT", 1.5)));
    let after = tree_rss_kib(pid);
    let opened = conns.len();
    rt.block_on(async move { drop(conns) });
    std::thread::sleep(Duration::from_millis(500));
    MemoryResult {
        bytes_per_conn: (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64,
        before_kib: before,
        after_kib: after,
        opened,
    }
}

// ---------------------------------------------------------------------------------------
// TLS material and client config

#[derive(Debug)]
struct AcceptAnyEd25519(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyEd25519 {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let p = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyEd25519(p)))
        .with_no_client_auth();
    // A full handshake every time: the figure is the cost of a new TLS connection.
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn tls_acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert.pem")
        .collect::<Result<_, _>>()
        .expect("cert.pem");
    let key = PrivateKeyDer::from_pem_file(key).expect("key.pem");
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Proxies as child processes

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("bench").join(template))
        .unwrap_or_else(|e| panic!("bench/{template}: {e}"));
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

struct Proxy {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("    {} did not stop on SIGTERM; killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn spawn_proxy(
    name: &str,
    mut cmd: Command,
    addr: SocketAddr,
    dir: &Path,
    rt: &Runtime,
    tls: bool,
) -> Proxy {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().expect("log file"))
        .stderr(f);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    let mut p = Proxy {
        name: name.to_string(),
        child,
        addr,
        log,
    };
    // Ready when a full upgrade and round trip goes through.
    let frame = submission_frame();
    let connector = tls.then(tls_connector);
    let t = Instant::now();
    loop {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "{name} exited at start ({st}):\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        let ok = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                one_connection(addr, connector.as_ref(), &frame),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
        });
        if ok {
            return p;
        }
        if t.elapsed() > Duration::from_secs(30) {
            p.terminate();
            panic!(
                "{name} not ready on {addr}:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Env {
    dir: PathBuf,
    backend_port: u16,
    cert: PathBuf,
    key: PathBuf,
    pem: PathBuf,
    wrapper: Option<String>,
}

/// Starts one path's proxy: `tls` selects its TLS listener. Returns the proxy (None for
/// direct) and the address clients use.
struct Started {
    proxy: Option<Proxy>,
    plain: SocketAddr,
    tls: SocketAddr,
    extra: Option<Proxy>,
}

fn start_gateway(env: &Env, tls: bool, rt: &Runtime, wrap: bool) -> Proxy {
    let port = free_port();
    let tls_block = if tls {
        format!(
            "tls:\n  key_file: {}\n  certificate: self-signed\n  client_auth: none\n  min_version: \"1.3\"",
            env.key.display()
        )
    } else {
        String::new()
    };
    let name = if tls { "gateway-tls" } else { "gateway" };
    let cfg = fill(
        "gateway.yaml.template",
        &[
            ("PORT", port.to_string()),
            ("ADMIN_PORT", free_port().to_string()),
            ("BACKEND_PORT", env.backend_port.to_string()),
            ("TLS", tls_block),
        ],
    );
    let path = env.dir.join(format!("{name}.yaml"));
    std::fs::write(&path, cfg).expect("gateway config");
    let mut cmd = match (&env.wrapper, wrap) {
        (Some(w), true) => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().expect("wrapper command"));
            c.args(parts).arg(GATEWAY_BIN);
            c
        }
        _ => Command::new(GATEWAY_BIN),
    };
    cmd.arg("run").arg("--config").arg(&path);
    spawn_proxy(
        name,
        cmd,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &env.dir,
        rt,
        tls,
    )
}

impl Started {
    /// Every process of the path's (plain) proxy; empty for direct.
    fn pids(&self) -> Vec<u32> {
        self.proxy
            .as_ref()
            .map(|x| process_tree(x.pid()))
            .unwrap_or_default()
    }
}

fn start_path(
    kind: PathKind,
    env: &Env,
    rt: &Runtime,
    backend: SocketAddr,
    backend_tls: SocketAddr,
) -> Started {
    match kind {
        PathKind::Direct => Started {
            proxy: None,
            plain: backend,
            tls: backend_tls,
            extra: None,
        },
        PathKind::Gateway => {
            let g = start_gateway(env, false, rt, true);
            Started {
                plain: g.addr,
                tls: g.addr,
                proxy: Some(g),
                extra: None,
            }
        }
        PathKind::Nginx => {
            let (port, tls_port) = (free_port(), free_port());
            let cfg = fill(
                "nginx.conf.template",
                &[
                    ("DIR", env.dir.display().to_string()),
                    ("PORT", port.to_string()),
                    ("TLS_PORT", tls_port.to_string()),
                    ("BACKEND_PORT", env.backend_port.to_string()),
                    ("CERT", env.cert.display().to_string()),
                    ("KEY", env.key.display().to_string()),
                ],
            );
            let path = env.dir.join("nginx.conf");
            std::fs::write(&path, cfg).expect("nginx config");
            let mut cmd = Command::new(which("nginx"));
            cmd.arg("-p")
                .arg(&env.dir)
                .arg("-e")
                .arg(env.dir.join("nginx-error.log"))
                .arg("-c")
                .arg(&path);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let p = spawn_proxy("nginx", cmd, addr, &env.dir, rt, false);
            Started {
                proxy: Some(p),
                plain: addr,
                tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
                extra: None,
            }
        }
        PathKind::Haproxy => {
            let (port, tls_port) = (free_port(), free_port());
            let cfg = fill(
                "haproxy.cfg.template",
                &[
                    ("PORT", port.to_string()),
                    ("TLS_PORT", tls_port.to_string()),
                    ("BACKEND_PORT", env.backend_port.to_string()),
                    ("PEM", env.pem.display().to_string()),
                ],
            );
            let path = env.dir.join("haproxy.cfg");
            std::fs::write(&path, cfg).expect("haproxy config");
            let mut cmd = Command::new(which("haproxy"));
            cmd.arg("-db").arg("-f").arg(&path);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let p = spawn_proxy("haproxy", cmd, addr, &env.dir, rt, false);
            Started {
                proxy: Some(p),
                plain: addr,
                tls: SocketAddr::from(([127, 0, 0, 1], tls_port)),
                extra: None,
            }
        }
    }
}

fn which(name: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn have(name: &str) -> bool {
    which(name).is_absolute()
}

// ---------------------------------------------------------------------------------------
// Output

#[derive(Default, Clone, Copy)]
struct Figures {
    throughput: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    conns_plain: Option<f64>,
    conns_tls: Option<f64>,
    mem_per_conn: Option<f64>,
    cpu_per_msg: Option<f64>,
    cpu_per_conn_plain: Option<f64>,
    cpu_per_conn_tls: Option<f64>,
    p50_quarter: Option<f64>,
    p99_quarter: Option<f64>,
}

/// One figure's samples per path, indexed by [`PathKind::index`].
type Samples = [Vec<f64>; 4];

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

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
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

/// Share of all CPUs busy (not idle or iowait) over `window`, from /proc/stat.
fn cpu_busy_fraction(window: Duration) -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Some((total, idle))
    }
    let Some((t0, i0)) = sample() else {
        return 0.0;
    };
    std::thread::sleep(window);
    let Some((t1, i1)) = sample() else {
        return 0.0;
    };
    let dt = (t1 - t0).max(1) as f64;
    1.0 - (i1 - i0) as f64 / dt
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn render(figs: &[Figures; 4], set: &Settings, rate: f64, notes: &[String]) -> String {
    let [d, g, n, h] = figs;
    let mut t = String::new();
    let row = |t: &mut String, name: &str, f: &dyn Fn(&Figures) -> Option<f64>, dec: usize| {
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_num(f(d), dec),
            fmt_num(f(g), dec),
            fmt_num(f(n), dec),
            fmt_num(f(h), dec),
            ratio(f(g), f(n)),
            ratio(f(g), f(h)),
            ratio(f(g), f(d)),
        );
    };
    let _ = writeln!(
        t,
        "| figure | direct | mosaic-gateway | nginx | HAProxy | gw/nginx | gw/HAProxy | gw/direct |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
    row(&mut t, "throughput, messages/s", &|f| f.throughput, 0);
    row(
        &mut t,
        "proxy CPU time per message (throughput run), ns",
        &|f| f.cpu_per_msg,
        0,
    );
    row(
        &mut t,
        &format!("latency p50 at {} msg/s, µs", fmt_num(Some(rate), 0)),
        &|f| f.p50,
        0,
    );
    row(&mut t, "latency p99, µs", &|f| f.p99, 0);
    // A proxy's p99 minus direct's, with its ratios (no direct column).
    let added_row = |t: &mut String, name: &str, f: &dyn Fn(&Figures) -> Option<f64>| {
        let added = |x: &Figures| Some(f(x)? - f(d)?);
        let _ = writeln!(
            t,
            "| {name} | – | {} | {} | {} | {} | {} | – |",
            fmt_num(added(g), 0),
            fmt_num(added(n), 0),
            fmt_num(added(h), 0),
            ratio(added(g), added(n)),
            ratio(added(g), added(h)),
        );
    };
    added_row(&mut t, "added p99 (path − direct), µs", &|f| f.p99);
    row(
        &mut t,
        &format!(
            "latency p50 at {} msg/s (a quarter of direct), µs",
            fmt_num(Some(rate / 2.0), 0)
        ),
        &|f| f.p50_quarter,
        0,
    );
    row(
        &mut t,
        "latency p99 at a quarter of direct, µs",
        &|f| f.p99_quarter,
        0,
    );
    added_row(&mut t, "added p99 at a quarter of direct, µs", &|f| {
        f.p99_quarter
    });
    row(&mut t, "new connections/s, plain", &|f| f.conns_plain, 0);
    row(&mut t, "new connections/s, TLS 1.3", &|f| f.conns_tls, 0);
    row(
        &mut t,
        "proxy CPU time per new connection, plain, µs",
        &|f| f.cpu_per_conn_plain.map(|v| v / 1000.0),
        1,
    );
    row(
        &mut t,
        "proxy CPU time per new connection, TLS 1.3, µs",
        &|f| f.cpu_per_conn_tls.map(|v| v / 1000.0),
        1,
    );
    row(
        &mut t,
        &format!("RSS per idle connection ({} open), bytes", set.idle_conns),
        &|f| f.mem_per_conn,
        0,
    );
    // Targets.
    let better = |a: Option<f64>, b: Option<f64>, higher: bool| match (a, b) {
        (Some(a), Some(b)) => Some(if higher { a.max(b) } else { a.min(b) }),
        (x, None) | (None, x) => x,
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    };
    let mut tg = String::new();
    let best_tp = better(n.throughput, h.throughput, true);
    let _ = writeln!(tg, "\nTargets:\n");
    let tp1 = g
        .throughput
        .zip(best_tp)
        .map(|(g, b)| (g / b, g >= 1.25 * b));
    let _ = writeln!(
        tg,
        "- throughput ≥ 1.25 × better of nginx/HAProxy: {} ({}×)",
        verdict(tp1.map(|x| x.1)),
        tp1.map(|x| format!("{:.2}", x.0)).unwrap_or("–".into())
    );
    let tp2 = g
        .throughput
        .zip(d.throughput)
        .map(|(g, d)| (g / d, g >= 0.65 * d));
    let _ = writeln!(
        tg,
        "- throughput ≥ 0.65 × direct: {} ({}×)",
        verdict(tp2.map(|x| x.1)),
        tp2.map(|x| format!("{:.2}", x.0)).unwrap_or("–".into())
    );
    let added = |x: &Figures| Some(x.p99? - d.p99?);
    let best_added = better(added(n), added(h), false);
    let lat = added(g).zip(best_added).map(|(g, b)| (g, b, g <= 0.8 * b));
    let _ = writeln!(
        tg,
        "- added p99 ≤ 0.8 × better proxy's added p99: {} ({} µs vs {} µs)",
        verdict(lat.map(|x| x.2)),
        lat.map(|x| format!("{:.0}", x.0)).unwrap_or("–".into()),
        lat.map(|x| format!("{:.0}", 0.8 * x.1))
            .unwrap_or("–".into())
    );
    let mem = g.mem_per_conn.map(|m| (m, m <= 4096.0));
    let _ = writeln!(
        tg,
        "- ≤ 4 KiB per idle proxied connection: {} ({} bytes)",
        verdict(mem.map(|x| x.1)),
        mem.map(|x| format!("{:.0}", x.0)).unwrap_or("–".into())
    );
    for (label, gv, bv) in [
        (
            "plain",
            g.conns_plain,
            better(n.conns_plain, h.conns_plain, true),
        ),
        ("TLS", g.conns_tls, better(n.conns_tls, h.conns_tls, true)),
    ] {
        let c = gv.zip(bv).map(|(g, b)| (g / b, g >= b));
        let _ = writeln!(
            tg,
            "- new connections/s {label} ≥ better proxy: {} ({}×)",
            verdict(c.map(|x| x.1)),
            c.map(|x| format!("{:.2}", x.0)).unwrap_or("–".into())
        );
    }
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
    out.push_str(&t);
    out.push_str(&tg);
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

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

fn main() {
    let set = Settings::from_env();
    raise_nofile();
    let started_at = Instant::now();
    if !(have("nginx") && have("haproxy") && have("openssl")) {
        let script = Path::new(MANIFEST_DIR).join("bench/install-proxies.sh");
        let st = Command::new("bash").arg(script).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("bench: could not install nginx/haproxy; those paths are skipped");
        }
    }
    let client_rt = single_thread_runtime("bench-client");
    let backend_rt = single_thread_runtime("bench-backend");

    let tmp = tempfile::Builder::new()
        .prefix("proxy-bench-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().to_path_buf();
    for d in [
        "nginx-body",
        "nginx-proxy",
        "nginx-fastcgi",
        "nginx-uwsgi",
        "nginx-scgi",
        "logs",
    ] {
        let _ = std::fs::create_dir_all(dir.join(d));
    }
    // One ed25519 key and one self-signed certificate for every TLS listener.
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let pem = dir.join("haproxy.pem");
    run_ok(
        Command::new(GATEWAY_BIN)
            .arg("keygen")
            .arg("--out")
            .arg(&key),
        "mosaic-gateway keygen",
    );
    run_ok(
        Command::new(which("openssl"))
            .args([
                "req",
                "-new",
                "-x509",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-key")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl req -x509",
    );
    let combined = format!(
        "{}{}",
        std::fs::read_to_string(&cert).expect("cert"),
        std::fs::read_to_string(&key).expect("key")
    );
    std::fs::write(&pem, combined).expect("haproxy pem");

    // The backend: plain and TLS listeners on one single-threaded runtime.
    let (backend, backend_tls) = backend_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let lt = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend tls");
        (l, lt)
    });
    let backend_addr = backend.local_addr().expect("addr");
    let backend_tls_addr = backend_tls.local_addr().expect("addr");
    backend_rt.spawn(backend_serve(backend, None));
    backend_rt.spawn(backend_serve(backend_tls, Some(tls_acceptor(&cert, &key))));

    let env = Env {
        dir: dir.clone(),
        backend_port: backend_addr.port(),
        cert: cert.clone(),
        key: key.clone(),
        pem,
        wrapper: set.wrapper.clone(),
    };
    let mut notes: Vec<String> = Vec::new();
    let paths: Vec<PathKind> = PathKind::ALL
        .into_iter()
        .filter(|p| set.paths.contains(p))
        .filter(|p| match p {
            PathKind::Nginx => have("nginx"),
            PathKind::Haproxy => have("haproxy"),
            _ => true,
        })
        .collect();
    let mut figs = [Figures::default(); 4];
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

    // 4. Memory first, on fresh proxies.
    if set.wants("memory") {
        println!(
            "\n[memory per idle connection, {} connections]",
            set.idle_conns
        );
        for &p in paths.iter().filter(|p| **p != PathKind::Direct) {
            let s = start_path(p, &env, &client_rt, backend_addr, backend_tls_addr);
            let proxy = s.proxy.as_ref().expect("a proxy");
            let m = measure_idle_memory(&client_rt, s.plain, proxy.pid(), &set);
            println!(
                "  {:<15} {:>8.0} bytes/conn  (RSS {} KiB → {} KiB, {} connections)",
                p.label(),
                m.bytes_per_conn,
                m.before_kib,
                m.after_kib,
                m.opened
            );
            if m.opened < set.idle_conns {
                notes.push(format!(
                    "{}: only {} of {} idle connections opened",
                    p.label(),
                    m.opened,
                    set.idle_conns
                ));
            }
            figs[p.index()].mem_per_conn = Some(m.bytes_per_conn);
            if let Some(x) = s.proxy {
                x.stop();
            }
        }
    }

    // Start every path for the load figures.
    let mut running: Vec<(PathKind, Started)> = Vec::new();
    for &p in &paths {
        let mut s = start_path(p, &env, &client_rt, backend_addr, backend_tls_addr);
        if p == PathKind::Gateway && set.wants("connections") {
            let t = start_gateway(&env, true, &client_rt, false);
            s.tls = t.addr;
            s.extra = Some(t);
        }
        running.push((p, s));
    }

    if set.wants("throughput") {
        println!(
            "\n[throughput: {} connections × {} in flight, {} round(s) of {} s after {} s warm-up]",
            set.conns, set.inflight, set.rounds, set.secs, set.warmup
        );
        let (mut rates, mut cpus) = (Samples::default(), Samples::default());
        for (round, (p, s)) in interleaved(&running, set.rounds) {
            let proxy_pids = s.pids();
            let profile = round == 0 && set.perf_figure == "throughput" && *p == set.perf_path;
            let r = measure_throughput(&client_rt, s.plain, &set, &proxy_pids, || {
                profile.then(|| start_perf(&set, &proxy_pids)).flatten()
            });
            println!(
                "  {:<15} {:>10.0} msg/s{}   proxy CPU {} ns/msg   load {}",
                p.label(),
                r.msgs_per_sec,
                if r.errors > 0 {
                    format!(" ({} errors)", r.errors)
                } else {
                    String::new()
                },
                fmt_num(r.proxy_ns_per_msg, 0),
                loadavg()
            );
            rates[p.index()].push(r.msgs_per_sec);
            cpus[p.index()].extend(r.proxy_ns_per_msg);
        }
        for (p, _) in &running {
            figs[p.index()].throughput = median(&rates[p.index()]);
            figs[p.index()].cpu_per_msg = median(&cpus[p.index()]);
        }
    }

    let rate = set
        .rate
        .or(figs[0].throughput.map(|t| (t / 2.0).round()))
        .unwrap_or(50_000.0);
    if set.wants("latency") {
        println!(
            "\n[latency: {} msg/s total over {} connections, {} s after {} s warm-up]",
            rate, set.conns, set.secs, set.warmup
        );
        for (p, s) in &running {
            let r = measure_latency(&client_rt, s.plain, rate, &set);
            println!(
                "  {:<15} p50 {:>7.0} µs   p99 {:>7.0} µs   ({:.0} replies/s measured{})",
                p.label(),
                r.p50_us,
                r.p99_us,
                r.achieved,
                if r.errors > 0 {
                    format!(", {} errors", r.errors)
                } else {
                    String::new()
                }
            );
            if r.achieved < 0.95 * rate {
                notes.push(format!(
                    "{}: latency run answered only {:.0} of {:.0} msg/s",
                    p.label(),
                    r.achieved,
                    rate
                ));
            }
            figs[p.index()].p50 = Some(r.p50_us);
            figs[p.index()].p99 = Some(r.p99_us);
            // Half the direct maximum is close to where every proxy saturates on a small
            // machine, so the added latency there is mostly queueing. A quarter of it shows
            // what a proxy adds when it keeps up.
            let profile = (set.perf_figure == "latency" && *p == set.perf_path)
                .then(|| start_perf(&set, &s.pids()))
                .flatten();
            let q = measure_latency(&client_rt, s.plain, rate / 2.0, &set);
            if let Some(stop) = profile {
                stop();
            }
            println!(
                "  {:<15} at {:.0} msg/s: p50 {:>7.0} µs   p99 {:>7.0} µs",
                "",
                rate / 2.0,
                q.p50_us,
                q.p99_us
            );
            figs[p.index()].p50_quarter = Some(q.p50_us);
            figs[p.index()].p99_quarter = Some(q.p99_us);
        }
    }

    if set.wants("connections") {
        let connector = tls_connector();
        println!(
            "\n[new connections/s: {} workers, {} round(s) of {} s; connect + upgrade + 1 round trip + close]",
            set.conn_workers, set.rounds, set.conn_secs
        );
        let (mut plain_rates, mut tls_rates) = (Samples::default(), Samples::default());
        let (mut plain_cpu, mut tls_cpu) = (Samples::default(), Samples::default());
        for (round, (p, s)) in interleaved(&running, set.rounds) {
            let pids = s.pids();
            // The gateway serves TLS from a second instance; the others from the same one.
            let tls_pids = s
                .extra
                .as_ref()
                .map(|x| process_tree(x.pid()))
                .unwrap_or_else(|| pids.clone());
            let profile = (round == 0 && set.perf_figure == "connections" && *p == set.perf_path)
                .then(|| start_perf(&set, &pids))
                .flatten();
            let plain = measure_conn_rate(&client_rt, s.plain, None, &set, &pids);
            if let Some(stop) = profile {
                stop();
            }
            std::thread::sleep(Duration::from_millis(300));
            let tls =
                measure_conn_rate(&client_rt, s.tls, Some(connector.clone()), &set, &tls_pids);
            println!(
                "  {:<15} plain {:>7.0}/s   TLS 1.3 {:>7.0}/s{}",
                p.label(),
                plain.per_sec,
                tls.per_sec,
                if plain.errors + tls.errors > 0 {
                    format!("   ({} + {} errors)", plain.errors, tls.errors)
                } else {
                    String::new()
                }
            );
            let i = p.index();
            plain_rates[i].push(plain.per_sec);
            tls_rates[i].push(tls.per_sec);
            plain_cpu[i].extend(plain.proxy_ns_per_conn);
            tls_cpu[i].extend(tls.proxy_ns_per_conn);
            std::thread::sleep(Duration::from_millis(300));
        }
        for (p, _) in &running {
            let i = p.index();
            figs[i].conns_plain = median(&plain_rates[i]);
            figs[i].conns_tls = median(&tls_rates[i]);
            figs[i].cpu_per_conn_plain = median(&plain_cpu[i]);
            figs[i].cpu_per_conn_tls = median(&tls_cpu[i]);
        }
    }

    for (_, s) in running {
        if let Some(p) = s.proxy {
            p.stop();
        }
        if let Some(p) = s.extra {
            p.stop();
        }
    }
    let table = render(&figs, &set, rate, &notes);
    println!("\n{table}");
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
    if let Some(parent) = set.results.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&set.results, doc) {
        Ok(()) => println!("written to {}", set.results.display()),
        Err(e) => eprintln!("cannot write {}: {e}", set.results.display()),
    }
}
