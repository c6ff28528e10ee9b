//! Ed25519 key handling for the gateway: the human encodings of Mosaic keys
//! (`mosrv0…` / `mopub0…`, z-base-32 of the 32 key bytes), loading the server's
//! master secret key from a PKCS#8 PEM file, `keygen`, and the one permission rule every
//! private key file the gateway reads must pass ([`check_private`]).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::Decode;
use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes, ObjectIdentifier, PrivateKeyInfoRef};
use ed25519_dalek::SigningKey;

/// The z-base-32 alphabet (Zooko's human-oriented base-32).
const ZB32_ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Prefix of a server (master) public key string.
pub const SERVER_KEY_PREFIX: &str = "mosrv0";

/// Prefix of a user public key string.
pub const USER_KEY_PREFIX: &str = "mopub0";

/// Length of a z-base-32 encoded 32-byte key (256 bits in 5-bit characters).
pub const ZB32_KEY_LEN: usize = 52;

/// Object identifier of Ed25519 (RFC 8410).
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Encodes bytes as z-base-32 (trailing bits of the last character are zero).
pub fn zbase32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 8).div_ceil(5));
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZB32_ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(
            ZB32_ALPHABET[((acc << (5 - bits)) & 31) as usize],
        ));
    }
    out
}

/// Decodes z-base-32 (case-insensitive) into whole bytes; leftover bits must be zero.
pub fn zbase32_decode(text: &str) -> Result<Vec<u8>, KeyStringError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for (i, c) in text.chars().enumerate() {
        let lc = c.to_ascii_lowercase();
        let v = ZB32_ALPHABET
            .iter()
            .position(|&a| char::from(a) == lc)
            .ok_or(KeyStringError::BadCharacter {
                character: c,
                position: i,
            })?;
        acc = (acc << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits >= 5 || acc != 0 {
        return Err(KeyStringError::NonCanonical);
    }
    Ok(out)
}

/// Encodes a 32-byte key as 52 z-base-32 characters.
pub fn encode_key(key: &[u8; 32]) -> String {
    zbase32_encode(key)
}

/// Decodes exactly 52 z-base-32 characters into a 32-byte key.
pub fn decode_key(text: &str) -> Result<[u8; 32], KeyStringError> {
    if text.len() != ZB32_KEY_LEN {
        return Err(KeyStringError::Length(text.len()));
    }
    let bytes = zbase32_decode(text)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyStringError::DecodedLength(bytes.len()))
}

/// The server key string: `mosrv0` + z-base-32 (58 characters).
pub fn server_key_string(key: &[u8; 32]) -> String {
    format!("{SERVER_KEY_PREFIX}{}", encode_key(key))
}

/// The user key string: `mopub0` + z-base-32 (58 characters), as in `X-Mosaic-Client-Key`.
pub fn user_key_string(key: &[u8; 32]) -> String {
    format!("{USER_KEY_PREFIX}{}", encode_key(key))
}

/// Why a key string (`mosrv0…`, `mopub0…`, z-base-32) is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStringError {
    /// A character outside the z-base-32 alphabet.
    #[error("invalid z-base-32 character {character:?} at position {position}")]
    BadCharacter {
        /// The character.
        character: char,
        /// Its position (0-based).
        position: usize,
    },
    /// Extra characters or non-zero trailing bits.
    #[error("non-canonical z-base-32 (extra character or non-zero trailing bits)")]
    NonCanonical,
    /// Not 52 characters.
    #[error("a key is {ZB32_KEY_LEN} z-base-32 characters, got {0}")]
    Length(usize),
    /// Decoded to other than 32 bytes.
    #[error("decoded key is {0} bytes, expected 32")]
    DecodedLength(usize),
    /// The `mosrv0` / `mopub0` prefix is missing.
    #[error("{what} key must start with {prefix:?}")]
    Prefix {
        /// "server" or "user".
        what: &'static str,
        /// The prefix expected.
        prefix: &'static str,
    },
    /// The part after the prefix is not a key.
    #[error("invalid {what} key")]
    Invalid {
        /// "server" or "user".
        what: &'static str,
        /// What is wrong with it.
        #[source]
        source: Box<KeyStringError>,
    },
}

fn parse_prefixed(
    text: &str,
    prefix: &'static str,
    what: &'static str,
) -> Result<[u8; 32], KeyStringError> {
    let text = text.trim();
    let rest = text
        .strip_prefix(prefix)
        .ok_or(KeyStringError::Prefix { what, prefix })?;
    decode_key(rest).map_err(|e| KeyStringError::Invalid {
        what,
        source: Box::new(e),
    })
}

/// Parses a `mosrv0…` server key string (surrounding blanks ignored).
pub fn parse_server_key(text: &str) -> Result<[u8; 32], KeyStringError> {
    parse_prefixed(text, SERVER_KEY_PREFIX, "server")
}

