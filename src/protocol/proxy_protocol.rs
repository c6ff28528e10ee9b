//! PROXY protocol headers (HAProxy's spec, version 1 text and version 2 binary).
//!
//! A pure and total parser: bytes in, a decision out, no I/O and no panics on any input.
//! It is incremental in the only way a listener needs: feed it everything read so far and
//! it says `Incomplete` (read more), `Complete` (the header and how many bytes it took; the
//! rest belongs to the stream, e.g. a TLS ClientHello) or an error (close the connection).
//!
//! Guarantees, checked by the fuzz target `proxy_protocol` and the tests below:
//! * `Incomplete` is only returned while fewer than [`V1_MAX_LEN`] / [`V2_MAX_LEN`] bytes
//!   were given, so a peer can never make the listener buffer more than that;
//! * `Complete { consumed }` never exceeds the bytes given;
//! * the answer on a prefix never contradicts the answer on the whole: an error on a prefix
//!   stays an error, a `Complete` on a prefix stays the same `Complete`, and every proper
//!   prefix of a valid header is `Incomplete`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 text signature, `PROXY ` (with its space).
pub const V1_SIGNATURE: &[u8; 6] = b"PROXY ";

/// The v2 binary signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\x00\r\nQUIT\n";

/// Longest v1 header, CRLF included (the spec's worst case, a full `TCP6` line).
pub const V1_MAX_LEN: usize = 107;

/// Largest v2 address-and-TLV block accepted.
///
/// The spec allows up to 65535 bytes after the 16-byte header; the gateway refuses anything
/// over 512 (an error, not `Incomplete`) so a trusted-but-misbehaving proxy cannot make it
/// hold 64 KiB per connection before TLS starts. 512 covers both address families (at most
/// 216 bytes, for AF_UNIX) plus the usual TLVs (ALPN, authority, unique id, SSL summary).
pub const V2_MAX_PAYLOAD: usize = 512;

/// Longest v2 header accepted: the fixed 16 bytes plus [`V2_MAX_PAYLOAD`].
pub const V2_MAX_LEN: usize = 16 + V2_MAX_PAYLOAD;

/// Longest header of either version: a listener never needs to buffer more than this.
pub const MAX_HEADER_LEN: usize = V2_MAX_LEN;

/// What the sending proxy says the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// v2 LOCAL: the proxy's own connection (health check); use the real endpoints.
    Local,
    /// A relayed connection (v1 always, v2 PROXY).
    Proxy,
}

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Protocol version, 1 (text) or 2 (binary).
    pub version: u8,
    /// LOCAL or PROXY.
    pub command: Command,
    /// The original client's address; `None` for v1 `UNKNOWN`, v2 LOCAL, AF_UNSPEC, AF_UNIX.
    pub source: Option<SocketAddr>,
    /// The address the client connected to; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
}

/// The parser's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid prefix of a header: read more bytes and call again with all of them.
    Incomplete,
    /// A whole header; the first `consumed` bytes were it, the rest is the stream.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Length of the header in bytes (≤ the input's length).
        consumed: usize,
    },
}

/// Why bytes are not a PROXY header the gateway accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// Starts with neither the v1 nor the v2 signature.
    NotProxy,
    /// v1: no CRLF within the first 107 bytes.
    V1TooLong,
    /// v1: not `PROXY TCP4|TCP6|UNKNOWN …\r\n` with single spaces and four fields.
    V1Syntax,
    /// v1: an address that is not a valid address of the line's family.
    V1BadAddress,
    /// v1: a port that is not a decimal 0-65535 without sign or leading zeros.
    V1BadPort,
    /// v2: the version nibble is not 2.
    V2Version,
    /// v2: the command nibble is neither LOCAL nor PROXY.
    V2Command,
    /// v2: an address family / transport byte the spec does not define, or UDP.
    V2Family,
    /// v2: the address/TLV block is longer than [`V2_MAX_PAYLOAD`].
    V2TooLarge,
    /// v2: the block is shorter than the family's addresses.
    V2ShortAddresses,
    /// v2: a TLV runs past the end of the block.
    V2BadTlv,
}

