//! The Mosaic message rules the gateway enforces in flight.
//!
//! Every version of Mosaic keeps two rules: the type byte says who may send a message
//! (clients below 0x80, servers at 0x80 and above, 0xF0 either way) and a message is at
//! most `max_message_bytes`. The seed era's per-type layouts are only checked when the
//! operator pins that version with `validate: strict`, since later versions changed the
//! layouts without any signal on the wire.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashSet, VecDeque};

use serde::Deserialize;

use crate::relay::profile::GatewayMessage;

/// A record is at most 1 MiB; the longest seed-era message adds an 8-byte header.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1_048_584;

/// Query Closed code sent to clients when the gateway shuts down.
pub const QUERY_CLOSED_SHUTTING_DOWN: u8 = 0x30;

/// Query Closed code for a query beyond `rate_limits.mosaic_open_queries` ("too open").
pub const QUERY_CLOSED_TOO_OPEN: u8 = 0x11;

/// Submission Result code for a Submission over `rate_limits.mosaic_submissions`
/// ("too fast").
pub const SUBMISSION_TOO_FAST: u8 = 0x12;

/// Where a Submission's record starts in the message, and so the bytes a Submission Result
/// echoes: the first 32 bytes of the record, as the in-repo backend answers (the seed-era
/// record layouts differ on where the id sits; the gateway matches its backend).
pub const SUBMISSION_RECORD_OFFSET: usize = 4;

/// Which way a message travels through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the WebSocket client to the backend.
    ClientToUpstream,
    /// From the backend to the WebSocket client.
    UpstreamToClient,
}

impl Direction {
    /// The metric label for this direction.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "client_to_upstream",
            Direction::UpstreamToClient => "upstream_to_client",
        }
    }
}

/// How much of each message the gateway checks (`mosaic.validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// Seed-era layouts, lengths and reserved bytes, plus the direction rule.
    #[default]
    Strict,
    /// Only the type byte's direction rule (and the size cap).
    Direction,
}

/// The seed-era message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MosaicMessageType {
    /// 0x01, client: open a query.
    Query,
    /// 0x02, client: close a query.
    CloseQuery,
    /// 0x03, client: submit a record.
    Submission,
    /// 0x80, server: a record for a query.
    Record,
    /// 0x81, server: stored records sent, live ones may follow.
    QueryComplete,
    /// 0x82, server: the query is closed, with a code.
    QueryClosed,
    /// 0x83, server: the outcome of a submission.
    SubmissionResult,
    /// 0xF0: unrecognized message, either direction.
    Unrecognized,
}

impl MosaicMessageType {
    /// Maps a type byte to a seed-era type, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Query,
            0x02 => Self::CloseQuery,
            0x03 => Self::Submission,
            0x80 => Self::Record,
            0x81 => Self::QueryComplete,
            0x82 => Self::QueryClosed,
            0x83 => Self::SubmissionResult,
            0xF0 => Self::Unrecognized,
            _ => return None,
        })
    }

    /// Bytes of the message needed before its layout can be judged.
    fn head_len(self) -> usize {
        match self {
            Self::Query | Self::Record => 8,
            Self::CloseQuery
            | Self::Submission
            | Self::QueryComplete
            | Self::QueryClosed
            | Self::SubmissionResult => 4,
            Self::Unrecognized => 1,
        }
    }
}

/// What went wrong with a message; each kind is a metric label and maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A text message on a Mosaic connection.
    TextMessage,
    /// A message meant for the other direction.
    WrongDirection,
    /// A message whose layout does not match its type (strict mode), or an empty one.
    Malformed,
    /// A message over `max_message_bytes`.
    TooLarge,
    /// Broken WebSocket framing (masking, reserved bits or opcodes, fragmentation).
    Framing,
}

impl Violation {
    /// Every kind, for the series that exist from the first scrape.
    pub const ALL: [Violation; 5] = [
        Violation::TextMessage,
        Violation::WrongDirection,
        Violation::Malformed,
        Violation::TooLarge,
        Violation::Framing,
    ];

    /// The `protocol_violations_total{kind}` label.
    pub fn label(self) -> &'static str {
        match self {
            Violation::TextMessage => "text_message",
            Violation::WrongDirection => "wrong_direction",
            Violation::Malformed => "malformed",
            Violation::TooLarge => "too_large",
            Violation::Framing => "framing",
        }
    }

    /// The close code the client receives when `dir`'s sender broke this rule.
    pub fn client_close_code(self, dir: Direction) -> u16 {
        match (self, dir) {
            (Violation::TooLarge, _) => 1009,
            (Violation::TextMessage, Direction::ClientToUpstream) => 1003,
            (_, Direction::ClientToUpstream) => 1002,
            (_, Direction::UpstreamToClient) => 1014,
        }
    }

    /// The close code the backend receives for the same violation.
    pub fn upstream_close_code(self, dir: Direction) -> u16 {
        match (self, dir) {
            (Violation::TooLarge, _) => 1009,
            (Violation::TextMessage, Direction::ClientToUpstream) => 1003,
            // The client broke the rule: tell the backend the gateway is ending the session.
            (_, Direction::ClientToUpstream) => 1001,
            (_, Direction::UpstreamToClient) => 1002,
        }
    }
}

