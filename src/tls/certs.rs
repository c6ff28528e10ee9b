//! Operator certificates (`tls.certificates`): CA-issued chains for browsers and verifying
//! clients, chosen by SNI, checked at start and reloaded when their files change.
//!
//! A chain is served for its `names` (exact names and `*.example.com` wildcards, matched
//! case-insensitively), to clients whose ClientHello allows its key's signature scheme.
//! A reload swaps the whole set at once; open connections keep the chain they got.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// A leaf expiring sooner than this is reported at start, in `check-config` and on reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A name a certificate is served for: exact, or `*.` and a suffix (one label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// Lowercase, without the `*.` of a wildcard.
    name: String,
    wildcard: bool,
}

/// Why a string is not a host name pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a host name (like relay.example.com or *.example.com)")]
pub struct BadName(pub String);

impl NamePattern {
    /// Parses `relay.example.com` or `*.example.com` (at least two labels after the `*`).
    pub fn parse(s: &str) -> Result<Self, BadName> {
        let lower = s.trim().to_ascii_lowercase();
        let (wildcard, rest) = match lower.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let valid = rest.len() <= 253
            && labels.iter().all(|l| label_ok(l))
            && (!wildcard || labels.len() >= 2)
            && !labels
                .last()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if valid {
            Ok(NamePattern {
                name: rest.to_string(),
                wildcard,
            })
        } else {
            Err(BadName(s.to_string()))
        }
    }

    /// Whether this is a `*.` pattern.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `host` (an SNI name, any case) is covered: a wildcard covers exactly one
    /// label in front of its suffix, as browsers match.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.name);
        }
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(&self.name),
            None => false,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// Where one certificate comes from (`tls.certificates[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSource {
    /// The config key, for messages: `tls.certificates[0]`.
    pub key: String,
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// The names it is served for; empty: the leaf's DNS names.
    pub names: Vec<String>,
}

/// Why a certificate cannot be served; `Display` starts with the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("{key}: cannot read {}", path.display())]
    Read {
        /// `tls.certificates[i].cert_file` or `.key_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Someone besides the gateway's user may read or change the key file.
    #[error("{key}: {exposed}")]
    KeyExposed {
        /// `tls.certificates[i].key_file`.
        key: String,
        /// What the rule found (names the file and the fix).
        exposed: crate::keys::ExposedKey,
    },
    /// The chain file has no certificate, or a certificate does not parse.
    #[error("{key}: {what}")]
    BadChain {
        /// `tls.certificates[i].cert_file`.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// The key file has no usable private key.
    #[error("{key}: {what}")]
    BadKey {
        /// `tls.certificates[i].key_file`.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// The key is not the leaf's.
    #[error("{key}: the private key does not match the leaf certificate of {}", cert.display())]
    KeyMismatch {
        /// `tls.certificates[i].key_file`.
        key: String,
        /// The chain file.
        cert: PathBuf,
    },
    /// No names given and the leaf has no DNS names.
    #[error("{key}: the leaf has no DNS subject alternative names; list names here")]
    NoNames {
        /// `tls.certificates[i].names`.
        key: String,
    },
    /// A listed name is not a host name.
    #[error("{key}")]
    Name {
        /// `tls.certificates[i].names[j]`.
        key: String,
        /// Which.
        #[source]
        source: BadName,
    },
}

/// Something an operator should know that does not stop the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertWarning {
    /// The leaf expired: served anyway (an expired certificate beats none in an incident).
    Expired {
        /// `tls.certificates[i]`.
        key: String,
        /// Since when.
        not_after: SystemTime,
    },
    /// The leaf expires within [`EXPIRY_WARNING`].
    ExpiresSoon {
        /// `tls.certificates[i]`.
        key: String,
        /// Days left (rounded down).
        days: u64,
    },
    /// A listed name is not among the leaf's names: clients that verify will refuse it.
    NameNotInCertificate {
        /// `tls.certificates[i].names[j]`.
        key: String,
        /// The name.
        name: String,
    },
}

impl fmt::Display for CertWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertWarning::Expired { key, not_after } => {
                let ago = SystemTime::now()
                    .duration_since(*not_after)
                    .unwrap_or_default()
                    .as_secs()
                    / 86_400;
                write!(
                    f,
                    "{key}: the certificate expired {ago} days ago; it is served anyway until replaced"
                )
            }
            CertWarning::ExpiresSoon { key, days } => {
                write!(f, "{key}: the certificate expires in {days} days")
            }
            CertWarning::NameNotInCertificate { key, name } => write!(
                f,
                "{key}: `{name}` is not among the certificate's names; verifying clients will refuse it"
            ),
        }
    }
}