impl ProxyError {
    /// A short stable label, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ProxyError::NotProxy => "not_proxy",
            ProxyError::V1TooLong => "v1_too_long",
            ProxyError::V1Syntax => "v1_syntax",
            ProxyError::V1BadAddress => "v1_bad_address",
            ProxyError::V1BadPort => "v1_bad_port",
            ProxyError::V2Version => "v2_version",
            ProxyError::V2Command => "v2_command",
            ProxyError::V2Family => "v2_family",
            ProxyError::V2TooLarge => "v2_too_large",
            ProxyError::V2ShortAddresses => "v2_short_addresses",
            ProxyError::V2BadTlv => "v2_bad_tlv",
        }
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            ProxyError::NotProxy => "no PROXY protocol signature",
            ProxyError::V1TooLong => "PROXY v1 line longer than 107 bytes",
            ProxyError::V1Syntax => "malformed PROXY v1 line",
            ProxyError::V1BadAddress => "bad address in PROXY v1 line",
            ProxyError::V1BadPort => "bad port in PROXY v1 line",
            ProxyError::V2Version => "PROXY v2 header with a version other than 2",
            ProxyError::V2Command => "PROXY v2 header with an unknown command",
            ProxyError::V2Family => "PROXY v2 header with an unsupported address family",
            ProxyError::V2TooLarge => "PROXY v2 header longer than the gateway accepts",
            ProxyError::V2ShortAddresses => "PROXY v2 address block too short",
            ProxyError::V2BadTlv => "PROXY v2 header with a malformed TLV",
        };
        f.write_str(what)
    }
}

impl std::error::Error for ProxyError {}

/// Whether `buf` starts like a PROXY header: `None` while too few bytes tell either way.
pub fn looks_like_proxy(buf: &[u8]) -> Option<bool> {
    let v1 = prefix_state(buf, V1_SIGNATURE);
    let v2 = prefix_state(buf, V2_SIGNATURE);
    match (v1, v2) {
        (Prefix::Matched, _) | (_, Prefix::Matched) => Some(true),
        (Prefix::Mismatch, Prefix::Mismatch) => Some(false),
        _ => None,
    }
}

enum Prefix {
    /// `buf` starts with the whole signature.
    Matched,
    /// `buf` is a proper prefix of the signature.
    Partial,
    /// `buf` differs from the signature somewhere.
    Mismatch,
}

fn prefix_state(buf: &[u8], sig: &[u8]) -> Prefix {
    let n = buf.len().min(sig.len());
    if buf[..n] != sig[..n] {
        Prefix::Mismatch
    } else if n == sig.len() {
        Prefix::Matched
    } else {
        Prefix::Partial
    }
}

/// Parses a PROXY v1 or v2 header from the start of `buf` (everything read so far).
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// The three v1 protocol words.
const V1_PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match prefix_state(buf, V1_SIGNATURE) {
        Prefix::Mismatch => return Err(ProxyError::NotProxy),
        Prefix::Partial => return Ok(Parsed::Incomplete),
        Prefix::Matched => {}
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    // A CR must be followed by LF and an LF preceded by CR: the first CR ends the line.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        check_v1_partial(&buf[V1_SIGNATURE.len()..])?;
        return Ok(Parsed::Incomplete);
    };
    if window[cr] == b'\n' {
        return Err(ProxyError::V1Syntax);
    }
    match window.get(cr + 1) {
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Syntax),
        None if buf.len() >= V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        None => {
            check_v1_partial(&buf[V1_SIGNATURE.len()..cr])?;
            return Ok(Parsed::Incomplete);
        }
    }
    let header = parse_v1_line(&buf[V1_SIGNATURE.len()..cr])?;
    Ok(Parsed::Complete {
        header,
        consumed: cr + 2,
    })
}

