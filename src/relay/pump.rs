//! Moving bytes both ways between a client and its upstream.
//!
//! Each direction reads what its peer sent, lets its [`Tracker`] decide how much may pass,
//! and writes exactly those bytes on: frames are never rebuilt. Both directions run in one
//! task, concurrently, so a peer that writes before it reads cannot deadlock the gateway.
//! The gateway's own frames (close frames on violations, idle timeouts and drain, Query
//! Closed on drain, the rate limits' answers) are injected by the direction that owns the
//! writer, at a frame boundary.
//!
//! A connection with rate limits has a [`Limiter`] on its client-to-upstream direction:
//! the tracker asks it at message boundaries, and a throttled direction stops reading until
//! its tokens refill, so TCP backpressure slows the client and nothing is lost or reordered.
//! A connection without limits never touches it.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::drain::{DrainSignal, Kick};
use crate::relay::frame::{encode_close, encode_frame};
use crate::relay::limiter::{ConnGate, DirLimits, LimitState};
use crate::relay::mosaic::QueryEvent;
use crate::relay::mosaic::{
    Direction, OpenQueries, Violation, MAX_OPEN_QUERIES, MAX_QUEUED_REFUSALS,
};
use crate::relay::profile::{Closed, Closing, GatewayMessage};
use crate::relay::tracker::{Limited, MosaicRules, Scan, Tracker};

/// Read size per wake-up; the buffer exists only while data moves.
const READ_CHUNK: usize = 16 * 1024;

/// The gateway's own answers (rate limits) queued for the client at most; beyond, the
/// client's direction stops reading until they are written.
const MAX_QUEUED_ANSWERS: usize = 64;

/// How long a side may take to answer the gateway's close before the socket is cut.
const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// A read half the pump can wait on without holding a buffer.
///
/// Plain TCP halves wait for readiness first and read only then, so an idle connection parks
/// with no buffer at all; other streams (TLS) need a buffer to make progress.
pub trait Source: Unpin + Send {
    /// Ready when a read would make progress (may be spurious).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is available into the spare capacity of `buf`; 0 means end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;
}

impl Source for tokio::net::tcp::ReadHalf<'_> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let stream: &tokio::net::TcpStream = self.as_ref();
        loop {
            let room = buf.capacity() - buf.len();
            let mut got = None;
            // A read that returns less than the room available drained the socket: mark it
            // not ready right away (as nginx does) instead of paying a second read that
            // would only say EAGAIN. Readiness that arrives meanwhile is kept by tokio.
            let r = stream.try_io(tokio::io::Interest::READABLE, || {
                let n = stream.try_read_buf(buf)?;
                got = Some(n);
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match (got, r) {
                (Some(n), _) | (None, Ok(n)) => return Poll::Ready(Ok(n)),
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(stream.poll_read_ready(cx))?;
                }
                (None, Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Any `AsyncRead` (TLS streams, split halves) as a [`Source`].
pub struct Buffered<R>(pub R);

impl<R: AsyncRead + Unpin + Send> Source for Buffered<R> {
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.0), cx, buf)
    }
}

/// How a relayed connection ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The client closed first.
    Client,
    /// The upstream closed first.
    Upstream,
    /// The gateway closed it (violation, idle timeout, drain).
    Gateway,
}

impl Closer {
    /// The log label.
    pub fn label(self) -> &'static str {
        match self {
            Closer::Client => "client",
            Closer::Upstream => "upstream",
            Closer::Gateway => "gateway",
        }
    }
}

/// The side a write to which made no progress for `limits.write_timeout`: it stopped
/// reading, and the gateway cut it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// The client stopped reading what the upstream sent.
    Client,
    /// The upstream stopped reading what the client sent.
    Upstream,
}

impl Stalled {
    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            Stalled::Client => "client",
            Stalled::Upstream => "upstream",
        }
    }
}

/// What the pump reports when a connection ends.
#[derive(Debug, Clone, Default)]
pub struct RelayReport {
    /// Bytes forwarded client → upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream → client.
    pub bytes_down: u64,
    /// Messages forwarded client → upstream.
    pub messages_up: u64,
    /// Messages forwarded upstream → client.
    pub messages_down: u64,
    /// The close code the gateway sent to the client, if it sent one.
    pub gateway_close_code: Option<u16>,
    /// Who ended the connection.
    pub closer: Option<Closer>,
    /// The violation that ended it, if any.
    pub violation: Option<(Violation, Direction)>,
    /// The side that stopped reading, when the write timeout ended it.
    pub stalled: Option<Stalled>,
    /// How long the relay ran.
    pub duration: Duration,
}

/// Traffic moved since the last fold, handed to the caller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// Messages client → upstream.
    pub messages_up: u64,
    /// Messages upstream → client.
    pub messages_down: u64,
}

impl Traffic {
    fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
            messages_up: self.messages_up - earlier.messages_up,
            messages_down: self.messages_down - earlier.messages_down,
        }
    }
}

/// How often a long-lived connection's counters are folded into the metrics.
const FOLD_EVERY: Duration = Duration::from_secs(5);

/// Settings for one relayed connection.
#[derive(Debug, Clone, Copy)]
pub struct PumpOptions {
    /// `Some` on Mosaic connections: inspect every message.
    pub mosaic: Option<MosaicRules>,
    /// Close with 1001 after this long without traffic either way.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Send Query Closed (shutting down) for every open query, and the version's Closing
    /// where it has one (towards the client only).
    CloseQueries,
    /// Send the version's Closing with this reason, where it has one (towards the client
    /// only, at a message boundary): 2025's 0xFE before the gateway's own close.
    Closing(Closing),
    /// Send a close frame with this code, then stop forwarding.
    Close(u16),
    /// Send a ping (towards the client only): a live client's pong is traffic and keeps
    /// the connection from idling out.
    Ping,
}

/// Commands for the direction that owns one writer. Sent rarely (violations, drain,
/// keepalive); checked on every wake-up with one atomic load, never a lock.
///
/// All of it fits one word: a flag each for Query Closed and ping, the close code in the
/// high half, and the signal bit. Commands are acted on in that order, each at the first
/// boundary where it is legal; once a close is queued nothing else is added (it would never
/// be sent), and the first close code wins. The signal says something new arrived since the
/// direction last looked: a command that must wait for a frame boundary stays queued without
/// waking the direction again, so it keeps reading up to that boundary instead of spinning.
#[derive(Default)]
struct Control(AtomicU32);

