//! `routes:` and the nostr relay pool (`nostr.upstreams`, `balance`, `health_check`,
//! `max_tries`): schema and validation, every problem naming its key.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::{check_backend, BackendConfig, MosaicConfig, NostrConfig, Scheme, UpstreamUrl};
use crate::tls::certs::NamePattern;

/// The `route` label of the top-level (default) route; no entry of `routes:` may take it.
pub const RESERVED_NAME: &str = "default";

/// An entry of `routes[i].hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One name (lowercase) or address.
    Exact(String),
    /// `*.suffix`: any name ending in `.suffix` (the suffix is stored lowercase).
    Wildcard(String),
}

/// Why a `hosts` entry can never match a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    /// `name:port`.
    #[error("`{0}` cannot match: hosts are compared without the port; write the name alone")]
    Port(String),
    /// `name/path`.
    #[error("`{0}` cannot match: a host has no path (use path_prefix)")]
    Path(String),
    /// Anything else that is not a name, `*.name` or an address.
    #[error("`{0}` cannot match any host: not a host name (like relay.example.com or *.example.com) or an IP address")]
    NotAName(String),
}

impl HostPattern {
    /// Parses `relay.example.com`, `*.example.com`, `127.0.0.1` or `::1` / `[::1]`.
    pub fn parse(s: &str) -> Result<Self, BadHost> {
        let t = s.trim();
        let bare = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(t).parse::<IpAddr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        if t.contains('/') {
            return Err(BadHost::Path(s.to_string()));
        }
        if t.contains(':') {
            return Err(BadHost::Port(s.to_string()));
        }
        let p = NamePattern::parse(t).map_err(|_| BadHost::NotAName(s.to_string()))?;
        let text = p.to_string();
        Ok(match text.strip_prefix("*.") {
            Some(suffix) if p.is_wildcard() => HostPattern::Wildcard(suffix.to_string()),
            _ => HostPattern::Exact(text),
        })
    }

    /// Whether `host` (already without its port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(n) => host.eq_ignore_ascii_case(n),
            HostPattern::Wildcard(suffix) => {
                // Bytes, not str slices: a peer's host name never makes this panic.
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len() - 1] == b'.'
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// How specific a match is: exact names beat every wildcard, longer suffixes beat
    /// shorter ones, and any pattern beats "any host" (0).
    pub(crate) fn rank(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Wildcard(s) => 1 + s.len(),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A `path_prefix`: `/inbox` takes `/inbox`, `/inbox/…` and `/inbox?…`, not `/inboxes`;
/// `/inbox/` takes only what is below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix(String);

/// Why a `path_prefix` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` must start with `/` and hold no `?`, `#` or spaces")]
pub struct BadPrefix(pub String);

impl PathPrefix {
    /// Parses a path prefix.
    pub fn parse(s: &str) -> Result<Self, BadPrefix> {
        let ok = s.starts_with('/')
            && !s
                .bytes()
                .any(|b| b == b'?' || b == b'#' || b.is_ascii_whitespace() || b.is_ascii_control());
        if ok {
            Ok(PathPrefix(s.to_string()))
        } else {
            Err(BadPrefix(s.to_string()))
        }
    }

    /// The prefix as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `target` (a path this prefix matches, and its query) without the prefix: `/inbox/x?q`
    /// is `/x?q` and `/inbox` is `/` under `/inbox` or `/inbox/`.
    pub fn strip<'a>(&self, target: &'a str) -> std::borrow::Cow<'a, str> {
        let p = self.0.trim_end_matches('/');
        let rest = target.get(p.len()..).unwrap_or("");
        if rest.starts_with('/') {
            std::borrow::Cow::Borrowed(rest)
        } else {
            std::borrow::Cow::Owned(format!("/{rest}"))
        }
    }

    /// Whether `path` (without its query) is this prefix or below it.
    pub fn matches(&self, path: &str) -> bool {
        let p = &self.0;
        path.starts_with(p.as_str())
            && (p.ends_with('/') || path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
    }
}

/// One entry of `routes:`: which requests it takes (`hosts`, `path_prefix`) and where they
/// go (its own `nostr` and `mosaic` sections, with every key the top-level ones have).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name: the `route` label of its metrics and logs.
    pub name: String,
    /// Exact names and `*.example.com` wildcards, compared without the port, any case.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Only requests whose path is this or below it (`/inbox` takes `/inbox` and
    /// `/inbox/…`, not `/inboxes`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Remove `path_prefix` from the path sent upstream (sent as `X-Forwarded-Prefix`), for a
    /// relay that expects to live at `/`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// The route's nostr relay or relays.
    #[serde(default)]
    pub nostr: Option<NostrConfig>,
    /// The route's Mosaic pool.
    #[serde(default)]
    pub mosaic: Option<MosaicConfig>,
    /// Limits of this route, on top of the global ones.
    #[serde(default)]
    pub limits: RouteLimitsConfig,
    /// Rate limits for this route's connections, instead of the top-level `rate_limits`
    /// (the access lists stay global).
    #[serde(default)]
    pub rate_limits: Option<super::RateLimitsConfig>,
}

/// `routes[i].limits`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitsConfig {
    /// Open connections on this route at most (503 beyond); the global limit still applies.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// How a relay's health is checked (`nostr.health_check.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NostrProbe {
    /// `GET` with `Accept: application/nostr+json` (NIP-11); passes on a 2xx answer.
    #[default]
    Nip11,
    /// A WebSocket upgrade; passes on 101.
    Websocket,
}

