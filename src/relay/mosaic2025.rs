//! Mosaic 2025 (`mosaic2025`, specification 0.8.0) message layouts, as the gateway judges
//! and writes them.
//!
//! Two levels. `direction` (the default) keeps what every 2025 implementation agrees on:
//! the type byte's direction, the size cap, and query ids where the type fixes where they
//! are. `"0.8"` checks the specification's exact layouts (`docs/messages.md` of
//! mosaic-spec 0.8.0): the u24 length at [1:4] equal to the message's length, the fixed
//! sizes, BLOB and Closing headers, and zero fields. An implementation in use writes a u32
//! length at [4:8] with zeros at [1:4]; `direction` lets that pass and reads no query id
//! from it, `"0.8"` refuses it.

use crate::relay::mosaic::{Direction, HeadVerdict, QueryEvent, Violation};

/// How much of a 2025 message the gateway checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Direction, size cap, query ids where the layout is known.
    Direction,
    /// The exact layouts of specification 0.8.0.
    Spec08,
}

/// Result codes of specification 0.8.0 ("Result Codes" in `docs/messages.md`).
pub mod code {
    /// 39 `TOO_FAST`: requests are coming in too fast from this client.
    pub const TOO_FAST: u8 = 39;
    /// 48 `IP_TEMP_BANNED`.
    pub const IP_TEMP_BANNED: u8 = 48;
    /// 49 `IP_PERM_BANNED`.
    pub const IP_PERM_BANNED: u8 = 49;
    /// 64 `SHUTTING_DOWN`.
    pub const SHUTTING_DOWN: u8 = 64;
}

/// The 2025 message types (`docs/messages.md`, table "Messages").
pub mod kind {
    /// Client: query specific records by id or address.
    pub const GET: u8 = 0x01;
    /// Client: a query that closes once served.
    pub const QUERY: u8 = 0x02;
    /// Client: a query kept open.
    pub const SUBSCRIBE: u8 = 0x03;
    /// Client: close a subscription (the table says 0x4; the text's "0x3" is a typo).
    pub const UNSUBSCRIBE: u8 = 0x04;
    /// Client: submit a record.
    pub const SUBMISSION: u8 = 0x05;
    /// Client: DHT lookup (layout TBD).
    pub const DHT_LOOKUP: u8 = 0x06;
    /// Client: submit a BLOB.
    pub const BLOB_SUBMISSION: u8 = 0x07;
    /// Client: get a BLOB.
    pub const BLOB_GET: u8 = 0x08;
    /// Client: HELLO (sent as HTTP headers over WebSockets, never as a message).
    pub const HELLO: u8 = 0x10;
    /// Client: HELLO AUTH (layout TBD).
    pub const HELLO_AUTH: u8 = 0x11;
    /// Server: a record for a query.
    pub const RECORD: u8 = 0x80;
    /// Server: a subscription served its stored records.
    pub const LOCALLY_COMPLETE: u8 = 0x81;
    /// Server: a query is closed, result at [6].
    pub const QUERY_CLOSED: u8 = 0x82;
    /// Server: a submission's result at [4], id prefix at [8:40].
    pub const SUBMISSION_RESULT: u8 = 0x83;
    /// Server: DHT response (layout TBD).
    pub const DHT_RESPONSE: u8 = 0x84;
    /// Server: a BLOB submission's result.
    pub const BLOB_SUBMISSION_RESULT: u8 = 0x85;
    /// Server: a BLOB, or why not.
    pub const BLOB_RESULT: u8 = 0x86;
    /// Server: HELLO ACK (HTTP headers over WebSockets).
    pub const HELLO_ACK: u8 = 0x90;
    /// Either: the peer's last message was not recognized.
    pub const UNRECOGNIZED: u8 = 0xF0;
    /// Server: the server is closing the connection, result at [1].
    pub const CLOSING: u8 = 0xFE;
}

/// A Submission Result's length: header and the 32-byte id prefix.
pub const SUBMISSION_RESULT_LEN: usize = 40;

/// Where a Submission's record (and so its 48-byte id) starts.
const RECORD_AT: usize = 8;