const CLOSE_QUERIES: u32 = 1;
const PING: u32 = 2;
const SIGNAL: u32 = 4;
const CLOSING_BANNED: u32 = 8;
const CLOSING_BLOCKED: u32 = 16;
const CLOSE_SHIFT: u32 = 16;

impl Command {
    /// The bits this command sets in a [`Control`].
    fn bits(self) -> u32 {
        match self {
            Command::CloseQueries => CLOSE_QUERIES,
            Command::Ping => PING,
            Command::Closing(Closing::Banned) => CLOSING_BANNED,
            Command::Closing(_) => CLOSING_BLOCKED,
            Command::Close(code) => u32::from(code) << CLOSE_SHIFT,
        }
    }
}

impl Control {
    fn send(&self, c: Command) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                let closing = queued >> CLOSE_SHIFT != 0;
                Some(SIGNAL | if closing { queued } else { queued | c.bits() })
            });
    }

    /// Tells the direction something it waits for changed, without a command.
    fn nudge(&self) {
        self.0.fetch_or(SIGNAL, Ordering::AcqRel);
    }

    /// Consumes the "something new" flag.
    fn take_signal(&self) -> bool {
        self.0.fetch_and(!SIGNAL, Ordering::AcqRel) & SIGNAL != 0
    }

    fn peek(&self) -> Option<Command> {
        let queued = self.0.load(Ordering::Acquire);
        if queued & CLOSE_QUERIES != 0 {
            Some(Command::CloseQueries)
        } else if queued & CLOSING_BANNED != 0 {
            Some(Command::Closing(Closing::Banned))
        } else if queued & CLOSING_BLOCKED != 0 {
            Some(Command::Closing(Closing::Blocked))
        } else if queued & PING != 0 {
            Some(Command::Ping)
        } else {
            match (queued >> CLOSE_SHIFT) as u16 {
                0 => None,
                code => Some(Command::Close(code)),
            }
        }
    }

    fn pop(&self, c: Command) {
        let mask = match c {
            Command::Close(_) => u32::MAX << CLOSE_SHIFT,
            other => other.bits(),
        };
        self.0.fetch_and(!mask, Ordering::AcqRel);
    }
}

/// Why a direction woke up.
enum Woke {
    Command,
    /// A throttle's wait is over.
    Resume,
    Read(io::Result<usize>),
}

/// What one direction has done so far. Kept outside the direction's future so nothing is
/// lost when a lingering direction is cut.
#[derive(Default)]
struct DirCounters {
    bytes: AtomicU64,
    messages: AtomicU64,
    close_seen: AtomicBool,
    /// The close code the gateway itself sent on this direction's writer (0: none).
    sent_close: AtomicU16,
    /// This direction's write in progress (in what was padding: no bytes added).
    write: WriteStall,
}

/// One direction's write in progress, for `limits.write_timeout`: none, begun, or waiting
/// since a mark (milliseconds, wrapped to 32 bits). Begun and ended with a plain store
/// around each write; the relay stamps a begun write when it finds it still there after
/// polling the direction, so the clock is read only for writes that have to wait.
#[derive(Default)]
struct WriteStall(AtomicU32);

const WRITE_NONE: u32 = 0;
const WRITE_BEGUN: u32 = 1;

impl WriteStall {
    fn begin(&self) {
        self.0.store(WRITE_BEGUN, Ordering::Relaxed);
    }

    fn end(&self) {
        self.0.store(WRITE_NONE, Ordering::Relaxed);
    }

    fn pending(&self) -> bool {
        self.0.load(Ordering::Relaxed) != WRITE_NONE
    }

    /// When a waiting write times out at mark `now` with `timeout_ms` ([`NEVER`] if no
    /// write waits); stamps a begun write as waiting since `now`.
    fn deadline(&self, now: u64, timeout_ms: u64) -> u64 {
        let since = match self.0.load(Ordering::Relaxed) {
            WRITE_NONE => return NEVER,
            WRITE_BEGUN => {
                // The two sentinels are not stamps: a mark that wraps onto them is moved
                // on by at most 2 ms.
                self.0.store((now as u32).max(2), Ordering::Relaxed);
                now
            }
            stamp => {
                // A stamp moved past `now` (see above) reads as "just now"; a real wait
                // is far shorter than 2^31 ms, the timeout (at most a day) fires first.
                let waited = (now as u32).wrapping_sub(stamp);
                now.saturating_sub(if waited > i32::MAX as u32 {
                    0
                } else {
                    u64::from(waited)
                })
            }
        };
        since.saturating_add(timeout_ms)
    }
}

/// The gateway's answers to skipped messages, for the client, written at the next message
/// boundary; at most [`MAX_QUEUED_ANSWERS`]. Only connections with rate limits have one.
#[derive(Default)]
struct Answers {
    queue: Mutex<VecDeque<GatewayMessage>>,
    waiting: AtomicUsize,
}

impl Answers {
    fn push(&self, m: GatewayMessage) {
        let mut q = self.queue.lock();
        q.push_back(m);
        self.waiting.store(q.len(), Ordering::Release);
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Encodes every queued answer into `out` (unmasked: answers go to the client).
    fn take(&self, out: &mut Vec<u8>) {
        let mut q = self.queue.lock();
        for m in q.drain(..) {
            encode_frame(out, 0x2, m.as_bytes(), None);
        }
        self.waiting.store(0, Ordering::Release);
    }
}

/// State both directions share: open queries, counters, the last time anything moved and
/// the commands for each writer. The connection owns it; the relay borrows it, so it sits
/// in the connection's task once.
pub(crate) struct Shared {
    queries: OpenQueries,
    last_activity_ms: AtomicU64,
    started: Instant,
    up: DirCounters,
    down: DirCounters,
    violation: Mutex<Option<(Violation, Direction)>>,
    /// The rate limits' answers for the client; `None` without limits.
    answers: Option<Box<Answers>>,
    to_client: Control,
    to_upstream: Control,
    /// A command or nudge was sent during this poll: the relay polls both directions again.
    /// Every sender runs inside the connection's task, so no waker is needed.
    stirred: AtomicBool,
    /// `limits.write_timeout` in milliseconds (at most a day); kept here, in what was this
    /// struct's padding, rather than in the options, where it would add 8 bytes to every
    /// connection.
    write_timeout_ms: u32,
}

impl Shared {
    /// The shared state of a new relay; `limited`: the connection has rate limits; a write
    /// that makes no progress for `write_timeout` ends it.
    pub(crate) fn new(limited: bool, write_timeout: Duration) -> Shared {
        Shared {
            write_timeout_ms: u32::try_from(write_timeout.as_millis()).unwrap_or(u32::MAX),
            queries: OpenQueries::default(),
            last_activity_ms: AtomicU64::new(0),
            started: Instant::now(),
            up: DirCounters::default(),
            down: DirCounters::default(),
            violation: Mutex::new(None),
            answers: limited.then(Box::default),
            to_client: Control::default(),
            to_upstream: Control::default(),
            stirred: AtomicBool::new(false),
        }
    }

