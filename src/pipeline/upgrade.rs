//! The upgrade itself: the route (by host and path), validation, limits, the choice of
//! Mosaic or nostr by subprotocol, and the upstream's side of the handshake (with retries
//! across the route's Mosaic pool or nostr relay pool), before the client hears 101.
//!
//! What comes out is a [`Prepared`] connection for [`super::connection`] to relay, or the
//! HTTP answer that refuses it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;

use crate::config::ServerAuthentication;
use crate::error::Chain;
use crate::gateway::{App, ConnInfo, Gateway};
use crate::pipeline::answer::{refusal, reject, Answer};
use crate::pipeline::connection::{Accepted, ActiveConnection, Prepared, Protocol};
use crate::protocol::fields::Fields;
use crate::protocol::handshake::{
    check_extended_connect, check_upgrade, feature_list, negotiate_features, offered_tokens,
    upstream_request_head, Destination, ForwardedClient, HostLine, X_MOSAIC_FEATURES,
};
use crate::protocol::reason::{Reason, Rejection};
use crate::protocol::request_head::{settle, Head, Misread, Settled};
use crate::protocol::subprotocol::{self, Choice};
use crate::rate_limit::admission::{LimitHit, Permit};
use crate::rate_limit::client_addr::real_client;
use crate::rate_limit::{Asked, Refused};
use crate::relay::limiter::LimitState;
use crate::relay::profile::MosaicVersion;
use crate::relay::pump::PumpOptions;
use crate::relay::tracker::MosaicRules;
use crate::routing::{MosaicSide, NoRoute, NostrSide, RouteState};
use crate::upstreams::connect::{
    connect_and_upgrade, Upgraded, UpstreamError, MAX_RESPONSE_HEADERS,
};
use crate::upstreams::pool::{Backend, BackendGuard, Pool};
use crate::upstreams::retry::{self, across_pool, blame, Exhausted};

/// The connection's place in the limits, taken at accept, or the limit that was full.
pub(crate) type Admission = Result<Permit, LimitHit>;

/// How the client asked for its WebSocket.
#[derive(Clone, Copy)]
enum ClientHandshake {
    /// An HTTP/1.1 `GET` with `Upgrade: websocket`: its key goes upstream.
    Http11,
    /// An HTTP/2 extended CONNECT (RFC 8441) with `:protocol websocket`: it has no key,
    /// so the gateway makes one for the upstream's HTTP/1.1 upgrade.
    ExtendedConnect,
}

/// Decides an upgrade and completes the upstream's side of it: `Ok` when the upstream
/// answered 101 (the client is told next), `Err` with the HTTP answer otherwise.
pub(crate) async fn prepare_upgrade(
    app: &Arc<App>,
    info: &ConnInfo,
    req: &Head<'_>,
    admission: Admission,
) -> Result<Box<Prepared>, Answer> {
    prepare(app, info, req, ClientHandshake::Http11, admission).await
}

/// [`prepare_upgrade`] for an HTTP/2 extended CONNECT whose `:protocol` is `websocket`
/// (the caller checked): the same routing, limits and upstream handshake. The answer's
/// 101 head is for the caller to turn into a 200.
pub(crate) async fn prepare_extended_connect(
    app: &Arc<App>,
    info: &ConnInfo,
    req: &Head<'_>,
    admission: Admission,
) -> Result<Box<Prepared>, Answer> {
    prepare(app, info, req, ClientHandshake::ExtendedConnect, admission).await
}