/// What the layout of one type says about its head.
enum Layout {
    /// Only direction and size are known (TBD layouts).
    Open,
    /// The common header: u24 length at [1:4]; `fixed` is the only length allowed, `step`
    /// a unit the body must be a multiple of; `zero` the header bytes that must be 0.
    Common {
        fixed: Option<u64>,
        step: u64,
        zero: &'static [usize],
    },
    /// BLOB Submission / BLOB Result: u48 data length at [2:8] after a 32-byte hash.
    Blob { zero_result: bool },
    /// A fixed-size message with its own header; `zero` must be 0.
    Fixed { len: u64, zero: &'static [usize] },
    /// Never valid over WebSockets (HELLO / HELLO ACK travel in HTTP headers).
    NotOverWebSockets,
}

fn layout(type_byte: u8) -> Option<Layout> {
    use kind::*;
    let common = |fixed, step, zero| Layout::Common { fixed, step, zero };
    Some(match type_byte {
        GET => common(None, 48, &[6, 7]),
        QUERY | SUBSCRIBE => common(None, 1, &[]),
        UNSUBSCRIBE | LOCALLY_COMPLETE => common(Some(8), 1, &[6, 7]),
        SUBMISSION => common(None, 1, &[4, 5, 6, 7]),
        RECORD => common(None, 1, &[6, 7]),
        QUERY_CLOSED => common(Some(8), 1, &[7]),
        SUBMISSION_RESULT => common(Some(40), 1, &[5, 6, 7]),
        UNRECOGNIZED => common(Some(8), 1, &[4, 5, 6, 7]),
        BLOB_SUBMISSION => Layout::Blob { zero_result: true },
        BLOB_RESULT => Layout::Blob { zero_result: false },
        BLOB_GET => Layout::Fixed {
            len: 40,
            zero: &[1, 2, 3, 4, 5, 6, 7],
        },
        BLOB_SUBMISSION_RESULT => Layout::Fixed {
            len: 40,
            zero: &[2, 3, 4, 5, 6, 7],
        },
        CLOSING => Layout::Fixed {
            len: 8,
            zero: &[2, 3, 4, 5, 6, 7],
        },
        DHT_LOOKUP | DHT_RESPONSE | HELLO_AUTH => Layout::Open,
        HELLO | HELLO_ACK => Layout::NotOverWebSockets,
        _ => return None,
    })
}

/// The query bookkeeping a head implies, when its type carries a query id at [4:6].
fn query_event(head: &[u8]) -> Option<QueryEvent> {
    let id = [*head.get(4)?, *head.get(5)?];
    match head[0] {
        kind::GET | kind::QUERY | kind::SUBSCRIBE => Some(QueryEvent::Opened(id)),
        kind::UNSUBSCRIBE | kind::QUERY_CLOSED => Some(QueryEvent::Closed(id)),
        _ => None,
    }
}

fn carries_query_id(type_byte: u8) -> bool {
    matches!(
        type_byte,
        kind::GET | kind::QUERY | kind::SUBSCRIBE | kind::UNSUBSCRIBE | kind::QUERY_CLOSED
    )
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |acc, &x| acc << 8 | u64::from(x))
}

/// Judges a 2025 message from its first bytes, its direction already checked.
pub(crate) fn judge(check: Check, head: &[u8], ended: bool) -> Result<HeadVerdict, Violation> {
    let type_byte = head[0];
    let need = match check {
        Check::Direction if carries_query_id(type_byte) => 6,
        Check::Direction => 1,
        Check::Spec08 => match layout(type_byte) {
            Some(Layout::Open) => 1,
            Some(_) => 8,
            None => return Err(Violation::Malformed),
        },
    };
    if head.len() < need {
        return match (ended, check) {
            (true, Check::Spec08) => Err(Violation::Malformed),
            // A short message in direction mode passes; it simply carries no query id.
            (true, Check::Direction) => Ok(accept(None, None)),
            (false, _) => Ok(HeadVerdict::NeedMore(need)),
        };
    }
    match check {
        Check::Direction => {
            // Zeros at [1:4] are never a 0.8 length (at least 8): that is the other framing
            // (u32 length at [4:8]), whose [4:6] is no query id.
            let other_framing = head.len() >= 4 && head[1..4] == [0, 0, 0];
            let query = if other_framing {
                None
            } else {
                query_event(head)
            };
            Ok(accept(None, query))
        }
        Check::Spec08 => judge_spec08(head),
    }
}

fn accept(expected_len: Option<u64>, query: Option<QueryEvent>) -> HeadVerdict {
    HeadVerdict::Accept {
        expected_len,
        query,
    }
}

fn judge_spec08(head: &[u8]) -> Result<HeadVerdict, Violation> {
    let zeros = |at: &[usize]| at.iter().all(|&i| head[i] == 0);
    let (expected, ok) = match layout(head[0]) {
        Some(Layout::Open) => return Ok(accept(None, None)),
        Some(Layout::Common { fixed, step, zero }) => {
            let len = le(&head[1..4]);
            let body_ok = len >= 8 && (len - 8).is_multiple_of(step);
            (
                len,
                body_ok && fixed.is_none_or(|f| f == len) && zeros(zero),
            )
        }
        Some(Layout::Blob { zero_result }) => {
            let data = le(&head[2..8]);
            (40u64.saturating_add(data), !zero_result || head[1] == 0)
        }
        Some(Layout::Fixed { len, zero }) => (len, zeros(zero)),
        Some(Layout::NotOverWebSockets) | None => return Err(Violation::Malformed),
    };
    if !ok {
        return Err(Violation::Malformed);
    }
    Ok(accept(Some(expected), query_event(head)))
}

/// Query Closed (8 bytes) for query `id` with result `code` at [6].
pub fn query_closed(id: [u8; 2], code: u8) -> [u8; 8] {
    [kind::QUERY_CLOSED, 8, 0, 0, id[0], id[1], code, 0]
}

/// Closing (8 bytes) with result `code` at [1].
pub fn closing(code: u8) -> [u8; 8] {
    [kind::CLOSING, code, 0, 0, 0, 0, 0, 0]
}

