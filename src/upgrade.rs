//! The upgrade itself: validation, limits, the routing decision, and the upstream's side of
//! the handshake (with retries across the Mosaic pool), before the client hears 101.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::handshake::{
    feature_list, header_value, negotiate_features, offered_protocols, upstream_request_head,
    validate_upgrade, ClientIdentity, Rejection, X_MOSAIC_FEATURES,
};
use crate::listener::{real_client, LimitHit, Permit};
use crate::metrics::{Metrics, ProtocolMetrics};
use crate::pool::{Backend, BackendGuard};
use crate::relay::pump::PumpOptions;
use crate::relay::tracker::MosaicRules;
use crate::route::{route, Route};
use crate::server::{App, Body, ConnInfo, Gateway};
use crate::upstream::{connect_and_upgrade, Upgraded};

use crate::connection::{run_connection, unwrap_client};
use crate::front::{full, reject, rejection, Answer};

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

    /// This protocol's connection and traffic series.
    pub(crate) fn metrics(self, m: &Metrics) -> &ProtocolMetrics {
        match self {
            Protocol::Mosaic => &m.mosaic,
            Protocol::Nostr => &m.nostr,
        }
    }
}

/// Everything the relay task needs once the client's upgrade completes.
pub(crate) struct Accepted {
    pub(crate) protocol: Protocol,
    pub(crate) subprotocol: Option<String>,
    pub(crate) upstream: Upgraded,
    pub(crate) upstream_label: String,
    pub(crate) backend: Option<BackendGuard>,
    /// The 101's headers for the client.
    pub(crate) response: HeaderMap,
}

/// An upgrade the upstream accepted, waiting for the client's side to switch protocols.
pub(crate) struct Prepared {
    /// Counts the connection as active from the moment the upstream accepted it, so a
    /// client that has its 101 is already visible in the metrics.
    pub(crate) active: ActiveConnection,
    pub(crate) id: u64,
    pub(crate) who: ClientIdentity,
    pub(crate) accepted: Accepted,
    pub(crate) opts: PumpOptions,
    pub(crate) permit: Permit,
}

/// One count in `connections_active`, given back when dropped (whatever path ends the
/// connection).
pub(crate) struct ActiveConnection(prometheus::IntGauge);

