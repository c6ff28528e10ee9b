//! The routes of one configuration generation: for each, its Mosaic pools, its nostr relay
//! pool, its metric series and its connection count; and the choice of a route for a
//! request ([`Routes::select`]).
//!
//! The top-level `mosaic` / `nostr` sections are the route named `default`, taken when no
//! entry of `routes:` matches. A reload keeps what belongs to a route that stays (found by
//! name): its pools are reconfigured in place, so backends keep their health and open
//! connections, and its connection count carries on. The pools of a route that goes away
//! drain like removed backends: its open connections keep running, nothing new reaches it.

pub mod table;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Config, MosaicConfig, NostrConfig, NostrProbe, RateLimitsConfig};
use crate::config::{PathPrefix, RESERVED_NAME};
use crate::metrics::{Metrics, ProtocolMetrics};
use crate::rate_limit::{Policy, Standing, Tables};
use crate::routing::table::RouteTable;
use crate::upstreams::health::{HealthTarget, Probe};
use crate::upstreams::pool::Pool;

/// A route's Mosaic side: its settings and pools.
pub struct MosaicSide {
    /// `mosaic:` of the route.
    pub config: MosaicConfig,
    /// The pool for every Mosaic client (`pool="default"`).
    pub pool: Arc<Pool>,
    /// The pool for TLS-authenticated clients, when configured.
    pub auth_pool: Option<Arc<Pool>>,
    /// `config.subprotocols`, shared: a connection names its token without a copy of it
    /// (16 bytes on every open connection).
    pub tokens: Vec<Arc<str>>,
}

impl MosaicSide {
    /// The shared name of `token`, one of this side's subprotocols (a copy only for a token
    /// that is not, which routing never produces).
    pub fn token(&self, token: &str) -> Arc<str> {
        self.tokens
            .iter()
            .find(|t| ***t == *token)
            .cloned()
            .unwrap_or_else(|| Arc::from(token))
    }
}

/// A route's nostr side: its settings and relay pool.
pub struct NostrSide {
    /// `nostr:` of the route.
    pub config: NostrConfig,
    /// The relays (`pool="nostr"`).
    pub pool: Arc<Pool>,
}

/// One route of a generation.
pub struct RouteState {
    /// `default`, or the `routes[i].name`: the `route` label of its metrics and logs.
    pub name: Arc<str>,
    /// Where its Mosaic clients go, when it serves Mosaic.
    pub mosaic: Option<MosaicSide>,
    /// Where its nostr clients and plain HTTP requests go, when it serves nostr.
    pub nostr: Option<NostrSide>,
    /// Its Mosaic series, then its nostr series.
    series: [ProtocolMetrics; 2],
    max_connections: Option<usize>,
    /// Open connections on the route, shared by every generation the route lives in.
    open: Arc<AtomicUsize>,
    /// The route's own rate limits (`routes[i].rate_limits`), instead of the global ones.
    pub(crate) rate: Option<RouteRate>,
    /// The prefix removed from paths sent upstream (`strip_prefix`).
    strip: Option<PathPrefix>,
}

/// A route's own rate limits and their buckets; the buckets outlive reloads that keep
/// the route.
pub(crate) struct RouteRate {
    pub(crate) policy: Policy,
    pub(crate) tables: Arc<Tables>,
}

impl RouteState {
    /// The target sent upstream for `target`, and the prefix removed from it (sent as
    /// `X-Forwarded-Prefix`), on a route with `strip_prefix`.
    pub(crate) fn upstream_target<'a>(&self, target: &'a str) -> (Cow<'a, str>, Option<&str>) {
        match &self.strip {
            Some(p) if target != "*" => (p.strip(target), Some(p.as_str().trim_end_matches('/'))),
            _ => (Cow::Borrowed(target), None),
        }
    }

    /// The connection and traffic series of `nostr` (else Mosaic) connections.
    pub(crate) fn series(&self, nostr: bool) -> &ProtocolMetrics {
        &self.series[usize::from(nostr)]
    }

    /// Whether it forwards non-Mosaic upgrades and plain HTTP to relays.
    pub fn serves_nostr(&self) -> bool {
        self.nostr.is_some()
    }

    /// The Mosaic subprotocol tokens it routes to Mosaic (none without a Mosaic side).
    pub fn mosaic_tokens(&self) -> &[String] {
        self.mosaic.as_ref().map_or(&[], |m| &m.config.subprotocols)
    }

    /// Takes a place on the route for one connection; `None` when the route already
    /// holds its `limits.max_connections`.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<RouteSlot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = RouteSlot(self.clone());
        match self.max_connections {
            Some(max) if before >= max => None,
            _ => Some(slot),
        }
    }

    /// Open connections on the route.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let m = self.mosaic.as_ref();
        m.map(|m| &m.pool)
            .into_iter()
            .chain(m.and_then(|m| m.auth_pool.as_ref()))
            .chain(self.nostr.as_ref().map(|n| &n.pool))
    }
}