/// Rejects early a partial v1 line that no continuation could make valid.
///
/// Only rules that `parse_v1_line` also enforces on the finished line are applied, so an
/// early error is never one the whole line would not have produced.
fn check_v1_partial(rest: &[u8]) -> Result<(), ProxyError> {
    let word_end = rest.iter().position(|&b| b == b' ');
    let word = &rest[..word_end.unwrap_or(rest.len())];
    let known = match word_end {
        Some(_) => V1_PROTOCOLS.contains(&word),
        None => V1_PROTOCOLS.iter().any(|p| p.starts_with(word)),
    };
    if !known {
        return Err(ProxyError::V1Syntax);
    }
    if word != b"UNKNOWN" {
        if let Some(end) = word_end {
            let fields = &rest[end + 1..];
            if !fields.iter().all(|&b| b == b' ' || v1_field_byte(b)) {
                return Err(ProxyError::V1Syntax);
            }
            // Address, address, port, port: never more than three separators.
            if fields.iter().filter(|&&b| b == b' ').count() > 3 {
                return Err(ProxyError::V1Syntax);
            }
        }
    }
    Ok(())
}

/// Bytes that may appear in a TCP4/TCP6 address or port field.
fn v1_field_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'.' || b == b':'
}

/// Parses what follows `PROXY ` up to (not including) the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let mut parts = line.split(|&b| b == b' ');
    let proto = parts.next().unwrap_or(b"");
    let unknown = ProxyHeader {
        version: 1,
        command: Command::Proxy,
        source: None,
        destination: None,
    };
    let v6 = match proto {
        // "the receiver must ignore anything presented before the CRLF is found"
        b"UNKNOWN" => return Ok(unknown),
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(ProxyError::V1Syntax),
    };
    let fields: [&[u8]; 4] = [
        parts.next().ok_or(ProxyError::V1Syntax)?,
        parts.next().ok_or(ProxyError::V1Syntax)?,
        parts.next().ok_or(ProxyError::V1Syntax)?,
        parts.next().ok_or(ProxyError::V1Syntax)?,
    ];
    // Empty fields mean doubled, leading or trailing spaces.
    if parts.next().is_some() || fields.iter().any(|f| f.is_empty()) {
        return Err(ProxyError::V1Syntax);
    }
    if !fields.iter().all(|f| f.iter().all(|&b| v1_field_byte(b))) {
        return Err(ProxyError::V1Syntax);
    }
    let src = v1_addr(fields[0], v6)?;
    let dst = v1_addr(fields[1], v6)?;
    let sport = v1_port(fields[2])?;
    let dport = v1_port(fields[3])?;
    Ok(ProxyHeader {
        version: 1,
        command: Command::Proxy,
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    })
}

fn v1_addr(field: &[u8], v6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1BadAddress)?;
    if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    }
    .map_err(|_| ProxyError::V1BadAddress)
}

fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let digits_only = field.iter().all(u8::is_ascii_digit);
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    if !digits_only || leading_zero || field.len() > 5 {
        return Err(ProxyError::V1BadPort);
    }
    let value = field
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1BadPort)
}

/// v2 address family and transport byte values (high nibble family, low nibble transport).
const V2_UNSPEC: u8 = 0x00;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNIX_STREAM: u8 = 0x31;
const V2_UNIX_DGRAM: u8 = 0x32;

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match prefix_state(buf, V2_SIGNATURE) {
        Prefix::Mismatch => return Err(ProxyError::NotProxy),
        Prefix::Partial => return Ok(Parsed::Incomplete),
        Prefix::Matched => {}
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let command = match ver_cmd & 0x0F {
        0x0 => Command::Local,
        0x1 => Command::Proxy,
        _ => return Err(ProxyError::V2Command),
    };
    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL ignores the family byte ("the receiver must ... discard the protocol block
    // including the family"); PROXY must name a defined one.
    if command == Command::Proxy
        && !matches!(
            fam,
            V2_UNSPEC | V2_TCP4 | V2_TCP6 | V2_UNIX_STREAM | V2_UNIX_DGRAM
        )
    {
        // UDP4/UDP6 included: datagram addresses for a stream connection make no sense.
        return Err(ProxyError::V2Family);
    }
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLarge);
    }
    let addr_len = match (command, fam) {
        (Command::Proxy, V2_TCP4) => 12,
        (Command::Proxy, V2_TCP6) => 36,
        (Command::Proxy, V2_UNIX_STREAM | V2_UNIX_DGRAM) => 216,
        _ => 0,
    };
    if len < addr_len {
        return Err(ProxyError::V2ShortAddresses);
    }
    let total = 16 + len;
    let Some(block) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete);
    };
    let unknown = ProxyHeader {
        version: 2,
        command,
        source: None,
        destination: None,
    };
    if command == Command::Local {
        return Ok(Parsed::Complete {
            header: unknown,
            consumed: total,
        });
    }
    check_tlvs(block.get(addr_len..).unwrap_or(&[]))?;
    let header = match fam {
        V2_TCP4 => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[o],
                    block[o + 1],
                    block[o + 2],
                    block[o + 3],
                ))
            };
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), be16(block, 8))),
                destination: Some(SocketAddr::new(ip(4), be16(block, 10))),
                ..unknown
            }
        }
        V2_TCP6 => {
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&block[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), be16(block, 32))),
                destination: Some(SocketAddr::new(ip(16), be16(block, 34))),
                ..unknown
            }
        }
        _ => unknown,
    };
    Ok(Parsed::Complete {
        header,
        consumed: total,
    })
}

