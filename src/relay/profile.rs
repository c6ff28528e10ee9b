//! A Mosaic version is a value, not a branch: the token chosen at the upgrade selects a
//! [`Profile`] that owns everything version-specific (the header layouts the tracker reads,
//! the validation level, the messages the gateway writes itself, the feature-list syntax,
//! the HELLO headers). The relay and the limits ask the profile; nothing tests the token.

use crate::relay::mosaic::{
    judge_head, Direction, HeadVerdict, Validation, Violation, QUERY_CLOSED_SHUTTING_DOWN,
    QUERY_CLOSED_TOO_OPEN, SUBMISSION_RECORD_OFFSET, SUBMISSION_TOO_FAST,
};
use crate::relay::mosaic2025::{self, code, kind, Check};

/// A Mosaic version the gateway speaks, named by its subprotocol token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MosaicVersion {
    /// `mosaic2025`: specification 0.8.0 (September 2025); HELLO in HTTP headers.
    V2025,
    /// `mosaic2024`: the seed text (December 2024).
    V2024,
}

impl MosaicVersion {
    /// Every version, in the gateway's order of preference.
    pub const ALL: [MosaicVersion; 2] = [MosaicVersion::V2025, MosaicVersion::V2024];

    /// The version a subprotocol token names.
    pub fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.token() == token)
    }

    /// The subprotocol token.
    pub fn token(self) -> &'static str {
        match self {
            MosaicVersion::V2025 => "mosaic2025",
            MosaicVersion::V2024 => "mosaic2024",
        }
    }

    /// The `version` metric label.
    pub fn label(self) -> &'static str {
        match self {
            MosaicVersion::V2025 => "2025",
            MosaicVersion::V2024 => "2024",
        }
    }

    /// The validation level used when the operator names none.
    pub fn default_level(self) -> Level {
        match self {
            MosaicVersion::V2025 => Level::Direction,
            MosaicVersion::V2024 => Level::Strict,
        }
    }

    /// The words `mosaic.validate` accepts for this version.
    pub fn levels(self) -> &'static [Level] {
        match self {
            MosaicVersion::V2025 => &[Level::Direction, Level::Spec08],
            MosaicVersion::V2024 => &[Level::Strict, Level::Direction],
        }
    }

    /// What separates items of `X-Mosaic-Features`: `;` in the seed, `,` in 2025.
    pub fn feature_separator(self) -> u8 {
        match self {
            MosaicVersion::V2025 => b',',
            MosaicVersion::V2024 => b';',
        }
    }

    /// Whether HELLO travels in `X-Mosaic-*` headers both ways (2025).
    pub fn hello_in_headers(self) -> bool {
        self == MosaicVersion::V2025
    }
}

/// A `mosaic.validate` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The seed's layouts (2024).
    Strict,
    /// The type byte's direction, the size cap, query ids where the layout is known.
    Direction,
    /// Specification 0.8.0's exact layouts (2025).
    Spec08,
}

impl Level {
    /// Every word, for messages.
    pub const ALL: [Level; 3] = [Level::Strict, Level::Direction, Level::Spec08];

    /// The word as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Level::Strict => "strict",
            Level::Direction => "direction",
            Level::Spec08 => "0.8",
        }
    }

    /// The level a config word names.
    pub fn parse(word: &str) -> Option<Level> {
        Self::ALL.into_iter().find(|l| l.name() == word)
    }
}

/// A connection's Mosaic version with its validation level. Only the combinations that
/// exist can be built: the seed has no 0.8 layouts, 2025 has no seed layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `mosaic2024`.
    Seed(Validation),
    /// `mosaic2025`.
    V2025(Check),
}

/// Why the gateway writes a Query Closed itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The gateway shuts down.
    ShuttingDown,
    /// Beyond `rate_limits.mosaic_open_queries`.
    TooMany,
}

/// Why the gateway ends a connection, when the version can say so in a message first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The gateway shuts down.
    ShuttingDown,
    /// The client's address was banned for a while (limit trips, violations).
    Banned,
    /// The client's address was blocked by an operator (NIP-86 `blockip`, `access.deny`).
    Blocked,
}

