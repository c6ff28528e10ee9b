//! The upgrade itself: validation, limits, the routing decision, and the upstream's side of
//! the handshake (with retries across the Mosaic pool), before the client hears 101.
//!
//! What comes out is a [`Prepared`] connection for [`crate::connection`] to relay, or the
//! HTTP answer that refuses it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};

use crate::admission::{LimitHit, Permit};
use crate::answer::{refusal, reject, Answer, Rejection};
use crate::client_addr::real_client;
use crate::connection::{Accepted, ActiveConnection, Prepared, Protocol};
use crate::gateway::{App, ConnInfo, Gateway};
use crate::handshake::{
    feature_list, header_value, negotiate_features, offered_protocols, upstream_request_head,
    validate_upgrade, ForwardedClient, X_MOSAIC_FEATURES,
};
use crate::pool::{Backend, BackendGuard, Pool};
use crate::rate_limit::Asked;
use crate::relay::limiter::LimitState;
use crate::relay::pump::PumpOptions;
use crate::relay::tracker::MosaicRules;
use crate::route::{route, Route};
use crate::upstream::{connect_and_upgrade, Upgraded, UpstreamError};

/// Decides an upgrade and completes the upstream's side of it: `Ok` when the upstream
/// answered 101 (the client is told next), `Err` with the HTTP answer otherwise.
pub(crate) async fn prepare_upgrade(
    app: &Arc<App>,
    info: ConnInfo,
    req: &Request<()>,
) -> Result<Box<Prepared>, Answer> {
    let refuse = |r| reject(&app.metrics, r);
    let gw = app.gateway();
    let key = validate_upgrade(req).map_err(refuse)?;
    let (who, permit) = admit(app, &gw, info, req).map_err(refuse)?;
    let asked = || match route(
        &offered_protocols(req.headers()),
        &gw.config.mosaic.subprotocols,
        true,
    ) {
        Route::Mosaic(_) => Asked::Mosaic,
        _ => Asked::Nostr,
    };
    gw.rate
        .admit_connection(&app.rate_tables, info.peer.ip(), who.addr, asked)
        .map_err(|why| refusal(&app.metrics, why))?;
    let ctx = UpgradeContext {
        app,
        gw: &gw,
        req,
        key: &key,
        who: &who,
        client_key: info.client_key.as_ref(),
    };
    let accepted = ctx.connect_upstream().await.map_err(refuse)?;
    let opts = PumpOptions {
        mosaic: (accepted.protocol == Protocol::Mosaic).then_some(MosaicRules {
            validation: gw.config.mosaic.validate,
            max_message_bytes: gw.config.mosaic.max_message_bytes,
        }),
        idle_timeout: gw.config.limits.idle_timeout.0,
    };
    let limits = gw
        .rate
        .connection_limiter(
            &app.rate_tables,
            accepted.protocol == Protocol::Mosaic,
            who.addr,
            info.client_key.as_ref(),
        )
        .map(LimitState::new);
    let series = accepted.protocol.metrics(&app.metrics);
    series.connections_total.inc();
    Ok(Box::new(Prepared {
        active: ActiveConnection::new(series.connections_active.clone()),
        id: app.next_id.fetch_add(1, Ordering::Relaxed),
        who,
        limits,
        accepted,
        opts,
        permit,
    }))
}

/// Whether the gateway takes this client now (not draining, within the connection limits),
/// and what it will assert about the client upstream.
fn admit(
    app: &App,
    gw: &Gateway,
    info: ConnInfo,
    req: &Request<()>,
) -> Result<(ForwardedClient, Permit), Rejection> {
    if app.is_draining() {
        return Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down",
            "draining",
        ));
    }
    let (client_ip, chain) = real_client(info.peer.ip(), req.headers(), &gw.trusted);
    let limits = &gw.config.limits;
    let permit = app
        .limits
        .try_acquire(
            client_ip,
            limits.max_connections,
            limits.max_connections_per_ip,
        )
        .map_err(|hit| match hit {
            LimitHit::Global => Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
                "max_connections",
            ),
            LimitHit::PerIp => Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
                "max_connections_per_ip",
            ),
        })?;
    let who = ForwardedClient {
        addr: client_ip,
        forwarded_chain: chain,
        tls: info.tls,
        client_key: info.client_key.as_ref().map(crate::keys::user_key_string),
    };
    Ok((who, permit))
}

/// One client upgrade on its way upstream: what both upstream handshakes need.
struct UpgradeContext<'a> {
    app: &'a App,
    gw: &'a Gateway,
    req: &'a Request<()>,
    /// The client's `Sec-WebSocket-Key`, reused upstream so the accept keys match.
    key: &'a str,
    who: &'a ForwardedClient,
    /// The TLS-authenticated client's ed25519 key.
    client_key: Option<&'a [u8; 32]>,
}