async fn prepare(
    app: &Arc<App>,
    info: &ConnInfo,
    req: &Head<'_>,
    handshake: ClientHandshake,
    admission: Admission,
) -> Result<Box<Prepared>, Answer> {
    let gw = app.gateway();
    let meaning = settle(req.method, req.http11, &req.target, req.headers)
        .map_err(|m| reject(&app.metrics, "", misread(m)))?;
    app.metrics.dropped_underscored(meaning.underscored);
    let route = gw
        .routes
        .select(info.sni.as_deref(), meaning.host, &meaning.path)
        .map_err(|e| reject(&app.metrics, "", no_route(e)))?;
    let refuse = |r| reject(&app.metrics, &route.name, r);
    let generated: String;
    let key = match handshake {
        ClientHandshake::Http11 => {
            check_upgrade(req.method == "GET", req.http11, req.headers).map_err(refuse)?
        }
        ClientHandshake::ExtendedConnect => {
            check_extended_connect(req.headers).map_err(refuse)?;
            generated = tungstenite::handshake::client::generate_key();
            &generated
        }
    };
    let (who, permit) = admit(app, &gw, info, req, admission).map_err(refuse)?;
    let offered: Vec<&str> = offered_tokens(req.headers).collect();
    let asked = || match subprotocol::choose(&offered, route.mosaic_tokens(), true) {
        Choice::Mosaic(_) => Asked::Mosaic,
        _ => Asked::Nostr,
    };
    // A route with its own rate limits uses them instead of the global ones; the access
    // lists are always the global ones.
    let (policy, tables) = match &route.rate {
        Some(r) => {
            if gw.rate.refuses_forwarded(info.peer.ip(), who.addr, asked()) {
                return Err(refusal(&app.metrics, Refused::Denied));
            }
            (&r.policy, &*r.tables)
        }
        None => (&gw.rate, &app.rate_tables),
    };
    policy
        .admit_connection(tables, info.peer.ip(), who.addr, asked)
        .map_err(|why| refusal(&app.metrics, why))?;
    let slot = route.enter().ok_or_else(|| {
        refuse(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections on this route",
            Reason::ROUTE_MAX_CONNECTIONS,
        ))
    })?;
    let ctx = UpgradeContext {
        app,
        route: &route,
        req,
        meaning: &meaning,
        offered: &offered,
        key,
        accept: &tungstenite::handshake::derive_accept_key(key.as_bytes()),
        who: &who,
        client_key: info.client_key.as_ref(),
    };
    let accepted = ctx.connect_upstream().await.map_err(refuse)?;
    let opts = PumpOptions {
        mosaic: match (
            &route.mosaic,
            accepted.protocol,
            accepted.subprotocol.as_deref(),
        ) {
            (Some(m), Protocol::Mosaic, Some(token)) => {
                m.config.profile(token).map(|profile| MosaicRules {
                    profile,
                    max_message_bytes: m.config.max_message_bytes,
                })
            }
            _ => None,
        },
        idle_timeout: gw.config.limits.idle_timeout.0,
    };
    let limits = policy
        .connection_limiter(
            tables,
            accepted.protocol == Protocol::Mosaic,
            who.addr,
            info.client_key.as_ref(),
        )
        .map(LimitState::new);
    let series = accepted.protocol.metrics(&route);
    series.connections_total.inc();
    if let Some(rules) = &opts.mosaic {
        app.metrics
            .mosaic_connections_total
            .with_label_values(&[rules.profile.version().label()])
            .inc();
    }
    Ok(Box::new(Prepared {
        active: ActiveConnection::new(series.connections_active.clone()),
        id: app.next_id.fetch_add(1, Ordering::Relaxed),
        who,
        limits,
        accepted,
        opts,
        permit,
        route: slot,
    }))
}

/// The refusal of a request the front's rules do not take (400).
pub(crate) fn misread(m: Misread) -> Rejection {
    let label = match m {
        Misread::NoHost | Misread::TwoHosts | Misread::HostValue | Misread::HostMismatch => {
            Reason::BAD_HOST
        }
        Misread::TargetForm | Misread::BadPath => Reason::BAD_TARGET,
    };
    Rejection::bad(m.reason(), label)
}

/// The refusal of an upgrade no route takes.
fn no_route(e: NoRoute) -> Rejection {
    match e {
        NoRoute::Unknown => Rejection::bad(
            "no route for this host name and path, and no default route",
            Reason::UNKNOWN_ROUTE,
        ),
        NoRoute::Misdirected => Rejection::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this host name belongs to another route than the TLS server name (SNI)",
            Reason::MISDIRECTED,
        ),
    }
}