    fn send(&self, to: &Control, c: Command) {
        to.send(c);
        self.stirred.store(true, Ordering::Release);
    }

    fn nudge(&self, to: &Control) {
        to.nudge();
        self.stirred.store(true, Ordering::Release);
    }

    /// Asks both writers to close with `code`.
    fn close_both(&self, code: u16) {
        self.send(&self.to_client, Command::Close(code));
        self.send(&self.to_upstream, Command::Close(code));
    }

    /// Encodes the gateway's answers waiting for the client (the rate limits', the open-query
    /// cap's) into `out`; false if none.
    fn take_answers(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        if let Some(a) = self.answers.as_deref().filter(|a| a.waiting() > 0) {
            a.take(out);
        }
        if self.queries.refused() > 0 {
            self.queries
                .take_refused(|m| encode_frame(out, 0x2, m.as_bytes(), None));
        }
        !out.is_empty()
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            bytes_up: self.up.bytes.load(Ordering::Relaxed),
            bytes_down: self.down.bytes.load(Ordering::Relaxed),
            messages_up: self.up.messages.load(Ordering::Relaxed),
            messages_down: self.down.messages.load(Ordering::Relaxed),
        }
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }
}

pub(crate) struct DirReport {
    /// The source ended with a close frame or EOF of its own accord.
    source_ended: bool,
    /// This direction's source broke a rule.
    violated: bool,
}

fn random_mask() -> [u8; 4] {
    let mut m = [0u8; 4];
    // A failing OS RNG only weakens cache-poisoning protection on a hop the gateway controls.
    let _ = getrandom::fill(&mut m);
    m
}

/// One direction's place in the relay: which way it runs and the state both directions
/// share, from which it finds its writer's commands, its peer's and its counters.
#[derive(Clone, Copy)]
struct Lane<'a> {
    dir: Direction,
    shared: &'a Shared,
}

impl<'a> Lane<'a> {
    fn to_client(self) -> bool {
        self.dir == Direction::UpstreamToClient
    }

    /// The commands for this direction's writer.
    fn mine(self) -> &'a Control {
        if self.to_client() {
            &self.shared.to_client
        } else {
            &self.shared.to_upstream
        }
    }

    /// The commands for the other direction's writer.
    fn peer(self) -> &'a Control {
        if self.to_client() {
            &self.shared.to_upstream
        } else {
            &self.shared.to_client
        }
    }

    fn counters(self) -> &'a DirCounters {
        if self.to_client() {
            &self.shared.down
        } else {
            &self.shared.up
        }
    }

    fn send_mine(self, c: Command) {
        self.shared.send(self.mine(), c);
    }

    fn send_peer(self, c: Command) {
        self.shared.send(self.peer(), c);
    }

    fn nudge_peer(self) {
        self.shared.nudge(self.peer());
    }
}

/// Records a violation the source of `lane` committed and asks both writers to close.
fn violated(v: Violation, lane: Lane<'_>) {
    let dir = lane.dir;
    lane.shared.violation.lock().get_or_insert((v, dir));
    let (mine_code, peer_code) = if lane.to_client() {
        (v.client_close_code(dir), v.upstream_close_code(dir))
    } else {
        (v.upstream_close_code(dir), v.client_close_code(dir))
    };
    lane.send_peer(Command::Close(peer_code));
    lane.send_mine(Command::Close(mine_code));
}

/// What a scan pass leaves the direction to do before reading again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Nothing: read on.
    No,
    /// Read nothing until the throttle's timer (armed by the pass) is up.
    Throttled,
    /// Read nothing until the client's answers are written.
    Answers,
    /// The direction stops (a write failed, or the closing peer's close frame came).
    Stop,
}

/// Writes `$buf` to `$dst`, marked as under way on `$lane` for `limits.write_timeout` (the
/// relay's timer). A macro rather than an awaited helper, which would keep its own copies of
/// what it borrows in every connection's future.
macro_rules! write_marked {
    ($lane:expr, $dst:expr, $buf:expr) => {{
        $lane.counters().write.begin();
        let written = $dst.write_all($buf).await;
        $lane.counters().write.end();
        written
    }};
}

