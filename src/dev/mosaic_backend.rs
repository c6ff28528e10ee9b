//! An in-memory Mosaic backend speaking both versions over plain WebSockets: the seed-era
//! (December 2024, `mosaic2024`) binary messages and specification 0.8.0 (`mosaic2025`, see
//! [`crate::dev::mosaic2025`]), so gateway tests and the `dev` stack have a real peer.
//!
//! It is deliberately small: records are opaque byte strings kept in memory, and a query
//! filter is opaque too. An empty filter matches every record; a non-empty filter matches a
//! record when the filter bytes occur somewhere inside the record (a plain substring test).
//! That is not Mosaic's filter language, but it lets tests choose which records a query sees.
//!
//! Behaviour worth knowing when writing tests:
//! - The handshake requires one of the configured subprotocol tokens (exact, case-sensitive,
//!   from a comma-separated list over any number of header lines; its own order decides,
//!   2025 first) or answers HTTP 400. A 2025 upgrade is answered with the HELLO ACK
//!   headers, the nonce signed by the backend's own random key
//!   ([`MosaicBackend::public_key`]). Every accepted request's headers are recorded before
//!   the 101 is written, so they can be inspected as soon as the client's connect returns.
//! - `X-Mosaic-Features` is negotiated as in mosaic-wire.md §1.
//! - A malformed message, a server-type message (>= 0x80 except 0xF0) or an unknown client
//!   type closes the connection with 1002; a text message closes it with 1003; 0xF0 is
//!   ignored. Reserved bytes are not checked, lengths are.
//! - A Query reusing an id that is still open replaces the earlier query. Close Query for an
//!   unknown id is still answered with Query Closed 0x01, so clients need not track races.
//! - Messages above 1,048,584 bytes make tungstenite fail the read; the connection drops.
//! - `shutdown()` (or drop) stops listening and drops every socket without a close frame,
//!   which is how tests simulate a backend dying.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest record the seed spec allows (its text says 1024576, a typo).
pub const MAX_RECORD_LEN: usize = 1_048_576;
/// Largest Mosaic message: an 8-byte Record header plus the largest record.
pub const MAX_MESSAGE_LEN: usize = MAX_RECORD_LEN + 8;
/// Records shorter than this cannot carry the 32 id bytes a Submission Result echoes.
const MIN_RECORD_LEN: usize = 32;
/// Live records buffered per connection before a slow reader starts losing them.
const LIVE_CAPACITY: usize = 4096;
/// How long to wait for the peer's close frame after we sent ours.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Builders for seed-era Mosaic messages (mosaic-wire.md §3), for tests and clients.
pub mod wire {
    /// Client → server: Query.
    pub const QUERY: u8 = 0x01;
    /// Client → server: Close Query.
    pub const CLOSE_QUERY: u8 = 0x02;
    /// Client → server: Submission.
    pub const SUBMISSION: u8 = 0x03;
    /// Server → client: Record.
    pub const RECORD: u8 = 0x80;
    /// Server → client: Query Complete.
    pub const QUERY_COMPLETE: u8 = 0x81;
    /// Server → client: Query Closed.
    pub const QUERY_CLOSED: u8 = 0x82;
    /// Server → client: Submission Result.
    pub const SUBMISSION_RESULT: u8 = 0x83;
    /// Either direction: unrecognized message.
    pub const UNRECOGNIZED: u8 = 0xF0;

    /// Result/closed code: ok / closed on request.
    pub const CODE_OK: u8 = 0x01;
    /// Submission Result code: duplicate record.
    pub const CODE_DUPLICATE: u8 = 0x02;
    /// Result/closed code: invalid.
    pub const CODE_INVALID: u8 = 0x10;
    /// Query Closed code: server shutting down.
    pub const CODE_SHUTTING_DOWN: u8 = 0x30;
    /// Result/closed code: internal error.
    pub const CODE_INTERNAL_ERROR: u8 = 0xF0;

