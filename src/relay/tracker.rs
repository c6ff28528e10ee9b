//! Frame tracking for one direction of a proxied connection.
//!
//! The tracker walks the bytes a peer sent, frame header by frame header, and says how many
//! of them may be forwarded now. On nostr connections it only tracks boundaries (so the
//! gateway can inject close frames between frames) and counts messages. On Mosaic
//! connections it also applies the message rules: a message's first frame is held back
//! until its first bytes have been judged, and every frame header is checked against the
//! size cap and the length the layout requires before any of it is forwarded.

use crate::relay::frame::{parse_header, unmask_into, FrameHeader, Opcode};
use crate::relay::mosaic::{judge_head, Direction, HeadVerdict, QueryEvent, Validation, Violation};

/// Bytes a held Mosaic message head may span (interleaved control frames included) before
/// the peer is judged to be stalling the gateway.
const MAX_HELD_BYTES: usize = 64 * 1024;

/// The Mosaic rules applied to one direction.
#[derive(Debug, Clone, Copy)]
pub struct MosaicRules {
    /// Strict layouts or direction only.
    pub validation: Validation,
    /// Largest message allowed, in bytes.
    pub max_message_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
enum FrameState {
    Header,
    Payload {
        remaining: u64,
        offset: u64,
        mask: Option<[u8; 4]>,
        data: bool,
        fin: bool,
    },
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Bytes from the start of the buffer that may be forwarded now.
    pub safe: usize,
    /// A rule the peer broke; nothing from the offending frame is in `safe`.
    pub violation: Option<Violation>,
}

/// Tracks frames and, on Mosaic connections, judges messages in one direction.
#[derive(Debug)]
pub struct Tracker {
    dir: Direction,
    rules: Option<MosaicRules>,
    pos: usize,
    frame: FrameState,
    in_message: bool,
    msg_len: u64,
    head: [u8; 8],
    head_len: usize,
    judged: bool,
    expected_len: Option<u64>,
    hold_from: Option<usize>,
    close_seen: bool,
    messages: u64,
}

impl Tracker {
    /// A tracker for `dir`; `rules` is `None` for byte-transparent (nostr) connections.
    pub fn new(dir: Direction, rules: Option<MosaicRules>) -> Self {
        Tracker {
            dir,
            rules,
            pos: 0,
            frame: FrameState::Header,
            in_message: false,
            msg_len: 0,
            head: [0; 8],
            head_len: 0,
            judged: true,
            expected_len: None,
            hold_from: None,
            close_seen: false,
            messages: 0,
        }
    }

    /// Complete data messages seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether the peer has sent a close frame.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Whether everything forwarded so far ends at a frame boundary, so a control frame may
    /// be injected.
    pub fn at_frame_boundary(&self) -> bool {
        self.hold_from.is_some() || matches!(self.frame, FrameState::Header)
    }

    /// Whether everything forwarded so far ends at a message boundary, so a data message may
    /// be injected.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && (!self.in_message || self.hold_from.is_some())
    }

    /// Stops judging messages: once the gateway closed the connection it only needs to see
    /// the peer's close frame.
    pub fn make_transparent(&mut self) {
        self.rules = None;
        self.hold_from = None;
    }

    /// Tells the tracker that the first `n` bytes of the buffer were forwarded and dropped.
    pub fn consumed(&mut self, n: usize) {
        self.pos -= n;
        if let Some(h) = self.hold_from.as_mut() {
            *h -= n;
        }
    }

    fn check_header(&mut self, h: &FrameHeader, frame_start: usize) -> Result<(), Violation> {
        let is_data = !h.opcode.is_control();
        let Some(rules) = self.rules else {
            // Transparent mode: only track message boundaries; extensions may use RSV bits.
            if is_data {
                self.in_message = !h.fin;
            }
            return Ok(());
        };
        let masked_ok = match self.dir {
            Direction::ClientToUpstream => h.mask.is_some(),
            Direction::UpstreamToClient => h.mask.is_none(),
        };
        if !masked_ok || h.rsv != 0 || matches!(h.opcode, Opcode::Reserved(_)) {
            return Err(Violation::Framing);
        }
        if h.opcode.is_control() {
            return if !h.fin || h.payload_len > 125 {
                Err(Violation::Framing)
            } else {
                Ok(())
            };
        }
        match h.opcode {
            Opcode::Text if !self.in_message => return Err(Violation::TextMessage),
            Opcode::Text | Opcode::Binary if self.in_message => return Err(Violation::Framing),
            Opcode::Continuation if !self.in_message => return Err(Violation::Framing),
            Opcode::Binary => {
                self.in_message = true;
                self.msg_len = 0;
                self.head_len = 0;
                self.judged = false;
                self.expected_len = None;
                self.hold_from = Some(frame_start);
            }
            _ => {}
        }
        self.msg_len = self.msg_len.saturating_add(h.payload_len);
        if self.msg_len > rules.max_message_bytes {
            return Err(Violation::TooLarge);
        }
        self.check_expected(h.fin)
    }

