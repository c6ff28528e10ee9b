//! One relayed connection: unwrapping the client's socket, pairing it with the upstream's,
//! running the pump, and the metrics and log lines that bracket it.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::future::Either;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::drain::DrainSignal;
use crate::gateway::{App, ConnInfo};
use crate::metrics::ProtocolMetrics;
use crate::protocol::handshake::ForwardedClient;
use crate::rate_limit::admission::Permit;
use crate::relay::limiter::LimitState;
use crate::relay::mosaic::Direction;
use crate::relay::pump::{
    relay, Buffered, Pump, PumpOptions, RelayReport, Shared, Side, Source, Traffic,
};
use crate::routing::{RouteSlot, RouteState};
use crate::upstreams::connect::{Upgraded, UpstreamStream};
use crate::upstreams::pool::BackendGuard;

/// The protocol a relayed connection speaks, for metrics and logs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Mosaic,
    Nostr,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Mosaic => "mosaic",
            Protocol::Nostr => "nostr",
        }
    }

    /// This protocol's connection and traffic series on `route`.
    pub(crate) fn metrics(self, route: &RouteState) -> &ProtocolMetrics {
        route.series(self == Protocol::Nostr)
    }
}

/// Everything the relay task needs once the client's upgrade completes.
pub(crate) struct Accepted {
    pub(crate) protocol: Protocol,
    pub(crate) subprotocol: Option<Arc<str>>,
    pub(crate) upstream: Upgraded,
    /// The backend serving it; its label names the upstream in metrics and logs.
    pub(crate) backend: BackendGuard,
    /// The client's 101, as written.
    pub(crate) response: Vec<u8>,
}

/// An upgrade the upstream accepted, waiting for the client's side to switch protocols.
pub(crate) struct Prepared {
    /// Counts the connection as active from the moment the upstream accepted it, so a
    /// client that has its 101 is already visible in the metrics.
    pub(crate) active: ActiveConnection,
    pub(crate) id: u64,
    pub(crate) who: ForwardedClient,
    pub(crate) accepted: Accepted,
    pub(crate) opts: PumpOptions,
    /// The connection's rate limits, per direction; `None`: no limiter work at all.
    pub(crate) limits: Option<Box<LimitState>>,
    pub(crate) permit: Permit,
    /// The route's place (and series) for this connection.
    pub(crate) route: RouteSlot,
}

/// One count in `connections_active`, given back when dropped (whatever path ends the
/// connection).
pub(crate) struct ActiveConnection(prometheus::IntGauge);

impl ActiveConnection {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        ActiveConnection(gauge)
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client side of an upgraded connection, unwrapped back to its socket.
pub(crate) enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Boxed: rare, and three times the size of a socket.
    Other(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

/// A client stream the relay can take over once the upgrade is done.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn into_client_io(self) -> ClientIo;
}

impl ClientStream for TcpStream {
    fn into_client_io(self) -> ClientIo {
        ClientIo::Tcp(self)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_client_io(self) -> ClientIo {
        ClientIo::Tls(Box::new(self))
    }
}

/// The client's socket of a connection hyper upgraded, and the bytes hyper read past the
/// request.
pub(crate) fn unwrap_client(upgraded: hyper::upgrade::Upgraded) -> (ClientIo, BytesMut) {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            return (
                ClientIo::Tcp(parts.io.into_inner()),
                BytesMut::from(&parts.read_buf[..]),
            )
        }
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
        Ok(parts) => (
            ClientIo::Tls(Box::new(parts.io.into_inner())),
            BytesMut::from(&parts.read_buf[..]),
        ),
        Err(u) => (ClientIo::Other(Box::new(TokioIo::new(u))), BytesMut::new()),
    }
}

/// Pairs the client's side with the upstream's, whichever transports they are.
///
/// Plain code around the relay, not a future of its own: the streams, leftovers and limits
/// stay where the connection's task keeps them, borrowed, so an idle connection stores each
/// once (see `relay::pump::Relay`).
fn relay_to_upstream<'a, CR, CW, F>(
    client: Side<'a, CR, CW>,
    (stream, leftover): (&'a mut UpstreamStream, &'a mut BytesMut),
    pump: &'a Pump<'a, F>,
    limits: Option<&'a mut LimitState>,
    shared: &'a Shared,
) -> impl std::future::Future<Output = RelayReport> + 'a
where
    CR: Source + 'a,
    CW: AsyncWrite + Unpin + 'a,
    F: Fn(Traffic) + Sync,
{
    match stream {
        UpstreamStream::Tcp(s) => {
            let (read, write) = s.split();
            let upstream = Side {
                read,
                write,
                leftover,
            };
            Either::Left(relay(client, upstream, pump, limits, shared))
        }
        UpstreamStream::Tls(s) => {
            let (read, write) = tokio::io::split(&mut **s);
            let upstream = Side {
                read: Buffered(read),
                write,
                leftover,
            };
            Either::Right(relay(client, upstream, pump, limits, shared))
        }
    }
}

