//! The YAML configuration: schema, defaults and validation.
//!
//! Parsing happens in two steps so that every problem can name its key: serde reads the
//! raw document (rejecting unknown keys and wrong types), then [`Config::validate`] checks
//! what serde cannot (addresses, URLs, durations, ranges) and reports one
//! `key.path: what is wrong` line per problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::relay::mosaic::DEFAULT_MAX_MESSAGE_BYTES;
use crate::relay::profile::{MosaicVersion, Profile};
use crate::tls::{CertificateMode, ClientAuth, MinVersion};

mod routes;
pub use routes::{
    BadHost, BadPrefix, HostPattern, NostrProbe, PathPrefix, RouteConfig, RouteLimitsConfig,
    RESERVED_NAME,
};
mod http;
pub use http::HttpConfig;
mod rate_limits;

mod mosaic_versions;
pub use mosaic_versions::{ServerAuthentication, ValidateConfig};
pub use rate_limits::{
    AccessConfig, BansConfig, ByteDirection, LimitAction, RateConfig, RateLimitsConfig,
    SubmissionScope,
};

/// Everything wrong with a config file, one `key.path: what is wrong` line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public WebSocket listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Threads serving the public listener, each with its own socket and event loop
    /// (0: one per CPU).
    #[serde(default)]
    pub workers: usize,
    /// TLS termination; absent for plain ws://.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Mosaic routing and the backend pool.
    #[serde(default)]
    pub mosaic: MosaicConfig,
    /// The nostr relay; absent to refuse non-Mosaic upgrades.
    #[serde(default)]
    pub nostr: Option<NostrConfig>,
    /// More relays and Mosaic pools, chosen by host name and path; the top-level `mosaic`
    /// and `nostr` sections are the default route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Plain requests and HTTP/2 on the public port.
    #[serde(default)]
    pub http: HttpConfig,
    /// Connection limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Rate limits (token buckets), each off unless set.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Client addresses served or refused.
    #[serde(default)]
    pub access: AccessConfig,
    /// Temporary bans, and where bans are kept across restarts.
    #[serde(default)]
    pub bans: BansConfig,
    /// Which proxies' client-address claims are believed.
    #[serde(default)]
    pub forwarded: ForwardedConfig,
    /// Drain behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

fn default_listen() -> String {
    "0.0.0.0:8443".into()
}

/// `tls:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's ed25519 master secret key, PKCS#8 PEM. Optional when `certificates` or
    /// `acme` is set: without it there is no raw public key and no self-signed certificate.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Which certificate form to present.
    #[serde(default)]
    pub certificate: CertificateMode,
    /// Whether to ask clients for their key.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Oldest TLS version accepted.
    #[serde(default)]
    pub min_version: MinVersion,
    /// CA-issued chains for browsers and verifying clients, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// Automatic certificates (RFC 8555).
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// How often certificate files are checked for changes (renewals by certbot or
    /// cert-manager are picked up without a SIGHUP).
    #[serde(default = "default_watch_interval")]
    pub watch_interval: DurationStr,
}

fn default_watch_interval() -> DurationStr {
    DurationStr::from_secs(10)
}

/// One entry of `tls.certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: ECDSA P-256/P-384, RSA >= 2048 or Ed25519).
    pub key_file: PathBuf,
    /// The names (SNI) it is served for; default: the leaf's DNS subject alternative names.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `tls.acme`: automatic certificates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names to order a certificate for.
    pub domains: Vec<String>,
    /// Account contacts (`mailto:…`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// The ACME directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// Where the account key and certificates are kept (mode 0700).
    #[serde(default = "default_acme_cache")]
    pub cache_dir: PathBuf,
    /// How the CA validates the names.
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// The plain HTTP listener for `http-01` (also redirects other requests to https).
    #[serde(default)]
    pub http_listen: Option<String>,
    /// PEM roots to trust the ACME server with (a private CA); empty: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_acme_directory() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}

