//! The HTTP/2 client of the h2 figure: one TLS connection that chose `h2` by ALPN, carrying
//! WebSockets as extended CONNECT streams (RFC 8441), each then spoken to as raw frames like
//! any other client stream. hyper's client; the proxy under test answers 200.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// One WebSocket carried by an HTTP/2 stream.
pub type H2Stream = TokioIo<hyper::upgrade::Upgraded>;

/// Connects with ALPN `h2` and opens `streams` Mosaic WebSockets on the connection.
pub async fn connect_h2_streams(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    streams: usize,
) -> io::Result<Vec<H2Stream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(io::Error::other)?;
    let s = tls.connect(name, tcp).await?;
    if s.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(io::Error::other("the proxy did not choose h2"));
    }
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(io::Error::other)?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(streams);
    for _ in 0..streams {
        out.push(open_stream(&mut send).await?);
    }
    Ok(out)
}

/// One extended CONNECT; retried while the server's SETTINGS (which allow it) are on their way.
async fn open_stream(send: &mut SendRequest<Empty<Bytes>>) -> io::Result<H2Stream> {
    let mut last = None;
    for _ in 0..200 {
        send.ready().await.map_err(io::Error::other)?;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri("https://localhost/")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "mosaic2024")
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .body(Empty::new())
            .map_err(io::Error::other)?;
        match send.send_request(req).await {
            Ok(mut resp) if resp.status() == StatusCode::OK => {
                let up = hyper::upgrade::on(&mut resp)
                    .await
                    .map_err(io::Error::other)?;
                return Ok(TokioIo::new(up));
            }
            Ok(resp) => {
                return Err(io::Error::other(format!(
                    "extended CONNECT answered {}",
                    resp.status()
                )))
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(io::Error::other(format!(
        "extended CONNECT never allowed: {last:?}"
    )))
}