/// A change to the set of open queries on a connection, learned from a message head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryEvent {
    /// A client Query opened this query id.
    Opened([u8; 2]),
    /// A Close Query or Query Closed ended this query id.
    Closed([u8; 2]),
}

/// Query ids one connection may have open when `rate_limits.mosaic_open_queries` is not
/// set: the tracking stays bounded (a few KiB) whatever the config; a query beyond it is
/// answered with the version's Query Closed, never forwarded.
pub const MAX_OPEN_QUERIES: usize = 1024;

/// Refusals queued for the client at most on a connection without rate limits; beyond,
/// the client's direction stops reading until they are written.
pub const MAX_QUEUED_REFUSALS: usize = 64;

/// A connection's open query ids and the gateway's refusals waiting for the client.
#[derive(Default)]
struct QuerySet {
    open: HashSet<[u8; 2]>,
    refused: VecDeque<GatewayMessage>,
}

/// The query ids a connection's client has open.
///
/// Unallocated until the first Query: most connections never open one, and an empty
/// `HashSet` inline would cost 40 more bytes on every idle connection (hence the box). A set
/// once allocated, so each Query and Close Query stays O(1); at most
/// [`MAX_OPEN_QUERIES`] ids unless the operator's cap says otherwise.
#[derive(Default)]
pub struct OpenQueries(Mutex<Option<Box<QuerySet>>>);

impl OpenQueries {
    /// The set's slot, locked; a panic elsewhere leaves the ids consistent.
    fn slot(&self) -> MutexGuard<'_, Option<Box<QuerySet>>> {
        self.0.lock()
    }

    /// Runs `f` on the set, created on first use.
    pub fn with<R>(&self, f: impl FnOnce(&mut HashSet<[u8; 2]>) -> R) -> R {
        f(&mut self.slot().get_or_insert_with(Box::default).open)
    }

    /// Applies what a message head said; closing a query never allocates the set.
    pub fn apply(&self, ev: QueryEvent) {
        let mut set = self.slot();
        match ev {
            QueryEvent::Opened(id) => {
                set.get_or_insert_with(Box::default).open.insert(id);
            }
            QueryEvent::Closed(id) => {
                if let Some(s) = set.as_mut() {
                    s.open.remove(&id);
                }
            }
        }
    }

    /// Applies `ev` unless it opens a new id while `cap` are open; false then (the caller
    /// answers the client).
    pub fn apply_capped(&self, ev: QueryEvent, cap: usize) -> bool {
        if let QueryEvent::Opened(id) = ev {
            let mut set = self.slot();
            let s = set.get_or_insert_with(Box::default);
            if s.open.len() >= cap && !s.open.contains(&id) {
                return false;
            }
            s.open.insert(id);
            return true;
        }
        self.apply(ev);
        true
    }

    /// Queues an answer for the client (a refused query); returns how many wait.
    pub fn refuse(&self, m: GatewayMessage) -> usize {
        let mut set = self.slot();
        let s = set.get_or_insert_with(Box::default);
        s.refused.push_back(m);
        s.refused.len()
    }

    /// Answers waiting for the client.
    pub fn refused(&self) -> usize {
        self.slot().as_ref().map_or(0, |s| s.refused.len())
    }

    /// Takes the answers waiting for the client, in order.
    pub fn take_refused(&self, mut each: impl FnMut(&GatewayMessage)) {
        if let Some(s) = self.slot().as_mut() {
            for m in s.refused.drain(..) {
                each(&m);
            }
        }
    }

    /// Empties the set, yielding the ids that were open.
    pub fn take(&self) -> impl Iterator<Item = [u8; 2]> {
        self.slot()
            .take()
            .into_iter()
            .flat_map(|s| s.open.into_iter())
    }
}

/// The verdict on a message's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Not enough bytes yet: the message's first `n` bytes are needed.
    NeedMore(usize),
    /// The message may pass.
    Accept {
        /// The exact total length the layout requires, when it fixes one.
        expected_len: Option<u64>,
        /// Query bookkeeping this message implies.
        query: Option<QueryEvent>,
    },
}

fn u16_le(b: &[u8]) -> u64 {
    u64::from(b[0]) | u64::from(b[1]) << 8
}

fn u24_le(b: &[u8]) -> u64 {
    u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16
}