/// A big-endian u16 at `o`; only called with `o + 2 <= block.len()` (checked via addr_len).
fn be16(block: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([block[o], block[o + 1]])
}

/// Walks the TLVs after the addresses: each is type (1), length (2, big-endian), value.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let [_, hi, lo, ..] = *tlvs else {
            return Err(ProxyError::V2BadTlv);
        };
        let end = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        tlvs = tlvs.get(end..).ok_or(ProxyError::V2BadTlv)?;
    }
    Ok(())
}

/// Why the PROXY header could not be read off a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadHeaderError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer closed before the header was complete.
    #[error("connection closed {0} the PROXY header")]
    Closed(&'static str),
    /// The bytes are not a PROXY header the gateway accepts.
    #[error(transparent)]
    Invalid(#[from] ProxyError),
}

/// Reads the PROXY v1/v2 header a trusted load balancer sends before anything else and
/// returns the original client's address (`None` for LOCAL/UNKNOWN: the peer is the client).
///
/// It peeks first and then consumes exactly the header, so the socket stays a plain
/// `TcpStream` for TLS and HTTP (and for the relay's zero-copy unwrapping).
pub async fn read_header(
    tcp: &tokio::net::TcpStream,
) -> Result<Option<SocketAddr>, ReadHeaderError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut seen = 0;
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(ReadHeaderError::Closed("before"));
        }
        match parse(&buf[..n])? {
            Parsed::Complete { header, consumed } => {
                consume(tcp, consumed).await?;
                return Ok(header.source);
            }
            Parsed::Incomplete => {
                if n == seen {
                    // peek returns at once while the partial header sits in the buffer;
                    // wait a little for the rest instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                seen = n;
            }
        }
    }
}