impl UpgradeContext<'_> {
    /// Routes by the offered subprotocols and completes the chosen upstream's handshake.
    async fn connect_upstream(&self) -> Result<Accepted, Rejection> {
        let offered = offered_protocols(self.req.headers());
        let gw = self.gw;
        match route(&offered, &gw.config.mosaic.subprotocols, gw.nostr.is_some()) {
            Route::Refuse => Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "no Mosaic subprotocol offered and this endpoint serves no nostr relay",
                "no_route",
            )),
            Route::Nostr => self.upgrade_nostr(&offered).await,
            Route::Mosaic(token) => self.upgrade_mosaic(token.as_str()).await,
        }
    }

    /// The request head for an upstream at `authority`.
    fn upstream_head(&self, protocols: &[String], nostr: bool, authority: &str) -> Vec<u8> {
        upstream_request_head(
            path_and_query(self.req),
            self.req.headers(),
            self.key,
            protocols,
            nostr,
            self.who,
            authority,
        )
    }
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

impl UpgradeContext<'_> {
    /// The nostr relay's side of the upgrade; its subprotocol and extensions pass through.
    async fn upgrade_nostr(&self, offered: &[String]) -> Result<Accepted, Rejection> {
        let (app, gw, key) = (self.app, self.gw, self.key);
        let Some(url) = gw.nostr.as_ref() else {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "nostr is not served here",
                "no_route",
            ));
        };
        let head = self.upstream_head(offered, true, &url.authority());
        let timeout = gw.config.nostr_connect_timeout();
        let upstream = match connect_and_upgrade(url, None, &head, key, timeout).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(relay = %url, error = %e, "nostr relay refused or failed the upgrade");
                app.metrics
                    .upstream_failures_total
                    .with_label_values(&["nostr", failure_kind(&e)])
                    .inc();
                return Err(Rejection::new(
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
                return Err(Rejection::new(
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

    /// A Mosaic backend's side of the upgrade, with retries across the pool.
    async fn upgrade_mosaic(&self, token: &str) -> Result<Accepted, Rejection> {
        let gw = self.gw;
        let pool = match (&gw.auth_pool, self.client_key) {
            (Some(auth), Some(_)) => auth,
            _ => &gw.pool,
        };
        if !pool.has_healthy() {
            return Err(no_healthy_backend());
        }
        let (backend, upstream) = self.try_backends(pool, token).await?;
        let mut response = switching_protocols(self.key);
        let h = &mut response;
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(token));
        if token == "mosaic2024" {
            let client = feature_list(self.req.headers(), X_MOSAIC_FEATURES);
            let granted = feature_list(&upstream.headers, X_MOSAIC_FEATURES);
            let allowed = &gw.config.mosaic.features;
            if let Some(v) = negotiate_features(client.as_deref(), granted.as_deref(), allowed) {
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

    /// Tries up to `mosaic.max_tries` healthy backends of `pool`, marking each that fails.
    async fn try_backends(
        &self,
        pool: &Pool,
        token: &str,
    ) -> Result<(Arc<Backend>, Upgraded), Rejection> {
        let m = &self.gw.config.mosaic;
        let metrics = &self.app.metrics;
        let protocols = [token.to_string()];
        let mut tried: Vec<Arc<Backend>> = Vec::new();
        for _ in 0..m.max_tries {
            let Some(b) = pool.pick(&tried, self.client_key) else {
                break;
            };
            let head = self.upstream_head(&protocols, false, &b.url.authority());
            let started = Instant::now();
            let result =
                connect_and_upgrade(&b.url, b.tls.as_ref(), &head, self.key, m.connect_timeout.0)
                    .await
                    .and_then(|up| selected(up, token));
            match result {
                Ok(up) => {
                    metrics
                        .backend_connect_duration_seconds
                        .with_label_values(&[pool.name])
                        .observe(started.elapsed().as_secs_f64());
                    return Ok((b, up));
                }
                Err(e) => {
                    tracing::warn!(pool = pool.name, backend = %b.label, error = %e, "backend failed the upgrade");
                    metrics
                        .upstream_failures_total
                        .with_label_values(&[pool.name, failure_kind(&e)])
                        .inc();
                    pool.mark_failed(&b);
                    tried.push(b);
                }
            }
        }
        Err(if tried.is_empty() {
            no_healthy_backend()
        } else {
            Rejection::new(
                StatusCode::BAD_GATEWAY,
                "no Mosaic backend accepted the upgrade",
                "upstream_failed",
            )
        })
    }
}

fn no_healthy_backend() -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy Mosaic backend",
        "no_healthy_backend",
    )
}

/// The backend's 101 must select exactly the Mosaic token the client is told.
fn selected(up: Upgraded, token: &str) -> Result<Upgraded, UpstreamError> {
    let chosen = up
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if chosen.map(str::trim) == Some(token) {
        Ok(up)
    } else {
        Err(UpstreamError::BadResponse(
            "backend did not select the Mosaic subprotocol",
        ))
    }
}

fn failure_kind(e: &UpstreamError) -> &'static str {
    use UpstreamError::*;
    match e {
        Connect(_) => "connect",
        Timeout => "timeout",
        Refused(_) => "refused",
        BadResponse(_) => "bad_response",
    }
}
