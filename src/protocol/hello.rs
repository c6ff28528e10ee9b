//! Mosaic 2025's HELLO, which travels in HTTP headers (mosaic-spec `docs/websockets.md`):
//! what passes each way, which features a backend may accept through the gateway, and the
//! gateway's proof of the server's identity (`server_authentication: gateway`).
//!
//! The request's HELLO headers (`X-Mosaic-Versions`, `X-Mosaic-Features`,
//! `X-Mosaic-Authenticate-As`, `X-Mosaic-Server-Authenticate-Nonce`) reach the backend as
//! every other end-to-end header does; the 101's HELLO ACK headers are the only `X-Mosaic-*`
//! ones copied back, and `X-Mosaic-Features-Accepted` is limited by `mosaic.features` when
//! it is set.

use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::protocol::fields::{visible_ascii, Fields};
use crate::protocol::handshake::{feature_list, negotiate_features};
use crate::protocol::reason::{Reason, Rejection};
use crate::relay::profile::MosaicVersion;

/// The client's nonce the server signs.
pub const X_MOSAIC_SERVER_AUTHENTICATE_NONCE: &str = "x-mosaic-server-authenticate-nonce";
/// The client's requested features (comma list).
pub const X_MOSAIC_FEATURES: &str = "x-mosaic-features";
/// The server's signature over the client's nonce.
pub const X_MOSAIC_SERVER_AUTHENTICATION: &str = "x-mosaic-server-authentication";
/// The features the server accepted (comma list).
pub const X_MOSAIC_FEATURES_ACCEPTED: &str = "x-mosaic-features-accepted";

/// HELLO ACK headers a backend's 101 may carry back to the client (the features and the
/// signature are written by [`hello_ack`] itself).
const ACK_PASSED: [&str; 3] = [
    "x-mosaic-version",
    "x-mosaic-client-authenticate-nonce",
    "x-mosaic-service-url",
];

/// The longest nonce the gateway signs: a nonce is a short ASCII string; a longer one is
/// refused rather than hashed.
pub const MAX_NONCE_BYTES: usize = 256;

/// The context string of every Mosaic signature (`docs/cryptography.md`).
const CONTEXT: &[u8] = b"Mosaic";

/// BLAKE3 in its 64-byte output mode, as the digest Ed25519ph pre-hashes with: Mosaic
/// substitutes it for SHA-512 in the pre-hash (`docs/cryptography.md`).
#[derive(Default, Clone)]
struct Blake3Prehash(blake3::Hasher);

impl digest::HashMarker for Blake3Prehash {}

impl digest::Update for Blake3Prehash {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

impl digest::OutputSizeUser for Blake3Prehash {
    type OutputSize = digest::consts::U64;
}

impl digest::FixedOutput for Blake3Prehash {
    fn finalize_into(self, out: &mut digest::Output<Self>) {
        self.0.finalize_xof().fill(out);
    }
}

/// The master key the gateway proves the server's identity with.
pub struct ServerSigner(SigningKey);

impl ServerSigner {
    /// A signer with `key`.
    pub fn new(key: SigningKey) -> Self {
        ServerSigner(key)
    }

    /// Mosaic's signature over `message`: Ed25519ph with the BLAKE3 pre-hash and the
    /// context "Mosaic", 64 bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut h = Blake3Prehash::default();
        digest::Update::update(&mut h, message);
        // Fails only for a context over 255 bytes; "Mosaic" is 6.
        self.0
            .sign_prehashed(h, Some(CONTEXT))
            .map(|s| s.to_bytes())
            .unwrap_or([0; 64])
    }

    /// The `X-Mosaic-Server-Authentication` value for `nonce`: the signature, base64.
    pub fn authenticate(&self, nonce: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.sign(nonce))
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
}

/// Checks a 2025 client's HELLO before any backend is asked: at most one nonce, visible
/// ASCII, at most [`MAX_NONCE_BYTES`].
pub fn check_hello(headers: &(impl Fields + ?Sized)) -> Result<(), Rejection> {
    let mut nonces = headers.values(X_MOSAIC_SERVER_AUTHENTICATE_NONCE);
    let (first, second) = (nonces.next(), nonces.next());
    let bad = |why| Err(Rejection::bad(why, Reason::BAD_HELLO));
    match (first, second) {
        (_, Some(_)) => bad("X-Mosaic-Server-Authenticate-Nonce: give it once"),
        (Some(n), None) if n.len() > MAX_NONCE_BYTES => {
            bad("X-Mosaic-Server-Authenticate-Nonce: at most 256 bytes")
        }
        (Some(n), None) if n.is_empty() || visible_ascii(n).is_none() => {
            bad("X-Mosaic-Server-Authenticate-Nonce: must be visible ASCII")
        }
        _ => Ok(()),
    }
}

