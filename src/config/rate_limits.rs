//! The `rate_limits:` and `access:` sections: schema, defaults and validation (each problem
//! one `key.path: what is wrong` line, like the rest of the config).

use serde::Deserialize;

use super::{parse_cidr, DurationStr};

/// `rate_limits:`: token buckets (a burst, then a steady rate), each off unless set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// New WebSocket connections per client address (429 with `Retry-After` beyond).
    #[serde(default)]
    pub connections_per_ip: Option<RateConfig>,
    /// WebSocket messages per connection, client to upstream (`action`: throttle or close).
    #[serde(default)]
    pub messages_per_connection: Option<RateConfig>,
    /// Bytes per connection (throttled); `direction` says which way (default: client to
    /// upstream).
    #[serde(default)]
    pub bytes_per_connection: Option<RateConfig>,
    /// Mosaic Submissions (`scope`: connection, ip or client_key); over the rate the
    /// gateway answers Submission Result 0x12 itself.
    #[serde(default)]
    pub mosaic_submissions: Option<RateConfig>,
    /// Open Mosaic queries per connection; the next one is answered Query Closed 0x11.
    #[serde(default)]
    pub mosaic_open_queries: Option<usize>,
    /// Per-address limits count an IPv6 network of this prefix length as one client.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Clients (addresses or keys) remembered per shared table at most; the ones used
    /// longest ago are forgotten first.
    #[serde(default = "default_table_size")]
    pub table_size: usize,
    /// CIDRs never rate limited nor banned (trusted indexers, the operator's monitoring).
    #[serde(default)]
    pub exempt: Vec<String>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            connections_per_ip: None,
            messages_per_connection: None,
            bytes_per_connection: None,
            mosaic_submissions: None,
            mosaic_open_queries: None,
            ipv6_prefix: default_ipv6_prefix(),
            table_size: default_table_size(),
            exempt: Vec::new(),
        }
    }
}

fn default_ipv6_prefix() -> u8 {
    64
}

fn default_table_size() -> usize {
    100_000
}

/// One token bucket: `rate` every `per`, at most `burst` at once (default: `rate`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Tokens added every `per`.
    pub rate: f64,
    /// The period of `rate`.
    #[serde(default = "one_second")]
    pub per: DurationStr,
    /// The bucket's size: how many may pass at once after a quiet spell.
    #[serde(default)]
    pub burst: Option<f64>,
    /// `messages_per_connection` only: what happens over the rate.
    #[serde(default)]
    pub action: Option<LimitAction>,
    /// `mosaic_submissions` only: whose Submissions share a bucket.
    #[serde(default)]
    pub scope: Option<SubmissionScope>,
    /// `bytes_per_connection` only: which way the bytes are counted.
    #[serde(default)]
    pub direction: Option<ByteDirection>,
}

fn one_second() -> DurationStr {
    DurationStr::from_secs(1)
}

impl RateConfig {
    /// The bucket size in effect.
    pub fn burst(&self) -> f64 {
        self.burst.unwrap_or(self.rate.ceil()).max(1.0)
    }
}

/// What `messages_per_connection` does with a client over the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitAction {
    /// Stop reading from the client until tokens refill (TCP backpressure; nothing lost).
    #[default]
    Throttle,
    /// Close the connection with 1008 (policy violation).
    Close,
}

/// Whose Submissions share one `mosaic_submissions` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubmissionScope {
    /// Each connection has its own.
    #[default]
    Connection,
    /// Every connection from one client address (IPv6: `ipv6_prefix`).
    Ip,
    /// Every connection of one TLS-authenticated key; anonymous clients by address.
    ClientKey,
}

/// Which way `bytes_per_connection` counts and throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteDirection {
    /// Client to upstream: the client's socket stops being read.
    #[default]
    Client,
    /// Upstream to client: the upstream's socket stops being read (large answers,
    /// downloads), so the upstream is slowed by TCP backpressure.
    Upstream,
    /// Both ways, each with its own bucket of this size.
    Both,
}

impl ByteDirection {
    /// Whether client-to-upstream bytes are counted.
    pub fn client(self) -> bool {
        matches!(self, ByteDirection::Client | ByteDirection::Both)
    }

    /// Whether upstream-to-client bytes are counted.
    pub fn upstream(self) -> bool {
        matches!(self, ByteDirection::Upstream | ByteDirection::Both)
    }
}

