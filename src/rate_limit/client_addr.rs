//! The real client address: the peer's, unless the peer is a trusted proxy; then the
//! rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::protocol::fields::{visible_ascii, Fields};

/// The trusted proxy ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From validated CIDR strings.
    pub fn new(cidrs: &[String]) -> Self {
        TrustedProxies(
            cidrs
                .iter()
                .filter_map(|c| crate::config::parse_cidr(c).ok())
                .collect(),
        )
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address for every purpose here.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The real client address and the forwarded chain believed, oldest first.
pub fn real_client(
    peer: IpAddr,
    headers: &(impl Fields + ?Sized),
    trusted: &TrustedProxies,
) -> (IpAddr, Vec<IpAddr>) {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return (peer, Vec::new());
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.values("x-forwarded-for") {
        let Some(text) = visible_ascii(v) else {
            // An unreadable header from a trusted proxy: believe nothing of it.
            return (peer, Vec::new());
        };
        for item in text.split(',') {
            match parse_forwarded_addr(item.trim()) {
                Some(ip) => chain.push(canonical(ip)),
                None => return (peer, Vec::new()),
            }
        }
    }
    // Walk from the right: every hop we trust vouches for the one before it.
    let mut client = peer;
    while let Some(last) = chain.pop() {
        client = last;
        if !trusted.contains(last) {
            break;
        }
    }
    (client, chain)
}

/// Parses an X-Forwarded-For item: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderMap, HeaderValue};

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into()]);
        let (c, chain) = real_client("1.2.3.4".parse().unwrap(), &xff("6.6.6.6"), &t);
        assert_eq!(c, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert!(chain.is_empty());
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = TrustedProxies::new(&["10.0.0.0/8".into(), "fd00::/8".into()]);
        let h = xff("6.6.6.6, 203.0.113.9, 10.0.0.2");
        let (c, chain) = real_client("10.0.0.1".parse().unwrap(), &h, &t);
        assert_eq!(c, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(chain, vec!["6.6.6.6".parse::<IpAddr>().unwrap()]);
        let (c, _) = real_client("fd00::1".parse().unwrap(), &xff("[2001:db8::5]:443"), &t);
        assert_eq!(c, "2001:db8::5".parse::<IpAddr>().unwrap());
        let (c, _) = real_client("10.0.0.1".parse().unwrap(), &xff("garbage"), &t);
        assert_eq!(c, "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