impl ActiveConnection {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        ActiveConnection(gauge)
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Decides an upgrade and completes the upstream's side of it: `Ok` when the upstream
/// answered 101 (the client is told next), `Err` with the HTTP answer otherwise.
pub(crate) async fn prepare_upgrade(
    app: &Arc<App>,
    info: ConnInfo,
    req: &Request<()>,
) -> Result<Box<Prepared>, Answer> {
    let gw = app.gateway();
    let key = match validate_upgrade(req) {
        Ok(k) => k,
        Err(r) => return Err(reject(app, r)),
    };
    if app.is_draining() {
        return Err(reject(
            app,
            rejection(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway is shutting down",
                "draining",
            ),
        ));
    }
    let (client_ip, chain) = real_client(info.peer.ip(), req.headers(), &gw.trusted);
    let limits = &gw.config.limits;
    let permit = match app.limits.try_acquire(
        client_ip,
        limits.max_connections,
        limits.max_connections_per_ip,
    ) {
        Ok(p) => p,
        Err(LimitHit::Global) => {
            return Err(reject(
                app,
                rejection(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections",
                    "max_connections",
                ),
            ))
        }
        Err(LimitHit::PerIp) => {
            return Err(reject(
                app,
                rejection(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                    "max_connections_per_ip",
                ),
            ))
        }
    };
    let who = ClientIdentity {
        addr: client_ip,
        forwarded_chain: chain,
        tls: info.tls,
        client_key: info.client_key.as_ref().map(crate::keys::user_key_string),
    };
    let offered = offered_protocols(req.headers());
    let accepted = match route(&offered, &gw.config.mosaic.subprotocols, gw.nostr.is_some()) {
        Route::Refuse => Err(rejection(
            StatusCode::BAD_REQUEST,
            "no Mosaic subprotocol offered and this endpoint serves no nostr relay",
            "no_route",
        )),
        Route::Nostr => upgrade_nostr(app, &gw, req, &key, &offered, &who).await,
        Route::Mosaic(token) => {
            upgrade_mosaic(
                app,
                &gw,
                req,
                &key,
                token.as_str(),
                &who,
                info.client_key.as_ref(),
            )
            .await
        }
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(r) => return Err(reject(app, r)),
    };
    let opts = PumpOptions {
        mosaic: (accepted.protocol == Protocol::Mosaic).then_some(MosaicRules {
            validation: gw.config.mosaic.validate,
            max_message_bytes: gw.config.mosaic.max_message_bytes,
        }),
        idle_timeout: gw.config.limits.idle_timeout.0,
    };
    let series = accepted.protocol.metrics(&app.metrics);
    series.connections_total.inc();
    Ok(Box::new(Prepared {
        active: ActiveConnection::new(series.connections_active.clone()),
        id: app.next_id.fetch_add(1, Ordering::Relaxed),
        who,
        accepted,
        opts,
        permit,
    }))
}

/// An upgrade that arrived through hyper (a keep-alive connection's later request).
pub(crate) async fn upgrade(
    app: Arc<App>,
    info: ConnInfo,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _body) = req.into_parts();
    let view = Request::from_parts(parts, ());
    let mut prepared = match prepare_upgrade(&app, info, &view).await {
        Ok(p) => p,
        Err(answer) => return answer.into_response(),
    };
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = std::mem::take(&mut prepared.accepted.response);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (client, leftover) = unwrap_client(upgraded);
                run_connection(app, info, prepared, client, leftover).await
            }
            Err(e) => {
                tracing::debug!(conn = prepared.id, error = %e, "client upgrade did not complete")
            }
        }
    });
    response
}

/// The 101's headers: the upgrade mechanics; the caller adds the negotiated ones.
fn switching_protocols(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, header_value(&accept));
    h
}

/// The request target passed on to the upstream; "/" when the client sent none.
fn path_and_query(req: &Request<()>) -> &str {
    req.uri().path_and_query().map_or("/", |p| p.as_str())
}

async fn upgrade_nostr(
    app: &App,
    gw: &Gateway,
    req: &Request<()>,
    key: &str,
    offered: &[String],
    who: &ClientIdentity,
) -> Result<Accepted, Rejection> {
    let Some(url) = gw.nostr.as_ref() else {
        return Err(rejection(
            StatusCode::BAD_REQUEST,
            "nostr is not served here",
            "no_route",
        ));
    };
    let path = path_and_query(req);
    let head = upstream_request_head(
        path,
        req.headers(),
        key,
        offered,
        true,
        who,
        &url.authority(),
    );
    let timeout = gw.config.nostr_connect_timeout();
    let upstream = match connect_and_upgrade(url, None, &head, key, timeout).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(relay = %url, error = %e, "nostr relay refused or failed the upgrade");
            app.metrics
                .upstream_failures_total
                .with_label_values(&["nostr", failure_kind(&e)])
                .inc();
            return Err(rejection(
                StatusCode::BAD_GATEWAY,
                "nostr relay unavailable",
                "upstream_failed",
            ));
        }
    };
    let mut response = switching_protocols(key);
    // The relay's choice must be one the client offered; otherwise the client would fail.
    let chosen = upstream
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string());
    if let Some(p) = &chosen {
        if !offered.iter().any(|o| o == p) {
            return Err(rejection(
                StatusCode::BAD_GATEWAY,
                "nostr relay chose a subprotocol the client did not offer",
                "upstream_bad_protocol",
            ));
        }
        response.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(p));
    }
    for v in upstream.headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        response.append(header::SEC_WEBSOCKET_EXTENSIONS, v.clone());
    }
    Ok(Accepted {
        protocol: Protocol::Nostr,
        subprotocol: chosen,
        upstream,
        upstream_label: url.to_string(),
        backend: None,
        response,
    })
}

