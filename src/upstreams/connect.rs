//! Connecting to a backend or relay and completing its WebSocket upgrade.
//!
//! The gateway speaks HTTP/1.1 to upstreams directly (one request head out, one response
//! head in) so it keeps the raw socket: whatever the upstream sent after its 101 is handed
//! to the pump as the first bytes of the relay.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Scheme, UpstreamUrl};
use crate::protocol::fields::{visible_ascii, Fields};
use crate::tls::BackendConnector;

/// Largest upstream response head the gateway reads.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Header lines accepted in an upstream's 101.
pub const MAX_RESPONSE_HEADERS: usize = 64;

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
    /// The 101's head as received, read again by [`Upgraded::headers`].
    head: BytesMut,
    /// Where the head's first `Sec-WebSocket-Protocol` value lies in it: every
    /// connection asks, so it is found while the head is parsed the first time.
    protocol: Option<Range<usize>>,
}

impl Upgraded {
    /// The 101's header lines, parsed into `lines`. Kept as bytes and parsed again when
    /// asked (features, extensions, later Mosaic versions' headers): a `HeaderMap` copied
    /// every value into an allocation of its own on every connection.
    pub fn headers<'a>(
        &'a self,
        lines: &'a mut [httparse::Header<'a>; MAX_RESPONSE_HEADERS],
    ) -> &'a [httparse::Header<'a>] {
        let mut resp = httparse::Response::new(lines);
        match resp.parse(&self.head) {
            Ok(httparse::Status::Complete(_)) => resp.headers,
            // The head parsed when it arrived; the same bytes parse the same way again.
            _ => &[],
        }
    }

    /// The socket and the upstream's first bytes; the 101's head is let go (an idle
    /// connection should not keep it).
    pub fn into_parts(self) -> (UpstreamStream, BytesMut) {
        (self.stream, self.leftover)
    }

    /// Whether the 101 selected the subprotocol `token`.
    pub fn selected(&self, token: &str) -> bool {
        let chosen = self.protocol.clone().and_then(|p| self.head.get(p));
        chosen.and_then(visible_ascii).map(str::trim) == Some(token)
    }
}

/// Why an upstream did not accept.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connect failed.
    #[error("connect failed")]
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
    /// The `upstream_failures_total{kind}` label.
    pub fn kind(&self) -> &'static str {
        let i = match self {
            UpstreamError::Connect(_) => 0,
            UpstreamError::Timeout => 1,
            UpstreamError::Refused(_) => 2,
            UpstreamError::BadResponse(_) => 3,
        };
        crate::metrics::UPSTREAM_FAILURE_KINDS[i]
    }
}