impl Profile {
    /// The profile for `version` at `level`, if that version has the level.
    pub fn new(version: MosaicVersion, level: Level) -> Option<Profile> {
        Some(match (version, level) {
            (MosaicVersion::V2024, Level::Strict) => Profile::Seed(Validation::Strict),
            (MosaicVersion::V2024, Level::Direction) => Profile::Seed(Validation::Direction),
            (MosaicVersion::V2025, Level::Direction) => Profile::V2025(Check::Direction),
            (MosaicVersion::V2025, Level::Spec08) => Profile::V2025(Check::Spec08),
            _ => return None,
        })
    }

    /// The version.
    pub fn version(self) -> MosaicVersion {
        match self {
            Profile::Seed(_) => MosaicVersion::V2024,
            Profile::V2025(_) => MosaicVersion::V2025,
        }
    }

    /// Whether the gateway knows where Submissions and query ids are, which the Mosaic
    /// rate limits need (the seed's direction-only level does not read them).
    pub fn knows_types(self) -> bool {
        self != Profile::Seed(Validation::Direction)
    }

    /// Judges a message from its first bytes (`ended`: it has no more).
    pub fn judge(self, dir: Direction, head: &[u8], ended: bool) -> Result<HeadVerdict, Violation> {
        match self {
            Profile::Seed(v) => judge_head(dir, v, head, ended),
            Profile::V2025(check) => {
                let Some(&t) = head.first() else {
                    return if ended {
                        Err(Violation::Malformed)
                    } else {
                        Ok(HeadVerdict::NeedMore(1))
                    };
                };
                if !mosaic2025::direction_ok(dir, t) {
                    return Err(Violation::WrongDirection);
                }
                mosaic2025::judge(check, head, ended)
            }
        }
    }

    /// The bytes of a Submission the gateway's answer echoes, counted from its start, if
    /// `type_byte` is a Submission.
    pub fn submission_head(self, type_byte: u8) -> Option<usize> {
        match self {
            Profile::Seed(Validation::Strict) if type_byte == 0x03 => {
                Some(SUBMISSION_RECORD_OFFSET + 32)
            }
            Profile::V2025(_) if type_byte == kind::SUBMISSION => {
                Some(mosaic2025::SUBMISSION_RESULT_LEN)
            }
            _ => None,
        }
    }

    /// The answer to a Submission over `mosaic_submissions` ("too fast").
    pub fn too_fast(self, head: &[u8]) -> GatewayMessage {
        match self {
            Profile::Seed(_) => GatewayMessage::seed_submission_result(SUBMISSION_TOO_FAST, head),
            Profile::V2025(_) => {
                GatewayMessage::new(&mosaic2025::submission_result(code::TOO_FAST, head))
            }
        }
    }

    /// A Query Closed for query `id`.
    pub fn query_closed(self, id: [u8; 2], why: Closed) -> GatewayMessage {
        match self {
            Profile::Seed(_) => {
                let code = match why {
                    Closed::ShuttingDown => QUERY_CLOSED_SHUTTING_DOWN,
                    Closed::TooMany => QUERY_CLOSED_TOO_OPEN,
                };
                GatewayMessage::new(&[0x82, id[0], id[1], code])
            }
            Profile::V2025(_) => {
                let code = match why {
                    Closed::ShuttingDown => code::SHUTTING_DOWN,
                    Closed::TooMany => code::TOO_FAST,
                };
                GatewayMessage::new(&mosaic2025::query_closed(id, code))
            }
        }
    }

    /// The message that says the gateway is ending the connection, where the version has
    /// one (2025's Closing; the seed has none).
    pub fn closing(self, why: Closing) -> Option<GatewayMessage> {
        match self {
            Profile::Seed(_) => None,
            Profile::V2025(_) => Some(GatewayMessage::new(&mosaic2025::closing(match why {
                Closing::ShuttingDown => code::SHUTTING_DOWN,
                Closing::Banned => code::IP_TEMP_BANNED,
                Closing::Blocked => code::IP_PERM_BANNED,
            }))),
        }
    }
}

