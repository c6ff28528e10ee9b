//! The protocol choice: whether an upgrade is Mosaic or nostr, from its offered subprotocols
//! (which host/path route it takes is `routing`'s question).
//!
//! Pure and total so it can be unit-tested and fuzzed: tokens in, decision out.

/// A subprotocol token the operator routes to Mosaic (`mosaic.subprotocols`), matched
/// exactly and case-sensitively (RFC 7936).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subprotocol(String);

impl Subprotocol {
    /// The token as it goes in the 101 answer.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which protocol an upgrade speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A Mosaic backend, answering with exactly this token.
    Mosaic(Subprotocol),
    /// The nostr relay, with the client's offered protocols passed on.
    Nostr,
    /// Neither: answer 400.
    Refuse,
}

/// Chooses the protocol. A client that offers any Mosaic token is Mosaic (`chat, mosaic2024`
/// too), with the operator's first listed token among those offered, so 2025 is preferred
/// by default when a client offers both; without a Mosaic token a connection is never
/// Mosaic.
pub fn choose(
    offered: &[impl AsRef<str>],
    mosaic_tokens: &[String],
    nostr_enabled: bool,
) -> Choice {
    if let Some(t) = mosaic_tokens
        .iter()
        .find(|m| offered.iter().any(|t| t.as_ref() == m.as_str()))
    {
        return Choice::Mosaic(Subprotocol(t.clone()));
    }
    if nostr_enabled {
        Choice::Nostr
    } else {
        Choice::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn token_lists() {
        let m = v(&["mosaic2024"]);
        assert_eq!(
            choose(&v(&["chat", "mosaic2024"]), &m, true),
            Choice::Mosaic(Subprotocol("mosaic2024".into()))
        );
        assert_eq!(choose(&v(&["Mosaic2024"]), &m, true), Choice::Nostr);
        assert_eq!(choose(&v(&["Mosaic2024"]), &m, false), Choice::Refuse);
        assert_eq!(choose(&[] as &[&str], &m, true), Choice::Nostr);
        // The operator's order decides, not the client's.
        let both = v(&["mosaic2025", "mosaic2024"]);
        assert_eq!(
            choose(&v(&["mosaic2024", "mosaic2025"]), &both, false),
            Choice::Mosaic(Subprotocol("mosaic2025".into()))
        );
        let seed_first = v(&["mosaic2024", "mosaic2025"]);
        assert_eq!(
            choose(&v(&["mosaic2025", "mosaic2024"]), &seed_first, false),
            Choice::Mosaic(Subprotocol("mosaic2024".into()))
        );
    }
}