/// `bans:`: temporary bans of addresses that keep tripping limits or breaking the protocol,
/// and where bans (NIP-86 blocks too) are kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BansConfig {
    /// Limit trips and protocol violations by one address (IPv6: `rate_limits.ipv6_prefix`)
    /// within `within` that ban it; absent: no automatic bans.
    #[serde(default)]
    pub after: Option<u32>,
    /// The window trips are counted in.
    #[serde(default = "default_ban_within")]
    pub within: DurationStr,
    /// How long an automatic ban lasts.
    #[serde(default = "default_ban_for", rename = "for")]
    pub duration: DurationStr,
    /// Bans (and addresses with trips counted) remembered at most.
    #[serde(default = "default_ban_entries")]
    pub max_entries: usize,
    /// Where bans and NIP-86 blocks are kept across restarts; absent or empty: in memory
    /// only.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
}

impl Default for BansConfig {
    fn default() -> Self {
        BansConfig {
            after: None,
            within: default_ban_within(),
            duration: default_ban_for(),
            max_entries: default_ban_entries(),
            file: None,
        }
    }
}

fn default_ban_within() -> DurationStr {
    DurationStr::from_secs(60)
}

fn default_ban_for() -> DurationStr {
    DurationStr::from_secs(600)
}

fn default_ban_entries() -> usize {
    100_000
}

impl BansConfig {
    /// `file`, unless absent or empty (`file: ""` as in the contract's example).
    pub fn file(&self) -> Option<&std::path::Path> {
        self.file.as_deref().filter(|f| !f.as_os_str().is_empty())
    }

    pub(crate) fn validate(&self, errs: &mut Vec<String>) {
        if self.after == Some(0) {
            errs.push("bans.after: must be at least 1 (omit it for no automatic bans)".into());
        }
        if self.within.0.is_zero() {
            errs.push("bans.within: must be more than 0".into());
        }
        if self.duration.0.is_zero() {
            errs.push("bans.for: must be more than 0".into());
        }
        if !(16..=10_000_000).contains(&self.max_entries) {
            errs.push("bans.max_entries: must be from 16 to 10000000".into());
        }
        if let Some(f) = self.file() {
            let dir = match f.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if f.file_name().is_none() {
                errs.push("bans.file: must name a file".into());
            } else if !dir.is_dir() {
                errs.push(format!(
                    "bans.file: the directory {} does not exist",
                    dir.display()
                ));
            }
        }
    }
}

/// `access:`: client addresses served or refused (after PROXY / trusted X-Forwarded-For).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// CIDRs; when non-empty, only these client addresses are served.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs refused.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl RateLimitsConfig {
    /// Checks every limit under `key` (`rate_limits` or `routes[i].rate_limits`);
    /// `knows_types`: every Mosaic token's validation level reads message types, which the
    /// Mosaic limits need (all but the seed's `direction`).
    pub(crate) fn validate(&self, key: &str, knows_types: bool, errs: &mut Vec<String>) {
        let buckets = [
            ("connections_per_ip", &self.connections_per_ip),
            ("messages_per_connection", &self.messages_per_connection),
            ("bytes_per_connection", &self.bytes_per_connection),
            ("mosaic_submissions", &self.mosaic_submissions),
        ];
        for (name, rate) in buckets {
            if let Some(r) = rate {
                r.validate(&format!("{key}.{name}"), name, errs);
            }
        }
        if let Some(n) = self.mosaic_open_queries {
            if !(1..=65_536).contains(&n) {
                errs.push(format!(
                    "{key}.mosaic_open_queries: must be from 1 to 65536"
                ));
            }
        }
        if !knows_types {
            for (name, set) in [
                ("mosaic_submissions", self.mosaic_submissions.is_some()),
                ("mosaic_open_queries", self.mosaic_open_queries.is_some()),
            ] {
                if set {
                    errs.push(format!(
                        "{key}.{name}: needs mosaic.validate: strict for mosaic2024 (its direction level reads no message types)"
                    ));
                }
            }
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            errs.push(format!("{key}.ipv6_prefix: must be from 1 to 128"));
        }
        if self.table_size < 16 {
            errs.push(format!("{key}.table_size: must be at least 16"));
        }
        check_cidrs(&format!("{key}.exempt"), &self.exempt, errs);
    }
}

impl RateConfig {
    fn validate(&self, key: &str, name: &str, errs: &mut Vec<String>) {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            errs.push(format!("{key}.rate: must be a number more than 0"));
        }
        if self.per.0.is_zero() {
            errs.push(format!("{key}.per: must be more than 0"));
        }
        if let Some(b) = self.burst {
            if !(b.is_finite() && b >= 1.0) {
                errs.push(format!("{key}.burst: must be a number of at least 1"));
            }
        }
        if self.action.is_some() && name != "messages_per_connection" {
            errs.push(format!(
                "{key}.action: only messages_per_connection has an action"
            ));
        }
        if self.scope.is_some() && name != "mosaic_submissions" {
            errs.push(format!("{key}.scope: only mosaic_submissions has a scope"));
        }
        if self.direction.is_some() && name != "bytes_per_connection" {
            errs.push(format!(
                "{key}.direction: only bytes_per_connection has a direction"
            ));
        }
    }
}