fn default_acme_cache() -> PathBuf {
    PathBuf::from("/var/lib/mosaic-gateway/acme")
}

/// `tls.acme.challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 on the public port itself.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01 on `acme.http_listen`.
    #[serde(rename = "http-01")]
    Http01,
}

/// `admin:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of /metrics, /livez, /readyz, /healthz.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Nostr keys (npub or hex) allowed to manage the gateway over NIP-86 at `POST /`;
    /// empty: NIP-86 is off.
    #[serde(default)]
    pub nip86_pubkeys: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            nip86_pubkeys: Vec::new(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// Balancing algorithms of a pool (Mosaic backends or nostr relays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each backend in turn.
    RoundRobin,
    /// The backend with the fewest open proxied connections.
    #[default]
    LeastConnections,
    /// Consistent hashing on the TLS client key; anonymous clients use least-connections.
    ClientKeyHash,
    /// Consistent hashing on the real client address: a client stays on one upstream.
    ClientIpHash,
}

/// One backend entry: a URL, or a DNS name re-resolved on an interval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `ws://host:port/path` or `wss://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// `name:port`, each resolved address being a backend (e.g. a headless Service).
    #[serde(default)]
    pub dns: Option<String>,
    /// Relative share of new connections.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// For `wss://`: the backend's expected key, `mosrv0…`.
    #[serde(default)]
    pub pin: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// `mosaic.health_check:` and `nostr.health_check:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// nostr relays only: how they are probed (default `nip11`).
    #[serde(default)]
    pub kind: Option<NostrProbe>,
    /// Time between active checks.
    #[serde(default = "default_hc_interval")]
    pub interval: DurationStr,
    /// Time allowed for one check (connect and upgrade).
    #[serde(default = "default_hc_timeout")]
    pub timeout: DurationStr,
    /// Consecutive failures that mark a backend down.
    #[serde(default = "default_fall")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark it up again.
    #[serde(default = "default_rise")]
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: None,
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            unhealthy_threshold: default_fall(),
            healthy_threshold: default_rise(),
        }
    }
}

fn default_hc_interval() -> DurationStr {
    DurationStr::from_secs(5)
}
fn default_hc_timeout() -> DurationStr {
    DurationStr::from_secs(2)
}
fn default_fall() -> u32 {
    2
}
fn default_rise() -> u32 {
    2
}

/// `mosaic:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MosaicConfig {
    /// Subprotocol tokens routed to Mosaic.
    #[serde(default = "default_subprotocols")]
    pub subprotocols: Vec<String>,
    /// Features the gateway lets a backend grant; unset: 2024 grants none, 2025 passes the
    /// backend's answer (within the client's request).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// How strictly messages are checked, by token.
    #[serde(default)]
    pub validate: ValidateConfig,
    /// Who answers a 2025 client's server-authentication nonce.
    #[serde(default)]
    pub server_authentication: ServerAuthentication,
    /// The ed25519 master key the gateway signs nonces with (default: `tls.key_file`).
    #[serde(default)]
    pub server_key_file: Option<PathBuf>,
    /// Largest message accepted either way.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u64,
    /// The pool for every Mosaic client.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// If non-empty, clients with a TLS client key go here instead.
    #[serde(default)]
    pub authenticated_backends: Vec<BackendConfig>,
    /// How the pool picks a backend.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Time allowed to connect to a backend and complete its upgrade.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationStr,
    /// Backends tried for one client handshake before answering 502.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// How often `dns:` entries are re-resolved.
    #[serde(default = "default_dns_interval")]
    pub dns_refresh: DurationStr,
}

impl Default for MosaicConfig {
    fn default() -> Self {
        MosaicConfig {
            subprotocols: default_subprotocols(),
            features: None,
            validate: ValidateConfig::default(),
            server_authentication: ServerAuthentication::default(),
            server_key_file: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            backends: Vec::new(),
            authenticated_backends: Vec::new(),
            balance: Balance::default(),
            health_check: HealthCheckConfig::default(),
            connect_timeout: default_connect_timeout(),
            max_tries: default_max_tries(),
            dns_refresh: default_dns_interval(),
        }
    }
}