/// One connection's place on its route, held until the connection ends; it also keeps the
/// route (its series, its pools) alive for the connection.
pub(crate) struct RouteSlot(Arc<RouteState>);

impl RouteSlot {
    /// The route.
    pub(crate) fn route(&self) -> &RouteState {
        &self.0
    }
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no route takes a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoute {
    /// No route matches and there is no default route: 404 (plain HTTP) / 400 (upgrade).
    Unknown,
    /// Over TLS, `Host` names another route than the SNI name did: 421.
    Misdirected,
}

/// Every route of a generation and the table that chooses among them.
pub struct Routes {
    table: RouteTable,
    /// `routes:` in config order (the table's indexes).
    routes: Vec<Arc<RouteState>>,
    /// The top-level sections, when they serve anything.
    default: Option<Arc<RouteState>>,
}

impl Routes {
    /// Builds the routes of `config`. With `old` (a reload), routes that stay by name keep
    /// their pools (reconfigured) and connection counts; the pools of removed routes, and
    /// of removed sections, drain.
    pub(crate) fn build(
        config: &Config,
        old: Option<&Routes>,
        metrics: &Arc<Metrics>,
        standing: &Arc<Standing>,
    ) -> Routes {
        let find = |name: &str| old.and_then(|o| o.all().find(|r| &*r.name == name).cloned());
        let nostr = config.nostr.as_ref().filter(|n| n.serves());
        let mosaic = (!config.mosaic.backends.is_empty()).then_some(&config.mosaic);
        let default = (mosaic.is_some() || nostr.is_some()).then(|| {
            let spec = Spec {
                name: RESERVED_NAME,
                mosaic,
                nostr,
                max_connections: None,
                rate_limits: None,
                strip: None,
            };
            Arc::new(spec.build(find(RESERVED_NAME).as_deref(), metrics, standing))
        });
        let routes: Vec<Arc<RouteState>> = config
            .routes
            .iter()
            .map(|r| {
                let spec = Spec {
                    name: &r.name,
                    mosaic: r.mosaic.as_ref(),
                    nostr: r.nostr.as_ref().filter(|n| n.serves()),
                    max_connections: r.limits.max_connections,
                    rate_limits: r.rate_limits.as_ref(),
                    strip: r
                        .path_prefix
                        .as_deref()
                        .filter(|_| r.strip_prefix)
                        .and_then(|p| PathPrefix::parse(p).ok()),
                };
                Arc::new(spec.build(find(&r.name).as_deref(), metrics, standing))
            })
            .collect();
        let table = RouteTable::new(
            config
                .routes
                .iter()
                .map(|r| (r.hosts.as_slice(), r.path_prefix.as_deref())),
        );
        let new = Routes {
            table,
            routes,
            default,
        };
        for gone in old.into_iter().flat_map(Routes::all) {
            if !new.all().any(|r| r.name == gone.name) {
                tracing::info!(route = %gone.name, open = gone.open_connections(),
                    "route removed: its open connections drain");
                for p in gone.pools() {
                    p.reconfigure(&[], p.balance());
                }
            }
        }
        new
    }

    /// Every route, the default one first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<RouteState>> {
        self.default.iter().chain(self.routes.iter())
    }

