//! The dev Mosaic backend's `mosaic2025` side: specification 0.8.0 messages (mosaic-spec
//! `docs/messages.md`) and the HELLO ACK headers (`docs/websockets.md`).
//!
//! Records are opaque bytes of at least 48, their id being their first 48 bytes (as in a
//! real record); filters are substrings as on the seed side. BLOBs are kept by BLAKE3 hash.

use std::collections::HashMap;

use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue};

/// Builders for specification 0.8.0 messages, for tests and clients.
pub mod wire {
    pub use crate::relay::mosaic2025::kind::*;

    /// Result codes (0.8.0).
    pub const SUCCESS: u8 = 1;
    /// Accepted a submission.
    pub const ACCEPTED: u8 = 2;
    /// A duplicate of a stored record.
    pub const DUPLICATE: u8 = 3;
    /// Record or BLOB not found.
    pub const NOT_FOUND: u8 = 16;
    /// The request was invalid.
    pub const INVALID: u8 = 36;
    /// Too fast (the gateway's rate limits answer with it).
    pub const TOO_FAST: u8 = 39;
    /// Shutting down.
    pub const SHUTTING_DOWN: u8 = 64;

    fn u24(n: usize) -> [u8; 3] {
        let b = (n.min(0x00FF_FFFF) as u32).to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// A common-header message: type, u24 length, `mid` at [4:8], then `body`.
    pub fn message(kind: u8, mid: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(8 + body.len());
        m.push(kind);
        m.extend_from_slice(&u24(8 + body.len()));
        m.extend_from_slice(&mid);
        m.extend_from_slice(body);
        m
    }

    /// Get: query id, 48-byte ids.
    pub fn get(id: [u8; 2], ids: &[[u8; 48]]) -> Vec<u8> {
        message(GET, [id[0], id[1], 0, 0], &ids.concat())
    }

    /// Query: query id, limit, filter.
    pub fn query(id: [u8; 2], limit: u16, filter: &[u8]) -> Vec<u8> {
        let l = limit.to_le_bytes();
        message(QUERY, [id[0], id[1], l[0], l[1]], filter)
    }

    /// Subscribe: query id, limit, filter.
    pub fn subscribe(id: [u8; 2], limit: u16, filter: &[u8]) -> Vec<u8> {
        let l = limit.to_le_bytes();
        message(SUBSCRIBE, [id[0], id[1], l[0], l[1]], filter)
    }

    /// Unsubscribe: query id.
    pub fn unsubscribe(id: [u8; 2]) -> Vec<u8> {
        message(UNSUBSCRIBE, [id[0], id[1], 0, 0], &[])
    }

    /// Submission of `record`.
    pub fn submission(record: &[u8]) -> Vec<u8> {
        message(SUBMISSION, [0; 4], record)
    }

    /// BLOB Submission of `data`.
    pub fn blob_submission(data: &[u8]) -> Vec<u8> {
        blob(BLOB_SUBMISSION, 0, data)
    }

    /// BLOB Get of the BLOB with this hash.
    pub fn blob_get(hash: [u8; 32]) -> Vec<u8> {
        let mut m = vec![BLOB_GET, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&hash);
        m
    }

    fn blob(kind: u8, result: u8, data: &[u8]) -> Vec<u8> {
        let mut m = vec![kind, result];
        m.extend_from_slice(&(data.len() as u64).to_le_bytes()[..6]);
        m.extend_from_slice(blake3::hash(data).as_bytes());
        m.extend_from_slice(data);
        m
    }

    /// Record for query `id`.
    pub fn record(id: [u8; 2], record: &[u8]) -> Vec<u8> {
        message(RECORD, [id[0], id[1], 0, 0], record)
    }

    /// Locally Complete for query `id`.
    pub fn locally_complete(id: [u8; 2]) -> Vec<u8> {
        message(LOCALLY_COMPLETE, [id[0], id[1], 0, 0], &[])
    }

    /// Query Closed for query `id` with `result` at [6].
    pub fn query_closed(id: [u8; 2], result: u8) -> Vec<u8> {
        message(QUERY_CLOSED, [id[0], id[1], result, 0], &[])
    }

    /// Submission Result with `result` and the record's 32-byte id prefix.
    pub fn submission_result(result: u8, record: &[u8]) -> Vec<u8> {
        let mut prefix = [0u8; 32];
        let n = record.len().min(32);
        prefix[..n].copy_from_slice(&record[..n]);
        message(SUBMISSION_RESULT, [result, 0, 0, 0], &prefix)
    }

    /// BLOB Submission Result.
    pub fn blob_submission_result(result: u8, hash: [u8; 32]) -> Vec<u8> {
        let mut m = vec![BLOB_SUBMISSION_RESULT, result, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&hash);
        m
    }

    /// BLOB Result: the data, or `result` with no data.
    pub fn blob_result(result: u8, hash: [u8; 32], data: &[u8]) -> Vec<u8> {
        let mut m = blob(BLOB_RESULT, result, data);
        m[8..40].copy_from_slice(&hash);
        m
    }

    /// Closing with `result`.
    pub fn closing(result: u8) -> Vec<u8> {
        vec![CLOSING, result, 0, 0, 0, 0, 0, 0]
    }

    /// Unrecognized.
    pub fn unrecognized() -> Vec<u8> {
        message(UNRECOGNIZED, [0; 4], &[])
    }
}

/// Records shorter than an id are invalid.
const MIN_RECORD_LEN: usize = 48;

/// What one 2025 client message asks of the session.
pub(crate) enum Asked<'a> {
    /// Answer with these messages.
    Reply(Vec<Vec<u8>>),
    /// Records matching `filter` (or with these ids), then Query Closed or, for a
    /// subscription, Locally Complete and live records.
    Query {
        id: [u8; 2],
        filter: &'a [u8],
        ids: Vec<&'a [u8]>,
        subscribe: bool,
    },
    /// Close query `id` and answer Query Closed.
    Unsubscribe([u8; 2]),
    /// Store this record and answer Submission Result.
    Submit(&'a [u8]),
    /// A violation: close with 1002.
    Violation(&'static str),
}

fn len_ok(data: &[u8]) -> bool {
    data.len() >= 8
        && usize::from(data[1]) | usize::from(data[2]) << 8 | usize::from(data[3]) << 16
            == data.len()
}

/// Reads one client message. BLOBs are answered here, against `blobs`.
pub(crate) fn read<'a>(data: &'a [u8], blobs: &mut HashMap<[u8; 32], Vec<u8>>) -> Asked<'a> {
    let Some(&kind) = data.first() else {
        return Asked::Violation("empty message");
    };
    let common = matches!(
        kind,
        wire::GET | wire::QUERY | wire::SUBSCRIBE | wire::UNSUBSCRIBE | wire::SUBMISSION
    );
    if common && !len_ok(data) {
        return Asked::Violation("length field does not match the message");
    }
    let id = || [data[4], data[5]];
    match kind {
        wire::GET if (data.len() - 8).is_multiple_of(48) => Asked::Query {
            id: id(),
            filter: &[],
            ids: data[8..].chunks(48).collect(),
            subscribe: false,
        },
        wire::QUERY | wire::SUBSCRIBE => Asked::Query {
            id: id(),
            filter: &data[8..],
            ids: Vec::new(),
            subscribe: kind == wire::SUBSCRIBE,
        },
        wire::UNSUBSCRIBE => Asked::Unsubscribe(id()),
        wire::SUBMISSION if data.len() - 8 >= MIN_RECORD_LEN => Asked::Submit(&data[8..]),
        wire::SUBMISSION => Asked::Reply(vec![wire::submission_result(wire::INVALID, &data[8..])]),
        wire::BLOB_SUBMISSION if data.len() >= 40 => {
            Asked::Reply(vec![blob_submission(data, blobs)])
        }
        wire::BLOB_GET if data.len() == 40 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&data[8..40]);
            Asked::Reply(vec![match blobs.get(&hash) {
                Some(b) => wire::blob_result(wire::SUCCESS, hash, b),
                None => wire::blob_result(wire::NOT_FOUND, hash, &[]),
            }])
        }
        // Layouts still TBD in 0.8.0: said to be unrecognized.
        wire::DHT_LOOKUP | wire::HELLO_AUTH => Asked::Reply(vec![wire::unrecognized()]),
        wire::UNRECOGNIZED => Asked::Reply(Vec::new()),
        k if k >= 0x80 => Asked::Violation("server message type from client"),
        _ => Asked::Violation("malformed or unknown message"),
    }
}

