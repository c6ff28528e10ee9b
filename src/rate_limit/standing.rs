//! The table of standing: what the gateway holds against a client address.
//!
//! One place answers "is this address served?" for every decision against an address: the
//! access lists (`access.allow` / `deny`), the exemptions (`rate_limits.exempt`), temporary
//! bans earned by tripping limits or breaking the protocol (`bans.*`), and the permanent
//! blocks an operator sets over NIP-86. Accept, the forwarded-address check and the sweep
//! over open connections after a change all read [`Standing::verdict`].
//!
//! The rules come with each configuration generation ([`Rules`], adopted when it becomes
//! current); the bans and the trip counts outlive reloads. Both tables are bounded by
//! `bans.max_entries`: trips whose window passed go first, then the oldest; a full ban table
//! gives up the temporary bans that end soonest, never an operator's block.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prometheus::{IntCounter, IntGauge};
use serde::{Deserialize, Serialize};

use super::access::AccessList;
use crate::config::{parse_cidr, Config};
use crate::metrics::Metrics;
use crate::rate_limit::client_addr::canonical;

/// What the table says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Served.
    Served,
    /// Refused by the access lists.
    Denied,
    /// Banned: temporarily (limits, violations) or until unblocked (NIP-86).
    Banned(BanKind),
}

/// How long a ban lasts, which Mosaic 2025 tells the client (IP_TEMP_BANNED 48 /
/// IP_PERM_BANNED 49).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanKind {
    /// Until `bans.for` has passed.
    Temporary,
    /// Until an operator unblocks it.
    Permanent,
}

/// Automatic bans (`bans.after` set).
#[derive(Debug, Clone, Copy)]
struct AutoBans {
    after: u32,
    within_ms: u64,
    for_ms: u64,
}

/// One generation's rules about addresses, from the validated config.
pub(crate) struct Rules {
    access: Option<AccessList>,
    exempt: Vec<IpNet>,
    auto: Option<AutoBans>,
    ipv6_prefix: u8,
    max_entries: usize,
    file: Option<PathBuf>,
}

impl Rules {
    pub(crate) fn new(config: &Config) -> Rules {
        let b = &config.bans;
        Rules {
            access: AccessList::new(&config.access.allow, &config.access.deny),
            exempt: cidrs(&config.rate_limits.exempt),
            auto: b.after.map(|after| AutoBans {
                after,
                within_ms: millis(b.within.0),
                for_ms: millis(b.duration.0),
            }),
            ipv6_prefix: config.rate_limits.ipv6_prefix,
            max_entries: b.max_entries,
            file: b.file().map(Path::to_path_buf),
        }
    }
}

/// Validated CIDR strings, parsed.
pub(crate) fn cidrs(list: &[String]) -> Vec<IpNet> {
    list.iter().filter_map(|c| parse_cidr(c).ok()).collect()
}

/// Whether `ip` (canonical) is in one of `nets`.
pub(crate) fn within(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Now, in Unix milliseconds (bans end at wall-clock times, so they survive a restart).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ban {
    /// Unix milliseconds it ends at; `None`: an operator's block, until unblocked.
    pub(crate) until_ms: Option<u64>,
    /// Why, for the status page and `listblockedips`.
    pub(crate) reason: String,
}

impl Ban {
    fn kind(&self) -> BanKind {
        match self.until_ms {
            Some(_) => BanKind::Temporary,
            None => BanKind::Permanent,
        }
    }

    fn active(&self, now: u64) -> bool {
        self.until_ms.is_none_or(|u| u > now)
    }
}

/// Trips counted against one address in the current window.
#[derive(Debug, Clone, Copy)]
struct Trips {
    count: u32,
    since_ms: u64,
}

/// The bans and trip counts, under one lock.
#[derive(Default)]
struct Book {
    bans: HashMap<IpNet, Ban>,
    /// How many bans there are per family (IPv6: true) and prefix length: the lengths a
    /// lookup tries.
    lengths: BTreeMap<(bool, u8), usize>,
    trips: HashMap<IpNet, Trips>,
    /// Changed since the file was last written.
    dirty: bool,
}

/// Why an operator's block was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BlockError {
    /// Not an address or CIDR.
    #[error("`{0}` is not an IP address")]
    NotAnAddress(String),
    /// Every entry is an operator's block already.
    #[error("the ban table is full of blocks (bans.max_entries)")]
    Full,
}

