//! Frame tracking for one direction of a proxied connection.
//!
//! The tracker walks the bytes a peer sent, frame header by frame header, and says how many
//! of them may be forwarded now. On nostr connections it only tracks boundaries (so the
//! gateway can inject close frames between frames) and counts messages. On Mosaic
//! connections it also applies the message rules: a message's first frame is held back
//! until its first bytes have been judged, and every frame header is checked against the
//! size cap and the length the layout requires before any of it is forwarded.
//!
//! The gateway's rate limits ([`Gate`]) decide at the same boundaries: when a data message
//! starts (throttle: stop at its first frame header until tokens refill, or close) and,
//! on Mosaic, when a client message's head has been judged (skip: the message's data
//! frames are dropped, interleaved control frames still pass, and the gateway answers it).

use std::time::Duration;

use crate::relay::frame::{parse_header, unmask_into, FrameHeader, Opcode};
use crate::relay::mosaic::{Direction, HeadVerdict, QueryEvent, Violation};
use crate::relay::profile::{GatewayMessage, Profile};

/// Bytes a held Mosaic message head may span (interleaved control frames included) before
/// the peer is judged to be stalling the gateway.
const MAX_HELD_BYTES: usize = 64 * 1024;

/// A message's first bytes a gate may see: enough for every header (8), and for the 32
/// record-id bytes a Submission Result echoes (the seed's [4:36], 2025's [8:40]).
pub const HEAD_BYTES: usize = 40;

/// The head bytes past the eighth, which a gate that asks for them keeps itself: the
/// tracker holds 8, so connections without such a gate carry no more.
pub const HEAD_REST: usize = HEAD_BYTES - 8;

/// What a [`Gate`] decides at a message boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Forward the message.
    Pass,
    /// Keep holding the message until its first [`HEAD_BYTES`] are in (or it ends), then
    /// ask again. Only meaningful for [`Gate::mosaic_head`].
    NeedMore,
    /// Forward nothing from this message's first frame on, read nothing more for this long,
    /// then ask again (throttle). Only meaningful for [`Gate::message_start`].
    Wait(Duration),
    /// Close the connection (policy violation). Only meaningful for [`Gate::message_start`].
    Close,
    /// Never forward this message; the gateway answers the client with this message.
    /// Only meaningful for [`Gate::mosaic_head`].
    Skip(GatewayMessage),
}

/// Decisions the gateway's limits take at message boundaries. Calls may repeat for the same
/// message (after [`Admit::Wait`] or [`Admit::NeedMore`]); only a final decision may have
/// effects (taking tokens, counting).
pub trait Gate {
    /// How many of a message's first bytes this gate is shown (at most [`HEAD_BYTES`]);
    /// enough for the layouts unless it answers Submissions.
    const HEAD_LEN: usize = 8;
    /// Where the head bytes past the eighth are kept, for a gate with `HEAD_LEN` over 8
    /// (`None`: the gate sees 8).
    fn head_rest(&mut self) -> Option<&mut [u8; HEAD_REST]> {
        None
    }
    /// A data message starts: its first frame header is in.
    fn message_start(&mut self) -> Admit;
    /// A client's Mosaic message passed the rules of `profile`: `head` is its first bytes
    /// (up to [`HEAD_BYTES`]), `ended` says the message has no more, `query` is the query
    /// bookkeeping it implies (applied by the gate).
    fn mosaic_head(
        &mut self,
        profile: Profile,
        head: &[u8],
        ended: bool,
        query: Option<QueryEvent>,
    ) -> Admit;
}

/// The gate of connections without limits: every message passes, query events are reported.
struct Queries<F>(F);

/// The gate of Mosaic connections without limits: query events are reported, and a query
/// the callback answers (the built-in open-query cap) is skipped.
struct CappedQueries<F>(F);

impl<F: FnMut(Profile, QueryEvent) -> Option<GatewayMessage>> Gate for CappedQueries<F> {
    #[inline(always)]
    fn message_start(&mut self) -> Admit {
        Admit::Pass
    }

