//! The backend behind every path: a fast echo-style Mosaic server that answers every
//! Submission with a Submission Result, plain and TLS, on its own runtime.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use crate::tls::{tls_acceptor, TlsFiles};
use crate::wire::{find, reserve, FrameHeader};

/// Where the backend listens.
pub struct Backend {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

impl Backend {
    /// Plain and TLS listeners on 127.0.0.1, served on `rt`.
    pub fn start(rt: &Runtime, tls: &TlsFiles) -> Backend {
        let (plain, with_tls) = rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend");
            let lt = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind backend tls");
            (l, lt)
        });
        let backend = Backend {
            plain: plain.local_addr().expect("addr"),
            tls: with_tls.local_addr().expect("addr"),
        };
        rt.spawn(serve(plain, None));
        rt.spawn(serve(with_tls, Some(tls_acceptor(&tls.cert, &tls.key))));
        backend
    }
}

async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    if let Ok(s) = acc.accept(tcp).await {
                        let _ = connection(s).await;
                    }
                }
                None => {
                    let _ = connection(tcp).await;
                }
            }
        });
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let Some(mut buf) = accept_upgrade(&mut s).await? else {
        return Ok(());
    };
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let closing = answer(&mut buf, &mut out);
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if closing {
            let _ = s.shutdown().await;
            return Ok(());
        }
        reserve(&mut buf, 2048);
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Reads the upgrade request and answers 101; returns bytes that followed the request
/// head, or `None` when the client left (or sent a head over 64 KiB) first.
async fn accept_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> io::Result<Option<BytesMut>> {
    let mut buf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        crate::wire::token()
    );
    s.write_all(resp.as_bytes()).await?;
    buf.advance(head_end + 4);
    Ok(Some(buf))
}

/// Answers the complete frames in `buf` into `out`; true once the client sent close.
fn answer(buf: &mut BytesMut, out: &mut Vec<u8>) -> bool {
    while let Some(h) = FrameHeader::parse(buf) {
        if buf.len() < h.frame_len() {
            break;
        }
        let (len, m) = (h.len, h.mask.unwrap_or([0; 4]));
        let payload = &buf[h.header_len..h.frame_len()];
        let byte = |i: usize| payload[i] ^ m[i % 4];
        let mut closing = false;
        match h.opcode() {
            0x2 if len >= 40 && byte(0) == 0x05 => {
                // 2025 Submission Result: [0x83, 40, 0, 0, ACCEPTED 2, 0, 0, 0, id prefix].
                out.extend_from_slice(&[0x82, 40, 0x83, 40, 0, 0, 0x02, 0, 0, 0]);
                out.extend((8..40).map(byte));
            }
            0x2 if len >= 4 && byte(0) == 0x03 => {
                // Submission Result: [0x83, 0, 0, 0x01, first 32 bytes of the record].
                out.extend_from_slice(&[0x82, 36, 0x83, 0, 0, 0x01]);
                for i in 4..36 {
                    out.push(if i < len { byte(i) } else { 0 });
                }
            }
            0x8 => {
                out.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
                closing = true;
            }
            0x9 => {
                out.push(0x8A);
                out.push(len as u8);
                out.extend((0..len).map(byte));
            }
            _ => {}
        }
        buf.advance(h.frame_len());
        if closing {
            return true;
        }
    }
    false
}