impl NostrConfig {
    /// The relay pool's entries: `upstream` as a one-member pool, or `upstreams`.
    pub fn relays(&self) -> Vec<BackendConfig> {
        match &self.upstream {
            Some(u) => vec![BackendConfig {
                url: Some(u.clone()),
                dns: None,
                weight: 1,
                pin: None,
            }],
            None => self.upstreams.clone(),
        }
    }

    /// Whether any relay is configured (otherwise non-Mosaic upgrades are refused).
    pub fn serves(&self) -> bool {
        self.upstream.is_some() || !self.upstreams.is_empty()
    }

    /// The pool keys (`upstreams`, `health_check`, `max_tries`).
    pub(super) fn validate_pool(&self, errs: &mut Vec<String>) {
        if self.upstream.is_some() && !self.upstreams.is_empty() {
            errs.push(
                "nostr.upstreams: give either nostr.upstream (one relay) or nostr.upstreams, not both"
                    .into(),
            );
        }
        for (i, b) in self.upstreams.iter().enumerate() {
            let key = format!("nostr.upstreams[{i}]");
            check_backend(&key, b, errs);
            let wss = b
                .url
                .as_deref()
                .and_then(|u| UpstreamUrl::parse(u).ok())
                .is_some_and(|u| u.scheme == Scheme::Wss);
            if wss {
                errs.push(format!(
                    "{key}.url: wss:// relays are not supported yet; use ws://"
                ));
            }
        }
        self.health_check.validate("nostr.health_check", errs);
        if self.max_tries == 0 {
            errs.push("nostr.max_tries: must be at least 1".into());
        }
    }
}

/// Checks `routes:`, one line per problem, each naming its key.
pub(super) fn validate(routes: &[RouteConfig], errs: &mut Vec<String>) {
    // (host pattern or "", path prefix) → the route that claimed it first.
    let mut claimed: Vec<(String, String, usize)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        validate_name(routes, i, &key, errs);
        let prefix = match r.path_prefix.as_deref().map(PathPrefix::parse) {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                errs.push(format!("{key}.path_prefix: {e}"));
                None
            }
            None => None,
        };
        let prefix_text = prefix.as_ref().map_or("", |p| p.as_str()).to_string();
        if r.strip_prefix && r.path_prefix.is_none() {
            errs.push(format!("{key}.strip_prefix: needs a path_prefix to strip"));
        }
        if r.hosts.is_empty() && r.path_prefix.is_none() {
            errs.push(format!(
                "{key}.hosts: give hosts or a path_prefix (this route would match nothing; the top-level mosaic/nostr sections are the default route)"
            ));
        }
        let mut claims = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) => claims.push((p.to_string(), format!("{key}.hosts[{j}]"))),
                Err(e) => errs.push(format!("{key}.hosts[{j}]: {e}")),
            }
        }
        if r.hosts.is_empty() {
            claims.push((String::new(), format!("{key}.path_prefix")));
        }
        for (host, at) in claims {
            match claimed
                .iter()
                .find(|(h, p, _)| *h == host && *p == prefix_text)
            {
                Some((_, _, first)) if *first != i => errs.push(format!(
                    "{at}: `{}`{} is already routes[{first}]'s; the same request cannot go to two routes",
                    if host.is_empty() { "any host" } else { &host },
                    if prefix_text.is_empty() { String::new() } else { format!(" with path_prefix `{prefix_text}`") },
                )),
                Some(_) => errs.push(format!("{at}: `{host}` is listed twice")),
                None => claimed.push((host, prefix_text.clone(), i)),
            }
        }
        validate_sections(r, &key, errs);
    }
}

fn validate_name(routes: &[RouteConfig], i: usize, key: &str, errs: &mut Vec<String>) {
    let name = &routes[i].name;
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        errs.push(format!(
            "{key}.name: `{name}` must be 1 to 64 letters, digits, `-`, `_` or `.` (it is a metric label)"
        ));
    } else if name == RESERVED_NAME {
        errs.push(format!(
            "{key}.name: `{RESERVED_NAME}` is the name of the top-level (default) route; choose another"
        ));
    }
    if let Some(first) = routes[..i].iter().position(|r| r.name == *name) {
        errs.push(format!(
            "{key}.name: `{name}` is already the name of routes[{first}]; route names must be unique"
        ));
    }
}

/// The route's own sections: reported with the same lines as the top-level ones, under
/// `routes[i].`.
fn validate_sections(r: &RouteConfig, key: &str, errs: &mut Vec<String>) {
    let mut own = Vec::new();
    match (&r.nostr, &r.mosaic) {
        (None, None) => errs.push(format!(
            "{key}: give a nostr or a mosaic section (or both); this route serves nothing"
        )),
        (nostr, mosaic) => {
            if let Some(m) = mosaic {
                m.require_backends(&mut own);
                m.validate(&mut own);
                if m.server_key_file.is_some() {
                    own.push(
                        "mosaic.server_key_file: give it at the top level (one master key per gateway)"
                            .into(),
                    );
                }
            }
            if let Some(n) = nostr {
                if !n.serves() {
                    own.push(
                        "nostr.upstreams: list at least one relay (or give nostr.upstream)".into(),
                    );
                }
                n.validate(&mut own);
            }
        }
    }
    if r.limits.max_connections == Some(0) {
        own.push("limits.max_connections: must be at least 1".into());
    }
    if let Some(rl) = &r.rate_limits {
        let knows_types = r.mosaic.as_ref().is_none_or(|m| m.knows_types());
        rl.validate("rate_limits", knows_types, &mut own);
    }
    errs.extend(own.into_iter().map(|e| format!("{key}.{e}")));
}