/// Judges a message from its first bytes.
///
/// `head` holds the message's first bytes (up to what was asked for); `ended` says the
/// message has no more bytes than these.
pub fn judge_head(
    dir: Direction,
    validation: Validation,
    head: &[u8],
    ended: bool,
) -> Result<HeadVerdict, Violation> {
    let Some(&type_byte) = head.first() else {
        return if ended {
            Err(Violation::Malformed)
        } else {
            Ok(HeadVerdict::NeedMore(1))
        };
    };
    let from_server_range = type_byte >= 0x80;
    let direction_ok = type_byte == 0xF0
        || match dir {
            Direction::ClientToUpstream => !from_server_range,
            Direction::UpstreamToClient => from_server_range,
        };
    if !direction_ok {
        return Err(Violation::WrongDirection);
    }
    if validation == Validation::Direction {
        return Ok(HeadVerdict::Accept {
            expected_len: None,
            query: None,
        });
    }
    let Some(kind) = MosaicMessageType::from_byte(type_byte) else {
        return Err(Violation::Malformed);
    };
    let need = kind.head_len();
    if head.len() < need {
        return if ended {
            Err(Violation::Malformed)
        } else {
            Ok(HeadVerdict::NeedMore(need))
        };
    }
    let id = [
        head.get(1).copied().unwrap_or(0),
        head.get(2).copied().unwrap_or(0),
    ];
    let (expected_len, layout_ok, query) = match kind {
        MosaicMessageType::Query => (
            Some(8 + u16_le(&head[4..6])),
            head[3] == 0 && head[6] == 0 && head[7] == 0,
            Some(QueryEvent::Opened(id)),
        ),
        MosaicMessageType::CloseQuery => (Some(4), head[3] == 0, Some(QueryEvent::Closed(id))),
        MosaicMessageType::Submission => (Some(4 + u24_le(&head[1..4])), true, None),
        MosaicMessageType::Record => (
            Some(8 + u24_le(&head[5..8])),
            head[3] == 0 && head[4] == 0,
            None,
        ),
        MosaicMessageType::QueryComplete => (Some(4), head[3] == 0, None),
        MosaicMessageType::QueryClosed => (Some(4), true, Some(QueryEvent::Closed(id))),
        MosaicMessageType::SubmissionResult => (Some(36), head[1] == 0 && head[2] == 0, None),
        MosaicMessageType::Unrecognized => (None, true, None),
    };
    if !layout_ok {
        return Err(Violation::Malformed);
    }
    Ok(HeadVerdict::Accept {
        expected_len,
        query,
    })
}

/// Builds the Query Closed message the gateway sends for an open query while draining.
pub fn query_closed(id: [u8; 2], code: u8) -> [u8; 4] {
    [0x82, id[0], id[1], code]
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;

    fn strict(dir: Direction, head: &[u8], ended: bool) -> Result<HeadVerdict, Violation> {
        judge_head(dir, Validation::Strict, head, ended)
    }

    #[test]
    fn direction_rule_holds_in_both_modes() {
        for v in [Validation::Strict, Validation::Direction] {
            assert_eq!(
                judge_head(ClientToUpstream, v, &[0x80], false),
                Err(Violation::WrongDirection)
            );
            assert_eq!(
                judge_head(UpstreamToClient, v, &[0x03], false),
                Err(Violation::WrongDirection)
            );
            assert!(judge_head(ClientToUpstream, v, &[0xF0], true).is_ok());
            assert!(judge_head(UpstreamToClient, v, &[0xF0], true).is_ok());
        }
        // Later-era types pass in direction mode only.
        assert!(judge_head(ClientToUpstream, Validation::Direction, &[0x05], true).is_ok());
        assert_eq!(
            strict(ClientToUpstream, &[0x05], true),
            Err(Violation::Malformed)
        );
    }

    #[test]
    fn query_layout() {
        assert_eq!(
            strict(ClientToUpstream, &[0x01, 7, 9], false),
            Ok(HeadVerdict::NeedMore(8))
        );
        assert_eq!(
            strict(ClientToUpstream, &[0x01, 7, 9, 0, 3, 0, 0, 0], false),
            Ok(HeadVerdict::Accept {
                expected_len: Some(11),
                query: Some(QueryEvent::Opened([7, 9]))
            })
        );
        assert_eq!(
            strict(ClientToUpstream, &[0x01, 7, 9, 1, 3, 0, 0, 0], false),
            Err(Violation::Malformed)
        );
        assert_eq!(
            strict(ClientToUpstream, &[0x01, 7, 9], true),
            Err(Violation::Malformed)
        );
    }

    #[test]
    fn server_layouts() {
        assert_eq!(
            strict(UpstreamToClient, &[0x80, 1, 2, 0, 0, 0x10, 0, 0], false),
            Ok(HeadVerdict::Accept {
                expected_len: Some(24),
                query: None
            })
        );
        assert_eq!(
            strict(UpstreamToClient, &[0x82, 1, 2, 0x30], true),
            Ok(HeadVerdict::Accept {
                expected_len: Some(4),
                query: Some(QueryEvent::Closed([1, 2]))
            })
        );
        assert_eq!(
            strict(UpstreamToClient, &[0x83, 0, 1, 1], false),
            Err(Violation::Malformed)
        );
        assert_eq!(
            strict(UpstreamToClient, &[], true),
            Err(Violation::Malformed)
        );
    }

    #[test]
    fn close_codes() {
        assert_eq!(
            Violation::TextMessage.client_close_code(ClientToUpstream),
            1003
        );
        assert_eq!(
            Violation::WrongDirection.client_close_code(ClientToUpstream),
            1002
        );
        assert_eq!(
            Violation::Malformed.client_close_code(UpstreamToClient),
            1014
        );
        assert_eq!(
            Violation::TooLarge.client_close_code(ClientToUpstream),
            1009
        );
    }
}