/// Parses a `mopub0…` user key string (surrounding blanks ignored).
pub fn parse_user_key(text: &str) -> Result<[u8; 32], KeyStringError> {
    parse_prefixed(text, USER_KEY_PREFIX, "user")
}

/// Why a key file could not be loaded or written; `Display` names the file.
#[derive(Debug)]
pub enum KeyError {
    /// The file does not exist.
    Missing(PathBuf),
    /// The file exists but could not be read (permissions, I/O error).
    Unreadable(PathBuf, io::Error),
    /// Someone besides the gateway's user may read or change the file ([`check_private`]).
    Exposed(ExposedKey),
    /// The file is not a PEM document.
    NotPem(PathBuf),
    /// The file holds a key of another kind (RSA, EC, X25519, encrypted, ...).
    NotEd25519(PathBuf, String),
    /// The file claims to be an ed25519 PKCS#8 key but is malformed.
    Malformed(PathBuf, String),
    /// `keygen` refuses to overwrite an existing file.
    Exists(PathBuf),
    /// `keygen` could not write the file.
    Write(PathBuf, io::Error),
    /// No randomness or encoding failure while generating a key.
    Generate(PathBuf, String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing(p) => write!(f, "key file {}: no such file", p.display()),
            KeyError::Unreadable(p, _) => write!(f, "key file {}: cannot read", p.display()),
            KeyError::Exposed(e) => write!(f, "key file {e}"),
            KeyError::NotPem(p) => write!(
                f,
                "key file {}: not a PEM file (expected an ed25519 PKCS#8 \"PRIVATE KEY\")",
                p.display()
            ),
            KeyError::NotEd25519(p, what) => write!(
                f,
                "key file {}: not an ed25519 key ({what}); create one with `mosaic-gateway keygen --out FILE` or `openssl genpkey -algorithm ed25519`",
                p.display()
            ),
            KeyError::Malformed(p, what) => {
                write!(f, "key file {}: malformed ed25519 key: {what}", p.display())
            }
            KeyError::Exists(p) => write!(
                f,
                "key file {}: already exists, refusing to overwrite",
                p.display()
            ),
            KeyError::Write(p, _) => write!(f, "key file {}: cannot write", p.display()),
            KeyError::Generate(p, e) => {
                write!(f, "key file {}: cannot generate key: {e}", p.display())
            }
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Unreadable(_, e) | KeyError::Write(_, e) => Some(e),
            _ => None,
        }
    }
}

fn algorithm_name(oid: &ObjectIdentifier) -> String {
    match oid.to_string().as_str() {
        "1.3.101.110" => "X25519".to_string(),
        "1.3.101.111" => "X448".to_string(),
        "1.3.101.113" => "Ed448".to_string(),
        "1.2.840.113549.1.1.1" => "RSA".to_string(),
        "1.2.840.113549.1.1.10" => "RSA-PSS".to_string(),
        "1.2.840.10045.2.1" => "EC".to_string(),
        other => format!("algorithm {other}"),
    }
}

/// Loads the ed25519 secret key from a PKCS#8 PEM file (v1 as written by
/// `openssl genpkey -algorithm ed25519`, or v2); refuses a file [`check_private`] refuses.
pub fn load_signing_key(path: impl AsRef<Path>) -> Result<SigningKey, KeyError> {
    let path = path.as_ref();
    let p = || path.to_path_buf();
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KeyError::Missing(p()),
        _ => KeyError::Unreadable(p(), e),
    })?;
    if !meta.is_file() {
        return Err(KeyError::Unreadable(
            p(),
            io::Error::other("not a regular file"),
        ));
    }
    check_private(path, &meta).map_err(KeyError::Exposed)?;
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KeyError::Missing(p()),
        _ => KeyError::Unreadable(p(), e),
    })?;
    let (label, der) = ed25519_dalek::pkcs8::spki::der::pem::decode_vec(&bytes)
        .map_err(|_| KeyError::NotPem(p()))?;
    match label {
        "PRIVATE KEY" => {}
        "ENCRYPTED PRIVATE KEY" => {
            return Err(KeyError::NotEd25519(
                p(),
                "encrypted PKCS#8; store it unencrypted with mode 600".to_string(),
            ));
        }
        "RSA PRIVATE KEY" => return Err(KeyError::NotEd25519(p(), "RSA".to_string())),
        "EC PRIVATE KEY" => return Err(KeyError::NotEd25519(p(), "EC".to_string())),
        other => {
            return Err(KeyError::NotEd25519(p(), format!("PEM label {other:?}")));
        }
    }
    let info = PrivateKeyInfoRef::from_der(&der)
        .map_err(|e| KeyError::Malformed(p(), format!("bad PKCS#8 structure: {e}")))?;
    let oid = info.algorithm.oid;
    if oid != OID_ED25519 {
        return Err(KeyError::NotEd25519(p(), algorithm_name(&oid)));
    }
    SigningKey::try_from(info).map_err(|e| KeyError::Malformed(p(), e.to_string()))
}

