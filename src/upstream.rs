//! Connecting to a backend or relay and completing its WebSocket upgrade.
//!
//! The gateway speaks HTTP/1.1 to upstreams directly (one request head out, one response
//! head in) so it keeps the raw socket: whatever the upstream sent after its 101 is handed
//! to the pump as the first bytes of the relay.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Scheme, UpstreamUrl};
use crate::tls::BackendConnector;

/// Largest upstream response head the gateway reads.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A connected upstream transport.
pub enum UpstreamStream {
    /// Plain TCP (`ws://`).
    Tcp(TcpStream),
    /// TLS (`wss://`).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// An upstream that answered 101.
pub struct Upgraded {
    /// The socket, positioned after the response head.
    pub stream: UpstreamStream,
    /// Bytes the upstream sent after its response head (first frames).
    pub leftover: BytesMut,
    /// The 101's headers.
    pub headers: HeaderMap,
}

/// Why an upstream did not accept.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// Connect plus upgrade took longer than allowed.
    #[error("timed out")]
    Timeout,
    /// The upstream answered, but not with 101.
    #[error("answered HTTP {0} instead of 101")]
    Refused(u16),
    /// The answer was not a valid upgrade response.
    #[error("bad upgrade response: {0}")]
    BadResponse(&'static str),
}

impl UpstreamError {
    /// Every `upstream_failures_total{kind}` label, in the order of [`UpstreamError::kind`].
    pub const KINDS: [&'static str; 4] = ["connect", "timeout", "refused", "bad_response"];

    /// The `upstream_failures_total{kind}` label.
    pub fn kind(&self) -> &'static str {
        let i = match self {
            UpstreamError::Connect(_) => 0,
            UpstreamError::Timeout => 1,
            UpstreamError::Refused(_) => 2,
            UpstreamError::BadResponse(_) => 3,
        };
        Self::KINDS[i]
    }
}

/// Connects to `url` and sends `head`; succeeds only on a valid 101 for `key`.
pub async fn connect_and_upgrade(
    url: &UpstreamUrl,
    tls: Option<&BackendConnector>,
    head: &[u8],
    key: &str,
    timeout: Duration,
) -> Result<Upgraded, UpstreamError> {
    match tokio::time::timeout(timeout, connect_inner(url, tls, head, key)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn tcp_connect(url: &UpstreamUrl) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn connect_inner(
    url: &UpstreamUrl,
    tls: Option<&BackendConnector>,
    head: &[u8],
    key: &str,
) -> Result<Upgraded, UpstreamError> {
    match (url.scheme, tls) {
        (Scheme::Wss, Some(connector)) => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| UpstreamError::BadResponse("backend host is not a valid TLS name"))?;
            let (mut s, _server_key) = connector
                .connect(name, || tcp_connect(url))
                .await
                .map_err(UpstreamError::Connect)?;
            let (leftover, headers) = exchange(&mut s, head, key).await?;
            Ok(Upgraded {
                stream: UpstreamStream::Tls(Box::new(s)),
                leftover,
                headers,
            })
        }
        (Scheme::Wss, None) => Err(UpstreamError::BadResponse(
            "no TLS settings for a wss:// backend",
        )),
        (Scheme::Ws, _) => {
            let mut s = tcp_connect(url).await.map_err(UpstreamError::Connect)?;
            let (leftover, headers) = exchange(&mut s, head, key).await?;
            Ok(Upgraded {
                stream: UpstreamStream::Tcp(s),
                leftover,
                headers,
            })
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: &[u8],
    key: &str,
) -> Result<(BytesMut, HeaderMap), UpstreamError> {
    s.write_all(head).await.map_err(UpstreamError::Connect)?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(UpstreamError::BadResponse("response head too large"));
        }
        let n = s.read_buf(&mut buf).await.map_err(UpstreamError::Connect)?;
        if n == 0 {
            return Err(UpstreamError::BadResponse(
                "connection closed during upgrade",
            ));
        }
        let mut hdrs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hdrs);
        match resp.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(UpstreamError::BadResponse("unparseable response")),
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                if code != 101 {
                    return Err(UpstreamError::Refused(code));
                }
                let mut map = HeaderMap::new();
                for h in resp.headers.iter() {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(h.name.as_bytes()),
                        HeaderValue::from_bytes(h.value),
                    ) {
                        map.append(n, v);
                    }
                }
                let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
                let accept = map
                    .get(hyper::header::SEC_WEBSOCKET_ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim);
                if accept != Some(expected.as_str()) {
                    return Err(UpstreamError::BadResponse("wrong Sec-WebSocket-Accept"));
                }
                let _ = buf.split_to(len);
                return Ok((buf, map));
            }
        }
    }
}
