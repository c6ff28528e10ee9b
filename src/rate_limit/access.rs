//! `access.allow` / `access.deny`: which client addresses are served.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::parse_cidr;
use crate::rate_limit::client_addr::canonical;

/// Validated CIDR lists; deny wins over allow, a non-empty allow list admits only its own.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessList {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl AccessList {
    /// From validated CIDR strings; `None` when both lists are empty (no check at all).
    pub(crate) fn new(allow: &[String], deny: &[String]) -> Option<AccessList> {
        let parse = |l: &[String]| l.iter().filter_map(|c| parse_cidr(c).ok()).collect();
        let list = AccessList {
            allow: parse(allow),
            deny: parse(deny),
        };
        (!(list.allow.is_empty() && list.deny.is_empty())).then_some(list)
    }

    /// Whether `ip` is served.
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_a_non_empty_allow_list_admits_only_its_own() {
        assert!(AccessList::new(&[], &[]).is_none());
        let deny_only = AccessList::new(&[], &["203.0.113.0/24".into()]).unwrap();
        assert!(!deny_only.permits(ip("203.0.113.9")));
        assert!(!deny_only.permits(ip("::ffff:203.0.113.9")));
        assert!(deny_only.permits(ip("198.51.100.1")));
        let both = AccessList::new(
            &["2001:db8::/32".into(), "198.51.100.0/24".into()],
            &["2001:db8:bad::/48".into(), "198.51.100.66".into()],
        )
        .unwrap();
        assert!(both.permits(ip("2001:db8:1::1")));
        assert!(!both.permits(ip("2001:db8:bad::1")));
        assert!(both.permits(ip("198.51.100.65")));
        assert!(!both.permits(ip("198.51.100.66")));
        assert!(!both.permits(ip("192.0.2.1")));
    }
}
