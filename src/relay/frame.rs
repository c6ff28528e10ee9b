//! Incremental RFC 6455 frame-header parser over borrowed bytes.
//!
//! The pump never re-frames: it forwards the peer's bytes as they are. This parser only
//! tells it where each frame header starts and ends, what the header says, and where the
//! payload ends, so the pump can judge a frame before forwarding it and inject its own
//! frames between two peer frames.

/// WebSocket opcodes (RFC 6455 §5.2); reserved values are kept apart so callers must decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0: continues a fragmented data message.
    Continuation,
    /// 0x1: UTF-8 text.
    Text,
    /// 0x2: binary.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
    /// 0x3-0x7, 0xB-0xF: reserved, never valid without an extension.
    Reserved(u8),
}

impl Opcode {
    fn from_nibble(b: u8) -> Opcode {
        match b {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            other => Opcode::Reserved(other),
        }
    }

    /// Control frames (close, ping, pong, reserved 0xB-0xF) may interleave with fragments.
    pub fn is_control(self) -> bool {
        match self {
            Opcode::Close | Opcode::Ping | Opcode::Pong => true,
            Opcode::Reserved(b) => b >= 0x8,
            _ => false,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// RSV1..3 bits as the low three bits.
    pub rsv: u8,
    /// The opcode.
    pub opcode: Opcode,
    /// Masking key, present on client-to-server frames.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// Length of the header itself in bytes (2..=14).
    pub header_len: usize,
}

/// Why a header cannot be a valid frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A 64-bit length with the most significant bit set (RFC 6455 §5.2).
    LengthOverflow,
    /// An extended length that could have been encoded shorter.
    NonMinimalLength,
}

/// Parses one frame header from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7F;
    let (payload_len, mut pos) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if len < 126 {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(HeaderError::LengthOverflow);
            }
            if len <= 0xFFFF {
                return Err(HeaderError::NonMinimalLength);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x07,
        opcode: Opcode::from_nibble(b0 & 0x0F),
        mask,
        payload_len,
        header_len: pos,
    }))
}

/// Copies `src` (payload bytes starting at payload offset `offset`) into `dst`, unmasking.
///
/// Only the few bytes the gateway must judge are ever unmasked; the forwarded bytes stay
/// masked as the client sent them.
pub fn unmask_into(dst: &mut [u8], src: &[u8], mask: Option<[u8; 4]>, offset: u64) {
    for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
        *d = match mask {
            Some(m) => s ^ m[((offset + i as u64) % 4) as usize],
            None => *s,
        };
    }
}

/// Encodes a frame the gateway writes itself: unmasked towards clients, masked upstream.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | (opcode & 0x0F));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Encodes a close frame with a status code and a short reason.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control frame payloads are limited to 125 bytes; reasons are ours and short.
    let room = 123.min(reason.len());
    payload.extend_from_slice(&reason.as_bytes()[..room]);
    encode_frame(out, 0x8, &payload, mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_unmasked_header() {
        let h = parse_header(&[0x82, 0x05, 1, 2, 3]).unwrap().unwrap();
        assert!(h.fin);
        assert_eq!(h.opcode, Opcode::Binary);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.header_len, 2);
        assert_eq!(h.mask, None);
    }

    #[test]
    fn extended_lengths_and_mask() {
        let mut f = vec![0x02, 0x80 | 126, 0x01, 0x00, 9, 8, 7, 6];
        let h = parse_header(&f).unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!(h.opcode, Opcode::Binary);
        assert_eq!(h.payload_len, 256);
        assert_eq!(h.header_len, 8);
        assert_eq!(h.mask, Some([9, 8, 7, 6]));
        f.truncate(7);
        assert_eq!(parse_header(&f), Ok(None));
        let big = [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(parse_header(&big).unwrap().unwrap().payload_len, 65536);
        assert_eq!(
            parse_header(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(HeaderError::LengthOverflow)
        );
        assert_eq!(
            parse_header(&[0x82, 126, 0, 5]),
            Err(HeaderError::NonMinimalLength)
        );
    }

    #[test]
    fn encode_roundtrip_masked() {
        let mut out = Vec::new();
        encode_frame(&mut out, 2, &[0x82, 1, 2, 0x30], Some([1, 2, 3, 4]));
        let h = parse_header(&out).unwrap().unwrap();
        let mut plain = [0u8; 4];
        unmask_into(&mut plain, &out[h.header_len..], h.mask, 0);
        assert_eq!(plain, [0x82, 1, 2, 0x30]);
        let mut close = Vec::new();
        encode_close(&mut close, 1001, "going away", None);
        assert_eq!(&close[..4], &[0x88, 12, 0x03, 0xE9]);
    }
}