/// A private key file someone besides the gateway's user may read or change; `Display`
/// names the file, what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}; run `chmod 600 {}`", path.display(), path.display())]
pub struct ExposedKey {
    /// The file.
    pub path: PathBuf,
    /// What the rule found.
    pub problem: KeyAccess,
}

/// Why [`check_private`] refuses a key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyAccess {
    /// Group or others have some access (mode bits `0o077`), beyond a root-owned key's
    /// group read.
    #[error("mode {0:03o} gives group or others access (0600 or less, or 0640 if owned by root)")]
    TooOpen(u32),
    /// Owned by a user that is neither the gateway's nor root, who could replace it.
    #[error("owned by uid {0}, neither the gateway's user nor root (`chown` it too)")]
    ForeignOwner(u32),
}

/// The one permission rule for every private key file the gateway reads (`tls.key_file`,
/// `tls.certificates[i].key_file`, the ACME cache's keys), as PostgreSQL has for its TLS
/// key: owned by the gateway's user with no access for group or others (0600 or less), or
/// owned by root with at most group read (0640). The second form is how Kubernetes mounts a
/// Secret for a non-root pod (root, `fsGroup`, 0440) and how Debian shares keys through the
/// `ssl-cert` group; a key the gateway's own user owns has no reason to be shared.
pub fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), ExposedKey> {
    let euid = rustix::process::geteuid().as_raw();
    key_access(meta.uid(), euid, meta.mode()).map_err(|problem| ExposedKey {
        path: path.to_path_buf(),
        problem,
    })
}

/// [`check_private`] on plain numbers: the file's owner, the gateway's user, the mode.
fn key_access(owner: u32, euid: u32, mode: u32) -> Result<(), KeyAccess> {
    let perm = mode & 0o7777;
    let allowed_beyond_owner = match owner {
        o if o == euid => 0,
        0 => 0o040,
        o => return Err(KeyAccess::ForeignOwner(o)),
    };
    match perm & 0o077 & !allowed_beyond_owner {
        0 => Ok(()),
        _ => Err(KeyAccess::TooOpen(perm)),
    }
}

/// PKCS#8 v1 form of `key` (RFC 8410, no public key): readable by OpenSSL 3.0, ring, rcgen.
pub fn pkcs8_v1(key: &SigningKey) -> KeypairBytes {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
}

/// Writes a new ed25519 key as PKCS#8 PEM (mode 0600, never overwriting) and
/// returns its `mosrv0…` public key string.
pub fn keygen(path: impl AsRef<Path>) -> Result<String, KeyError> {
    let path = path.as_ref();
    let p = || path.to_path_buf();
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Generate(p(), e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    // PKCS#8 v1 (no embedded public key), as `openssl genpkey` writes: OpenSSL 3.0 cannot
    // read the v2 form that `SigningKey::to_pkcs8_pem` produces.
    let pem = pkcs8_v1(&key)
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(p(), e.to_string()))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists(p()),
            _ => KeyError::Write(p(), e),
        })?;
    // The umask can only remove bits; make sure the mode is exactly 0600 anyway.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| KeyError::Write(p(), e))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::Write(p(), e))?;
    Ok(server_key_string(&key.verifying_key().to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_for_private_key_files() {
        let (me, other) = (10001, 10002);
        // The gateway's own key: nobody else, whatever the bits.
        assert_eq!(key_access(me, me, 0o100600), Ok(()));
        assert_eq!(key_access(me, me, 0o400), Ok(()));
        for open in [0o640, 0o604, 0o620, 0o610, 0o644] {
            assert_eq!(key_access(me, me, open), Err(KeyAccess::TooOpen(open)));
        }
        // Root's key shared with the gateway's group (a Kubernetes Secret with fsGroup).
        assert_eq!(key_access(0, me, 0o440), Ok(()));
        assert_eq!(key_access(0, me, 0o640), Ok(()));
        for open in [0o660, 0o644, 0o650, 0o604] {
            assert_eq!(key_access(0, me, open), Err(KeyAccess::TooOpen(open)));
        }
        // A gateway running as root holds root's key to its own rule.
        assert_eq!(key_access(0, 0, 0o640), Err(KeyAccess::TooOpen(0o640)));
        // Someone else's key could be swapped under the gateway.
        assert_eq!(
            key_access(other, me, 0o600),
            Err(KeyAccess::ForeignOwner(other))
        );
    }

    #[test]
    fn spec_vector() {
        assert_eq!(zbase32_encode(&[0xF0, 0xBF, 0xC7]), "6n9hq");
        assert_eq!(zbase32_decode("6n9hq").unwrap(), vec![0xF0, 0xBF, 0xC7]);
    }
}