    fn u24(len: usize) -> [u8; 3] {
        assert!(len <= 0x00FF_FFFF, "length {len} does not fit in 24 bits");
        let b = (len as u32).to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// Query: `[1:3]` id, `[4:6]` filter length u16, `[8:]` filter. Panics if filter > 65535 bytes.
    pub fn query(id: [u8; 2], filter: &[u8]) -> Vec<u8> {
        let len = u16::try_from(filter.len())
            .unwrap_or_else(|_| panic!("filter of {} bytes does not fit in 16 bits", filter.len()));
        let mut m = Vec::with_capacity(8 + filter.len());
        m.extend_from_slice(&[QUERY, id[0], id[1], 0]);
        m.extend_from_slice(&len.to_le_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(filter);
        m
    }

    /// Close Query: `[1:3]` id.
    pub fn close_query(id: [u8; 2]) -> Vec<u8> {
        vec![CLOSE_QUERY, id[0], id[1], 0]
    }

    /// Submission: `[1:4]` record length u24, `[4:]` record. Panics above 16 MiB.
    pub fn submission(record: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(4 + record.len());
        m.push(SUBMISSION);
        m.extend_from_slice(&u24(record.len()));
        m.extend_from_slice(record);
        m
    }

    /// Record: `[1:3]` id, `[5:8]` record length u24, `[8:]` record. Panics above 16 MiB.
    pub fn record(id: [u8; 2], record: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(8 + record.len());
        m.extend_from_slice(&[RECORD, id[0], id[1], 0, 0]);
        m.extend_from_slice(&u24(record.len()));
        m.extend_from_slice(record);
        m
    }

    /// Query Complete: `[1:3]` id.
    pub fn query_complete(id: [u8; 2]) -> Vec<u8> {
        vec![QUERY_COMPLETE, id[0], id[1], 0]
    }

    /// Query Closed: `[1:3]` id, `[3]` code.
    pub fn query_closed(id: [u8; 2], code: u8) -> Vec<u8> {
        vec![QUERY_CLOSED, id[0], id[1], code]
    }

    /// Submission Result: `[3]` code, `[4:36]` id32 truncated or zero-padded to 32 bytes.
    pub fn submission_result(code: u8, id32: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 36];
        m[0] = SUBMISSION_RESULT;
        m[3] = code;
        let n = id32.len().min(32);
        m[4..4 + n].copy_from_slice(&id32[..n]);
        m
    }
}

/// What a [`MosaicBackend`] offers during the handshake.
#[derive(Debug, Clone)]
pub struct MosaicBackendOptions {
    /// `X-Mosaic-Features` items this backend can serve.
    pub features: Vec<String>,
    /// The subprotocol tokens it accepts, in its order of preference.
    pub subprotocols: Vec<String>,
    /// `X-Mosaic-Service-Url` for 2025 clients.
    pub service_url: Option<String>,
}

impl Default for MosaicBackendOptions {
    fn default() -> Self {
        MosaicBackendOptions {
            features: Vec::new(),
            subprotocols: vec!["mosaic2025".to_owned(), "mosaic2024".to_owned()],
            service_url: None,
        }
    }
}

/// The token of the version whose messages the dev backend speaks as 2025.
const MOSAIC2025: &str = "mosaic2025";

/// A running in-memory Mosaic backend; shuts down (dropping all connections) when dropped.
pub struct MosaicBackend {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

/// A stored record and its position, so a query can skip live copies of records it
/// already sent from its snapshot.
#[derive(Clone)]
struct Live {
    seq: usize,
    record: Arc<[u8]>,
}

#[derive(Default)]
struct Store {
    records: Vec<Arc<[u8]>>,
    seen: HashSet<Arc<[u8]>>,
}

struct Shared {
    opts: MosaicBackendOptions,
    store: Mutex<Store>,
    live: broadcast::Sender<Live>,
    connections: AtomicUsize,
    requests: Mutex<Vec<HeaderMap>>,
    /// Binary messages received, by type byte.
    received: Mutex<HashMap<u8, usize>>,
    /// The key 2025 nonces are signed with.
    signer: crate::protocol::hello::ServerSigner,
    /// BLOBs (2025) by BLAKE3 hash.
    blobs: Mutex<HashMap<[u8; 32], Vec<u8>>>,
}

impl MosaicBackend {
    /// Binds `addr` (port 0 picks a free port) and starts serving in the background.
    pub async fn spawn(addr: SocketAddr, opts: MosaicBackendOptions) -> io::Result<MosaicBackend> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let shared = Arc::new(Shared {
            opts,
            store: Mutex::new(Store::default()),
            live,
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            received: Mutex::new(HashMap::new()),
            signer: crate::protocol::hello::ServerSigner::new(random_key()),
            blobs: Mutex::new(HashMap::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
        Ok(MosaicBackend {
            local_addr,
            shared,
            shutdown,
        })
    }

    /// The address the backend actually listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and drops every open socket without a close frame; idempotent.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Number of WebSocket connections currently open (counted from the accepted handshake).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Headers of every upgrade request it accepted, oldest first.
    pub fn request_headers(&self) -> Vec<HeaderMap> {
        self.shared.requests.lock().clone()
    }

    /// Headers of the most recently accepted upgrade request.
    pub fn last_request_headers(&self) -> Option<HeaderMap> {
        self.shared.requests.lock().last().cloned()
    }

    /// Number of distinct records stored so far.
    pub fn record_count(&self) -> usize {
        self.shared.store.lock().records.len()
    }

    /// The stored records, in the order they were stored.
    pub fn records(&self) -> Vec<Vec<u8>> {
        let store = self.shared.store.lock();
        store.records.iter().map(|r| r.to_vec()).collect()
    }

    /// The public key 2025 clients' nonces are signed with.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.signer.public_key()
    }

    /// How many binary messages with this type byte reached the backend, over every
    /// connection (`wire::QUERY`, `wire::SUBMISSION`…).
    pub fn received(&self, kind: u8) -> usize {
        self.shared.received.lock().get(&kind).copied().unwrap_or(0)
    }
}

impl Drop for MosaicBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn random_key() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    // A failing OS RNG leaves a fixed dev key: this backend only serves tests and `dev`.
    let _ = getrandom::fill(&mut seed);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// Resolves once shutdown was requested (or the backend handle is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender was dropped, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Transient (e.g. EMFILE); keep serving the others.
                    tracing::warn!("mosaic backend accept failed: {e}");
                    continue;
                }
            },
            _ = stopped(shutdown.clone()) => return,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve_connection(stream, peer, shared) => {}
                // Dropping the future drops the socket: the abrupt death tests want.
                _ = stopped(shutdown) => {}
            }
        });
    }
}