    #[inline(always)]
    fn mosaic_head(
        &mut self,
        profile: Profile,
        _head: &[u8],
        _ended: bool,
        query: Option<QueryEvent>,
    ) -> Admit {
        match query.and_then(|q| (self.0)(profile, q)) {
            Some(answer) => Admit::Skip(answer),
            None => Admit::Pass,
        }
    }
}

impl<F: FnMut(QueryEvent)> Gate for Queries<F> {
    #[inline(always)]
    fn message_start(&mut self) -> Admit {
        Admit::Pass
    }

    #[inline(always)]
    fn mosaic_head(
        &mut self,
        _profile: Profile,
        _head: &[u8],
        _ended: bool,
        query: Option<QueryEvent>,
    ) -> Admit {
        if let Some(q) = query {
            (self.0)(q);
        }
        Admit::Pass
    }
}

/// The Mosaic rules applied to one direction.
#[derive(Debug, Clone, Copy)]
pub struct MosaicRules {
    /// The connection's Mosaic version and validation level.
    pub profile: Profile,
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
        /// A data frame of a skipped message: its bytes are dropped, not forwarded.
        drop: bool,
    },
}

/// Why a scan stopped before the end of the buffer because of a [`Gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Read nothing more for this long, then scan again from the held message start.
    Wait(Duration),
    /// Close the connection with 1008 (policy violation).
    Close,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Bytes from the start of the buffer that may be forwarded now.
    pub safe: usize,
    /// Bytes right after `safe` to discard (a skipped message's data frames). When not 0,
    /// the caller consumes `safe + drop` and scans again.
    pub drop: usize,
    /// A rule the peer broke; nothing from the offending frame is in `safe`.
    pub violation: Option<Violation>,
    /// A gate held the rest back (throttle) or ended the connection.
    pub limited: Option<Limited>,
    /// The gateway's answer to a skipped message, for the client.
    pub answer: Option<GatewayMessage>,
}

/// Where one pass of the scanner stopped.
enum Stop {
    /// The end of the buffer.
    End,
    /// A frame that is not part of the current drop run: the run ends before it.
    RunEnd,
    /// A gate skipped the message being held.
    Skip(GatewayMessage),
    /// A gate throttled the message starting here.
    Wait(Duration),
    /// A gate closed the connection at the message starting here.
    Close,
}