/// The HELLO ACK headers of the 101 to a 2025 client, given to `put`: the backend's
/// version, client nonce and service URL as they are; the accepted features limited to
/// the client's ∩ the backend's (∩ `gateway_features` when the operator set them); the
/// server authentication from `signer` when the gateway proves it, else the backend's.
pub fn hello_ack(
    client: &(impl Fields + ?Sized),
    backend: &(impl Fields + ?Sized),
    gateway_features: Option<&[String]>,
    signer: Option<&ServerSigner>,
    mut put: impl FnMut(&[u8], &[u8]),
) {
    for name in ACK_PASSED {
        for v in backend.values(name) {
            put(name.as_bytes(), v);
        }
    }
    let sep = MosaicVersion::V2025.feature_separator();
    if let Some(asked) = feature_list(client, X_MOSAIC_FEATURES, sep) {
        let accepted = feature_list(backend, X_MOSAIC_FEATURES_ACCEPTED, sep);
        let limit = gateway_features.unwrap_or(accepted.as_deref().unwrap_or_default());
        let granted = negotiate_features(Some(&asked), accepted.as_deref(), limit, sep);
        // 2025 has no "none" marker: an empty list is no header.
        if let Some(v) = granted.filter(|v| v != "-") {
            put(X_MOSAIC_FEATURES_ACCEPTED.as_bytes(), v.as_bytes());
        }
    }
    match signer {
        Some(s) => {
            if let Some(nonce) = client.values(X_MOSAIC_SERVER_AUTHENTICATE_NONCE).next() {
                put(
                    X_MOSAIC_SERVER_AUTHENTICATION.as_bytes(),
                    s.authenticate(nonce).as_bytes(),
                );
            }
        }
        None => {
            for v in backend.values(X_MOSAIC_SERVER_AUTHENTICATION) {
                put(X_MOSAIC_SERVER_AUTHENTICATION.as_bytes(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::tests::headers;
    use ed25519_dalek::{Signature, Verifier as _};

    #[test]
    fn the_signature_is_ed25519ph_with_the_blake3_prehash_and_context() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let signer = ServerSigner::new(key.clone());
        let sig = Signature::from_bytes(&signer.sign(b"nonce-1"));
        let mut h = Blake3Prehash::default();
        digest::Update::update(&mut h, b"nonce-1");
        key.verifying_key()
            .verify_prehashed(h.clone(), Some(CONTEXT), &sig)
            .expect("verifies as Ed25519ph");
        assert!(key
            .verifying_key()
            .verify_prehashed(h, Some(b"Other"), &sig)
            .is_err());
        // Not a plain Ed25519 signature over the nonce.
        assert!(key.verifying_key().verify(b"nonce-1", &sig).is_err());
    }

    #[test]
    fn ack_headers_pass_limited() {
        let client = headers(&[
            ("x-mosaic-features", "chat, blobs ,sync"),
            ("x-mosaic-server-authenticate-nonce", "abc"),
        ]);
        let backend = headers(&[
            ("x-mosaic-version", "1"),
            ("x-mosaic-features-accepted", "sync,chat"),
            ("x-mosaic-server-authentication", "backend-sig"),
            ("x-mosaic-internal", "secret"),
        ]);
        let mut got = Vec::new();
        let gw = vec!["chat".to_string(), "sync".to_string()];
        hello_ack(&client, &backend, Some(&gw), None, |n, v| {
            got.push((n.to_vec(), v.to_vec()))
        });
        let text: Vec<String> = got
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
            })
            .collect();
        assert_eq!(
            text,
            [
                "x-mosaic-version: 1",
                "x-mosaic-features-accepted: chat,sync",
                "x-mosaic-server-authentication: backend-sig",
            ]
        );
        let signer = ServerSigner::new(SigningKey::from_bytes(&[1; 32]));
        let mut sig = None;
        hello_ack(&client, &backend, Some(&[]), Some(&signer), |n, v| {
            if n == X_MOSAIC_SERVER_AUTHENTICATION.as_bytes() {
                sig = Some(v.to_vec());
            }
            assert_ne!(n, X_MOSAIC_FEATURES_ACCEPTED.as_bytes(), "none granted");
        });
        assert_eq!(sig, Some(signer.authenticate(b"abc").into_bytes()));
    }

    #[test]
    fn unset_gateway_features_pass_the_backends_answer_within_the_request() {
        let client = headers(&[("x-mosaic-features", "chat,blobs")]);
        let backend = headers(&[("x-mosaic-features-accepted", "blobs, other")]);
        let mut got = Vec::new();
        hello_ack(&client, &backend, None, None, |n, v| {
            got.push((n.to_vec(), v.to_vec()))
        });
        assert_eq!(
            got,
            [(
                X_MOSAIC_FEATURES_ACCEPTED.as_bytes().to_vec(),
                b"blobs".to_vec()
            )]
        );
    }

    #[test]
    fn nonces_are_checked() {
        assert!(check_hello(&headers(&[])).is_ok());
        assert!(check_hello(&headers(&[("x-mosaic-server-authenticate-nonce", "n0")])).is_ok());
        let long = "n".repeat(MAX_NONCE_BYTES + 1);
        assert!(check_hello(&headers(&[("x-mosaic-server-authenticate-nonce", &long)])).is_err());
        assert!(check_hello(&headers(&[
            ("x-mosaic-server-authenticate-nonce", "a"),
            ("x-mosaic-server-authenticate-nonce", "b"),
        ]))
        .is_err());
    }
}
