//! NIP-86 relay management on the admin listener: `POST /` with `Content-Type:
//! application/nostr+json+rpc`, authorised by a NIP-98 event signed by a key in
//! `admin.nip86_pubkeys`.
//!
//! The gateway manages what it owns, the addresses it serves: `blockip`, `unblockip`,
//! `listblockedips` (and `supportedmethods`). Blocks go into the table of standing, so they
//! close the address's open connections at once and persist with `bans.file`. The public
//! listener never answers NIP-86 itself: there the relay's own management API is reached
//! as any other plain request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use nostr::nips::nip98::{self, HttpMethod};
use nostr::{PublicKey, Timestamp, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::gateway::App;

/// The media type of NIP-86 requests.
pub const CONTENT_TYPE_RPC: &str = "application/nostr+json+rpc";

/// NIP-86 requests are a method and a few parameters; anything larger is refused unread.
const MAX_BODY: usize = 64 * 1024;

/// The methods the gateway answers.
const METHODS: [&str; 4] = ["supportedmethods", "blockip", "unblockip", "listblockedips"];

/// Why a request is not served; each is one HTTP status and a JSON `error`.
#[derive(Debug, thiserror::Error)]
enum Nip86Error {
    #[error("NIP-86 is off: no admin.nip86_pubkeys")]
    Off,
    #[error("Content-Type must be {CONTENT_TYPE_RPC}")]
    ContentType,
    #[error("request body over {MAX_BODY} bytes")]
    TooLarge,
    #[error("request body could not be read")]
    Body,
    #[error("no Host header")]
    NoHost,
    #[error("NIP-98 authorization: {0}")]
    Unauthorized(String),
    #[error("the NIP-98 event's key is not in admin.nip86_pubkeys")]
    KeyNotAllowed,
    #[error("not a NIP-86 request: {0}")]
    BadRequest(String),
}

impl Nip86Error {
    fn status(&self) -> StatusCode {
        match self {
            Nip86Error::Off => StatusCode::NOT_FOUND,
            Nip86Error::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Nip86Error::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Nip86Error::Body | Nip86Error::NoHost | Nip86Error::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Nip86Error::Unauthorized(_) | Nip86Error::KeyNotAllowed => StatusCode::UNAUTHORIZED,
        }
    }
}

/// A NIP-86 request.
#[derive(Deserialize)]
struct Call {
    method: String,
    #[serde(default)]
    params: Vec<Value>,
}

fn reply(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Answers `POST /` on the admin listener.
pub(crate) async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match serve(app, req).await {
        Ok(result) => reply(StatusCode::OK, &json!({ "result": result })),
        Err(e) => {
            tracing::info!(error = %e, "NIP-86 request refused");
            reply(e.status(), &json!({ "error": e.to_string() }))
        }
    }
}

async fn serve(app: &App, req: Request<Incoming>) -> Result<Value, Nip86Error> {
    let allowed: Vec<PublicKey> = app
        .gateway()
        .config
        .admin
        .nip86_pubkeys
        .iter()
        .filter_map(|k| PublicKey::parse(k).ok())
        .collect();
    if allowed.is_empty() {
        return Err(Nip86Error::Off);
    }
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let media = header(CONTENT_TYPE).unwrap_or_default();
    if media.split(';').next().map(str::trim) != Some(CONTENT_TYPE_RPC) {
        return Err(Nip86Error::ContentType);
    }
    let host = header(HOST).ok_or(Nip86Error::NoHost)?;
    let auth = header(AUTHORIZATION).unwrap_or_default();
    let path = req.uri().path().to_owned();
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Nip86Error::TooLarge
            } else {
                Nip86Error::Body
            }
        })?
        .to_bytes();
    let key = authorize(&auth, &host, &path, &body)?;
    if !allowed.contains(&key) {
        return Err(Nip86Error::KeyNotAllowed);
    }
    let call: Call = serde_json::from_slice(&body)
        .map_err(|e| Nip86Error::BadRequest(format!("the body is not a NIP-86 call ({e})")))?;
    dispatch(app, &call, &key)
}