/// One direction: `src` → `dst`, starting with the bytes already read from `src`.
/// `limits` are this direction's rate limits: the client's, or the upstream's byte budget.
///
/// A plain fn returning an `async move` block, not an `async fn`: an async fn moves its
/// arguments into locals, and the future keeps both copies (measured: 104 bytes per
/// direction, on every idle connection). For the same reason the steps that await stay in
/// the block: an awaited helper would keep its own copies of what it borrows.
#[allow(clippy::manual_async_fn)]
fn forward<'a, R: Source + 'a, W: AsyncWrite + Unpin + 'a>(
    mut src: R,
    mut dst: W,
    pending: &'a mut BytesMut,
    rules: Option<MosaicRules>,
    lane: Lane<'a>,
    mut limits: Option<&'a mut DirLimits>,
) -> impl Future<Output = DirReport> + 'a {
    // Set up outside the block, so the block captures each value once; the lane is one
    // pointer and a byte, everything else is derived from it.
    let mut tracker = Tracker::new(lane.dir, rules);
    let mut rep = DirReport {
        source_ended: false,
        violated: false,
    };
    // After the gateway sent its own close on `dst`, it only reads `src` to see the peer go.
    let mut closing = false;
    async move {
        'relay: loop {
            // Scan what was read and write what may pass, pass after pass, until one holds.
            if let Some(l) = limits.as_deref_mut().filter(|_| !closing) {
                l.limiter.start_pass();
            }
            let hold = loop {
                let pass = scan(limits.as_deref_mut(), &mut tracker, pending, lane, closing);
                // Only these outlive the write (a future keeps what crosses an await).
                let (safe, used, then, after) = (pass.safe, pass.used, pass.then, pass.after);
                if safe > 0 {
                    if write_marked!(lane, dst, &pending[..safe]).is_err() {
                        break Held::Stop;
                    }
                    count_written(lane, &tracker, safe);
                }
                pending.advance(used);
                tracker.consumed(used);
                if let Some(h) = settle(after, lane, &mut rep).or(then) {
                    break h;
                }
            };
            if hold == Held::Stop {
                break 'relay;
            }
            // A rate limit holding this direction back: nothing more is read until the
            // throttle's timer ends the hold (`timed`), or a nudge from the peer does.
            let (mut held, timed) = (hold != Held::No, hold == Held::Throttled);
            {
                // The gateway's own frames are built in a buffer that lives only while they
                // are written, not across the read (24 bytes a direction on idle connections).
                let mut out = Vec::new();
                // The gateway's answers to the client go out between two messages.
                if lane.to_client()
                    && !closing
                    && tracker.at_message_boundary()
                    && lane.shared.take_answers(&mut out)
                {
                    if write_marked!(lane, dst, &out).is_err() {
                        break 'relay;
                    }
                    // The client's direction may be waiting for the queue to empty.
                    lane.nudge_peer();
                }
                while let Some(cmd) = next_command(lane, &tracker, closing) {
                    if encode_command(cmd, lane, &mut tracker, &mut out) {
                        closing = true;
                        held = false;
                    }
                    if write_marked!(lane, dst, &out).is_err() {
                        break 'relay;
                    }
                }
            }
            if closing && tracker.close_seen() {
                break;
            }
            let woke = std::future::poll_fn(|cx| {
                wake(
                    cx,
                    lane,
                    (held, timed),
                    limits.as_deref_mut(),
                    pending,
                    &mut src,
                )
            })
            .await;
            match woke {
                Woke::Command => continue,
                // The throttled client is making progress: it is not idle.
                Woke::Resume => lane.shared.touch(),
                Woke::Read(Ok(0)) | Woke::Read(Err(_)) => {
                    rep.source_ended = true;
                    break;
                }
                Woke::Read(Ok(_)) => lane.shared.touch(),
            }
        }
        // Nothing more is read here: give the read buffer back now, not when the whole
        // connection ends. A close waits a round trip for the other side, and when
        // thousands of clients leave at once each held 16 KiB meanwhile (the RSS spike of
        // issue 22 item 11).
        *pending = BytesMut::new();
        if rep.source_ended && !closing && !tracker.close_seen() && tracker.at_frame_boundary() {
            // The peer vanished without a close frame: say so on the other side.
            if dst.write_all(&vanished_close(lane)).await.is_ok() {
                // Derived again rather than kept across the write: holding it there grows
                // the connection's future by 16 bytes (1,024 → 1,040, the task's limit).
                let code = vanished_code(lane);
                lane.counters().sent_close.store(code, Ordering::Relaxed);
            }
        }
        let _ = dst.shutdown().await;
        rep
    }
}

/// Counts `safe` bytes written on, with the messages and the close frame the tracker has
/// seen up to them.
///
/// This and the other steps `forward` takes on every pass or wake-up are inlined always:
/// left to the optimiser, `wake` and `settle` stayed calls, 2 % more instructions per
/// request/response round trip (callgrind) than the loop written in one piece.
#[inline(always)]
fn count_written(lane: Lane<'_>, tracker: &Tracker, safe: usize) {
    let counters = lane.counters();
    counters.bytes.fetch_add(safe as u64, Ordering::Relaxed);
    counters
        .messages
        .store(tracker.messages(), Ordering::Relaxed);
    counters
        .close_seen
        .store(tracker.close_seen(), Ordering::Relaxed);
}

/// Tells both writers what a pass found once its bytes are written; `Some(Held::Stop)` when
/// the direction is done (the closing peer's close frame came).
#[inline(always)]
fn settle(after: After, lane: Lane<'_>, rep: &mut DirReport) -> Option<Held> {
    match after {
        After::Nothing => {}
        After::Violation(v) => {
            rep.violated = true;
            violated(v, lane);
        }
        After::PolicyClose => {
            rep.violated = true;
            lane.send_peer(Command::Close(1008));
            lane.send_mine(Command::Close(1001));
        }
        After::PeerClosed => {
            lane.counters().close_seen.store(true, Ordering::Relaxed);
            return Some(Held::Stop);
        }
    }
    None
}

/// The next command for this direction's writer that is legal where the tracker stands;
/// taken off the queue. Once the gateway's close is out, whatever is queued is dropped.
#[inline(always)]
fn next_command(lane: Lane<'_>, tracker: &Tracker, closing: bool) -> Option<Command> {
    let control = lane.mine();
    while let Some(cmd) = control.peek() {
        if closing {
            control.pop(cmd);
            continue;
        }
        let ready = match cmd {
            Command::CloseQueries | Command::Closing(_) => tracker.at_message_boundary(),
            Command::Close(_) | Command::Ping => tracker.at_frame_boundary(),
        };
        if !ready {
            return None;
        }
        control.pop(cmd);
        return Some(cmd);
    }
    None
}

/// Encodes the frames of `cmd` into `out` (masked towards the upstream); true for the
/// gateway's close, after which the tracker only looks for the peer's close frame.
fn encode_command(cmd: Command, lane: Lane<'_>, tracker: &mut Tracker, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mask = (!lane.to_client()).then(random_mask);
    match cmd {
        Command::CloseQueries => {
            // In the connection's version: 2025 adds Closing after them.
            if let Some(p) = tracker.profile() {
                for id in lane.shared.queries.take() {
                    let m = p.query_closed(id, Closed::ShuttingDown);
                    encode_frame(out, 0x2, m.as_bytes(), mask);
                }
                if let Some(m) = p.closing(Closing::ShuttingDown) {
                    encode_frame(out, 0x2, m.as_bytes(), mask);
                }
            }
        }
        Command::Closing(why) => {
            if let Some(m) = tracker.profile().and_then(|p| p.closing(why)) {
                encode_frame(out, 0x2, m.as_bytes(), mask);
            }
        }
        Command::Ping => encode_frame(out, 0x9, b"mosaic-gateway", mask),
        Command::Close(code) => {
            encode_close(out, code, close_reason(code), mask);
            lane.counters().sent_close.store(code, Ordering::Relaxed);
            tracker.make_transparent();
            return true;
        }
    }
    false
}