    /// Every pool of every route.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.all().flat_map(|r| r.pools().cloned()).collect()
    }

    /// The route named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<RouteState>> {
        self.all().find(|r| &*r.name == name)
    }

    /// The route of a request: by its `Host` (or the authority of an absolute URI) and
    /// path, the most specific match, else the default route. Over TLS (`sni`: the server
    /// name the client asked for), the route must be the one the SNI name leads to.
    pub(crate) fn select(
        &self,
        sni: Option<&str>,
        host: Option<&str>,
        path: &str,
    ) -> Result<Arc<RouteState>, NoRoute> {
        if self.table.is_empty() {
            // No routes: everything takes the default route, as before routes existed.
            return self.default.clone().ok_or(NoRoute::Unknown);
        }
        if let Some(sni) = sni {
            if self.table.misdirected(sni, host, path) {
                return Err(NoRoute::Misdirected);
            }
        }
        match self.table.lookup(host, path) {
            Some(i) => self.routes.get(i).cloned().ok_or(NoRoute::Unknown),
            None => self.default.clone().ok_or(NoRoute::Unknown),
        }
    }

    /// What the health checker probes: every pool with its probe and thresholds.
    pub(crate) fn health_targets(&self) -> Vec<HealthTarget> {
        let mut out = Vec::new();
        for r in self.all() {
            if let Some(m) = &r.mosaic {
                // Every listed token is offered: a backend speaking any one of them is up.
                let tokens = m.config.subprotocols.clone();
                for p in std::iter::once(&m.pool).chain(&m.auth_pool) {
                    out.push(HealthTarget {
                        pool: p.clone(),
                        probe: Probe::Mosaic(tokens.clone()),
                        hc: m.config.health_check.clone(),
                    });
                }
            }
            if let Some(n) = &r.nostr {
                let hc = &n.config.health_check;
                out.push(HealthTarget {
                    pool: n.pool.clone(),
                    probe: match hc.kind.unwrap_or_default() {
                        NostrProbe::Nip11 => Probe::Nip11,
                        NostrProbe::Websocket => Probe::WebSocket,
                    },
                    hc: hc.clone(),
                });
            }
        }
        out
    }

    /// How often `dns:` entries are re-resolved: the shortest `mosaic.dns_refresh` of any
    /// route (`fallback` when none serves Mosaic).
    pub fn dns_refresh(&self, fallback: std::time::Duration) -> std::time::Duration {
        self.all()
            .filter_map(|r| r.mosaic.as_ref().map(|m| m.config.dns_refresh.0))
            .min()
            .unwrap_or(fallback)
    }
}

/// What one route is built from.
struct Spec<'a> {
    name: &'a str,
    mosaic: Option<&'a MosaicConfig>,
    nostr: Option<&'a NostrConfig>,
    max_connections: Option<usize>,
    rate_limits: Option<&'a RateLimitsConfig>,
    strip: Option<PathPrefix>,
}

impl Spec<'_> {
    fn build(
        self,
        old: Option<&RouteState>,
        metrics: &Arc<Metrics>,
        standing: &Arc<Standing>,
    ) -> RouteState {
        let name: Arc<str> = old.map_or_else(|| Arc::from(self.name), |o| o.name.clone());
        metrics.preset_rejections(&name);
        let old_mosaic = old.and_then(|o| o.mosaic.as_ref());
        let mosaic = match self.mosaic {
            Some(m) => Some(mosaic_side(&name, m, old_mosaic, metrics)),
            None => {
                for p in old_mosaic
                    .into_iter()
                    .flat_map(|o| std::iter::once(&o.pool).chain(&o.auth_pool))
                {
                    p.reconfigure(&[], p.balance());
                }
                None
            }
        };
        let old_nostr = old.and_then(|o| o.nostr.as_ref()).map(|n| &n.pool);
        let nostr = match self.nostr {
            Some(n) => {
                let relays = n.relays();
                let pool = kept_pool(&name, "nostr", &relays, n.balance, old_nostr, metrics);
                Some(NostrSide {
                    config: n.clone(),
                    pool,
                })
            }
            None => {
                if let Some(p) = old_nostr {
                    p.reconfigure(&[], p.balance());
                }
                None
            }
        };
        let rate = self.rate_limits.map(|r| RouteRate {
            policy: Policy::limits_only(r, metrics, standing.clone()),
            tables: old.and_then(|o| o.rate.as_ref()).map_or_else(
                || Arc::new(Tables::for_route(metrics)),
                |o| o.tables.clone(),
            ),
        });
        RouteState {
            strip: self.strip,
            rate,
            series: [
                metrics.protocol_series(&name, "mosaic"),
                metrics.protocol_series(&name, "nostr"),
            ],
            open: old.map_or_else(Arc::default, |o| o.open.clone()),
            max_connections: self.max_connections,
            mosaic,
            nostr,
            name,
        }
    }
}

/// The pool `name` of a route: the old one reconfigured, or a new one.
fn kept_pool(
    route: &Arc<str>,
    name: &'static str,
    entries: &[crate::config::BackendConfig],
    balance: crate::config::Balance,
    old: Option<&Arc<Pool>>,
    metrics: &Arc<Metrics>,
) -> Arc<Pool> {
    match old {
        Some(p) => {
            p.reconfigure(entries, balance);
            p.clone()
        }
        None => Arc::new(Pool::from_config(
            route.clone(),
            name,
            entries,
            balance,
            metrics.clone(),
        )),
    }
}