/// The table of standing; one per process, shared by every generation.
pub(crate) struct Standing {
    rules: ArcSwap<Rules>,
    book: Mutex<Book>,
    /// Bans held: lets the accept path skip the lock while there are none.
    count: AtomicUsize,
    /// Something changed that open connections must be checked against.
    changed: tokio::sync::Notify,
    bans_active: IntGauge,
    /// `rate_limited_total{limit="banned"}`: mosaic, nostr, unknown.
    pub(crate) banned: [IntCounter; 3],
}

impl Standing {
    /// The table for the first generation, with the bans `bans.file` kept (a file that
    /// cannot be read is set aside with a warning: the gateway starts without its bans).
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Arc<Standing> {
        let banned = |p: &str| metrics.rate_limited_total.with_label_values(&[p, "banned"]);
        let s = Standing {
            rules: ArcSwap::from_pointee(Rules::new(config)),
            book: Mutex::new(Book::default()),
            count: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
            bans_active: metrics.bans_active.clone(),
            banned: [banned("mosaic"), banned("nostr"), banned("unknown")],
        };
        if let Some(path) = config.bans.file() {
            let now = now_ms();
            let mut book = s.lock();
            for (net, ban) in super::bans_file::load(path) {
                if ban.active(now) && book.bans.len() < config.bans.max_entries {
                    book.insert(net, ban);
                }
            }
            s.settle(&book);
        }
        Arc::new(s)
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock()
    }

    /// Makes `rules` current (a reload); open connections are checked against them next.
    pub(crate) fn adopt(&self, rules: Arc<Rules>) {
        let moved = self.rules.load().file != rules.file;
        self.rules.store(rules);
        if moved {
            // A new `bans.file` gets the bans at once, not at the next change.
            self.lock().dirty = true;
        }
        self.changed.notify_one();
    }

    /// Resolves when something changed that open connections must be checked against.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Whether limit trips ban (`bans.after` is set).
    pub(crate) fn bans_on(&self) -> bool {
        self.rules.load().auto.is_some()
    }

    /// Whether `ip` is in the top-level `rate_limits.exempt`.
    pub(crate) fn exempt(&self, ip: IpAddr) -> bool {
        let rules = self.rules.load();
        !rules.exempt.is_empty() && within(&rules.exempt, ip)
    }

    /// What the table holds against `ip`.
    pub(crate) fn verdict(&self, ip: IpAddr) -> Verdict {
        let ip = canonical(ip);
        let rules = self.rules.load();
        if rules.access.as_ref().is_some_and(|a| !a.permits(ip)) {
            return Verdict::Denied;
        }
        self.bans_against(ip, &rules)
    }

    /// The bans and blocks on `ip` only, not the access lists.
    pub(crate) fn ban_verdict(&self, ip: IpAddr) -> Verdict {
        self.bans_against(canonical(ip), &self.rules.load())
    }

    fn bans_against(&self, ip: IpAddr, rules: &Rules) -> Verdict {
        if self.count.load(Ordering::Acquire) == 0 {
            return Verdict::Served;
        }
        let kind = self.lock().find(ip, now_ms());
        match kind {
            // Exempt addresses are never banned for tripping limits; an operator's block
            // is a decision about that address, and holds.
            Some(BanKind::Temporary) if within(&rules.exempt, ip) => Verdict::Served,
            Some(k) => Verdict::Banned(k),
            None => Verdict::Served,
        }
    }

    /// Counts a limit trip or protocol violation by `ip`; bans it when that makes
    /// `bans.after` within `bans.within`. True when it was banned now.
    pub(crate) fn trip(&self, ip: IpAddr) -> bool {
        let rules = self.rules.load();
        let Some(auto) = rules.auto else {
            return false;
        };
        if within(&rules.exempt, ip) {
            return false;
        }
        let net = ban_net(canonical(ip), rules.ipv6_prefix);
        let now = now_ms();
        let mut book = self.lock();
        if !book.count_trip(net, auto, now, rules.max_entries) {
            return false;
        }
        let ban = Ban {
            until_ms: Some(now.saturating_add(auto.for_ms)),
            reason: format!(
                "{} limit trips or protocol violations within {}s",
                auto.after,
                auto.within_ms / 1000
            ),
        };
        if !book.make_room(rules.max_entries, now) {
            return false;
        }
        book.insert(net, ban);
        self.settle(&book);
        drop(book);
        tracing::info!(client = %ip, banned = %net, for_s = auto.for_ms / 1000, "address banned");
        self.changed.notify_one();
        true
    }

