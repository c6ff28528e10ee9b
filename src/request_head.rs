//! Reading a connection's first request head off the socket, without any HTTP machinery:
//! the upgrade fast path decides from it, and anything else is handed to hyper together
//! with the bytes already read.

use bytes::BytesMut;
use hyper::header::HeaderValue;
use hyper::Request;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a request head could not be read.
pub(crate) enum HeadError {
    /// Longer than `limits.max_request_header_bytes` (or too many header lines).
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
    /// The client went away.
    Closed,
}

/// Header lines accepted in one request head.
const MAX_HEADERS: usize = 96;

/// Reads one request head. Returns the request, every byte read so far and the head's
/// length (bytes after it are the client's first frames, or a body for hyper).
pub(crate) async fn read_request_head<S: AsyncRead + Unpin>(
    s: &mut S,
    max: usize,
) -> Result<(Request<()>, BytesMut, usize), HeadError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        buf.reserve(1024);
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(_) => {}
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let req = owned_request(&parsed).ok_or(HeadError::Malformed)?;
                return Ok((req, buf, len));
            }
            Ok(httparse::Status::Partial) if buf.len() < max => {}
            Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge)
            }
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

fn owned_request(p: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    let version = match p.version? {
        1 => hyper::Version::HTTP_11,
        _ => hyper::Version::HTTP_10,
    };
    let mut req = Request::builder()
        .method(hyper::Method::from_bytes(p.method?.as_bytes()).ok()?)
        .uri(p.path?.parse::<hyper::Uri>().ok()?)
        .version(version)
        .body(())
        .ok()?;
    let h = req.headers_mut();
    h.reserve(p.headers.len());
    for x in p.headers.iter() {
        h.append(
            hyper::header::HeaderName::from_bytes(x.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(x.value).ok()?,
        );
    }
    Some(req)
}
