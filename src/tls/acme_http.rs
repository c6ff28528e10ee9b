//! The plain HTTP listener of `tls.acme.http_listen`: answers ACME HTTP-01 validations
//! (`/.well-known/acme-challenge/<token>`) and sends every other request to https, as
//! Caddy and certbot's standalone mode do on port 80.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::protocol::request_head::bare_host;
use crate::tls::acme::AcmeManager;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the listener reads of the current generation: its ACME manager, if any, and the
/// port of the public listener, where every other request is sent.
pub(crate) struct Current {
    pub(crate) acme: Option<Arc<AcmeManager>>,
    pub(crate) https_port: u16,
}

/// Serves the listener until the task is aborted; `current` reads the generation.
pub(crate) async fn serve<F>(current: F, listener: TcpListener)
where
    F: Fn() -> Current + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let current = current.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(current(), req));
            // One request per connection: a challenge or a redirect needs no keep-alive, and
            // an idle connection held open by a peer would cost a socket for nothing.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

async fn answer(
    current: Current,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(token) = req.uri().path().strip_prefix(CHALLENGE_PREFIX) {
        let key_auth = current.acme.as_ref().and_then(|a| a.http01_response(token));
        return Ok(match key_auth {
            Some(k) => reply(StatusCode::OK, k),
            None => reply(StatusCode::NOT_FOUND, "no such challenge\n"),
        });
    }
    // Everything else belongs on https, on the public port.
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port);
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Ok(reply(StatusCode::BAD_REQUEST, "a Host header is needed\n"));
    };
    let port = current.https_port;
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = reply(StatusCode::MOVED_PERMANENTLY, "use https\n");
    match HeaderValue::from_str(&format!("https://{authority}{target}")) {
        Ok(v) => {
            r.headers_mut().insert(LOCATION, v);
            Ok(r)
        }
        Err(_) => Ok(reply(StatusCode::BAD_REQUEST, "bad Host header\n")),
    }
}

/// `example.com:80` → `example.com`, `[2001:db8::1]:80` → `[2001:db8::1]` (brackets kept
/// for the URL).
fn host_without_port(h: &str) -> String {
    let name = bare_host(h);
    if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    }
}