/// Whether the gateway takes this client now (not draining, within the connection limits),
/// and what it will assert about the client upstream.
fn admit(
    app: &App,
    gw: &Gateway,
    info: &ConnInfo,
    req: &Head<'_>,
    admission: Admission,
) -> Result<(ForwardedClient, Permit), Rejection> {
    if app.is_draining() {
        return Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway is shutting down",
            Reason::DRAINING,
        ));
    }
    let (client_ip, chain) = real_client(info.peer.ip(), req.headers, &gw.trusted);
    let mut permit = admission.map_err(Rejection::from)?;
    permit
        .count_client(client_ip, gw.caps())
        .map_err(Rejection::from)?;
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
    route: &'a RouteState,
    req: &'a Head<'a>,
    /// What the request means: the host and target sent upstream.
    meaning: &'a Settled<'a>,
    /// The subprotocols the client offered, in order.
    offered: &'a [&'a str],
    /// The client's `Sec-WebSocket-Key`, reused upstream so the accept keys match.
    key: &'a str,
    /// Its `Sec-WebSocket-Accept`, the same for the upstream's 101 and the client's:
    /// computed once (a SHA-1 each time).
    accept: &'a str,
    who: &'a ForwardedClient,
    /// The TLS-authenticated client's ed25519 key.
    client_key: Option<&'a [u8; 32]>,
}

impl UpgradeContext<'_> {
    /// Routes by the offered subprotocols and completes the chosen upstream's handshake.
    async fn connect_upstream(&self) -> Result<Accepted, Rejection> {
        let r = self.route;
        match (
            subprotocol::choose(self.offered, r.mosaic_tokens(), r.serves_nostr()),
            &r.mosaic,
            &r.nostr,
        ) {
            (Choice::Nostr, _, Some(nostr)) => self.upgrade_nostr(nostr).await,
            (Choice::Mosaic(token), Some(mosaic), _) => {
                self.upgrade_mosaic(mosaic, token.as_str()).await
            }
            _ => Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "no Mosaic subprotocol offered and this endpoint serves no nostr relay",
                Reason::NO_ROUTE,
            )),
        }
    }

    /// The request head for an upstream at `authority`.
    fn upstream_head(&self, protocols: &[&str], nostr: bool, authority: &str) -> Vec<u8> {
        let host = match self.meaning.host {
            Some(h) => HostLine::Client(h),
            None => HostLine::Upstream(authority),
        };
        let (target, prefix) = self.route.upstream_target(&self.meaning.upstream_target);
        let to = Destination {
            target: &target,
            host,
            prefix,
        };
        upstream_request_head(&to, self.req.headers, self.key, protocols, nostr, self.who)
    }
}

/// The client's 101, built as the bytes written (one buffer, one write): the upgrade
/// mechanics, then the negotiated headers. Names in lowercase, as hyper writes them.
struct SwitchingProtocols(Vec<u8>);

impl SwitchingProtocols {
    fn new(accept: &str) -> Self {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
        );
        let mut answer = SwitchingProtocols(out);
        answer.header(b"sec-websocket-accept", accept.as_bytes());
        answer
    }

    fn header(&mut self, name: &[u8], value: &[u8]) {
        let out = &mut self.0;
        let start = out.len();
        out.extend_from_slice(name);
        out[start..].make_ascii_lowercase();
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"\r\n");
        self.0
    }
}