/// One loaded chain, ready to serve.
#[derive(Debug)]
pub struct ServedCertificate {
    /// The metric label (`tls_certificate_expiry_timestamp_seconds{name}`): its first name.
    pub label: String,
    /// The names it is served for.
    pub names: Vec<NamePattern>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl ServedCertificate {
    /// Whether this chain is served for `host` to a client offering `schemes`.
    pub fn serves(&self, host: &str, schemes: &[SignatureScheme]) -> bool {
        self.names.iter().any(|n| n.matches(host)) && self.key.key.choose_scheme(schemes).is_some()
    }
}

/// What the leaf says about itself.
struct LeafFacts {
    dns_names: Vec<String>,
    not_after: SystemTime,
}

fn leaf_facts(key: &str, der: &CertificateDer<'_>) -> Result<LeafFacts, CertError> {
    let bad = |what: String| CertError::BadChain {
        key: key.to_string(),
        what,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| bad(format!("the leaf certificate does not parse: {e}")))?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = gn {
                dns_names.push(n.to_string());
            }
        }
    }
    let secs = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok(LeafFacts {
        dns_names,
        not_after,
    })
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

/// Loads and checks one certificate: files readable, the key file private to its owner,
/// the chain parsing, the key matching the leaf, the names valid.
pub fn load(src: &CertificateSource) -> Result<(ServedCertificate, Vec<CertWarning>), CertError> {
    let cert_key = format!("{}.cert_file", src.key);
    let key_key = format!("{}.key_file", src.key);
    let chain_pem = read(&cert_key, &src.cert_file)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::BadChain {
            key: cert_key.clone(),
            what: format!("not a PEM certificate chain: {e}"),
        })?;
    let leaf = chain.first().ok_or_else(|| CertError::BadChain {
        key: cert_key.clone(),
        what: format!("{} holds no certificate", src.cert_file.display()),
    })?;
    let facts = leaf_facts(&cert_key, leaf)?;
    let meta = std::fs::metadata(&src.key_file).map_err(|source| CertError::Read {
        key: key_key.clone(),
        path: src.key_file.clone(),
        source,
    })?;
    crate::keys::check_private(&src.key_file, &meta).map_err(|exposed| CertError::KeyExposed {
        key: key_key.clone(),
        exposed,
    })?;
    let key_pem = read(&key_key, &src.key_file)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::BadKey {
        key: key_key.clone(),
        what: format!("no PEM private key: {e}"),
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| {
        CertError::BadKey {
            key: key_key.clone(),
            what: format!("unsupported key (ECDSA P-256/P-384, RSA >= 2048 or Ed25519): {e}"),
        }
    })?;
    let certified = CertifiedKey::new(chain, signer);
    if certified.keys_match().is_err() {
        return Err(CertError::KeyMismatch {
            key: key_key,
            cert: src.cert_file.clone(),
        });
    }
    let (names, mut warnings) = served_names(src, &facts)?;
    warnings.extend(expiry_warning(&src.key, facts.not_after));
    let label = names.first().map(|n| n.to_string()).unwrap_or_default();
    Ok((
        ServedCertificate {
            label,
            names,
            key: Arc::new(certified),
            not_after: facts.not_after,
        },
        warnings,
    ))
}

/// The listed names (each checked against the leaf), or the leaf's own DNS names.
fn served_names(
    src: &CertificateSource,
    facts: &LeafFacts,
) -> Result<(Vec<NamePattern>, Vec<CertWarning>), CertError> {
    let mut warnings = Vec::new();
    if src.names.is_empty() {
        let names: Vec<NamePattern> = facts
            .dns_names
            .iter()
            .filter_map(|n| NamePattern::parse(n).ok())
            .collect();
        if names.is_empty() {
            return Err(CertError::NoNames {
                key: format!("{}.names", src.key),
            });
        }
        return Ok((names, warnings));
    }
    let leaf: Vec<NamePattern> = facts
        .dns_names
        .iter()
        .filter_map(|n| NamePattern::parse(n).ok())
        .collect();
    let mut names = Vec::new();
    for (j, n) in src.names.iter().enumerate() {
        let key = format!("{}.names[{j}]", src.key);
        let p = NamePattern::parse(n).map_err(|source| CertError::Name {
            key: key.clone(),
            source,
        })?;
        let covered = leaf
            .iter()
            .any(|l| *l == p || (!p.wildcard && l.matches(&p.name)));
        if !covered {
            warnings.push(CertWarning::NameNotInCertificate {
                key,
                name: n.clone(),
            });
        }
        names.push(p);
    }
    Ok((names, warnings))
}