fn default_subprotocols() -> Vec<String> {
    MosaicVersion::ALL
        .iter()
        .map(|v| v.token().into())
        .collect()
}
fn default_max_message() -> u64 {
    DEFAULT_MAX_MESSAGE_BYTES
}
fn default_connect_timeout() -> DurationStr {
    DurationStr::from_secs(5)
}
fn default_max_tries() -> u32 {
    3
}
fn default_dns_interval() -> DurationStr {
    DurationStr::from_secs(10)
}

/// `nostr:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NostrConfig {
    /// The relay, `ws://host:port`; absent refuses non-Mosaic upgrades.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Time allowed to connect to the relay and complete its upgrade.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: DurationStr,
    /// A pool of relays, with the same entries as `mosaic.backends` (instead of `upstream`).
    #[serde(default)]
    pub upstreams: Vec<BackendConfig>,
    /// How the pool picks a relay.
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks of the relays.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Relays tried for one client handshake before answering 502.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
}

/// `limits:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections at most (503 beyond).
    #[serde(default = "default_max_conn")]
    pub max_connections: usize,
    /// Open connections per real client address at most (429 beyond).
    #[serde(default = "default_max_conn_ip")]
    pub max_connections_per_ip: usize,
    /// Time a client has to complete TLS and its upgrade request.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: DurationStr,
    /// Proxied connections with no traffic this long are closed with 1001.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: DurationStr,
    /// A relayed connection whose write to either side does not finish this long is
    /// closed (nginx's `send_timeout`): a peer that stops reading cannot hold its buffers.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: DurationStr,
    /// Largest upgrade request head (request line and headers), in bytes.
    #[serde(default = "default_max_header")]
    pub max_request_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_conn(),
            max_connections_per_ip: default_max_conn_ip(),
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            write_timeout: default_write_timeout(),
            max_request_header_bytes: default_max_header(),
        }
    }
}

fn default_max_conn() -> usize {
    10_000
}
fn default_max_conn_ip() -> usize {
    256
}
fn default_handshake_timeout() -> DurationStr {
    DurationStr::from_secs(10)
}
fn default_idle_timeout() -> DurationStr {
    DurationStr::from_secs(600)
}
fn default_write_timeout() -> DurationStr {
    DurationStr::from_secs(60)
}
/// The longest `limits.write_timeout`: the relay keeps write stalls as 32-bit millisecond
/// marks.
pub const MAX_WRITE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
fn default_max_header() -> usize {
    16 * 1024
}

/// `forwarded:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardedConfig {
    /// CIDRs whose X-Forwarded-For / PROXY header is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Expect a PROXY v1/v2 header on every public connection.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `shutdown:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Longest time connections are given to close after SIGTERM.
    #[serde(default = "default_drain")]
    pub drain_timeout: DurationStr,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout: default_drain(),
        }
    }
}

fn default_drain() -> DurationStr {
    DurationStr::from_secs(25)
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `log:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// text or json.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `mosaic_gateway=debug,info`…
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_level(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// A duration written as `500ms`, `10s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationStr(pub Duration);

impl DurationStr {
    /// A whole number of seconds.
    pub const fn from_secs(s: u64) -> Self {
        DurationStr(Duration::from_secs(s))
    }
}

/// Why a single config value does not parse; `Display` is the operator's one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not a whole number followed by a unit.
    #[error("`{0}` is not a duration (use e.g. 500ms, 10s, 5m)")]
    NotADuration(String),
    /// A number without a known unit.
    #[error("`{0}` has no unit: write ms, s, m or h after the number")]
    NoUnit(String),
    /// Not a URL at all.
    #[error("`{url}` is not a URL: {reason}")]
    NotAUrl {
        /// The text given.
        url: String,
        /// The URL parser's reason.
        reason: String,
    },
    /// A URL with another scheme.
    #[error("`{0}` must start with ws:// or wss://")]
    NotWebSocket(String),
    /// A URL without a host.
    #[error("`{0}` has no host")]
    NoHost(String),
    /// Neither a CIDR nor an address.
    #[error(transparent)]
    NotACidr(#[from] std::net::AddrParseError),
}

/// Parses `500ms`, `10s`, `5m`, `1h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ValueError::NotADuration(s.to_string()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(ValueError::NoUnit(s.to_string())),
    };
    Ok(d)
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(DurationStr)
            .map_err(serde::de::Error::custom)
    }
}

