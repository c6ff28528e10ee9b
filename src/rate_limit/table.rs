//! Buckets per client shared by every connection, in a table that stays bounded.
//!
//! A client's entry goes as soon as its bucket has refilled (a full bucket is no different
//! from a new one, so forgetting it loses nothing); idle entries are swept every few
//! seconds. However many distinct addresses a flood sprays, the table holds at most `cap`
//! entries: when it is full, the entries used longest ago are evicted, an eighth of the
//! table at a time, so a spray costs O(1) per new address on average.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use prometheus::IntGauge;

use super::bucket::{Bucket, Spec};
use crate::rate_limit::client_addr::canonical;

/// Refilled entries are swept at least this often (nanoseconds).
const SWEEP_EVERY_NS: u64 = 5_000_000_000;

/// Who a shared bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// An IPv4 address.
    V4(u32),
    /// An IPv6 address, cut to the configured prefix.
    V6(u128),
    /// A TLS-authenticated client's ed25519 key.
    Client([u8; 32]),
}

impl Key {
    /// The key of `ip`: IPv4 as is (IPv4-mapped IPv6 too), IPv6 cut to `prefix` bits.
    pub(crate) fn ip(ip: IpAddr, prefix: u8) -> Key {
        match canonical(ip) {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u32::from(prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                Key::V6(bits & mask)
            }
        }
    }
}

/// A bounded table of buckets, one per [`Key`].
pub(crate) struct Table {
    inner: Mutex<Inner>,
    /// `rate_limiter_entries{table}`.
    size: IntGauge,
}

struct Inner {
    map: HashMap<Key, Bucket>,
    next_sweep: u64,
}

impl Table {
    /// An empty table reporting its size in `size`.
    pub(crate) fn new(size: IntGauge) -> Table {
        Table {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                next_sweep: 0,
            }),
            size,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Takes a token from `key`'s bucket (made full if new); otherwise how long until
    /// there is one. `cap` bounds the table.
    pub(crate) fn take(&self, key: Key, spec: &Spec, cap: usize, now: u64) -> Result<(), Duration> {
        let mut t = self.lock();
        if now >= t.next_sweep {
            t.map.retain(|_, b| !b.is_full(spec, now));
            t.next_sweep = now.saturating_add(SWEEP_EVERY_NS);
        }
        let taken = match t.map.get_mut(&key) {
            Some(b) => b.take(spec, now, 1.0),
            None => {
                if t.map.len() >= cap {
                    t.make_room(spec, cap, now);
                }
                let mut b = Bucket::full(spec, now);
                let taken = b.take(spec, now, 1.0);
                t.map.insert(key, b);
                taken
            }
        };
        self.size
            .set(i64::try_from(t.map.len()).unwrap_or(i64::MAX));
        taken
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

impl Inner {
    /// Brings the table below `cap`: refilled entries go first, then the ones used longest
    /// ago, down to seven eighths of `cap`.
    fn make_room(&mut self, spec: &Spec, cap: usize, now: u64) {
        self.map.retain(|_, b| !b.is_full(spec, now));
        let keep = (cap - cap / 8).min(cap.saturating_sub(1));
        if self.map.len() <= keep {
            return;
        }
        let evict = self.map.len() - keep;
        let mut used: Vec<u64> = self.map.values().map(Bucket::last_used).collect();
        let (_, &mut threshold, _) = used.select_nth_unstable(evict - 1);
        let older = used.iter().filter(|&&u| u < threshold).count();
        // Entries used exactly at the threshold: only as many as still needed go.
        let mut at_threshold = evict - older;
        self.map.retain(|_, b| {
            let u = b.last_used();
            if u < threshold {
                false
            } else if u == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("test_entries", "test").unwrap()
    }

    #[test]
    fn a_million_sprayed_addresses_never_grow_the_table_past_its_cap() {
        let cap = 10_000;
        let size = gauge();
        let table = Table::new(size.clone());
        // Slow enough that no entry refills during the spray: only eviction bounds it.
        let spec = Spec::new(1.0, Duration::from_secs(3600), 1.0);
        let regular = Key::ip("192.0.2.1".parse().unwrap(), 64);
        for i in 0..1_000_000u32 {
            let now = u64::from(i) * 1_000;
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i) << 64));
            let _ = table.take(Key::ip(ip, 64), &spec, cap, now);
            if i % 1_000 == 0 {
                // A client that keeps coming back is among the most recently used.
                let _ = table.take(regular, &spec, cap, now);
                assert!(table.len() <= cap, "{} entries after {i}", table.len());
            }
        }
        assert!(table.len() <= cap && table.len() > cap / 2);
        assert_eq!(size.get(), table.len() as i64);
        assert!(
            table.lock().map.contains_key(&regular),
            "recently used kept"
        );
        // The same spray at one instant (every entry equally old) is bounded too.
        let table = Table::new(gauge());
        for i in 0..100_000u32 {
            let _ = table.take(Key::V4(i), &spec, 1_000, 7);
        }
        assert!(table.len() <= 1_000);
    }

    #[test]
    fn refilled_entries_expire_and_the_bucket_is_shared_per_key() {
        let table = Table::new(gauge());
        let spec = Spec::new(1.0, Duration::from_secs(1), 2.0);
        let a = Key::ip("2001:db8::1".parse().unwrap(), 64);
        let b = Key::ip("2001:db8::2".parse().unwrap(), 64);
        assert_eq!(a, b, "one /64, one key");
        assert_ne!(a, Key::ip("2001:db8::1".parse().unwrap(), 128));
        assert!(table.take(a, &spec, 10, 0).is_ok());
        assert!(table.take(b, &spec, 10, 0).is_ok());
        assert_eq!(
            table.take(a, &spec, 10, 0),
            Err(Duration::from_secs(1)),
            "the third in a burst of two waits a second"
        );
        let later = 10 * 1_000_000_000;
        let _ = table.take(Key::V4(1), &spec, 10, later);
        assert_eq!(table.len(), 1, "the refilled entry was swept");
        let mapped = Key::ip("::ffff:192.0.2.7".parse().unwrap(), 64);
        assert_eq!(mapped, Key::ip("192.0.2.7".parse().unwrap(), 64));
    }
}