/// The key that signed a valid NIP-98 authorization for this request. The event's `u`
/// must be this URL as the client reached it: `http://HOST/PATH`, or `https://` when the
/// admin listener sits behind a TLS terminator.
fn authorize(auth: &str, host: &str, path: &str, body: &[u8]) -> Result<PublicKey, Nip86Error> {
    let unauthorized = |e: nip98::Error| Nip86Error::Unauthorized(describe(&e));
    let url = |scheme: &str| {
        Url::parse(&format!("{scheme}://{host}{path}"))
            .map_err(|e| Nip86Error::BadRequest(format!("Host `{host}`: {e}")))
    };
    let now = Timestamp::now();
    match nip98::verify_auth_header(auth, &url("http")?, HttpMethod::POST, now, Some(body)) {
        Ok(k) => Ok(k),
        Err(nip98::Error::AuthorizationNotMatchRequest { authorized_url, .. })
            if authorized_url.scheme() == "https" =>
        {
            nip98::verify_auth_header(auth, &url("https")?, HttpMethod::POST, now, Some(body))
                .map_err(unauthorized)
        }
        Err(e) => Err(unauthorized(e)),
    }
}

/// One line for the operator's log and the client's `error`.
fn describe(e: &nip98::Error) -> String {
    match e {
        nip98::Error::AuthorizationHeaderMissing => "no `Authorization: Nostr …` header".into(),
        nip98::Error::AuthorizationTooOld { .. } => {
            "the event's created_at is not within 60 s of now".into()
        }
        nip98::Error::PayloadHashMismatch => "the payload tag is not the body's SHA-256".into(),
        nip98::Error::AuthorizationNotMatchRequest { authorized_url, .. } => {
            format!("the event authorizes {authorized_url} (u and method must name this request)")
        }
        other => format!("{other}"),
    }
}

fn dispatch(app: &App, call: &Call, key: &PublicKey) -> Result<Value, Nip86Error> {
    let standing = app.standing();
    let param = |i: usize| call.params.get(i).and_then(Value::as_str);
    let address = || {
        param(0).ok_or_else(|| {
            Nip86Error::BadRequest(format!("{}: params[0] must be an IP address", call.method))
        })
    };
    let refused = |e: crate::rate_limit::BlockError| Nip86Error::BadRequest(e.to_string());
    match call.method.as_str() {
        "supportedmethods" => Ok(json!(METHODS)),
        "blockip" => {
            let reason = param(1).unwrap_or("");
            let net = standing.block(address()?, reason).map_err(refused)?;
            tracing::warn!(%net, reason, by = %key.to_hex(), "NIP-86 blockip");
            Ok(json!(true))
        }
        "unblockip" => {
            let lifted = standing.unblock(address()?).map_err(refused)?;
            tracing::warn!(address = address()?, lifted, by = %key.to_hex(), "NIP-86 unblockip");
            Ok(json!(true))
        }
        "listblockedips" => Ok(Value::Array(
            standing
                .list()
                .into_iter()
                .map(|(net, ban)| json!({ "ip": crate::rate_limit::net_text(net), "reason": ban.reason }))
                .collect(),
        )),
        other => Err(Nip86Error::BadRequest(format!(
            "unsupported method `{other}` (supportedmethods lists them)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use nostr::hashes::Hash as _;
    use nostr::nips::nip98::HttpData;
    use nostr::{EventBuilder, JsonUtil, Keys};

    use super::*;

    fn header(keys: &Keys, url: &str, body: &[u8]) -> String {
        let data = HttpData::new(url.parse().unwrap(), HttpMethod::POST)
            .payload(nostr::hashes::sha256::Hash::hash(body));
        let event = EventBuilder::http_auth(data).sign_with_keys(keys).unwrap();
        format!(
            "Nostr {}",
            base64::engine::general_purpose::STANDARD.encode(event.as_json())
        )
    }

    #[test]
    fn the_event_must_name_this_url_over_http_or_https_and_the_body() {
        let keys = Keys::generate();
        let body = br#"{"method":"supportedmethods","params":[]}"#;
        for url in ["http://admin.example:9090/", "https://admin.example:9090/"] {
            let auth = header(&keys, url, body);
            let key = authorize(&auth, "admin.example:9090", "/", body).unwrap();
            assert_eq!(key, keys.public_key());
        }
        let elsewhere = header(&keys, "https://other.example/", body);
        let e = authorize(&elsewhere, "admin.example:9090", "/", body).unwrap_err();
        assert!(e.to_string().contains("other.example"), "{e}");
        let auth = header(&keys, "http://admin.example:9090/", body);
        let e = authorize(&auth, "admin.example:9090", "/", b"{}").unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.to_string().contains("payload"), "{e}");
        assert!(matches!(
            authorize("Basic abc", "admin.example:9090", "/", body),
            Err(Nip86Error::Unauthorized(_))
        ));
    }
}
