//! The public listener and the connection pipeline, assembled in one place.
//!
//! Every accepted connection goes through these stages, in this order, each in its own
//! module and each knowing only the stages after it:
//!
//! 1. the PROXY header from a trusted load balancer ([`crate::protocol::proxy_protocol`]),
//!    then the access lists on the client's address ([`crate::rate_limit`]): a refused
//!    address is closed here, before TLS;
//! 2. TLS ([`crate::tls`]), which also yields the client's ed25519 key;
//! 3. the first request head ([`crate::protocol::request_head`]): a plain request goes to
//!    the hyper path ([`super::front`]), an upgrade stays on the fast path below; a TLS
//!    client that chose HTTP/2 by ALPN goes to [`super::front_h2`], whose WebSocket streams
//!    take stages 4 and 5 as an upgrade does;
//! 4. the upgrade ([`super::upgrade`]): checks, limits, routing, and the upstream's side of
//!    the handshake, all before the client hears 101, so every failure is an HTTP status
//!    and retries stay invisible;
//! 5. the relay ([`super::connection`]) until the connection ends.
//!
//! The PROXY header, TLS and the request head share one deadline
//! (`limits.handshake_timeout`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::future::{FutureExt, OptionFuture};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::drain::DrainState;
use crate::gateway::{App, ConnInfo, Gateway};
use crate::pipeline::answer::{reject, Answer};
use crate::pipeline::connection::{run_connection, ClientIo, ClientStream, Prepared};
use crate::pipeline::front::{serve_http, Rewind};
use crate::pipeline::front_h2::serve_h2;
use crate::pipeline::upgrade::{prepare_upgrade, Admission};
use crate::pipeline::workers::{move_to, Workers};
use crate::protocol::handshake::wants_websocket;
use crate::protocol::reason::{Reason, Rejection};
use crate::protocol::request_head::{parse_head, read_request_head, HeadError, MAX_HEADERS};
use crate::tls::{HandshakeError, TlsTerminator};

/// Where a listener runs: its worker among all of them.
pub struct Place {
    /// Every worker's event loop.
    pub workers: Workers,
    /// This listener's worker.
    pub me: usize,
}

/// Accepts connections until the drain starts. `tls` overrides the config's TLS setting
/// for this listener (the `dev` stack serves ws:// and wss:// side by side).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<TlsTerminator>>,
    place: Place,
) {
    let inherited = nodelay_inherited(&listener);
    let mut drain = app.drain.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    if !inherited {
                        let _ = tcp.set_nodelay(true);
                    }
                    let (app, tls) = (app.clone(), tls.clone());
                    match place.workers.pick(place.me) {
                        None => {
                            tokio::spawn(connection(app, tcp, peer, tls));
                        }
                        Some(other) => hand_off(other, app, tcp, peer, tls),
                    }
                }
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = drain.changed() => {
                if r.is_err() || matches!(*drain.borrow(), DrainState::Draining { .. }) {
                    break;
                }
            }
        }
    }
    tracing::info!("public listener closed");
}

/// Runs a connection this worker accepted on a less busy worker's event loop.
fn hand_off(
    to: &tokio::runtime::Handle,
    app: Arc<App>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
) {
    match move_to(to, tcp) {
        Ok(tcp) => {
            to.spawn(connection(app, tcp, peer, tls));
        }
        Err(e) => tracing::warn!(error = %e, "hand-off failed"),
    }
}

/// One connection, in one task: the set-up (stages 1-4) in a box that is freed when it
/// ends, then the relay. A second task for the relay cost a spawn and a wake-up per
/// connection.
fn connection(
    app: Arc<App>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
) -> impl std::future::Future<Output = Option<()>> + Send {
    Box::pin(set_up(app, tcp, peer, tls)).then(relay)
}

/// Sets TCP_NODELAY on the listener; `true` where accepted sockets inherit it (Linux),
/// which saves a `setsockopt` per connection. Elsewhere each accepted socket is set.
fn nodelay_inherited(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux")
        && socket2::SockRef::from(listener)
            .set_tcp_nodelay(true)
            .is_ok()
}

/// A connection whose upgrade is done: what stage 5 starts from.
struct Ready {
    app: Arc<App>,
    info: ConnInfo,
    prepared: Box<Prepared>,
    client: ClientIo,
    /// The client's bytes after its request head (its first frames).
    leftover: BytesMut,
}

