//! `mosaic.validate` by token, and the settings of Mosaic 2025's HELLO
//! (`mosaic.server_authentication`, `mosaic.server_key_file`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::relay::profile::{Level, MosaicVersion, Profile};

/// `mosaic.validate`: one word for every token, or a word per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidateConfig {
    /// One word for every token (`strict` reaches only the seed; 2025 keeps its default).
    All(String),
    /// A word per token; tokens not named keep their version's default.
    PerToken(BTreeMap<String, String>),
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig::PerToken(BTreeMap::new())
    }
}

/// A YAML scalar as the word it spells: `0.8` unquoted is a number to YAML, the word
/// `"0.8"` to the operator.
fn word<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Word {
        S(String),
        F(f64),
    }
    Ok(match Word::deserialize(d)? {
        Word::S(s) => s,
        Word::F(f) => f.to_string(),
    })
}

impl<'de> Deserialize<'de> for ValidateConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "word")] String);
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(W),
            Map(BTreeMap<String, W>),
        }
        match Raw::deserialize(d) {
            Ok(Raw::One(w)) => Ok(ValidateConfig::All(w.0)),
            Ok(Raw::Map(m)) => Ok(ValidateConfig::PerToken(
                m.into_iter().map(|(k, w)| (k, w.0)).collect(),
            )),
            Err(_) => Err(serde::de::Error::custom(
                "give one word (strict, direction, \"0.8\") or a word per token (mosaic2024: strict)",
            )),
        }
    }
}

impl ValidateConfig {
    /// The level for `version`, if the words name one it has.
    fn level(&self, version: MosaicVersion) -> Option<Level> {
        let word = match self {
            ValidateConfig::All(w) => {
                let l = Level::parse(w)?;
                // One word reaches the versions that have that level; `strict` is the
                // seed's, so a 2025 connection keeps `direction` under it.
                return Some(if version.levels().contains(&l) {
                    l
                } else {
                    version.default_level()
                });
            }
            ValidateConfig::PerToken(m) => m.get(version.token()),
        };
        match word {
            None => Some(version.default_level()),
            Some(w) => Level::parse(w).filter(|l| version.levels().contains(l)),
        }
    }

    /// The profile of `version` (its default when the words are wrong, which
    /// [`ValidateConfig::check`] reports).
    pub fn profile(&self, version: MosaicVersion) -> Profile {
        let level = self.level(version).unwrap_or(version.default_level());
        Profile::new(version, level)
            .or_else(|| Profile::new(version, version.default_level()))
            .unwrap_or(Profile::V2025(crate::relay::mosaic2025::Check::Direction))
    }

    /// Checks the words, naming `key` (`mosaic.validate`).
    pub fn check(&self, key: &str, errs: &mut Vec<String>) {
        let words = |v: MosaicVersion| {
            v.levels()
                .iter()
                .map(|l| format!("`{}`", l.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ValidateConfig::All(w) if Level::parse(w).is_none() => errs.push(format!(
                "{key}: `{w}` is not a level (strict, direction, \"0.8\")"
            )),
            ValidateConfig::All(w) if Level::parse(w) == Some(Level::Spec08) => errs.push(format!(
                "{key}: \"0.8\" is a mosaic2025 level: write it per token (mosaic2025: \"0.8\")"
            )),
            ValidateConfig::All(_) => {}
            ValidateConfig::PerToken(m) => {
                for (token, w) in m {
                    match MosaicVersion::from_token(token) {
                        None => errs.push(format!(
                            "{key}.{token}: not a Mosaic version token (mosaic2025, mosaic2024)"
                        )),
                        Some(v) if self.level(v).is_none() => errs.push(format!(
                            "{key}.{token}: `{w}` is not a level of {token} ({})",
                            words(v)
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
}

/// `mosaic.server_authentication`: who answers a 2025 client's
/// `X-Mosaic-Server-Authenticate-Nonce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerAuthentication {
    /// The backend's `X-Mosaic-Server-Authentication` passes.
    #[default]
    Backend,
    /// The gateway signs the nonce with `mosaic.server_key_file` and replaces the backend's.
    Gateway,
}

/// Checks `mosaic.subprotocols`: each a known version's token, once.
pub(super) fn check_tokens(tokens: &[String], errs: &mut Vec<String>) {
    if tokens.is_empty() {
        errs.push("mosaic.subprotocols: list at least one token (mosaic2025, mosaic2024)".into());
    }
    for (i, t) in tokens.iter().enumerate() {
        if MosaicVersion::from_token(t).is_none() {
            errs.push(format!(
                "mosaic.subprotocols[{i}]: `{t}` is not a Mosaic version token (mosaic2025, mosaic2024)"
            ));
        } else if tokens[..i].contains(t) {
            errs.push(format!("mosaic.subprotocols[{i}]: `{t}` is listed twice"));
        }
    }
}

/// Checks the key file `gateway` server authentication needs: given here or by TLS.
pub(super) fn check_server_key(
    auth: ServerAuthentication,
    key_file: &Option<PathBuf>,
    tls_key: Option<&PathBuf>,
    errs: &mut Vec<String>,
) {
    if auth == ServerAuthentication::Gateway && key_file.is_none() && tls_key.is_none() {
        errs.push(
            "mosaic.server_key_file: `server_authentication: gateway` needs a key (this, or tls.key_file)"
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::mosaic::Validation;
    use crate::relay::mosaic2025::Check;

    #[test]
    fn levels_by_token() {
        let d = ValidateConfig::default();
        assert_eq!(
            d.profile(MosaicVersion::V2024),
            Profile::Seed(Validation::Strict)
        );
        assert_eq!(
            d.profile(MosaicVersion::V2025),
            Profile::V2025(Check::Direction)
        );
        let one = ValidateConfig::All("strict".into());
        assert_eq!(
            one.profile(MosaicVersion::V2025),
            Profile::V2025(Check::Direction)
        );
        let map = ValidateConfig::PerToken([("mosaic2025".to_string(), "0.8".to_string())].into());
        assert_eq!(
            map.profile(MosaicVersion::V2025),
            Profile::V2025(Check::Spec08)
        );
        let mut errs = Vec::new();
        ValidateConfig::PerToken(
            [
                ("mosaic2026".to_string(), "strict".to_string()),
                ("mosaic2024".to_string(), "0.8".to_string()),
            ]
            .into(),
        )
        .check("mosaic.validate", &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("mosaic.validate.mosaic2024: `0.8` is not a level"));
        assert!(errs[1].starts_with("mosaic.validate.mosaic2026: not a Mosaic version token"));
    }
}