/// Waits to read more, or for a command. Under load the buffer is reused from read to read;
/// it is released only when the socket has nothing to give, so an idle connection parks
/// without one. `(held, timed)`: a limit holds the direction back, until its throttle's
/// timer fires if `timed`.
#[inline(always)]
fn wake<R: Source>(
    cx: &mut Context<'_>,
    lane: Lane<'_>,
    (held, timed): (bool, bool),
    limits: Option<&mut DirLimits>,
    pending: &mut BytesMut,
    src: &mut R,
) -> Poll<Woke> {
    if lane.mine().take_signal() {
        return Poll::Ready(Woke::Command);
    }
    if held {
        // A limit holds the client back: no reads (TCP backpressure) until the throttle's
        // time is up, or a nudge says the answers were written.
        return match limits.and_then(|l| l.throttle.as_mut()) {
            Some(t) if timed => t.as_mut().poll(cx).map(|()| Woke::Resume),
            _ => Poll::Pending,
        };
    }
    if pending.capacity() == pending.len() {
        if let Err(e) = std::task::ready!(src.poll_readable(cx)) {
            return Poll::Ready(Woke::Read(Err(e)));
        }
        pending.reserve(READ_CHUNK);
    }
    match src.poll_fill(cx, pending) {
        Poll::Ready(r) => Poll::Ready(Woke::Read(r)),
        Poll::Pending => {
            if pending.is_empty() {
                *pending = BytesMut::new();
            }
            Poll::Pending
        }
    }
}

/// The close code the other side hears when this direction's source vanished without a
/// close frame: 1014 to a client whose upstream went, 1001 to an upstream whose client did.
#[inline]
fn vanished_code(lane: Lane<'_>) -> u16 {
    if lane.to_client() {
        1014
    } else {
        1001
    }
}

/// The close frame that says this direction's source vanished.
fn vanished_close(lane: Lane<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let code = vanished_code(lane);
    encode_close(
        &mut out,
        code,
        close_reason(code),
        (!lane.to_client()).then(random_mask),
    );
    out
}

/// Every close code the gateway itself sends to clients (`closes_sent_total{code}`): what
/// [`close_reason`] names, which the tests check against every code the relay can choose.
pub const SENT_CLOSE_CODES: [u16; 6] = [1001, 1002, 1003, 1008, 1009, 1014];

/// One scan of what was read: the bytes to write, the bytes to consume after the write,
/// and what follows.
struct Pass {
    safe: usize,
    used: usize,
    /// `None`: scan again after the write; else stop scanning and hold like this.
    then: Option<Held>,
    /// What to tell both writers once the bytes are written.
    after: After,
}

/// What a rate-limited scan asks of the writers after its bytes are written.
enum After {
    Nothing,
    Violation(Violation),
    /// `messages_per_connection` with `action: close`.
    PolicyClose,
    /// While the gateway closes: the peer's close frame (or a violation) came.
    PeerClosed,
}

impl Pass {
    fn hold(then: Held) -> Pass {
        Pass {
            safe: 0,
            used: 0,
            then: Some(then),
            after: After::Nothing,
        }
    }
}

/// One scan pass: within the rate limits when the direction has them, except while the
/// gateway closes, when only the peer's close frame matters.
#[inline(always)]
fn scan(
    limits: Option<&mut DirLimits>,
    tracker: &mut Tracker,
    pending: &mut BytesMut,
    lane: Lane<'_>,
    closing: bool,
) -> Pass {
    match limits {
        Some(l) if !closing => limited_scan(l, tracker, pending, lane),
        _ => plain_scan(tracker, pending, lane, closing),
    }
}

/// Scans what was read (no rate limits): all of it may pass, but for queries beyond the
/// built-in open-query cap, which the gateway answers itself. While the gateway closes, it
/// is discarded instead, up to the peer's close frame.
fn plain_scan(
    tracker: &mut Tracker,
    pending: &mut BytesMut,
    lane: Lane<'_>,
    closing: bool,
) -> Pass {
    let shared = lane.shared;
    if pending.is_empty() {
        return Pass::hold(Held::No);
    }
    if !closing && shared.queries.refused() >= MAX_QUEUED_REFUSALS {
        return Pass::hold(Held::Answers);
    }
    let scan = tracker.scan_queries(pending, |profile, q| {
        if shared.queries.apply_capped(q, MAX_OPEN_QUERIES) {
            return None;
        }
        match q {
            QueryEvent::Opened(id) => Some(profile.query_closed(id, Closed::TooMany)),
            QueryEvent::Closed(_) => None,
        }
    });
    if let Some(a) = scan.answer {
        shared.queries.refuse(a);
        lane.nudge_peer();
    }
    let used = scan.safe + scan.drop;
    let (safe, after) = match (closing, scan.violation) {
        (true, v) if v.is_some() || tracker.close_seen() => (0, After::PeerClosed),
        (true, _) => (0, After::Nothing),
        (false, Some(v)) => (scan.safe, After::Violation(v)),
        (false, None) => (scan.safe, After::Nothing),
    };
    Pass {
        safe,
        used,
        // A dropped message: scan on after it.
        then: (scan.drop == 0).then_some(Held::No),
        after,
    }
}