/// Stage 5, when the set-up got that far.
fn relay(ready: Option<Ready>) -> OptionFuture<impl std::future::Future<Output = ()> + Send> {
    OptionFuture::from(
        ready.map(|r| run_connection(r.app, r.info, r.prepared, r.client, r.leftover)),
    )
}

/// Stages 1 to 4: the PROXY header, then TLS (or none), then the first request; `Some`
/// when it was an upgrade the upstream and the client both took.
async fn set_up(
    app: Arc<App>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsTerminator>>,
) -> Option<Ready> {
    let gw = app.gateway();
    let deadline = Instant::now() + gw.config.limits.handshake_timeout.0;
    let accepted = peer;
    let peer = real_peer(&app, &gw, &tcp, peer, deadline).await?;
    let forwarded = &gw.config.forwarded;
    if gw.rate.refuses_at_accept(
        &gw.trusted,
        forwarded.proxy_protocol,
        accepted.ip(),
        peer.ip(),
    ) {
        return None;
    }
    // Counted from here to close, whatever the connection turns out to be; over a limit,
    // the first request is answered with the refusal.
    let admission = app.admit(&gw, peer.ip());
    let Some(tls) = tls.or_else(|| gw.tls.clone()) else {
        let info = ConnInfo {
            peer,
            tls: false,
            client_key: None,
            sni: None,
        };
        return serve_first_request(app, gw, tcp, info, deadline, admission).await;
    };
    // Boxed: the TLS handshake and stream make this future four times larger, and every
    // plain connection would pay for that size.
    Box::pin(serve_tls(app, gw, tcp, peer, tls, deadline, admission)).await
}

/// Stage 1: the client's address, from the PROXY header when the peer is a trusted load
/// balancer that sends one. `None`: the connection is closed.
async fn real_peer(
    app: &App,
    gw: &Gateway,
    tcp: &TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<SocketAddr> {
    if !(gw.config.forwarded.proxy_protocol && gw.trusted.contains(peer.ip())) {
        return Some(peer);
    }
    match tokio::time::timeout_at(deadline, crate::protocol::proxy_protocol::read_header(tcp)).await
    {
        Ok(Ok(source)) => Some(source.unwrap_or(peer)),
        Ok(Err(e)) => {
            tracing::info!(client = %peer, error = %e, "bad PROXY header: connection closed");
            app.metrics
                .handshake_rejections_total
                .with_label_values(&["", Reason::BAD_PROXY_HEADER.label()])
                .inc();
            None
        }
        Err(_) => {
            tracing::info!(client = %peer, "no PROXY header in time: connection closed");
            None
        }
    }
}

/// Stage 2: the TLS handshake, then the first request over TLS.
async fn serve_tls(
    app: Arc<App>,
    gw: Arc<Gateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<TlsTerminator>,
    deadline: Instant,
    admission: Admission,
) -> Option<Ready> {
    match tokio::time::timeout_at(deadline, tls.accept(tcp)).await {
        Ok(Ok((stream, client_key))) => {
            let label = crate::tls::client_auth_label(client_key.as_ref());
            app.metrics
                .tls_handshakes_total
                .with_label_values(&[label])
                .inc();
            // Debug: one line per connection at info would be the whole log under load.
            tracing::debug!(client = %peer, client_auth = label, "TLS handshake");
            let info = ConnInfo {
                peer,
                tls: true,
                client_key,
                // Requests on this connection must belong to the route this name leads to.
                sni: stream.get_ref().1.server_name().map(Arc::from),
            };
            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                // Stage 3 over HTTP/2: its own door, through hyper, into stages 4 and 5.
                Box::pin(serve_h2(app, gw, stream, info, admission)).await;
                return None;
            }
            return serve_first_request(app, gw, stream, info, deadline, admission).await;
        }
        Ok(Err(HandshakeError::AcmeChallengeServed)) => {
            tracing::debug!(client = %peer, "ACME TLS-ALPN-01 validation answered");
        }
        Ok(Err(e)) => tls_failed(&app, peer, e.reason(), &crate::error::Chain(&e)),
        Err(_) => tls_failed(&app, peer, crate::tls::TIMEOUT_REASON, &"timed out"),
    }
    None
}