/// Scheme of an upstream URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

/// A parsed `ws://` or `wss://` upstream address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    /// ws or wss.
    pub scheme: Scheme,
    /// Host name or address, without brackets.
    pub host: String,
    /// Port (default 80 / 443).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

impl UpstreamUrl {
    /// Parses `ws://host[:port][/path]` or `wss://…`.
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let uri: hyper::Uri =
            s.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| ValueError::NotAUrl {
                    url: s.to_string(),
                    reason: e.to_string(),
                })?;
        let scheme = match uri.scheme_str() {
            Some("ws") => Scheme::Ws,
            Some("wss") => Scheme::Wss,
            _ => return Err(ValueError::NotWebSocket(s.to_string())),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ValueError::NoHost(s.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(match scheme {
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(UpstreamUrl {
            scheme,
            host,
            port,
            path,
        })
    }

    /// `host:port` as used in a Host header and for connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    let cfg = parse(&text)?;
    Ok(cfg)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut track = serde_path_to_error::Track::new();
        let r = Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
        if r.is_err() {
            path = track.path().to_string();
        }
        r
    });
    let cfg =
        result.map_err(|e| ConfigErrors(vec![describe_serde_error(&path, &e.to_string())]))?;
    cfg.validate()?;
    Ok(cfg)
}

/// Keeps one problem on one line even when it quotes a value with line breaks in it.
fn one_line(s: &str) -> String {
    s.replace('\r', "\\r").replace('\n', "\\n")
}

/// Turns a YAML error into one `key.path: what is wrong (line L column C)` line.
fn describe_serde_error(path: &str, msg: &str) -> String {
    let first = msg.lines().next().unwrap_or(msg).trim();
    // serde-saphyr says "line L column C: message"; the key path leads, the position follows.
    let (position, what) = match first.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => (Some(pos), rest),
        _ => (None, first),
    };
    let key = match path {
        "" | "." => "config",
        p => p,
    };
    one_line(&match position {
        Some(pos) => format!("{key}: {what} ({pos})"),
        None => format!("{key}: {what}"),
    })
}

