//! One relayed connection: unwrapping the client's socket, pairing it with the upstream's,
//! running the pump, and the metrics and log lines that bracket it.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::relay::pump::{relay, Buffered, DrainSignal, PumpOptions, RelayReport, Source, Traffic};
use crate::server::{App, ConnInfo};
use crate::upstream::{Upgraded, UpstreamStream};

use crate::listener::Permit;
use crate::pool::BackendGuard;
use crate::upgrade::{Accepted, ActiveConnection, Prepared, Protocol};

/// The client side of an upgraded connection, unwrapped back to its socket.
pub(crate) enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Other(TokioIo<hyper::upgrade::Upgraded>),
}

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
        Err(u) => (ClientIo::Other(TokioIo::new(u)), BytesMut::new()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay_to_upstream<CR, CW, F>(
    cr: CR,
    cw: CW,
    client_leftover: BytesMut,
    up: UpstreamStream,
    up_leftover: BytesMut,
    opts: PumpOptions,
    drain: &DrainSignal,
    fold: &F,
) -> RelayReport
where
    CR: Source,
    CW: AsyncWrite + Unpin,
    F: Fn(Traffic) + Sync,
{
    match up {
        UpstreamStream::Tcp(mut s) => {
            let (ur, uw) = s.split();
            // Boxed so the layers above hold a pointer, not another copy of the relay's state.
            Box::pin(relay(
                cr,
                cw,
                client_leftover,
                ur,
                uw,
                up_leftover,
                opts,
                drain,
                fold,
            ))
            .await
        }
        UpstreamStream::Tls(s) => {
            let (ur, uw) = tokio::io::split(*s);
            Box::pin(relay(
                cr,
                cw,
                client_leftover,
                Buffered(ur),
                uw,
                up_leftover,
                opts,
                drain,
                fold,
            ))
            .await
        }
    }
}

/// What a relayed connection keeps for its close: the log line, the metrics, and the places
/// it holds (limits, backend, drain registration) until it ends.
struct Open {
    app: Arc<App>,
    id: u64,
    client_addr: std::net::IpAddr,
    protocol: Protocol,
    subprotocol: Option<String>,
    upstream_label: String,
    started: Instant,
    signal: Arc<DrainSignal>,
    active: ActiveConnection,
    /// Held for their drop: the backend's connection count and the limits' place.
    _backend: Option<BackendGuard>,
    _permit: Permit,
}

impl Open {
    fn fold(&self, t: Traffic) {
        let series = self.protocol.metrics(&self.app.metrics);
        series.messages[0].inc_by(t.messages_up);
        series.messages[1].inc_by(t.messages_down);
        series.bytes[0].inc_by(t.bytes_up);
        series.bytes[1].inc_by(t.bytes_down);
    }

    fn close(self, report: RelayReport) {
        let m = &self.app.metrics;
        if let Some((v, _)) = report.violation {
            m.protocol_violations_total
                .with_label_values(&[v.label()])
                .inc();
        }
        if let Some(code) = report.gateway_close_code {
            m.closes_sent_total
                .with_label_values(&[&code.to_string()])
                .inc();
        }
        // Last, so a scrape that sees the connection gone also sees its counters.
        drop(self.active);
        tracing::info!(
            conn = self.id,
            client = %self.client_addr,
            protocol = self.protocol.label(),
            subprotocol = self.subprotocol.as_deref().unwrap_or(""),
            upstream = %self.upstream_label,
            close_code = report.gateway_close_code.map(i64::from).unwrap_or(-1),
            closed_by = report.closer.map(|c| c.label()).unwrap_or("gateway"),
            violation = report.violation.map(|(v, _)| v.label()).unwrap_or(""),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_up = report.bytes_up,
            bytes_down = report.bytes_down,
            messages_up = report.messages_up,
            messages_down = report.messages_down,
            "connection closed"
        );
        self.app.relayed.unregister(self.id);
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
    client: ClientIo,
    client_leftover: BytesMut,
) -> impl std::future::Future<Output = ()> + Send {
    let Prepared {
        active,
        id,
        who,
        accepted,
        opts,
        permit,
    } = *prepared;
    let Accepted {
        protocol,
        subprotocol,
        upstream,
        upstream_label,
        backend,
        response,
    } = accepted;
    drop(response);
    tracing::info!(
        conn = id,
        client = %who.addr,
        peer = %info.peer,
        protocol = protocol.label(),
        subprotocol = subprotocol.as_deref().unwrap_or(""),
        upstream = %upstream_label,
        authenticated = who.client_key.is_some(),
        "connection opened"
    );
    let signal = app.relayed.register(id);
    // The 101's headers served their purpose; an idle connection should not keep them.
    let Upgraded {
        stream: up,
        leftover: up_left,
        headers,
    } = upstream;
    drop(headers);
    let open = Open {
        app,
        id,
        client_addr: who.addr,
        protocol,
        subprotocol,
        upstream_label,
        started: Instant::now(),
        signal,
        active,
        _backend: backend,
        _permit: permit,
    };
    async move {
        let fold = |t: Traffic| open.fold(t);
        let drain = &*open.signal;
        let report = match client {
            ClientIo::Tcp(mut s) => {
                // Borrowed halves: the stream lives in this task, no shared ownership needed.
                let (cr, cw) = s.split();
                relay_to_upstream(cr, cw, client_leftover, up, up_left, opts, drain, &fold).await
            }
            ClientIo::Tls(s) => {
                let (cr, cw) = tokio::io::split(*s);
                let cr = Buffered(cr);
                relay_to_upstream(cr, cw, client_leftover, up, up_left, opts, drain, &fold).await
            }
            ClientIo::Other(s) => {
                let (cr, cw) = tokio::io::split(s);
                let cr = Buffered(cr);
                relay_to_upstream(cr, cw, client_leftover, up, up_left, opts, drain, &fold).await
            }
        };
        open.close(report);
    }
}