/// Scans what the client's rate limits let through of `pending`: within the byte budget,
/// the limiter asked at message boundaries, a skipped message's bytes dropped and the
/// gateway's answer queued. Synchronous, so a connection's future carries no state for it
/// (the caller writes).
fn limited_scan(
    limits: &mut DirLimits,
    tracker: &mut Tracker,
    pending: &mut BytesMut,
    lane: Lane<'_>,
) -> Pass {
    let DirLimits { limiter, throttle } = limits;
    let mut throttle_for = |d: Duration| {
        let at = tokio::time::Instant::now() + d;
        match throttle.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => *throttle = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        Held::Throttled
    };
    // Only the client's direction queues answers; the upstream's writes them.
    let answers = lane.shared.answers.as_deref().filter(|_| !lane.to_client());
    if answers.is_some_and(|a| a.waiting() >= MAX_QUEUED_ANSWERS) {
        return Pass::hold(Held::Answers);
    }
    let scanned = tracker.scanned();
    if scanned == pending.len() {
        return Pass::hold(Held::No);
    }
    let limit = limiter.scan_limit(scanned, pending.len());
    if limit <= scanned {
        return Pass::hold(throttle_for(limiter.bytes_wait()));
    }
    let scan: Scan = {
        let mut gate = ConnGate {
            limiter: &mut **limiter,
            queries: &lane.shared.queries,
        };
        tracker.scan_gated(&mut pending[..limit], &mut gate)
    };
    let progress = tracker.scanned() - scanned;
    limiter.charge_bytes(progress);
    if let (Some(a), Some(queue)) = (scan.answer, answers) {
        queue.push(a);
        lane.nudge_peer();
    }
    let used = scan.safe + scan.drop;
    let (then, after) = match (scan.violation, scan.limited) {
        (Some(v), _) => (Some(Held::No), After::Violation(v)),
        (None, Some(Limited::Wait(d))) => (Some(throttle_for(d)), After::Nothing),
        (None, Some(Limited::Close)) => (Some(Held::No), After::PolicyClose),
        // Nothing more to judge within what was read, or within the budget: wait for either.
        (None, None) if progress == 0 && used == 0 => {
            let held = if limit == pending.len() {
                Held::No
            } else {
                throttle_for(limiter.bytes_wait())
            };
            (Some(held), After::Nothing)
        }
        (None, None) => (None, After::Nothing),
    };
    Pass {
        safe: scan.safe,
        used,
        then,
        after,
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        1001 => "going away",
        1002 => "protocol error",
        1003 => "binary messages only",
        1009 => "message too big",
        1008 => "policy violation",
        1014 => "bad gateway",
        _ => "protocol error",
    }
}

/// One side of a relayed connection: its read and write halves and the bytes already read
/// from it (past the HTTP head), which the connection keeps.
pub struct Side<'a, R, W> {
    /// Where this side's bytes come from.
    pub read: R,
    /// Where bytes for this side go.
    pub write: W,
    /// Bytes read from this side before the relay started; the direction's buffer after.
    pub leftover: &'a mut BytesMut,
}

/// What a relay needs besides its two sides.
pub struct Pump<'a, F> {
    /// The connection's settings.
    pub opts: &'a PumpOptions,
    /// The connection's drain signal.
    pub drain: &'a DrainSignal,
    /// Receives the traffic moved every few seconds and once at the end, so metrics stay
    /// current for long-lived connections without touching shared counters per message.
    pub fold: &'a F,
}

/// Relays one upgraded connection until it ends; the future returns what happened.
/// `shared` is [`Shared::new`], owned by the caller so it is stored once.
pub(crate) fn relay<'a, CR, CW, UR, UW, F>(
    client: Side<'a, CR, CW>,
    upstream: Side<'a, UR, UW>,
    pump: &'a Pump<'a, F>,
    limits: Option<&'a mut LimitState>,
    shared: &'a Shared,
) -> Relay<'a, impl Future<Output = DirReport> + 'a, impl Future<Output = DirReport> + 'a, F>
where
    CR: Source + 'a,
    CW: AsyncWrite + Unpin + 'a,
    UR: Source + 'a,
    UW: AsyncWrite + Unpin + 'a,
    F: Fn(Traffic) + Sync,
{
    let rules = pump.opts.mosaic;
    let lane = |dir| Lane { dir, shared };
    let (up_limits, down_limits) = match limits {
        Some(LimitState { up, down }) => (up.as_mut(), down.as_mut()),
        None => (None, None),
    };
    Relay {
        up: forward(
            client.read,
            upstream.write,
            client.leftover,
            rules,
            lane(Direction::ClientToUpstream),
            up_limits,
        ),
        down: forward(
            upstream.read,
            client.write,
            upstream.leftover,
            rules,
            lane(Direction::UpstreamToClient),
            down_limits,
        ),
        // One timer for every deadline (idle, keepalive, fold, linger, drain close): it is
        // re-armed only when it fires or a deadline appears, never per message.
        timer: Box::pin(tokio::time::sleep(FOLD_EVERY)),
        rearm: false,
        clock: Clock::new(),
        up_rep: None,
        down_rep: None,
        shared,
        pump,
    }
}

pin_project_lite::pin_project! {
    /// Both directions of one connection, its drain signal and its timer, polled together
    /// in the connection's task.
    ///
    /// Written by hand rather than as an `async` block around `select!`: a block keeps every
    /// value it moves into the directions twice and `select!` adds its own copies of the
    /// branches (measured: 1,280 bytes as a block against 752 for this struct holding the
    /// same state, on every idle connection).
    pub(crate) struct Relay<'a, U, D, F> {
        #[pin]
        up: U,
        #[pin]
        down: D,
        // Boxed: 112 bytes that would take the connection's task past 1,152 bytes, where its
        // 128-byte alignment makes the allocator round it up to 1,536 (docs/architecture.md).
        timer: Pin<Box<tokio::time::Sleep>>,
        // The timer fired: re-arm it on the next turn even if the deadline is unchanged.
        rearm: bool,
        clock: Clock,
        up_rep: Option<DirReport>,
        down_rep: Option<DirReport>,
        shared: &'a Shared,
        pump: &'a Pump<'a, F>,
    }
}

impl<U, D, F> Future for Relay<'_, U, D, F>
where
    U: Future<Output = DirReport>,
    D: Future<Output = DirReport>,
    F: Fn(Traffic) + Sync,
{
    type Output = RelayReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayReport> {
        let mut this = self.project();
        let (shared, pump, clock) = (*this.shared, *this.pump, &mut *this.clock);
        loop {
            shared.stirred.store(false, Ordering::Relaxed);
            if this.up_rep.is_none() {
                if let Poll::Ready(r) = this.up.as_mut().poll(cx) {
                    clock.direction_ended(shared, &r, Closer::Client);
                    *this.up_rep = Some(r);
                }
            }
            if this.down_rep.is_none() {
                if let Poll::Ready(r) = this.down.as_mut().poll(cx) {
                    clock.direction_ended(shared, &r, Closer::Upstream);
                    *this.down_rep = Some(r);
                }
            }
            if over(shared, this.up_rep.is_some(), this.down_rep.is_some()) {
                return Poll::Ready(clock.report(shared, pump.fold));
            }
            if !clock.kicked {
                if let Poll::Ready(why) = pump.drain.poll_kicked(cx) {
                    clock.kicked(shared, why);
                    continue;
                }
            }
            if !clock.drain_seen {
                if let Poll::Ready(close_by) = pump.drain.poll_fired(cx) {
                    if pump.opts.mosaic.is_some() {
                        shared.send(&shared.to_client, Command::CloseQueries);
                    }
                    clock.drain_started(shared, close_by);
                    continue;
                }
            }
            // Only the deadline crosses the wait; the timer's turn is taken afresh when it fires.
            let next = clock.turn(shared, pump.opts.idle_timeout).next;
            if *this.rearm || this.timer.deadline() != next {
                this.timer.as_mut().reset(next);
                *this.rearm = false;
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                *this.rearm = true;
                if clock.on_timer(shared, pump.opts.idle_timeout, pump.fold) == Tick::Stop {
                    return Poll::Ready(clock.report(shared, pump.fold));
                }
                continue;
            }
            // A direction sent the other a command or a nudge during this pass: let it see it.
            if !shared.stirred.load(Ordering::Relaxed) {
                return Poll::Pending;
            }
        }
    }
}