    /// An operator's block (NIP-86 `blockip`): `addr` (an address, or a CIDR) is refused
    /// until unblocked.
    pub(crate) fn block(&self, addr: &str, reason: &str) -> Result<IpNet, BlockError> {
        let net = parse_cidr(addr).map_err(|_| BlockError::NotAnAddress(addr.into()))?;
        let net = canonical_net(net);
        let rules = self.rules.load();
        let now = now_ms();
        let mut book = self.lock();
        if !book.bans.contains_key(&net) && !book.make_room(rules.max_entries, now) {
            return Err(BlockError::Full);
        }
        book.remove(&net);
        book.insert(
            net,
            Ban {
                until_ms: None,
                reason: reason.to_string(),
            },
        );
        self.settle(&book);
        drop(book);
        self.changed.notify_one();
        Ok(net)
    }

    /// Lifts every ban and block that covers `addr` (NIP-86 `unblockip`); how many.
    pub(crate) fn unblock(&self, addr: &str) -> Result<usize, BlockError> {
        let net =
            canonical_net(parse_cidr(addr).map_err(|_| BlockError::NotAnAddress(addr.into()))?);
        let mut book = self.lock();
        let covering: Vec<IpNet> = book
            .bans
            .keys()
            .filter(|b| b.contains(&net) || net.contains(*b))
            .copied()
            .collect();
        for n in &covering {
            book.remove(n);
        }
        book.trips.remove(&net);
        self.settle(&book);
        Ok(covering.len())
    }

    /// The bans in force, soonest to end first (blocks last).
    pub(crate) fn list(&self) -> Vec<(IpNet, Ban)> {
        let now = now_ms();
        let mut all: Vec<(IpNet, Ban)> = self
            .lock()
            .bans
            .iter()
            .filter(|(_, b)| b.active(now))
            .map(|(n, b)| (*n, b.clone()))
            .collect();
        all.sort_by_key(|(n, b)| (b.until_ms.unwrap_or(u64::MAX), *n));
        all
    }

    /// Forgets the bans that ended; true if any did.
    pub(crate) fn expire(&self) -> bool {
        let mut book = self.lock();
        let ended = book.drop_ended(now_ms());
        self.settle(&book);
        ended > 0
    }

    /// The file to write and what to write in it, if the bans changed since last time.
    pub(crate) fn to_save(&self) -> Option<(PathBuf, Vec<(IpNet, Ban)>)> {
        let path = self.rules.load().file.clone()?;
        let mut book = self.lock();
        if !std::mem::take(&mut book.dirty) {
            return None;
        }
        let bans = book.bans.iter().map(|(n, b)| (*n, b.clone())).collect();
        Some((path, bans))
    }

    /// Marks the bans unsaved again (writing them failed).
    pub(crate) fn save_failed(&self, path: &Path, e: &std::io::Error) {
        self.lock().dirty = true;
        tracing::warn!(file = %path.display(), error = %e, "bans.file: cannot write the bans");
    }

    /// Publishes the size after a change.
    fn settle(&self, book: &Book) {
        self.count.store(book.bans.len(), Ordering::Release);
        self.bans_active
            .set(i64::try_from(book.bans.len()).unwrap_or(i64::MAX));
    }
}

/// A banned network as people write it: the address alone for one address, else CIDR.
pub(crate) fn net_text(net: IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The network a ban on `ip` covers: the address for IPv4, its `prefix` for IPv6 (one
/// client holds a whole /64 and can rotate through it).
fn ban_net(ip: IpAddr, prefix: u8) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => Ipv6Net::new(v6, prefix.min(128))
            .map_or(IpNet::V6(Ipv6Net::from(v6)), |n| IpNet::V6(n.trunc())),
    }
}