fn mosaic_side(
    route: &Arc<str>,
    m: &MosaicConfig,
    old: Option<&MosaicSide>,
    metrics: &Arc<Metrics>,
) -> MosaicSide {
    let pool = kept_pool(
        route,
        "default",
        &m.backends,
        m.balance,
        old.map(|o| &o.pool),
        metrics,
    );
    let old_auth = old.and_then(|o| o.auth_pool.as_ref());
    let auth_pool = if m.authenticated_backends.is_empty() {
        // The pool goes away: its backends drain like removed ones.
        if let Some(p) = old_auth {
            p.reconfigure(&[], m.balance);
        }
        None
    } else {
        Some(kept_pool(
            route,
            "authenticated",
            &m.authenticated_backends,
            m.balance,
            old_auth,
            metrics,
        ))
    };
    MosaicSide {
        config: m.clone(),
        pool,
        auth_pool,
        tokens: m
            .subprotocols
            .iter()
            .map(|t| Arc::from(t.as_str()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(r: &Routes, sni: Option<&str>, host: &str, path: &str) -> Result<String, NoRoute> {
        let uri: hyper::Uri = path.parse().unwrap();
        r.select(sni, Some(host), uri.path())
            .map(|r| r.name.to_string())
    }

    const ROUTES: &str = "routes:\n  - name: a\n    hosts: [a.test]\n    nostr: { upstream: ws://127.0.0.1:1 }\n  - name: b\n    hosts: [b.test]\n    mosaic: { backends: [ { url: ws://127.0.0.1:2 } ] }\n";

    fn build(c: &Config, old: Option<&Routes>, m: &Arc<Metrics>) -> Routes {
        Routes::build(c, old, m, &Standing::new(c, m))
    }

    #[test]
    fn routes_are_chosen_by_host_with_or_without_a_default() {
        let m = Arc::new(Metrics::new());
        let with_default = crate::config::parse(&format!(
            "mosaic:\n  backends: [ {{ url: ws://127.0.0.1:3 }} ]\n{ROUTES}"
        ))
        .unwrap();
        let r = build(&with_default, None, &m);
        assert_eq!(select(&r, None, "A.test:443", "/").unwrap(), "a");
        assert_eq!(select(&r, None, "b.test", "/x?y").unwrap(), "b");
        assert_eq!(select(&r, None, "c.test", "/").unwrap(), "default");
        assert_eq!(
            select(&r, Some("a.test"), "b.test", "/"),
            Err(NoRoute::Misdirected)
        );
        assert_eq!(select(&r, Some("a.test"), "a.test", "/").unwrap(), "a");
        let without = crate::config::parse(ROUTES).unwrap();
        let r = build(&without, None, &m);
        assert_eq!(select(&r, None, "c.test", "/"), Err(NoRoute::Unknown));
        assert_eq!(r.pools().len(), 2);
        assert!(r.get("a").unwrap().serves_nostr());
        assert!(r.get("a").unwrap().mosaic_tokens().is_empty());
    }

    #[test]
    fn a_reload_keeps_routes_that_stay_and_drains_removed_ones() {
        let m = Arc::new(Metrics::new());
        let first = build(&crate::config::parse(ROUTES).unwrap(), None, &m);
        let a = first.get("a").unwrap().clone();
        let b = first.get("b").unwrap().clone();
        let slot = a.enter().unwrap();
        let second_cfg = "routes:\n  - name: a\n    hosts: [a.test, www.a.test]\n    nostr: { upstream: ws://127.0.0.1:1 }\n    limits: { max_connections: 1 }\n";
        let second = build(&crate::config::parse(second_cfg).unwrap(), Some(&first), &m);
        let a2 = second.get("a").unwrap();
        assert!(Arc::ptr_eq(
            &a.nostr.as_ref().unwrap().pool,
            &a2.nostr.as_ref().unwrap().pool
        ));
        assert_eq!(a2.open_connections(), 1, "the count carries on");
        assert!(a2.enter().is_none(), "route limit of 1 reached");
        drop(slot);
        assert!(a2.enter().is_some());
        assert!(second.get("b").is_none());
        let bp = &b.mosaic.as_ref().unwrap().pool;
        assert!(bp.backends().is_empty(), "the removed route's pool drains");
        assert!(
            !m.render().contains("ws://127.0.0.1:2/"),
            "its backend_up series is gone"
        );
    }
}
