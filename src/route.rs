//! The routing decision: which upstream gets an upgrade, from its offered subprotocols.
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

/// Where an upgrade goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A Mosaic backend, answering with exactly this token.
    Mosaic(Subprotocol),
    /// The nostr relay, with the client's offered protocols passed on.
    Nostr,
    /// Neither: answer 400.
    Refuse,
}

/// Decides the route. A client that offers any Mosaic token is Mosaic (`chat, mosaic2024`
/// too), with the operator's first listed token among those offered, so 2025 is preferred
/// by default when a client offers both; without a Mosaic token a connection is never
/// Mosaic.
pub fn route(offered: &[impl AsRef<str>], mosaic_tokens: &[String], nostr_enabled: bool) -> Route {
    if let Some(t) = mosaic_tokens
        .iter()
        .find(|m| offered.iter().any(|t| t.as_ref() == m.as_str()))
    {
        return Route::Mosaic(Subprotocol(t.clone()));
    }
    if nostr_enabled {
        Route::Nostr
    } else {
        Route::Refuse
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
            route(&v(&["chat", "mosaic2024"]), &m, true),
            Route::Mosaic(Subprotocol("mosaic2024".into()))
        );
        assert_eq!(route(&v(&["Mosaic2024"]), &m, true), Route::Nostr);
        assert_eq!(route(&v(&["Mosaic2024"]), &m, false), Route::Refuse);
        assert_eq!(route(&[] as &[&str], &m, true), Route::Nostr);
        // The operator's order decides, not the client's.
        let both = v(&["mosaic2025", "mosaic2024"]);
        assert_eq!(
            route(&v(&["mosaic2024", "mosaic2025"]), &both, false),
            Route::Mosaic(Subprotocol("mosaic2025".into()))
        );
        let seed_first = v(&["mosaic2024", "mosaic2025"]);
        assert_eq!(
            route(&v(&["mosaic2025", "mosaic2024"]), &seed_first, false),
            Route::Mosaic(Subprotocol("mosaic2024".into()))
        );
    }
}
