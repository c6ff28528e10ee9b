//! Admission: how many connections the gateway holds, globally and per client.
//!
//! Every accepted TCP connection counts from accept to close, upgraded or not: a client
//! that holds plain keep-alive connections (NIP-11, pages) would otherwise hold file
//! descriptors past every limit. Per client, an IPv6 network of `rate_limits.ipv6_prefix`
//! bits counts as one address (one /64 is one subscriber; counted by exact address, it
//! could take every slot). Behind a trusted proxy that sends X-Forwarded-For, the client is
//! known only with each request: such a connection counts globally from accept and for
//! its client once an upgrade names it ([`Permit::count_client`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::Notify;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `limits.max_connections` (503).
    Global,
    /// `limits.max_connections_per_ip` (429).
    PerIp,
}

/// Shared connection counters.
#[derive(Default)]
pub struct Limits {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Woken whenever a connection ends (the drain waits on it).
    pub changed: Notify,
}

/// The limits in force for one admission.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// `limits.max_connections`.
    pub max_total: usize,
    /// `limits.max_connections_per_ip`.
    pub max_per_ip: usize,
    /// `rate_limits.ipv6_prefix`.
    pub ipv6_prefix: u8,
}

/// Holds one connection's place in the limits until dropped.
pub struct Permit {
    limits: Arc<Limits>,
    /// The client's address (logs); counted under [`network`] of it and `prefix`.
    ip: IpAddr,
    /// The IPv6 prefix the client is counted under; 0 while it is counted only globally.
    prefix: u8,
}

/// The address a client is counted under: IPv4 (and IPv4-mapped IPv6) as is, IPv6 cut to
/// `prefix` bits.
pub fn network(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let keep = u32::from(prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
        v4 => v4,
    }
}

impl Permit {
    /// The client address this place is counted for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Counts the connection for `client` too, once a trusted proxy's request named it;
    /// a connection already counted for a client is left as it is.
    pub fn count_client(&mut self, client: IpAddr, caps: Caps) -> Result<(), LimitHit> {
        if self.prefix != 0 {
            return Ok(());
        }
        let mut map = self.limits.per_ip.lock();
        let prefix = caps.ipv6_prefix.max(1);
        let n = map.entry(network(client, prefix)).or_insert(0);
        if *n >= caps.max_per_ip {
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        self.ip = client;
        self.prefix = prefix;
        Ok(())
    }
}

impl Limits {
    /// Open connections counted.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a place for a connection from `ip`, counted for that client unless
    /// `per_client` is false (a trusted proxy: its clients come with each request), or
    /// says which limit is full.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_client: bool,
        caps: Caps,
    ) -> Result<Permit, LimitHit> {
        let mut map = self.per_ip.lock();
        if self.total.load(Ordering::Relaxed) >= caps.max_total {
            return Err(LimitHit::Global);
        }
        let mut prefix = 0;
        if per_client {
            prefix = caps.ipv6_prefix.max(1);
            let n = map.entry(network(ip, prefix)).or_insert(0);
            if *n >= caps.max_per_ip {
                return Err(LimitHit::PerIp);
            }
            *n += 1;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            ip,
            prefix,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock();
        if self.prefix != 0 {
            let key = network(self.ip, self.prefix);
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        drop(map);
        self.limits.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(max_total: usize, max_per_ip: usize) -> Caps {
        Caps {
            max_total,
            max_per_ip,
            ipv6_prefix: 64,
        }
    }

    #[test]
    fn limits_count_and_release() {
        let l = Arc::new(Limits::default());
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let a = l.try_acquire(ip, true, caps(3, 2)).unwrap();
        let _b = l.try_acquire(ip, true, caps(3, 2)).unwrap();
        assert_eq!(
            l.try_acquire(ip, true, caps(3, 2)).err(),
            Some(LimitHit::PerIp)
        );
        let _c = l
            .try_acquire("2.2.2.2".parse().unwrap(), true, caps(3, 2))
            .unwrap();
        assert_eq!(
            l.try_acquire("3.3.3.3".parse().unwrap(), true, caps(3, 2))
                .err(),
            Some(LimitHit::Global)
        );
        drop(a);
        assert!(l.try_acquire(ip, true, caps(3, 2)).is_ok());
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client() {
        let l = Arc::new(Limits::default());
        let a = l
            .try_acquire("2001:db8:1:2::1".parse().unwrap(), true, caps(10, 2))
            .unwrap();
        let _b = l
            .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap(), true, caps(10, 2))
            .unwrap();
        let third = l.try_acquire("2001:db8:1:2::3".parse().unwrap(), true, caps(10, 2));
        assert_eq!(third.err(), Some(LimitHit::PerIp));
        // Another /64 is another client; IPv4-mapped addresses count as IPv4.
        assert!(l
            .try_acquire("2001:db8:1:3::1".parse().unwrap(), true, caps(10, 2))
            .is_ok());
        assert_eq!(
            network("::ffff:192.0.2.1".parse().unwrap(), 64),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        drop(a);
        assert!(l
            .try_acquire("2001:db8:1:2::3".parse().unwrap(), true, caps(10, 2))
            .is_ok());
    }

    #[test]
    fn a_proxied_connection_is_counted_for_its_client_once_named() {
        let l = Arc::new(Limits::default());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "198.51.100.1".parse().unwrap();
        let mut a = l.try_acquire(proxy, false, caps(10, 1)).unwrap();
        let mut b = l.try_acquire(proxy, false, caps(10, 1)).unwrap();
        a.count_client(client, caps(10, 1)).unwrap();
        assert_eq!(b.count_client(client, caps(10, 1)), Err(LimitHit::PerIp));
        assert_eq!(a.ip(), client);
        drop(a);
        assert_eq!(l.total(), 1);
        b.count_client(client, caps(10, 1)).unwrap();
    }
}