/// What accounting for payload bytes led to.
enum Step {
    Continue,
    Skip(GatewayMessage),
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
    /// Bytes of `head` filled (at most [`HEAD_BYTES`]); a byte, so the tracker keeps to
    /// 112 bytes and two of them fit an idle connection's budget.
    head_len: u8,
    judged: bool,
    expected_len: Option<u64>,
    hold_from: Option<usize>,
    /// The current message is skipped: none of its data frames are forwarded.
    skipping: bool,
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
            skipping: false,
            close_seen: false,
            messages: 0,
        }
    }

    /// The Mosaic profile this direction is judged by, until the tracker turns transparent.
    pub fn profile(&self) -> Option<Profile> {
        self.rules.map(|r| r.profile)
    }

    /// Complete data messages seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Whether the peer has sent a close frame.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Bytes of the buffer scanned so far (forwarded or not).
    pub fn scanned(&self) -> usize {
        self.pos
    }

    /// Whether everything forwarded so far ends at a frame boundary, so a control frame may
    /// be injected.
    pub fn at_frame_boundary(&self) -> bool {
        self.hold_from.is_some()
            || matches!(
                self.frame,
                FrameState::Header | FrameState::Payload { drop: true, .. }
            )
    }

    /// Whether everything forwarded so far ends at a message boundary, so a data message may
    /// be injected.
    pub fn at_message_boundary(&self) -> bool {
        self.at_frame_boundary() && (!self.in_message || self.hold_from.is_some() || self.skipping)
    }

    /// Stops judging messages: once the gateway closed the connection it only needs to see
    /// the peer's close frame.
    pub fn make_transparent(&mut self) {
        self.rules = None;
        self.hold_from = None;
        self.skipping = false;
        if let FrameState::Payload { drop, .. } = &mut self.frame {
            *drop = false;
        }
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
    pub fn scan(&mut self, buf: &[u8], on_query: impl FnMut(QueryEvent)) -> Scan {
        let mut run = None;
        let stop = self.scan_inner(buf, &mut Queries(on_query), &mut run);
        self.scan_result(stop, run, None)
    }

    /// [`Tracker::scan`] for a connection without rate limits that still caps its open
    /// queries: `on_query` applies each event, or returns the answer to a query it refuses
    /// (that message is then dropped as in [`Tracker::scan_gated`]).
    pub fn scan_queries(
        &mut self,
        buf: &mut [u8],
        on_query: impl FnMut(Profile, QueryEvent) -> Option<GatewayMessage>,
    ) -> Scan {
        self.scan_gated(buf, &mut CappedQueries(on_query))
    }

    /// [`Tracker::scan`] with the gateway's limits deciding at message boundaries. Stops at
    /// the first decision that changes what is forwarded: a throttle or close (see
    /// [`Scan::limited`]), or the end of a skipped message's drop run (see [`Scan::drop`]).
    /// `buf` is mutable because a skipped message's interleaved control frames are moved
    /// in front of its dropped data frames, so they can still be forwarded.
    pub fn scan_gated<G: Gate>(&mut self, buf: &mut [u8], gate: &mut G) -> Scan {
        // Where the bytes being dropped start, while a skipped message is being dropped.
        let mut run = None;
        let mut answer = None;
        loop {
            let stop = self.scan_inner(buf, gate, &mut run);
            let Ok(Stop::Skip(a)) = stop else {
                return self.scan_result(stop, run, answer);
            };
            // Everything from the held message's first frame on was held back: keep its
            // control frames, drop its data frames, and go on dropping what follows.
            let from = self.hold_from.take().unwrap_or(self.pos);
            let kept = compact_controls(&mut buf[from..self.pos]);
            run = Some(from + kept);
            answer = Some(a);
        }
    }

    fn scan_result(
        &self,
        stop: Result<Stop, (Violation, usize)>,
        run: Option<usize>,
        answer: Option<GatewayMessage>,
    ) -> Scan {
        let (end, violation, limited) = match stop {
            Ok(Stop::End | Stop::RunEnd | Stop::Skip(_)) => (self.pos, None, None),
            Ok(Stop::Wait(d)) => (self.pos, None, Some(Limited::Wait(d))),
            Ok(Stop::Close) => (self.pos, None, Some(Limited::Close)),
            Err((v, frame_start)) => (frame_start, Some(v), None),
        };
        let (safe, drop) = match run {
            Some(d) => (d, end.saturating_sub(d)),
            None => (self.hold_from.unwrap_or(end), 0),
        };
        Scan {
            safe,
            drop,
            violation,
            limited,
            answer,
        }
    }

    /// Scans from `self.pos`; `run` is where the current drop run started, if one is on.
    fn scan_inner<G: Gate>(
        &mut self,
        buf: &[u8],
        gate: &mut G,
        run: &mut Option<usize>,
    ) -> Result<Stop, (Violation, usize)> {
        while self.pos < buf.len() {
            match self.frame {
                FrameState::Header => {
                    let start = self.pos;
                    let h = match parse_header(&buf[start..]) {
                        Ok(Some(h)) => h,
                        Ok(None) => break,
                        Err(_) => return Err((Violation::Framing, start)),
                    };
                    let drop = self.skipping && h.opcode == Opcode::Continuation;
                    if run.is_some() && !drop {
                        return Ok(Stop::RunEnd);
                    }
                    if !drop && !h.opcode.is_control() && h.opcode != Opcode::Continuation {
                        match gate.message_start() {
                            Admit::Wait(d) => return Ok(Stop::Wait(d)),
                            Admit::Close => return Ok(Stop::Close),
                            _ => {}
                        }
                    }
                    self.check_header(&h, start).map_err(|v| (v, start))?;
                    if drop && run.is_none() {
                        *run = Some(start);
                    }
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
                        drop,
                    };
                    if h.payload_len == 0 {
                        if let Step::Skip(a) =
                            self.finish_payload(&[], gate).map_err(|v| (v, start))?
                        {
                            return Ok(Stop::Skip(a));
                        }
                    }
                }
                FrameState::Payload {
                    remaining, drop, ..
                } => {
                    if drop && run.is_none() {
                        *run = Some(self.pos);
                    }
                    let avail = (buf.len() - self.pos)
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let chunk = &buf[self.pos..self.pos + avail];
                    let frame_start = self.hold_from.unwrap_or(self.pos);
                    let step = self
                        .finish_payload(chunk, gate)
                        .map_err(|v| (v, frame_start))?;
                    self.pos += avail;
                    if let Step::Skip(a) = step {
                        return Ok(Stop::Skip(a));
                    }
                }
            }
            if let Some(h) = self.hold_from {
                if self.pos - h > MAX_HELD_BYTES {
                    return Err((Violation::Framing, h));
                }
            }
        }
        Ok(Stop::End)
    }

    /// Accounts for `chunk`, the next payload bytes of the current frame.
    fn finish_payload<G: Gate>(&mut self, chunk: &[u8], gate: &mut G) -> Result<Step, Violation> {
        let FrameState::Payload {
            remaining,
            offset,
            mask,
            data,
            fin,
            mut drop,
        } = self.frame
        else {
            return Ok(Step::Continue);
        };
        let remaining_after = remaining - chunk.len() as u64;
        let mut step = Step::Continue;
        if data && !self.judged {
            if let Some(rules) = self.rules {
                // The head the gate sees: the tracker's 8 bytes, and with a gate that asks
                // for more, the rest it keeps (assembled on the stack while judging).
                let want = if G::HEAD_LEN > 8 && gate.head_rest().is_some() {
                    G::HEAD_LEN.min(HEAD_BYTES)
                } else {
                    8
                };
                let have = usize::from(self.head_len);
                let take = want.saturating_sub(have).min(chunk.len());
                // `want` is at most HEAD_BYTES: the sum fits a byte.
                let filled = have + take;
                let mut full = [0u8; HEAD_BYTES];
                let head: &[u8] = if want > 8 {
                    full[..8].copy_from_slice(&self.head);
                    if let Some(rest) = gate.head_rest() {
                        full[8..].copy_from_slice(rest);
                    }
                    unmask_into(&mut full[have..filled], &chunk[..take], mask, offset);
                    self.head.copy_from_slice(&full[..8]);
                    if let Some(rest) = gate.head_rest() {
                        rest.copy_from_slice(&full[8..]);
                    }
                    self.head_len = filled as u8;
                    &full[..filled]
                } else {
                    unmask_into(&mut self.head[have..filled], &chunk[..take], mask, offset);
                    self.head_len = filled as u8;
                    &self.head[..filled]
                };
                // The message ends here when this is its last frame and the chunk is the rest.
                let ended = fin && take == chunk.len() && remaining_after == 0;
                match rules.profile.judge(self.dir, head, ended)? {
                    HeadVerdict::Accept {
                        expected_len,
                        query,
                    } => {
                        match gate.mosaic_head(rules.profile, head, ended, query) {
                            Admit::NeedMore if filled < want && !ended => {}
                            verdict => {
                                self.judged = true;
                                self.expected_len = expected_len;
                                self.check_expected(fin)?;
                                if let Admit::Skip(answer) = verdict {
                                    // The held bytes are dropped by the caller of the scan.
                                    self.skipping = true;
                                    drop = true;
                                    step = Step::Skip(answer);
                                } else {
                                    self.hold_from = None;
                                }
                            }
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
                if self.skipping {
                    self.skipping = false;
                } else {
                    self.messages += 1;
                }
            }
        } else {
            self.frame = FrameState::Payload {
                remaining: remaining_after,
                offset: offset + chunk.len() as u64,
                mask,
                data,
                fin,
                drop,
            };
        }
        Ok(step)
    }
}

/// Moves the control frames of `region` (whole frames, then at most one partial data frame)
/// to its front, in order, and returns their length: what of a skipped message's held
/// bytes must still be forwarded.
fn compact_controls(region: &mut [u8]) -> usize {
    let (mut read, mut kept) = (0, 0);
    while read < region.len() {
        let Ok(Some(h)) = parse_header(&region[read..]) else {
            break;
        };
        let whole = (h.header_len as u64).saturating_add(h.payload_len);
        let len = usize::try_from(whole)
            .unwrap_or(usize::MAX)
            .min(region.len() - read);
        if h.opcode.is_control() {
            region.copy_within(read..read + len, kept);
            kept += len;
        }
        read += len;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::frame::encode_frame;
    use crate::relay::mosaic::Validation;

    fn rules() -> Option<MosaicRules> {
        Some(MosaicRules {
            profile: Profile::Seed(Validation::Strict),
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
                profile: Profile::Seed(Validation::Direction),
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

    /// A gate for tests: skips Submissions whose record starts with 0xEE, throttles the
    /// first `waits` message starts, and records what it was asked.
    #[derive(Default)]
    struct TestGate {
        rest: [u8; HEAD_REST],
        waits: usize,
        starts: usize,
        heads: Vec<usize>,
        queries: Vec<QueryEvent>,
    }

    impl Gate for TestGate {
        const HEAD_LEN: usize = HEAD_BYTES;

        fn head_rest(&mut self) -> Option<&mut [u8; HEAD_REST]> {
            Some(&mut self.rest)
        }

        fn message_start(&mut self) -> Admit {
            self.starts += 1;
            if self.waits > 0 {
                self.waits -= 1;
                return Admit::Wait(Duration::from_millis(5));
            }
            Admit::Pass
        }

        fn mosaic_head(
            &mut self,
            profile: Profile,
            head: &[u8],
            ended: bool,
            q: Option<QueryEvent>,
        ) -> Admit {
            self.heads.push(head.len());
            if head[0] == 0x03 {
                if head.len() < HEAD_BYTES && !ended {
                    return Admit::NeedMore;
                }
                if head.get(4) == Some(&0xEE) {
                    return Admit::Skip(profile.too_fast(head));
                }
            }
            self.queries.extend(q);
            Admit::Pass
        }
    }

    fn submission(first: u8, len: usize) -> Vec<u8> {
        let mut rec = vec![first; len];
        rec[1] = len as u8;
        let mut m = vec![0x03, len as u8, (len >> 8) as u8, 0];
        m.extend_from_slice(&rec);
        m
    }

    #[test]
    fn a_skipped_message_is_dropped_but_its_interleaved_control_frames_pass() {
        let mut t = Tracker::new(Direction::ClientToUpstream, rules());
        let skipped = submission(0xEE, 40);
        let kept = submission(0x11, 40);
        let ping = frame(true, 9, b"hi", true);
        let mut bytes = frame(false, 2, &skipped[..10], true);
        bytes.extend(&ping);
        bytes.extend(frame(true, 0, &skipped[10..], true));
        let after = frame(true, 2, &kept, true);
        bytes.extend(&after);
        let mut gate = TestGate::default();
        let s = t.scan_gated(&mut bytes, &mut gate);
        assert_eq!(
            &bytes[..s.safe],
            &ping[..],
            "the ping moved in front, alone"
        );
        let answer = s
            .answer
            .expect("the gateway answers the skipped Submission");
        assert_eq!(answer.as_bytes()[..4], [0x83, 0, 0, 0x12]);
        assert_eq!(&answer.as_bytes()[4..], &skipped[4..36]);
        let used = s.safe + s.drop;
        assert_eq!(used, bytes.len() - after.len());
        bytes.drain(..used);
        t.consumed(used);
        let s = t.scan_gated(&mut bytes, &mut gate);
        assert_eq!((s.safe, s.drop), (after.len(), 0));
        assert!(s.answer.is_none());
        assert_eq!(t.messages(), 1, "only the forwarded message counts");
        // Asked again until the record id was in: 10 bytes, then 40.
        assert_eq!(gate.heads, vec![10, 40, 40]);
    }

    #[test]
    fn a_throttled_message_start_is_asked_again_and_nothing_is_lost() {
        let mut t = Tracker::new(Direction::UpstreamToClient, None);
        let first = frame(true, 1, b"[\"EVENT\"]", false);
        let mut bytes = first.clone();
        bytes.extend(frame(true, 1, b"[\"REQ\"]", false));
        let total = bytes.len();
        let mut gate = TestGate::default();
        let s = t.scan_gated(&mut bytes[..first.len()], &mut gate);
        assert_eq!(s.safe, first.len());
        assert!(s.limited.is_none());
        gate.waits = 2;
        bytes.drain(..s.safe);
        t.consumed(s.safe);
        for _ in 0..2 {
            let s = t.scan_gated(&mut bytes, &mut gate);
            assert_eq!(s.safe, 0);
            assert_eq!(s.limited, Some(Limited::Wait(Duration::from_millis(5))));
            assert!(t.at_message_boundary(), "a close may go in while throttled");
        }
        let s = t.scan_gated(&mut bytes, &mut gate);
        assert_eq!(s.safe + first.len(), total);
        assert_eq!(t.messages(), 2);
        assert_eq!(gate.starts, 4);
    }

    /// A tiny deterministic generator for the randomized test below.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    #[test]
    fn gated_streams_forward_exactly_the_passed_messages_and_every_control_frame_in_order() {
        for seed in 0..200u64 {
            let mut rng = Lcg(seed);
            let mut stream: Vec<u8> = Vec::new();
            let mut expected: Vec<u8> = Vec::new();
            let mut answers = 0;
            for i in 0..12 {
                let skip = rng.below(3) == 0;
                let msg = match rng.below(3) {
                    0 => submission(if skip { 0xEE } else { 0x10 }, 32 + rng.below(40)),
                    1 => vec![0x01, i as u8, 0, 0, 2, 0, 0, 0, b'f', b'x'],
                    _ => vec![0x02, i as u8, 0, 0],
                };
                let skipped = skip && msg[0] == 0x03;
                answers += usize::from(skipped);
                // Split into 1 to 4 frames, with pings between some of them.
                let cuts = rng.below(4);
                let mut at = 0;
                for k in 0..=cuts {
                    let end = if k == cuts {
                        msg.len()
                    } else {
                        (at + 1 + rng.below(12)).min(msg.len())
                    };
                    let op = if k == 0 { 2 } else { 0 };
                    let f = frame(end == msg.len(), op, &msg[at..end], true);
                    stream.extend(&f);
                    if !skipped {
                        expected.extend(&f);
                    }
                    at = end;
                    if rng.below(3) == 0 {
                        let p = frame(true, 9, &[k as u8], true);
                        stream.extend(&p);
                        expected.extend(&p);
                    }
                    if at == msg.len() {
                        break;
                    }
                }
            }
            let mut t = Tracker::new(Direction::ClientToUpstream, rules());
            let mut gate = TestGate::default();
            let (mut pending, mut out, mut fed, mut got) =
                (Vec::<u8>::new(), Vec::<u8>::new(), 0, 0);
            while fed < stream.len() || !pending.is_empty() {
                if fed < stream.len() {
                    let n = (1 + rng.below(30)).min(stream.len() - fed);
                    pending.extend_from_slice(&stream[fed..fed + n]);
                    fed += n;
                }
                loop {
                    let s = t.scan_gated(&mut pending, &mut gate);
                    assert!(s.violation.is_none(), "seed {seed}: {:?}", s.violation);
                    out.extend_from_slice(&pending[..s.safe]);
                    got += usize::from(s.answer.is_some());
                    pending.drain(..s.safe + s.drop);
                    t.consumed(s.safe + s.drop);
                    if s.drop == 0 {
                        break;
                    }
                }
                if fed == stream.len() && t.scanned() == pending.len() {
                    break;
                }
            }
            assert_eq!(out, expected, "seed {seed}");
            assert_eq!(got, answers, "seed {seed}");
        }
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