impl Config {
    /// Checks everything serde could not, collecting one line per problem.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        self.validate_listeners(&mut errs);
        if let Some(tls) = &self.tls {
            tls.validate(&mut errs);
        }
        // With routes, the top-level sections are the default route, which may be absent.
        if self.routes.is_empty() || !self.mosaic.backends.is_empty() {
            self.mosaic.require_backends(&mut errs);
        }
        self.mosaic.validate(&mut errs);
        if let Some(n) = &self.nostr {
            n.validate(&mut errs);
        }
        routes::validate(&self.routes, &mut errs);
        self.http.validate(&mut errs);
        self.limits.validate(&mut errs);
        self.rate_limits
            .validate("rate_limits", self.mosaic.knows_types(), &mut errs);
        // One master key per gateway: the top-level file (or TLS's) serves every route.
        let gateway_signs = std::iter::once(&self.mosaic)
            .chain(self.routes.iter().filter_map(|r| r.mosaic.as_ref()))
            .map(|m| m.server_authentication)
            .max()
            .unwrap_or_default();
        mosaic_versions::check_server_key(
            gateway_signs,
            &self.mosaic.server_key_file,
            self.tls.as_ref().and_then(|t| t.key_file.as_ref()),
            &mut errs,
        );
        self.access.validate(&mut errs);
        self.bans.validate(&mut errs);
        for (i, k) in self.admin.nip86_pubkeys.iter().enumerate() {
            if let Err(e) = nostr::PublicKey::parse(k) {
                errs.push(format!(
                    "admin.nip86_pubkeys[{i}]: `{k}` is not a nostr public key (npub1… or 64 hex digits): {e}"
                ));
            }
        }
        for (i, c) in self.forwarded.trusted_proxies.iter().enumerate() {
            if parse_cidr(c).is_err() {
                errs.push(format!(
                    "forwarded.trusted_proxies[{i}]: `{c}` is not a CIDR like 10.0.0.0/8 or fd00::/8"
                ));
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errs.push(format!(
                "log.level: `{}` is not a level or filter",
                self.log.level
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs.iter().map(|e| one_line(e)).collect()))
        }
    }

    fn validate_listeners(&self, errs: &mut Vec<String>) {
        let mut addr = |key: &str, v: &str| {
            if v.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "{key}: `{v}` is not an address like 0.0.0.0:8443 or [::]:8443"
                ));
            }
        };
        addr("listen", &self.listen);
        addr("admin.listen", &self.admin.listen);
        if self.workers > 1024 {
            errs.push("workers: at most 1024 (0 means one per CPU)".into());
        }
    }

    /// The parsed public listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8443)))
    }

    /// How many worker threads serve the public listener.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The parsed admin listen address (validated).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090)))
    }

    /// Time allowed to connect to the nostr relay and get its answer.
    pub fn nostr_connect_timeout(&self) -> Duration {
        self.nostr
            .as_ref()
            .map_or(default_connect_timeout().0, |n| n.connect_timeout.0)
    }

    /// The nostr relay, when non-Mosaic upgrades are forwarded.
    pub fn nostr_upstream(&self) -> Option<UpstreamUrl> {
        self.nostr
            .as_ref()
            .and_then(|n| n.upstream.as_deref())
            .and_then(|u| UpstreamUrl::parse(u).ok())
    }
}

impl TlsConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        match &self.key_file {
            Some(f) if f.as_os_str().is_empty() => {
                errs.push("tls.key_file: must name the server's ed25519 key file".into())
            }
            None if self.certificates.is_empty() && self.acme.is_none() => errs
                .push("tls.key_file: required unless tls.certificates or tls.acme is set".into()),
            _ => {}
        }
        for (i, c) in self.certificates.iter().enumerate() {
            for (j, n) in c.names.iter().enumerate() {
                if let Err(e) = crate::tls::certs::NamePattern::parse(n) {
                    errs.push(format!("tls.certificates[{i}].names[{j}]: {e}"));
                }
            }
        }
        if let Some(a) = &self.acme {
            a.validate(errs);
        }
        positive(errs, "tls.watch_interval", self.watch_interval);
        if self.certificate == CertificateMode::RawPublicKey
            && self.min_version == MinVersion::Tls12
        {
            // Raw public keys exist in TLS 1.3 only; say so instead of failing clients later.
            errs.push("tls.min_version: raw-public-key certificates need \"1.3\"".into());
        }
    }
}

