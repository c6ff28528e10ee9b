//! The `rate_limits:` and `access:` sections: schema, defaults and validation (each problem
//! one `key.path: what is wrong` line, like the rest of the config).

use serde::Deserialize;

use crate::config::{parse_cidr, DurationStr};
use crate::relay::mosaic::Validation;

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
    /// Bytes per connection, client to upstream (throttled).
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
    /// Checks every limit; `validation` is `mosaic.validate` (the Mosaic limits read
    /// seed-era message types, so they need `strict`).
    pub(crate) fn validate(&self, validation: Validation, errs: &mut Vec<String>) {
        let buckets = [
            ("connections_per_ip", &self.connections_per_ip),
            ("messages_per_connection", &self.messages_per_connection),
            ("bytes_per_connection", &self.bytes_per_connection),
            ("mosaic_submissions", &self.mosaic_submissions),
        ];
        for (name, rate) in buckets {
            if let Some(r) = rate {
                r.validate(&format!("rate_limits.{name}"), name, errs);
            }
        }
        if let Some(n) = self.mosaic_open_queries {
            if !(1..=65_536).contains(&n) {
                errs.push("rate_limits.mosaic_open_queries: must be from 1 to 65536".into());
            }
        }
        if validation != Validation::Strict {
            for (name, set) in [
                ("mosaic_submissions", self.mosaic_submissions.is_some()),
                ("mosaic_open_queries", self.mosaic_open_queries.is_some()),
            ] {
                if set {
                    errs.push(format!(
                        "rate_limits.{name}: needs mosaic.validate: strict (it reads seed-era message types)"
                    ));
                }
            }
        }
        if !(1..=128).contains(&self.ipv6_prefix) {
            errs.push("rate_limits.ipv6_prefix: must be from 1 to 128".into());
        }
        if self.table_size < 16 {
            errs.push("rate_limits.table_size: must be at least 16".into());
        }
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
    }
}

impl AccessConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<String>) {
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            for (i, c) in list.iter().enumerate() {
                if let Err(e) = parse_cidr(c) {
                    errs.push(format!(
                        "access.{name}[{i}]: `{c}` is not a CIDR like 203.0.113.0/24 or 2001:db8::/32 ({e})"
                    ));
                }
            }
        }
    }
}