fn failure_kind(e: &crate::upstream::UpstreamError) -> &'static str {
    use crate::upstream::UpstreamError::*;
    match e {
        Connect(_) => "connect",
        Timeout => "timeout",
        Refused(_) => "refused",
        BadResponse(_) => "bad_response",
    }
}

#[allow(clippy::too_many_arguments)]
async fn upgrade_mosaic(
    app: &App,
    gw: &Gateway,
    req: &Request<()>,
    key: &str,
    token: &str,
    who: &ClientIdentity,
    client_key: Option<&[u8; 32]>,
) -> Result<Accepted, Rejection> {
    let m = &gw.config.mosaic;
    let pool = match (&gw.auth_pool, client_key) {
        (Some(auth), Some(_)) => auth.clone(),
        _ => gw.pool.clone(),
    };
    if !pool.has_healthy() {
        return Err(rejection(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy Mosaic backend",
            "no_healthy_backend",
        ));
    }
    let path = path_and_query(req);
    let protocols = [token.to_string()];
    let mut tried: Vec<Arc<Backend>> = Vec::new();
    let mut found: Option<(Arc<Backend>, Upgraded)> = None;
    for _ in 0..m.max_tries {
        let Some(b) = pool.pick(&tried, client_key) else {
            break;
        };
        let head = upstream_request_head(
            path,
            req.headers(),
            key,
            &protocols,
            false,
            who,
            &b.url.authority(),
        );
        let started = Instant::now();
        let result =
            connect_and_upgrade(&b.url, b.tls.as_ref(), &head, key, m.connect_timeout.0).await;
        let result = result.and_then(|up| {
            let chosen = up
                .headers
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok());
            if chosen.map(str::trim) == Some(token) {
                Ok(up)
            } else {
                Err(crate::upstream::UpstreamError::BadResponse(
                    "backend did not select the Mosaic subprotocol",
                ))
            }
        });
        match result {
            Ok(up) => {
                app.metrics
                    .backend_connect_duration_seconds
                    .with_label_values(&[pool.name])
                    .observe(started.elapsed().as_secs_f64());
                found = Some((b, up));
                break;
            }
            Err(e) => {
                tracing::warn!(pool = pool.name, backend = %b.label, error = %e, "backend failed the upgrade");
                app.metrics
                    .upstream_failures_total
                    .with_label_values(&[pool.name, failure_kind(&e)])
                    .inc();
                pool.mark_failed(&b);
                tried.push(b);
            }
        }
    }
    let Some((backend, upstream)) = found else {
        return Err(if tried.is_empty() {
            rejection(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy Mosaic backend",
                "no_healthy_backend",
            )
        } else {
            rejection(
                StatusCode::BAD_GATEWAY,
                "no Mosaic backend accepted the upgrade",
                "upstream_failed",
            )
        });
    };
    let mut response = switching_protocols(key);
    let h = &mut response;
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(token));
    if token == "mosaic2024" {
        let client = feature_list(req.headers(), X_MOSAIC_FEATURES);
        let granted = feature_list(&upstream.headers, X_MOSAIC_FEATURES);
        if let Some(v) = negotiate_features(client.as_deref(), granted.as_deref(), &m.features) {
            h.insert(X_MOSAIC_FEATURES, header_value(&v));
        }
    } else {
        // Later Mosaic versions negotiate in X-Mosaic-* headers the gateway does not own.
        for (name, value) in upstream.headers.iter() {
            if name.as_str().starts_with("x-mosaic-") {
                h.append(name.clone(), value.clone());
            }
        }
    }
    Ok(Accepted {
        protocol: Protocol::Mosaic,
        subprotocol: Some(token.to_string()),
        upstream,
        upstream_label: backend.label.clone(),
        backend: Some(BackendGuard::new(backend)),
        response,
    })
}