/// IPv4-mapped IPv6 networks as IPv4 ones, so a lookup by canonical address finds them.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => {
                Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, |n4| IpNet::V4(n4.trunc()))
            }
            None => net,
        },
        other => other.trunc(),
    }
}

/// The key of `net` in [`Book::lengths`].
fn length(net: &IpNet) -> (bool, u8) {
    (matches!(net, IpNet::V6(_)), net.prefix_len())
}

impl Book {
    fn insert(&mut self, net: IpNet, ban: Ban) {
        if self.bans.insert(net, ban).is_none() {
            *self.lengths.entry(length(&net)).or_default() += 1;
        }
        self.dirty = true;
    }

    fn remove(&mut self, net: &IpNet) {
        if self.bans.remove(net).is_none() {
            return;
        }
        self.dirty = true;
        let key = length(net);
        if let Some(c) = self.lengths.get_mut(&key) {
            *c -= 1;
            if *c == 0 {
                self.lengths.remove(&key);
            }
        }
    }

    /// The strongest ban in force on `ip` (canonical): a block wins over a temporary ban.
    fn find(&self, ip: IpAddr, now: u64) -> Option<BanKind> {
        let mut found = None;
        let mut check = |net: IpNet| {
            if let Some(b) = self.bans.get(&net).filter(|b| b.active(now)) {
                if found != Some(BanKind::Permanent) {
                    found = Some(b.kind());
                }
            }
        };
        let v6 = ip.is_ipv6();
        for &(_, len) in self.lengths.keys().filter(|(f, _)| *f == v6) {
            if let Ok(n) = IpNet::new(ip, len) {
                check(n.trunc());
            }
        }
        found
    }

    /// Counts one trip by `net`; true when it reaches `auto.after` in the window (the count
    /// starts over).
    fn count_trip(&mut self, net: IpNet, auto: AutoBans, now: u64, cap: usize) -> bool {
        if !self.trips.contains_key(&net) && self.trips.len() >= cap {
            self.forget_trips(auto.within_ms, now, cap);
        }
        let t = self.trips.entry(net).or_insert(Trips {
            count: 0,
            since_ms: now,
        });
        if now.saturating_sub(t.since_ms) > auto.within_ms {
            *t = Trips {
                count: 0,
                since_ms: now,
            };
        }
        t.count += 1;
        if t.count < auto.after {
            return false;
        }
        self.trips.remove(&net);
        true
    }

    /// Brings the trip counts below `cap`: windows that passed go, then the oldest, down
    /// to seven eighths (so a spray of new addresses costs O(1) each on average).
    fn forget_trips(&mut self, within_ms: u64, now: u64, cap: usize) {
        self.trips
            .retain(|_, t| now.saturating_sub(t.since_ms) <= within_ms);
        let keep = cap - cap / 8;
        if self.trips.len() > keep {
            let mut ages: Vec<u64> = self.trips.values().map(|t| t.since_ms).collect();
            let evict = self.trips.len() - keep;
            let (_, &mut threshold, _) = ages.select_nth_unstable(evict - 1);
            self.trips.retain(|_, t| t.since_ms > threshold);
        }
    }

    /// Forgets the bans that ended by `now`; how many.
    fn drop_ended(&mut self, now: u64) -> usize {
        let ended: Vec<IpNet> = self
            .bans
            .iter()
            .filter(|(_, b)| !b.active(now))
            .map(|(n, _)| *n)
            .collect();
        for n in &ended {
            self.remove(n);
        }
        ended.len()
    }