/// The longest message the gateway writes itself (a 2025 Submission Result).
const GATEWAY_MESSAGE_MAX: usize = 40;

/// A message the gateway writes to a client itself (a Query Closed, a Submission Result, a
/// Closing), in the connection's version; at most 40 bytes, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayMessage {
    bytes: [u8; GATEWAY_MESSAGE_MAX],
    len: u8,
}

impl GatewayMessage {
    fn new(b: &[u8]) -> Self {
        let mut bytes = [0u8; GATEWAY_MESSAGE_MAX];
        let len = b.len().min(GATEWAY_MESSAGE_MAX);
        bytes[..len].copy_from_slice(&b[..len]);
        GatewayMessage {
            bytes,
            len: len as u8,
        }
    }

    /// The seed's Submission Result (36 bytes): `code` at [3], then the 32 bytes from
    /// [`SUBMISSION_RECORD_OFFSET`] of the Submission whose first bytes are `head`.
    pub fn seed_submission_result(code: u8, head: &[u8]) -> Self {
        let mut b = [0u8; 36];
        b[0] = 0x83;
        b[3] = code;
        let id = head.get(SUBMISSION_RECORD_OFFSET..).unwrap_or(&[]);
        let n = id.len().min(32);
        b[4..4 + n].copy_from_slice(&id[..n]);
        GatewayMessage::new(&b)
    }

    /// The seed's Query Closed (4 bytes).
    pub fn seed_query_closed(id: [u8; 2], code: u8) -> Self {
        GatewayMessage::new(&[0x82, id[0], id[1], code])
    }

    /// The message's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_levels() {
        assert_eq!(
            MosaicVersion::from_token("mosaic2025"),
            Some(MosaicVersion::V2025)
        );
        assert_eq!(MosaicVersion::from_token("Mosaic2025"), None);
        assert_eq!(Profile::new(MosaicVersion::V2024, Level::Spec08), None);
        assert_eq!(Profile::new(MosaicVersion::V2025, Level::Strict), None);
        for v in MosaicVersion::ALL {
            assert!(Profile::new(v, v.default_level()).is_some());
        }
    }

    #[test]
    fn the_gateway_speaks_each_version() {
        let seed = Profile::Seed(Validation::Strict);
        let v25 = Profile::V2025(Check::Direction);
        assert_eq!(
            seed.query_closed([1, 2], Closed::ShuttingDown).as_bytes(),
            [0x82, 1, 2, 0x30]
        );
        assert_eq!(
            v25.query_closed([1, 2], Closed::TooMany).as_bytes(),
            [0x82, 8, 0, 0, 1, 2, 39, 0]
        );
        assert_eq!(seed.closing(Closing::ShuttingDown), None);
        assert_eq!(
            v25.closing(Closing::ShuttingDown).unwrap().as_bytes(),
            [0xFE, 64, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(seed.too_fast(&[0x03, 40, 0, 0, 9]).as_bytes().len(), 36);
        assert_eq!(v25.too_fast(&[0x05]).as_bytes().len(), 40);
        assert_eq!(v25.submission_head(0x05), Some(40));
        assert_eq!(seed.submission_head(0x03), Some(36));
        assert_eq!(v25.submission_head(0x03), None);
        // The seed's direction level reads no types.
        assert_eq!(
            Profile::Seed(Validation::Direction).submission_head(0x03),
            None
        );
    }

    #[test]
    fn direction_rule_in_2025() {
        let p = Profile::V2025(Check::Spec08);
        assert_eq!(
            p.judge(Direction::ClientToUpstream, &[0x82], false),
            Err(Violation::WrongDirection)
        );
        assert_eq!(
            p.judge(Direction::UpstreamToClient, &[0x05], false),
            Err(Violation::WrongDirection)
        );
        assert!(p
            .judge(
                Direction::ClientToUpstream,
                &[0xF0, 8, 0, 0, 0, 0, 0, 0],
                true
            )
            .is_ok());
    }
}