    fn check_expected(&self, fin: bool) -> Result<(), Violation> {
        if !self.judged {
            return Ok(());
        }
        match self.expected_len {
            Some(e) if self.msg_len > e || (fin && self.msg_len != e) => Err(Violation::Malformed),
            _ => Ok(()),
        }
    }

    /// Scans newly arrived bytes of `buf` (everything after what earlier scans covered).
    pub fn scan(&mut self, buf: &[u8], mut on_query: impl FnMut(QueryEvent)) -> Scan {
        match self.scan_inner(buf, &mut on_query) {
            Ok(()) => Scan {
                safe: self.hold_from.unwrap_or(self.pos),
                violation: None,
            },
            Err((v, frame_start)) => Scan {
                safe: self.hold_from.unwrap_or(frame_start),
                violation: Some(v),
            },
        }
    }

    fn scan_inner(
        &mut self,
        buf: &[u8],
        on_query: &mut impl FnMut(QueryEvent),
    ) -> Result<(), (Violation, usize)> {
        while self.pos < buf.len() {
            match self.frame {
                FrameState::Header => {
                    let start = self.pos;
                    let h = match parse_header(&buf[start..]) {
                        Ok(Some(h)) => h,
                        Ok(None) => break,
                        Err(_) => return Err((Violation::Framing, start)),
                    };
                    self.check_header(&h, start).map_err(|v| (v, start))?;
                    if h.opcode == Opcode::Close {
                        self.close_seen = true;
                    }
                    self.pos += h.header_len;
                    self.frame = FrameState::Payload {
                        remaining: h.payload_len,
                        offset: 0,
                        mask: h.mask,
                        data: !h.opcode.is_control(),
                        fin: h.fin,
                    };
                    if h.payload_len == 0 {
                        self.finish_payload(&[], on_query).map_err(|v| (v, start))?;
                    }
                }
                FrameState::Payload { remaining, .. } => {
                    let avail = (buf.len() - self.pos)
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let chunk = &buf[self.pos..self.pos + avail];
                    let frame_start = self.hold_from.unwrap_or(self.pos);
                    self.finish_payload(chunk, on_query)
                        .map_err(|v| (v, frame_start))?;
                    self.pos += avail;
                }
            }
            if let Some(h) = self.hold_from {
                if self.pos - h > MAX_HELD_BYTES {
                    return Err((Violation::Framing, h));
                }
            }
        }
        Ok(())
    }

