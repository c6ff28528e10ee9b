//! A real nostr relay (rust-nostr's `LocalRelay`) behind a small hyper 1 HTTP front end.
//!
//! `LocalRelay` only speaks WebSocket, so relay discovery (NIP-11) would not work against
//! it. This front end answers the HTTP side itself (NIP-11 document, CORS preflight, a
//! tiny HTML page) and hands valid WebSocket upgrades to the relay. It never selects a
//! subprotocol and never negotiates extensions, which is what the gateway's nostr route
//! has to cope with in the wild.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nostr_relay_builder::prelude::{LocalRelay, RelayBuilder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// NIPs that `LocalRelay` 0.44 implements, plus NIP-11 which this front end adds.
const SUPPORTED_NIPS: &str = "[1,11,42,45,70,77]";

/// A running nostr relay with an HTTP front end; shuts down when dropped.
pub struct NostrRelayServer {
    local_addr: SocketAddr,
    relay: LocalRelay,
    shutdown: watch::Sender<bool>,
}

impl NostrRelayServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving in the background.
    pub async fn spawn(addr: SocketAddr) -> std::io::Result<NostrRelayServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let relay = LocalRelay::new(RelayBuilder::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(accept_loop(listener, relay.clone(), shutdown_rx));
        Ok(NostrRelayServer {
            local_addr,
            relay,
            shutdown,
        })
    }

    /// The address the server actually listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and drops every open connection; idempotent.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        self.relay.shutdown();
    }
}

impl Drop for NostrRelayServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Resolves once shutdown was requested (or the server handle is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender was dropped, which also means "stop".
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, relay: LocalRelay, shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Transient (e.g. EMFILE); keep serving the others.
                    tracing::warn!("nostr relay accept failed: {e}");
                    continue;
                }
            },
            _ = stopped(shutdown.clone()) => return,
        };
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc_shutdown = shutdown.clone();
            let service = hyper::service::service_fn(move |req| {
                handle(req, peer, relay.clone(), svc_shutdown.clone())
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                res = conn => {
                    if let Err(e) = res {
                        tracing::debug!("nostr relay http connection from {peer}: {e}");
                    }
                }
                // Dropping the connection future drops the socket: an abrupt close.
                _ = stopped(shutdown) => {}
            }
        });
    }
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',').any(|item| {
                    // Media ranges may carry parameters (`;q=0.9`); only the token counts.
                    let bare = item.split(';').next().unwrap_or("");
                    bare.trim().eq_ignore_ascii_case(token)
                })
            })
            .unwrap_or(false)
    })
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn add_cors(resp: &mut Response<Full<Bytes>>) {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
}

fn nip11_document() -> String {
    format!(
        concat!(
            "{{\"name\":\"mosaic-gateway dev relay\",",
            "\"description\":\"rust-nostr LocalRelay behind a hyper front end, for development and tests\",",
            "\"supported_nips\":{},",
            "\"software\":\"https://github.com/rust-nostr/nostr\",",
            "\"version\":\"nostr-relay-builder 0.44.1\"}}"
        ),
        SUPPORTED_NIPS
    )
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    relay: LocalRelay,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req.headers();
    let wants_ws = header_has_token(headers, header::UPGRADE, "websocket");

    if req.method() == Method::GET && wants_ws {
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return Ok(full(
                StatusCode::BAD_REQUEST,
                "missing Connection: upgrade\n",
            ));
        }
        let version_ok = headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
        if !version_ok {
            // RFC 6455 4.2.2: tell the client which version we speak.
            let mut resp = full(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Ok(resp);
        }
        let accept = match headers.get(header::SEC_WEBSOCKET_KEY) {
            // A 16-byte nonce in base64 is always 24 characters.
            Some(key) if key.len() == 24 => derive_accept_key(key.as_bytes()),
            _ => return Ok(full(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key\n")),
        };
        let Ok(accept) = HeaderValue::from_str(&accept) else {
            return Ok(full(StatusCode::INTERNAL_SERVER_ERROR, ""));
        };

        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let serve = async {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        if let Err(e) = relay.take_connection(TokioIo::new(upgraded), peer).await {
                            tracing::debug!("nostr relay session with {peer} ended: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("nostr relay upgrade from {peer} failed: {e}"),
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stopped(shutdown) => {}
            }
        });

        let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        return Ok(resp);
    }

    let resp = match *req.method() {
        Method::GET if header_has_token(headers, header::ACCEPT, "application/nostr+json") => {
            let mut resp = full(StatusCode::OK, nip11_document());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/nostr+json"),
            );
            add_cors(&mut resp);
            resp
        }
        Method::GET => {
            let mut resp = full(
                StatusCode::OK,
                "<!doctype html><html><head><title>nostr relay</title></head>\
                 <body><p>This is a nostr relay. Connect with a WebSocket client.</p></body></html>\n",
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        Method::OPTIONS => {
            let mut resp = full(StatusCode::NO_CONTENT, Bytes::new());
            add_cors(&mut resp);
            resp
        }
        _ => {
            let mut resp = full(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
            resp
        }
    };
    Ok(resp)
}