    /// Makes room for one more ban under `cap`: ended bans go, then the temporary bans
    /// that end soonest (an eighth of the table). False when only blocks are left.
    fn make_room(&mut self, cap: usize, now: u64) -> bool {
        if self.bans.len() < cap {
            return true;
        }
        self.drop_ended(now);
        if self.bans.len() < cap {
            return true;
        }
        let mut temporary: Vec<(u64, IpNet)> = self
            .bans
            .iter()
            .filter_map(|(n, b)| b.until_ms.map(|u| (u, *n)))
            .collect();
        if temporary.is_empty() {
            return false;
        }
        let evict = (cap / 8).clamp(1, temporary.len());
        temporary.select_nth_unstable(evict - 1);
        for (_, n) in &temporary[..evict] {
            self.remove(n);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BACKEND: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n";

    fn standing(yaml: &str) -> Arc<Standing> {
        let c = parse(&format!("{BACKEND}{yaml}")).unwrap();
        Standing::new(&c, &Metrics::new())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trips_within_the_window_ban_the_address_or_its_ipv6_prefix() {
        let s = standing(
            "rate_limits:\n  exempt: [192.0.2.0/24]\nbans: { after: 3, within: 1m, for: 10m }\n",
        );
        assert!(!s.trip(ip("198.51.100.7")) && !s.trip(ip("198.51.100.7")));
        assert_eq!(s.verdict(ip("198.51.100.7")), Verdict::Served);
        assert!(s.trip(ip("::ffff:198.51.100.7")), "the third trip bans");
        assert_eq!(
            s.verdict(ip("198.51.100.7")),
            Verdict::Banned(BanKind::Temporary)
        );
        assert_eq!(s.verdict(ip("198.51.100.8")), Verdict::Served);
        for _ in 0..3 {
            s.trip(ip("2001:db8:1:2::1"));
        }
        assert_eq!(
            s.verdict(ip("2001:db8:1:2:ffff::9")),
            Verdict::Banned(BanKind::Temporary),
            "the whole /64"
        );
        assert_eq!(s.verdict(ip("2001:db8:1:3::1")), Verdict::Served);
        for _ in 0..10 {
            assert!(!s.trip(ip("192.0.2.9")), "exempt: never banned");
        }
        assert_eq!(s.bans_active.get(), 2);
    }

    #[test]
    fn blocks_are_permanent_hold_for_exempt_addresses_and_unblock_lifts_them() {
        let s = standing("rate_limits:\n  exempt: [192.0.2.0/24]\n");
        assert!(!s.trip(ip("203.0.113.1")), "no `after`: no automatic bans");
        s.block("192.0.2.5", "spam").unwrap();
        s.block("2001:db8::/48", "").unwrap();
        assert_eq!(
            s.verdict(ip("192.0.2.5")),
            Verdict::Banned(BanKind::Permanent)
        );
        assert_eq!(
            s.verdict(ip("2001:db8:0:7::1")),
            Verdict::Banned(BanKind::Permanent)
        );
        assert!(matches!(
            s.block("not-an-ip", ""),
            Err(BlockError::NotAnAddress(_))
        ));
        assert_eq!(s.list().len(), 2);
        assert_eq!(s.unblock("192.0.2.5"), Ok(1));
        assert_eq!(s.unblock("2001:db8::1"), Ok(1));
        assert_eq!(s.verdict(ip("192.0.2.5")), Verdict::Served);
        assert!(s.list().is_empty());
    }

    #[test]
    fn the_tables_stay_bounded_and_blocks_are_never_evicted() {
        let s = standing("bans: { after: 1, max_entries: 16 }\n");
        s.block("203.0.113.1", "kept").unwrap();
        for i in 0..1_000u32 {
            s.trip(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert!(s.lock().bans.len() <= 16 && s.lock().trips.len() <= 16);
        }
        assert_eq!(
            s.verdict(ip("203.0.113.1")),
            Verdict::Banned(BanKind::Permanent)
        );
        for i in 0..15u32 {
            let _ = s.block(&std::net::Ipv4Addr::from(0xc000_0200 + i).to_string(), "");
        }
        assert_eq!(s.block("198.51.100.1", ""), Err(BlockError::Full));
        assert!(
            !s.trip(ip("198.51.100.2")),
            "no room: not banned, not a panic"
        );
    }

    #[test]
    fn ended_bans_expire() {
        let s = standing("bans: { after: 1, for: 1s }\n");
        s.trip(ip("203.0.113.9"));
        let mut book = s.lock();
        book.bans.values_mut().for_each(|b| b.until_ms = Some(1));
        drop(book);
        assert_eq!(s.verdict(ip("203.0.113.9")), Verdict::Served);
        assert!(s.expire());
        assert_eq!(s.bans_active.get(), 0);
    }
}