fn expiry_warning(key: &str, not_after: SystemTime) -> Option<CertWarning> {
    match not_after.duration_since(SystemTime::now()) {
        Err(_) => Some(CertWarning::Expired {
            key: key.to_string(),
            not_after,
        }),
        Ok(left) if left < EXPIRY_WARNING => Some(CertWarning::ExpiresSoon {
            key: key.to_string(),
            days: left.as_secs() / 86_400,
        }),
        Ok(_) => None,
    }
}

/// What a file looked like when last loaded: a change in any of these means a new file
/// (certbot and cert-manager replace files, or swap the symlink a Secret mount reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// What a reload check found.
#[derive(Debug)]
pub enum Reload {
    /// No file changed.
    Unchanged,
    /// Files changed and every certificate loaded: new handshakes get the new set.
    Reloaded(Vec<CertWarning>),
    /// Files changed but one does not load: the old set stays.
    Failed(CertError),
}

/// Every operator certificate, swapped as a whole on reload.
#[derive(Debug)]
pub struct CertStore {
    sources: Vec<CertificateSource>,
    served: RwLock<Arc<Vec<ServedCertificate>>>,
    stamps: Mutex<Vec<Option<Stamp>>>,
}

impl CertStore {
    /// Loads every certificate; the first error stops it.
    pub fn load(sources: Vec<CertificateSource>) -> Result<(Self, Vec<CertWarning>), CertError> {
        let stamps = Self::stamps_of(&sources);
        let (served, warnings) = Self::load_all(&sources)?;
        Ok((
            CertStore {
                sources,
                served: RwLock::new(Arc::new(served)),
                stamps: Mutex::new(stamps),
            },
            warnings,
        ))
    }

    fn stamps_of(sources: &[CertificateSource]) -> Vec<Option<Stamp>> {
        sources
            .iter()
            .flat_map(|s| [stamp(&s.cert_file), stamp(&s.key_file)])
            .collect()
    }

    fn load_all(
        sources: &[CertificateSource],
    ) -> Result<(Vec<ServedCertificate>, Vec<CertWarning>), CertError> {
        let mut served = Vec::with_capacity(sources.len());
        let mut warnings = Vec::new();
        for s in sources {
            let (c, w) = load(s)?;
            served.push(c);
            warnings.extend(w);
        }
        Ok((served, warnings))
    }

    /// A fixed set made in memory (the `dev` stack's certificate); nothing to reload.
    pub fn fixed(served: Vec<ServedCertificate>) -> Self {
        CertStore {
            sources: Vec::new(),
            served: RwLock::new(Arc::new(served)),
            stamps: Mutex::new(Vec::new()),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<Vec<ServedCertificate>> {
        self.served.read().clone()
    }

    /// Whether any certificate is configured.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Re-reads the files if any changed since the last load (or unconditionally with
    /// `force`, for SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let now = Self::stamps_of(&self.sources);
        {
            let mut last = self.stamps.lock();
            if !force && *last == now {
                return Reload::Unchanged;
            }
            // Remember the files as seen, so a broken file is reported once, not every tick.
            *last = now;
        }
        match Self::load_all(&self.sources) {
            Ok((served, warnings)) => {
                *self.served.write() = Arc::new(served);
                Reload::Reloaded(warnings)
            }
            Err(e) => Reload::Failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_like_browsers() {
        let exact = NamePattern::parse("Relay.Example.com").unwrap();
        assert!(exact.matches("relay.example.COM"));
        assert!(!exact.matches("x.relay.example.com"));
        let wild = NamePattern::parse("*.example.com").unwrap();
        assert!(wild.is_wildcard());
        assert!(wild.matches("relay.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("a.b.example.com"));
        assert_eq!(wild.to_string(), "*.example.com");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "*.com",
            "a..b",
            "-a.example.com",
            "1.2.3.4",
            "a b.com",
            "*",
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
        for good in [
            "localhost",
            "relay.test",
            "*.relay.example.com",
            "xn--bcher-kva.ch",
        ] {
            assert!(NamePattern::parse(good).is_ok(), "{good:?}");
        }
    }
}