/// What a relayed connection keeps for its close: the log line, the metrics, and the places
/// it holds (limits, backend, drain registration) until it ends.
struct Open {
    app: Arc<App>,
    id: u64,
    protocol: Protocol,
    subprotocol: Option<Arc<str>>,
    signal: Arc<DrainSignal>,
    active: ActiveConnection,
    /// The backend (its label for the log), held until the end: its connection count.
    backend: BackendGuard,
    /// The limits' place, held until the end; it knows the client's address.
    permit: Permit,
    route: RouteSlot,
}

impl Open {
    fn fold(&self, t: Traffic) {
        let series = self.protocol.metrics(self.route.route());
        series.messages[0].inc_by(t.messages_up);
        series.messages[1].inc_by(t.messages_down);
        series.bytes[0].inc_by(t.bytes_up);
        series.bytes[1].inc_by(t.bytes_down);
    }

    fn close(self, report: RelayReport) {
        let m = &self.app.metrics;
        if let Some((v, dir)) = report.violation {
            m.protocol_violations_total
                .with_label_values(&[v.label()])
                .inc();
            // The client's violations count towards a ban; the upstream's are not its doing.
            if dir == Direction::ClientToUpstream {
                self.app.standing().trip(self.permit.ip());
            }
        }
        if let Some(code) = report.gateway_close_code {
            m.closes_sent_total
                .with_label_values(&[&code.to_string()])
                .inc();
        }
        if let Some(side) = report.stalled {
            m.write_timeouts_total
                .with_label_values(&[side.label()])
                .inc();
        }
        // Last, so a scrape that sees the connection gone also sees its counters.
        drop(self.active);
        tracing::info!(
            conn = self.id,
            client = %self.permit.ip(),
            route = %self.route.route().name,
            protocol = self.protocol.label(),
            subprotocol = self.subprotocol.as_deref().unwrap_or(""),
            upstream = %self.backend.label(),
            close_code = report.gateway_close_code.map(i64::from).unwrap_or(-1),
            closed_by = report.closer.map(|c| c.label()).unwrap_or("gateway"),
            violation = report.violation.map(|(v, _)| v.label()).unwrap_or(""),
            stopped_reading = report.stalled.map(|s| s.label()).unwrap_or(""),
            duration_ms = report.duration.as_millis() as u64,
            bytes_up = report.bytes_up,
            bytes_down = report.bytes_down,
            messages_up = report.messages_up,
            messages_down = report.messages_down,
            "connection closed"
        );
        self.app.relayed.unregister(&self.signal);
    }
}

/// Relays one upgraded connection until it ends.
///
/// The set-up is plain code and only the relay is a future: an idle connection's task then
/// holds what relaying needs and no copies of the set-up's values.
pub(crate) fn run_connection(
    app: Arc<App>,
    info: ConnInfo,
    prepared: Box<Prepared>,
    mut client: ClientIo,
    mut client_leftover: BytesMut,
) -> impl std::future::Future<Output = ()> + Send {
    let Prepared {
        active,
        id,
        who,
        accepted,
        opts,
        mut limits,
        permit,
        route,
    } = *prepared;
    let Accepted {
        protocol,
        subprotocol,
        upstream,
        backend,
        response,
    } = accepted;
    drop(response);
    tracing::info!(
        conn = id,
        client = %who.addr,
        peer = %info.peer,
        route = %route.route().name,
        protocol = protocol.label(),
        subprotocol = subprotocol.as_deref().unwrap_or(""),
        upstream = %backend.label(),
        authenticated = who.client_key.is_some(),
        "connection opened"
    );
    let signal = app.register(who.addr);
    // Built here, not in the relay's future: the timeout it keeps needs no copy there.
    // Answers are queued only for a client whose messages are limited.
    let shared = Shared::new(
        limits.as_ref().is_some_and(|l| l.up.is_some()),
        app.gateway().config.limits.write_timeout.0,
    );
    let (mut up, mut up_left) = upstream.into_parts();
    let open = Open {
        app,
        id,
        protocol,
        subprotocol,
        signal,
        active,
        backend,
        permit,
        route,
    };
    // Everything the relay borrows is captured here once; the relay itself holds references.
    async move {
        let fold = |t: Traffic| open.fold(t);
        let pump = Pump {
            opts: &opts,
            drain: &open.signal,
            fold: &fold,
        };
        let limits = limits.as_deref_mut();
        let upstream = (&mut up, &mut up_left);
        let leftover = &mut client_leftover;
        let report = match client {
            ClientIo::Tcp(ref mut s) => {
                let (read, write) = s.split();
                let client = Side {
                    read,
                    write,
                    leftover,
                };
                relay_to_upstream(client, upstream, &pump, limits, &shared).await
            }
            ClientIo::Tls(ref mut s) => {
                let (read, write) = tokio::io::split(&mut **s);
                let client = buffered(read, write, leftover);
                relay_to_upstream(client, upstream, &pump, limits, &shared).await
            }
            ClientIo::Other(ref mut s) => {
                let (read, write) = tokio::io::split(&mut **s);
                let client = buffered(read, write, leftover);
                relay_to_upstream(client, upstream, &pump, limits, &shared).await
            }
        };
        open.close(report);
    }
}

/// A side whose reads go through a buffer (TLS, hyper's upgraded stream).
fn buffered<R, W>(read: R, write: W, leftover: &mut BytesMut) -> Side<'_, Buffered<R>, W> {
    Side {
        read: Buffered(read),
        write,
        leftover,
    }
}