/// Whether the WebSocket is over: both directions done, or one done and the other's source
/// has already sent its close frame (no need to wait for the second TCP close).
fn over(shared: &Shared, up_done: bool, down_done: bool) -> bool {
    let closed_up = up_done || shared.up.close_seen.load(Ordering::Relaxed);
    let closed_down = down_done || shared.down.close_seen.load(Ordering::Relaxed);
    (up_done || down_done) && closed_up && closed_down
}

/// The relay's deadlines and the state they depend on: idle and keepalive, a write that
/// makes no progress, metric folds, the linger after a close, and this connection's point
/// in the drain window.
///
/// Points in time are marks: milliseconds since the relay started ([`Shared::started`]),
/// [`NEVER`] for none; 8 bytes each where an `Option<Instant>` takes 16, on every idle
/// connection.
struct Clock {
    closer: Option<Closer>,
    drain_seen: bool,
    /// The client's address was refused while connected (a kick was acted on).
    kicked: bool,
    linger_until: u64,
    drain_close_at: u64,
    next_fold: u64,
    /// The activity mark at which the last keepalive ping was sent.
    pinged_at: u64,
    folded: Traffic,
    /// The side the write timeout cut.
    stalled: Option<Stalled>,
}

/// No mark: activity and deadlines never reach it.
const NEVER: u64 = u64::MAX;

/// One turn of the relay loop: the activity mark it saw and the deadlines derived from it.
struct Turn {
    last_ms: u64,
    /// No close under way: idle and keepalive apply.
    quiet: bool,
    idle_at: u64,
    ping_at: u64,
    /// When the write waiting longest times out, and to which side it goes.
    write_at: u64,
    stalled: Option<Stalled>,
    /// The earliest deadline: what the timer is armed for.
    next: tokio::time::Instant,
}

/// Whether the relay goes on after a timer tick.
#[derive(PartialEq, Eq)]
enum Tick {
    Continue,
    Stop,
}

impl Shared {
    /// Now, as a mark.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The instant of mark `ms`.
    fn instant(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + Duration::from_millis(ms))
    }

    /// When the earlier of the two directions' waiting writes times out, and the side it
    /// writes to; the clock is read only while a write is under way.
    fn write_deadline(&self) -> (u64, Option<Stalled>) {
        if !self.down.write.pending() && !self.up.write.pending() {
            return (NEVER, None);
        }
        let (now, timeout) = (self.now_ms(), u64::from(self.write_timeout_ms));
        let to_client = self.down.write.deadline(now, timeout);
        let to_upstream = self.up.write.deadline(now, timeout);
        match (to_client, to_upstream) {
            (NEVER, NEVER) => (NEVER, None),
            (c, u) if c <= u => (c, Some(Stalled::Client)),
            (_, u) => (u, Some(Stalled::Upstream)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Clock {
    fn new() -> Self {
        Clock {
            closer: None,
            drain_seen: false,
            kicked: false,
            linger_until: NEVER,
            drain_close_at: NEVER,
            next_fold: millis(FOLD_EVERY),
            pinged_at: NEVER,
            folded: Traffic::default(),
            stalled: None,
        }
    }

    fn turn(&self, shared: &Shared, idle_timeout: Duration) -> Turn {
        let last_ms = shared.last_activity_ms.load(Ordering::Relaxed);
        let quiet = self.closer.is_none() && self.linger_until == NEVER;
        let idle_at = last_ms.saturating_add(millis(idle_timeout));
        let ping_at = last_ms.saturating_add(millis(idle_timeout / 2));
        let mut next = self
            .next_fold
            .min(self.linger_until)
            .min(self.drain_close_at);
        let (write_at, stalled) = match quiet {
            true => shared.write_deadline(),
            false => (NEVER, None),
        };
        if quiet {
            next = next.min(write_at).min(if self.pinged_at == last_ms {
                idle_at
            } else {
                ping_at
            });
        }
        Turn {
            last_ms,
            quiet,
            idle_at,
            ping_at,
            write_at,
            stalled,
            next: shared.instant(next),
        }
    }

    /// A direction finished; `ended_by` is who closed if its source ended by itself.
    fn direction_ended(&mut self, shared: &Shared, r: &DirReport, ended_by: Closer) {
        if r.violated {
            self.closer.get_or_insert(Closer::Gateway);
        } else if r.source_ended {
            self.closer.get_or_insert(ended_by);
        }
        self.linger(shared.now_ms());
    }

    /// Gives the peers [`CLOSE_LINGER`] from `now` to finish, unless a linger runs already.
    fn linger(&mut self, now: u64) {
        if self.linger_until == NEVER {
            self.linger_until = now + millis(CLOSE_LINGER);
        }
    }

    /// The client's address is refused now (denied by a reload, banned, blocked over
    /// NIP-86): 1008 to the client, 1001 to the upstream, at once. A Mosaic 2025 client hears
    /// Closing first: IP_TEMP_BANNED 48 for a ban, IP_PERM_BANNED 49 for a block or a deny.
    fn kicked(&mut self, shared: &Shared, why: Kick) {
        self.kicked = true;
        tracing::debug!(?why, "client refused while connected: closing 1008");
        self.closer.get_or_insert(Closer::Gateway);
        let closing = match why {
            Kick::TempBanned => Closing::Banned,
            Kick::Denied | Kick::PermBanned => Closing::Blocked,
        };
        shared.send(&shared.to_client, Command::Closing(closing));
        shared.send(&shared.to_client, Command::Close(1008));
        shared.send(&shared.to_upstream, Command::Close(1001));
        self.linger(shared.now_ms());
    }

    /// Picks this connection's own point in the drain window, so clients do not reconnect
    /// in one burst.
    fn drain_started(&mut self, shared: &Shared, close_by: tokio::time::Instant) {
        self.drain_seen = true;
        let window = close_by.saturating_duration_since(tokio::time::Instant::now());
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
        self.drain_close_at = shared.now_ms() + millis(window.mul_f64(frac));
    }

    /// What the relay reports once it is over; folds the last traffic into the metrics.
    fn report<F: Fn(Traffic)>(&self, shared: &Shared, fold: &F) -> RelayReport {
        let sent = |c: &DirCounters| match c.sent_close.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code),
        };
        let total = shared.traffic();
        fold(total.since(self.folded));
        RelayReport {
            bytes_up: total.bytes_up,
            bytes_down: total.bytes_down,
            messages_up: total.messages_up,
            messages_down: total.messages_down,
            gateway_close_code: sent(&shared.down),
            closer: self.closer.or(Some(Closer::Gateway)),
            violation: *shared.violation.lock(),
            stalled: self.stalled,
            duration: shared.started.elapsed(),
        }
    }

    fn on_timer<F: Fn(Traffic)>(
        &mut self,
        shared: &Shared,
        idle_timeout: Duration,
        fold: &F,
    ) -> Tick {
        // Taken before anything below changes the clock: the deadlines of the activity mark
        // now. Activity during the wait moved them later, so nothing fires early.
        let turn = self.turn(shared, idle_timeout);
        let now = shared.now_ms();
        if now >= self.linger_until {
            return Tick::Stop;
        }
        if now >= self.next_fold {
            let t = shared.traffic();
            fold(t.since(self.folded));
            self.folded = t;
            self.next_fold = now + millis(FOLD_EVERY);
        }
        if now >= self.drain_close_at {
            self.drain_close_at = NEVER;
            self.closer.get_or_insert(Closer::Gateway);
            shared.close_both(1001);
            self.linger(now);
        }
        if turn.quiet && self.closer.is_none() && now >= turn.write_at {
            // A side has taken nothing for the write timeout: the other hears 1001, and
            // the stalled one (no frame can reach it) is cut when the linger ends.
            self.closer = Some(Closer::Gateway);
            self.stalled = turn.stalled;
            shared.close_both(1001);
            self.linger(now);
        }
        let still_ms = shared.last_activity_ms.load(Ordering::Relaxed);
        if turn.quiet && still_ms == turn.last_ms && self.closer.is_none() {
            if self.pinged_at == turn.last_ms && now >= turn.idle_at {
                self.closer = Some(Closer::Gateway);
                shared.close_both(1001);
                self.linger(now);
            } else if self.pinged_at != turn.last_ms && now >= turn.ping_at {
                self.pinged_at = turn.last_ms;
                shared.send(&shared.to_client, Command::Ping);
            }
        }
        Tick::Continue
    }
}

#[cfg(test)]
mod sent_close_codes {
    use super::{close_reason, SENT_CLOSE_CODES};
    use crate::relay::mosaic::{Direction, Violation};

    #[test]
    fn every_code_the_gateway_sends_a_client_is_listed() {
        // Drain and idle timeout (1001), a lost upstream (1014), and each violation.
        let mut chosen = vec![1001, 1014];
        for v in Violation::ALL {
            for dir in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
                chosen.push(v.client_close_code(dir));
            }
        }
        for code in chosen {
            assert!(SENT_CLOSE_CODES.contains(&code), "{code} missing");
        }
        for code in SENT_CLOSE_CODES {
            assert!(!close_reason(code).is_empty());
        }
    }
}