    /// Accounts for `chunk`, the next payload bytes of the current frame.
    fn finish_payload(
        &mut self,
        chunk: &[u8],
        on_query: &mut impl FnMut(QueryEvent),
    ) -> Result<(), Violation> {
        let FrameState::Payload {
            remaining,
            offset,
            mask,
            data,
            fin,
        } = self.frame
        else {
            return Ok(());
        };
        let remaining_after = remaining - chunk.len() as u64;
        if data && !self.judged {
            if let Some(rules) = self.rules {
                let take = (self.head.len() - self.head_len).min(chunk.len());
                unmask_into(
                    &mut self.head[self.head_len..self.head_len + take],
                    &chunk[..take],
                    mask,
                    offset,
                );
                self.head_len += take;
                // The message ends here when this is its last frame and the chunk is the rest.
                let ended = fin && take == chunk.len() && remaining_after == 0;
                match judge_head(
                    self.dir,
                    rules.validation,
                    &self.head[..self.head_len],
                    ended,
                )? {
                    HeadVerdict::Accept {
                        expected_len,
                        query,
                    } => {
                        self.judged = true;
                        self.expected_len = expected_len;
                        self.check_expected(fin)?;
                        self.hold_from = None;
                        if let Some(q) = query {
                            on_query(q);
                        }
                    }
                    HeadVerdict::NeedMore(_) => {}
                }
            }
        }
        if remaining_after == 0 {
            self.frame = FrameState::Header;
            if data && fin {
                self.in_message = false;
                self.messages += 1;
            }
        } else {
            self.frame = FrameState::Payload {
                remaining: remaining_after,
                offset: offset + chunk.len() as u64,
                mask,
                data,
                fin,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::frame::encode_frame;

    fn rules() -> Option<MosaicRules> {
        Some(MosaicRules {
            validation: Validation::Strict,
            max_message_bytes: 1_048_584,
        })
    }

    fn frame(fin: bool, op: u8, payload: &[u8], mask: bool) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, op, payload, mask.then_some([1, 2, 3, 4]));
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    #[test]
    fn holds_head_until_judged_then_streams() {
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let msg = [0x01, 5, 6, 0, 2, 0, 0, 0, b'a', b'b'];
        let f = frame(true, 2, &msg, true);
        let mut events = Vec::new();
        // Only 4 payload bytes in: held.
        let s = t.scan(&f[..6 + 4], |q| events.push(q));
        assert_eq!(s.safe, 0);
        assert!(s.violation.is_none());
        let s = t.scan(&f, |q| events.push(q));
        assert_eq!(s.safe, f.len());
        assert_eq!(events, vec![QueryEvent::Opened([5, 6])]);
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn fragmented_message_with_interleaved_ping() {
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let rec = vec![7u8; 40];
        let mut msg = vec![0x03, 40, 0, 0];
        msg.extend_from_slice(&rec);
        let mut bytes = frame(false, 2, &msg[..2], true);
        bytes.extend(frame(true, 9, b"hi", true));
        bytes.extend(frame(false, 0, &msg[2..20], true));
        bytes.extend(frame(true, 0, &msg[20..], true));
        let s = t.scan(&bytes, |_| {});
        assert_eq!(s.safe, bytes.len());
        assert!(s.violation.is_none());
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn wrong_total_is_cut_before_the_last_frame() {
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let msg = [0x03, 10, 0, 0, 1, 2, 3, 4];
        let first = frame(false, 2, &msg, true);
        let mut bytes = first.clone();
        bytes.extend(frame(true, 0, &[9, 9], true)); // 10 bytes, layout says 14
        let s = t.scan(&bytes, |_| {});
        assert_eq!(s.violation, Some(Violation::Malformed));
        assert_eq!(s.safe, first.len());
    }

    #[test]
    fn text_and_unmasked_frames_are_violations() {
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let s = t.scan(&frame(true, 1, b"[]", true), |_| {});
        assert_eq!(s.violation, Some(Violation::TextMessage));
        assert_eq!(s.safe, 0);
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let s = t.scan(&frame(true, 2, &[0x02, 0, 0, 0], false), |_| {});
        assert_eq!(s.violation, Some(Violation::Framing));
    }

    #[test]
    fn size_cap_applies_across_fragments() {
        let mut t = Tracker::new(
            Direction::UpstreamToClient,
            Some(MosaicRules {
                validation: Validation::Direction,
                max_message_bytes: 10,
            }),
        );
        let mut bytes = frame(false, 2, &[0x80; 6], false);
        let ok = bytes.len();
        bytes.extend(frame(true, 0, &[0; 6], false));
        let s = t.scan(&bytes, |_| {});
        assert_eq!(s.violation, Some(Violation::TooLarge));
        assert_eq!(s.safe, ok);
    }

    #[test]
    fn transparent_mode_tracks_boundaries_only() {
        let mut t = Tracker::new(Direction::UpstreamToClient, None);
        let mut bytes = frame(true, 1, b"[\"EOSE\",\"x\"]", false);
        bytes[0] |= 0x40; // RSV1: permessage-deflate
        let s = t.scan(&bytes[..5], |_| {});
        assert_eq!(s.safe, 5);
        assert!(!t.at_frame_boundary());
        let s = t.scan(&bytes, |_| {});
        assert_eq!(s.safe, bytes.len());
        assert!(t.at_message_boundary());
        assert_eq!(t.messages(), 1);
    }
}