/// Submission Result (40 bytes) with `code` for the Submission whose first bytes are
/// `head`: the record's id starts at [8], so its 32-byte prefix is `head[8..40]`
/// (zero-padded when the message is shorter).
pub fn submission_result(code: u8, head: &[u8]) -> [u8; SUBMISSION_RESULT_LEN] {
    let mut out = [0u8; SUBMISSION_RESULT_LEN];
    out[..5].copy_from_slice(&[kind::SUBMISSION_RESULT, 40, 0, 0, code]);
    let id = head.get(RECORD_AT..).unwrap_or(&[]);
    let n = id.len().min(32);
    out[8..8 + n].copy_from_slice(&id[..n]);
    out
}

/// Whether `dir` may carry `type_byte`: the high bit marks a server message, except
/// Unrecognized 0xF0, which either side sends.
pub fn direction_ok(dir: Direction, type_byte: u8) -> bool {
    type_byte == kind::UNRECOGNIZED
        || match dir {
            Direction::ClientToUpstream => type_byte < 0x80,
            Direction::UpstreamToClient => type_byte >= 0x80,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(t: u8, len: u32, rest: [u8; 4]) -> [u8; 8] {
        let l = len.to_le_bytes();
        [t, l[0], l[1], l[2], rest[0], rest[1], rest[2], rest[3]]
    }

    #[test]
    fn spec08_common_header_fixes_the_length() {
        let q = head(kind::SUBSCRIBE, 20, [7, 9, 0, 0]);
        assert_eq!(
            judge(Check::Spec08, &q, false),
            Ok(accept(Some(20), Some(QueryEvent::Opened([7, 9]))))
        );
        let u = head(kind::UNSUBSCRIBE, 8, [7, 9, 0, 0]);
        assert_eq!(
            judge(Check::Spec08, &u, true),
            Ok(accept(Some(8), Some(QueryEvent::Closed([7, 9]))))
        );
        // Unsubscribe is 8 bytes; Get's body is whole 48-byte ids.
        let u = head(kind::UNSUBSCRIBE, 9, [7, 9, 0, 0]);
        assert_eq!(judge(Check::Spec08, &u, false), Err(Violation::Malformed));
        let g = head(kind::GET, 8 + 47, [1, 0, 0, 0]);
        assert_eq!(judge(Check::Spec08, &g, false), Err(Violation::Malformed));
        let c = head(kind::QUERY_CLOSED, 8, [1, 2, 64, 1]);
        assert_eq!(judge(Check::Spec08, &c, true), Err(Violation::Malformed));
    }

    #[test]
    fn the_other_framing_passes_direction_only() {
        // u32 length at [4:8], zeros at [1:4].
        let m = [kind::SUBSCRIBE, 0, 0, 0, 20, 0, 0, 0];
        assert_eq!(judge(Check::Direction, &m, false), Ok(accept(None, None)));
        assert_eq!(judge(Check::Spec08, &m, false), Err(Violation::Malformed));
        let m = head(kind::SUBSCRIBE, 20, [3, 4, 0, 0]);
        assert_eq!(
            judge(Check::Direction, &m[..6], false),
            Ok(accept(None, Some(QueryEvent::Opened([3, 4]))))
        );
        assert_eq!(
            judge(Check::Direction, &m[..3], false),
            Ok(HeadVerdict::NeedMore(6))
        );
    }

    #[test]
    fn blob_and_closing_layouts() {
        let mut b = [0u8; 8];
        b[0] = kind::BLOB_SUBMISSION;
        b[2] = 10;
        assert_eq!(judge(Check::Spec08, &b, false), Ok(accept(Some(50), None)));
        b[1] = 1;
        assert_eq!(judge(Check::Spec08, &b, false), Err(Violation::Malformed));
        b[0] = kind::BLOB_RESULT;
        assert_eq!(judge(Check::Spec08, &b, false), Ok(accept(Some(50), None)));
        assert_eq!(
            judge(Check::Spec08, &closing(64), true),
            Ok(accept(Some(8), None))
        );
        assert_eq!(
            judge(Check::Spec08, &[kind::HELLO, 8, 0, 0, 0, 0, 0, 0], true),
            Err(Violation::Malformed)
        );
        assert_eq!(
            judge(Check::Spec08, &[kind::HELLO_AUTH], false),
            Ok(accept(None, None))
        );
    }

    #[test]
    fn gateway_messages() {
        assert_eq!(query_closed([1, 2], 39), [0x82, 8, 0, 0, 1, 2, 39, 0]);
        let mut sub = vec![kind::SUBMISSION, 100, 0, 0, 0, 0, 0, 0];
        sub.extend((0u8..40).map(|i| i + 1));
        let r = submission_result(code::TOO_FAST, &sub[..40]);
        assert_eq!(r[..8], [0x83, 40, 0, 0, 39, 0, 0, 0]);
        assert_eq!(&r[8..], &sub[8..40]);
        assert_eq!(judge(Check::Spec08, &r, true), Ok(accept(Some(40), None)));
    }
}
