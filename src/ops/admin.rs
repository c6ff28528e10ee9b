//! The admin listener: `/metrics`, `/livez`, `/readyz`, `/healthz`, the status page
//! (`/`, `/status`, `/status.json`), and NIP-86 management (`POST /`, see `nip86`).
//!
//! Kept apart from the public listener so probes and scrapes never compete with client
//! limits, and so it can stay on a private address.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::gateway::App;
use crate::ops::status::Status;

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn handle(
    app: Arc<App>,
    status: Arc<Status>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST && req.uri().path() == "/" {
        return Ok(crate::ops::nip86::handle(&app, req).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only (and POST / for NIP-86)\n",
            "text/plain",
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            {
                app.metrics.ready.set(i64::from(app.readiness().is_ok()));
                app.metrics.render()
            },
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/livez" => text(StatusCode::OK, "ok\n", "text/plain"),
        "/readyz" | "/healthz" => match app.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n", "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/" | "/status" => {
            let mut r = text(
                StatusCode::OK,
                crate::ops::status::html(&status.report(&app)),
                "text/html; charset=utf-8",
            );
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            r
        }
        "/status.json" => text(
            StatusCode::OK,
            serde_json::to_string_pretty(&status.report(&app)).unwrap_or_default(),
            "application/json",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try / /status.json /metrics /livez /readyz /healthz\n",
            "text/plain",
        ),
    })
}

/// Serves the admin endpoints until the process exits (probes must answer while draining).
pub async fn serve(app: Arc<App>, status: Arc<Status>, listener: TcpListener) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, status) = (app.clone(), status.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(app.clone(), status.clone(), req));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