impl AcmeConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        if self.domains.is_empty() {
            errs.push("tls.acme.domains: list at least one name".into());
        }
        for (i, d) in self.domains.iter().enumerate() {
            match crate::tls::certs::NamePattern::parse(d) {
                Ok(p) if p.is_wildcard() => errs.push(format!(
                    "tls.acme.domains[{i}]: `{d}`: wildcards need DNS-01, which the gateway does not do"
                )),
                Ok(_) => {}
                Err(e) => errs.push(format!("tls.acme.domains[{i}]: {e}")),
            }
        }
        if !self.directory.starts_with("https://") {
            errs.push(format!(
                "tls.acme.directory: `{}` must be an https:// URL",
                self.directory
            ));
        }
        if self.cache_dir.as_os_str().is_empty() {
            errs.push("tls.acme.cache_dir: must name a directory".into());
        }
        match (self.challenge, &self.http_listen) {
            (AcmeChallenge::Http01, None) => errs.push(
                "tls.acme.http_listen: required with challenge: http-01 (e.g. 0.0.0.0:80)".into(),
            ),
            (_, Some(a)) if a.parse::<SocketAddr>().is_err() => errs.push(format!(
                "tls.acme.http_listen: `{a}` is not an address like 0.0.0.0:80"
            )),
            _ => {}
        }
    }
}

impl MosaicConfig {
    /// The profile a connection on `token` is relayed with (a token of `subprotocols`).
    pub fn profile(&self, token: &str) -> Option<Profile> {
        MosaicVersion::from_token(token).map(|v| self.validate.profile(v))
    }

    /// Whether every token's profile knows where Submissions and query ids are (the
    /// Mosaic rate limits need that).
    pub fn knows_types(&self) -> bool {
        self.subprotocols
            .iter()
            .all(|t| self.profile(t).is_none_or(Profile::knows_types))
    }

    fn require_backends(&self, errs: &mut Vec<String>) {
        if self.backends.is_empty() {
            errs.push("mosaic.backends: list at least one backend (url: ws://host:port)".into());
        }
    }

    fn validate(&self, errs: &mut Vec<String>) {
        mosaic_versions::check_tokens(&self.subprotocols, errs);
        self.validate.check("mosaic.validate", errs);
        for (i, f) in self.features.iter().flatten().enumerate() {
            if !is_token(f) {
                errs.push(format!(
                    "mosaic.features[{i}]: `{f}` must be a non-empty name without `;`, `,` or spaces"
                ));
            }
        }
        if self.max_message_bytes < 8 {
            errs.push("mosaic.max_message_bytes: must be at least 8".into());
        }
        if self.max_message_bytes > 64 * 1024 * 1024 {
            errs.push("mosaic.max_message_bytes: must be at most 67108864 (64 MiB)".into());
        }
        for (key, list) in [
            ("mosaic.backends", &self.backends),
            (
                "mosaic.authenticated_backends",
                &self.authenticated_backends,
            ),
        ] {
            for (i, b) in list.iter().enumerate() {
                check_backend(&format!("{key}[{i}]"), b, errs);
            }
        }
        self.health_check.validate("mosaic.health_check", errs);
        if self.health_check.kind.is_some() {
            errs.push(
                "mosaic.health_check.kind: only nostr relays have a kind (Mosaic backends are checked with a Mosaic upgrade)"
                    .into(),
            );
        }
        positive(errs, "mosaic.connect_timeout", self.connect_timeout);
        if self.max_tries == 0 {
            errs.push("mosaic.max_tries: must be at least 1".into());
        }
        positive(errs, "mosaic.dns_refresh", self.dns_refresh);
    }
}

impl HealthCheckConfig {
    /// Checks the section at `key` (`mosaic.health_check`, `nostr.health_check`).
    fn validate(&self, key: &str, errs: &mut Vec<String>) {
        positive(errs, &format!("{key}.interval"), self.interval);
        positive(errs, &format!("{key}.timeout"), self.timeout);
        if self.unhealthy_threshold == 0 {
            errs.push(format!("{key}.unhealthy_threshold: must be at least 1"));
        }
        if self.healthy_threshold == 0 {
            errs.push(format!("{key}.healthy_threshold: must be at least 1"));
        }
    }
}