/// Keeps [`MosaicBackend::connections`] right however the connection task ends.
struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(shared)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reject(status: StatusCode, why: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(format!("{why}\n")));
    *resp.status_mut() = status;
    resp
}

/// Comma-separated items over all lines of a header, trimmed, empties removed.
fn header_items<'a>(headers: &'a HeaderMap, name: &str, sep: char) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        // Non-UTF-8 lines cannot contain any token we compare against.
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(sep))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `X-Mosaic-Features` answer: the client's items we serve, in its order, or `-`.
pub fn negotiate_features(requested: &HeaderMap, served: &[String]) -> Option<String> {
    if !requested.contains_key("x-mosaic-features") {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    for item in header_items(requested, "x-mosaic-features", ';') {
        if served.iter().any(|s| s == item) && !kept.contains(&item) {
            kept.push(item);
        }
    }
    Some(if kept.is_empty() {
        "-".to_owned()
    } else {
        kept.join(";")
    })
}

/// Decides the handshake; on success the response carries the subprotocol and features.
// tungstenite's `Callback` trait dictates this error type; boxing it is not an option.
#[allow(clippy::result_large_err)]
fn on_handshake(
    shared: &Shared,
    req: &Request,
    mut resp: Response,
) -> Result<(Response, bool), ErrorResponse> {
    let opts = &shared.opts;
    let headers = req.headers();
    let offered = header_items(headers, "sec-websocket-protocol", ',');
    let Some(token) = opts
        .subprotocols
        .iter()
        .find(|t| offered.contains(&t.as_str()))
    else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            &format!("subprotocol {} required", opts.subprotocols.join(" or ")),
        ));
    };
    let Ok(proto) = HeaderValue::from_str(token) else {
        return Err(reject(StatusCode::INTERNAL_SERVER_ERROR, "bad subprotocol"));
    };
    resp.headers_mut().insert("sec-websocket-protocol", proto);
    if token == MOSAIC2025 {
        super::mosaic2025::hello_ack(
            headers,
            &opts.features,
            &shared.signer,
            opts.service_url.as_deref(),
            resp.headers_mut(),
        );
        return Ok((resp, true));
    }
    if let Some(features) = negotiate_features(headers, &opts.features) {
        // Only operator-configured strings end up here, but they might not be header-safe.
        let Ok(value) = HeaderValue::from_str(&features) else {
            return Err(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "bad configured feature",
            ));
        };
        resp.headers_mut().insert("x-mosaic-features", value);
    }
    Ok((resp, false))
}

