//! A logging upstream: a real HTTP/1.1 server on 127.0.0.1 that records every request head
//! it is sent (method, target, header lines as they arrived) and answers as the scenario
//! says: a WebSocket 101 (then holds the socket), a plain 200, or any refusal status, as a
//! relay behind a proxy would (nginx's 400 for a large header, a 403 ban, a 429 limit).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request head as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of `name` (any case).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a header `name` (exact spelling, any case) arrived.
    pub fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }
}

/// How the upstream answers a request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// 101 for upgrades (the first offered subprotocol chosen), 200 `ok` otherwise.
    Serve,
    /// This status, with a short body, for every request.
    Status(u16),
    /// 400 to a request head longer than this many bytes (nginx's answer to a header over
    /// its buffer), served otherwise.
    RefuseHeadsOver(usize),
    /// Reads the request and its body, and never answers.
    Never,
}

pub struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(answer: Answer) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, answer, log.clone()));
            }
        });
        Recorder { addr, seen, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request head received so far from clients (the gateway's own health checks
    /// left out).
    pub fn seen(&self) -> Vec<Seen> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter()
            .filter(|s| s.values("user-agent") != ["mosaic-gateway-health-check"])
            .collect()
    }

    /// The one request head received so far.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "requests seen: {seen:?}");
        seen.into_iter().next().unwrap()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, answer: Answer, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let seen = parse(&head);
        let upgrade = seen
            .values("upgrade")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("websocket"));
        let body_len: usize = seen
            .values("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        log.lock().unwrap().push(seen.clone());
        let answer = match answer {
            Answer::RefuseHeadsOver(n) if head.len() > n => Answer::Status(400),
            other => other,
        };
        let reply = match answer {
            Answer::Status(code) => format!(
                "HTTP/1.1 {code} Refused\r\ncontent-length: 8\r\ncontent-type: text/plain\r\n\r\nrefused\n"
            ),
            Answer::Serve | Answer::RefuseHeadsOver(_) if upgrade => switching(&seen),
            Answer::Serve | Answer::RefuseHeadsOver(_) | Answer::Never => {
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\nx-relay-hop: yes\r\n\r\nok\n".to_string()
            }
        };
        // Take in the whole body of a plain request before answering it (counted, not
        // kept: an upload may be large).
        let chunked = seen
            .values("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let mut left = body_len;
        loop {
            if chunked {
                if let Some(end) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                    buf.drain(..end + 5);
                    break;
                }
                let keep = buf.len().saturating_sub(4);
                buf.drain(..keep);
            } else {
                let n = left.min(buf.len());
                buf.drain(..n);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if matches!(answer, Answer::Never) {
            std::future::pending::<()>().await;
        }
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if upgrade {
            // Hold the WebSocket open until the client goes.
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

fn switching(seen: &Seen) -> String {
    let key = seen
        .values("sec-websocket-key")
        .first()
        .copied()
        .unwrap_or("");
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = seen
        .values("sec-websocket-protocol")
        .first()
        .and_then(|v| v.split(',').next())
    {
        out.push_str(&format!("Sec-WebSocket-Protocol: {}\r\n", p.trim()));
    }
    out.push_str("\r\n");
    out
}

fn parse(head: &str) -> Seen {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    Seen {
        method,
        target,
        headers,
    }
}
