//! WebSocket on the wire, as raw frames: the Submission every client sends, frame parsing,
//! and the client side of a Mosaic session (upgrade, round trip, close handshake).

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Total size of one Submission message (type, u24 length, record) in the plain figures.
pub const SUBMISSION_BYTES: usize = 128;

/// Total size of one Submission message in the TLS data-path figure: 1 KiB.
pub const TLS_SUBMISSION_BYTES: usize = 1024;

/// Whether the run speaks Mosaic 2025 (`BENCH_MOSAIC=2025`) instead of the seed's 2024:
/// the token, the Submission (0x05, u24 length at [1:4], record at [8]) and its 40-byte
/// Submission Result (ACCEPTED 2 at [4]).
pub fn mosaic_2025() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("BENCH_MOSAIC").is_ok_and(|v| v == "2025"))
}

/// The subprotocol token of the run.
pub fn token() -> &'static str {
    if mosaic_2025() {
        "mosaic2025"
    } else {
        "mosaic2024"
    }
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The Submission every client sends: `[0x03, len u24 LE, record]`, 128 bytes in all.
pub fn submission_frame() -> Vec<u8> {
    submission_frame_of(SUBMISSION_BYTES)
}

/// A Submission of `bytes` in all (at least 36, so the Result echoes a whole id), as one
/// masked frame.
pub fn submission_frame_of(bytes: usize) -> Vec<u8> {
    let mut msg = if mosaic_2025() {
        // 2025: the length field is the whole message's; a record is at least its 48-byte id.
        let total = bytes.max(56);
        let mut m = vec![0x05];
        m.extend_from_slice(&(total as u32).to_le_bytes()[..3]);
        m.extend_from_slice(&[0; 4]);
        m
    } else {
        let record_len = bytes.max(36) - 4;
        let mut m = vec![0x03];
        m.extend_from_slice(&(record_len as u32).to_le_bytes()[..3]);
        m
    };
    let record_len = bytes.max(msg.len() + 48) - msg.len();
    msg.extend((0..record_len).map(|i| (i * 7 + 1) as u8));
    client_frame(0x2, &msg, [0x37, 0xfa, 0x21, 0x3d])
}

fn close_frame() -> Vec<u8> {
    client_frame(0x8, &1000u16.to_be_bytes(), [1, 2, 3, 4])
}

/// A parsed frame header.
pub struct FrameHeader {
    /// The FIN and opcode byte.
    pub first: u8,
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: usize,
    /// Header length: where the payload starts.
    pub header_len: usize,
}

impl FrameHeader {
    /// The header at the start of `buf`, once all of it is there.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        if buf.len() < 2 {
            return None;
        }
        let masked = buf[1] & 0x80 != 0;
        let (len, mut pos) = match buf[1] & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return None;
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        let mask = if masked {
            if buf.len() < pos + 4 {
                return None;
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        Some(FrameHeader {
            first: buf[0],
            mask,
            len,
            header_len: pos,
        })
    }

    pub fn opcode(&self) -> u8 {
        self.first & 0x0F
    }

    /// Header and payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.len
    }
}

/// Makes room for 16 KiB more in `buf` when less than `min_free` bytes are left.
pub fn reserve(buf: &mut BytesMut, min_free: usize) {
    if buf.capacity() - buf.len() < min_free {
        buf.reserve(16 * 1024);
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
pub struct Replies {
    pub results: usize,
    pub closed: bool,
}

/// Consumes complete server frames from `buf`; counts Submission Results.
pub fn take_replies(buf: &mut BytesMut) -> io::Result<Replies> {
    let mut r = Replies::default();
    while let Some(h) = FrameHeader::parse(buf) {
        if buf.len() < h.frame_len() {
            break;
        }
        match h.opcode() {
            0x2 => {
                let p = h.header_len;
                let ok = if mosaic_2025() {
                    h.len == 40 && buf[p] == 0x83 && buf[p + 4] == 0x02
                } else {
                    h.len == 36 && buf[p] == 0x83 && buf[p + 3] == 0x01
                };
                if !ok {
                    return Err(io::Error::other("unexpected reply"));
                }
                r.results += 1;
            }
            0x8 => r.closed = true,
            _ => {}
        }
        buf.advance(h.frame_len());
        if r.closed {
            break;
        }
    }
    Ok(r)
}

fn upgrade_request(host: &str) -> String {
    let key = tungstenite::handshake::client::generate_key();
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        token()
    )
}

/// Sends the upgrade and reads the 101; returns bytes that followed the response head.
async fn ws_upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
) -> io::Result<BytesMut> {
    s.write_all(upgrade_request(host).as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::other("EOF during upgrade"));
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = &buf[..end];
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
            if !lower.contains(&format!("sec-websocket-protocol: {}", token())) {
                return Err(io::Error::other("not the run's Mosaic token in the 101"));
            }
            buf.advance(end + 4);
            return Ok(buf);
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
    }
}

/// Connects and upgrades; returns the stream and bytes that followed the 101.
pub async fn connect_ws(addr: SocketAddr) -> io::Result<(TcpStream, BytesMut)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let left = ws_upgrade(&mut s, &addr.to_string()).await?;
    Ok((s, left))
}

/// A `wss://` client stream.
pub type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects, does the TLS 1.3 handshake and upgrades; returns the stream and bytes that
/// followed the 101.
pub async fn connect_wss(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
) -> io::Result<(TlsClient, BytesMut)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = tls.connect(localhost(), tcp).await?;
    let left = ws_upgrade(&mut s, &addr.to_string()).await?;
    Ok((s, left))
}

/// The name every TLS listener's certificate is for.
fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("static name")
}

/// Sends one Submission and waits for its result.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    frame: &[u8],
) -> io::Result<()> {
    s.write_all(frame).await?;
    loop {
        let r = take_replies(buf)?;
        if r.results > 0 {
            return Ok(());
        }
        if r.closed {
            return Err(io::Error::other("closed by peer"));
        }
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::other("EOF"));
        }
    }
}

/// The close handshake from the client side: send close, read until the peer's close or EOF.
pub async fn ws_close<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> io::Result<()> {
    s.write_all(&close_frame()).await?;
    loop {
        if take_replies(buf)?.closed {
            break;
        }
        buf.reserve(4096);
        if s.read_buf(buf).await? == 0 {
            break;
        }
    }
    let _ = s.shutdown().await;
    Ok(())
}

/// One short session: connect (+ TLS when `tls` is given), upgrade, one round trip, close.
pub async fn one_connection(
    addr: SocketAddr,
    tls: Option<&tokio_rustls::TlsConnector>,
    frame: &[u8],
) -> io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let host = addr.to_string();
    match tls {
        None => session(tcp, &host, frame).await,
        Some(c) => {
            let s = c.connect(localhost(), tcp).await?;
            session(s, &host, frame).await
        }
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    frame: &[u8],
) -> io::Result<()> {
    let mut buf = ws_upgrade(&mut s, host).await?;
    round_trip(&mut s, &mut buf, frame).await?;
    ws_close(&mut s, &mut buf).await
}