/// Counts a failed handshake, and logs it at info at most once per interval (with how many
/// were not), else at debug: garbage from anyone must not flood the log.
fn tls_failed(app: &App, peer: SocketAddr, reason: &str, error: &dyn std::fmt::Display) {
    app.metrics
        .tls_handshake_failures_total
        .with_label_values(&[reason])
        .inc();
    match app.tls_failure_log.admit() {
        Some(held_back) => tracing::info!(
            client = %peer,
            reason,
            error = %error,
            not_logged_since_last = held_back,
            "TLS handshake failed"
        ),
        None => tracing::debug!(client = %peer, reason, error = %error, "TLS handshake failed"),
    }
}

/// Stage 3: the first request head. An upgrade is decided and answered from here with no
/// HTTP machinery in between (the head's lines are read where they lie in the bytes
/// read); anything else (NIP-11, CORS, the relay's page) goes to hyper with those bytes.
async fn serve_first_request<S: ClientStream>(
    app: Arc<App>,
    gw: Arc<Gateway>,
    mut s: S,
    info: ConnInfo,
    deadline: Instant,
    admission: Admission,
) -> Option<Ready> {
    let max = gw.config.limits.max_request_header_bytes;
    let read = tokio::time::timeout_at(deadline, read_request_head(&mut s, max)).await;
    let (mut buf, index) = match read {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::Closed)) => return None,
        Ok(Err(e)) => return refuse(s, bad_head(&app, e)).await,
        Err(_) => {
            tracing::debug!(client = %info.peer, "request head not complete in time: closed");
            return None;
        }
    };
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = match parse_head(&buf, &index, &mut lines) {
        Ok(h) => h,
        Err(e) => return refuse(s, bad_head(&app, e)).await,
    };
    if !wants_websocket(head.headers) {
        let io = Rewind {
            pre: buf.freeze(),
            inner: s,
        };
        Box::pin(serve_http(app, gw, TokioIo::new(io), info, admission)).await;
        return None;
    }
    // Stage 4. Boxed: the set-up future is moved whole into its box on every accept,
    // and need not hold the upgrade's state (allocated here only for upgrades).
    let prepared = match Box::pin(prepare_upgrade(&app, &info, &head, admission)).await {
        Ok(p) => p,
        Err(answer) => return refuse(s, answer).await,
    };
    s.write_all(&prepared.accepted.response).await.ok()?;
    buf.advance(index.len);
    Some(Ready {
        app,
        info,
        prepared,
        client: s.into_client_io(),
        leftover: buf,
    })
}

/// The refusal of a request head that could not be read or parsed.
fn bad_head(app: &App, e: HeadError) -> Answer {
    let r = match e {
        HeadError::TooLarge => Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
            Reason::HEAD_TOO_LARGE,
        ),
        _ => Rejection::bad("malformed HTTP request", Reason::MALFORMED_REQUEST),
    };
    reject(&app.metrics, "", r)
}

/// Writes a refusal and closes (the fast path serves one request only when it refuses).
async fn refuse<S: ClientStream>(mut s: S, answer: Answer) -> Option<Ready> {
    let _ = s.write_all(&answer.to_bytes(true)).await;
    let _ = s.shutdown().await;
    None
}

#[cfg(test)]
mod budget {
    /// The size of what `f` returns, without calling it: the connection's future needs an
    /// `App`, sockets and a runtime to be built, its type only the function.
    fn returned_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_fits_the_allocator_bin_it_was_measured_in() {
        // tokio's task cell adds 104 bytes (header, scheduler, trailer) and rounds up to its
        // 128-byte alignment: up to 1,048 bytes here the cell is 1,152 bytes, mimalloc's
        // 1,280-byte bin; past that it is 1,280 bytes and takes 1,536 (docs/architecture.md). The
        // release build (what runs, and what the bench measures) lays it out in 1,032 bytes
        // (the relay's part is 1,024), the unoptimised test build in 1,048: each profile
        // checks its own measured size, so growth in either fails.
        let bound = if cfg!(debug_assertions) { 1048 } else { 1032 };
        let size = returned_size(super::connection as fn(_, _, _, _) -> _);
        assert!(
            size <= bound,
            "the connection's future is {size} bytes (at most {bound})"
        );
    }
}