impl NostrConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        if let Some(u) = &self.upstream {
            match UpstreamUrl::parse(u) {
                Ok(url) if url.scheme == Scheme::Wss => errs
                    .push("nostr.upstream: wss:// relays are not supported yet; use ws://".into()),
                Ok(_) => {}
                Err(e) => errs.push(format!("nostr.upstream: {e}")),
            }
        }
        positive(errs, "nostr.connect_timeout", self.connect_timeout);
        self.validate_pool(errs);
    }
}

impl LimitsConfig {
    fn validate(&self, errs: &mut Vec<String>) {
        if self.max_connections == 0 {
            errs.push("limits.max_connections: must be at least 1".into());
        }
        if self.max_connections_per_ip == 0 {
            errs.push("limits.max_connections_per_ip: must be at least 1".into());
        }
        positive(errs, "limits.handshake_timeout", self.handshake_timeout);
        positive(errs, "limits.idle_timeout", self.idle_timeout);
        positive(errs, "limits.write_timeout", self.write_timeout);
        if self.write_timeout.0 > MAX_WRITE_TIMEOUT {
            errs.push("limits.write_timeout: must be at most 24h".into());
        }
        if self.max_request_header_bytes < 1024 {
            errs.push("limits.max_request_header_bytes: must be at least 1024".into());
        }
    }
}

/// A duration that must be more than zero.
fn positive(errs: &mut Vec<String>, key: &str, d: DurationStr) {
    if d.0.is_zero() {
        errs.push(format!("{key}: must be more than 0"));
    }
}

/// Parses a CIDR, or a bare address meaning a single host.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, ValueError> {
    let s = s.trim();
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    Ok(ipnet::IpNet::from(s.parse::<std::net::IpAddr>()?))
}

pub(crate) fn check_backend(key: &str, b: &BackendConfig, errs: &mut Vec<String>) {
    match (&b.url, &b.dns) {
        (Some(_), Some(_)) => errs.push(format!("{key}: give either url or dns, not both")),
        (None, None) => errs.push(format!(
            "{key}: needs url (ws://host:port) or dns (name:port)"
        )),
        (Some(u), None) => {
            if let Err(e) = UpstreamUrl::parse(u) {
                errs.push(format!("{key}.url: {e}"));
            }
        }
        (None, Some(d)) => {
            let ok = d
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                errs.push(format!("{key}.dns: `{d}` must be name:port"));
            }
        }
    }
    if b.weight == 0 || b.weight > 1000 {
        errs.push(format!("{key}.weight: must be from 1 to 1000"));
    }
    if let Some(p) = &b.pin {
        if let Err(e) = crate::keys::parse_server_key(p) {
            errs.push(format!("{key}.pin: {}", crate::error::Chain(&e)));
        }
        let is_wss = b
            .url
            .as_deref()
            .and_then(|u| UpstreamUrl::parse(u).ok())
            .map(|u| u.scheme == Scheme::Wss)
            .unwrap_or(false);
        if !is_wss {
            errs.push(format!("{key}.pin: only wss:// backends can be pinned"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn urls() {
        let u = UpstreamUrl::parse("ws://127.0.0.1:8081").unwrap();
        assert_eq!(u.authority(), "127.0.0.1:8081");
        assert_eq!(u.path, "/");
        let u = UpstreamUrl::parse("wss://[::1]/relay?x=1").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), u.host.as_str()),
            (443, "/relay?x=1", "::1")
        );
        assert!(UpstreamUrl::parse("http://x").is_err());
    }

    #[test]
    fn every_problem_stays_on_one_line() {
        let e = parse("mosaic:\n  backends:\n    - url: \"ws://a\\nb\"\n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(!e.0[0].contains('\n'), "{:?}", e.0);
        assert!(e.0[0].starts_with("mosaic.backends[0].url:"), "{:?}", e.0);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:8443");
        assert_eq!(c.mosaic.subprotocols, vec!["mosaic2025", "mosaic2024"]);
        assert_eq!(c.limits.idle_timeout.0, Duration::from_secs(600));
        assert!(c.nostr_upstream().is_none());
    }
}