fn blob_submission(data: &[u8], blobs: &mut HashMap<[u8; 32], Vec<u8>>) -> Vec<u8> {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&data[8..40]);
    let mut len = [0u8; 8];
    len[..6].copy_from_slice(&data[2..8]);
    let body = &data[40..];
    let ok = data[1] == 0
        && u64::from_le_bytes(len) == body.len() as u64
        && *blake3::hash(body).as_bytes() == hash;
    if !ok {
        return wire::blob_submission_result(wire::INVALID, hash);
    }
    blobs.insert(hash, body.to_vec());
    wire::blob_submission_result(wire::ACCEPTED, hash)
}

/// The HELLO ACK headers for a 2025 upgrade: the first version the client lists, the
/// features it asked for that `served` has, a signature over its nonce by `signer`, a
/// client nonce when it wants to authenticate, and `service_url`.
pub(crate) fn hello_ack(
    request: &HeaderMap,
    served: &[String],
    signer: &crate::protocol::hello::ServerSigner,
    service_url: Option<&str>,
    out: &mut HeaderMap,
) {
    let text = |name: &str| request.get(name).and_then(|v| v.to_str().ok());
    let mut put = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            out.insert(name, v);
        }
    };
    if let Some(v) = text("x-mosaic-versions").and_then(|v| v.split(',').next()) {
        put("x-mosaic-version", v.trim());
    }
    if let Some(asked) = text("x-mosaic-features") {
        let kept: Vec<&str> = asked
            .split(',')
            .map(str::trim)
            .filter(|f| served.iter().any(|s| s == f))
            .collect();
        put("x-mosaic-features-accepted", &kept.join(","));
    }
    if let Some(nonce) = text("x-mosaic-server-authenticate-nonce") {
        put(
            "x-mosaic-server-authentication",
            &signer.authenticate(nonce.as_bytes()),
        );
    }
    if text("x-mosaic-authenticate-as").is_some() {
        let mut n = [0u8; 16];
        let _ = getrandom::fill(&mut n);
        let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
        put("x-mosaic-client-authenticate-nonce", &hex);
    }
    if let Some(url) = service_url {
        put("x-mosaic-service-url", url);
    }
}