/// Connects to `url` and sends `head`; succeeds only on a valid 101 whose
/// `Sec-WebSocket-Accept` is `accept` (the key's, computed once by the caller).
pub async fn connect_and_upgrade(
    url: &UpstreamUrl,
    tls: Option<&BackendConnector>,
    head: &[u8],
    accept: &str,
    timeout: Duration,
) -> Result<Upgraded, UpstreamError> {
    match tokio::time::timeout(timeout, connect_inner(url, tls, head, accept)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn tcp_connect(url: &UpstreamUrl) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects to a `ws://` upstream and sends `head`.
///
/// An upstream given by address is connected by hand and the head sent right after
/// `connect()`: where the handshake completes at once (loopback, a fast LAN) the head
/// goes out without waiting for writability, and a failed connect shows in that send.
/// tokio's connect waits for an epoll round and reads `SO_ERROR` first: two system calls
/// per connection. A connect still in progress falls back to waiting (one failed send
/// instead of the `SO_ERROR` read). Names are resolved and connected by tokio.
async fn connect_and_send(url: &UpstreamUrl, head: &[u8]) -> io::Result<TcpStream> {
    let mut s = match url.host.parse::<std::net::IpAddr>() {
        Ok(ip) if cfg!(target_os = "linux") => {
            let (s, sent) = connect_sending(SocketAddr::new(ip, url.port), head)?;
            let mut s = TcpStream::from_std(s)?;
            s.write_all(&head[sent..]).await?;
            return Ok(s);
        }
        _ => tcp_connect(url).await?,
    };
    s.write_all(head).await?;
    Ok(s)
}

/// A non-blocking connect to `addr` and one send of `head`: the socket and how much of
/// `head` went out (0 while the connect is in progress).
#[cfg(target_os = "linux")]
fn connect_sending(addr: SocketAddr, head: &[u8]) -> io::Result<(std::net::TcpStream, usize)> {
    // Non-blocking from socket() on (close-on-exec too: `Socket::new` adds it).
    let kind = socket2::Type::STREAM.nonblocking();
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let sent = match socket.send_with_flags(head, libc::MSG_NOSIGNAL) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok((socket.into(), sent))
}

#[cfg(not(target_os = "linux"))]
fn connect_sending(_: SocketAddr, _: &[u8]) -> io::Result<(std::net::TcpStream, usize)> {
    Err(io::Error::other("connect_sending is for Linux"))
}

async fn connect_inner(
    url: &UpstreamUrl,
    tls: Option<&BackendConnector>,
    head: &[u8],
    accept: &str,
) -> Result<Upgraded, UpstreamError> {
    match (url.scheme, tls) {
        (Scheme::Wss, Some(connector)) => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| UpstreamError::BadResponse("backend host is not a valid TLS name"))?;
            let (mut s, _server_key) = connector
                .connect(name, || tcp_connect(url))
                .await
                .map_err(UpstreamError::Connect)?;
            let (answer, leftover) = exchange(&mut s, head, accept).await?;
            Ok(Upgraded {
                stream: UpstreamStream::Tls(Box::new(s)),
                leftover,
                head: answer.head,
                protocol: answer.protocol,
            })
        }
        (Scheme::Wss, None) => Err(UpstreamError::BadResponse(
            "no TLS settings for a wss:// backend",
        )),
        (Scheme::Ws, _) => {
            let mut s = connect_and_send(url, head)
                .await
                .map_err(UpstreamError::Connect)?;
            let (answer, leftover) = exchange(&mut s, &[], accept).await?;
            Ok(Upgraded {
                stream: UpstreamStream::Tcp(s),
                leftover,
                head: answer.head,
                protocol: answer.protocol,
            })
        }
    }
}

/// An upstream's 101 head, and where its subprotocol lies in it.
struct Answer {
    head: BytesMut,
    protocol: Option<Range<usize>>,
}

/// Sends the request head (unless it went out with the connect: empty) and reads the
/// response head: the head and what followed it.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    head: &[u8],
    accept: &str,
) -> Result<(Answer, BytesMut), UpstreamError> {
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
        if let Some((len, protocol)) = switched(&buf, accept)? {
            let head = buf.split_to(len);
            return Ok((Answer { head, protocol }, buf));
        }
    }
}

/// A complete 101's length, and where its first `Sec-WebSocket-Protocol` value lies.
type Switched = Option<(usize, Option<Range<usize>>)>;

/// Judges a response head: `Ok(None)` while it is incomplete; once it is a valid 101
/// with the expected `Sec-WebSocket-Accept`, its length and where its first
/// `Sec-WebSocket-Protocol` value lies.
fn switched(buf: &[u8], accept: &str) -> Result<Switched, UpstreamError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut lines);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(UpstreamError::BadResponse("unparseable response")),
        Ok(httparse::Status::Complete(len)) => len,
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(UpstreamError::Refused(code));
    }
    if resp.headers.text("sec-websocket-accept").map(str::trim) != Some(accept) {
        return Err(UpstreamError::BadResponse("wrong Sec-WebSocket-Accept"));
    }
    let protocol = resp
        .headers
        .values("sec-websocket-protocol")
        .next()
        .map(|v| {
            let start = v.as_ptr() as usize - buf.as_ptr() as usize;
            start..start + v.len()
        });
    Ok(Some((len, protocol)))
}
