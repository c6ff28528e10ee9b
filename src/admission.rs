//! Admission: how many proxied connections the gateway holds, globally and per client.
//!
//! Limits count proxied connections (and upgrades being set up) globally and per real
//! client address; a permit is held for the whole life of the connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// Holds one connection's place in the limits until dropped.
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Permit {
    /// The client address this place is counted for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Limits {
    /// Open connections counted.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a place for `ip`, or says which limit is full.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, LimitHit> {
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(LimitHit::Global);
        }
        let n = map.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(LimitHit::PerIp);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
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

    #[test]
    fn limits_count_and_release() {
        let l = Arc::new(Limits::default());
        let ip: IpAddr = "1.1.1.1".parse().unwrap();
        let a = l.try_acquire(ip, 3, 2).unwrap();
        let _b = l.try_acquire(ip, 3, 2).unwrap();
        assert_eq!(l.try_acquire(ip, 3, 2).err(), Some(LimitHit::PerIp));
        let _c = l.try_acquire("2.2.2.2".parse().unwrap(), 3, 2).unwrap();
        assert_eq!(
            l.try_acquire("3.3.3.3".parse().unwrap(), 3, 2).err(),
            Some(LimitHit::Global)
        );
        drop(a);
        assert!(l.try_acquire(ip, 3, 2).is_ok());
    }
}