impl AccessConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<String>) {
        check_cidrs("access.allow", &self.allow, errs);
        check_cidrs("access.deny", &self.deny, errs);
    }
}

/// One line per entry of `list` (at `key`) that is not a CIDR or an address.
fn check_cidrs(key: &str, list: &[String], errs: &mut Vec<String>) {
    for (i, c) in list.iter().enumerate() {
        if let Err(e) = parse_cidr(c) {
            errs.push(format!(
                "{key}[{i}]: `{c}` is not a CIDR like 203.0.113.0/24 or 2001:db8::/32 ({e})"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, LimitAction, SubmissionScope};

    const BACKEND: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n";

    #[test]
    fn the_issue_example_parses_with_its_defaults() {
        let c = parse(&format!(
            "{BACKEND}rate_limits:
  connections_per_ip: {{ rate: 20, per: 1s, burst: 40 }}
  messages_per_connection: {{ rate: 100, per: 1s, burst: 200, action: throttle }}
  bytes_per_connection: {{ rate: 1048576, per: 1s, burst: 2097152 }}
  mosaic_submissions: {{ rate: 10, per: 1s, burst: 20, scope: client_key }}
  mosaic_open_queries: 32
  ipv6_prefix: 56
access:
  allow: [0.0.0.0/0, \"::/0\"]
  deny: [203.0.113.0/24, 2001:db8::1]
"
        ))
        .unwrap();
        let r = &c.rate_limits;
        assert_eq!(r.connections_per_ip.as_ref().unwrap().burst(), 40.0);
        let m = r.messages_per_connection.as_ref().unwrap();
        assert_eq!(m.action, Some(LimitAction::Throttle));
        assert_eq!(
            r.mosaic_submissions.as_ref().unwrap().scope,
            Some(SubmissionScope::ClientKey)
        );
        assert_eq!((r.mosaic_open_queries, r.ipv6_prefix), (Some(32), 56));
        assert_eq!(c.access.deny.len(), 2);
        // Nothing set: every limit off; the burst defaults to the rate.
        let c = parse(&format!(
            "{BACKEND}rate_limits:\n  connections_per_ip: {{ rate: 2.5 }}\n"
        ))
        .unwrap();
        let r = &c.rate_limits;
        assert!(r.messages_per_connection.is_none() && r.mosaic_open_queries.is_none());
        assert_eq!(r.connections_per_ip.as_ref().unwrap().burst(), 3.0);
        assert_eq!((r.ipv6_prefix, r.table_size), (64, 100_000));
    }

    #[test]
    fn every_mistake_names_its_key() {
        let e = parse(&format!(
            "{BACKEND}rate_limits:
  connections_per_ip: {{ rate: 0, per: 0s, burst: 0.5 }}
  bytes_per_connection: {{ rate: 10, action: close }}
  messages_per_connection: {{ rate: 10, scope: ip }}
  mosaic_open_queries: 0
  ipv6_prefix: 129
  table_size: 3
access:
  allow: [10.0.0.0/8, not-a-net]
  deny: [300.1.1.1]
"
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "rate_limits.connections_per_ip.rate",
                "rate_limits.connections_per_ip.per",
                "rate_limits.connections_per_ip.burst",
                "rate_limits.messages_per_connection.scope",
                "rate_limits.bytes_per_connection.action",
                "rate_limits.mosaic_open_queries",
                "rate_limits.ipv6_prefix",
                "rate_limits.table_size",
                "access.allow[1]",
                "access.deny[0]",
            ],
            "{e}"
        );
        // One mistake each: the first line names the key.
        for (yaml, key) in [
            (
                "  validate: direction\nrate_limits:\n  mosaic_submissions: { rate: 1 }\n",
                "rate_limits.mosaic_submissions: needs mosaic.validate: strict",
            ),
            (
                "rate_limits:\n  messages_per_connection: { rate: 1, action: drop }\n",
                "rate_limits.messages_per_connection.action:",
            ),
            (
                "rate_limits:\n  connection_per_ip: { rate: 1 }\n",
                "rate_limits.connection_per_ip:",
            ),
        ] {
            let e = parse(&format!("{BACKEND}{yaml}")).unwrap_err();
            assert!(e.0[0].starts_with(key), "{e}");
        }
    }
}