// The handshake callback's error type is tungstenite's, see `on_handshake`.
#[allow(clippy::result_large_err)]
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Filled inside the callback, i.e. before the 101 goes out, so a test that has just
    // connected already sees its headers and the connection count.
    let mut guard: Option<ConnectionGuard> = None;
    let mut v2025 = false;
    let callback = |req: &Request, resp: Response| {
        let (resp, is_2025) = on_handshake(&shared, req, resp)?;
        v2025 = is_2025;
        shared.requests.lock().push(req.headers().clone());
        guard = Some(ConnectionGuard::new(shared.clone()));
        Ok(resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_LEN))
        .max_frame_size(Some(MAX_MESSAGE_LEN));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!("mosaic handshake from {peer} failed: {e}");
            return;
        }
    };
    let _guard = guard;
    if let Err(e) = session(ws, &shared, v2025).await {
        tracing::debug!("mosaic session with {peer} ended: {e}");
    }
}

struct OpenQuery {
    filter: Vec<u8>,
    /// Records with a smaller sequence number were in the snapshot already.
    from_seq: usize,
}

/// What the session loop must do after one client message.
enum Outcome {
    Reply(Vec<Vec<u8>>),
    Close(CloseCode, &'static str),
}

fn matches(filter: &[u8], record: &[u8]) -> bool {
    filter.is_empty() || record.windows(filter.len()).any(|w| w == filter)
}

async fn session<S>(
    mut ws: WebSocketStream<S>,
    shared: &Shared,
    v2025: bool,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Subscribed before the first message is read, so no submission can fall between a
    // query's snapshot and its live feed.
    let mut live = shared.live.subscribe();
    let mut queries: HashMap<[u8; 2], OpenQuery> = HashMap::new();
    loop {
        let outcome = tokio::select! {
            msg = ws.next() => match msg {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::Binary(data))) if v2025 => handle_2025(&data, shared, &mut queries),
                Some(Ok(Message::Binary(data))) => handle_message(&data, shared, &mut queries),
                Some(Ok(Message::Text(_))) => {
                    Outcome::Close(CloseCode::Unsupported, "Mosaic uses binary messages only")
                }
                // Pings are answered and close handshakes completed by tungstenite itself.
                Some(Ok(_)) => continue,
            },
            item = live.recv() => match item {
                Ok(item) => Outcome::Reply(
                    queries
                        .iter()
                        .filter(|(_, q)| item.seq >= q.from_seq && matches(&q.filter, &item.record))
                        .map(|(id, _)| record_message(v2025, *id, &item.record))
                        .collect(),
                ),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Records were lost for this reader; tell it rather than go silent.
                    tracing::warn!("mosaic session lagged by {n} live records");
                    Outcome::Reply(
                        queries
                            .drain()
                            .map(|(id, _)| lagged(v2025, id))
                            .collect(),
                    )
                }
                // The sender lives in `shared`, which outlives this session.
                Err(broadcast::error::RecvError::Closed) => continue,
            },
        };
        match outcome {
            Outcome::Reply(msgs) => {
                for m in msgs {
                    ws.feed(Message::binary(m)).await?;
                }
                ws.flush().await?;
            }
            Outcome::Close(code, reason) => {
                ws.close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }))
                .await?;
                // Give the peer a moment to answer the close so it sees a clean code.
                let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
                return Ok(());
            }
        }
    }
}