#[cfg(test)]
mod write_stalls {
    use super::{WriteStall, NEVER};

    #[test]
    fn a_write_times_out_from_when_it_began_to_wait_across_the_32_bit_wrap() {
        let w = WriteStall::default();
        assert_eq!(w.deadline(5_000, 1_000), NEVER, "no write, no deadline");
        w.begin();
        assert!(w.pending());
        // Stamped on the first look after it had to wait, not moved by later looks.
        assert_eq!(w.deadline(5_000, 1_000), 6_000);
        assert_eq!(w.deadline(5_900, 1_000), 6_000);
        w.end();
        assert!(!w.pending());
        assert_eq!(w.deadline(7_000, 1_000), NEVER);
        // Marks past 2^32 ms (a connection older than 49 days) wrap in the stamp.
        let late = (1u64 << 32) + 10;
        w.begin();
        assert_eq!(w.deadline(late, 1_000), late + 1_000);
        assert_eq!(w.deadline(late + 500, 1_000), late + 1_000);
        // A stamp that would read as a sentinel is moved on by at most 2 ms, never early.
        w.end();
        w.begin();
        let at_wrap = 1u64 << 32;
        assert_eq!(w.deadline(at_wrap, 1_000), at_wrap + 1_000);
        assert_eq!(w.deadline(at_wrap + 1, 1_000), at_wrap + 1 + 1_000);
        assert_eq!(w.deadline(at_wrap + 600, 1_000), at_wrap + 2 + 1_000);
    }
}

#[cfg(test)]
mod controls {
    use super::{Command, Control};

    #[test]
    fn commands_come_out_in_order_and_nothing_follows_a_close() {
        let c = Control::default();
        assert_eq!(c.peek(), None);
        assert!(!c.take_signal());
        c.send(Command::Close(1008));
        c.send(Command::Close(1001));
        c.send(Command::CloseQueries);
        c.send(Command::Ping);
        assert!(c.take_signal());
        assert!(!c.take_signal(), "the signal is consumed once");
        // The first close wins; what came after it would never be sent.
        assert_eq!(c.peek(), Some(Command::Close(1008)));
        c.pop(Command::Close(1008));
        assert_eq!(c.peek(), None);

        let c = Control::default();
        c.send(Command::Ping);
        c.send(Command::CloseQueries);
        c.send(Command::Close(1001));
        assert_eq!(c.peek(), Some(Command::CloseQueries));
        c.pop(Command::CloseQueries);
        assert_eq!(c.peek(), Some(Command::Ping));
        c.pop(Command::Ping);
        assert_eq!(c.peek(), Some(Command::Close(1001)));
        c.nudge();
        assert!(c.take_signal());
        assert_eq!(
            c.peek(),
            Some(Command::Close(1001)),
            "a nudge is not a command"
        );
    }
}