impl UpgradeContext<'_> {
    /// A nostr relay's side of the upgrade, with retries across the route's relays; its
    /// subprotocol and extensions pass through.
    async fn upgrade_nostr(&self, nostr: &NostrSide) -> Result<Accepted, Rejection> {
        let n = &nostr.config;
        let tries = Tries {
            pool: &nostr.pool,
            max_tries: n.max_tries,
            timeout: n.connect_timeout.0,
            protocols: self.offered,
            nostr: true,
            what: "nostr relay",
        };
        let (backend, upstream) = self.try_pool(tries, Ok).await?;
        let mut response = SwitchingProtocols::new(self.accept);
        let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let granted = upstream.headers(&mut lines);
        // The relay's choice must be one the client offered; otherwise the client would fail.
        let chosen = granted.text("sec-websocket-protocol").map(str::trim);
        if let Some(p) = chosen {
            if !self.offered.contains(&p) {
                return Err(Rejection::new(
                    StatusCode::BAD_GATEWAY,
                    "nostr relay chose a subprotocol the client did not offer",
                    Reason::UPSTREAM_BAD_PROTOCOL,
                ));
            }
            response.header(b"sec-websocket-protocol", p.as_bytes());
        }
        for v in granted.values("sec-websocket-extensions") {
            response.header(b"sec-websocket-extensions", v);
        }
        let subprotocol = chosen.map(Arc::from);
        Ok(Accepted {
            protocol: Protocol::Nostr,
            subprotocol,
            upstream,
            backend: BackendGuard::new(backend),
            response: response.finish(),
        })
    }

    /// A Mosaic backend's side of the upgrade, with retries across the route's pool.
    async fn upgrade_mosaic(
        &self,
        mosaic: &MosaicSide,
        first: &str,
    ) -> Result<Accepted, Rejection> {
        let pool = match (&mosaic.auth_pool, self.client_key) {
            (Some(auth), Some(_)) => auth,
            _ => &mosaic.pool,
        };
        let m = &mosaic.config;
        // Every Mosaic version the client offered, in the operator's order (`first` leads):
        // a backend that speaks only some of them picks one, and the connection is relayed
        // in the version it picked.
        let offered: Vec<&str> = m
            .subprotocols
            .iter()
            .map(String::as_str)
            .filter(|t| *t == first || self.offered.contains(t))
            .collect();
        let hello_in =
            |t: &&str| MosaicVersion::from_token(t).is_some_and(|v| v.hello_in_headers());
        if offered.iter().any(hello_in) {
            crate::protocol::hello::check_hello(self.req.headers)?;
        }
        let tries = Tries {
            pool,
            max_tries: m.max_tries,
            timeout: m.connect_timeout.0,
            protocols: &offered,
            nostr: false,
            what: "Mosaic backend",
        };
        let (backend, upstream) = self.try_pool(tries, |up| selected(up, &offered)).await?;
        let token = offered
            .iter()
            .copied()
            .find(|t| upstream.selected(t))
            .unwrap_or(first);
        let version = MosaicVersion::from_token(token);
        let hello = version.is_some_and(MosaicVersion::hello_in_headers);
        let sep = version.map_or(b';', MosaicVersion::feature_separator);
        let mut response = SwitchingProtocols::new(self.accept);
        response.header(b"sec-websocket-protocol", token.as_bytes());
        let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        if hello {
            // The gateway signs only for routes that ask it to.
            let gw = self.app.gateway();
            let signer = gw
                .server_signer
                .as_deref()
                .filter(|_| m.server_authentication == ServerAuthentication::Gateway);
            let acked = upstream.headers(&mut lines);
            let limit = m.features.as_deref();
            crate::protocol::hello::hello_ack(self.req.headers, acked, limit, signer, |n, v| {
                response.header(n, v)
            });
        } else if let Some(client) = feature_list(self.req.headers, X_MOSAIC_FEATURES, sep) {
            // The seed's backend 101 is read again only when the client asked for features.
            let granted = feature_list(upstream.headers(&mut lines), X_MOSAIC_FEATURES, sep);
            // The seed's rule: unset grants nothing.
            let gateway = m.features.as_deref().unwrap_or_default();
            if let Some(v) = negotiate_features(Some(&client), granted.as_deref(), gateway, sep) {
                response.header(X_MOSAIC_FEATURES.as_bytes(), v.as_bytes());
            }
        }
        Ok(Accepted {
            protocol: Protocol::Mosaic,
            subprotocol: Some(mosaic.token(token)),
            upstream,
            backend: BackendGuard::new(backend),
            response: response.finish(),
        })
    }

    /// Tries up to `max_tries` healthy members of the pool ([`across_pool`]): each that
    /// fails is marked down, a 4xx is passed on to the client; `accept` judges an
    /// upstream's 101.
    async fn try_pool(
        &self,
        t: Tries<'_>,
        accept: impl Fn(Upgraded) -> Result<Upgraded, UpstreamError>,
    ) -> Result<(Arc<Backend>, Upgraded), Rejection> {
        let pool = t.pool;
        if !pool.has_healthy() {
            return Err(no_healthy(t.what));
        }
        let metrics = &self.app.metrics;
        let tries = retry::Tries {
            pool,
            max_tries: t.max_tries,
            client_key: self.client_key,
            client_ip: self.who.addr,
        };
        let attempt = |b: Arc<Backend>| {
            let head = self.upstream_head(t.protocols, t.nostr, &b.url.authority());
            let accept = &accept;
            async move {
                let started = Instant::now();
                let up = connect_and_upgrade(&b.url, b.tls.as_ref(), &head, self.accept, t.timeout)
                    .await
                    .and_then(accept)
                    .map_err(blame)?;
                metrics
                    .backend_connect_duration_seconds
                    .with_label_values(&[pool.name])
                    .observe(started.elapsed().as_secs_f64());
                Ok(up)
            }
        };
        let on_fault = |b: &Backend, e: &UpstreamError| {
            tracing::warn!(route = %pool.route, pool = pool.name, backend = %b.label, error = %Chain(e), "{} failed the upgrade", t.what);
            metrics
                .upstream_failures_total
                .with_label_values(&[pool.name, e.kind()])
                .inc();
            b.note_check(false, format!("client upgrade: {}", Chain(e)));
        };
        across_pool(tries, attempt, on_fault)
            .await
            .map_err(|e| match e {
                Exhausted::NoneHealthy => no_healthy(t.what),
                Exhausted::Failed(_) => Rejection::new(
                    StatusCode::BAD_GATEWAY,
                    if t.nostr {
                        "nostr relay unavailable"
                    } else {
                        "no Mosaic backend accepted the upgrade"
                    },
                    Reason::UPSTREAM_FAILED,
                ),
                Exhausted::Answered(e) => self.passed_on(pool, &e),
            })
    }

    /// An upstream's refusal of this client's upgrade (a 4xx), passed on with its status;
    /// counted in `upstream_failures_total{kind="refused"}` but not held against it.
    fn passed_on(&self, pool: &Pool, e: &UpstreamError) -> Rejection {
        tracing::debug!(route = %pool.route, pool = pool.name, error = %Chain(e), "upstream refused the client's upgrade: passed on");
        self.app
            .metrics
            .upstream_failures_total
            .with_label_values(&[pool.name, e.kind()])
            .inc();
        let status = match e {
            UpstreamError::Refused(code) => StatusCode::from_u16(*code).ok(),
            _ => None,
        };
        Rejection::new(
            status.unwrap_or(StatusCode::BAD_GATEWAY),
            "the upstream refused this upgrade",
            Reason::UPSTREAM_REFUSED,
        )
    }
}

/// One upgrade's attempts across a pool.
struct Tries<'a> {
    pool: &'a Pool,
    max_tries: u32,
    timeout: std::time::Duration,
    /// The subprotocols offered upstream.
    protocols: &'a [&'a str],
    /// Whether extensions pass through (nostr) or are stripped (Mosaic).
    nostr: bool,
    /// "Mosaic backend" or "nostr relay", for refusals and logs.
    what: &'static str,
}

fn no_healthy(what: &'static str) -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        if what == "nostr relay" {
            "no healthy nostr relay"
        } else {
            "no healthy Mosaic backend"
        },
        Reason::NO_HEALTHY_BACKEND,
    )
}

/// The backend's 101 must select one of the Mosaic tokens it was offered (the one the
/// client is told).
fn selected(up: Upgraded, tokens: &[&str]) -> Result<Upgraded, UpstreamError> {
    if tokens.iter().any(|t| up.selected(t)) {
        Ok(up)
    } else {
        Err(UpstreamError::BadResponse(
            "backend did not select the Mosaic subprotocol",
        ))
    }
}