/// Reads and drops exactly `len` bytes (the header that was peeked).
async fn consume(tcp: &tokio::net::TcpStream, len: usize) -> Result<(), ReadHeaderError> {
    let mut sink = vec![0u8; len];
    let mut got = 0;
    while got < len {
        tcp.readable().await?;
        match tcp.try_read(&mut sink[got..]) {
            Ok(0) => return Err(ReadHeaderError::Closed("inside")),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, consumed }) => (header, consumed),
            other => panic!("expected Complete for {buf:?}, got {other:?}"),
        }
    }

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    /// Every proper prefix of a valid header is Incomplete, the whole is Complete, and
    /// bytes after it are left alone.
    fn check_prefixes(header: &[u8]) {
        for k in 0..header.len() {
            assert_eq!(
                parse(&header[..k]),
                Ok(Parsed::Incomplete),
                "prefix {k} of {header:?}"
            );
        }
        let whole = parse(header).unwrap();
        let mut more = header.to_vec();
        more.extend_from_slice(b"\x16\x03\x01 the stream");
        assert_eq!(parse(&more).unwrap(), whole);
    }

    fn v2(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn v1_spec_examples() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let (h, n) = complete(line);
        assert_eq!(n, line.len());
        assert_eq!(h.version, 1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source, sa("192.168.0.1:56324"));
        assert_eq!(h.destination, sa("192.168.0.11:443"));
        check_prefixes(line);

        let line = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
        let (h, _) = complete(line);
        assert_eq!(h.source, sa("[2001:db8::1]:65535"));
        assert_eq!(h.destination, sa("[::1]:0"));
        check_prefixes(line);

        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ] {
            let (h, n) = complete(line);
            assert_eq!((h.source, h.destination, n), (None, None, line.len()));
            check_prefixes(line);
        }
    }

    #[test]
    fn v1_worst_case_fits_and_longer_is_refused() {
        let line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(line.len(), 104); // the spec's TCP6 maximum; UNKNOWN may use all 107
        let mut unknown = b"PROXY UNKNOWN ".to_vec();
        unknown.resize(V1_MAX_LEN - 2, b'x');
        unknown.extend_from_slice(b"\r\n");
        check_prefixes(&unknown);
        check_prefixes(line);
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert_eq!(parse(&long[..V1_MAX_LEN - 1]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        long.truncate(V1_MAX_LEN - 1);
        long.push(b'\r');
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_strictness() {
        let bad: &[(&[u8], ProxyError)] = &[
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx", ProxyError::V1Syntax),
            (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyError::V1Syntax),
            (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", ProxyError::V1Syntax),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", ProxyError::V1Syntax),
            (b"PROXY UNKNOWNX\r\n", ProxyError::V1Syntax),
            (b"PROXY \r\n", ProxyError::V1Syntax),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", ProxyError::V1BadAddress),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ProxyError::V1BadAddress),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
                ProxyError::V1BadAddress,
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                ProxyError::V1BadAddress,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                ProxyError::V1BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
                ProxyError::V1BadPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999999\r\n",
                ProxyError::V1BadPort,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 a 2\r\n", ProxyError::V1BadPort),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", ProxyError::V1Syntax),
            (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ProxyError::V1Syntax),
            (b"PROXZ", ProxyError::NotProxy),
            (b"GET / HTTP/1.1\r\n", ProxyError::NotProxy),
        ];
        for (input, want) in bad {
            assert_eq!(
                parse(input),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Early refusal of lines no continuation can save.
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 g"), Err(ProxyError::V1Syntax));
        assert_eq!(parse(b"PROXY X"), Err(ProxyError::V1Syntax));
        assert_eq!(parse(b"PROXY TCP4 1 2 3 4 "), Err(ProxyError::V1Syntax));
        assert_eq!(parse(b"PROXY TCP"), Ok(Parsed::Incomplete));
        // Port 0 and a single zero are fine.
        let (h, _) = complete(b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n");
        assert_eq!(h.source, sa("0.0.0.0:0"));
        assert_eq!(h.destination, sa("255.255.255.255:65535"));
    }

    #[test]
    fn v2_tcp4_tcp6_with_tlvs() {
        let mut block = vec![192, 168, 0, 1, 10, 0, 0, 1, 0xDC, 0x04, 0x01, 0xBB];
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN
        block.extend_from_slice(&[0x04, 0x00, 0x00]); // NOOP, empty
        let hdr = v2(0x21, 0x11, &block);
        let (h, n) = complete(&hdr);
        assert_eq!(n, hdr.len());
        assert_eq!(h.version, 2);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source, sa("192.168.0.1:56324"));
        assert_eq!(h.destination, sa("10.0.0.1:443"));
        check_prefixes(&hdr);

        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x30, 0x39, 0x20, 0xFB]);
        let hdr = v2(0x21, 0x21, &block);
        let (h, _) = complete(&hdr);
        assert_eq!(h.source, sa("[2001:db8::7]:12345"));
        assert_eq!(h.destination, sa("[::1]:8443"));
        check_prefixes(&hdr);
    }

    #[test]
    fn v2_local_unspec_unix() {
        // LOCAL: addresses ignored whatever the family says, even garbage.
        for (fam, block) in [(0x00u8, vec![]), (0x11, vec![1, 2, 3]), (0xFF, vec![0; 40])] {
            let hdr = v2(0x20, fam, &block);
            let (h, n) = complete(&hdr);
            assert_eq!(h.command, Command::Local);
            assert_eq!((h.source, h.destination, n), (None, None, hdr.len()));
            check_prefixes(&hdr);
        }
        let hdr = v2(0x21, 0x00, &[]);
        assert_eq!(complete(&hdr).0.source, None);
        let hdr = v2(0x21, 0x31, &[0; 216]);
        assert_eq!(complete(&hdr).0.source, None);
        check_prefixes(&hdr);
    }

    #[test]
    fn v2_refusals() {
        let tcp4 = [1u8; 12];
        assert_eq!(parse(&v2(0x11, 0x11, &tcp4)), Err(ProxyError::V2Version));
        assert_eq!(parse(&v2(0x22, 0x11, &tcp4)), Err(ProxyError::V2Command));
        assert_eq!(parse(&v2(0x21, 0x12, &tcp4)), Err(ProxyError::V2Family));
        assert_eq!(parse(&v2(0x21, 0x13, &tcp4)), Err(ProxyError::V2Family));
        assert_eq!(parse(&v2(0x21, 0x41, &tcp4)), Err(ProxyError::V2Family));
        assert_eq!(
            parse(&v2(0x21, 0x11, &tcp4[..11])),
            Err(ProxyError::V2ShortAddresses)
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyError::V2ShortAddresses)
        );
        let mut bad_tlv = tcp4.to_vec();
        bad_tlv.extend_from_slice(&[0x01, 0x00, 0x05, b'x']);
        assert_eq!(parse(&v2(0x21, 0x11, &bad_tlv)), Err(ProxyError::V2BadTlv));
        let mut short_tlv = tcp4.to_vec();
        short_tlv.extend_from_slice(&[0x01, 0x00]);
        assert_eq!(
            parse(&v2(0x21, 0x11, &short_tlv)),
            Err(ProxyError::V2BadTlv)
        );
        // Too large is refused from the length field alone, before the block arrives.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x02, 0x01]);
        assert_eq!(parse(&big), Err(ProxyError::V2TooLarge));
        let mut full = vec![0u8; 12];
        full.extend_from_slice(&[0x04, 0x01, 0xF1]); // NOOP TLV filling the rest: 3 + 497
        full.resize(V2_MAX_PAYLOAD, 0);
        let ok = v2(0x21, 0x11, &full);
        assert_eq!(complete(&ok).1, V2_MAX_LEN);
        // Signature mismatches.
        assert_eq!(parse(b"\r\n\r\n\x00\r\nQUIT\r"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\r\nGET"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn every_truncation_and_garbage_is_total() {
        let mut samples: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            v2(0x21, 0x11, &[9; 12]),
            v2(0x21, 0x21, &[7; 40]),
        ];
        // A cheap deterministic byte soup (xorshift), plus mutations of the samples.
        let mut x: u32 = 0x9E37_79B9;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for i in 0..300 {
            let mut s = samples[i % 3].clone();
            let at = next() as usize % s.len();
            s[at] = next() as u8;
            samples.push(s);
            samples.push((0..(next() % 64)).map(|_| next() as u8).collect());
        }
        for s in &samples {
            let whole = parse(s);
            for k in 0..=s.len() {
                let p = parse(&s[..k]);
                if let Ok(Parsed::Complete { consumed, .. }) = p {
                    assert!(consumed <= k);
                    assert_eq!(p, whole);
                }
                if p.is_err() {
                    assert!(whole.is_err(), "prefix {k} of {s:?} errs, whole does not");
                }
            }
        }
    }

    #[test]
    fn looks_like() {
        assert_eq!(looks_like_proxy(b""), None);
        assert_eq!(looks_like_proxy(b"PRO"), None);
        assert_eq!(looks_like_proxy(b"PROXY "), Some(true));
        assert_eq!(looks_like_proxy(b"PROXY"), None);
        assert_eq!(looks_like_proxy(b"\r\n\r\n\x00"), None);
        assert_eq!(looks_like_proxy(V2_SIGNATURE), Some(true));
        assert_eq!(looks_like_proxy(b"\x16\x03\x01\x02\x00"), Some(false));
        assert_eq!(looks_like_proxy(b"GET / HTTP/1.1"), Some(false));
        assert_eq!(looks_like_proxy(b"PROXZ"), Some(false));
        assert_eq!(looks_like_proxy(b"\r\n\r\n\x01"), Some(false));
    }
}