fn handle_message(
    data: &[u8],
    shared: &Shared,
    queries: &mut HashMap<[u8; 2], OpenQuery>,
) -> Outcome {
    let Some(&kind) = data.first() else {
        return Outcome::Close(CloseCode::Protocol, "empty message");
    };
    *shared.received.lock().entry(kind).or_default() += 1;
    match kind {
        wire::QUERY => {
            if data.len() < 8 {
                return Outcome::Close(CloseCode::Protocol, "short Query");
            }
            let filter_len = usize::from(u16::from_le_bytes([data[4], data[5]]));
            if data.len() != 8 + filter_len {
                return Outcome::Close(CloseCode::Protocol, "Query length mismatch");
            }
            let id = [data[1], data[2]];
            let filter = data[8..].to_vec();
            let (mut replies, from_seq) = {
                let store = shared.store.lock();
                let replies: Vec<Vec<u8>> = store
                    .records
                    .iter()
                    .filter(|r| matches(&filter, r))
                    .map(|r| wire::record(id, r))
                    .collect();
                (replies, store.records.len())
            };
            replies.push(wire::query_complete(id));
            queries.insert(id, OpenQuery { filter, from_seq });
            Outcome::Reply(replies)
        }
        wire::CLOSE_QUERY => {
            if data.len() != 4 {
                return Outcome::Close(CloseCode::Protocol, "Close Query must be 4 bytes");
            }
            let id = [data[1], data[2]];
            queries.remove(&id);
            Outcome::Reply(vec![wire::query_closed(id, wire::CODE_OK)])
        }
        wire::SUBMISSION => {
            if data.len() < 4 {
                return Outcome::Close(CloseCode::Protocol, "short Submission");
            }
            let declared =
                usize::from(data[1]) | (usize::from(data[2]) << 8) | (usize::from(data[3]) << 16);
            let record = &data[4..];
            if declared != record.len()
                || record.len() < MIN_RECORD_LEN
                || record.len() > MAX_RECORD_LEN
            {
                return Outcome::Reply(vec![wire::submission_result(wire::CODE_INVALID, record)]);
            }
            Outcome::Reply(vec![wire::submission_result(
                store(shared, record),
                &record[..32],
            )])
        }
        wire::UNRECOGNIZED => Outcome::Reply(Vec::new()),
        k if k >= 0x80 => Outcome::Close(CloseCode::Protocol, "server message type from client"),
        _ => Outcome::Close(CloseCode::Protocol, "unrecognized message type"),
    }
}

fn record_message(v2025: bool, id: [u8; 2], record: &[u8]) -> Vec<u8> {
    if v2025 {
        super::mosaic2025::wire::record(id, record)
    } else {
        wire::record(id, record)
    }
}

/// The Query Closed a lagging reader's queries get.
fn lagged(v2025: bool, id: [u8; 2]) -> Vec<u8> {
    if v2025 {
        // 65 TEMPORARY ERROR.
        super::mosaic2025::wire::query_closed(id, 65)
    } else {
        wire::query_closed(id, wire::CODE_INTERNAL_ERROR)
    }
}

/// One `mosaic2025` client message.
fn handle_2025(data: &[u8], shared: &Shared, queries: &mut HashMap<[u8; 2], OpenQuery>) -> Outcome {
    use super::mosaic2025::{read, wire as w, Asked};
    if let Some(&kind) = data.first() {
        *shared.received.lock().entry(kind).or_default() += 1;
    }
    match read(data, &mut shared.blobs.lock()) {
        Asked::Reply(m) => Outcome::Reply(m),
        Asked::Violation(why) => Outcome::Close(CloseCode::Protocol, why),
        Asked::Unsubscribe(id) => {
            queries.remove(&id);
            Outcome::Reply(vec![w::query_closed(id, w::SUCCESS)])
        }
        Asked::Submit(record) => {
            let code = match store(shared, record) {
                wire::CODE_OK => w::ACCEPTED,
                _ => w::DUPLICATE,
            };
            Outcome::Reply(vec![w::submission_result(code, record)])
        }
        Asked::Query {
            id,
            filter,
            ids,
            subscribe,
        } => {
            let (mut replies, from_seq) = {
                let store = shared.store.lock();
                let wanted = |r: &[u8]| {
                    if ids.is_empty() {
                        matches(filter, r)
                    } else {
                        ids.iter().any(|i| r.starts_with(i))
                    }
                };
                let replies: Vec<Vec<u8>> = store
                    .records
                    .iter()
                    .filter(|r| wanted(r))
                    .map(|r| w::record(id, r))
                    .collect();
                (replies, store.records.len())
            };
            if subscribe {
                replies.push(w::locally_complete(id));
                let filter = filter.to_vec();
                queries.insert(id, OpenQuery { filter, from_seq });
            } else {
                replies.push(w::query_closed(id, w::SUCCESS));
            }
            Outcome::Reply(replies)
        }
    }
}

/// Stores a record unless already present and returns the Submission Result code.
fn store(shared: &Shared, record: &[u8]) -> u8 {
    let mut store = shared.store.lock();
    if store.seen.contains(record) {
        return wire::CODE_DUPLICATE;
    }
    let record: Arc<[u8]> = Arc::from(record);
    let seq = store.records.len();
    store.records.push(record.clone());
    store.seen.insert(record.clone());
    // Sent under the lock so live order matches sequence order; no receivers is fine.
    let _ = shared.live.send(Live { seq, record });
    wire::CODE_OK
}
